//! `cargo xtask dist`: Leash as one static binary (musl, the eBPF object
//! embedded, no shared library) and, with `--image`, the OCI image built
//! `FROM scratch` from the repository's `Containerfile` by `podman build`
//! (no base image is downloaded: the image holds the binary, its default
//! configs and an empty state directory).

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::{cargo, ensure_debian_packages, root, run, setup, target_dir};

/// The target of the static build.
pub const MUSL: &str = "x86_64-unknown-linux-musl";
/// The image's name.
pub const IMAGE: &str = "localhost/leash:dev";

/// What `dist` made: the static binary, the staged image root and, with
/// `--image`, the image's name.
pub struct Dist {
    pub binary: PathBuf,
    pub rootfs: PathBuf,
}

/// The musl target of the pinned toolchain, added by rustup if missing.
fn ensure_musl_target() -> Result<()> {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .current_dir(root())
        .output()
        .context("cannot run rustup")?;
    if String::from_utf8_lossy(&installed.stdout)
        .lines()
        .any(|l| l.trim() == MUSL)
    {
        return Ok(());
    }
    run(Command::new("rustup")
        .args(["target", "add", MUSL])
        .current_dir(root()))
}

/// Whether `binary` is statically linked, as `ldd` says.
pub fn is_static(binary: &Path) -> Result<bool> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .context("cannot run ldd")?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(said.contains("not a dynamic executable") || said.contains("statically linked"))
}

/// Builds the static binary and stages the image's root file system in
/// `target/dist/rootfs`.
pub fn build() -> Result<Dist> {
    ensure_debian_packages(&[
        ("musl-gcc", "musl-tools"),
        ("ldd", "libc-bin"),
        ("strip", "binutils"),
    ])?;
    ensure_musl_target()?;
    setup()?;
    run(cargo().args([
        "build",
        "--release",
        "--target",
        MUSL,
        "-p",
        "leash-agent",
        "--bin",
        "leash",
    ]))?;
    let binary = target_dir().join(MUSL).join("release/leash");
    if !is_static(&binary)? {
        bail!("{} is not statically linked (ldd)", binary.display());
    }
    let rootfs = target_dir().join("dist/rootfs");
    if rootfs.exists() {
        std::fs::remove_dir_all(&rootfs).context("clearing target/dist/rootfs")?;
    }
    for dir in ["usr/local/bin", "etc/leash", "var/lib/leash"] {
        std::fs::create_dir_all(rootfs.join(dir))
            .with_context(|| format!("creating {dir} in the image root"))?;
    }
    let staged = rootfs.join("usr/local/bin/leash");
    std::fs::copy(&binary, &staged).context("staging the binary")?;
    // The image's copy without debug information (the build keeps it).
    run(Command::new("strip").arg("--strip-debug").arg(&staged))?;
    for file in ["gateway.yaml", "collector.yaml"] {
        std::fs::copy(
            root().join("leash-agent/dist/container").join(file),
            rootfs.join("etc/leash").join(file),
        )
        .with_context(|| format!("staging {file}"))?;
    }
    eprintln!(
        "xtask: static binary {} (ldd: not dynamic); image root staged in {}",
        binary.display(),
        rootfs.display()
    );
    Ok(Dist { binary, rootfs })
}

/// Builds the image from the repository's `Containerfile`, the staged
/// `target/dist` as its context.
pub fn image(dist: &Dist) -> Result<()> {
    ensure_debian_packages(&[("podman", "podman"), ("runc", "runc")])?;
    let context = dist
        .rootfs
        .parent()
        .context("the staged root has no parent")?;
    run(Command::new("podman")
        .args(["build", "--quiet", "-f"])
        .arg(root().join("Containerfile"))
        .args(["-t", IMAGE])
        .arg(context))?;
    eprintln!("xtask: image {IMAGE} built from Containerfile");
    Ok(())
}
