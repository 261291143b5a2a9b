//! `nestbox ps [--format table|json] ID [ps args...]`: the container's processes. JSON is the
//! list of host pids; the table is `ps` (default `-ef`) filtered to those pids, like runc.

use std::process::Command;

use super::Cli;

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    #[arg(short, long, value_enum, default_value = "table")]
    pub format: Format,
    pub id: String,
    /// Arguments for ps(1) (an empty trailing argument, as some callers send, is ignored).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub ps_args: Vec<String>,
}

pub fn run(cli: &Cli, args: &Args) -> anyhow::Result<i32> {
    let pids = nestbox_runtime::container::pids(&cli.root, &args.id)?;
    if let Format::Json = args.format {
        println!("{}", serde_json::to_string(&pids)?);
        return Ok(0);
    }
    let mut ps_args: Vec<&str> = args
        .ps_args
        .iter()
        .map(String::as_str)
        .filter(|a| !a.is_empty())
        .collect();
    if ps_args.is_empty() {
        ps_args.push("-ef");
    }
    let out = Command::new("ps").args(&ps_args).output()?;
    if !out.status.success() {
        anyhow::bail!(
            "ps {}: {}",
            ps_args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    let header = lines.next().unwrap_or_default();
    let pid_col = header
        .split_whitespace()
        .position(|c| c == "PID")
        .ok_or_else(|| anyhow::anyhow!("ps output has no PID column"))?;
    println!("{header}");
    for line in lines {
        let pid = line
            .split_whitespace()
            .nth(pid_col)
            .and_then(|p| p.parse::<i32>().ok());
        if pid.is_some_and(|p| pids.contains(&p)) {
            println!("{line}");
        }
    }
    Ok(0)
}
