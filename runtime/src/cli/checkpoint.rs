//! `nestbox checkpoint` / `nestbox restore`: CRIU is not supported; say so clearly (and in
//! the runc log format) instead of an unknown-command usage error.

use super::Cli;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// runc's flags and the container id, accepted and ignored.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub rest: Vec<String>,
}

pub fn run(_cli: &Cli, _args: &Args) -> anyhow::Result<i32> {
    anyhow::bail!("checkpoint/restore (CRIU) is not supported by nestbox")
}
