//! Provider credentials Leash holds (`credentials:`), read from environment
//! variables or from files only the user Leash runs as can read — never
//! from the YAML itself. A route's target names one; Leash then sends it
//! in the provider's own header in place of whatever the client sent.
//! Values are kept as sensitive header values: never printed, logged or
//! put in an error.

use std::{
    collections::BTreeMap,
    io::Read as _,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::Arc,
};

use http::{HeaderMap, HeaderValue, header};
use serde::Deserialize;

use crate::{
    field::{FieldError, invalid, resolve, valid_name},
    provider::ProviderKind,
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

/// One credential: its name, value (sensitive) and where it came from.
#[derive(Clone)]
pub struct Credential {
    pub name: String,
    value: HeaderValue,
    pub source: String,
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
    pub fn validate(raw: BTreeMap<String, RawCredential>, base: &Path) -> Result<Self, FieldError> {
        let mut out = BTreeMap::new();
        for (name, c) in raw {
            let field = format!("credentials.{name}");
            if !valid_name(&name) {
                return Err(invalid(
                    field,
                    "credential names use a-z, 0-9, `-` and `_` only",
                ));
            }
            let (text, source) = match (c.env, c.file) {
                (Some(var), None) => {
                    let text = std::env::var(&var).map_err(|_| {
                        invalid(
                            format!("{field}.env"),
                            format!("environment variable `{var}` is not set (or not UTF-8)"),
                        )
                    })?;
                    (text, format!("env:{var}"))
                }
                (None, Some(path)) => {
                    let path = resolve(base, path);
                    let text = read_private(&path).map_err(|reason| {
                        invalid(
                            format!("{field}.file"),
                            format!("{}: {reason}", path.display()),
                        )
                    })?;
                    (text, format!("file:{}", path.display()))
                }
                _ => return Err(invalid(field, "give exactly one of env, file")),
            };
            let text = text.trim();
            if text.is_empty() {
                return Err(invalid(field, format!("{source} is empty")));
            }
            let mut value = HeaderValue::from_str(text).map_err(|_| {
                invalid(
                    &field,
                    format!("{source} holds characters a header cannot carry"),
                )
            })?;
            value.set_sensitive(true);
            out.insert(
                name.clone(),
                Credential {
                    name,
                    value,
                    source,
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
}

/// Reads a credential file that only Leash's user can read.
fn read_private(path: &Path) -> Result<String, String> {
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
            let mut bearer = HeaderValue::from_maybe_shared(
                [b"Bearer ".as_slice(), credential.value.as_bytes()].concat(),
            )
            .unwrap_or_else(|_| credential.value.clone());
            bearer.set_sensitive(true);
            headers.insert(header::AUTHORIZATION, bearer);
        }
        ProviderKind::Anthropic => {
            headers.insert("x-api-key", credential.value.clone());
        }
        ProviderKind::Google => {
            headers.insert("x-goog-api-key", credential.value.clone());
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
        let err = Credentials::validate(raw("k: { file: k }"), dir.path()).unwrap_err();
        assert_eq!(err.field, "credentials.k.file");
        assert!(err.reason.contains("0600"), "{err}");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let creds = Credentials::validate(raw("k: { file: k }"), dir.path()).unwrap();
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
    fn a_missing_variable_is_named_without_a_value() {
        let err = Credentials::validate(raw("k: { env: LEASH_TEST_NO_SUCH_VAR }"), Path::new("."))
            .unwrap_err();
        assert_eq!(err.field, "credentials.k.env");
        assert!(err.reason.contains("LEASH_TEST_NO_SUCH_VAR"));
        assert!(Credentials::validate(raw("k: {}"), Path::new(".")).is_err());
    }
}
