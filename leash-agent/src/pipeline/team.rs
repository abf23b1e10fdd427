//! The `team` module: names the caller's team from the `x-leash-team` header.

use async_trait::async_trait;

use super::{Exchange, Flow, Module, ModuleError, ProxyRequest};

pub const NAME: &str = "team";
pub const HEADER: &str = "x-leash-team";

/// Takes the team from `x-leash-team` when it is a plausible name
/// (1–64 of `A-Za-z0-9._-`); anything else is ignored.
pub struct TeamFromHeader;

fn valid_team(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

#[async_trait]
impl Module for TeamFromHeader {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn request_filter(
        &self,
        ex: &mut Exchange,
        req: &mut ProxyRequest,
    ) -> Result<Flow, ModuleError> {
        if let Some(value) = req.head.headers.get(HEADER) {
            match value.to_str() {
                Ok(team) if valid_team(team) => ex.caller.team = Some(team.to_owned()),
                _ => tracing::debug!(request_id = %ex.id, "ignoring malformed x-leash-team header"),
            }
        }
        Ok(Flow::Continue)
    }
}

#[cfg(test)]
mod tests {
    use super::valid_team;

    #[test]
    fn team_names() {
        assert!(valid_team("secops"));
        assert!(valid_team("ml-platform_2.eu"));
        assert!(!valid_team(""));
        assert!(!valid_team("a b"));
        assert!(!valid_team("x\"y"));
        assert!(!valid_team(&"a".repeat(65)));
    }
}
