//! `nestbox spec [--bundle DIR]`: write runc's default config.json.

use std::path::PathBuf;

use super::Cli;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Where to write config.json (default: current directory).
    #[arg(short, long, default_value = ".")]
    pub bundle: PathBuf,
}

pub fn run(_cli: &Cli, args: &Args) -> anyhow::Result<i32> {
    let path = args.bundle.join("config.json");
    if path.exists() {
        anyhow::bail!("{}: file already exists", path.display());
    }
    std::fs::write(&path, nestbox_runtime::spec::DEFAULT_CONFIG)
        .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
    Ok(0)
}
