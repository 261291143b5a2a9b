//! `nestbox state ID`

use super::Cli;

#[derive(Debug, clap::Args)]
pub struct Args {
    pub id: String,
}

pub fn run(cli: &Cli, args: &Args) -> anyhow::Result<i32> {
    println!(
        "{}",
        nestbox_runtime::container::state_json(&cli.root, &args.id)?
    );
    Ok(0)
}
