//! `nestbox exec [--process FILE | ARGS...] [--detach] [--pid-file P] [--console-socket S]
//! [--tty] [--cwd D] [--env K=V]... [--user U[:G]] ID [ARGS...]`: exits with the process's
//! status unless detached.

use std::path::PathBuf;

use nestbox_runtime::container::{self, ExecOptions, ExecProcess};

use super::Cli;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Process JSON (runtime-spec `process`); replaces ARGS and the per-field flags.
    #[arg(short, long)]
    pub process: Option<PathBuf>,
    /// Return once the process started.
    #[arg(short, long)]
    pub detach: bool,
    #[arg(long = "pid-file")]
    pub pid_file: Option<PathBuf>,
    #[arg(long = "console-socket")]
    pub console_socket: Option<PathBuf>,
    /// Allocate a pty (sent over --console-socket).
    #[arg(short, long)]
    pub tty: bool,
    #[arg(long)]
    pub cwd: Option<PathBuf>,
    /// Extra environment (KEY=VALUE), repeatable.
    #[arg(short, long)]
    pub env: Vec<String>,
    /// uid[:gid].
    #[arg(short, long)]
    pub user: Option<String>,
    /// Additional gids, repeatable.
    #[arg(short = 'g', long = "additional-gids")]
    pub additional_gids: Vec<u32>,
    /// Extra capabilities, repeatable.
    #[arg(short, long)]
    pub cap: Vec<String>,
    #[arg(long = "no-new-privs")]
    pub no_new_privs: bool,
    #[arg(long = "preserve-fds", default_value_t = 0)]
    pub preserve_fds: i32,
    /// Accepted for runc compatibility (not supported on this host).
    #[arg(long = "process-label")]
    pub process_label: Option<String>,
    /// Accepted for runc compatibility (not supported on this host).
    #[arg(long)]
    pub apparmor: Option<String>,
    pub id: String,
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

pub fn run(cli: &Cli, args: &Args) -> anyhow::Result<i32> {
    let opts = ExecOptions {
        process: ExecProcess {
            process_file: args.process.clone(),
            args: args.args.clone(),
            tty: args.tty,
            cwd: args.cwd.clone(),
            env: args.env.clone(),
            user: args.user.clone(),
            additional_gids: args.additional_gids.clone(),
            caps: args.cap.clone(),
            no_new_privs: args.no_new_privs,
        },
        pid_file: args.pid_file.clone(),
        console_socket: args.console_socket.clone(),
        preserve_fds: args.preserve_fds,
    };
    let pid = container::exec(&cli.root, &args.id, &opts)?;
    if args.detach {
        return Ok(0);
    }
    Ok(container::wait_forwarding(pid, super::run::FORWARDED)?)
}
