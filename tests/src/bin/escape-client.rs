//! The attacker's client of the escape suite (`tests/tests/escapes.rs`):
//! small, blocking, and able to do what ordinary clients do not — cut a
//! `ClientHello` into several TLS records, bind a chosen source port, send
//! UDP to a provider. Run inside the watched cgroup by the tests. Prints
//! one line saying what happened (`status 200 ...`, `refused: ...`,
//! `closed`) and exits 0 unless its arguments are wrong.
//!
//! ```text
//! escape-client tls ADDR:PORT SNI|- CAFILE RECORDS SRC|- BODY
//! escape-client raw ADDR:PORT plain|tls-junk BODY
//! escape-client udp ADDR:PORT
//! escape-client dns-flood FROM_ADDR:53 COUNT NAME
//! ```

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    reason = "a test tool: a failure is reported on stdout or aborts the test"
)]

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream, UdpSocket},
    sync::Arc,
    time::Duration,
};

use rustls::{
    ClientConfig, ClientConnection, RootCertStore,
    pki_types::{CertificateDer, ServerName, pem::PemObject as _},
};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let line = match args.first().map(String::as_str) {
        Some("tls") if args.len() == 7 => tls(&args[1..]),
        Some("udp") if args.len() == 2 => udp(&args[1]),
        Some("raw") if args.len() == 4 => raw(&args[1], &args[2], &args[3]),
        Some("dns-flood") if args.len() == 4 => dns_flood(&args[1], &args[2], &args[3]),
        _ => {
            eprintln!(
                "usage: escape-client tls ADDR:PORT SNI|- CAFILE RECORDS SRC|- BODY | raw ADDR:PORT plain|tls-junk BODY | udp ADDR:PORT | dns-flood FROM COUNT NAME"
            );
            std::process::exit(2);
        }
    };
    println!("{line}");
}

/// `ClientHello` bytes (one TLS record) re-framed into `parts` records.
fn reframe(record: &[u8], parts: usize) -> Vec<u8> {
    if parts <= 1 || record.len() < 6 || record[0] != 0x16 {
        return record.to_vec();
    }
    let body = &record[5..];
    let step = body.len().div_ceil(parts);
    let mut out = Vec::new();
    for chunk in body.chunks(step) {
        out.extend_from_slice(&record[..3]);
        out.extend_from_slice(&u16::try_from(chunk.len()).unwrap().to_be_bytes());
        out.extend_from_slice(chunk);
    }
    out
}

/// Connects (from `src` if given, with `SO_REUSEADDR` so a port just used
/// can be taken again), makes TLS with the given SNI (`-`: none: the
/// address is the server name), its hello cut into `records` records, and
/// POSTs `body` as a chat completion.
fn tls(args: &[String]) -> String {
    let addr: SocketAddr = args[0].parse().expect("ADDR:PORT");
    let sni = args[1].as_str();
    let ca = std::fs::read(&args[2]).expect("CAFILE");
    let records: usize = args[3].parse().expect("RECORDS");
    let src = args[4].as_str();
    let body = args[5].as_bytes();

    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&ca) {
        roots.add(cert.expect("PEM")).expect("root");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let name = if sni == "-" {
        ServerName::from(addr.ip())
    } else {
        ServerName::try_from(sni.to_owned()).expect("SNI")
    };
    let host = if sni == "-" {
        addr.ip().to_string()
    } else {
        sni.to_owned()
    };

    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )
    .unwrap();
    if src != "-" {
        let src: SocketAddr = src.parse().expect("SRC");
        socket.set_reuse_address(true).unwrap();
        if let Err(e) = socket.bind(&src.into()) {
            return format!("bind failed: {e}");
        }
    }
    if let Err(e) = socket.connect_timeout(&addr.into(), Duration::from_secs(5)) {
        return format!("refused: {e}");
    }
    let mut tcp: TcpStream = socket.into();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();

    let mut conn = ClientConnection::new(Arc::new(config), name).unwrap();
    // The first flight is the ClientHello: send it in pieces of our choosing.
    let mut hello = Vec::new();
    conn.write_tls(&mut hello).unwrap();
    if let Err(e) = tcp.write_all(&reframe(&hello, records)) {
        return format!("closed: {e}");
    }
    let mut stream = rustls::StreamOwned::new(conn, tcp);
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\nauthorization: Bearer sk-test\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    if let Err(e) = stream
        .write_all(request.as_bytes())
        .and_then(|()| stream.write_all(body))
    {
        return format!("closed: {e}");
    }
    let mut answer = Vec::new();
    if let Err(e) = stream.read_to_end(&mut answer)
        && answer.is_empty()
    {
        return format!("closed: {e}");
    }
    let text = String::from_utf8_lossy(&answer);
    let status = text
        .lines()
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .unwrap_or("none");
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
    format!("status {status} {}", body.replace('\n', " "))
}

/// Sends a datagram to `addr` twice: on a connected socket and with
/// `sendto`. Prints what each did.
fn udp(addr: &str) -> String {
    let addr: SocketAddr = addr.parse().expect("ADDR:PORT");
    let bind: SocketAddr = if addr.is_ipv4() {
        "0.0.0.0:0".parse().unwrap()
    } else {
        "[::]:0".parse().unwrap()
    };
    let connected = UdpSocket::bind(bind)
        .and_then(|s| {
            s.connect(addr)?;
            s.send(b"quic-initial connected AKIAZ7QX3PLM9V2KD4RT")
        })
        .map_or_else(|e| format!("refused ({e})"), |n| format!("sent {n}"));
    let unconnected = UdpSocket::bind(bind)
        .and_then(|s| s.send_to(b"quic-initial sendto AKIAZ7QX3PLM9V2KD4RT", addr))
        .map_or_else(|e| format!("refused ({e})"), |n| format!("sent {n}"));
    format!("connect: {connected}; sendto: {unconnected}")
}

/// Sends `body` as it is (`plain`: an HTTP request; `tls-junk`: after a TLS
/// handshake record header, so it looks like TLS but is no `ClientHello`)
/// and reads until the other side closes.
fn raw(addr: &str, mode: &str, body: &str) -> String {
    let addr: SocketAddr = addr.parse().expect("ADDR:PORT");
    let mut bytes = Vec::new();
    if mode == "plain" {
        bytes.extend_from_slice(
            format!(
                "POST /v1/chat/completions HTTP/1.1\r\nhost: provider\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        );
    } else {
        bytes.extend_from_slice(&[0x16, 0x03, 0x01]);
        bytes.extend_from_slice(&u16::try_from(body.len()).unwrap().to_be_bytes());
        bytes.extend_from_slice(body.as_bytes());
    }
    let mut tcp = match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
        Ok(t) => t,
        Err(e) => return format!("refused: {e}"),
    };
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    if let Err(e) = tcp.write_all(&bytes) {
        return format!("closed: {e}");
    }
    let _ = tcp.shutdown(std::net::Shutdown::Write);
    let mut answer = Vec::new();
    let _ = tcp.read_to_end(&mut answer);
    if answer.is_empty() {
        "closed".to_owned()
    } else {
        format!("answer {} bytes", answer.len())
    }
}

/// A DNS answer to `name` (type A) with one A record, `ip`.
fn dns_answer(id: u16, name: &str, ip: [u8; 4]) -> Vec<u8> {
    let mut m = Vec::new();
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(&[0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0]);
    for label in name.split('.') {
        m.push(u8::try_from(label.len()).unwrap());
        m.extend_from_slice(label.as_bytes());
    }
    m.extend_from_slice(&[0, 0, 1, 0, 1]);
    // The answer: a pointer to the question's name, A, IN, TTL 3600.
    m.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0x0e, 0x10, 0, 4]);
    m.extend_from_slice(&ip);
    m
}

/// Sends `count` forged answers for `name` from `from` (port 53) to a
/// socket of this process (in the watched cgroup), each with another
/// address (10.x.y.z), and reads them all back.
fn dns_flood(from: &str, count: &str, name: &str) -> String {
    let count: u32 = count.parse().expect("COUNT");
    let sender = UdpSocket::bind(from).expect("bind the forged DNS server address");
    let receiver = UdpSocket::bind("127.0.0.1:0").unwrap();
    receiver
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let to = receiver.local_addr().unwrap();
    let mut echoed = 0u32;
    let mut buf = [0u8; 512];
    for i in 0..count {
        let ip = [
            10,
            u8::try_from((i >> 16) & 0xff).unwrap(),
            u8::try_from((i >> 8) & 0xff).unwrap(),
            u8::try_from(i & 0xff).unwrap(),
        ];
        sender
            .send_to(
                &dns_answer(u16::try_from(i & 0xffff).unwrap(), name, ip),
                to,
            )
            .unwrap();
        // Read each back: none dropped for a full buffer.
        if receiver.recv(&mut buf).is_ok() {
            echoed += 1;
        }
    }
    format!("received {echoed} of {count}")
}
