//! The mock provider as a standalone server, for trying Leash by hand and for
//! benchmarks: `mock-provider [IP:PORT]` (default 127.0.0.1:9999).

fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9999".to_owned())
        .parse()
        .map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("bad address: {e}"),
            )
        })?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(leash_tests::mock::run_forever(addr))
}
