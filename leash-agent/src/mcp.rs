//! MCP servers Leash governs: the `mcp` section names remote MCP servers
//! (Streamable HTTP transport, JSON-RPC), and the gateway serves each at
//! `/mcp/<server>/<rest>` → `<url><rest>`. A request goes through the same
//! pipeline as a provider's (caller and team, policy, audit), as the
//! provider `mcp/<server>`; what is MCP about it — the JSON-RPC method,
//! the tool a `tools/call` names — is read here into an `McpRecord`,
//! which the policy judges (`match.tool.called`, `match.tool.arguments`,
//! `tools/list` filtered) and the audit keeps.

use std::{collections::BTreeMap, sync::Arc};

use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::{
    field::{FieldError, invalid, valid_name},
    provider::{Provider, ProviderKind, UpstreamBase},
    record::McpRecord,
};

/// The gateway path prefix of MCP servers.
pub const PATH_PREFIX: &str = "/mcp/";
/// The JSON-RPC error code of a request Leash refused (the range
/// -32000..-32099 is the server's own).
pub const REFUSED_CODE: i64 = -32001;

/// `mcp` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMcp {
    #[serde(default)]
    servers: BTreeMap<String, RawServer>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    /// The server's Streamable HTTP endpoint's base: `http(s)://host[:port][/path]`.
    url: String,
}

/// The MCP servers, by the name in `/mcp/<name>/`.
#[derive(Debug, Clone, Default)]
pub struct McpServers {
    by_name: BTreeMap<String, Arc<Provider>>,
}

impl McpServers {
    pub fn validate(raw: RawMcp) -> Result<Self, FieldError> {
        let mut by_name = BTreeMap::new();
        for (name, server) in raw.servers {
            let field = format!("mcp.servers.{name}");
            if !valid_name(&name) {
                return Err(invalid(
                    field,
                    "server names use a-z, 0-9, `-` and `_` only",
                ));
            }
            let upstream =
                UpstreamBase::parse(&server.url).map_err(|e| invalid(format!("{field}.url"), e))?;
            // The pipeline's provider for this server. Its kind only
            // shapes what the usage module looks for (nothing, in JSON-RPC)
            // and error bodies, which MCP answers replace with JSON-RPC's.
            let provider = Provider {
                name: format!("mcp/{name}"),
                kind: ProviderKind::OpenAi,
                upstream,
            };
            by_name.insert(name, Arc::new(provider));
        }
        Ok(Self { by_name })
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Provider>> {
        self.by_name.get(name)
    }

    /// Every server: its name and its pipeline provider.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Arc<Provider>)> {
        self.by_name.iter().map(|(name, p)| (name.as_str(), p))
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}

/// What one HTTP request to an MCP server is: its JSON-RPC method and
/// tool (the first message's, for a batch), every `tools/call` in it
/// (tool name, arguments as JSON text), and the first request's id (an
/// answer Leash makes carries it).
#[derive(Debug, Clone, Default)]
pub struct McpRequest {
    pub record: McpRecord,
    pub id: Option<Value>,
    pub calls: Vec<(String, String)>,
}

impl McpRequest {
    /// Reads a request body (JSON-RPC; empty for the GET stream and
    /// DELETE).
    pub fn read(server: &str, http_method: &http::Method, body: &[u8]) -> Self {
        let mut out = Self {
            record: McpRecord {
                server: server.to_owned(),
                method: http_method.as_str().to_owned(),
                tool: None,
            },
            ..Self::default()
        };
        let Ok(v) = serde_json::from_slice::<Value>(body) else {
            return out;
        };
        let messages = match &v {
            Value::Array(batch) => batch.iter().collect(),
            one => vec![one],
        };
        let Some(first) = messages.first() else {
            return out;
        };
        if let Some(m) = first["method"].as_str() {
            m.clone_into(&mut out.record.method);
        }
        out.id = first.get("id").cloned();
        // Every call of a batch is judged, not only the first.
        for m in messages.iter().filter(|m| m["method"] == "tools/call") {
            let name = m["params"]["name"].as_str().unwrap_or_default().to_owned();
            out.calls.push((name, m["params"]["arguments"].to_string()));
        }
        if out.record.method == "tools/call" {
            out.record.tool = out.calls.first().map(|(name, _)| name.clone());
        }
        out
    }
}

/// A JSON-RPC error answer to `id`.
pub fn error_body(id: Option<&Value>, message: &str) -> Bytes {
    Bytes::from(
        json!({
            "jsonrpc": "2.0",
            "id": id.cloned().unwrap_or(Value::Null),
            "error": { "code": REFUSED_CODE, "message": message },
        })
        .to_string(),
    )
}

/// Splits `/mcp/<server><rest>` into the server name and `rest`.
pub fn route(path: &str) -> Option<(&str, &str)> {
    let tail = path.strip_prefix(PATH_PREFIX)?;
    let (name, rest) = tail.find('/').map_or((tail, ""), |i| tail.split_at(i));
    (!name.is_empty()).then_some((name, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_and_requests() {
        assert_eq!(route("/mcp/ops/mcp"), Some(("ops", "/mcp")));
        assert_eq!(route("/mcp/ops"), Some(("ops", "")));
        assert_eq!(route("/mcp/"), None);
        let call = br#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"shell","arguments":{"cmd":"ls"}}}"#;
        let r = McpRequest::read("ops", &http::Method::POST, call);
        assert_eq!(r.record.method, "tools/call");
        assert_eq!(r.record.tool.as_deref(), Some("shell"));
        assert_eq!(
            r.calls,
            [("shell".to_owned(), r#"{"cmd":"ls"}"#.to_owned())]
        );
        let batch = br#"[{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"shell","arguments":{}}}]"#;
        let b = McpRequest::read("ops", &http::Method::POST, batch);
        assert_eq!(b.record.method, "ping");
        assert_eq!(b.calls.len(), 1, "a call later in a batch is judged too");
        assert_eq!(r.id, Some(json!(7)));
        let get = McpRequest::read("ops", &http::Method::GET, b"");
        assert_eq!(get.record.method, "GET");
        let bad = McpServers::validate(RawMcp {
            servers: [(
                "ops".to_owned(),
                RawServer {
                    url: "ftp://x".into(),
                },
            )]
            .into(),
        });
        assert!(bad.is_err_and(|e| e.to_string().contains("mcp.servers.ops.url")));
    }
}
