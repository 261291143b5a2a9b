//! `exec`: a new process inside a running container. The runtime joins the container's pid
//! namespace and clones the child (a direct child of the runtime); the child joins the other
//! namespaces of the container's init (user first, mount last), then goes through the same
//! final steps as init (rlimits, cwd, fds, capabilities, user, no_new_privs, seccomp, execve).

use std::convert::Infallible;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use nix::sched::CloneFlags;
use nix::unistd::Pid;
use oci_spec::runtime::{LinuxNamespaceType, Process, Spec};

use crate::channel::{Channel, Message};
use crate::error::{Context, Error, Result};
use crate::namespaces;
use crate::process::{init, user};

/// Namespace files of the container's init that differ from ours, user first and mount last.
pub fn namespaces_to_join(init_pid: i32) -> Result<Vec<(LinuxNamespaceType, OwnedFd)>> {
    let order = [
        ("user", LinuxNamespaceType::User),
        ("ipc", LinuxNamespaceType::Ipc),
        ("uts", LinuxNamespaceType::Uts),
        ("net", LinuxNamespaceType::Network),
        ("pid", LinuxNamespaceType::Pid),
        ("cgroup", LinuxNamespaceType::Cgroup),
        ("time", LinuxNamespaceType::Time),
        ("mnt", LinuxNamespaceType::Mount),
    ];
    let mut out = Vec::new();
    for (name, typ) in order {
        let theirs = format!("/proc/{init_pid}/ns/{name}");
        let Ok(their_meta) = std::fs::metadata(&theirs) else {
            continue;
        };
        let ours = std::fs::metadata(format!("/proc/self/ns/{name}")).ok();
        if ours.is_some_and(|m| m.ino() == their_meta.ino() && m.dev() == their_meta.dev()) {
            continue;
        }
        let f = std::fs::File::open(&theirs).ctx(|| format!("opening {theirs}"))?;
        out.push((typ, OwnedFd::from(f)));
    }
    Ok(out)
}

/// What the exec'd child needs.
pub struct ExecConfig<'a> {
    pub spec: &'a Spec,
    pub process: &'a Process,
    pub joins: Vec<(LinuxNamespaceType, OwnedFd)>,
    /// The root of the container's init (`/proc/<pid>/root`) when its mount namespace is ours:
    /// a container without a mount namespace of its own is chrooted there.
    pub root: Option<OwnedFd>,
    pub console: Option<OwnedFd>,
    /// Connection to linux.seccomp.listenerPath, opened by the runtime.
    pub seccomp_listener: Option<(std::os::unix::net::UnixStream, std::path::PathBuf)>,
    pub preserve_fds: i32,
    /// The container's state JSON, for a seccomp agent (linux.seccomp.listenerPath).
    pub state_json: String,
    /// The container's cgroup: the child enters it first thing.
    pub cgroup: Option<&'a nestbox_cgroups::Cgroup>,
}

/// Clone the exec'd process. The parent must already have joined the pid namespace.
pub fn spawn(
    config: ExecConfig,
    child_end: Channel,
    parent_end: Channel,
) -> Result<(Pid, Channel)> {
    let cgroup2 = crate::process::open_cgroup2(config.cgroup);
    let (ret, born_in_v2) = crate::process::fork_like(CloneFlags::empty(), cgroup2.as_ref())?;
    match ret {
        0 => {
            drop(parent_end);
            let err = match crate::process::enter_cgroup(config.cgroup)
                .and_then(|()| run(config, &child_end))
            {
                Ok(never) => match never {},
                Err(e) => e,
            };
            let _ = child_end.send(&Message::Failed(err.to_string()));
            // SAFETY: _exit ends the child without running the parent's destructors.
            unsafe { libc::_exit(1) }
        }
        pid => {
            drop(child_end);
            let pid = Pid::from_raw(pid as i32);
            if let Err(e) = crate::process::finish_cgroup(config.cgroup, pid, born_in_v2) {
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
                let _ = nix::sys::wait::waitpid(pid, None);
                return Err(e);
            }
            Ok((pid, parent_end))
        }
    }
}

fn run(config: ExecConfig, channel: &Channel) -> Result<Infallible> {
    match channel.recv()? {
        Message::Go => {}
        other => return Err(Error::Other(format!("sync channel: unexpected {other:?}"))),
    }
    // The seccomp agent wants our pid as the host sees it: read before joining namespaces.
    let listener = match config.seccomp_listener {
        Some((connection, path)) => {
            let own = std::fs::read_link("/proc/self").ctx(|| "readlink /proc/self".into())?;
            Some(crate::seccomp::Listener {
                connection,
                path,
                state_json: config.state_json.clone(),
                pid: own.to_str().and_then(|s| s.parse().ok()),
            })
        }
        None => None,
    };
    for (typ, fd) in &config.joins {
        if *typ == LinuxNamespaceType::Pid {
            continue;
        }
        namespaces::join(*typ, fd)?;
        if *typ == LinuxNamespaceType::User {
            nix::unistd::setresgid(0.into(), 0.into(), 0.into()).ctx(|| "setresgid(0)".into())?;
            nix::unistd::setresuid(0.into(), 0.into(), 0.into()).ctx(|| "setresuid(0)".into())?;
        }
    }
    if let Some(root) = &config.root {
        nix::unistd::fchdir(root.as_raw_fd()).ctx(|| "fchdir to the container's root".into())?;
        nix::unistd::chroot(".").ctx(|| "chroot into the container's root".into())?;
    }
    // Joining the mount namespace moved us to its root; make sure cwd is there too.
    nix::unistd::chdir("/").ctx(|| "chdir /".into())?;
    nix::unistd::setsid().ctx(|| "setsid".into())?;
    let process = config.process;
    if process.terminal().unwrap_or(false) {
        let socket = config.console.ok_or_else(|| {
            Error::Other("a terminal was requested but no --console-socket was given".into())
        })?;
        let size = process
            .console_size()
            .map(|b| (b.height() as u16, b.width() as u16));
        crate::console::setup_exec(socket, size)?;
    }
    init::set_rlimits(process)?;
    let args = process.args().clone().unwrap_or_default();
    let arg0 = args
        .first()
        .ok_or_else(|| Error::Other("exec: no command given".into()))?;
    let mut env = process.env().clone().unwrap_or_default();
    let exe = init::find_executable(arg0, &env)?;
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        let home = user::lookup(process.user().uid(), Path::new("/etc")).home;
        env.push(format!("HOME={}", home.unwrap_or_else(|| "/".into())));
    }
    // Compiled by the parent while we joined the namespaces.
    let seccomp_program = match config
        .spec
        .linux()
        .as_ref()
        .and_then(|l| l.seccomp().as_ref())
    {
        Some(_) => Some(crate::seccomp::recv_program(channel)?),
        None => None,
    };
    init::finalize(
        config.spec,
        process,
        &exe,
        &args,
        &env,
        init::SeccompParts {
            program: seccomp_program.as_ref(),
            listener,
        },
        init::KeptFds {
            preserved: config.preserve_fds,
            error_fd: channel.as_raw_fd(),
        },
    )
}
