//! `leash ca check --container`: what the host's install cannot reach.
//! A container has its own filesystem and trust store, so `leash ca
//! install` does not change what its runtimes trust. For each running
//! container of each runtime found (`docker`, `podman`), the check reads
//! its environment and mounts: it trusts the organisation CA when
//! `SSL_CERT_FILE`, `REQUESTS_CA_BUNDLE` and `NODE_EXTRA_CA_CERTS` name a
//! file mounted from the host that holds the CA (what `leash ca bundle`
//! writes). It cannot see a CA baked into an image's own store; such a
//! container shows as not configured, and if it does trust the CA its
//! calls are audited as usual.

use std::{path::Path, process::Command};

use serde::Serialize;

/// The variables a container needs, pointing at a bundle with the CA.
pub const VARIABLES: [&str; 3] = ["SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "NODE_EXTRA_CA_CERTS"];

/// What the host install does not reach, printed before the verdicts.
pub const EXPLANATION: &str = "Containers have their own filesystem and trust store: `leash ca install` on the host does not reach them. \
Their provider connections are still intercepted when they run in the watched cgroup (from another network namespace, see intercept.namespace_listen); \
one that does not trust the organisation CA is refused and counted as an untrusted client. \
Fix: `leash ca bundle --out /etc/leash/bundle.pem`, mount it read-only and set SSL_CERT_FILE, REQUESTS_CA_BUNDLE and NODE_EXTRA_CA_CERTS to its path.";

/// One container's verdict (or a runtime that could not be asked).
#[derive(Debug, Serialize)]
pub struct ContainerVerdict {
    pub runtime: String,
    pub container: String,
    pub trusted: bool,
    pub detail: String,
}

/// Whether a container with `env` (`NAME=value`) and `mounts` (host
/// source, container destination) trusts `ca_pem` through a mounted
/// bundle; `read` reads a host file. The detail says what is missing.
pub fn verdict(
    env: &[String],
    mounts: &[(String, String)],
    ca_pem: &str,
    read: &dyn Fn(&Path) -> Option<String>,
) -> (bool, String) {
    // The CA's base64 body: the same certificate whatever the line ends.
    let body: String = ca_pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let mut problems = Vec::new();
    for var in VARIABLES {
        let Some(path) = env
            .iter()
            .find_map(|e| e.strip_prefix(var).and_then(|v| v.strip_prefix('=')))
        else {
            problems.push(format!("{var} not set"));
            continue;
        };
        let Some((source, _)) = mounts.iter().find(|(_, dest)| dest == path) else {
            problems.push(format!("{var}={path} is not a file mounted from the host"));
            continue;
        };
        let holds_ca = read(Path::new(source)).is_some_and(|text| {
            let flat: String = text.lines().filter(|l| !l.starts_with("-----")).collect();
            flat.contains(&body)
        });
        if !holds_ca {
            problems.push(format!("{var}: {source} does not hold the organisation CA"));
        }
    }
    if problems.is_empty() {
        (
            true,
            "the mounted bundle holds the organisation CA".to_owned(),
        )
    } else {
        (false, problems.join("; "))
    }
}

/// Runs `runtime` with `args`; its stdout, or the first line of why not.
fn ask(runtime: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(runtime)
        .args(args)
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr)
            .lines()
            .next()
            .unwrap_or("failed")
            .to_owned())
    }
}

/// The running containers of each runtime found, with their verdicts. A
/// runtime whose daemon cannot be reached is listed with the reason (not
/// counted as a container that fails).
pub fn check(ca_pem: &str) -> Vec<ContainerVerdict> {
    let mut out = Vec::new();
    for runtime in ["docker", "podman"] {
        if !super::on_path(runtime) {
            continue;
        }
        let ids = match ask(runtime, &["ps", "-q"]) {
            Ok(ids) => ids,
            Err(why) => {
                out.push(ContainerVerdict {
                    runtime: runtime.to_owned(),
                    container: "-".to_owned(),
                    trusted: true,
                    detail: format!("not reachable: {why}"),
                });
                continue;
            }
        };
        for id in ids.split_whitespace() {
            let inspected = ask(
                runtime,
                &[
                    "inspect",
                    "--format",
                    "{{json .Config.Env}}\t{{json .Mounts}}\t{{.Name}}",
                    id,
                ],
            );
            let (trusted, detail, name) = match inspected {
                Ok(text) => {
                    let mut parts = text.trim().splitn(3, '\t');
                    let env: Vec<String> = parts
                        .next()
                        .and_then(|e| serde_json::from_str(e).ok())
                        .unwrap_or_default();
                    let mounts: Vec<serde_json::Value> = parts
                        .next()
                        .and_then(|m| serde_json::from_str(m).ok())
                        .unwrap_or_default();
                    let mounts: Vec<(String, String)> = mounts
                        .iter()
                        .filter_map(|m| {
                            Some((
                                m["Source"].as_str()?.to_owned(),
                                m["Destination"].as_str()?.to_owned(),
                            ))
                        })
                        .collect();
                    let name = parts
                        .next()
                        .unwrap_or(id)
                        .trim_start_matches('/')
                        .to_owned();
                    let (trusted, detail) =
                        verdict(&env, &mounts, ca_pem, &|p| std::fs::read_to_string(p).ok());
                    (trusted, detail, name)
                }
                Err(why) => (false, format!("cannot inspect: {why}"), id.to_owned()),
            };
            out.push(ContainerVerdict {
                runtime: runtime.to_owned(),
                container: name,
                trusted,
                detail,
            });
        }
    }
    out
}

/// The explanation and the verdicts as text.
pub fn table(verdicts: &[ContainerVerdict]) -> String {
    use std::fmt::Write as _;
    let mut out = format!("{EXPLANATION}\n\n");
    if verdicts.is_empty() {
        out.push_str("No running containers found (docker, podman): nothing to check.\n");
        return out;
    }
    let _ = writeln!(
        out,
        "{:<10} {:<30} {:<8} detail",
        "runtime", "container", "trusts"
    );
    for v in verdicts {
        let _ = writeln!(
            out,
            "{:<10} {:<30} {:<8} {}",
            v.runtime,
            v.container,
            if v.container == "-" {
                "-"
            } else if v.trusted {
                "yes"
            } else {
                "NO"
            },
            v.detail
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const CA: &str = "-----BEGIN CERTIFICATE-----\nMIIBorgCA\nAAAA\n-----END CERTIFICATE-----\n";

    fn env(path: &str) -> Vec<String> {
        VARIABLES.iter().map(|v| format!("{v}={path}")).collect()
    }

    #[test]
    fn a_mounted_bundle_with_the_ca_is_trusted_and_anything_less_is_named() {
        let bundle = format!("-----BEGIN CERTIFICATE-----\nOTHER\n-----END CERTIFICATE-----\n{CA}");
        let read = |p: &Path| (p == Path::new("/etc/leash/bundle.pem")).then(|| bundle.clone());
        let mounts = vec![("/etc/leash/bundle.pem".to_owned(), "/ca.pem".to_owned())];
        assert!(verdict(&env("/ca.pem"), &mounts, CA, &read).0);
        // A variable missing.
        let (ok, why) = verdict(&env("/ca.pem")[..2], &mounts, CA, &read);
        assert!(!ok && why.contains("NODE_EXTRA_CA_CERTS not set"), "{why}");
        // Not mounted: the image's own file, which the check cannot vouch for.
        let (ok, why) = verdict(&env("/etc/ssl/cert.pem"), &mounts, CA, &read);
        assert!(!ok && why.contains("not a file mounted"), "{why}");
        // Mounted, but without the CA.
        let other = |_: &Path| {
            Some("-----BEGIN CERTIFICATE-----\nOTHER\n-----END CERTIFICATE-----\n".to_owned())
        };
        let (ok, why) = verdict(&env("/ca.pem"), &mounts, CA, &other);
        assert!(!ok && why.contains("does not hold"), "{why}");
    }
}
