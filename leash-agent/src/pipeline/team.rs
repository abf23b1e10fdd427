//! The `team` module: names the caller's team. With a `teams:` section, a
//! team is recognised by an API-key fingerprint (SHA-256 of the key; the key
//! itself is never stored), by uid or user name, by executable or cgroup glob
//! (transparent mode), or by the `x-leash-team` header for teams that allow
//! it. Without a `teams:` section, the header names the team.
//!
//! Once teams are configured, a client cannot simply claim one by header:
//! the header counts only for teams with `header: true`.

use async_trait::async_trait;

use super::{Exchange, Flow, Module, ModuleError, ProxyRequest};
use crate::{config::TeamConfig, policy::glob};

pub const NAME: &str = "team";
pub const HEADER: &str = "x-leash-team";

pub struct TeamModule {
    teams: Vec<TeamConfig>,
}

impl TeamModule {
    pub fn new(teams: Vec<TeamConfig>) -> Self {
        Self { teams }
    }
}

fn valid_team(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The API key the caller sent, wherever its SDK puts it.
fn api_key(req: &ProxyRequest) -> Option<String> {
    let h = &req.head.headers;
    if let Some(v) = h
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        return Some(v.strip_prefix("Bearer ").unwrap_or(v).trim().to_owned());
    }
    for name in ["x-api-key", "x-goog-api-key", "api-key"] {
        if let Some(v) = h.get(name).and_then(|v| v.to_str().ok()) {
            return Some(v.trim().to_owned());
        }
    }
    req.head
        .uri
        .query()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("key=")))
        .map(str::to_owned)
}

/// Lower-case hex SHA-256 of a key: how keys are named in `teams:`.
pub fn fingerprint(key: &str) -> String {
    crate::audit::chain::hex_sha256(key.as_bytes())
}

impl TeamModule {
    fn identify(&self, ex: &Exchange, req: &ProxyRequest) -> Option<String> {
        let key = api_key(req)
            .filter(|k| !k.is_empty())
            .map(|k| fingerprint(&k));
        let header = req
            .head
            .headers
            .get(HEADER)
            .and_then(|v| v.to_str().ok())
            .filter(|t| valid_team(t));
        if self.teams.is_empty() {
            return header.map(str::to_owned);
        }
        let c = &ex.caller;
        self.teams.iter().find_map(|t| {
            let by_key = key.as_ref().is_some_and(|k| t.key_sha256.contains(k));
            let by_uid = c.uid.is_some_and(|u| t.uid.contains(&u));
            let by_user = c.user.as_ref().is_some_and(|u| t.user.contains(u));
            let by_exe = c
                .exe
                .as_deref()
                .is_some_and(|e| t.exe.iter().any(|p| glob(p, e)));
            let by_cgroup = c
                .cgroup
                .as_deref()
                .is_some_and(|g| t.cgroup.iter().any(|p| glob(p, g)));
            let by_header = t.header && header == Some(t.name.as_str());
            (by_key || by_uid || by_user || by_exe || by_cgroup || by_header)
                .then(|| t.name.clone())
        })
    }
}

#[async_trait]
impl Module for TeamModule {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn request_filter(
        &self,
        ex: &mut Exchange,
        req: &mut ProxyRequest,
    ) -> Result<Flow, ModuleError> {
        ex.caller.team = self.identify(ex, req);
        Ok(Flow::Continue)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn team_names_and_globs() {
        assert!(valid_team("ml-platform_2.eu"));
        assert!(!valid_team("a b"));
        assert!(!valid_team(&"a".repeat(65)));
        assert!(glob("/opt/research/*", "/opt/research/bin/python"));
        assert!(glob("*python*", "/usr/bin/python3.11"));
        assert!(!glob("/opt/research/*", "/usr/bin/python"));
        assert_eq!(
            fingerprint("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
