//! One client connection (plain or TLS) that sends requests and times
//! their answers.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream},
    sync::Arc,
    time::{Duration, Instant},
};

use crate::arg;

/// Where and how the client connects; shared by every worker thread.
pub(crate) struct Target {
    pub(crate) addr: SocketAddr,
    /// Host header and TLS server name.
    pub(crate) host: String,
    pub(crate) path: String,
    pub(crate) tls: Option<Arc<rustls::ClientConfig>>,
    pub(crate) headers: String,
    pub(crate) new_connection: bool,
}

pub(crate) fn target(url: &str, args: &[String]) -> Target {
    let (tls, rest) = if let Some(rest) = url.strip_prefix("https://") {
        (true, rest)
    } else {
        (
            false,
            url.strip_prefix("http://")
                .expect("http:// or https:// URL"),
        )
    };
    let (host, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_owned()), |(h, p)| (h, format!("/{p}")));
    let addr = arg(args, "--connect").map_or_else(
        || {
            let with_port = if host.contains(':') {
                host.to_owned()
            } else {
                format!("{host}:{}", if tls { 443 } else { 80 })
            };
            std::net::ToSocketAddrs::to_socket_addrs(&with_port)
                .expect("resolve")
                .next()
                .expect("an address")
        },
        |a| a.parse().expect("--connect IP:PORT"),
    );
    let tls = tls.then(|| {
        let ca = arg(args, "--ca").expect("--ca PEM for an https:// URL");
        let pem = std::fs::read(&ca).expect("read --ca");
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pki_types::pem::PemObject::pem_slice_iter(&pem) {
            roots.add(cert.expect("a PEM certificate")).expect("root");
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("tls versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        // Every new connection is a full handshake: the worst case, and
        // what a fresh process (most SDK clients) does.
        config.resumption = rustls::client::Resumption::disabled();
        Arc::new(config)
    });
    let mut headers = String::new();
    for (i, a) in args.iter().enumerate() {
        if a == "--header" {
            let h = args.get(i + 1).expect("--header 'name: value'");
            headers.push_str(h);
            headers.push_str("\r\n");
        }
    }
    Target {
        addr,
        host: host.split(':').next().unwrap_or(host).to_owned(),
        path,
        tls,
        headers,
        new_connection: args.iter().any(|a| a == "--new-connection"),
    }
}

/// The request the tool sends: a POST of `body` to the target's path, as
/// `host`, with the target's extra headers.
pub(crate) fn request(t: &Target, host: &str, body: &str) -> String {
    format!(
        "POST {} HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\nauthorization: Bearer sk-bench\r\n{}content-length: {}\r\n\r\n{body}",
        t.path,
        t.headers,
        body.len()
    )
}

trait Io: Read + Write + Send {}
impl<T: Read + Write + Send> Io for T {}

pub(crate) struct Conn {
    io: BufReader<Box<dyn Io>>,
}

/// What reading one response saw.
pub(crate) struct Read1 {
    pub(crate) status: u16,
    /// Arrival times of body chunks (chunked encoding) or of the body.
    pub(crate) chunks: Vec<Instant>,
    /// The server closes the connection after this response
    /// (`connection: close`).
    pub(crate) close: bool,
}

impl Conn {
    pub(crate) fn open(t: &Target) -> std::io::Result<Self> {
        Self::open_as(t, &t.host)
    }

    /// A connection presenting `name` as the TLS server name.
    pub(crate) fn open_as(t: &Target, name: &str) -> std::io::Result<Self> {
        let s = TcpStream::connect_timeout(&t.addr, Duration::from_secs(2))?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        let io: Box<dyn Io> = match &t.tls {
            Some(config) => {
                let name = rustls_pki_types::ServerName::try_from(name.to_owned())
                    .map_err(std::io::Error::other)?;
                let conn = rustls::ClientConnection::new(Arc::clone(config), name)
                    .map_err(std::io::Error::other)?;
                let mut tls = rustls::StreamOwned::new(conn, s);
                // Finish the handshake now, so a failure is a connect error.
                while tls.conn.is_handshaking() {
                    tls.conn.complete_io(&mut tls.sock)?;
                }
                Box::new(tls)
            }
            None => Box::new(s),
        };
        Ok(Self {
            io: BufReader::with_capacity(64 * 1024, io),
        })
    }

    pub(crate) fn send(&mut self, t: &Target, body: &str) -> std::io::Result<()> {
        self.send_as(t, &t.host, body)
    }

    pub(crate) fn send_as(&mut self, t: &Target, host: &str, body: &str) -> std::io::Result<()> {
        let req = request(t, host, body);
        let w = self.io.get_mut();
        w.write_all(req.as_bytes())?;
        w.flush()
    }

    pub(crate) fn read(&mut self) -> std::io::Result<Read1> {
        let mut line = String::new();
        self.io.read_line(&mut line)?;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
        let mut length = None;
        let mut chunked = false;
        let mut close = false;
        loop {
            line.clear();
            self.io.read_line(&mut line)?;
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            let lower = l.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                length = v.trim().parse::<usize>().ok();
            } else if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
                chunked = true;
            } else if lower.starts_with("connection:") && lower.contains("close") {
                close = true;
            }
        }
        let mut chunks = Vec::new();
        if chunked {
            loop {
                line.clear();
                self.io.read_line(&mut line)?;
                let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or("0"), 16)
                    .map_err(|_| std::io::Error::other("bad chunk size"))?;
                if size == 0 {
                    line.clear();
                    self.io.read_line(&mut line)?;
                    break;
                }
                let mut buf = vec![0; size + 2];
                self.io.read_exact(&mut buf)?;
                chunks.push(Instant::now());
            }
        } else {
            let n = length.ok_or_else(|| std::io::Error::other("no content-length"))?;
            let mut buf = vec![0; n];
            self.io.read_exact(&mut buf)?;
            chunks.push(Instant::now());
        }
        Ok(Read1 {
            status,
            chunks,
            close,
        })
    }
}
