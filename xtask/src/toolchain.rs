//! The eBPF toolchain (`cargo xtask setup`: nightly `rust-src`, and
//! `bpf-linker` built against rustc's own LLVM) and the release build of
//! `cargo xtask run`, which installs it alongside.

use std::{env, ffi::OsString, path::PathBuf, process::Command};

use anyhow::{Context as _, Result};

use crate::{cargo, have, output_of, run, target_dir};

/// The toolchain the eBPF crate is built with.
const BPF_TOOLCHAIN: &str = "nightly";

/// The LLVM major version of the nightly rustc (`LLVM version: 22.1.4`).
fn nightly_llvm_major() -> Result<String> {
    let verbose = output_of(
        Command::new("rustc")
            .arg(format!("+{BPF_TOOLCHAIN}"))
            .arg("-vV"),
    )?;
    verbose
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .map(str::to_owned)
        .context("nightly rustc does not report its LLVM version")
}

fn bpf_linker_installed(llvm_major: &str) -> bool {
    let stamp = cargo_home().join(".leash-bpf-linker-llvm");
    have("bpf-linker") && std::fs::read_to_string(stamp).is_ok_and(|s| s.trim() == llvm_major)
}

pub(crate) fn cargo_home() -> PathBuf {
    env::var_os("CARGO_HOME").map_or_else(
        || PathBuf::from(env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cargo"),
        PathBuf::from,
    )
}

/// A prefix whose `lib/` holds rustc's own libLLVM, as bpf-linker's build
/// expects from an LLVM installation (`bin/llvm-config` need only exist).
fn llvm_prefix() -> Result<PathBuf> {
    let sysroot = output_of(
        Command::new("rustc")
            .arg(format!("+{BPF_TOOLCHAIN}"))
            .args(["--print", "sysroot"]),
    )?;
    let sysroot_lib = PathBuf::from(sysroot.trim()).join("lib");
    let versioned = std::fs::read_dir(&sysroot_lib)
        .with_context(|| format!("cannot list {}", sysroot_lib.display()))?
        .filter_map(|e| e.ok().map(|e| e.file_name()))
        .find(|n| n.to_string_lossy().starts_with("libLLVM.so."))
        .with_context(|| format!("no libLLVM.so.* in {}", sysroot_lib.display()))?;
    let prefix = target_dir().join("llvm-prefix");
    let lib = prefix.join("lib");
    let bin = prefix.join("bin");
    std::fs::create_dir_all(&lib).context("creating llvm prefix")?;
    std::fs::create_dir_all(&bin).context("creating llvm prefix")?;
    let config = bin.join("llvm-config");
    std::fs::write(&config, "#!/bin/sh\n").context("writing llvm-config")?;
    std::fs::set_permissions(&config, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .context("chmod llvm-config")?;
    for name in [OsString::from("libLLVM.so"), versioned.clone()] {
        let link = lib.join(&name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(sysroot_lib.join(&versioned), &link)
            .with_context(|| format!("linking {}", link.display()))?;
    }
    Ok(prefix)
}

/// Whether the nightly toolchain has `rust-src` (the eBPF build compiles
/// `core` from it).
pub(crate) fn has_rust_src() -> Result<bool> {
    let components = output_of(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        BPF_TOOLCHAIN,
    ]))
    .with_context(|| format!("the `{BPF_TOOLCHAIN}` toolchain is needed for the eBPF build"))?;
    Ok(components.lines().any(|c| c.starts_with("rust-src")))
}

/// Whether `setup` has nothing left to install.
fn toolchain_ready() -> Result<bool> {
    Ok(has_rust_src()? && bpf_linker_installed(&nightly_llvm_major()?))
}

/// `cargo xtask setup`: everything the eBPF build needs, idempotent.
pub(crate) fn setup() -> Result<()> {
    if !has_rust_src()? {
        run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            BPF_TOOLCHAIN,
        ]))?;
    }
    let major = nightly_llvm_major()?;
    if !bpf_linker_installed(&major) {
        let prefix = llvm_prefix()?;
        run(Command::new("cargo")
            .arg(format!("+{BPF_TOOLCHAIN}"))
            .args([
                "install",
                "bpf-linker",
                "--version",
                "^0.13",
                "--locked",
                "--force",
                // Unoptimised: the linking is rustc's own libLLVM's work,
                // which is optimised whatever this build is; the eBPF
                // object comes out byte for byte the same, and the install
                // took 24 s instead of 62 s on a 2-core machine (by hand,
                // crates already downloaded).
                "--debug",
                "--no-default-features",
                "--features",
            ])
            .arg(format!("llvm-{major}"))
            .env("LLVM_PREFIX", &prefix)
            // A temporary target directory of its own: `cargo xtask run`
            // installs while its build holds the workspace's (whose build
            // script waits for this install).
            .env_remove("CARGO_TARGET_DIR")
            .env_remove("CARGO_BUILD_TARGET_DIR")
            .env_remove("CARGO")
            .env_remove("RUSTC"))?;
        std::fs::write(cargo_home().join(".leash-bpf-linker-llvm"), &major)
            .context("writing bpf-linker stamp")?;
    }
    eprintln!("xtask: eBPF toolchain ready (nightly rust-src, bpf-linker for LLVM {major})");
    Ok(())
}

/// The file the build script waits for (`LEASH_EBPF_WAIT_FOR`), written
/// when dropped: however the install ends (even in a panic), the build
/// script stops waiting, and finds the toolchain or says it is missing.
struct SetupDone(PathBuf);

impl Drop for SetupDone {
    fn drop(&mut self) {
        let _ = std::fs::write(&self.0, "done");
    }
}

/// Builds the release `leash`. A missing eBPF toolchain is installed
/// alongside (the build script waits for it while the crates compile), not
/// before: a newcomer's first run is that much shorter.
pub(crate) fn build_for_run() -> Result<()> {
    let release_build = || {
        let mut cmd = cargo();
        cmd.args(["build", "--release", "-p", "leash-agent"]);
        cmd
    };
    if toolchain_ready()? {
        return run(&mut release_build());
    }
    let done = target_dir().join("xtask-ebpf-setup-done");
    std::fs::create_dir_all(target_dir())?;
    let _ = std::fs::remove_file(&done);
    let installing = std::thread::spawn({
        let done = SetupDone(done.clone());
        move || {
            let _done = done;
            setup()
        }
    });
    let built = run(release_build().env("LEASH_EBPF_WAIT_FOR", &done));
    let installed = installing
        .join()
        .map_err(|_| anyhow::anyhow!("the eBPF toolchain install panicked"))?;
    let _ = std::fs::remove_file(&done);
    installed.context("installing the eBPF toolchain")?;
    built
}
