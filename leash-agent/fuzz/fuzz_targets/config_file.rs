//! Arbitrary agent config files: parsed into the validated config or
//! refused with an error, never a panic.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = leash_agent::config::Config::parse(
            text,
            Path::new("fuzz.yaml"),
            Path::new("/nonexistent-leash-fuzz"),
        );
    }
});
