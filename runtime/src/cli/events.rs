//! `nestbox events [--stats] [--interval 5s] ID`: JSON records, one per line, like runc.

use std::io::Write;
use std::time::Duration;

use super::Cli;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print one stats record and exit.
    #[arg(long)]
    pub stats: bool,
    /// Time between stats records ("5s", "500ms", "1m" or seconds).
    #[arg(long, default_value = "5s")]
    pub interval: String,
    pub id: String,
}

fn parse_interval(text: &str) -> anyhow::Result<Duration> {
    let t = text.trim();
    let (num, unit) = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map(|i| t.split_at(i))
        .unwrap_or((t, "s"));
    let n: f64 = num
        .parse()
        .map_err(|_| anyhow::anyhow!("invalid interval {text:?}"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => anyhow::bail!("invalid interval {text:?}"),
    };
    if secs <= 0.0 {
        anyhow::bail!("interval must be positive");
    }
    Ok(Duration::from_secs_f64(secs))
}

pub fn run(cli: &Cli, args: &Args) -> anyhow::Result<i32> {
    let interval = parse_interval(&args.interval)?;
    let stdout = std::io::stdout();
    nestbox_runtime::container::events(&cli.root, &args.id, args.stats, interval, |line| {
        let mut out = stdout.lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    })?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals() {
        assert_eq!(parse_interval("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_interval("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_interval("2").unwrap(), Duration::from_secs(2));
        assert!(parse_interval("0s").is_err());
        assert!(parse_interval("5x").is_err());
    }
}
