//! `nestbox kill [--all] ID [SIGNAL]` (SIGNAL numeric or by name; default SIGTERM)

use super::Cli;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Signal every process in the container's cgroup.
    #[arg(short, long)]
    pub all: bool,
    pub id: String,
    #[arg(default_value = "SIGTERM", allow_hyphen_values = true)]
    pub signal: String,
}

pub fn run(cli: &Cli, args: &Args) -> anyhow::Result<i32> {
    let signal = nestbox_runtime::signal::parse(args.signal.trim_start_matches('-'))?;
    nestbox_runtime::container::kill_container(&cli.root, &args.id, signal, args.all)?;
    Ok(0)
}
