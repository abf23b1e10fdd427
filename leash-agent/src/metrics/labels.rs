//! The label sets of Leash's metrics, and the label values they carry.
//! A value an exchange adds to (provider, model, team, status, rule) is
//! interned: the first exchange that names it allocates it once, every
//! later one shares it (a reference count, not a string copy per series
//! and request), and past a bound new values collapse to `other`.

use std::{
    collections::HashMap,
    sync::{Arc, LazyLock, Mutex, PoisonError},
};

use prometheus_client::encoding::EncodeLabelSet;

/// A label value shared by every series and lookup that carries it.
pub(super) type Label = Arc<String>;

/// The values Leash itself gives a label: `none` (no team, no status),
/// `unknown` (no model), `other` (past a bound).
pub(super) static NONE: LazyLock<Label> = LazyLock::new(|| Arc::new("none".to_owned()));
pub(super) static UNKNOWN: LazyLock<Label> = LazyLock::new(|| Arc::new("unknown".to_owned()));
static OTHER: LazyLock<Label> = LazyLock::new(|| Arc::new("other".to_owned()));

/// One of the fixed values above, shared.
pub(super) fn fixed(value: &LazyLock<Label>) -> Label {
    Arc::clone(value)
}

/// Label values seen so far: at most `cap` distinct ones, then `other`
/// (label cardinality stays bounded).
pub(super) struct Interned {
    /// Bounded by `cap`, so a fast seeded hash is enough (no `SipHash`).
    seen: Mutex<HashMap<String, Label, foldhash::fast::RandomState>>,
    cap: usize,
}

impl Interned {
    pub(super) fn new(cap: usize) -> Self {
        Self {
            seen: Mutex::new(HashMap::default()),
            cap,
        }
    }

    /// `value`'s label: the one handed out before, a new one while fewer
    /// than `cap` were, else `other`.
    pub(super) fn label(&self, value: &str) -> Label {
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(label) = seen.get(value) {
            return Arc::clone(label);
        }
        if seen.len() < self.cap {
            let label = Arc::new(value.to_owned());
            seen.insert(value.to_owned(), Arc::clone(&label));
            return label;
        }
        fixed(&OTHER)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct RequestLabels {
    pub(super) provider: Label,
    pub(super) model: Label,
    pub(super) team: Label,
    pub(super) action: &'static str,
    pub(super) status: Label,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct ProviderLabels {
    pub(super) provider: Label,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct TokenLabels {
    pub(super) provider: Label,
    pub(super) model: Label,
    pub(super) team: Label,
    pub(super) kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct ModelLabels {
    pub(super) provider: Label,
    pub(super) model: Label,
    pub(super) team: Label,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct FindingLabels {
    pub(super) rule: Label,
    pub(super) detector: String,
    pub(super) action: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct ResultLabels {
    pub(super) result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct BudgetLabels {
    pub(super) budget: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct HostLabels {
    pub(super) host: Label,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct ExeLabels {
    pub(super) exe: Label,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct ActionLabels {
    pub(super) action: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct RouteLabels {
    pub(super) route: String,
    pub(super) target: String,
    pub(super) outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct ReasonLabels {
    pub(super) reason: &'static str,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_shared_and_bounded() {
        let models = Interned::new(2);
        let a = models.label("gpt-4o");
        assert!(Arc::ptr_eq(&a, &models.label("gpt-4o")));
        assert_eq!(*models.label("claude"), "claude");
        assert_eq!(*models.label("gemini"), "other");
        assert_eq!(*models.label("gpt-4o"), "gpt-4o");
    }
}
