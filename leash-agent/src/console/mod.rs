//! The web console, served by the admin listener: one page (embedded in
//! the binary, no CDN) and the JSON API behind it, read from the audit
//! trail and the live policy. Read-only: the policy playground decides on a
//! pasted body without sending anything anywhere.
//!
//! Access (see `auth`): the admin token on every listener, as a bearer
//! token or through a session opened with a one-time code from `leash
//! console`; only under the host names the listener answers to.

pub mod auth;
mod content;
mod editor;
mod fleet;
mod keys;
mod queries;
pub use fleet::FleetSource;
mod replay;
mod series;

use std::{path::PathBuf, sync::Arc};

use bytes::Bytes;
use http::{HeaderMap, StatusCode, header};
use serde_json::{Value, json};

use crate::{policy::PolicyHandle, provider::Providers};

const INDEX: &str = include_str!("index.html");
const APP_JS: &str = include_str!("app.js");
const APP_CSS: &str = include_str!("app.css");
const EDITOR_JS: &str = include_str!("editor.js");
const CHARTS_JS: &str = include_str!("charts.js");

/// Most records one API answer holds.
const MAX_RECORDS: usize = 1000;

/// A console answer: status, content type, body, and any other headers.
pub struct Answer {
    pub status: StatusCode,
    pub content_type: &'static str,
    pub body: Bytes,
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
}

impl Answer {
    fn json(status: StatusCode, v: &Value) -> Self {
        Self {
            status,
            content_type: "application/json",
            body: Bytes::from(v.to_string()),
            headers: Vec::new(),
        }
    }

    fn error(status: StatusCode, message: &str) -> Self {
        Self::json(status, &json!({"error": message}))
    }

    fn asset(content_type: &'static str, text: &'static str) -> Self {
        Self {
            status: StatusCode::OK,
            content_type,
            body: Bytes::from_static(text.as_bytes()),
            headers: Vec::new(),
        }
    }
}

/// A hand-over asked for through `POST /api/reload`: answered with the
/// successor's pid, or why not.
pub type ReloadRequest = tokio::sync::oneshot::Sender<Result<u32, String>>;

/// The agent's interception state, as the console shows it.
pub type Interception = Box<dyn Fn() -> Value + Send + Sync>;

/// Where the console reads records: this host's audit trail, or the
/// fleet's central store (`leash collector`).
pub enum Source {
    Dir(PathBuf),
    Fleet(fleet::FleetSource),
}

pub struct Console {
    source: Source,
    policy: Arc<PolicyHandle>,
    providers: Providers,
    /// The transparent agent's state (setup, targets, counters), read at
    /// each request; `None` for the gateway.
    interception: Option<Interception>,
    auth: auth::Auth,
    /// Records as they are written (the live feed).
    live: Option<tokio::sync::broadcast::Sender<Bytes>>,
    /// `admin.allow_policy_edit`: the policy file may be replaced.
    policy_edit: bool,
    /// `admin.trace_url`: a tracing UI's address for a trace id.
    trace_url: Option<String>,
    budgets: Vec<crate::pipeline::budget::BudgetConfig>,
    /// The budgets' shared spend (`fleet_budgets`): the spend page shows it.
    fleet: Option<Arc<crate::pipeline::budget::fleet::FleetStore>>,
    /// The virtual keys (`None`: the `keys` module is off).
    keys: Option<Arc<crate::keys::registry::Registry>>,
    /// Content capture, and the pipeline that records content reads.
    capture: Option<(Arc<crate::capture::Capture>, Arc<crate::pipeline::Pipeline>)>,
    /// Where console events (policy changes) go into the audit trail.
    pipeline: Option<Arc<crate::pipeline::Pipeline>>,
    /// One policy change at a time: read, check, write.
    edit_lock: std::sync::Mutex<()>,
    /// Asks the process for a hand-over (`POST /api/reload`).
    reload: Option<tokio::sync::mpsc::Sender<ReloadRequest>>,
    /// This host's audit index (`Source::Dir`).
    index: Option<Arc<crate::audit::index::Index>>,
    /// Heavy queries (records, spend, violations, interception): admitted
    /// (running or briefly waiting), and running.
    admitted: Arc<tokio::sync::Semaphore>,
    queries: Arc<tokio::sync::Semaphore>,
}

fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == name && !v.is_empty()).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => match bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                Some(b) => {
                    out.push(b);
                    i += 2;
                }
                None => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The page and its scripts and styles: served without a token.
fn static_asset(path: &str) -> Option<Answer> {
    Some(match path {
        "/" | "/console" | "/console/" => Answer::asset("text/html; charset=utf-8", INDEX),
        "/console/app.js" => Answer::asset("text/javascript; charset=utf-8", APP_JS),
        "/console/editor.js" => Answer::asset("text/javascript; charset=utf-8", EDITOR_JS),
        "/console/charts.js" => Answer::asset("text/javascript; charset=utf-8", CHARTS_JS),
        "/console/app.css" => Answer::asset("text/css; charset=utf-8", APP_CSS),
        "/favicon.ico" => Answer {
            status: StatusCode::NO_CONTENT,
            content_type: "image/x-icon",
            body: Bytes::new(),
            headers: Vec::new(),
        },
        _ => return None,
    })
}

impl Console {
    pub fn new(
        source: Source,
        policy: Arc<PolicyHandle>,
        providers: Providers,
        interception: Option<Interception>,
        auth: auth::Auth,
    ) -> Self {
        let index = match &source {
            Source::Dir(dir) => Some(Arc::new(crate::audit::index::Index::new(dir))),
            Source::Fleet(_) => None,
        };
        Self {
            index,
            admitted: Arc::new(tokio::sync::Semaphore::new(queries::MAX_ADMITTED)),
            queries: Arc::new(tokio::sync::Semaphore::new(queries::MAX_CONCURRENT)),
            source,
            policy,
            providers,
            interception,
            auth,
            live: None,
            policy_edit: false,
            trace_url: None,
            budgets: Vec::new(),
            fleet: None,
            keys: None,
            capture: None,
            pipeline: None,
            edit_lock: std::sync::Mutex::new(()),
            reload: None,
        }
    }

    /// The budgets the spend page reports on.
    #[must_use]
    pub fn with_budgets(mut self, budgets: Vec<crate::pipeline::budget::BudgetConfig>) -> Self {
        self.budgets = budgets;
        self
    }

    /// The budgets' shared spend, shown on the spend page.
    #[must_use]
    pub fn with_fleet_budgets(
        mut self,
        fleet: Option<Arc<crate::pipeline::budget::fleet::FleetStore>>,
    ) -> Self {
        self.fleet = fleet;
        self
    }

    /// Where the record view links a trace id (`admin.trace_url`).
    #[must_use]
    pub fn with_trace_url(mut self, url: Option<String>) -> Self {
        self.trace_url = url;
        self
    }

    /// Lets the console replace the policy file (`admin.allow_policy_edit`).
    #[must_use]
    pub fn with_policy_edit(mut self, allowed: bool) -> Self {
        self.policy_edit = allowed;
        self
    }

    /// The virtual keys the keys page lists and revokes.
    #[must_use]
    pub fn with_keys(mut self, keys: Option<Arc<crate::keys::registry::Registry>>) -> Self {
        self.keys = keys;
        self
    }

    /// Captured content: redacted content is shown (each read recorded in
    /// the trail by `pipeline`), and reads by `leash audit show` recorded.
    #[must_use]
    pub fn with_capture(
        mut self,
        capture: Option<Arc<crate::capture::Capture>>,
        pipeline: Arc<crate::pipeline::Pipeline>,
    ) -> Self {
        self.capture = capture.map(|c| (c, Arc::clone(&pipeline)));
        self.pipeline = Some(pipeline);
        self
    }

    /// Lets `POST /api/reload` (`leash reload`) ask for a hand-over.
    #[must_use]
    pub fn with_reload(mut self, reload: tokio::sync::mpsc::Sender<ReloadRequest>) -> Self {
        self.reload = Some(reload);
        self
    }

    /// `POST /api/reload`: a hand-over to a successor with the config as
    /// it is now; answers once the successor serves (or why not).
    async fn reload(&self) -> Answer {
        let Some(reload) = &self.reload else {
            return Answer::error(
                StatusCode::NOT_IMPLEMENTED,
                "this process cannot hand over (the transparent agent restarts instead)",
            );
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        if reload.send(tx).await.is_err() {
            return Answer::error(StatusCode::CONFLICT, "this process is stopping");
        }
        match rx.await {
            Ok(Ok(pid)) => Answer::json(
                StatusCode::OK,
                &json!({"pid": pid, "previous": std::process::id()}),
            ),
            Ok(Err(why)) => Answer::error(StatusCode::UNPROCESSABLE_ENTITY, &why),
            Err(_) => Answer::error(StatusCode::CONFLICT, "this process is stopping"),
        }
    }

    /// Feeds `/api/live` from the audit writer's records.
    #[must_use]
    pub fn with_live(mut self, live: tokio::sync::broadcast::Sender<Bytes>) -> Self {
        self.live = Some(live);
        self
    }

    /// A subscription to the live feed, for an authorized request.
    pub fn live(
        &self,
        headers: &HeaderMap,
        authority: Option<&str>,
    ) -> Result<tokio::sync::broadcast::Receiver<Bytes>, Answer> {
        self.authorized(headers, authority, false)?;
        self.live
            .as_ref()
            .map(tokio::sync::broadcast::Sender::subscribe)
            .ok_or_else(|| Answer::error(StatusCode::NOT_FOUND, "no live feed here"))
    }

    /// Whether `path` is the console's.
    pub fn owns(path: &str) -> bool {
        path == "/"
            || path == "/favicon.ico"
            || path == "/login"
            || path.starts_with("/console")
            || path.starts_with("/api/")
    }

    fn authorized(
        &self,
        headers: &HeaderMap,
        authority: Option<&str>,
        changes: bool,
    ) -> Result<Arc<str>, Answer> {
        self.auth.check(headers, authority, changes).map_err(|d| match d {
            auth::Denied::WrongHost => Answer::error(
                StatusCode::MISDIRECTED_REQUEST,
                "this admin listener does not answer to that host name (admin.allowed_hosts)",
            ),
            auth::Denied::Unauthenticated => Answer::error(
                StatusCode::UNAUTHORIZED,
                "the console needs the admin token (`Authorization: Bearer <token>`) or a session: run `leash console` for a login URL",
            ),
            auth::Denied::Forged => Answer::error(
                StatusCode::FORBIDDEN,
                "a change from a session must come from the console page",
            ),
        })
    }

    /// `/login?code=…`: a one-time code from `leash console` becomes a
    /// session cookie, then the page.
    fn login(&self, headers: &HeaderMap, authority: Option<&str>, query: &str) -> Answer {
        if !self.auth.host_allowed(headers, authority) {
            return Answer::error(StatusCode::MISDIRECTED_REQUEST, "wrong host name");
        }
        let cookie = query_param(query, "code").and_then(|c| self.auth.login(&c));
        match cookie {
            Some(cookie) => Answer {
                status: StatusCode::SEE_OTHER,
                content_type: "text/plain",
                body: Bytes::from_static(b"logged in\n"),
                headers: vec![
                    (header::SET_COOKIE, cookie),
                    (header::LOCATION, http::HeaderValue::from_static("/console")),
                ],
            },
            None => Answer::error(
                StatusCode::UNAUTHORIZED,
                "this login code is unknown, used or expired: run `leash console` again",
            ),
        }
    }

    /// Answers a console request. `body` is the request body (POST only).
    pub async fn handle(
        &self,
        method: &http::Method,
        path: &str,
        query: &str,
        headers: &HeaderMap,
        authority: Option<&str>,
        body: &[u8],
    ) -> Answer {
        if path == "/login" {
            return self.login(headers, authority, query);
        }
        if !self.auth.host_allowed(headers, authority) {
            return Answer::error(
                StatusCode::MISDIRECTED_REQUEST,
                "this admin listener does not answer to that host name (admin.allowed_hosts)",
            );
        }
        // The page itself holds no data.
        if let Some(asset) = static_asset(path) {
            return asset;
        }
        let changes = !matches!(*method, http::Method::GET | http::Method::HEAD);
        let actor = match self.authorized(headers, authority, changes) {
            Ok(actor) => actor,
            Err(denied) => return denied,
        };
        let heavy = matches!(
            path,
            "/api/records"
                | "/api/spend"
                | "/api/series"
                | "/api/violations"
                | "/api/tools"
                | "/api/interception"
                | "/api/policy/replay"
        ) || (path.starts_with("/api/records/") && path.ends_with("/content"));
        let _permits = if heavy {
            // A short queue, then 429: never an unbounded wait.
            let Ok(admitted) = Arc::clone(&self.admitted).try_acquire_owned() else {
                return queries::busy();
            };
            match tokio::time::timeout(
                queries::QUEUE_WAIT,
                Arc::clone(&self.queries).acquire_owned(),
            )
            .await
            {
                Ok(Ok(running)) => Some((admitted, running)),
                _ => return queries::busy(),
            }
        } else {
            None
        };
        if heavy {
            tracing::debug!(path, "console query holds a slot");
            crate::faults::console_query_delay().await;
        }
        match (method.as_str(), path) {
            ("POST", "/api/login-code") => {
                let who = serde_json::from_slice::<Value>(body).ok();
                let who = who.as_ref().and_then(|v| v["who"].as_str());
                Answer::json(
                    StatusCode::OK,
                    &json!({"code": self.auth.new_code(who), "expires_in_secs": 120}),
                )
            }
            ("GET", "/api/records") => self.records(query).await,
            ("GET", "/api/spend") => self.spend(query).await,
            ("GET", "/api/series") => self.series(query).await,
            ("GET", "/api/violations") => self.violations().await,
            ("GET", "/api/tools") => self.tools().await,
            ("GET", "/api/policy") => self.policy(),
            ("POST", "/api/policy/test") => self.playground(body),
            ("POST", "/api/policy/replay") => self.replay(body, query).await,
            ("POST", "/api/reload") => self.reload().await,
            ("PUT", "/api/policy") => self.save_policy(&actor, body),
            ("POST", "/api/policy/edit") => {
                let preview = query
                    .split('&')
                    .any(|p| p.split('=').next() == Some("preview"));
                self.edit_policy(&actor, body, preview)
            }
            ("GET", "/api/keys") | ("POST", "/api/audit/content-read") => {
                self.keys_and_content(method, path, body).await
            }
            (_, p) if p.ends_with("/content") || p.ends_with("/revoke") => {
                self.keys_and_content(method, path, body).await
            }
            ("GET", "/api/interception") => match &self.interception {
                Some(state) => {
                    let mut v = state();
                    v["shadow_ai"] = self.shadow_ai().await;
                    Answer::json(StatusCode::OK, &v)
                }
                None if matches!(self.source, Source::Fleet(_)) => Answer::json(
                    StatusCode::OK,
                    &json!({"mode": "fleet", "note": "the collector: every host's records; each agent's own console shows its interception"}),
                ),
                None => Answer::json(
                    StatusCode::OK,
                    &json!({"mode": "gateway", "note": "this leash runs the explicit gateway only"}),
                ),
            },
            (_, p) if p.starts_with("/api/") => {
                Answer::error(StatusCode::NOT_FOUND, "no such console API")
            }
            _ => Answer::error(StatusCode::NOT_FOUND, "not found"),
        }
    }

    /// The keys page's and captured content's API.
    async fn keys_and_content(&self, method: &http::Method, path: &str, body: &[u8]) -> Answer {
        match (method.as_str(), path) {
            ("GET", "/api/keys") => keys::list(self.keys.as_deref()),
            ("POST", "/api/audit/content-read") => {
                content::record_read(self.capture.as_ref(), body)
            }
            ("GET", p) if p.starts_with("/api/records/") && p.ends_with("/content") => {
                let id = &p["/api/records/".len()..p.len() - "/content".len()];
                match &self.source {
                    Source::Dir(dir) => content::show(self.capture.as_ref(), dir, id).await,
                    Source::Fleet(_) => Answer::error(
                        StatusCode::NOT_FOUND,
                        "content is read on the host that captured it",
                    ),
                }
            }
            ("POST", p) if p.starts_with("/api/keys/") && p.ends_with("/revoke") => {
                keys::revoke(
                    self.keys.as_deref(),
                    &p["/api/keys/".len()..p.len() - "/revoke".len()],
                )
                .await
            }
            _ => Answer::error(StatusCode::NOT_FOUND, "no such console API"),
        }
    }

    fn policy(&self) -> Answer {
        Answer::json(StatusCode::OK, &self.policy_state())
    }

    /// The policy as the console shows it: the file, the active rules, the
    /// rule editor's view, the latest loads.
    fn policy_state(&self) -> Value {
        let file = self.policy.file().map(|f| f.display().to_string());
        let text = self
            .policy
            .file()
            .and_then(|f| std::fs::read_to_string(f).ok());
        json!({
            "file": file,
            "editor": editor::state(text.as_deref()),
            "yaml": text,
            "active": self.policy.current().map(|p| p.describe()),
            "editable": self.policy_edit && file.is_some(),
            "fleet": matches!(self.source, Source::Fleet(_)),
            "history": self.policy.history(),
        })
    }

    /// `{"provider": "openai", "endpoint": "/chat/completions", "body": {...}}`
    /// → the decision, as `leash policy test` prints it.
    fn playground(&self, body: &[u8]) -> Answer {
        let Ok(input) = serde_json::from_slice::<Value>(body) else {
            return Answer::error(
                StatusCode::BAD_REQUEST,
                "send JSON: {provider, endpoint, body}",
            );
        };
        let Some(policy) = self.policy.current() else {
            return Answer::error(StatusCode::CONFLICT, "no policy is loaded");
        };
        let name = input["provider"].as_str().unwrap_or("openai");
        let Some(provider) = self.providers.get(name) else {
            return Answer::error(StatusCode::BAD_REQUEST, "unknown provider");
        };
        let endpoint = input["endpoint"].as_str().unwrap_or("/chat/completions");
        let request = match &input["body"] {
            Value::String(s) => s.clone().into_bytes(),
            v => v.to_string().into_bytes(),
        };
        match policy.test(Arc::clone(provider), endpoint, &request) {
            Ok(decision) => {
                let mut out = json!(decision);
                if out["action"].is_null() {
                    out["action"] = json!("allow");
                }
                out["forwarded_body"] = decision
                    .forwarded_body
                    .as_deref()
                    .and_then(|b| serde_json::from_slice::<Value>(b).ok())
                    .unwrap_or(Value::Null);
                Answer::json(StatusCode::OK, &out)
            }
            Err(e) => Answer::error(StatusCode::BAD_REQUEST, &e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_params() {
        assert_eq!(
            query_param("a=1&team=red%20team", "team").as_deref(),
            Some("red team")
        );
        assert_eq!(query_param("a=1&team=", "team"), None);
        assert_eq!(query_param("x=%zz", "x").as_deref(), Some("%zz"));
    }

    #[test]
    fn the_api_needs_the_token_on_loopback_too() {
        let console = Console::new(
            Source::Dir(PathBuf::from("/nonexistent")),
            Arc::new(PolicyHandle::new(None, None)),
            Providers::default(),
            None,
            auth::Auth::new(
                "0123456789abcdef".into(),
                "127.0.0.1:9090".parse().unwrap(),
                &[],
            ),
        );
        let get = |path: &str, host: &str, auth: Option<&str>| {
            let mut h = HeaderMap::new();
            h.insert(header::HOST, host.parse().unwrap());
            if let Some(a) = auth {
                h.insert(header::AUTHORIZATION, a.parse().unwrap());
            }
            futures_util::FutureExt::now_or_never(console.handle(
                &http::Method::GET,
                path,
                "",
                &h,
                None,
                b"",
            ))
            .expect("answers without waiting")
            .status
        };
        let bearer = Some("Bearer 0123456789abcdef");
        assert_eq!(
            get("/api/policy", "127.0.0.1:9090", None),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(get("/api/policy", "127.0.0.1:9090", bearer), StatusCode::OK);
        assert_eq!(
            get("/api/policy", "evil.example:9090", bearer),
            StatusCode::MISDIRECTED_REQUEST
        );
        // The page itself is static and served without a token.
        assert_eq!(get("/console", "localhost:9090", None), StatusCode::OK);
        assert_eq!(
            get("/console", "evil.example", None),
            StatusCode::MISDIRECTED_REQUEST
        );
    }
}
