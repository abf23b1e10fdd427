//! The transparent proxy: takes the connections the kernel hooks redirected
//! and decides, before any byte reaches a provider, what each one is.
//!
//! 1. Its kernel record (who called, where to) is taken once; a connection
//!    without a fresh one is refused.
//! 2. A connection to a forward proxy: the proxy request is read first. A
//!    `CONNECT` to a provider is answered by Leash and goes on as below,
//!    its upstream through the real proxy; a plain-HTTP request to a
//!    provider is refused; anything else is relayed to the real proxy.
//! 3. The `ClientHello` is read (rustls' acceptor: a hello split across
//!    records is reassembled). A provider's server name: TLS is terminated
//!    with a leaf from the organisation CA and the requests are served by
//!    the same pipeline as the gateway's, on the same server loop (limits,
//!    drain). Anything else to a provider address — no server name, another
//!    name, not TLS, a malformed hello — is refused, counted and audited
//!    with its caller; to any other address (`scope: all-tls`) it is
//!    spliced to its destination byte for byte.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::Incoming;
use leash_common::{OrigDst, TARGETED, VIA_FORWARD_PROXY};
use tokio::{io::AsyncWriteExt as _, net::TcpStream};
use tokio_rustls::TlsAcceptor;

use super::{
    BodyLimits, Forwarder, admit_as,
    body::LeashBody,
    certs::{CertCache, Route, UpstreamClients},
    forward::{self, ProxyRequest},
    hygiene, local_response, path,
    sni::{Hello, Prefixed, peek_client_hello},
    untrusted::{self, Untrusted},
};
use crate::{
    credentials,
    intercept::{
        caller,
        config::Injection,
        hooks::{ClientAddr, KernelHooks, NoRecord, OrigDstAddr},
        hosts::HostTable,
        shadow,
    },
    metrics::Metrics,
    pipeline::{ActiveExchange, Caller, CredentialAction, Exchange, Mode, Pipeline, Rejection},
    provider::Provider,
    record::Refusal,
    server::{Handler, Opened, Opener},
    upstream::{
        MarkedHttpsConnector, MarkedResolvingHttpsConnector, Tunnel, connect_succeeded,
        read_connect_answer,
    },
};

/// How long a client may take to send its `ClientHello` or proxy request.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything the transparent listener needs.
pub struct Transparent {
    pub hooks: Arc<KernelHooks>,
    pub hosts: HostTable,
    pub certs: CertCache,
    pub pipeline: Arc<Pipeline>,
    pub limits: BodyLimits,
    pub upstreams: UpstreamClients,
    /// The intercepted ports: a tunnel to one of them is expected to carry
    /// TLS, and its `ClientHello` is read.
    pub ports: Vec<u16>,
    /// Clients that reject the organisation CA, and what to do with them.
    pub untrusted: Arc<Untrusted>,
    pub rerouter: Arc<Rerouter>,
    /// Credentials sent in place of applications' placeholder keys.
    pub inject: Arc<Injection>,
}

/// The caller of a redirected connection, as the audit names it.
fn caller_of(orig: &OrigDst, peer: ClientAddr) -> Caller {
    let process = caller::describe(orig);
    Caller {
        addr: Some(peer.0),
        team: None,
        pid: Some(process.pid),
        exe: process.exe,
        comm: Some(process.comm),
        uid: Some(process.uid),
        user: process.user,
        cgroup: process.cgroup,
        container: process.container,
    }
}

/// One terminated client connection: its provider, caller and upstream.
pub struct Terminated {
    provider: Arc<Provider>,
    /// The MCP server it is, when it is one (`provider` is then its
    /// pipeline provider, `mcp/<server>`).
    mcp: Option<String>,
    caller: Caller,
    pipeline: Arc<Pipeline>,
    forwarder: Forwarder<MarkedHttpsConnector>,
    limits: BodyLimits,
    rerouter: Arc<Rerouter>,
    inject: Arc<Injection>,
}

/// What the agent serves a policy's reroute (`action: route`) with: the
/// configured providers and routes, and a client on marked sockets.
pub struct Rerouter {
    pub providers: crate::provider::Providers,
    pub routes: crate::routes::Routes,
    pub forwarder: Forwarder<MarkedResolvingHttpsConnector>,
}

impl Terminated {
    async fn serve(&self, req: Request<Incoming>) -> Response<LeashBody> {
        if let Some(refused) = hygiene::check(&req) {
            return refused;
        }
        // Decoded once, as in the gateway: rules match, the record shows and
        // the provider receives the same path.
        let canonical = path::canonical(req.uri().path());
        let endpoint = match &canonical {
            Ok(c) => self.provider.upstream.endpoint_of(&c.decoded).to_owned(),
            Err(_) => req.uri().path().to_owned(),
        };
        let mut ex = ActiveExchange::new(
            Exchange::new(
                Mode::Transparent,
                Arc::clone(&self.provider),
                self.caller.clone(),
                endpoint,
            ),
            Arc::clone(&self.pipeline),
        );
        // The application holds a placeholder: the agent sends the real key.
        if let Some(rules) = self.inject.by_provider.get(&self.provider.name) {
            let key = credentials::presented_key(req.headers(), req.uri());
            if self
                .inject
                .placeholder
                .as_deref()
                .is_none_or(|p| key.as_deref() == Some(p))
            {
                // Chosen for the caller once its team is known.
                ex.ext
                    .insert(CredentialAction::ForCaller(Arc::clone(rules)));
            }
        }
        match canonical {
            Ok(c) => {
                let mcp = self.mcp.as_deref();
                let resp = admit_as(ex, req, &c.encoded, self.limits, &self.forwarder, mcp).await;
                if mcp.is_some() || resp.extensions().get::<super::Reroute>().is_none() {
                    return resp;
                }
                // A policy rule sends it to a route: served from here on
                // marked sockets, as the same caller.
                let r = &self.rerouter;
                let context = super::unified::Context {
                    providers: &r.providers,
                    pipeline: &self.pipeline,
                    forwarder: &r.forwarder,
                    limits: self.limits,
                    routes: &r.routes,
                    caller: &self.caller,
                    mode: Mode::Transparent,
                    keep_client_key: false,
                };
                let endpoint = self.provider.upstream.endpoint_of(&c.decoded);
                Box::pin(super::unified::reroute_native(
                    context,
                    self.provider.kind,
                    endpoint,
                    resp,
                ))
                .await
            }
            Err(e) => local_response(
                &mut ex,
                &Rejection {
                    status: http::StatusCode::BAD_REQUEST,
                    code: crate::provider::ErrorCode::BadRequest,
                    message: e.to_string(),
                },
            ),
        }
    }
}

impl Handler for Terminated {
    type Body = LeashBody;

    fn handle(
        self: Arc<Self>,
        _peer: SocketAddr,
        req: Request<Incoming>,
    ) -> impl Future<Output = Response<LeashBody>> + Send {
        super::contain_panics(async move { self.serve(req).await })
    }
}

/// A connection on its way: who made it, where it goes, and whether that
/// is a provider.
struct Opening {
    orig: OrigDst,
    peer: ClientAddr,
    route: Route,
    /// A provider address (or a tunnel to a provider): nothing but a
    /// provider's TLS may pass.
    target: bool,
}

impl Opener for Transparent {
    type Handler = Terminated;

    async fn open(self: Arc<Self>, mut stream: TcpStream, peer: SocketAddr) -> Opened<Terminated> {
        let peer = ClientAddr(peer);
        let orig = self.record_of(peer)?;
        let mut opening = Opening {
            orig,
            peer,
            route: Route {
                dst: OrigDstAddr::of(&orig),
                tunnel: None,
            },
            target: orig.flags & TARGETED != 0,
        };
        if orig.flags & VIA_FORWARD_PROXY != 0
            && !self.through_proxy(&mut stream, &mut opening).await
        {
            return None;
        }
        let Ok((hello, prefix)) = peek_client_hello(&mut stream, HELLO_TIMEOUT).await else {
            if opening.target {
                self.refuse_opening(&opening, Refusal::BadHello, None);
            }
            return None;
        };
        let sni = match &hello {
            Hello::Tls { sni } => sni.clone(),
            _ => None,
        };
        let Some(provider) = sni
            .as_deref()
            .and_then(|n| self.hosts.provider(n))
            .map(Arc::clone)
        else {
            if let Some(host) = sni.as_deref().filter(|h| shadow::is_provider_like(h)) {
                self.shadow_ai(host, &opening);
            }
            if opening.target {
                let refusal = match (&hello, &sni) {
                    (Hello::NotTls, _) => Refusal::NotTls,
                    (Hello::Malformed, _) => Refusal::BadHello,
                    (Hello::Tls { .. }, None) => Refusal::NoSni,
                    (Hello::Tls { .. }, Some(_)) => Refusal::UnknownHost,
                };
                self.refuse_opening(&opening, refusal, sni.as_deref());
                return None;
            }
            self.metrics().intercepted("spliced");
            tracing::debug!(%peer, dst = %opening.route.dst, sni = sni.as_deref().unwrap_or("-"), "splicing");
            self.splice(&mut stream, &prefix, &opening.route).await;
            return None;
        };
        let host = sni.unwrap_or_default();
        if self.bypassed(&opening, &host) {
            self.splice_route(&mut stream, &prefix, &opening.route)
                .await;
            return None;
        }
        self.metrics().intercepted("terminated");
        let config = match self.certs.server_config(&host) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(%host, error = %e, "cannot mint a leaf; closing");
                return None;
            }
        };
        let tls = match TlsAcceptor::from(config)
            .accept(Prefixed::new(prefix, stream))
            .await
        {
            Ok(tls) => tls,
            Err(e) => {
                self.handshake_failed(&opening, &host, &e);
                return None;
            }
        };
        let caller = caller_of(&opening.orig, peer);
        tracing::debug!(%peer, dst = %opening.route.dst, %host, pid = caller.pid, exe = caller.exe.as_deref().unwrap_or("-"), "terminating");
        let conn = Arc::new(Terminated {
            mcp: self.hosts.mcp_server(&host).map(str::to_owned),
            provider,
            caller,
            pipeline: Arc::clone(&self.pipeline),
            forwarder: self.upstreams.forwarder(&opening.route),
            limits: self.limits,
            rerouter: Arc::clone(&self.rerouter),
            inject: Arc::clone(&self.inject),
        });
        Some((Box::new(tls), conn))
    }
}

impl Transparent {
    fn metrics(&self) -> &Metrics {
        self.pipeline.metrics()
    }

    /// Whether `host` (a name or an address) is a provider's.
    fn is_provider(&self, host: &str) -> bool {
        self.hosts.provider(host).is_some()
            || host
                .parse::<IpAddr>()
                .is_ok_and(|ip| self.hooks.is_target(ip))
    }

    /// Reads what the client asked its forward proxy for and sets the
    /// route; `false` when the connection was dealt with here.
    async fn through_proxy(&self, stream: &mut TcpStream, opening: &mut Opening) -> bool {
        let Ok((request, head)) = forward::read_request(stream, HELLO_TIMEOUT).await else {
            return false;
        };
        match request {
            ProxyRequest::Connect { host, port, auth } if self.is_provider(&host) => {
                // Leash is the tunnel's far end; the real one is opened by
                // the upstream connector, with the client's credential.
                if forward::established(stream).await.is_err() {
                    return false;
                }
                let authority = match host.parse::<Ipv6Addr>() {
                    Ok(v6) => format!("[{v6}]:{port}"),
                    Err(_) => format!("{host}:{port}"),
                };
                opening.target = true;
                opening.route.tunnel = Some(Tunnel { authority, auth });
                true
            }
            ProxyRequest::Connect { port, .. } if self.ports.contains(&port) => {
                self.relay_tunnel(stream, &head, opening).await;
                false
            }
            ProxyRequest::Plain { host } if self.is_provider(&host) => {
                let _ = forward::refuse_plain(stream).await;
                self.refuse_opening(opening, Refusal::PlainHttp, Some(&host));
                false
            }
            _ => {
                tracing::debug!(peer = %opening.peer, proxy = %opening.route.dst, "relaying a proxy request");
                self.splice(stream, &head, &opening.route).await;
                false
            }
        }
    }

    /// A `CONNECT` to another host on an intercepted port: relayed to the
    /// real proxy, its answer passed back, then the `ClientHello` read: a
    /// provider's server name inside a tunnel to another host is refused
    /// (it would reach the provider uninspected if that host were an alias
    /// of it); anything else goes on byte for byte.
    async fn relay_tunnel(&self, client: &mut TcpStream, head: &[u8], opening: &Opening) {
        let result = async {
            let direct = Route {
                dst: opening.route.dst,
                tunnel: None,
            };
            let mut upstream = self.upstreams.connector(&direct).connect_raw().await?;
            upstream.write_all(head).await?;
            let answer = read_connect_answer(&mut upstream).await?;
            client.write_all(&answer).await?;
            let mut prefix = Bytes::new();
            if connect_succeeded(&answer) {
                let (hello, read) = peek_client_hello(client, HELLO_TIMEOUT).await?;
                if let Hello::Tls { sni: Some(name) } = &hello
                    && self.hosts.provider(name).is_some()
                {
                    self.refuse_opening(opening, Refusal::ProviderInTunnel, Some(name));
                    return Ok(());
                }
                prefix = read;
            }
            upstream.write_all(&prefix).await?;
            tokio::io::copy_bidirectional(client, &mut upstream).await?;
            Ok::<_, std::io::Error>(())
        }
        .await;
        if let Err(e) = result {
            tracing::debug!(proxy = %opening.route.dst, error = %e, "relayed tunnel ended with an error");
        }
    }

    /// Refuses the connection `opening` describes: counted, logged and
    /// audited with its caller.
    fn refuse_opening(&self, opening: &Opening, refusal: Refusal, name: Option<&str>) {
        let to = match name {
            Some(n) => format!("{n} ({})", opening.route.dst),
            None => opening.route.dst.to_string(),
        };
        let caller = caller_of(&opening.orig, opening.peer);
        tracing::warn!(peer = %opening.peer, %to, reason = refusal.as_str(), pid = caller.pid, exe = caller.exe.as_deref().unwrap_or("-"), "connection to a provider refused");
        self.refuse(refusal, &to, &caller);
    }

    fn refuse(&self, refusal: Refusal, to: &str, caller: &Caller) {
        self.metrics().refused(refusal.as_str(), 1);
        let record = shadow::refused(refusal, to, caller, self.pipeline.host());
        self.pipeline.audit_event(record);
    }

    /// Records a connection to an LLM endpoint that is not intercepted.
    fn shadow_ai(&self, host: &str, opening: &Opening) {
        self.metrics().shadow_ai(host);
        let caller = caller_of(&opening.orig, opening.peer);
        tracing::info!(%host, pid = caller.pid, exe = caller.exe.as_deref().unwrap_or("-"), "shadow AI: connection to an LLM endpoint that is not intercepted");
        let record = shadow::record(host, &caller, self.pipeline.host());
        self.pipeline.audit_event(record);
    }

    /// The kernel record of the connection from `peer`; without a fresh
    /// one, the connection is refused and audited.
    fn record_of(&self, peer: ClientAddr) -> Option<OrigDst> {
        let why = match self.hooks.take(peer) {
            Ok(orig) => return Some(orig),
            Err(why) => why,
        };
        let refusal = match why {
            NoRecord::Missing => Refusal::NoRecord,
            NoRecord::Stale => Refusal::StaleRecord,
        };
        self.metrics().intercepted("unknown");
        tracing::warn!(%peer, reason = refusal.as_str(), "connection to the transparent proxy without a kernel record; refused");
        let caller = Caller {
            addr: Some(peer.0),
            ..Caller::default()
        };
        self.refuse(refusal, &peer.to_string(), &caller);
        None
    }

    /// Whether the connection's executable is let through uninspected
    /// (`intercept.bypass_executables`, or `on_untrusted_client: splice`
    /// after it rejected the CA); audited as bypassed.
    fn bypassed(&self, opening: &Opening, host: &str) -> bool {
        if !self.untrusted.active() {
            return false;
        }
        let caller = caller_of(&opening.orig, opening.peer);
        let Some(why) = caller.exe.as_deref().and_then(|e| self.untrusted.bypass(e)) else {
            return false;
        };
        self.metrics().intercepted("bypassed");
        tracing::info!(peer = %opening.peer, %host, exe = caller.exe.as_deref().unwrap_or("-"), reason = ?why, "provider connection let through uninspected (bypass)");
        let record = shadow::bypassed(why, host, &caller, self.pipeline.host());
        self.pipeline.audit_event(record);
        true
    }

    /// A client's TLS handshake failed: when it rejected the organisation
    /// CA, counted per executable, remembered, and audited.
    fn handshake_failed(&self, opening: &Opening, host: &str, e: &std::io::Error) {
        if !untrusted::is_rejection(e) {
            tracing::debug!(peer = %opening.peer, %host, error = %e, "TLS handshake with the client failed");
            return;
        }
        let caller = caller_of(&opening.orig, opening.peer);
        let exe = caller.exe.as_deref().unwrap_or("-");
        tracing::warn!(peer = %opening.peer, %host, exe, pid = caller.pid, error = %e, "the client does not trust the organisation CA (run `leash ca install`, or see intercept.on_untrusted_client)");
        self.metrics().untrusted_client(exe);
        self.untrusted.rejected(&caller, host);
        self.refuse(Refusal::UntrustedClient, host, &caller);
    }

    /// Relays `client` to where the route goes (through the forward proxy's
    /// tunnel, if it has one), after the bytes already read.
    async fn splice_route(&self, client: &mut TcpStream, head: &[u8], route: &Route) {
        if route.tunnel.is_none() {
            return self.splice(client, head, route).await;
        }
        let result = async {
            let mut upstream = self.upstreams.connector(route).connect().await?;
            upstream.write_all(head).await?;
            tokio::io::copy_bidirectional(client, &mut upstream).await
        }
        .await;
        if let Err(e) = result {
            tracing::debug!(dst = %route.dst, error = %e, "spliced tunnel ended with an error");
        }
    }

    /// Relays `client` to the route's destination (the original one, or
    /// the real forward proxy), after the bytes already read.
    async fn splice(&self, client: &mut TcpStream, head: &[u8], route: &Route) {
        let direct = Route {
            dst: route.dst,
            tunnel: None,
        };
        let result = async {
            let mut upstream = self.upstreams.connector(&direct).connect_raw().await?;
            upstream.write_all(head).await?;
            tokio::io::copy_bidirectional(client, &mut upstream).await
        }
        .await;
        if let Err(e) = result {
            tracing::debug!(dst = %route.dst, error = %e, "spliced connection ended with an error");
        }
    }
}

/// The addresses the proxy listens on: `127.0.0.1` and `::1`.
pub fn listen_addrs(port: u16) -> [SocketAddr; 2] {
    [
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port),
        SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), port),
    ]
}
