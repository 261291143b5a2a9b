//! The runc-compatible command line: global flags, one file per subcommand. Each subcommand
//! parses its flags and calls one library function.

pub mod checkpoint;
pub mod create;
pub mod delete;
pub mod events;
pub mod exec;
pub mod features;
pub mod kill;
pub mod list;
pub mod pause;
pub mod ps;
pub mod run;
pub mod spec;
pub mod start;
pub mod state;
pub mod update;

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "nestbox",
    about = "nestbox: an OCI container runtime, a drop-in for runc on the command line",
    disable_version_flag = true
)]
pub struct Cli {
    /// Directory for container state.
    #[arg(long, global = true, default_value = "/run/nestbox")]
    pub root: PathBuf,
    /// Log file (default: stderr).
    #[arg(long, global = true)]
    pub log: Option<PathBuf>,
    /// Log format.
    #[arg(long = "log-format", global = true, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Debug logging.
    #[arg(long, global = true)]
    pub debug: bool,
    /// Use systemd for cgroups (cgroupsPath as slice:prefix:name).
    #[arg(long = "systemd-cgroup", global = true)]
    pub systemd_cgroup: bool,
    /// Accepted for runc compatibility (true|false|auto; `--rootless=VALUE`).
    #[arg(
        long,
        global = true,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true"
    )]
    pub rootless: Option<String>,
    /// Log level (debug, info, warn, error); `--debug` is the same as `--log-level debug`.
    #[arg(long = "log-level", global = true)]
    pub log_level: Option<String>,
    /// Accepted for runc compatibility (checkpointing is not supported).
    #[arg(long, global = true)]
    pub criu: Option<String>,
    /// Print the version.
    #[arg(short = 'v', long)]
    pub version: bool,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a container (its init waits until `start`).
    Create(create::Args),
    /// Start a created container.
    Start(start::Args),
    /// Create, start and wait for a container; exits with its status.
    Run(run::RunArgs),
    /// Print a container's state as JSON.
    State(state::Args),
    /// Send a signal to a container's init (or to all its processes).
    Kill(kill::Args),
    /// Delete a container.
    Delete(delete::Args),
    /// List containers.
    List(list::Args),
    /// Write a default config.json.
    Spec(spec::Args),
    /// Run a new process inside a running container.
    Exec(exec::Args),
    /// Freeze every process of a container.
    Pause(pause::Args),
    /// Thaw a paused container.
    Resume(pause::Args),
    /// List the container's processes.
    Ps(ps::Args),
    /// Update a container's resource limits.
    Update(update::Args),
    /// Container stats and OOM events as JSON lines.
    Events(events::Args),
    /// Not supported (CRIU).
    Checkpoint(checkpoint::Args),
    /// Not supported (CRIU).
    Restore(checkpoint::Args),
    /// Print the runtime's supported features (JSON).
    Features(features::Args),
}

/// Long flags that take no value. Together with the long (multi-letter) names in
/// [`VALUE_FLAGS`] they are the names whose single-dash form (`-name`, `-name=value`, as
/// go-runc sends them) becomes `--name`.
const BOOL_LONG_FLAGS: &[&str] = &[
    "debug",
    "systemd-cgroup",
    "rootless",
    "help",
    "version",
    "no-pivot",
    "no-new-keyring",
    "detach",
    "no-subreaper",
    "keep",
    "all",
    "force",
    "quiet",
    "tty",
    "no-new-privs",
    "stats",
];

/// Flags that take a value (so the next argument is not a positional).
const VALUE_FLAGS: &[&str] = &[
    "root",
    "log",
    "log-format",
    "log-level",
    "criu",
    "bundle",
    "pid-file",
    "console-socket",
    "preserve-fds",
    "format",
    "process",
    "cwd",
    "env",
    "user",
    "additional-gids",
    "cap",
    "process-label",
    "apparmor",
    "resources",
    "blkio-weight",
    "cpu-period",
    "cpu-quota",
    "cpu-share",
    "cpu-rt-period",
    "cpu-rt-runtime",
    "cpuset-cpus",
    "cpuset-mems",
    "memory",
    "memory-reservation",
    "memory-swap",
    "pids-limit",
    "kernel-memory",
    "kernel-memory-tcp",
    "interval",
    "b",
    "p",
    "e",
    "u",
    "g",
    "c",
    "f",
    "r",
];

/// A long flag name: a boolean long flag or a value flag longer than one letter.
fn is_long_flag(name: &str) -> bool {
    BOOL_LONG_FLAGS.contains(&name) || (name.len() > 1 && VALUE_FLAGS.contains(&name))
}

/// Rewrite single-dash long flags to the double-dash form clap expects. Stops after the
/// container id (the second positional), so a command run by `exec` keeps its own flags.
pub fn normalise_args(args: impl IntoIterator<Item = OsString>) -> Vec<OsString> {
    let mut out = Vec::new();
    let mut positionals = 0;
    let mut expect_value = false;
    let mut verbatim = false;
    let mut args = args.into_iter();
    out.extend(args.next());
    for arg in args {
        let s = arg.to_string_lossy().into_owned();
        if verbatim {
            out.push(arg);
            continue;
        }
        if s == "--" {
            verbatim = true;
            out.push(arg);
            continue;
        }
        if s.starts_with('-') && s.len() > 1 {
            let name = s.trim_start_matches('-');
            let (name, has_value) = match name.split_once('=') {
                Some((n, _)) => (n, true),
                None => (name, false),
            };
            expect_value = !has_value && VALUE_FLAGS.contains(&name);
            if !s.starts_with("--") && s.len() > 2 && is_long_flag(name) {
                out.push(OsString::from(format!("-{s}")));
                continue;
            }
            out.push(arg);
            continue;
        }
        if expect_value {
            expect_value = false;
        } else {
            positionals += 1;
            if positionals == 2 {
                verbatim = true;
            }
        }
        out.push(arg);
    }
    out
}

/// Whether the (normalised) command line starts container processes: those run from a
/// sealed view of the binary (runtime/src/memfd.rs). Decided from the command name alone,
/// before clap parses anything, so the first process does as little as possible before it
/// re-execs.
pub fn starts_container(args: &[OsString]) -> bool {
    let mut args = args.iter().skip(1);
    while let Some(arg) = args.next() {
        let s = arg.to_string_lossy();
        if let Some(flag) = s.strip_prefix("--") {
            if !flag.contains('=') && VALUE_FLAGS.contains(&flag) {
                args.next();
            }
            continue;
        }
        if s.starts_with('-') {
            continue;
        }
        return matches!(&*s, "create" | "run" | "exec");
    }
    false
}

/// Run the parsed command; returns the exit code.
pub fn dispatch(cli: &Cli) -> anyhow::Result<i32> {
    if cli.version {
        println!("nestbox version {}", env!("CARGO_PKG_VERSION"));
        println!("spec: {}", nestbox_runtime::SPEC_VERSION);
        return Ok(0);
    }
    let Some(command) = &cli.command else {
        anyhow::bail!("no command given (see --help)");
    };
    match command {
        Command::Create(a) => create::run(cli, a),
        Command::Start(a) => start::run(cli, a),
        Command::Run(a) => run::run(cli, a),
        Command::State(a) => state::run(cli, a),
        Command::Kill(a) => kill::run(cli, a),
        Command::Delete(a) => delete::run(cli, a),
        Command::List(a) => list::run(cli, a),
        Command::Spec(a) => spec::run(cli, a),
        Command::Exec(a) => exec::run(cli, a),
        Command::Pause(a) => pause::pause(cli, a),
        Command::Resume(a) => pause::resume(cli, a),
        Command::Ps(a) => ps::run(cli, a),
        Command::Update(a) => update::run(cli, a),
        Command::Events(a) => events::run(cli, a),
        Command::Features(a) => features::run(cli, a),
        Command::Checkpoint(a) | Command::Restore(a) => checkpoint::run(cli, a),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_dash_long_flags_are_normalised() {
        let args: Vec<OsString> = [
            "nestbox",
            "-root=/x",
            "-log-format",
            "json",
            "run",
            "-d",
            "-no-subreaper",
            "id",
        ]
        .iter()
        .map(OsString::from)
        .collect();
        let out: Vec<String> = normalise_args(args)
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        assert_eq!(
            out,
            [
                "nestbox",
                "--root=/x",
                "--log-format",
                "json",
                "run",
                "-d",
                "--no-subreaper",
                "id"
            ]
        );
    }

    #[test]
    fn go_runc_command_lines_parse() {
        use clap::Parser;
        for line in [
            "nestbox --root /r --log /l.json --log-format json --systemd-cgroup create --bundle /b --pid-file /p --console-socket /s --no-pivot --no-new-keyring --preserve-fds 2 id",
            "nestbox --root=/r --rootless=false --log-level=debug run -d --no-subreaper --keep --bundle /b id",
            "nestbox --rootless kill --all id 9",
            "nestbox exec --process /p.json --detach --pid-file /p -t --console-socket /s id",
            "nestbox exec -e A=1 --env B=2 -u 1000:1000 --cwd /tmp id sh -c true",
            "nestbox ps --format json id",
            "nestbox update --resources - id",
            "nestbox events --stats --interval 1s id",
            "nestbox delete --force id",
            "nestbox -root /r -log-format json list -format json",
        ] {
            let args = normalise_args(line.split(' ').map(OsString::from));
            if let Err(e) = Cli::try_parse_from(args) {
                panic!("{line}: {e}");
            }
        }
    }

    #[test]
    fn commands_that_start_containers_are_found_by_name() {
        for (line, want) in [
            ("nestbox --root /r run --bundle /b id", true),
            ("nestbox --root=/r --log /run create id", true),
            ("nestbox --log-format json exec id true", true),
            ("nestbox --root /run state id", false),
            ("nestbox --debug delete --force run", false),
            ("nestbox -root /exec list", false),
            ("nestbox", false),
        ] {
            let args = normalise_args(line.split(' ').map(OsString::from));
            assert_eq!(starts_container(&args), want, "{line}");
        }
    }

    #[test]
    fn exec_command_flags_are_left_alone() {
        let args: Vec<OsString> = [
            "nestbox", "-root", "/r", "exec", "-cwd", "/", "id", "find", "-user", "root",
        ]
        .iter()
        .map(OsString::from)
        .collect();
        let out: Vec<String> = normalise_args(args)
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        assert_eq!(
            out,
            ["nestbox", "--root", "/r", "exec", "--cwd", "/", "id", "find", "-user", "root"]
        );
    }
}
