//! Arbitrary policy files: parsed and validated, or refused with an error,
//! never a panic (regexes included: size limits hold).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = leash_agent::policy::Policy::parse(text, "fuzz");
    }
});
