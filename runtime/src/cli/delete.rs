//! `nestbox delete [--force] ID`

use super::Cli;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Kill a running container first (and succeed for an unknown id).
    #[arg(short, long)]
    pub force: bool,
    pub id: String,
}

pub fn run(cli: &Cli, args: &Args) -> anyhow::Result<i32> {
    nestbox_runtime::container::delete(&cli.root, &args.id, args.force)?;
    Ok(0)
}
