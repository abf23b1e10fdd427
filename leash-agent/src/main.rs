//! The `leash` command line (see `leash_agent::cli`).

/// The static build (`cargo xtask dist`, musl) allocates with mimalloc:
/// with musl's own allocator it spent about 1.4 times the CPU per request
/// of the glibc build; with mimalloc, the same. Without transparent huge
/// pages (`no_thp`), which added 20 MiB of idle RSS. The glibc build
/// keeps glibc's allocator.
#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    leash_agent::cli::main()
}
