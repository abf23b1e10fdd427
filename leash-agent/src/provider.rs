//! Providers: which LLM APIs Leash knows, where their upstreams are, and how
//! each one shapes an error so the caller's SDK raises its ordinary exception.

use std::{collections::BTreeMap, fmt, sync::Arc};

use bytes::Bytes;
use http::{StatusCode, Uri, uri::Authority, uri::Scheme};
pub use leash_common::ProviderKind;
use serde::Deserialize;
use serde_json::json;

use crate::field::{FieldError, invalid, valid_name};
pub use crate::record::ErrorCode;

/// Providers available with no configuration: the three native APIs plus
/// OpenAI-compatible services people commonly use.
pub const BUILTIN: &[(&str, ProviderKind, &str)] = &[
    ("openai", ProviderKind::OpenAi, "https://api.openai.com/v1"),
    (
        "anthropic",
        ProviderKind::Anthropic,
        "https://api.anthropic.com",
    ),
    (
        "google",
        ProviderKind::Google,
        "https://generativelanguage.googleapis.com",
    ),
    ("mistral", ProviderKind::OpenAi, "https://api.mistral.ai/v1"),
    (
        "groq",
        ProviderKind::OpenAi,
        "https://api.groq.com/openai/v1",
    ),
    (
        "openrouter",
        ProviderKind::OpenAi,
        "https://openrouter.ai/api/v1",
    ),
    (
        "deepseek",
        ProviderKind::OpenAi,
        "https://api.deepseek.com/v1",
    ),
    (
        "together",
        ProviderKind::OpenAi,
        "https://api.together.xyz/v1",
    ),
    (
        "fireworks",
        ProviderKind::OpenAi,
        "https://api.fireworks.ai/inference/v1",
    ),
    ("xai", ProviderKind::OpenAi, "https://api.x.ai/v1"),
];

/// Names the gateway's unified API uses below `/v1/`: no provider may take them.
pub const RESERVED_NAMES: &[&str] = &["chat", "embeddings", "unified"];

/// A base URL requests are forwarded under: scheme, authority and a path
/// prefix without a trailing slash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamBase {
    scheme: Scheme,
    authority: Authority,
    base_path: String,
}

impl UpstreamBase {
    /// Parses `http(s)://host[:port][/path]`. Query, fragment and user info
    /// are refused: they would silently change every forwarded request.
    pub fn parse(url: &str) -> Result<Self, String> {
        if url.contains('#') || url.contains('?') {
            return Err("must not contain a query or fragment".into());
        }
        let uri: Uri = url.parse().map_err(|e| format!("not a URL: {e}"))?;
        let scheme = uri
            .scheme()
            .cloned()
            .ok_or("must start with http:// or https://")?;
        if scheme != Scheme::HTTP && scheme != Scheme::HTTPS {
            return Err(format!("unsupported scheme {scheme} (use http or https)"));
        }
        let authority = uri.authority().cloned().ok_or("has no host")?;
        if authority.as_str().contains('@') {
            return Err("must not contain user info".into());
        }
        if authority.host().is_empty() {
            return Err("has no host".into());
        }
        let base_path = uri.path().trim_end_matches('/').to_owned();
        Ok(Self {
            scheme,
            authority,
            base_path,
        })
    }

    /// The host name (or IP literal) of the upstream.
    pub fn host(&self) -> &str {
        self.authority.host()
    }

    /// The port the upstream is reached on.
    pub fn port(&self) -> u16 {
        self.authority
            .port_u16()
            .unwrap_or(if self.is_tls() { 443 } else { 80 })
    }

    /// Whether the upstream is reached over TLS.
    pub fn is_tls(&self) -> bool {
        self.scheme == Scheme::HTTPS
    }

    /// The path prefix (no trailing slash; empty for the root).
    pub fn base_path(&self) -> &str {
        &self.base_path
    }

    /// The upstream URI for a request path `rest` (empty or starting with `/`)
    /// below this base, with the caller's query string.
    pub fn join(&self, rest: &str, query: Option<&str>) -> Result<Uri, http::Error> {
        let mut path = String::with_capacity(self.base_path.len() + rest.len() + 1);
        path.push_str(&self.base_path);
        path.push_str(rest);
        self.at_path(&path, query)
    }

    /// The upstream URI for exactly `path` on this origin (the base path is
    /// not added), with the caller's query string.
    pub fn at_path(&self, path: &str, query: Option<&str>) -> Result<Uri, http::Error> {
        let mut pq = String::with_capacity(path.len() + query.map_or(0, |q| q.len() + 1) + 1);
        pq.push_str(path);
        if pq.is_empty() {
            pq.push('/');
        }
        if let Some(q) = query {
            pq.push('?');
            pq.push_str(q);
        }
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(pq)
            .build()
    }

    /// The part of an origin-form `path` below the base path (what audit
    /// calls the endpoint); `path` itself when it is not below it.
    pub fn endpoint_of<'a>(&self, path: &'a str) -> &'a str {
        match path.strip_prefix(self.base_path.as_str()) {
            Some(rest) if !self.base_path.is_empty() && rest.starts_with('/') => rest,
            _ => path,
        }
    }
}

impl fmt::Display for UpstreamBase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}{}", self.scheme, self.authority, self.base_path)
    }
}

/// One configured provider.
#[derive(Debug)]
pub struct Provider {
    pub name: String,
    pub kind: ProviderKind,
    pub upstream: UpstreamBase,
}

/// The validated set of providers, looked up by the name used in gateway
/// paths (`/v1/<name>/...`).
#[derive(Debug, Clone, Default)]
pub struct Providers {
    by_name: BTreeMap<String, Arc<Provider>>,
}

impl Providers {
    /// Builds the registry from already validated providers.
    pub fn new(providers: impl IntoIterator<Item = Provider>) -> Self {
        let by_name = providers
            .into_iter()
            .map(|p| (p.name.clone(), Arc::new(p)))
            .collect();
        Self { by_name }
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Provider>> {
        self.by_name.get(name)
    }

    /// Provider names in sorted order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.by_name.keys().map(String::as_str)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Provider>> {
        self.by_name.values()
    }
}

/// A `providers.<name>` entry as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProvider {
    kind: Option<String>,
    upstream: String,
}

impl Providers {
    /// The built-in providers with the `providers` section's entries added
    /// or replacing them.
    pub fn validate(raw: BTreeMap<String, RawProvider>) -> Result<Self, FieldError> {
        let mut providers: BTreeMap<String, Provider> = BUILTIN
            .iter()
            .filter_map(|&(name, kind, url)| {
                let upstream = UpstreamBase::parse(url).ok()?;
                Some((
                    name.to_owned(),
                    Provider {
                        name: name.to_owned(),
                        kind,
                        upstream,
                    },
                ))
            })
            .collect();
        for (name, entry) in raw {
            let field = format!("providers.{name}");
            if !valid_name(&name) {
                return Err(invalid(
                    field,
                    "provider names use a-z, 0-9, `-` and `_` only",
                ));
            }
            if RESERVED_NAMES.contains(&name.as_str()) {
                return Err(invalid(
                    field,
                    format!(
                        "`{name}` is a path of the unified API (/v1/{name}/…); name the provider otherwise"
                    ),
                ));
            }
            let kind = match (&entry.kind, providers.get(&name)) {
                (Some(k), _) => ProviderKind::from_name(k).ok_or_else(|| {
                    invalid(
                        format!("{field}.kind"),
                        format!("unknown kind `{k}` (known: openai, anthropic, google)"),
                    )
                })?,
                (None, Some(builtin)) => builtin.kind,
                (None, None) => {
                    return Err(invalid(
                        format!("{field}.kind"),
                        "required for a provider that is not built in (openai, anthropic or google)",
                    ));
                }
            };
            let upstream = UpstreamBase::parse(&entry.upstream)
                .map_err(|reason| invalid(format!("{field}.upstream"), reason))?;
            providers.insert(
                name.clone(),
                Provider {
                    name,
                    kind,
                    upstream,
                },
            );
        }
        Ok(Self::new(providers.into_values()))
    }
}

/// An error body in the provider's own shape, so its SDK parses it and raises
/// the exception it raises for that status.
pub fn error_body(kind: ProviderKind, status: StatusCode, code: ErrorCode, message: &str) -> Bytes {
    let value = match kind {
        ProviderKind::OpenAi => json!({
            "error": {
                "message": message,
                "type": openai_error_type(status),
                "param": null,
                "code": code.as_str(),
            }
        }),
        ProviderKind::Anthropic => json!({
            "type": "error",
            "error": { "type": anthropic_error_type(status), "message": message },
        }),
        ProviderKind::Google => json!({
            "error": {
                "code": status.as_u16(),
                "message": message,
                "status": google_status(status),
            }
        }),
    };
    Bytes::from(value.to_string())
}

fn openai_error_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        429 => "rate_limit_error",
        400..=499 => "invalid_request_error",
        _ => "server_error",
    }
}

fn anthropic_error_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        400..=499 => "invalid_request_error",
        _ => "api_error",
    }
}

fn google_status(status: StatusCode) -> &'static str {
    match status.as_u16() {
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        429 => "RESOURCE_EXHAUSTED",
        400..=499 => "INVALID_ARGUMENT",
        502 | 503 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        _ => "INTERNAL",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joins_rest_below_base_path() {
        let base = UpstreamBase::parse("https://api.openai.com/v1/").unwrap();
        assert_eq!(
            base.join("/chat/completions", Some("a=1"))
                .unwrap()
                .to_string(),
            "https://api.openai.com/v1/chat/completions?a=1"
        );
        let root = UpstreamBase::parse("http://127.0.0.1:9000").unwrap();
        assert_eq!(
            root.join("", None).unwrap().to_string(),
            "http://127.0.0.1:9000/"
        );
        assert_eq!(
            root.join("/v1/messages", None).unwrap().to_string(),
            "http://127.0.0.1:9000/v1/messages"
        );
    }

    #[test]
    fn rejects_bad_upstreams() {
        for bad in [
            "ftp://x",
            "api.openai.com",
            "https://u:p@api.openai.com",
            "https://api.openai.com/v1?x=1",
            "https://api.openai.com/#f",
            "not a url",
        ] {
            assert!(UpstreamBase::parse(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn error_bodies_have_each_providers_shape() {
        let status = StatusCode::FORBIDDEN;
        let code = ErrorCode::PolicyBlocked;
        let o: serde_json::Value =
            serde_json::from_slice(&error_body(ProviderKind::OpenAi, status, code, "no")).unwrap();
        assert_eq!(o["error"]["message"], "no");
        assert_eq!(o["error"]["code"], "leash_policy_blocked");
        let a: serde_json::Value =
            serde_json::from_slice(&error_body(ProviderKind::Anthropic, status, code, "no"))
                .unwrap();
        assert_eq!(a["type"], "error");
        assert_eq!(a["error"]["type"], "permission_error");
        let g: serde_json::Value =
            serde_json::from_slice(&error_body(ProviderKind::Google, status, code, "no")).unwrap();
        assert_eq!(g["error"]["code"], 403);
        assert_eq!(g["error"]["status"], "PERMISSION_DENIED");
    }

    #[test]
    fn builtins_parse() {
        for (name, _, url) in BUILTIN {
            assert!(UpstreamBase::parse(url).is_ok(), "{name}");
        }
    }
}
