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

/// `POST path` with `body` (JSON) on the admin listener at `addr` with the
/// admin token: the status and the JSON answer.
fn admin_post(
    addr: SocketAddr,
    token: &str,
    path: &str,
    body: &str,
    timeout: Duration,
) -> anyhow::Result<(u16, serde_json::Value)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(3))
        .with_context(|| format!("no Leash admin listener answers at {addr}"))?;
    stream.set_read_timeout(Some(timeout))?;
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nX-Leash-Console: 1\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .context("no answer from the admin listener")?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body.lines().nth(1).unwrap_or_default()
    } else {
        body
    };
    Ok((status, serde_json::from_str(body).unwrap_or_default()))
}

/// The admin listener and token of the Leash running with this config.
fn admin_of(config: &Config) -> anyhow::Result<(SocketAddr, String)> {
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
    Ok((addr, token.trim().to_owned()))
}

/// `leash reload`: checks the config here, then asks the running Leash to
/// hand over to a successor with it; prints the successor's pid.
pub fn reload(config: Option<&std::path::Path>, overrides: &Overrides) -> anyhow::Result<()> {
    let loaded = Config::load(config, overrides)?;
    let (addr, token) = admin_of(&loaded)?;
    let (status, v) = admin_post(addr, &token, "/api/reload", "{}", Duration::from_secs(90))?;
    if status != 200 {
        bail!(
            "not reloaded: {}",
            v["error"].as_str().unwrap_or("the admin listener refused")
        );
    }
    println!(
        "reloaded: now served by pid {} (pid {} drains and exits)",
        v["pid"], v["previous"]
    );
    Ok(())
}

/// Prints the login URL (and what it is for).
pub fn command(config: Option<&std::path::Path>, overrides: &Overrides) -> anyhow::Result<()> {
    let config = Config::load(config, overrides)?;
    let (addr, token) = admin_of(&config)?;
    let code = login_code(addr, &token)?;
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
    let body = serde_json::json!({ "who": who() }).to_string();
    let (status, v) = admin_post(
        addr,
        token,
        "/api/login-code",
        &body,
        Duration::from_secs(5),
    )?;
    if status != 200 {
        bail!(
            "the admin listener refused: {status} {}",
            v["error"].as_str().unwrap_or("")
        );
    }
    v["code"]
        .as_str()
        .map(str::to_owned)
        .context("no login code in the answer")
}
