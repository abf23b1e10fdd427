//! `leash intercept`: the kernel hooks a stopped agent left behind.

use std::path::PathBuf;

use clap::Subcommand;

use crate::{
    app,
    config::{Config, Overrides},
};

#[derive(Subcommand)]
pub enum InterceptCommand {
    /// Detach the hooks a stopped agent left pinned (`intercept.failure_mode:
    /// closed`): provider connections flow direct again, uninspected. For
    /// uninstalling Leash; a running agent keeps its own hooks.
    Release {
        /// The cgroup the hooks are on; default: `intercept.cgroup` of
        /// `--config`, else the cgroup v2 root.
        #[arg(long, value_name = "DIR")]
        cgroup: Option<PathBuf>,
        /// The agent's config file (for `intercept.cgroup`).
        #[arg(short, long, env = "LEASH_CONFIG")]
        config: Option<PathBuf>,
    },
}

pub fn command(cmd: InterceptCommand) -> anyhow::Result<()> {
    match cmd {
        InterceptCommand::Release { cgroup, config } => {
            let cgroup = match cgroup {
                Some(c) => Some(c),
                None => {
                    Config::load(config.as_deref(), &Overrides::default())?
                        .intercept
                        .cgroup
                }
            };
            let (dir, released) = app::release_pinned(cgroup)?;
            println!(
                "released {released} pinned hook(s) on {}: provider connections there now go direct",
                dir.display()
            );
            Ok(())
        }
    }
}
