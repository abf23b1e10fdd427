//! `leash audit`: verify the hash chain, tail the trail, select and sum
//! records (locally or in the fleet's store).

use std::{io::Write as _, path::PathBuf};

use anyhow::Context as _;
use clap::Subcommand;

use crate::config::{Config, Overrides};

/// Where the audit trail is: `--dir`, else `audit.dir` of `--config`, else
/// the default.
#[derive(clap::Args)]
pub struct AuditDir {
    /// The audit directory.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Take the audit directory from this config file.
    #[arg(short, long, env = "LEASH_CONFIG")]
    config: Option<PathBuf>,
}

impl AuditDir {
    fn resolve(self) -> anyhow::Result<PathBuf> {
        if let Some(dir) = self.dir {
            return Ok(dir);
        }
        Ok(Config::load(self.config.as_deref(), &Overrides::default())?
            .audit
            .dir)
    }
}

#[derive(Subcommand)]
pub enum AuditCommand {
    /// Check the hash chain: exit 0 if intact, 1 naming the first bad record
    /// (edited, deleted, reordered, or a torn record left unmarked).
    Verify {
        #[command(flatten)]
        dir: AuditDir,
        /// Also compare the trail with the copy in the fleet's store
        /// (PostgreSQL URL): the first record that differs is named.
        #[arg(long, value_name = "URL")]
        against: Option<String>,
        /// The host name the store files this trail under (default: the
        /// records' own `host`).
        #[arg(long, requires = "against")]
        host: Option<String>,
        /// Check an export (`leash audit export --format jsonl`) instead:
        /// its own chain, and the anchor and last hash it proves.
        #[arg(long, value_name = "FILE", conflicts_with = "against")]
        export: Option<PathBuf>,
    },
    /// Records for auditors (JSON Lines as sealed, or CSV) from `--since`
    /// to `--until`, contiguous in the chain, with the chain proof of the
    /// run (anchor and last hash) on standard error or in `--proof`.
    Export {
        #[command(flatten)]
        dir: AuditDir,
        #[arg(long, value_enum, default_value = "jsonl")]
        format: super::export::Format,
        /// From this time (RFC 3339) or this long ago (30m, 24h, 7d).
        #[arg(long)]
        since: Option<String>,
        /// Up to this time (RFC 3339) or this long ago.
        #[arg(long)]
        until: Option<String>,
        /// Write the records here instead of standard output.
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
        /// Write the chain proof (JSON) here instead of standard error.
        #[arg(long, value_name = "FILE")]
        proof: Option<PathBuf>,
        /// Also write the exported records' captured content here (JSON
        /// Lines): redacted content, each read recorded by the running
        /// leash of `--config`; sealed content still sealed.
        #[arg(long, value_name = "FILE", requires = "config")]
        content: Option<PathBuf>,
        /// The admin listener of that leash (as `leash console` takes it).
        #[arg(long, value_name = "ADDR", requires = "content")]
        admin_listen: Option<String>,
    },
    /// Print the newest records (JSON Lines).
    Tail {
        /// How many records.
        #[arg(short = 'n', long, default_value_t = 10)]
        lines: usize,
        /// Keep printing new records as they are written.
        #[arg(short, long)]
        follow: bool,
        #[command(flatten)]
        dir: AuditDir,
    },
    /// Select records, or sum tokens and spend by a field.
    Query {
        /// Only records since a duration ago (30m, 24h, 7d) or an RFC 3339 time.
        #[arg(long)]
        since: Option<String>,
        /// Only this provider.
        #[arg(long)]
        provider: Option<String>,
        /// Only this model.
        #[arg(long)]
        model: Option<String>,
        /// Only this team.
        #[arg(long)]
        team: Option<String>,
        /// Only this policy action (allow, block, redact, ...).
        #[arg(long)]
        action: Option<String>,
        /// Only this host (the `host` of each record).
        #[arg(long)]
        host: Option<String>,
        /// Sum requests, tokens and cost by team, provider, model, user,
        /// exe, host or rule (policy rules that matched).
        #[arg(long, value_name = "FIELD")]
        sum_by: Option<String>,
        /// Print JSON instead of a table (records: one per line, as written).
        #[arg(long)]
        json: bool,
        /// Query the fleet's central store instead of a local directory.
        #[arg(long, value_name = "URL", env = "LEASH_POSTGRES_URL")]
        postgres: Option<String>,
        #[command(flatten)]
        dir: AuditDir,
    },
    /// Print one record, and with `--content` its captured content (the
    /// read is recorded in the trail first).
    Show(super::show::ShowArgs),
    /// Rebuild the audit index (per-segment summaries the console reads)
    /// from the segments.
    Reindex {
        #[command(flatten)]
        dir: AuditDir,
    },
}

pub fn command(cmd: AuditCommand) -> anyhow::Result<()> {
    match cmd {
        AuditCommand::Verify {
            export: Some(file), ..
        } => super::export::verify_export(&file),
        AuditCommand::Export {
            dir,
            format,
            since,
            until,
            output,
            proof,
            content,
            admin_listen,
        } => {
            let for_content = match (&content, &dir.config) {
                (Some(file), Some(config)) => Some((
                    file.clone(),
                    Config::load(
                        Some(config),
                        &Overrides {
                            admin_listen,
                            audit_dir: dir.dir.clone(),
                            ..Overrides::reading()
                        },
                    )?,
                )),
                _ => None,
            };
            audit_export(
                &dir.resolve()?,
                format,
                (since, until),
                (output.as_deref(), proof.as_deref()),
                for_content,
            )
        }
        AuditCommand::Verify {
            dir, against, host, ..
        } => {
            let dir = dir.resolve()?;
            let local = audit_verify(&dir);
            match against {
                Some(url) => verify_against(&dir, &url, host.as_deref()).and(local),
                None => local,
            }
        }
        AuditCommand::Tail { lines, follow, dir } => audit_tail(&dir.resolve()?, lines, follow),
        AuditCommand::Reindex { dir } => audit_reindex(&dir.resolve()?),
        AuditCommand::Show(args) => super::show::show(&args),
        AuditCommand::Query {
            since,
            provider,
            model,
            team,
            action,
            host,
            sum_by,
            json,
            postgres,
            dir,
        } => {
            let filter = crate::audit::read::Filter {
                since: since
                    .as_deref()
                    .map(crate::audit::read::parse_since)
                    .transpose()
                    .map_err(anyhow::Error::msg)?,
                provider,
                model,
                team,
                action,
                host,
            };
            if let Some(key) = &sum_by {
                anyhow::ensure!(
                    SUM_KEYS.contains(&key.as_str()),
                    "--sum-by takes one of: {}",
                    SUM_KEYS.join(", ")
                );
            }
            match postgres {
                Some(url) => fleet_query(&url, &filter, sum_by, json),
                None => audit_query(&dir.resolve()?, &filter, sum_by, json),
            }
        }
    }
}

fn audit_verify(dir: &std::path::Path) -> anyhow::Result<()> {
    use crate::audit::chain;
    match chain::verify(dir) {
        Ok(report) => {
            if report.first_seq > 1 {
                println!(
                    "note: the trail starts at seq {}: older segments were removed by retention",
                    report.first_seq
                );
            }
            println!(
                "ok: {} records in {} segment(s), chain intact through seq {}{}",
                report.records,
                report.files,
                report.last_seq,
                if report.marked_torn > 0 {
                    format!(
                        "; {} torn record(s) from crashes, marked",
                        report.marked_torn
                    )
                } else {
                    String::new()
                }
            );
            if let Some((file, bytes)) = report.open_torn {
                println!(
                    "note: {} ends with a torn record ({bytes} bytes) from a crash; it is marked when leash restarts",
                    file.display()
                );
            }
            Ok(())
        }
        Err(broken) => anyhow::bail!("audit trail broken: {broken}"),
    }
}

fn audit_export(
    dir: &std::path::Path,
    format: super::export::Format,
    (since, until): (Option<String>, Option<String>),
    (output, proof_file): (Option<&std::path::Path>, Option<&std::path::Path>),
    content: Option<(PathBuf, Config)>,
) -> anyhow::Result<()> {
    let time = |t: Option<String>| {
        t.as_deref()
            .map(crate::audit::read::parse_since)
            .transpose()
            .map_err(anyhow::Error::msg)
    };
    let (since, until) = (time(since)?, time(until)?);
    let proof = if let Some(file) = output {
        let mut f = std::io::BufWriter::new(
            std::fs::File::create(file).with_context(|| file.display().to_string())?,
        );
        let exported = super::export::export(dir, format, (since, until), &mut f)?;
        f.flush()?;
        exported
    } else {
        let mut out = std::io::stdout().lock();
        super::export::export(dir, format, (since, until), &mut out)?
    };
    let (proof, with_content) = proof;
    if let Some((file, config)) = content {
        let mut f = std::io::BufWriter::new(
            std::fs::File::create(&file).with_context(|| file.display().to_string())?,
        );
        super::export::export_content(&config, &with_content, &mut f)?;
        f.flush()?;
    }
    let mut text = serde_json::to_value(&proof)?;
    text["epoch"] = serde_json::json!(crate::audit::spool::read_epoch(dir)?);
    let text = serde_json::to_string_pretty(&text)?;
    match proof_file {
        Some(file) => {
            std::fs::write(file, text + "\n").with_context(|| file.display().to_string())?;
        }
        None => eprintln!("{text}"),
    }
    Ok(())
}

fn verify_against(dir: &std::path::Path, url: &str, host: Option<&str>) -> anyhow::Result<()> {
    let c = super::against::compare(dir, url, host)?;
    if let Some((seq, local, central)) = c.diverged {
        anyhow::bail!(
            "seq {seq} differs from the copy in the fleet store (local hash {local}, stored {central}): this trail was rewritten after it was shipped"
        );
    }
    println!(
        "ok: {} records match the fleet store{}",
        c.compared,
        if c.unshipped > 0 {
            format!("; {} not shipped yet", c.unshipped)
        } else {
            String::new()
        }
    );
    Ok(())
}

fn audit_tail(dir: &std::path::Path, lines: usize, follow: bool) -> anyhow::Result<()> {
    use crate::audit::index;
    // The newest records, read backwards: not the whole trail.
    let (mut newest, _) = index::newest(dir, |_| true, lines.max(1), |_| false, u64::MAX)?;
    newest.reverse();
    let mut last = newest.last().and_then(|r| r["seq"].as_u64()).unwrap_or(0);
    for r in newest.iter().skip(newest.len().saturating_sub(lines)) {
        println!("{r}");
    }
    if !follow {
        return Ok(());
    }
    loop {
        std::thread::sleep(std::time::Duration::from_millis(500));
        let seen = last;
        // Read back only to what was printed.
        let (mut fresh, _) = index::newest(
            dir,
            |_| true,
            usize::MAX,
            |r| r["seq"].as_u64().unwrap_or(0) <= seen,
            u64::MAX,
        )?;
        fresh.reverse();
        for r in fresh {
            last = r["seq"].as_u64().unwrap_or(last);
            println!("{r}");
        }
    }
}

const SUM_KEYS: [&str; 7] = ["team", "provider", "model", "user", "exe", "host", "rule"];

/// `leash audit query --postgres`: the same selections and sums over every
/// host's records in the central store.
fn fleet_query(
    url: &str,
    filter: &crate::audit::read::Filter,
    sum_by: Option<String>,
    json: bool,
) -> anyhow::Result<()> {
    use crate::collector::store;
    let runtime = super::one_thread()?;
    runtime.block_on(async {
        let client = store::connect(url).await?;
        if let Some(key) = sum_by {
            return print_sums(
                &key,
                &crate::collector::rollup::sum_by(&client, filter, &key).await?,
                json,
            );
        }
        for line in crate::collector::query::select_lines(&client, filter).await? {
            if json {
                println!("{line}");
            } else {
                print_record(&mut std::io::stdout(), &serde_json::from_str(&line)?)?;
            }
        }
        Ok(())
    })
}

fn print_sums(
    key: &str,
    sums: &std::collections::BTreeMap<String, crate::audit::read::Totals>,
    json: bool,
) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(sums)?);
        return Ok(());
    }
    println!(
        "{:<24} {:>9} {:>12} {:>12} {:>12}",
        key, "requests", "input", "output", "cost_usd"
    );
    // Largest first: the top callers, teams or rules lead.
    let mut rows: Vec<_> = sums.iter().collect();
    rows.sort_by(|a, b| b.1.requests.cmp(&a.1.requests).then(a.0.cmp(b.0)));
    for (group, t) in rows {
        let unpriced = if t.unpriced > 0 {
            format!("  ({} unpriced)", t.unpriced)
        } else {
            String::new()
        };
        println!(
            "{group:<24} {:>9} {:>12} {:>12} {:>12.6}{unpriced}",
            t.requests, t.input_tokens, t.output_tokens, t.cost_usd
        );
    }
    Ok(())
}

fn print_record(out: &mut impl std::io::Write, r: &serde_json::Value) -> std::io::Result<()> {
    writeln!(
        out,
        "{} {:<12} {:<10} {:<28} {:>4} in={:<7} out={:<7} cost={:<10} team={}",
        r["ts"].as_str().unwrap_or("-"),
        r["host"].as_str().unwrap_or("-"),
        r["provider"].as_str().unwrap_or("-"),
        r["model"].as_str().unwrap_or("-"),
        r["status"]
            .as_u64()
            .map_or_else(|| "-".to_owned(), |s| s.to_string()),
        r["usage"]["input_tokens"].as_u64().unwrap_or(0),
        r["usage"]["output_tokens"].as_u64().unwrap_or(0),
        r["cost_usd"]
            .as_f64()
            .map_or_else(|| "-".to_owned(), |c| format!("{c:.6}")),
        r["caller"]["team"].as_str().unwrap_or("-"),
    )
}

fn audit_query(
    dir: &std::path::Path,
    filter: &crate::audit::read::Filter,
    sum_by: Option<String>,
    json: bool,
) -> anyhow::Result<()> {
    use crate::audit::read;
    // One record in memory at a time, whatever the trail's size.
    let mut sums: std::collections::BTreeMap<String, read::Totals> =
        std::collections::BTreeMap::new();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut failed = None;
    read::for_each(dir, |line| {
        let Ok(r) = serde_json::from_slice::<serde_json::Value>(line) else {
            return true;
        };
        if !filter.matches(&r) {
            return true;
        }
        let written = match &sum_by {
            Some(key) => {
                for name in read::group_names(&r, key) {
                    sums.entry(name.to_owned()).or_default().add(&r);
                }
                Ok(())
            }
            None if json => out.write_all(line).and_then(|()| out.write_all(b"\n")),
            None => print_record(&mut out, &r),
        };
        if let Err(e) = written {
            failed = Some(e);
            return false;
        }
        true
    })?;
    if let Some(e) = failed {
        // A closed pipe (`| head`) ends the output, not the command.
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            return Err(e.into());
        }
    }
    out.flush()?;
    drop(out);
    if let Some(key) = sum_by {
        print_sums(&key, &sums, json)?;
    }
    Ok(())
}

/// `leash audit reindex`: the per-segment summaries computed again from
/// the segments.
fn audit_reindex(dir: &std::path::Path) -> anyhow::Result<()> {
    let index = crate::audit::index::Index::new(dir);
    let s = index.rebuild()?;
    let t = s.total();
    println!(
        "reindexed {}: {} records ({} requests, {} violations), cost {:.6} USD",
        dir.display(),
        s.records,
        t.requests,
        s.violations,
        t.cost_usd
    );
    Ok(())
}
