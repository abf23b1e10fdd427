//! Benchmark tools, driven by `cargo xtask bench`:
//!
//! - `leash-bench upstream --listen ADDR [--delay-ms N] [--size BYTES]
//!   [--chunks N --gap-ms N] [--tls-names a,b --tls-ca-out FILE]`: a lean
//!   OpenAI-compatible upstream (hyper). A chat completion of about `size`
//!   bytes after `delay-ms` (a request's `x-bench-size` / `x-bench-delay-ms`
//!   headers override both); with `"stream":true` in the body, `chunks` SSE
//!   events `gap-ms` apart; `/v1/messages` gets an Anthropic Messages answer
//!   instead. With `--tls-names`, it serves TLS with a leaf
//!   for those names from a throwaway CA written to `--tls-ca-out`.
//! - `leash-bench load --url URL --rate R --seconds S [--connections C]`:
//!   open-loop load at a fixed rate. Each request has an intended send time
//!   (`start + i / rate`); latency is measured from it, so a stalled server
//!   cannot hide its queue (coordinated omission corrected). Plain threads
//!   and blocking sockets, so timers are precise to tens of microseconds.
//!   `--body JSON` sends another request body.
//! - `leash-bench saturate --url URL --seconds S --connections C`: closed
//!   loop, every connection back to back: the throughput ceiling.
//! - `leash-bench sse --url URL --requests N`: streams, one after another;
//!   time to first token and gaps between chunks.
//!
//! - `leash-bench streams --url URL --concurrency N`: N streams at once
//!   (one per connection, released together); time to first token and
//!   the gaps between chunks over all of them.
//! - `leash-bench idle --url URL --connections N`: N served keep-alive
//!   connections held open (plain HTTP) until stdin closes; prints
//!   `{"held": N}` once they are.
//!
//! - `leash-bench handshake --url URL --names a,b,... [--rounds N]`: one
//!   request per new connection, one after another, cycling through `names`
//!   as the TLS server name (and Host): with a fresh agent, the first round
//!   shows certificate minting (cache cold), later ones the cache hit.
//!
//! - `leash-bench trail --dir DIR --records N [--segment-bytes B]
//!   [--spacing-ms MS]`: a synthetic audit trail, chained and sealed as
//!   Leash writes it, for the console benchmark.
//! - `leash-bench pages --admin ADDR --token-file F --clients C --seconds S`:
//!   C clients load the console's pages back to back; latency of each API
//!   call and the statuses answered.
//! - `leash-bench fleet [--records N --hosts H --days D --ingest-rate R
//!   --seconds S --backlog B --rounds K]`: the fleet store at scale (see
//!   `fleet.rs`), for `cargo xtask bench-fleet`.
//!
//! Client options of `load`, `saturate`, `sse` and `handshake`: `https://`
//! URLs with `--ca PEM` (the only root trusted), `--connect IP:PORT` to dial
//! an address other than the URL's, `--header 'name: value'` (repeatable),
//! `--new-connection` (a fresh connection, and full TLS handshake, for
//! every request).
//!
//! Results are one JSON object on stdout.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "a benchmark tool: failing loudly is right, and the casts are of counts and durations"
)]

mod client;
mod fleet;
mod load;
mod trail;
mod upstream;

const CHAT_BODY: &str =
    r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello"}]}"#;
const STREAM_BODY: &str =
    r#"{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"Say hello"}]}"#;

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

fn num<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> T {
    arg(args, name)
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("upstream") => upstream::upstream(&args),
        Some("load") => load::load(&args),
        Some("saturate") => load::saturate(&args),
        Some("sse") => load::sse(&args),
        Some("handshake") => load::handshake(&args),
        Some("streams") => load::streams(&args),
        Some("idle") => load::idle(&args),
        Some("trail") => trail::trail(&args),
        Some("pages") => trail::pages(&args),
        Some("fleet") => fleet::fleet(&args),
        _ => {
            eprintln!(
                "usage: leash-bench upstream|load|saturate|sse|streams|idle|handshake|trail|pages ... (see the source header)"
            );
            std::process::exit(2);
        }
    }
}
