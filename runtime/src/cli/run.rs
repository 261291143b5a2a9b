//! `nestbox run [create flags] [--detach] ID`: create + start + wait; exits with the
//! container's status (128+signal when it was killed) and removes it afterwards.

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixListener;

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
    let mut opts = args.create.options(cli);
    // runc's foreground mode: a terminal without --console-socket is relayed by `run` itself.
    let relay = opts.console_socket.is_none()
        && !args.detach
        && nestbox_runtime::spec::load_bundle(&opts.bundle)
            .ok()
            .and_then(|b| b.spec.process().as_ref().and_then(|p| p.terminal()))
            .unwrap_or(false);
    let mut console = None;
    if relay {
        std::fs::create_dir_all(&cli.root)?;
        nestbox_runtime::spec::validate_id(&opts.id)?;
        let path = cli.root.join(format!(".{}.console.sock", opts.id));
        let _ = std::fs::remove_file(&path);
        console = Some((UnixListener::bind(&path)?, path.clone()));
        opts.console_socket = Some(path);
    }
    let created = container::create(&opts);
    let master = match (&console, &created) {
        (Some((listener, path)), Ok(_)) => {
            let _ = std::fs::remove_file(path);
            let (conn, _) = listener.accept()?;
            Some(nestbox_runtime::console::receive_master(&OwnedFd::from(
                conn,
            ))?)
        }
        (Some((_, path)), Err(_)) => {
            let _ = std::fs::remove_file(path);
            None
        }
        _ => None,
    };
    let created = created?;
    if let Err(e) = container::start(&cli.root, &opts.id) {
        let _ = container::delete(&cli.root, &opts.id, true);
        return Err(e.into());
    }
    if args.detach {
        return Ok(0);
    }
    let code = match master {
        Some(master) => nestbox_runtime::console::relay(master, created.pid, FORWARDED)?,
        None => container::wait_forwarding(created.pid, FORWARDED)?,
    };
    if !args.keep {
        container::cleanup_after_run(&cli.root, &opts.id)?;
    }
    Ok(code)
}
