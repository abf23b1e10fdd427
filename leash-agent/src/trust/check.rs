//! `leash ca check`: does every runtime on this host trust the organisation
//! CA with its default settings? Leash serves TLS on a loopback port with a
//! leaf for `localhost` minted from the CA, then starts each runtime it
//! finds (curl, each `python3` with its HTTP libraries, `node`, `java`) in
//! a fresh login environment (`env -i … bash -lc`), as a newly started app
//! would be, and makes one HTTPS request to it. A runtime that does not
//! trust the CA fails the handshake: the table says which, why, and the
//! fix.

use std::{
    io::{Read as _, Write as _},
    net::TcpListener,
    path::Path,
    process::Command,
    sync::Arc,
    time::Duration,
};

use serde::Serialize;

use crate::ca::{CaError, CertAuthority};

/// One runtime's verdict.
#[derive(Debug, Serialize)]
pub struct Verdict {
    pub runtime: String,
    pub version: String,
    pub trusted: bool,
    pub detail: String,
    pub fix: String,
}

#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error(transparent)]
    Ca(#[from] CaError),
    #[error("cannot serve the check: {0}")]
    Serve(std::io::Error),
    #[error("cannot build the check's TLS server: {0}")]
    Tls(rustls::Error),
}

/// A loopback TLS server presenting a `localhost` leaf from the CA; each
/// connection is answered `200 OK`.
fn serve(ca: &CertAuthority) -> Result<u16, CheckError> {
    let (chain, key) = ca.mint("localhost")?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(chain, key))
        .map_err(CheckError::Tls)?;
    let config = Arc::new(config);
    let listener = TcpListener::bind("127.0.0.1:0").map_err(CheckError::Serve)?;
    let port = listener.local_addr().map_err(CheckError::Serve)?.port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let config = Arc::clone(&config);
            std::thread::spawn(move || {
                let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
                let Ok(conn) = rustls::ServerConnection::new(config) else {
                    return;
                };
                let mut tls = rustls::StreamOwned::new(conn, stream);
                let mut buf = [0u8; 4096];
                if tls.read(&mut buf).is_ok() {
                    let _ = tls.write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                    );
                    let _ = tls.flush();
                }
            });
        }
    });
    Ok(port)
}

/// Runs `script` in a fresh login shell (no inherited environment).
fn login_shell(script: &str) -> (bool, String) {
    let out = Command::new("env")
        .args([
            "-i",
            "HOME=/root",
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "bash",
            "-lc",
            script,
        ])
        .output();
    match out {
        Ok(o) => {
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            (o.status.success(), text.trim().to_owned())
        }
        Err(e) => (false, e.to_string()),
    }
}

/// The line of a runtime's output that says what failed (one naming a
/// certificate or TLS error, else the last), shortened.
fn first_line(s: &str) -> String {
    const TELLING: [&str; 6] = [
        "certificate",
        "CERT",
        "SSL",
        "Exception",
        "verify",
        "unable to",
    ];
    s.lines()
        .find(|l| TELLING.iter().any(|t| l.contains(t)))
        .or_else(|| s.lines().rfind(|l| !l.trim().is_empty()))
        .unwrap_or("")
        .trim()
        .chars()
        .take(160)
        .collect()
}

/// The runtimes to try: (name, version command, request command, fix).
fn runtimes(url: &str, ca_dir: &Path) -> Vec<(String, String, String, String)> {
    let install = format!("leash ca install --dir {}", ca_dir.display());
    let mut out = vec![(
        "curl (OpenSSL, system store)".to_owned(),
        "curl --version | head -1".to_owned(),
        format!("curl -sS -o /dev/null --max-time 10 {url}"),
        install.clone(),
    )];
    let pythons =
        login_shell("ls /usr/bin/python3 /usr/local/bin/python3 2>/dev/null; command -v python3").1;
    let mut seen = Vec::new();
    for py in pythons.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let real = std::fs::canonicalize(py).unwrap_or_else(|_| py.into());
        if seen.contains(&real) {
            continue;
        }
        seen.push(real);
        out.push((
            format!("{py} urllib"),
            format!("{py} --version"),
            format!(
                "{py} -c \"import urllib.request; urllib.request.urlopen('{url}', timeout=10)\""
            ),
            install.clone(),
        ));
        for (lib, call) in [
            ("requests", format!("requests.get('{url}', timeout=10)")),
            ("httpx", format!("httpx.get('{url}', timeout=10)")),
        ] {
            if login_shell(&format!("{py} -c 'import {lib}'")).0 {
                out.push((
                    format!("{py} {lib}"),
                    format!("{py} -c 'import {lib}; print({lib}.__version__)'"),
                    format!("{py} -c \"import {lib}; {call}\""),
                    format!(
                        "{install} (sets REQUESTS_CA_BUNDLE / SSL_CERT_FILE), or --python-bundles"
                    ),
                ));
            }
        }
    }
    if login_shell("command -v node").0 {
        out.push((
            "node".to_owned(),
            "node --version".to_owned(),
            format!("node -e \"require('https').get('{url}', r => process.exit(0)).on('error', e => {{ console.error(e.code || e.message); process.exit(1); }})\""),
            format!("{install} (sets NODE_EXTRA_CA_CERTS)"),
        ));
    }
    if login_shell("command -v java").0 {
        let src = std::env::temp_dir().join(format!("LeashCheck{}.java", std::process::id()));
        let _ = std::fs::write(
            &src,
            format!(
                "public class LeashCheck {{ public static void main(String[] a) throws Exception {{ var c = java.net.http.HttpClient.newHttpClient(); c.send(java.net.http.HttpRequest.newBuilder(java.net.URI.create(\"{url}\")).build(), java.net.http.HttpResponse.BodyHandlers.discarding()); }} }}\n"
            ),
        );
        out.push((
            "java".to_owned(),
            "java -version 2>&1 | head -1".to_owned(),
            format!("java {}", src.display()),
            format!("{install} (imports into the JDK stores)"),
        ));
    }
    out
}

/// Checks every runtime found; the verdicts in order.
pub fn check(ca_dir: &Path) -> Result<Vec<Verdict>, CheckError> {
    let ca = CertAuthority::load(ca_dir)?;
    let port = serve(&ca)?;
    let url = format!("https://localhost:{port}/");
    let verdicts = runtimes(&url, ca_dir)
        .into_iter()
        .map(|(runtime, version, request, fix)| {
            let version = login_shell(&version)
                .1
                .lines()
                .next()
                .unwrap_or("")
                .to_owned();
            let (trusted, detail) = login_shell(&request);
            Verdict {
                runtime,
                version: first_line(&version),
                trusted,
                detail: if trusted {
                    "verified the organisation CA's certificate".to_owned()
                } else {
                    first_line(&detail)
                },
                fix: if trusted { String::new() } else { fix },
            }
        })
        .collect();
    Ok(verdicts)
}

/// The verdicts as a table.
pub fn table(verdicts: &[Verdict]) -> String {
    use std::fmt::Write as _;
    let mut out = format!(
        "{:<34} {:<28} {:<8} {}\n",
        "runtime", "version", "trusts", "detail / fix"
    );
    for v in verdicts {
        let _ = writeln!(
            out,
            "{:<34} {:<28} {:<8} {}{}",
            v.runtime,
            v.version.chars().take(28).collect::<String>(),
            if v.trusted { "yes" } else { "NO" },
            v.detail,
            if v.fix.is_empty() {
                String::new()
            } else {
                format!(" — fix: {}", v.fix)
            }
        );
    }
    out
}
