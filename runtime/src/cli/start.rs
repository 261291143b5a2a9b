//! `nestbox start ID`

use super::Cli;

#[derive(Debug, clap::Args)]
pub struct Args {
    pub id: String,
}

pub fn run(cli: &Cli, args: &Args) -> anyhow::Result<i32> {
    nestbox_runtime::container::start(&cli.root, &args.id)?;
    Ok(0)
}
