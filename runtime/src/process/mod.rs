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
}

/// Clone the init process. New pid and user namespaces are created by the clone itself (so
/// the child is pid 1 of its namespace and the other namespaces belong to its user
/// namespace); the rest are unshared by init. Each side keeps only its end of the channel.
pub fn spawn(config: InitConfig, init_end: Channel, parent_end: Channel) -> Result<(Pid, Channel)> {
    let flags = config.namespaces.new & (CloneFlags::CLONE_NEWPID | CloneFlags::CLONE_NEWUSER);
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
    match ret {
        -1 => Err(Error::Sys {
            context: "clone of the container init".into(),
            source: nix::errno::Errno::last(),
        }),
        0 => {
            drop(parent_end);
            let err = match init::run(config, &init_end) {
                Ok(never) => match never {},
                Err(e) => e,
            };
            let _ = init_end.send(&Message::Failed(err.to_string()));
            // SAFETY: _exit ends the child without running the parent's atexit/destructors.
            unsafe { libc::_exit(1) }
        }
        pid => {
            drop(init_end);
            Ok((Pid::from_raw(pid as i32), parent_end))
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
