//! The `leash` command line (see `leash_agent::cli`).

fn main() -> std::process::ExitCode {
    leash_agent::cli::main()
}
