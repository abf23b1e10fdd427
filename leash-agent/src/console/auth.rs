//! Who may use the console: the admin token on every listener (loopback
//! included), as a bearer token or through a session a one-time login code
//! opened (`leash console` prints the URL, as a notebook server does), and
//! only under a host name the listener answers to — a web page that
//! rebinds its own name to 127.0.0.1 gets nothing.

use std::{net::SocketAddr, path::Path, sync::Arc, time::Duration};

use http::{HeaderMap, HeaderValue, header};
use moka::sync::Cache;
use subtle::ConstantTimeEq as _;

/// How long a login code from `leash console` may be used (once).
const CODE_TTL: Duration = Duration::from_mins(2);
/// How long a console session lasts.
const SESSION_TTL: Duration = Duration::from_hours(12);
/// The session cookie's name.
pub const COOKIE: &str = "leash_session";

/// The console's access rules.
pub struct Auth {
    token: String,
    /// Host names the listener answers to (lower case, no port).
    hosts: Vec<String>,
    /// Login codes, and sessions, with who they are for (as the caller
    /// of `leash console` named itself): changes are recorded with it.
    codes: Cache<String, Arc<str>>,
    sessions: Cache<String, Arc<str>>,
}

/// Why a request may not use the console.
#[derive(Debug, PartialEq, Eq)]
pub enum Denied {
    /// No token, no session (401).
    Unauthenticated,
    /// A host name the listener does not answer to (421).
    WrongHost,
    /// A state change with a session but without the console's header: a
    /// cross-site form (403).
    Forged,
}

/// 32 random bytes as hex.
fn random_token() -> String {
    let mut bytes = [0u8; 32];
    if getrandom::fill(&mut bytes).is_err() {
        // No entropy at all: nothing can be trusted; a token nobody can
        // guess is still required, so the console is effectively closed.
        return String::new();
    }
    crate::hex::encode(&bytes)
}

/// The admin token in `file`: read, or (when `create`) made on first use —
/// 32 random bytes, the file created exclusively with mode 0600.
pub fn load_or_create_token(file: &Path, create: bool) -> std::io::Result<String> {
    use std::{io::Write as _, os::unix::fs::OpenOptionsExt as _};
    match std::fs::read_to_string(file) {
        Ok(text) => return Ok(text.trim().to_owned()),
        Err(e) if e.kind() != std::io::ErrorKind::NotFound || !create => return Err(e),
        Err(_) => {}
    }
    let token = random_token();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(file)?;
    f.write_all(token.as_bytes())?;
    f.write_all(b"\n")?;
    f.sync_all()?;
    Ok(token)
}

impl Auth {
    /// Access with `token`, for a listener on `listen` that also answers to
    /// `extra_hosts`.
    pub fn new(token: String, listen: SocketAddr, extra_hosts: &[String]) -> Self {
        let mut hosts: Vec<String> = ["localhost", "127.0.0.1", "::1"]
            .iter()
            .map(|h| (*h).to_owned())
            .collect();
        if !listen.ip().is_unspecified() {
            hosts.push(listen.ip().to_string());
        }
        hosts.extend(extra_hosts.iter().map(|h| h.to_ascii_lowercase()));
        Self {
            token,
            hosts,
            codes: Cache::builder()
                .max_capacity(64)
                .time_to_live(CODE_TTL)
                .build(),
            sessions: Cache::builder()
                .max_capacity(1024)
                .time_to_live(SESSION_TTL)
                .build(),
        }
    }

    /// Whether the request names a host this listener answers to.
    pub fn host_allowed(&self, headers: &HeaderMap, authority: Option<&str>) -> bool {
        let Some(host) =
            authority.or_else(|| headers.get(header::HOST).and_then(|v| v.to_str().ok()))
        else {
            return false;
        };
        let name = match host.strip_prefix('[') {
            Some(v6) => v6.split(']').next().unwrap_or(""),
            None => host.rsplit_once(':').map_or(host, |(h, _)| h),
        };
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        self.hosts.contains(&name)
    }

    fn bearer_ok(&self, headers: &HeaderMap) -> bool {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default();
        !self.token.is_empty() && bool::from(given.as_bytes().ct_eq(self.token.as_bytes()))
    }

    fn session(&self, headers: &HeaderMap) -> Option<Arc<str>> {
        cookie(headers, COOKIE).and_then(|s| self.sessions.get(&s))
    }

    /// Checks a console API request; `changes`: it changes state (a
    /// session must then come with the console's own header, which a
    /// cross-site form cannot send). Returns who is asking: "admin token",
    /// or the session's owner.
    pub fn check(
        &self,
        headers: &HeaderMap,
        authority: Option<&str>,
        changes: bool,
    ) -> Result<Arc<str>, Denied> {
        if !self.host_allowed(headers, authority) {
            return Err(Denied::WrongHost);
        }
        if self.bearer_ok(headers) {
            return Ok(Arc::from("admin token"));
        }
        let Some(who) = self.session(headers) else {
            return Err(Denied::Unauthenticated);
        };
        if changes && !headers.contains_key("x-leash-console") {
            return Err(Denied::Forged);
        }
        Ok(who)
    }

    /// A one-time login code (for a bearer-authenticated caller), for the
    /// session of `who` (at most 64 printable characters are kept).
    pub fn new_code(&self, who: Option<&str>) -> String {
        let code = random_token();
        let who: String = who
            .unwrap_or("someone")
            .chars()
            .filter(|c| !c.is_control())
            .take(64)
            .collect();
        self.codes.insert(
            code.clone(),
            Arc::from(format!("{who} (leash console session)")),
        );
        code
    }

    /// Trades a login code for a new session cookie (the code is used up).
    pub fn login(&self, code: &str) -> Option<HeaderValue> {
        let who = self.codes.remove(code)?;
        let session = random_token();
        self.sessions.insert(session.clone(), who);
        HeaderValue::from_str(&format!(
            "{COOKIE}={session}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}",
            SESSION_TTL.as_secs()
        ))
        .ok()
    }
}

/// The value of cookie `name`.
fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn token_session_host_and_forgery() {
        let auth = Auth::new(
            "t0ken-0123456789abcdef".into(),
            "127.0.0.1:9090".parse().unwrap(),
            &[],
        );
        let host = ("host", "127.0.0.1:9090");
        assert_eq!(
            auth.check(&headers(&[host]), None, false),
            Err(Denied::Unauthenticated)
        );
        let bearer = ("authorization", "Bearer t0ken-0123456789abcdef");
        let token: Arc<str> = Arc::from("admin token");
        assert_eq!(
            auth.check(&headers(&[host, bearer]), None, true),
            Ok(Arc::clone(&token))
        );
        assert_eq!(
            auth.check(
                &headers(&[("host", "attacker.example:9090"), bearer]),
                None,
                false
            ),
            Err(Denied::WrongHost)
        );
        assert_eq!(
            auth.check(&headers(&[("host", "localhost"), bearer]), None, false),
            Ok(Arc::clone(&token))
        );
        assert_eq!(
            auth.check(&headers(&[("host", "[::1]:9090"), bearer]), None, false),
            Ok(token)
        );
        // A login code works once, for a session.
        let code = auth.new_code(Some("alice\n"));
        let set = auth.login(&code).unwrap();
        assert!(auth.login(&code).is_none(), "a code is used up");
        let session = set.to_str().unwrap().split(';').next().unwrap().to_owned();
        let with = headers(&[host, ("cookie", &session)]);
        let alice: Arc<str> = Arc::from("alice (leash console session)");
        assert_eq!(auth.check(&with, None, false), Ok(Arc::clone(&alice)));
        assert_eq!(auth.check(&with, None, true), Err(Denied::Forged));
        let console = headers(&[host, ("cookie", &session), ("x-leash-console", "1")]);
        assert_eq!(auth.check(&console, None, true), Ok(alice));
        let forged = headers(&[host, ("cookie", "leash_session=guess")]);
        assert_eq!(
            auth.check(&forged, None, false),
            Err(Denied::Unauthenticated)
        );
    }

    #[test]
    fn tokens_are_made_once_with_mode_0600() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("admin.token");
        assert!(load_or_create_token(&file, false).is_err());
        let made = load_or_create_token(&file, true).unwrap();
        assert_eq!(made.len(), 64);
        assert_eq!(load_or_create_token(&file, true).unwrap(), made);
        let perms = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(perms & 0o777, 0o600);
    }
}
