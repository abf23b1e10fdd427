//! Fault injection for the end-to-end tests, compiled in only with the
//! `test-hooks` cargo feature (which `cargo xtask test` turns on); release
//! builds carry none of it and every hook is a no-op there.
//!
//! - `LEASH_FAULT_AUDIT_WRITE_DELAY_MS=N`: each audit batch waits N ms
//!   before it is written (a slow disk).
//! - `LEASH_FAULT_AUDIT_WRITE_FAIL=3,4`: audit batches 3 and 4 fail half
//!   written (a torn write, as a full disk or an I/O error leaves it).
//! - `LEASH_FAULT_CONSOLE_DELAY_MS=N`: each heavy console query holds its
//!   place N ms before it reads (to fill the concurrency limit).
//! - `LEASH_FAULT_TARGETS_FULL=1`: every resolved provider address fails to
//!   enter the kernel's target map, as when it is full.
//! - `LEASH_FAULT_COLLECTOR_HOLD_ACK=N`: the collector commits its N-th
//!   batch and then never acknowledges it (a collector killed between the
//!   commit and the acknowledgement).
//! - `LEASH_FAULT_FLEET_LOSE_ANSWER=N`: every N-th fleet budget write that
//!   lands is reported as unanswered (the acknowledgement lost).
//! - `LEASH_TEST_PANIC=1`: a request carrying `x-leash-test-panic` panics in
//!   the pipeline with every header in the message (which the panic hook
//!   must keep out of the logs).

use std::time::Duration;

/// The injected delay before each audit batch, if any.
pub fn audit_write_delay() -> Option<Duration> {
    #[cfg(feature = "test-hooks")]
    {
        std::env::var("LEASH_FAULT_AUDIT_WRITE_DELAY_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .map(Duration::from_millis)
    }
    #[cfg(not(feature = "test-hooks"))]
    {
        None
    }
}

/// Whether the kernel's target map is to count as full
/// (`LEASH_FAULT_TARGETS_FULL=1`).
pub fn targets_full() -> bool {
    #[cfg(feature = "test-hooks")]
    {
        std::env::var_os("LEASH_FAULT_TARGETS_FULL").is_some_and(|v| v == "1")
    }
    #[cfg(not(feature = "test-hooks"))]
    {
        false
    }
}

/// Waits as `LEASH_FAULT_CONSOLE_DELAY_MS` says, before a heavy console
/// query reads.
pub async fn console_query_delay() {
    #[cfg(feature = "test-hooks")]
    {
        if let Some(ms) = std::env::var("LEASH_FAULT_CONSOLE_DELAY_MS")
            .ok()
            .and_then(|v| v.parse().ok())
        {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
    }
}

/// Whether audit batch `n` (counting from 1 since start) is to fail, torn
/// half-way (`LEASH_FAULT_AUDIT_WRITE_FAIL=3,4`: the third and fourth
/// batches).
pub fn audit_write_fails(n: u64) -> bool {
    #[cfg(feature = "test-hooks")]
    {
        static FAILING: std::sync::LazyLock<Vec<u64>> = std::sync::LazyLock::new(|| {
            std::env::var("LEASH_FAULT_AUDIT_WRITE_FAIL")
                .unwrap_or_default()
                .split(',')
                .filter_map(|n| n.trim().parse().ok())
                .collect()
        });
        FAILING.contains(&n)
    }
    #[cfg(not(feature = "test-hooks"))]
    {
        let _ = n;
        false
    }
}

/// Panics when a test asks for it (see the module docs).
pub fn maybe_panic(headers: &http::HeaderMap) {
    #[cfg(feature = "test-hooks")]
    {
        static ENABLED: std::sync::LazyLock<bool> = std::sync::LazyLock::new(|| {
            std::env::var_os("LEASH_TEST_PANIC").is_some_and(|v| v == "1")
        });
        assert!(
            !(*ENABLED && headers.contains_key("x-leash-test-panic")),
            "panic forced by a test; headers: {headers:?}"
        );
    }
    #[cfg(not(feature = "test-hooks"))]
    let _ = headers;
}

/// Whether the collector is to hold back the acknowledgements of its
/// `batch`-th committed batch (`LEASH_FAULT_COLLECTOR_HOLD_ACK=N`).
pub fn collector_hold_ack(batch: u64) -> bool {
    #[cfg(feature = "test-hooks")]
    {
        std::env::var("LEASH_FAULT_COLLECTOR_HOLD_ACK")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            == Some(batch)
    }
    #[cfg(not(feature = "test-hooks"))]
    {
        let _ = batch;
        false
    }
}

/// Whether the answer to this compare-and-set of a fleet budget, which
/// landed, is to be lost (`LEASH_FAULT_FLEET_LOSE_ANSWER=N`: every N-th
/// write that lands is reported as unanswered, as when the store's
/// acknowledgement comes after the timeout).
pub fn fleet_answer_lost() -> bool {
    #[cfg(feature = "test-hooks")]
    {
        static EVERY: std::sync::LazyLock<Option<u64>> = std::sync::LazyLock::new(|| {
            std::env::var("LEASH_FAULT_FLEET_LOSE_ANSWER")
                .ok()
                .and_then(|v| v.parse().ok())
                .filter(|n| *n > 0)
        });
        static LANDED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        EVERY.is_some_and(|n| {
            (LANDED.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1).is_multiple_of(n)
        })
    }
    #[cfg(not(feature = "test-hooks"))]
    {
        false
    }
}
