//! Types shared between the kernel side (`leash-ebpf`) and the userspace agent.
//!
//! Everything here is `no_std` and `#[repr(C)]` so the same layout is seen on
//! both sides of a BPF map.
#![no_std]

/// API shapes Leash understands. A provider speaks exactly one of them.
///
/// Stored as a `u8` so it can live in BPF maps next to target addresses.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProviderKind {
    /// `OpenAI` chat completions / responses / embeddings, and every
    /// OpenAI-compatible service (Mistral, Groq, vLLM, ...).
    OpenAi = 1,
    /// Anthropic messages API.
    Anthropic = 2,
    /// Google Gemini `generateContent` API.
    Google = 3,
}

impl ProviderKind {
    /// All kinds, in a stable order.
    pub const ALL: [Self; 3] = [Self::OpenAi, Self::Anthropic, Self::Google];

    /// The name used in configuration files and audit records.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::OpenAi => "openai",
            Self::Anthropic => "anthropic",
            Self::Google => "google",
        }
    }

    /// Parses a configuration name (`openai`, `anthropic`, `google`).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

#[cfg(test)]
mod tests {
    use super::ProviderKind;

    #[test]
    fn names_round_trip() {
        for kind in ProviderKind::ALL {
            assert_eq!(ProviderKind::from_name(kind.as_str()), Some(kind));
        }
        assert_eq!(ProviderKind::from_name("OpenAI"), None);
    }
}
