//! Provider credentials Leash holds (`credentials:`), read from environment
//! variables or from files only the user Leash runs as can read — never
//! from the YAML itself. A route's target names one; Leash then sends it
//! in the provider's own header in place of whatever the client sent.
//! Values are kept as sensitive header values: never printed, logged or
//! put in an error.
//!
//! A credential read from a file follows the file: `watch` looks at it
//! every 250 ms and takes a new value once the file changed and still
//! passes the checks (a file that no longer does keeps the last good value,
//! logged by name). Environment variables are read once, at start.

use std::{
    collections::BTreeMap,
    io::Read as _,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, SystemTime},
};

use arc_swap::ArcSwap;

use http::{HeaderMap, HeaderValue, header};
use serde::Deserialize;

use crate::{
    field::{FieldError, invalid, resolve, valid_name},
    provider::ProviderKind,
    record::Caller,
};

/// Longest credential accepted (provider keys are far shorter).
const MAX_CREDENTIAL_BYTES: u64 = 8 * 1024;

/// `credentials.<name>` as written: exactly one of `env` and `file`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCredential {
    env: Option<String>,
    file: Option<PathBuf>,
}

/// How often credential files are looked at for changes.
const WATCH_EVERY: Duration = Duration::from_millis(250);

/// One credential: its name, value (sensitive) and where it came from.
/// Clones share the value, so a reloaded file reaches every holder.
#[derive(Clone)]
pub struct Credential {
    pub name: String,
    value: Arc<ArcSwap<HeaderValue>>,
    pub source: String,
    /// The file it is read from, and that file's last seen state.
    file: Option<Arc<Watched>>,
}

struct Watched {
    path: PathBuf,
    stamp: Mutex<Option<(SystemTime, u64, u64)>>,
}

/// What changes when a file is replaced or rewritten: mtime, size, inode.
fn stamp(path: &Path) -> Option<(SystemTime, u64, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len(), meta.ino()))
}

/// A credential's text as a sensitive header value.
fn header_value(text: &str, source: &str) -> Result<HeaderValue, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err(format!("{source} is empty"));
    }
    let mut value = HeaderValue::from_str(text)
        .map_err(|_| format!("{source} holds characters a header cannot carry"))?;
    value.set_sensitive(true);
    Ok(value)
}

impl Credential {
    /// The value to send (the latest good one).
    pub fn value(&self) -> HeaderValue {
        HeaderValue::clone(&self.value.load())
    }

    /// Re-reads the file if it changed; `true` when the value was replaced.
    fn refresh(&self) -> bool {
        let Some(watched) = &self.file else {
            return false;
        };
        let now = stamp(&watched.path);
        let mut seen = watched.stamp.lock().unwrap_or_else(PoisonError::into_inner);
        if now.is_none() || now == *seen {
            return false;
        }
        *seen = now;
        match read_private(&watched.path).and_then(|t| header_value(&t, &self.source)) {
            Ok(v) => {
                self.value.store(Arc::new(v));
                tracing::info!(credential = %self.name, source = %self.source, "credential reloaded");
                true
            }
            Err(reason) => {
                tracing::error!(credential = %self.name, %reason, "credential file changed but is not taken; the previous value stays");
                false
            }
        }
    }
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("name", &self.name)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// Every configured credential, by name.
#[derive(Debug, Clone, Default)]
pub struct Credentials(Arc<BTreeMap<String, Credential>>);

impl Credentials {
    /// The `credentials` section; with `read` false, the values are not
    /// read (commands that send nothing upstream).
    pub fn validate(
        raw: BTreeMap<String, RawCredential>,
        base: &Path,
        read: bool,
    ) -> Result<Self, FieldError> {
        let mut out = BTreeMap::new();
        for (name, c) in raw {
            let field = format!("credentials.{name}");
            if !valid_name(&name) {
                return Err(invalid(
                    field,
                    "credential names use a-z, 0-9, `-` and `_` only",
                ));
            }
            let (text, source, path) = match (c.env, c.file) {
                (Some(var), None) if !read => ("unread".to_owned(), format!("env:{var}"), None),
                (None, Some(path)) if !read => (
                    "unread".to_owned(),
                    format!("file:{}", resolve(base, path).display()),
                    None,
                ),
                (Some(var), None) => {
                    let text = std::env::var(&var).map_err(|_| {
                        invalid(
                            format!("{field}.env"),
                            format!("environment variable `{var}` is not set (or not UTF-8)"),
                        )
                    })?;
                    (text, format!("env:{var}"), None)
                }
                (None, Some(path)) => {
                    let path = resolve(base, path);
                    let text = read_private(&path).map_err(|reason| {
                        invalid(
                            format!("{field}.file"),
                            format!("{}: {reason}", path.display()),
                        )
                    })?;
                    (text, format!("file:{}", path.display()), Some(path))
                }
                _ => return Err(invalid(field, "give exactly one of env, file")),
            };
            let value = header_value(&text, &source).map_err(|r| invalid(&field, r))?;
            let file = path.map(|path| {
                Arc::new(Watched {
                    stamp: Mutex::new(stamp(&path)),
                    path,
                })
            });
            out.insert(
                name.clone(),
                Credential {
                    name,
                    value: Arc::new(ArcSwap::from_pointee(value)),
                    source,
                    file,
                },
            );
        }
        Ok(Self(Arc::new(out)))
    }

    pub fn get(&self, name: &str) -> Option<&Credential> {
        self.0.get(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }

    /// Re-reads every credential file that changed; how many were replaced.
    pub fn refresh(&self) -> usize {
        self.0.values().filter(|c| c.refresh()).count()
    }

    /// Follows the credential files until the process ends (a task).
    pub async fn watch(self) {
        if self.0.values().all(|c| c.file.is_none()) {
            return;
        }
        loop {
            tokio::time::sleep(WATCH_EVERY).await;
            let me = self.clone();
            // File reads stay off the request workers.
            let _ = tokio::task::spawn_blocking(move || me.refresh()).await;
        }
    }
}

/// Which callers a credential is sent for (an entry of
/// `intercept.inject_credentials.<provider>`): every set field must match;
/// none set matches every caller.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCallerRule {
    credential: String,
    team: Option<String>,
    uid: Option<u32>,
    /// An executable path glob.
    exe: Option<String>,
}

/// One credential, or rules choosing one per caller (first match wins).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawByCaller {
    One(String),
    Rules(Vec<RawCallerRule>),
}

#[derive(Debug, Clone)]
struct CallerRule {
    team: Option<String>,
    uid: Option<u32>,
    exe: Option<globset::GlobMatcher>,
    credential: Credential,
}

/// A provider's credential per caller: the first rule whose fields all
/// match the caller names it; no match, no credential.
#[derive(Debug, Clone, Default)]
pub struct ByCaller(Vec<CallerRule>);

impl ByCaller {
    pub fn validate(
        raw: RawByCaller,
        field: &str,
        credentials: &Credentials,
    ) -> Result<Self, FieldError> {
        let rules = match raw {
            RawByCaller::One(credential) => vec![RawCallerRule {
                credential,
                team: None,
                uid: None,
                exe: None,
            }],
            RawByCaller::Rules(rules) => rules,
        };
        let mut out = Vec::with_capacity(rules.len());
        for (i, r) in rules.into_iter().enumerate() {
            let field = format!("{field}[{i}]");
            let credential = credentials.get(&r.credential).cloned().ok_or_else(|| {
                invalid(
                    format!("{field}.credential"),
                    format!("unknown credential `{}` (see `credentials:`)", r.credential),
                )
            })?;
            let exe = r
                .exe
                .map(|g| {
                    globset::Glob::new(&g)
                        .map(|g| g.compile_matcher())
                        .map_err(|e| invalid(format!("{field}.exe"), format!("`{g}`: {e}")))
                })
                .transpose()?;
            out.push(CallerRule {
                team: r.team,
                uid: r.uid,
                exe,
                credential,
            });
        }
        Ok(Self(out))
    }

    /// The credential for `caller`, if a rule names one.
    pub fn pick(&self, caller: &Caller) -> Option<&Credential> {
        self.0
            .iter()
            .find(|r| {
                r.team
                    .as_deref()
                    .is_none_or(|t| caller.team.as_deref() == Some(t))
                    && r.uid.is_none_or(|u| caller.uid == Some(u))
                    && r.exe
                        .as_ref()
                        .is_none_or(|g| caller.exe.as_deref().is_some_and(|e| g.is_match(e)))
            })
            .map(|r| &r.credential)
    }

    /// The teams the rules name.
    pub fn teams(&self) -> impl Iterator<Item = &str> {
        self.0.iter().filter_map(|r| r.team.as_deref())
    }
}

/// Reads a credential file that only Leash's user can read.
pub fn read_private(path: &Path) -> Result<String, String> {
    let mut file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let meta = file.metadata().map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("is not a regular file".into());
    }
    if meta.uid() != rustix::process::geteuid().as_raw() {
        return Err("is owned by another user than the one Leash runs as".into());
    }
    if meta.mode() & 0o077 != 0 {
        return Err(format!(
            "is readable by others (mode {:o}); make it 0600",
            meta.mode() & 0o777
        ));
    }
    if meta.len() > MAX_CREDENTIAL_BYTES {
        return Err(format!("is larger than {MAX_CREDENTIAL_BYTES} bytes"));
    }
    let mut text = String::new();
    file.read_to_string(&mut text)
        .map_err(|_| "is not UTF-8 text".to_owned())?;
    Ok(text)
}

/// The key a client presented, from the headers the SDKs use
/// (`Authorization: Bearer`, `x-api-key`, `x-goog-api-key`) or `?key=`.
pub fn presented_key(headers: &HeaderMap, uri: &http::Uri) -> Option<String> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    if let Some(bearer) = header("authorization").and_then(|v| v.strip_prefix("Bearer ")) {
        return Some(bearer.trim().to_owned());
    }
    if let Some(k) = header("x-api-key").or_else(|| header("x-goog-api-key")) {
        return Some(k.to_owned());
    }
    uri.query().and_then(|q| {
        q.split('&')
            .find_map(|p| p.strip_prefix("key="))
            .map(str::to_owned)
    })
}

/// The headers that carry a client's provider credential, for any provider.
const KEY_HEADERS: [&str; 3] = ["authorization", "x-api-key", "x-goog-api-key"];

/// Removes every provider credential the client sent.
pub fn strip(headers: &mut HeaderMap) {
    for name in KEY_HEADERS {
        headers.remove(name);
    }
}

/// A query string without its `key=` parameters (Gemini's key in the URL).
pub fn strip_query(query: &str) -> String {
    query
        .split('&')
        .filter(|p| !p.starts_with("key="))
        .collect::<Vec<_>>()
        .join("&")
}

/// Replaces the client's credential with `credential`, in the header a
/// provider of `kind` reads.
pub fn inject(kind: ProviderKind, headers: &mut HeaderMap, credential: &Credential) {
    strip(headers);
    match kind {
        ProviderKind::OpenAi => {
            let value = credential.value();
            let mut bearer =
                HeaderValue::from_maybe_shared([b"Bearer ".as_slice(), value.as_bytes()].concat())
                    .unwrap_or(value);
            bearer.set_sensitive(true);
            headers.insert(header::AUTHORIZATION, bearer);
        }
        ProviderKind::Anthropic => {
            headers.insert("x-api-key", credential.value());
        }
        ProviderKind::Google => {
            headers.insert("x-goog-api-key", credential.value());
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    fn raw(yaml: &str) -> BTreeMap<String, RawCredential> {
        crate::field::from_yaml(yaml).unwrap()
    }

    #[test]
    fn files_must_be_private_and_values_never_show() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("k");
        std::fs::write(&key, "sk-secret-value\n").unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = Credentials::validate(raw("k: { file: k }"), dir.path(), true).unwrap_err();
        assert_eq!(err.field, "credentials.k.file");
        assert!(err.reason.contains("0600"), "{err}");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let creds = Credentials::validate(raw("k: { file: k }"), dir.path(), true).unwrap();
        let shown = format!("{creds:?}");
        assert!(!shown.contains("sk-secret-value"), "{shown}");
        let mut headers = HeaderMap::new();
        headers.insert("authorization", HeaderValue::from_static("Bearer client"));
        inject(
            ProviderKind::Anthropic,
            &mut headers,
            creds.get("k").unwrap(),
        );
        assert!(headers.get("authorization").is_none());
        assert_eq!(headers["x-api-key"], "sk-secret-value");
        assert!(headers["x-api-key"].is_sensitive());
    }

    #[test]
    fn rules_choose_a_credential_per_caller_and_files_are_followed() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("k");
        std::fs::write(&key, "first").unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let creds =
            Credentials::validate(raw("k: { file: k }\nj: { env: PATH }"), dir.path(), true)
                .unwrap();
        let rules: RawByCaller = crate::field::from_yaml(
            "[{ credential: j, team: ops, uid: 7 }, { credential: k, exe: '/usr/bin/py*' }]",
        )
        .unwrap();
        let rules = ByCaller::validate(rules, "x", &creds).unwrap();
        let caller = |team: Option<&str>, uid, exe: &str| Caller {
            team: team.map(str::to_owned),
            uid: Some(uid),
            exe: Some(exe.to_owned()),
            ..Caller::default()
        };
        let pick = |c: &Caller| rules.pick(c).map(|c| c.name.clone());
        assert_eq!(
            pick(&caller(Some("ops"), 7, "/bin/sh")).as_deref(),
            Some("j")
        );
        assert_eq!(pick(&caller(Some("ops"), 8, "/bin/sh")), None);
        assert_eq!(
            pick(&caller(None, 7, "/usr/bin/python3")).as_deref(),
            Some("k")
        );
        // A rewritten file is taken; one others can read is not.
        let k = creds.get("k").unwrap();
        assert_eq!(k.value(), "first");
        std::fs::write(&key, "second-longer").unwrap();
        assert_eq!(creds.refresh(), 1);
        assert_eq!(k.value(), "second-longer");
        assert_eq!(
            rules.pick(&caller(None, 1, "/usr/bin/py")).unwrap().value(),
            "second-longer"
        );
        std::fs::write(&key, "third").unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(creds.refresh(), 0);
        assert_eq!(k.value(), "second-longer");
    }

    #[test]
    fn a_missing_variable_is_named_without_a_value() {
        let err = Credentials::validate(
            raw("k: { env: LEASH_TEST_NO_SUCH_VAR }"),
            Path::new("."),
            true,
        )
        .unwrap_err();
        assert_eq!(err.field, "credentials.k.env");
        assert!(err.reason.contains("LEASH_TEST_NO_SUCH_VAR"));
        assert!(Credentials::validate(raw("k: {}"), Path::new("."), true).is_err());
    }
}
