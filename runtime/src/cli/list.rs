//! `nestbox list [--format table|json] [--quiet]`

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
    /// Only ids.
    #[arg(short, long)]
    pub quiet: bool,
}

pub fn run(cli: &Cli, args: &Args) -> anyhow::Result<i32> {
    let containers = nestbox_runtime::container::list(&cli.root)?;
    if args.quiet {
        for (s, _) in &containers {
            println!("{}", s.id);
        }
        return Ok(0);
    }
    match args.format {
        Format::Json => {
            let list: Vec<_> = containers.iter().map(|(s, st)| s.oci(*st)).collect();
            if list.is_empty() {
                // runc prints a nil slice.
                println!("null");
            } else {
                println!("{}", serde_json::to_string(&list)?);
            }
        }
        Format::Table => {
            println!("ID          PID         STATUS      BUNDLE      CREATED     OWNER");
            for (s, st) in &containers {
                let pid = if *st == nestbox_runtime::state::Status::Stopped {
                    0
                } else {
                    s.pid
                };
                println!(
                    "{:<12}{:<12}{:<12}{:<12}{:<12}{}",
                    format!("{} ", s.id),
                    pid,
                    st.to_string(),
                    format!("{} ", s.bundle.display()),
                    format!("{} ", s.created),
                    s.owner
                );
            }
        }
    }
    Ok(0)
}
