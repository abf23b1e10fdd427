//! Developer tasks. `cargo xtask test` is the one command that builds and
//! tests everything; `cargo xtask run` builds and starts Leash.

use std::{
    env,
    ffi::OsString,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what the tests need (curl, a Python venv with the official
    /// SDKs), check formatting and lints, build, and run every test.
    Test {
        /// Skip `cargo fmt --check` and `cargo clippy`.
        #[arg(long)]
        no_lint: bool,
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(last = true)]
        args: Vec<OsString>,
    },
    /// Build Leash (release) and start it. Without arguments it runs
    /// `leash gateway` on the embedded defaults; otherwise the arguments go
    /// to `leash` (e.g. `cargo xtask run -- gateway --config leash.yaml`).
    Run {
        #[arg(last = true)]
        args: Vec<OsString>,
    },
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

fn target_dir() -> PathBuf {
    env::var_os("CARGO_TARGET_DIR").map_or_else(|| root().join("target"), PathBuf::from)
}

fn cargo() -> Command {
    let mut cmd = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(root());
    cmd
}

fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("xtask: {cmd:?}");
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {}", cmd.get_program().display()))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Installs Debian packages that are missing (needs root, as in CI).
fn ensure_debian_packages(packages: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .filter(|(program, _)| !have(program))
        .map(|&(_, package)| package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !have("apt-get") {
        bail!("missing tools {missing:?} and no apt-get to install them; install them and retry");
    }
    run(Command::new("apt-get").arg("update").arg("-q"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

/// Creates `target/leash-venv` with the pinned SDKs; reinstalls only when
/// `tests/python/requirements.txt` changed.
fn ensure_python_venv() -> Result<PathBuf> {
    let venv = target_dir().join("leash-venv");
    let python = venv.join("bin/python");
    let requirements = root().join("tests/python/requirements.txt");
    let wanted = std::fs::read_to_string(&requirements)
        .with_context(|| format!("cannot read {}", requirements.display()))?;
    let stamp = venv.join(".leash-requirements");
    if python.exists() && std::fs::read_to_string(&stamp).is_ok_and(|s| s == wanted) {
        return Ok(python);
    }
    let system_python = if have("python3") { "python3" } else { "python" };
    run(Command::new(system_python)
        .args(["-m", "venv", "--clear"])
        .arg(&venv))?;
    run(Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            "-r",
        ])
        .arg(&requirements))?;
    std::fs::write(&stamp, wanted).context("cannot write the venv stamp")?;
    Ok(python)
}

fn test(no_lint: bool, args: &[OsString]) -> Result<()> {
    ensure_debian_packages(&[("curl", "curl"), ("openssl", "openssl")])?;
    let python = ensure_python_venv()?;
    if !no_lint {
        run(cargo().args(["fmt", "--all", "--", "--check"]))?;
        run(cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))?;
    }
    run(cargo().args(["build", "--workspace", "--bins"]))?;
    let leash = target_dir().join("debug/leash");
    run_tests(
        cargo()
            .args(["test", "--workspace"])
            .args(args)
            .env("LEASH_BIN", &leash)
            .env("LEASH_TEST_PYTHON", &python),
    )
}

/// Runs `cargo test`, echoing its output, and ends with one total line
/// (`tests: N passed, N failed`) over all test binaries.
fn run_tests(cmd: &mut Command) -> Result<()> {
    eprintln!("xtask: {cmd:?}");
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot start cargo test")?;
    let stdout = child.stdout.take().context("cargo test has no stdout")?;
    let (mut passed, mut failed) = (0u64, 0u64);
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading cargo test output")?;
        println!("{line}");
        if let Some(counts) = line.strip_prefix("test result: ") {
            passed += count_before(counts, " passed");
            failed += count_before(counts, " failed");
        }
    }
    let status = child.wait().context("waiting for cargo test")?;
    println!("tests: {passed} passed, {failed} failed");
    if !status.success() {
        bail!("cargo test failed with {status}");
    }
    if passed == 0 {
        bail!("cargo test ran no test");
    }
    Ok(())
}

/// The number just before `word` in a `test result:` line.
fn count_before(line: &str, word: &str) -> u64 {
    line.split(';')
        .find_map(|part| part.trim().strip_suffix(word.trim()).map(str::trim))
        .and_then(|n| n.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn run_leash(args: &[OsString]) -> Result<()> {
    run(cargo().args(["build", "--release", "-p", "leash-agent"]))?;
    let leash = target_dir().join("release/leash");
    let args: Vec<OsString> = if args.is_empty() {
        vec!["gateway".into()]
    } else {
        args.to_vec()
    };
    run(Command::new(leash).args(args))
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Task::Test { no_lint, args } => test(no_lint, &args),
        Task::Run { args } => run_leash(&args),
    }
}
