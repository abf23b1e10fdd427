//! The ClientHello / SNI parser of the transparent proxy on arbitrary first
//! bytes of a connection: never panics, and a prefix never decides
//! differently from the whole once it decided.
#![no_main]

use leash_agent::proxy::sni::{Hello, parse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let whole = parse(data);
    if let Some(Hello::Tls { sni: Some(name) }) = &whole {
        assert!(!name.is_empty(), "an SNI is never empty");
    }
    for cut in [1, 5, data.len() / 2] {
        if cut < data.len()
            && let Some(early) = parse(&data[..cut])
        {
            assert_eq!(Some(early), whole, "a decision on a prefix must hold");
        }
    }
});
