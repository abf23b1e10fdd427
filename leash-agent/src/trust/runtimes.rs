//! Runtimes that do not read the system store by default, covered for every
//! process started after `leash ca install`:
//!
//! - an environment new processes inherit: `/etc/environment` (PAM logins),
//!   `/etc/profile.d/leash-ca.sh` (login shells) and a systemd manager
//!   drop-in (services), setting `SSL_CERT_FILE`, `REQUESTS_CA_BUNDLE`,
//!   `NODE_EXTRA_CA_CERTS` and `NODE_USE_SYSTEM_CA=1` to the **system
//!   bundle** (which holds the organisation CA once the store is updated:
//!   these variables replace a runtime's roots, so they must name a
//!   complete bundle, not the CA alone);
//! - each JDK trust store (a JDK's own `cacerts`, or the distribution's
//!   shared one its JDKs link to): the CA imported with `keytool`;
//! - with `--python-bundles`, certifi bundles (`certifi/cacert.pem`) in the
//!   Python environments found on the host: the CA appended.
//!
//! Every change goes into the manifest, for `leash ca uninstall`.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::Command,
};

use super::{
    TrustError,
    manifest::{Change, Entry, Manifest, sha256_file},
};

const BEGIN: &str =
    "# leash: begin (the organisation CA for every runtime; `leash ca uninstall` removes this)";
const END: &str = "# leash: end";
const ENVIRONMENT: &str = "/etc/environment";
const PROFILE: &str = "/etc/profile.d/leash-ca.sh";
const SYSTEMD_DIR: &str = "/etc/systemd/system.conf.d";
const SYSTEMD: &str = "/etc/systemd/system.conf.d/leash-ca.conf";
/// Directories searched for JDKs, besides `JAVA_HOME`.
const JDK_ROOTS: [&str; 3] = ["/usr/lib/jvm", "/usr/java", "/opt"];
/// Directories searched for certifi bundles.
const PYTHON_ROOTS: [&str; 6] = [
    "/usr/lib",
    "/usr/local/lib",
    "/opt",
    "/srv",
    "/root",
    "/home",
];
/// Entries looked at per search root (bounded on any host).
const MAX_WALK: usize = 200_000;
const KEYSTORE_PASS: &str = "changeit";

/// The variables, all naming the system bundle.
fn vars(bundle: &Path) -> Vec<(&'static str, String)> {
    let b = bundle.display().to_string();
    vec![
        ("SSL_CERT_FILE", b.clone()),
        ("REQUESTS_CA_BUNDLE", b.clone()),
        ("NODE_EXTRA_CA_CERTS", b),
        ("NODE_USE_SYSTEM_CA", "1".to_owned()),
    ]
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), TrustError> {
    std::fs::write(path, bytes).map_err(|e| TrustError::Write(path.to_path_buf(), e))
}

/// Writes a new file Leash owns (replacing one of its own from before).
fn create(
    m: &mut Manifest,
    path: &Path,
    text: &str,
    what: &str,
    out: &mut String,
) -> Result<(), TrustError> {
    write(path, text.as_bytes())?;
    m.record(path, Change::Created, what.to_owned());
    let _ = writeln!(out, "  created {}: {what}", path.display());
    Ok(())
}

/// Appends Leash's marked block to a text file (created if missing).
fn append_block(
    m: &mut Manifest,
    ca_dir: &Path,
    path: &Path,
    block: &str,
    what: &str,
    out: &mut String,
) -> Result<(), TrustError> {
    let existing = std::fs::read_to_string(path).ok();
    let change = match &existing {
        Some(_) => Change::Modified {
            backup: m.backup(ca_dir, path)?,
        },
        None => Change::Created,
    };
    let mut text = existing.unwrap_or_default();
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    let _ = write!(text, "{BEGIN}\n{block}{END}\n");
    write(path, text.as_bytes())?;
    m.record(path, change, what.to_owned());
    let _ = writeln!(out, "  changed {}: {what}", path.display());
    Ok(())
}

/// The environment of new processes: PAM, login shells, systemd services.
pub fn environment(
    m: &mut Manifest,
    ca_dir: &Path,
    bundle: &Path,
    out: &mut String,
) -> Result<(), TrustError> {
    let vars = vars(bundle);
    let mut plain = String::new();
    for (k, v) in &vars {
        let _ = writeln!(plain, "{k}={v}");
    }
    append_block(
        m,
        ca_dir,
        Path::new(ENVIRONMENT),
        &plain,
        "variables for PAM logins",
        out,
    )?;
    if Path::new("/etc/profile.d").is_dir() {
        let mut sh = format!("{BEGIN}\n");
        for (k, v) in &vars {
            let _ = writeln!(sh, "export {k}={v}");
        }
        sh.push_str(END);
        sh.push('\n');
        create(
            m,
            Path::new(PROFILE),
            &sh,
            "variables for login shells",
            out,
        )?;
    }
    if Path::new("/etc/systemd").is_dir() {
        if !Path::new(SYSTEMD_DIR).is_dir() {
            std::fs::create_dir_all(SYSTEMD_DIR)
                .map_err(|e| TrustError::Write(SYSTEMD_DIR.into(), e))?;
            m.record(
                Path::new(SYSTEMD_DIR),
                Change::CreatedDir,
                "systemd manager drop-ins".to_owned(),
            );
        }
        let quoted: Vec<String> = vars.iter().map(|(k, v)| format!("\"{k}={v}\"")).collect();
        let conf = format!(
            "{BEGIN}\n[Manager]\nDefaultEnvironment={}\n{END}\n",
            quoted.join(" ")
        );
        create(
            m,
            Path::new(SYSTEMD),
            &conf,
            "variables for services (after `systemctl daemon-reexec` or a reboot)",
            out,
        )?;
    }
    Ok(())
}

/// Walks `root` (at most `MAX_WALK` entries, `depth` levels, no symlinks
/// followed) and returns the entries `keep` accepts (path and type; a kept
/// directory is not entered).
fn walk(
    root: &Path,
    depth: usize,
    keep: impl Fn(&Path, std::fs::FileType) -> bool,
) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![(root.to_path_buf(), 0)];
    let mut seen = 0;
    while let Some((dir, d)) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            seen += 1;
            if seen > MAX_WALK {
                return out;
            }
            let Ok(t) = e.file_type() else { continue };
            let p = e.path();
            if keep(&p, t) {
                out.push(p);
            } else if t.is_dir() && d < depth {
                stack.push((p, d + 1));
            }
        }
    }
    out
}

/// Files under `root` whose path ends with `suffix`.
fn find(root: &Path, suffix: &str, depth: usize) -> Vec<PathBuf> {
    walk(root, depth, |p, t| {
        t.is_file() && p.to_string_lossy().ends_with(suffix)
    })
}

/// Every JDK trust store on the host (each JDK's `cacerts`, or the shared
/// store it links to, once), with a `keytool` that can edit it.
fn jdk_stores() -> Vec<(PathBuf, PathBuf)> {
    let mut roots: Vec<PathBuf> = JDK_ROOTS.iter().map(PathBuf::from).collect();
    if let Some(home) = std::env::var_os("JAVA_HOME") {
        roots.push(PathBuf::from(home));
    }
    let mut stores: Vec<(PathBuf, PathBuf)> = roots
        .iter()
        .flat_map(|r| find_store_links(r))
        .filter_map(|cacerts| {
            let jdk = cacerts.parent()?.parent()?.parent()?;
            let keytool = jdk.join("bin/keytool");
            let store = std::fs::canonicalize(&cacerts).ok()?;
            keytool.is_file().then_some((store, keytool))
        })
        .collect();
    stores.sort();
    stores.dedup_by(|a, b| a.0 == b.0);
    stores
}

/// `lib/security/cacerts` under `root`, files or links (a distribution's
/// JDKs link to one shared store, which its package keeps in step with the
/// system store only when its hook runs: Leash edits it itself).
fn find_store_links(root: &Path) -> Vec<PathBuf> {
    walk(root, 5, |p, _| p.ends_with("lib/security/cacerts"))
}

fn keytool(keytool: &Path, args: &[&str]) -> Result<(), TrustError> {
    let out = Command::new(keytool)
        .args(args)
        .output()
        .map_err(|e| TrustError::Update("keytool", e.to_string()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(TrustError::Update(
            "keytool",
            String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        ))
    }
}

fn alias(i: usize) -> String {
    if i == 0 {
        "leash-org-ca".to_owned()
    } else {
        format!("leash-org-ca-retired-{i}")
    }
}

/// The JDK stores found, each backed up before anything (the system
/// store's update included) may change it.
pub struct JdkStores(Vec<(PathBuf, PathBuf, PathBuf)>);

impl JdkStores {
    pub fn back_up(m: &Manifest, ca_dir: &Path) -> Result<Self, TrustError> {
        let mut out = Vec::new();
        for (i, (store, tool)) in jdk_stores().into_iter().enumerate() {
            let backup = m.backup_as(ca_dir, &store, &format!("jdk-{i}"))?;
            out.push((store, tool, backup));
        }
        Ok(Self(out))
    }

    /// Imports the CA certificates (`cert_files`) into every store.
    pub fn import(
        self,
        m: &mut Manifest,
        cert_files: &[PathBuf],
        out: &mut String,
    ) -> Result<(), TrustError> {
        if self.0.is_empty() {
            let _ = writeln!(out, "  Java: no JDK found");
        }
        for (cacerts, tool, backup) in self.0 {
            let store = cacerts.display().to_string();
            for (i, file) in cert_files.iter().enumerate() {
                let file = file.display().to_string();
                // An alias left from before goes first.
                let _ = keytool(
                    &tool,
                    &[
                        "-delete",
                        "-noprompt",
                        "-keystore",
                        &store,
                        "-storepass",
                        KEYSTORE_PASS,
                        "-alias",
                        &alias(i),
                    ],
                );
                keytool(
                    &tool,
                    &[
                        "-importcert",
                        "-noprompt",
                        "-keystore",
                        &store,
                        "-storepass",
                        KEYSTORE_PASS,
                        "-alias",
                        &alias(i),
                        "-file",
                        &file,
                    ],
                )?;
            }
            m.record(
                &cacerts,
                Change::Modified { backup },
                "Java: the CA imported (keytool)".to_owned(),
            );
            let _ = writeln!(out, "  changed {store}: Java: the CA imported (keytool)");
        }
        Ok(())
    }
}

/// Appends the CA to the certifi bundles of the host's Python
/// environments.
pub fn python_bundles(
    m: &mut Manifest,
    ca_dir: &Path,
    pems: &[String],
    out: &mut String,
) -> Result<(), TrustError> {
    let mut bundles: Vec<PathBuf> = PYTHON_ROOTS
        .iter()
        .flat_map(|r| find(Path::new(r), "/certifi/cacert.pem", 9))
        .collect();
    bundles.sort();
    bundles.dedup();
    if bundles.is_empty() {
        let _ = writeln!(out, "  Python: no certifi bundle found");
    }
    for b in bundles {
        append_block(
            m,
            ca_dir,
            &b,
            &pems.concat(),
            "the CA appended (certifi)",
            out,
        )?;
    }
    Ok(())
}

/// Removes Leash's marked block from `text`.
fn without_block(text: &str) -> Option<String> {
    let start = text.find(BEGIN)?;
    let end = text[start..].find(END)? + start + END.len();
    let end = if text[end..].starts_with('\n') {
        end + 1
    } else {
        end
    };
    Some(format!("{}{}", &text[..start], &text[end..]))
}

/// Undoes one change. Returns what was done, for the operator.
pub fn undo(entry: &Entry) -> Result<String, TrustError> {
    let path = &entry.path;
    let unchanged = sha256_file(path).as_deref() == Some(entry.sha256_after.as_str());
    match &entry.change {
        Change::Created => match std::fs::remove_file(path) {
            Ok(()) => Ok(format!("  removed {}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Ok(format!("  {} was already gone", path.display()))
            }
            Err(e) => Err(TrustError::Write(path.clone(), e)),
        },
        Change::CreatedDir => {
            let _ = std::fs::remove_dir(path);
            Ok(format!("  removed {} (if empty)", path.display()))
        }
        Change::Modified { backup } if unchanged => {
            let bytes = std::fs::read(backup).map_err(|e| TrustError::Write(backup.clone(), e))?;
            write(path, &bytes)?;
            Ok(format!("  restored {} as it was", path.display()))
        }
        Change::Modified { .. } => {
            // Changed by someone else since: take out only Leash's part.
            if let Some(text) = std::fs::read_to_string(path)
                .ok()
                .as_deref()
                .and_then(without_block)
            {
                write(path, text.as_bytes())?;
                return Ok(format!(
                    "  removed Leash's lines from {} (changed since the install; the rest kept)",
                    path.display()
                ));
            }
            if path.ends_with("cacerts")
                && let Some((_, tool)) = jdk_stores().into_iter().find(|(s, _)| s == path)
            {
                let store = path.display().to_string();
                for i in 0..8 {
                    let _ = keytool(
                        &tool,
                        &[
                            "-delete",
                            "-noprompt",
                            "-keystore",
                            &store,
                            "-storepass",
                            KEYSTORE_PASS,
                            "-alias",
                            &alias(i),
                        ],
                    );
                }
                return Ok(format!(
                    "  removed the CA from {} with keytool (changed since the install; not restored byte for byte)",
                    path.display()
                ));
            }
            Ok(format!(
                "  left {} alone: changed since the install and Leash's part is not recognisable",
                path.display()
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_block_comes_out_whole() {
        let text = format!("A=1\n{BEGIN}\nX=2\n{END}\nB=3\n");
        assert_eq!(without_block(&text).unwrap(), "A=1\nB=3\n");
        assert!(without_block("A=1\n").is_none());
    }
}
