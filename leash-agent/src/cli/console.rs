//! `leash console`: a one-time login URL for the web console of the Leash
//! running with this config, like a notebook server prints one. The admin
//! token never appears in the URL: the running Leash trades it for a code
//! that opens one browser session.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use anyhow::{Context as _, bail};

use crate::config::{Config, Overrides};

/// Prints the login URL (and what it is for).
pub fn command(config: Option<&std::path::Path>, overrides: &Overrides) -> anyhow::Result<()> {
    let config = Config::load(config, overrides)?;
    let token = std::fs::read_to_string(&config.admin.token.path).with_context(|| {
        format!(
            "cannot read the admin token {} (is Leash running with this config, and are you allowed to read its token?)",
            config.admin.token.path.display()
        )
    })?;
    let mut addr = config.admin.listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let code = login_code(addr, token.trim())?;
    let host = match addr {
        SocketAddr::V4(a) => a.to_string(),
        SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
    };
    println!("Open the Leash console (this link works once, for 2 minutes):");
    println!("http://{host}/login?code={code}");
    Ok(())
}

/// Who runs this command, for the session's changes to be recorded with:
/// the user `sudo` was run by, else this process's user.
fn who() -> String {
    let uid = rustix::process::getuid().as_raw();
    let me = uzers::get_user_by_uid(uid).map_or_else(
        || format!("uid {uid}"),
        |u| u.name().to_string_lossy().into_owned(),
    );
    match std::env::var("SUDO_USER") {
        Ok(user) if !user.is_empty() && user != me => format!("{user} (sudo as {me})"),
        _ => me,
    }
}

/// Asks the admin listener at `addr` for a login code.
fn login_code(addr: SocketAddr, token: &str) -> anyhow::Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(3))
        .with_context(|| format!("no Leash admin listener answers at {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let body = serde_json::json!({ "who": who() }).to_string();
    write!(
        stream,
        "POST /api/login-code HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    if !head.starts_with("HTTP/1.1 200") {
        bail!(
            "the admin listener refused: {}",
            head.lines().next().unwrap_or("no answer")
        );
    }
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body.lines().nth(1).unwrap_or_default()
    } else {
        body
    };
    let v: serde_json::Value = serde_json::from_str(body).context("unexpected answer")?;
    v["code"]
        .as_str()
        .map(str::to_owned)
        .context("no login code in the answer")
}
