//! Starting the container's init: `spawn` clones the child that becomes init (a direct child of
//! the runtime, never double-forked), and `init` is what that child runs inside the container.

pub mod attrs;
pub mod exec;
pub mod init;
pub mod user;

use std::os::fd::OwnedFd;
use std::path::Path;

use nix::sched::CloneFlags;
use nix::unistd::Pid;
use oci_spec::runtime::{LinuxNamespaceType, Spec};

use crate::channel::{Channel, Message};
use crate::error::{Error, Result};
use crate::namespaces::Namespaces;

/// What init needs; moved into the child by the clone.
pub struct InitConfig<'a> {
    pub spec: &'a Spec,
    pub bundle: &'a Path,
    pub rootfs: &'a Path,
    pub namespaces: &'a Namespaces,
    /// Opened namespace files to setns into (pid excluded: the parent joins that one).
    pub joins: Vec<(LinuxNamespaceType, OwnedFd)>,
    /// Listening socket `start` connects to.
    pub exec_listener: OwnedFd,
    /// Connected `--console-socket`, when the process wants a terminal.
    pub console: Option<OwnedFd>,
    /// Connection to linux.seccomp.listenerPath, opened by the runtime.
    pub seccomp_listener: Option<(std::os::unix::net::UnixStream, std::path::PathBuf)>,
    pub no_pivot: bool,
    pub preserve_fds: i32,
    /// The container's cgroup: init enters it first thing ([`enter_cgroup`]).
    pub cgroup: Option<&'a nestbox_cgroups::Cgroup>,
}

/// A fork-like clone of this single-threaded process (raw clone3 or clone: no CLONE_VM, no
/// stack, the child continues here with 0). With `cgroup2`, an fd of a cgroup2 directory,
/// the child is born in that cgroup (clone3's CLONE_INTO_CGROUP). Returns the raw result
/// and whether the child was born in `cgroup2` (false: clone3 or the flag is unavailable,
/// the caller moves the child itself).
pub(crate) fn fork_like(flags: CloneFlags, cgroup2: Option<&OwnedFd>) -> Result<(i64, bool)> {
    const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;
    #[repr(C)]
    struct CloneArgs {
        flags: u64,
        pidfd: u64,
        child_tid: u64,
        parent_tid: u64,
        exit_signal: u64,
        stack: u64,
        stack_size: u64,
        tls: u64,
        set_tid: u64,
        set_tid_size: u64,
        cgroup: u64,
    }
    if let Some(fd) = cgroup2 {
        let args = CloneArgs {
            flags: flags.bits() as u64 | CLONE_INTO_CGROUP,
            pidfd: 0,
            child_tid: 0,
            parent_tid: 0,
            exit_signal: libc::SIGCHLD as u64,
            stack: 0,
            stack_size: 0,
            tls: 0,
            set_tid: 0,
            set_tid_size: 0,
            cgroup: std::os::fd::AsRawFd::as_raw_fd(fd) as u64,
        };
        // SAFETY: clone3 without CLONE_VM and with a null stack behaves like fork (see
        // below); `args` is valid for the call and its size is passed.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_clone3,
                &args as *const CloneArgs,
                std::mem::size_of::<CloneArgs>(),
            )
        };
        if ret >= 0 {
            return Ok((ret, true));
        }
        // ENOSYS, E2BIG/EINVAL (an older kernel), EBUSY/EOPNOTSUPP (a cgroup that cannot
        // take processes this way): a plain clone, and the caller moves the child.
        tracing::debug!(
            error = %std::io::Error::last_os_error(),
            "clone3 into the cgroup failed; plain clone"
        );
    }
    // SAFETY: a raw clone without CLONE_VM and with a null stack behaves like fork: the child
    // gets a copy of this single-threaded process and continues here with return value 0.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (flags.bits() | libc::SIGCHLD) as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    if ret < 0 {
        return Err(Error::Sys {
            context: "clone of a container process".into(),
            source: nix::errno::Errno::last(),
        });
    }
    Ok((ret, false))
}

/// The container's cgroup2 directory, opened for clone3's CLONE_INTO_CGROUP.
pub(crate) fn open_cgroup2(cgroup: Option<&nestbox_cgroups::Cgroup>) -> Option<OwnedFd> {
    let dir = cgroup?.v2_dir()?;
    let fd = nix::fcntl::open(
        dir,
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .ok()?;
    // SAFETY: open returned a fresh fd that nothing else owns.
    Some(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}

/// In a freshly cloned container process, before anything else: enter the container's v1
/// cgroups (the calling thread is the whole process), so nothing it does is accounted
/// outside them. Devices rules are already in place (the parent applied them before the
/// clone).
pub(crate) fn enter_cgroup(cgroup: Option<&nestbox_cgroups::Cgroup>) -> Result<()> {
    if let Some(cg) = cgroup {
        cg.enter_v1_self()?;
    }
    Ok(())
}

/// In the parent after [`fork_like`]: the cgroup2 part for a child not born there.
pub(crate) fn finish_cgroup(
    cgroup: Option<&nestbox_cgroups::Cgroup>,
    pid: Pid,
    born_in_v2: bool,
) -> Result<()> {
    if let (Some(cg), false) = (cgroup, born_in_v2) {
        cg.add_task_v2(pid.as_raw())?;
    }
    Ok(())
}

/// Clone the init process. New pid and user namespaces are created by the clone itself (so
/// the child is pid 1 of its namespace and the other namespaces belong to its user
/// namespace); the rest are unshared by init. Each side keeps only its end of the channel.
pub fn spawn(config: InitConfig, init_end: Channel, parent_end: Channel) -> Result<(Pid, Channel)> {
    let flags = config.namespaces.new & (CloneFlags::CLONE_NEWPID | CloneFlags::CLONE_NEWUSER);
    let cgroup2 = open_cgroup2(config.cgroup);
    let (ret, born_in_v2) = fork_like(flags, cgroup2.as_ref())?;
    match ret {
        0 => {
            drop(parent_end);
            let err = match enter_cgroup(config.cgroup).and_then(|()| init::run(config, &init_end))
            {
                Ok(never) => match never {},
                Err(e) => e,
            };
            let _ = init_end.send(&Message::Failed(err.to_string()));
            // SAFETY: _exit ends the child without running the parent's atexit/destructors.
            unsafe { libc::_exit(1) }
        }
        pid => {
            drop(init_end);
            let pid = Pid::from_raw(pid as i32);
            if let Err(e) = finish_cgroup(config.cgroup, pid, born_in_v2) {
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
                let _ = nix::sys::wait::waitpid(pid, None);
                return Err(e);
            }
            Ok((pid, parent_end))
        }
    }
}

/// Write uid_map/gid_map for a child in a new user namespace.
pub fn write_id_maps(pid: Pid, spec: &Spec) -> Result<()> {
    let Some(linux) = spec.linux().as_ref() else {
        return Ok(());
    };
    let fmt = |maps: Option<&Vec<oci_spec::runtime::LinuxIdMapping>>| -> String {
        maps.map(|m| {
            m.iter()
                .map(|e| format!("{} {} {}\n", e.container_id(), e.host_id(), e.size()))
                .collect()
        })
        .unwrap_or_default()
    };
    for (file, text) in [
        ("uid_map", fmt(linux.uid_mappings().as_ref())),
        ("gid_map", fmt(linux.gid_mappings().as_ref())),
    ] {
        if text.is_empty() {
            return Err(Error::Spec(format!(
                "a new user namespace needs linux.{}Mappings",
                &file[..3]
            )));
        }
        let path = format!("/proc/{pid}/{file}");
        std::fs::write(&path, text.as_bytes())
            .map_err(|e| Error::Other(format!("writing {path}: {e}")))?;
    }
    Ok(())
}
