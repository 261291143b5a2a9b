//! `nestbox pause ID` / `nestbox resume ID`: freeze and thaw the container's cgroup.

use super::Cli;

#[derive(Debug, clap::Args)]
pub struct Args {
    pub id: String,
}

pub fn pause(cli: &Cli, args: &Args) -> anyhow::Result<i32> {
    nestbox_runtime::container::pause(&cli.root, &args.id)?;
    Ok(0)
}

pub fn resume(cli: &Cli, args: &Args) -> anyhow::Result<i32> {
    nestbox_runtime::container::resume(&cli.root, &args.id)?;
    Ok(0)
}
