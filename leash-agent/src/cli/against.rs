//! `leash audit verify --against URL`: compares a host's local trail with
//! the copy the fleet store received, record by record (by hash), and names
//! the first divergence. A trail rewritten and re-sealed on the host passes
//! the local check — its chain is consistent — but no longer matches what
//! it shipped before the rewrite.

use std::path::Path;

use anyhow::Context as _;
use serde_json::Value;

/// What the comparison found.
pub struct Comparison {
    pub compared: usize,
    /// Local records the store does not hold yet (not shipped).
    pub unshipped: usize,
    /// The first seq whose local hash differs from the store's, with both.
    pub diverged: Option<(u64, String, String)>,
}

/// Compares the trail in `dir` with the store at `url`; `host` defaults to
/// the trail's own `host` field.
pub fn compare(dir: &Path, url: &str, host: Option<&str>) -> anyhow::Result<Comparison> {
    let epoch = crate::audit::spool::read_epoch(dir)?
        .context("this trail has no epoch file: it was never set up for shipping")?;
    let mut local: Vec<(u64, String)> = Vec::new();
    let mut trail_host = None;
    crate::audit::read::for_each(dir, |line| {
        if let Ok(v) = serde_json::from_slice::<Value>(line) {
            if trail_host.is_none() {
                trail_host = v["host"].as_str().map(str::to_owned);
            }
            if let (Some(seq), Some(hash)) = (v["seq"].as_u64(), v["hash"].as_str()) {
                local.push((seq, hash.to_owned()));
            }
        }
        true
    })?;
    let host = host
        .map(str::to_owned)
        .or(trail_host)
        .context("the trail is empty and no --host was given")?;
    let from = local.first().map_or(1, |(s, _)| *s);
    let runtime = super::one_thread()?;
    let central = runtime.block_on(async {
        let client = crate::collector::store::connect(url).await?;
        crate::collector::query::chain_hashes(
            &client,
            &host,
            i64::try_from(epoch).unwrap_or(i64::MAX),
            i64::try_from(from).unwrap_or(i64::MAX),
        )
        .await
    })?;
    let mut out = Comparison {
        compared: 0,
        unshipped: 0,
        diverged: None,
    };
    for (seq, hash) in local {
        match central.get(&i64::try_from(seq).unwrap_or(i64::MAX)) {
            None => out.unshipped += 1,
            Some(theirs) if *theirs == hash => out.compared += 1,
            Some(theirs) => {
                out.diverged = Some((seq, hash, theirs.clone()));
                break;
            }
        }
    }
    Ok(out)
}
