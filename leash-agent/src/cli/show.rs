//! `leash audit show ID [--content]`: one record, and its captured content.
//! Reading content is itself audited: the running leash records a
//! `content_read` event (who, which record) in its trail before anything is
//! shown, so a read the service cannot record does not happen. Sealed
//! content opens only with a recipient's identity (`--identity`), and the
//! stored bytes are checked against the SHA-256 the (hash-chained) record
//! holds first.

use std::{io::Write as _, path::PathBuf};

use anyhow::{Context as _, bail};
use serde_json::Value;

use crate::{
    capture::{content, store},
    config::{Config, Overrides},
    record::CaptureClass,
};

#[derive(clap::Args)]
pub struct ShowArgs {
    /// The record's id.
    id: String,
    /// The config of the leash that wrote it (its audit and capture
    /// directories, and its admin listener, which records the read).
    #[arg(
        short,
        long,
        env = "LEASH_CONFIG",
        required_unless_present = "postgres"
    )]
    config: Option<PathBuf>,
    /// Read the record and its content from the fleet's store instead
    /// (PostgreSQL URL); the read is recorded there (`leash_content_reads`).
    #[arg(long, value_name = "URL", conflicts_with = "config")]
    postgres: Option<String>,
    /// The admin listener of that leash (as `leash console` takes it).
    #[arg(long, value_name = "ADDR")]
    admin_listen: Option<String>,
    /// Its audit directory (as `leash console` takes it).
    #[arg(long, value_name = "DIR")]
    audit_dir: Option<PathBuf>,
    /// Print the captured content too (the read is audited).
    #[arg(long)]
    content: bool,
    /// An age identity file (`age-keygen` output) that opens sealed content.
    #[arg(long, value_name = "FILE")]
    identity: Option<PathBuf>,
    /// Print only the exact bytes of this body of the content
    /// (`request` or `response`), nothing else.
    #[arg(long, value_name = "PART", value_parser = ["request", "response"])]
    raw: Option<String>,
}

/// The record with `id` in the trail of `dir`.
fn find(dir: &std::path::Path, id: &str) -> anyhow::Result<Value> {
    crate::audit::read::find(dir, id)?
        .with_context(|| format!("no record `{id}` in {}", dir.display()))
}

/// Who is reading: the user this command runs as, and the command.
fn reader(via: &str) -> String {
    let uid = rustix::process::getuid().as_raw();
    let user = std::env::var("SUDO_USER")
        .ok()
        .map(|u| format!(" (sudo from {u})"))
        .unwrap_or_default();
    format!("uid {uid}{user} via {via}")
}

/// Asks the running leash to record the read (by the command `via`); an
/// error when it cannot.
pub(super) fn record_read(config: &Config, id: &str, via: &str) -> anyhow::Result<()> {
    let token = config.admin.token.load().with_context(|| {
        format!(
            "reading the admin token {}",
            config.admin.token.path.display()
        )
    })?;
    let body = serde_json::json!({"record": id, "reader": reader(via)}).to_string();
    let addr = config.admin.listen;
    let request = format!(
        "POST /api/audit/content-read HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {token}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let answer = (|| -> std::io::Result<String> {
        use std::io::Read as _;
        let mut s = std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(5))?;
        s.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
        s.write_all(request.as_bytes())?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    })();
    match answer {
        Ok(a) if a.starts_with("HTTP/1.1 200") => Ok(()),
        Ok(a) => bail!(
            "the leash at {addr} did not record the read, so the content is not shown: {}",
            a.lines().next().unwrap_or_default()
        ),
        Err(e) => bail!(
            "content reads are audited, and the leash at {addr} (admin.listen) is not reachable to record this one: {e}"
        ),
    }
}

/// `--postgres`: the record and its content as the fleet's store holds
/// them (the chunks joined, checked against the record's SHA-256); the read
/// recorded in the store before anything is shown.
fn show_fleet(args: &ShowArgs, url: &str) -> anyhow::Result<()> {
    let runtime = super::one_thread()?;
    runtime.block_on(async {
        let client = crate::collector::store::connect(url).await?;
        let (line, bytes) = crate::collector::query::content_by_id(&client, &args.id)
            .await?
            .with_context(|| format!("no record `{}` in the fleet store", args.id))?;
        let record: Value = serde_json::from_str(&line)?;
        if !args.content {
            println!("{}", serde_json::to_string_pretty(&record)?);
            return Ok(());
        }
        let class = store::class_of(&record)?;
        let stored = bytes.context(
            "the store does not hold this record's whole content (not shipped yet, or not stored)",
        )?;
        store::check(&record, &stored)?;
        let plain = match (&args.identity, class) {
            (Some(identity), CaptureClass::Sealed) => content::unseal(&stored, identity)?,
            (None, CaptureClass::Sealed) => {
                bail!("sealed content opens only with a recipient's identity: give --identity FILE")
            }
            _ => stored,
        };
        crate::collector::query::record_read(&client, &args.id, &reader("leash audit show"))
            .await?;
        print_content(args, &record, class, &plain)
    })
}

/// The stored content of `record`, checked against the SHA-256 the record
/// holds: its class and bytes (sealed: still encrypted).
pub(super) fn stored_content(
    config: &Config,
    record: &Value,
) -> anyhow::Result<(CaptureClass, Vec<u8>)> {
    Ok(store::read_checked(&config.capture.dir, record)?)
}

pub fn show(args: &ShowArgs) -> anyhow::Result<()> {
    if let Some(url) = &args.postgres {
        return show_fleet(args, url);
    }
    let Some(config_file) = &args.config else {
        bail!("give --config FILE or --postgres URL");
    };
    let config = Config::load(
        Some(config_file),
        &Overrides {
            admin_listen: args.admin_listen.clone(),
            audit_dir: args.audit_dir.clone(),
            ..Overrides::reading()
        },
    )?;
    let record = find(&config.audit.dir, &args.id)?;
    let mut out = std::io::stdout().lock();
    if !args.content {
        writeln!(out, "{}", serde_json::to_string_pretty(&record)?)?;
        return Ok(());
    }
    let (class, stored) = stored_content(&config, &record)?;
    if class == CaptureClass::Sealed && args.identity.is_none() {
        bail!("sealed content opens only with a recipient's identity: give --identity FILE");
    }
    let plain = match (&args.identity, class) {
        (Some(identity), CaptureClass::Sealed) => content::unseal(&stored, identity)?,
        _ => stored,
    };
    record_read(&config, &args.id, "leash audit show")?;
    print_content(args, &record, class, &plain)
}

/// The record and its (opened) content, or `--raw`'s exact bytes.
fn print_content(
    args: &ShowArgs,
    record: &Value,
    class: CaptureClass,
    plain: &[u8],
) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    let doc: Value =
        serde_json::from_slice(plain).context("the content is not a content document")?;
    match args.raw.as_deref() {
        Some(part) => {
            if class != CaptureClass::Sealed {
                bail!("--raw gives exact bytes, which only sealed content holds");
            }
            out.write_all(&content::exact_part(&doc, part).context("no such part")?)?;
        }
        None => writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({"record": record, "content": doc}))?
        )?,
    }
    Ok(())
}
