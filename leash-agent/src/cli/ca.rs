//! `leash ca`: the organisation CA — create, trust, rotate.

use std::path::PathBuf;

use clap::Subcommand;

use crate::{
    ca::{CaOptions, CertAuthority, DEFAULT_CA_DIR},
    trust,
};

#[derive(Subcommand)]
pub enum CaCommand {
    /// Create a CA: DIR/ca.pem (certificate) and DIR/ca.key (private key,
    /// mode 0600). Refuses to replace an existing CA without --force.
    Init {
        /// Where to write the CA.
        #[arg(long, default_value = DEFAULT_CA_DIR)]
        dir: PathBuf,
        #[command(flatten)]
        new: NewCa,
        /// Replace an existing CA (every machine must then trust the new one).
        #[arg(long)]
        force: bool,
    },
    /// Trust the CA on this machine, for every process started from now
    /// on: the system store, and the runtimes with their own (an
    /// environment for logins, shells and services naming the system
    /// bundle; JDKs with their own cacerts). Lists each change.
    Install {
        /// The CA directory (where the record of the changes is kept).
        #[arg(long, default_value = DEFAULT_CA_DIR)]
        dir: PathBuf,
        /// Also append the CA to certifi bundles of the host's Python
        /// environments.
        #[arg(long)]
        python_bundles: bool,
    },
    /// Undo `leash ca install`: the system store, and every file it
    /// changed restored (or removed, if it made it).
    Uninstall {
        /// The CA directory.
        #[arg(long, default_value = DEFAULT_CA_DIR)]
        dir: PathBuf,
    },
    /// Does every runtime on this host trust the CA with its default
    /// settings? Starts each one found (curl, python3 and its HTTP
    /// libraries, node, java) from a fresh login environment against a
    /// local TLS server with a leaf from the CA. Exits 1 if one does not.
    Check {
        /// The CA directory.
        #[arg(long, default_value = DEFAULT_CA_DIR)]
        dir: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Check the running containers (docker, podman) instead: the
        /// host's install does not reach them; says which have the CA
        /// mounted and pointed at by `SSL_CERT_FILE`, `REQUESTS_CA_BUNDLE` and
        /// `NODE_EXTRA_CA_CERTS`.
        #[arg(long)]
        container: bool,
    },
    /// Write the system bundle plus the CA to one file, to mount into
    /// containers (with `SSL_CERT_FILE`, `REQUESTS_CA_BUNDLE` and
    /// `NODE_EXTRA_CA_CERTS` pointing at it).
    Bundle {
        /// The CA directory.
        #[arg(long, default_value = DEFAULT_CA_DIR)]
        dir: PathBuf,
        /// Where to write the bundle.
        #[arg(long)]
        out: PathBuf,
    },
    /// Replace the CA with a new one (the old key is destroyed) and keep
    /// the old certificate trusted for a grace period, so clients accept
    /// leaves from either while machines (`leash ca install`) and agents
    /// (restart) move to the new one.
    Rotate {
        /// The CA directory.
        #[arg(long, default_value = DEFAULT_CA_DIR)]
        dir: PathBuf,
        /// How long the old CA stays trusted, in days.
        #[arg(long, default_value_t = 30)]
        grace_days: u32,
        #[command(flatten)]
        new: NewCa,
    },
}

/// The certificate of a new CA.
#[derive(clap::Args)]
pub struct NewCa {
    /// The CA certificate's common name.
    #[arg(long, default_value = "Leash Organisation CA")]
    name: String,
    /// The CA certificate's organisation name.
    #[arg(long)]
    org: Option<String>,
    /// How long the CA is valid, in days.
    #[arg(long, default_value_t = 3650)]
    days: u32,
}

impl From<NewCa> for CaOptions {
    fn from(n: NewCa) -> Self {
        Self {
            common_name: n.name,
            organization: n.org,
            validity_days: n.days,
        }
    }
}

pub fn command(cmd: CaCommand) -> anyhow::Result<()> {
    match cmd {
        CaCommand::Init { dir, new, force } => {
            let ca = CertAuthority::init(&dir, &new.into(), force)?;
            println!(
                "Created {} (key in {}, mode 0600).\nTrust it on each machine: leash ca install --dir {}",
                ca.cert_path().display(),
                dir.join(crate::ca::KEY_FILE).display(),
                dir.display()
            );
            Ok(())
        }
        CaCommand::Install {
            dir,
            python_bundles,
        } => {
            CertAuthority::load(&dir)?;
            let certs: Vec<String> = crate::ca::refresh_trust(&dir)?
                .into_iter()
                .map(|t| t.pem)
                .collect();
            print!(
                "{}",
                trust::install(&dir, &certs, trust::Reach { python_bundles })?
            );
            Ok(())
        }
        CaCommand::Rotate {
            dir,
            grace_days,
            new,
        } => {
            let grace = std::time::Duration::from_secs(u64::from(grace_days) * 86_400);
            let ca = CertAuthority::rotate(&dir, &new.into(), grace)?;
            let trusted = crate::ca::trusted(&dir)?;
            println!(
                "Created a new CA in {} (valid until {}); the old key is gone.",
                ca.cert_path().display(),
                ca.not_after().date()
            );
            for t in trusted.iter().skip(1) {
                if let Some(until) = t.until {
                    println!(
                        "A retired CA stays trusted until {until} (in {}).",
                        dir.join(crate::ca::TRUST_FILE).display()
                    );
                }
            }
            println!(
                "Next: on every machine `leash ca install --dir {d}` (trusts the new and the retired CA), then restart the agents so they sign with the new one. Once the grace period is over, `leash ca install` again drops the old CA.",
                d = dir.display()
            );
            Ok(())
        }
        CaCommand::Check {
            dir,
            json,
            container: true,
        } => {
            let ca = crate::ca::CertAuthority::load(&dir)?;
            let verdicts = trust::containers::check(ca.cert_pem());
            if json {
                println!("{}", serde_json::to_string_pretty(&verdicts)?);
            } else {
                print!("{}", trust::containers::table(&verdicts));
            }
            if verdicts.iter().any(|v| !v.trusted) {
                std::process::exit(1);
            }
            Ok(())
        }
        CaCommand::Check {
            dir,
            json,
            container: false,
        } => {
            let verdicts = trust::check::check(&dir)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&verdicts)?);
            } else {
                print!("{}", trust::check::table(&verdicts));
            }
            if verdicts.iter().any(|v| !v.trusted) {
                std::process::exit(1);
            }
            Ok(())
        }
        CaCommand::Bundle { dir, out } => {
            crate::ca::refresh_trust(&dir)?;
            trust::bundle(&dir.join(crate::ca::TRUST_FILE), &out)?;
            println!(
                "Wrote {}: the system roots and the organisation CA. In a container, mount it and set SSL_CERT_FILE, REQUESTS_CA_BUNDLE and NODE_EXTRA_CA_CERTS to its path.",
                out.display()
            );
            Ok(())
        }
        CaCommand::Uninstall { dir } => {
            print!("{}", trust::uninstall(&dir)?);
            Ok(())
        }
    }
}
