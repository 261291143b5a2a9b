//! `nestbox run [create flags] [--detach] ID`: create + start + wait; exits with the
//! container's status (128+signal when it was killed) and removes it afterwards.

use nestbox_runtime::container;
use nix::sys::signal::Signal;

use super::Cli;

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub create: super::create::Args,
    /// Start and return without waiting.
    #[arg(short, long)]
    pub detach: bool,
    /// Accepted for runc compatibility (the runtime never becomes a subreaper).
    #[arg(long = "no-subreaper")]
    pub no_subreaper: bool,
    /// Keep the container's state after it exits.
    #[arg(long)]
    pub keep: bool,
}

/// Signals passed on to the container while `run` waits.
pub const FORWARDED: &[Signal] = &[
    Signal::SIGHUP,
    Signal::SIGINT,
    Signal::SIGQUIT,
    Signal::SIGTERM,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGWINCH,
    Signal::SIGCONT,
];

pub fn run(cli: &Cli, args: &RunArgs) -> anyhow::Result<i32> {
    let opts = args.create.options(cli);
    let created = container::create(&opts)?;
    if let Err(e) = container::start(&cli.root, &opts.id) {
        let _ = container::delete(&cli.root, &opts.id, true);
        return Err(e.into());
    }
    if args.detach {
        return Ok(0);
    }
    let code = container::wait_forwarding(created.pid, FORWARDED)?;
    if !args.keep {
        container::cleanup_after_run(&cli.root, &opts.id)?;
    }
    Ok(code)
}
