//! Builds the kernel programs (`leash-ebpf`) for the BPF target with
//! aya-build when the eBPF toolchain is installed (`cargo xtask setup`).
//! Without it, an empty object is written so gateway mode still builds; the
//! agent refuses to load an empty object and names the setup command.
//!
//! `LEASH_EBPF=require` makes a missing toolchain a build error (CI);
//! `LEASH_EBPF=skip` never builds the programs. `LEASH_EBPF_WAIT_FOR=FILE`
//! (set by `cargo xtask run` while it installs the toolchain alongside
//! this build) waits until FILE exists: the crates compile meanwhile.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

fn on_path(program: &str) -> bool {
    let mut dirs: Vec<PathBuf> = env::var_os("PATH")
        .map(|p| env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(home) = env::var_os("CARGO_HOME") {
        dirs.push(PathBuf::from(home).join("bin"));
    }
    dirs.iter().any(|d| d.join(program).is_file())
}

fn nightly_has_rust_src() -> bool {
    Command::new("rustc")
        .args(["+nightly", "--print", "sysroot"])
        .env_remove("RUSTC")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
        .is_some_and(|sysroot| sysroot.join("lib/rustlib/src/rust/library/core").is_dir())
}

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=LEASH_EBPF");
    let mode = env::var("LEASH_EBPF").unwrap_or_default();
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    let object = out_dir.join("leash-ebpf");
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR not set")?);
    let ebpf_dir = manifest_dir
        .parent()
        .map(|root| root.join("leash-ebpf"))
        .context("no workspace root")?;
    println!("cargo:rerun-if-changed={}", ebpf_dir.display());
    println!(
        "cargo:rerun-if-changed={}",
        ebpf_common_dir(&manifest_dir).display()
    );

    wait_for_setup()?;
    let ready = on_path("bpf-linker") && nightly_has_rust_src();
    if mode != "skip" && ready {
        let root = ebpf_dir.to_str().context("non-UTF-8 path")?;
        aya_build::build_ebpf(
            [aya_build::Package {
                name: "leash-ebpf",
                root_dir: root,
                ..Default::default()
            }],
            aya_build::Toolchain::Nightly,
        )?;
        return Ok(());
    }
    if mode == "require" {
        bail!("LEASH_EBPF=require but the eBPF toolchain is missing: run `cargo xtask setup`");
    }
    println!(
        "cargo:warning=eBPF toolchain not found: leash is built without its kernel programs and `leash run` will refuse to start (run `cargo xtask setup`, then rebuild)"
    );
    std::fs::write(&object, []).with_context(|| format!("writing {}", object.display()))?;
    Ok(())
}

/// With `LEASH_EBPF_WAIT_FOR`, waits (at most 30 min) until the file
/// exists: the eBPF toolchain is being installed alongside this build. Not
/// a rerun trigger: it says when to look, not what is built.
fn wait_for_setup() -> anyhow::Result<()> {
    let Some(file) = env::var_os("LEASH_EBPF_WAIT_FOR").map(PathBuf::from) else {
        return Ok(());
    };
    let give_up = std::time::Instant::now() + std::time::Duration::from_mins(30);
    while !file.exists() {
        if std::time::Instant::now() > give_up {
            bail!(
                "the eBPF toolchain install did not finish within 30 min ({} never appeared)",
                file.display()
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    Ok(())
}

fn ebpf_common_dir(manifest_dir: &Path) -> PathBuf {
    manifest_dir.parent().map_or_else(
        || manifest_dir.join("../leash-common"),
        |r| r.join("leash-common"),
    )
}
