//! The upstream client: pooled connections, HTTP/2 where the upstream offers
//! it, TLS always verified against the system and webpki roots plus any
//! configured extra roots.

pub mod coalesce;

use std::{
    future::Future,
    io,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
pub use coalesce::Coalescing;
use http::Uri;
use http_body_util::Full;
use hyper_rustls::HttpsConnectorBuilder;
use hyper_util::{
    client::legacy::{
        Client,
        connect::{
            HttpConnector,
            dns::{GaiResolver, Name},
        },
    },
    rt::{TokioExecutor, TokioIo},
};
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::{CertificateDer, pem::PemObject};
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _},
    net::TcpStream,
};

use serde::Deserialize;

use crate::field::{self, FieldError};

/// The `upstream` section (and `upstream_tls.extra_roots`): how Leash
/// reaches providers.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// PEM files whose certificates are trusted in addition to the system and
    /// webpki roots.
    pub extra_roots: Vec<PathBuf>,
    pub connect_timeout: std::time::Duration,
    /// How long to wait for the upstream's response headers.
    pub response_timeout: std::time::Duration,
    /// Upstream host names allowed to resolve to loopback, private,
    /// link-local or other internal addresses (lower case). Any other name
    /// that resolves only to such addresses is refused (SSRF guard); IP
    /// literals in a provider URL are explicit and always allowed.
    pub allow_private_hosts: Vec<String>,
}

/// `upstream` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    connect_timeout_secs: Option<u64>,
    response_timeout_secs: Option<u64>,
    #[serde(default)]
    allow_private_hosts: Vec<String>,
}

/// `upstream_tls` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstreamTls {
    #[serde(default)]
    extra_roots: Vec<PathBuf>,
}

impl UpstreamConfig {
    pub fn validate(
        upstream: RawUpstream,
        upstream_tls: RawUpstreamTls,
        base: &std::path::Path,
    ) -> Result<Self, FieldError> {
        Ok(Self {
            extra_roots: upstream_tls
                .extra_roots
                .into_iter()
                .map(|p| field::resolve(base, p))
                .collect(),
            connect_timeout: field::secs(
                "upstream.connect_timeout_secs",
                upstream.connect_timeout_secs,
                10,
            )?,
            response_timeout: field::secs(
                "upstream.response_timeout_secs",
                upstream.response_timeout_secs,
                600,
            )?,
            allow_private_hosts: upstream
                .allow_private_hosts
                .into_iter()
                .map(|h| h.trim_end_matches('.').to_ascii_lowercase())
                .collect(),
        })
    }
}

/// The gateway's connector: resolves the URI's host (through the SSRF
/// guard). Every upstream connector's HTTP/2 connections coalesce their
/// writes ([`coalesce`]).
pub type HttpsConnector = Coalescing<hyper_rustls::HttpsConnector<HttpConnector<GuardedResolver>>>;
/// The transparent proxy's connector toward hosts a policy reroutes to.
pub type MarkedResolvingHttpsConnector =
    Coalescing<hyper_rustls::HttpsConnector<MarkedResolvingConnector>>;
/// The transparent proxy's connector: one original destination, marked.
pub type MarkedHttpsConnector = Coalescing<hyper_rustls::HttpsConnector<MarkedConnector>>;
pub type HttpsClient = Client<HttpsConnector, Full<Bytes>>;

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot read extra root certificates from {0}: {1}")]
    ExtraRoots(PathBuf, rustls_pki_types::pem::Error),
    #[error("no certificate found in extra roots file {0}")]
    NoCertificate(PathBuf),
    #[error("extra root certificate in {0} is not usable: {1}")]
    BadCertificate(PathBuf, rustls::Error),
    #[error("cannot build the upstream TLS configuration: {0}")]
    Tls(rustls::Error),
}

/// The trust anchors used for every upstream: webpki roots, the system
/// store (if readable) and `upstream_tls.extra_roots`.
pub fn root_store(extra_roots: &[PathBuf]) -> Result<RootCertStore, UpstreamError> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let native = rustls_native_certs::load_native_certs();
    let (added, _ignored) = roots.add_parsable_certificates(native.certs);
    tracing::debug!(added, "system root certificates loaded");
    for path in extra_roots {
        let certs = CertificateDer::pem_file_iter(path)
            .and_then(Iterator::collect::<Result<Vec<_>, _>>)
            .map_err(|e| UpstreamError::ExtraRoots(path.clone(), e))?;
        if certs.is_empty() {
            return Err(UpstreamError::NoCertificate(path.clone()));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| UpstreamError::BadCertificate(path.clone(), e))?;
        }
    }
    Ok(roots)
}

/// The TLS client configuration every upstream connection uses.
pub fn tls_config(config: &UpstreamConfig) -> Result<ClientConfig, UpstreamError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(UpstreamError::Tls)?
        .with_root_certificates(root_store(&config.extra_roots)?)
        .with_no_client_auth())
}

/// Ranges that are not globally reachable (the IANA IPv4 and IPv6
/// Special-Purpose Address Registries, plus multicast and the deprecated
/// site-local range): loopback, private, link-local (cloud metadata at
/// 169.254.169.254 included), carrier-grade NAT, benchmarking,
/// documentation, reserved, unique-local.
const NOT_GLOBAL: &[&str] = &[
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.0.2.0/24",
    "192.88.99.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "198.51.100.0/24",
    "203.0.113.0/24",
    "224.0.0.0/4",
    "240.0.0.0/4",
    "::/128",
    "::1/128",
    "100::/64",
    "2001::/23",
    "2001:db8::/32",
    "3fff::/20",
    "5f00::/16",
    "fc00::/7",
    "fe80::/10",
    "fec0::/10",
    "ff00::/8",
];

static NOT_GLOBAL_NETS: std::sync::LazyLock<Vec<ipnet::IpNet>> =
    std::sync::LazyLock::new(|| NOT_GLOBAL.iter().filter_map(|n| n.parse().ok()).collect());

/// Whether `ip` is internal: not globally reachable, or an IPv6 address
/// that carries an internal IPv4 address inside (v4-mapped,
/// v4-compatible, NAT64 `64:ff9b::/96` and `64:ff9b:1::/48`, 6to4
/// `2002::/16`). A provider host name resolving to one of these is refused
/// unless allowed by name.
pub fn is_internal(ip: IpAddr) -> bool {
    if NOT_GLOBAL_NETS.iter().any(|n| n.contains(&ip)) {
        return true;
    }
    let IpAddr::V6(v6) = ip else {
        return false;
    };
    let s = v6.segments();
    let embedded =
        |hi: u16, lo: u16| std::net::Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    let inner = match s {
        [0, 0, 0, 0, 0, 0 | 0xffff, hi, lo] | [0x64, 0xff9b, 0, 0, 0, 0, hi, lo] => {
            Some(embedded(hi, lo))
        }
        [0x64, 0xff9b, 1, ..] => Some(embedded(s[6], s[7])),
        [0x2002, hi, lo, ..] => Some(embedded(hi, lo)),
        _ => None,
    };
    inner.is_some_and(|v4| is_internal(IpAddr::V4(v4)))
}

/// Resolves upstream host names with the system resolver, then drops
/// internal addresses unless the name is allowed: the check is on the
/// address actually connected to, so DNS rebinding does not get around it.
#[derive(Clone)]
pub struct GuardedResolver {
    inner: GaiResolver,
    allowed: Arc<Vec<String>>,
}

impl GuardedResolver {
    pub fn new(allowed: Vec<String>) -> Self {
        Self {
            inner: GaiResolver::new(),
            allowed: Arc::new(allowed),
        }
    }
}

impl tower_service::Service<Name> for GuardedResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, io::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), io::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let host = name.as_str().trim_end_matches('.').to_ascii_lowercase();
        let allowed = self.allowed.contains(&host);
        let lookup = self.inner.call(name);
        Box::pin(async move {
            let all: Vec<SocketAddr> = lookup.await?.collect();
            if allowed {
                return Ok(all.into_iter());
            }
            let (internal, public): (Vec<SocketAddr>, Vec<SocketAddr>) =
                all.into_iter().partition(|a| is_internal(a.ip()));
            if public.is_empty() && !internal.is_empty() {
                tracing::warn!(%host, addresses = ?internal, "upstream refused: the host name resolves only to internal addresses");
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!(
                        "upstream host `{host}` resolves only to internal addresses ({}); list it in upstream.allow_private_hosts to allow it",
                        internal
                            .iter()
                            .map(|a| a.ip().to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            }
            if !internal.is_empty() {
                tracing::warn!(%host, dropped = ?internal, "internal addresses dropped from an upstream's DNS answer");
            }
            Ok(public.into_iter())
        })
    }
}

pub fn build_client(config: &UpstreamConfig) -> Result<HttpsClient, UpstreamError> {
    let tls = tls_config(config)?;
    let mut http =
        HttpConnector::new_with_resolver(GuardedResolver::new(config.allow_private_hosts.clone()));
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(config.connect_timeout));
    let connector = HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_all_versions()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(256)
        .build(Coalescing(connector)))
}

/// A credential: kept, passed on, never printed.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Secret(pub Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<secret>")
    }
}

/// The longest answer head a forward proxy may give to a `CONNECT`.
const MAX_PROXY_ANSWER: usize = 16 * 1024;

/// Opens a tunnel to `authority` through the proxy at the other end of
/// `stream` (a `CONNECT`, with the client's credential): `Ok` once the
/// proxy answered 2xx.
pub async fn open_tunnel<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    authority: &str,
    auth: Option<&Secret>,
) -> io::Result<()> {
    let mut head = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n").into_bytes();
    if let Some(Secret(value)) = auth {
        head.extend_from_slice(b"Proxy-Authorization: ");
        head.extend_from_slice(value);
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    stream.write_all(&head).await?;
    let answer = read_connect_answer(stream).await?;
    if connect_succeeded(&answer) {
        return Ok(());
    }
    Err(io::Error::other(format!(
        "the forward proxy refused the tunnel to {authority}: {}",
        String::from_utf8_lossy(answer.split(|b| *b == b'\r').next().unwrap_or_default())
    )))
}

/// Reads a forward proxy's answer to a `CONNECT`, up to its blank line.
/// The answer to a CONNECT has no body and nothing follows it until the
/// client speaks, so reading up to the blank line is exact.
pub async fn read_connect_answer<S: AsyncRead + Unpin>(stream: &mut S) -> io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(256);
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        if buf.len() >= MAX_PROXY_ANSWER || stream.read(&mut byte).await? == 0 {
            return Err(io::Error::other(
                "the forward proxy did not answer the CONNECT",
            ));
        }
        buf.push(byte[0]);
    }
    Ok(buf)
}

/// Whether a `CONNECT` answer head says the tunnel is open (2xx).
pub fn connect_succeeded(answer: &[u8]) -> bool {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    matches!(resp.parse(answer), Ok(httparse::Status::Complete(_)))
        && resp.code.is_some_and(|c| (200..300).contains(&c))
}

/// Connects every request to one address (an intercepted connection's
/// original destination) on a socket carrying `SO_MARK = mark`, so the
/// kernel hooks let it through instead of looping it back to Leash; with a
/// `tunnel`, `dst` is a forward proxy and each connection is a `CONNECT`
/// through it.
#[derive(Clone, Debug)]
pub struct MarkedConnector {
    pub dst: SocketAddr,
    pub mark: u32,
    pub timeout: Duration,
    pub tunnel: Option<Tunnel>,
}

/// Where a forward proxy is asked to connect, with the client's own
/// credential for it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Tunnel {
    /// `host:port`.
    pub authority: String,
    pub auth: Option<Secret>,
}

impl MarkedConnector {
    /// A plain TCP connection to `dst` on a marked socket.
    pub async fn connect_raw(&self) -> io::Result<TcpStream> {
        let domain = socket2::Domain::for_address(self.dst);
        let socket =
            socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
        socket.set_mark(self.mark)?;
        socket.set_nonblocking(true)?;
        socket.set_tcp_nodelay(true)?;
        let socket = tokio::net::TcpSocket::from_std_stream(socket.into());
        let stream = tokio::time::timeout(self.timeout, socket.connect(self.dst))
            .await
            .map_err(|_| {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("connect to {} timed out", self.dst),
                )
            })??;
        Ok(stream)
    }

    /// A connection to the original destination: direct, or through the
    /// forward proxy's tunnel.
    pub async fn connect(&self) -> io::Result<TcpStream> {
        let mut stream = self.connect_raw().await?;
        if let Some(t) = &self.tunnel {
            tokio::time::timeout(
                self.timeout,
                open_tunnel(&mut stream, &t.authority, t.auth.as_ref()),
            )
            .await
            .map_err(|_| {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the forward proxy did not answer in time",
                )
            })??;
        }
        Ok(stream)
    }
}

impl tower_service::Service<Uri> for MarkedConnector {
    type Response = TokioIo<TcpStream>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { this.connect().await.map(TokioIo::new) })
    }
}

/// Resolves the request's host (through the `GuardedResolver`, as the
/// gateway does; an IP literal as it is) and connects on a socket carrying
/// `SO_MARK = mark`: the agent's own calls to other providers (a policy's
/// reroute), which the kernel hooks must let through.
#[derive(Clone)]
pub struct MarkedResolvingConnector {
    resolver: GuardedResolver,
    mark: u32,
    timeout: Duration,
}

impl tower_service::Service<Uri> for MarkedResolvingConnector {
    type Response = TokioIo<TcpStream>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let mut resolver = self.resolver.clone();
        let (mark, timeout) = (self.mark, self.timeout);
        Box::pin(async move {
            let host = uri
                .host()
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no host"))?
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned();
            let port = uri
                .port_u16()
                .unwrap_or(if uri.scheme_str() == Some("https") {
                    443
                } else {
                    80
                });
            let addrs: Vec<SocketAddr> = if let Ok(ip) = host.parse::<IpAddr>() {
                vec![SocketAddr::new(ip, port)]
            } else {
                let name: Name = host
                    .parse()
                    .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "bad host"))?;
                std::future::poll_fn(|cx| resolver.poll_ready(cx)).await?;
                resolver
                    .call(name)
                    .await?
                    .map(|a| SocketAddr::new(a.ip(), port))
                    .collect()
            };
            let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
            for dst in addrs {
                let connector = MarkedConnector {
                    dst,
                    mark,
                    timeout,
                    tunnel: None,
                };
                match connector.connect_raw().await {
                    Ok(stream) => return Ok(TokioIo::new(stream)),
                    Err(e) => last = e,
                }
            }
            Err(last)
        })
    }
}

/// The agent's client for calls it makes on its own (a policy's reroute,
/// its gateway listener): any upstream, verified TLS, marked sockets.
pub fn marked_resolving_client(
    config: &UpstreamConfig,
    mark: u32,
) -> Result<Client<MarkedResolvingHttpsConnector, Full<Bytes>>, UpstreamError> {
    let connector = MarkedResolvingConnector {
        resolver: GuardedResolver::new(config.allow_private_hosts.clone()),
        mark,
        timeout: config.connect_timeout,
    };
    let https = HttpsConnectorBuilder::new()
        .with_tls_config(tls_config(config)?)
        .https_or_http()
        .enable_all_versions()
        .wrap_connector(connector);
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(256)
        .build(Coalescing(https)))
}

/// A client whose connections all go to `connector.dst`, TLS-verified
/// against the request URI's host name.
pub fn marked_client(
    connector: MarkedConnector,
    tls: ClientConfig,
) -> Client<MarkedHttpsConnector, Full<Bytes>> {
    let https = HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_all_versions()
        .wrap_connector(connector);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .build(Coalescing(https))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_addresses() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "::ffff:169.254.169.254",
            "::ffff:127.0.0.1",
            "198.18.0.1",
            "192.0.0.8",
            "fec0::1",
            "64:ff9b::7f00:1",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b:1::a00:1",
            "2002:7f00:1::1",
            "2002:a00:1::",
            "2001::1",
            "::127.0.0.1",
        ] {
            assert!(is_internal(ip.parse().unwrap()), "{ip} is internal");
        }
        for ip in [
            "104.18.7.192",
            "142.250.74.138",
            "2606:4700::6812:7c0",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
        ] {
            assert!(!is_internal(ip.parse().unwrap()), "{ip} is public");
        }
    }

    #[tokio::test]
    async fn a_name_resolving_only_to_loopback_is_refused_unless_allowed() {
        use tower_service::Service as _;
        let name: Name = "localhost".parse().unwrap();
        let err = GuardedResolver::new(Vec::new())
            .call(name.clone())
            .await
            .expect_err("localhost is refused");
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied);
        assert!(err.to_string().contains("allow_private_hosts"), "{err}");
        let addrs: Vec<SocketAddr> = GuardedResolver::new(vec!["localhost".into()])
            .call(name)
            .await
            .unwrap()
            .collect();
        assert!(addrs.iter().all(|a| a.ip().is_loopback()) && !addrs.is_empty());
    }
}
