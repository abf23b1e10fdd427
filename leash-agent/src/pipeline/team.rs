//! The `team` module: names the caller's team. With a `teams:` section, a
//! team is recognised by an API-key fingerprint (SHA-256 of the key; the key
//! itself is never stored), by uid or user name, by executable or cgroup glob
//! (transparent mode), or by the `x-leash-team` header for teams that allow
//! it. Without a `teams:` section, the header names the team.
//!
//! Once teams are configured, a client cannot simply claim one by header:
//! the header counts only for teams with `header: true`, and only when no
//! stronger evidence names a team. The order is fixed, strongest first,
//! across all teams (the first team in the file that matches at a level
//! wins that level): API key, uid or user name, executable, cgroup, header.

use globset::GlobSet;
use serde::Deserialize;

use super::{Exchange, Filtered, Flow, Module, ProxyRequest};
use crate::field::{FieldError, globs, invalid};

pub const NAME: &str = "team";
pub const HEADER: &str = "x-leash-team";

/// How a team is recognised (a `teams[]` entry).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeamConfig {
    pub name: String,
    /// SHA-256 (hex) of API keys: `printf %s "$KEY" | sha256sum`.
    #[serde(default)]
    pub key_sha256: Vec<String>,
    #[serde(default)]
    pub uid: Vec<u32>,
    #[serde(default)]
    pub user: Vec<String>,
    /// Executable path globs (transparent mode).
    #[serde(default)]
    pub exe: Vec<String>,
    /// Cgroup path globs (transparent mode).
    #[serde(default)]
    pub cgroup: Vec<String>,
    /// Whether `x-leash-team: <name>` names this team.
    #[serde(default)]
    pub header: bool,
}

impl TeamConfig {
    /// The `teams` section: names, key fingerprints and globs checked.
    pub fn validate_all(mut teams: Vec<Self>) -> Result<Vec<Self>, FieldError> {
        for (i, t) in teams.iter_mut().enumerate() {
            if !valid_team(&t.name) {
                return Err(invalid(
                    format!("teams[{i}].name"),
                    "1-64 of A-Z a-z 0-9 . _ -",
                ));
            }
            for k in &mut t.key_sha256 {
                *k = k.trim().to_ascii_lowercase();
                if k.len() != 64 || !k.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(invalid(
                        format!("teams[{i}].key_sha256"),
                        "a SHA-256 in hex (64 characters), never the key itself",
                    ));
                }
            }
            globs(&t.exe).map_err(|e| invalid(format!("teams[{i}].exe"), e))?;
            globs(&t.cgroup).map_err(|e| invalid(format!("teams[{i}].cgroup"), e))?;
        }
        Ok(teams)
    }
}

/// A team with its globs compiled.
struct Team {
    config: TeamConfig,
    exe: GlobSet,
    cgroup: GlobSet,
}

pub struct TeamModule {
    teams: Vec<Team>,
}

impl TeamModule {
    /// `teams` must have passed [`TeamConfig::validate_all`].
    pub fn new(teams: Vec<TeamConfig>) -> Self {
        let teams = teams
            .into_iter()
            .map(|config| Team {
                exe: globs(&config.exe).unwrap_or_default(),
                cgroup: globs(&config.cgroup).unwrap_or_default(),
                config,
            })
            .collect();
        Self { teams }
    }
}

pub fn valid_team(s: &str) -> bool {
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
        let header = req
            .head
            .headers
            .get(HEADER)
            .and_then(|v| v.to_str().ok())
            .filter(|t| valid_team(t));
        if self.teams.is_empty() {
            return header.map(str::to_owned);
        }
        // Hashed only when a team could name it (every request passes here).
        let key = api_key(req)
            .filter(|k| !k.is_empty())
            .map(|k| fingerprint(&k));
        let c = &ex.caller;
        // Strongest evidence first, across all teams.
        let levels: [&dyn Fn(&Team) -> bool; 5] = [
            &|t| {
                key.as_ref()
                    .is_some_and(|k| t.config.key_sha256.contains(k))
            },
            &|t| {
                c.uid.is_some_and(|u| t.config.uid.contains(&u))
                    || c.user.as_ref().is_some_and(|u| t.config.user.contains(u))
            },
            &|t| c.exe.as_deref().is_some_and(|e| t.exe.is_match(e)),
            &|t| c.cgroup.as_deref().is_some_and(|g| t.cgroup.is_match(g)),
            &|t| t.config.header && header == Some(t.config.name.as_str()),
        ];
        levels.iter().find_map(|matches| {
            self.teams
                .iter()
                .find(|t| matches(t))
                .map(|t| t.config.name.clone())
        })
    }
}

impl Module for TeamModule {
    fn name(&self) -> &'static str {
        NAME
    }

    fn request_filter<'a>(
        &'a self,
        ex: &'a mut Exchange,
        req: &'a mut ProxyRequest,
    ) -> Filtered<'a> {
        ex.caller.team = self.identify(ex, req);
        Filtered::from(Flow::Continue)
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
        let set = globs(&["/opt/research/*".into(), "*python*".into()]).unwrap();
        assert!(set.is_match("/opt/research/bin/node"));
        assert!(set.is_match("/usr/bin/python3.11"));
        assert!(!set.is_match("/usr/bin/node"));
        assert!(globs(&["[".into()]).is_err());
        assert_eq!(
            fingerprint("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
