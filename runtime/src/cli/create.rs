//! `nestbox create [--bundle B] [--pid-file P] [--console-socket S] ... ID`

use std::path::PathBuf;

use nestbox_runtime::container::{self, CreateOptions};

use super::Cli;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Path to the bundle (default: current directory).
    #[arg(short, long, default_value = ".")]
    pub bundle: PathBuf,
    /// File to write the init's pid to.
    #[arg(long = "pid-file")]
    pub pid_file: Option<PathBuf>,
    /// Unix socket that receives the pty master when process.terminal is true.
    #[arg(long = "console-socket")]
    pub console_socket: Option<PathBuf>,
    /// Use MS_MOVE + chroot instead of pivot_root (for ramfs roots).
    #[arg(long = "no-pivot")]
    pub no_pivot: bool,
    /// Accepted for runc compatibility (no session keyring is created anyway).
    #[arg(long = "no-new-keyring")]
    pub no_new_keyring: bool,
    /// Pass this many extra fds (from 3 on) to the container process.
    #[arg(long = "preserve-fds", default_value_t = 0)]
    pub preserve_fds: i32,
    /// Container id.
    pub id: String,
}

impl Args {
    pub fn options(&self, cli: &Cli) -> CreateOptions {
        CreateOptions {
            root: cli.root.clone(),
            id: self.id.clone(),
            bundle: self.bundle.clone(),
            pid_file: self.pid_file.clone(),
            console_socket: self.console_socket.clone(),
            no_pivot: self.no_pivot,
            preserve_fds: self.preserve_fds,
            systemd_cgroup: cli.systemd_cgroup,
        }
    }
}

pub fn run(cli: &Cli, args: &Args) -> anyhow::Result<i32> {
    container::create(&args.options(cli))?;
    Ok(0)
}
