//! Seccomp for the container process, through nestbox-seccomp (libseccomp).

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;

use oci_spec::runtime::LinuxSeccomp;

use crate::error::{Error, Result};

/// Where an SCMP_ACT_NOTIFY fd goes: the agent socket (opened O_PATH before pivot_root, so it
/// is reachable afterwards through /proc/self/fd) and the container state to send with it.
pub struct Listener {
    pub socket: OwnedFd,
    pub state_json: String,
    /// The process the filter is for, as the agent sees pids; None: the state's pid (init).
    pub pid: Option<i32>,
}

/// Open `linux.seccomp.listenerPath` (host path) for later use.
pub fn open_listener(profile: &LinuxSeccomp, state_json: &str) -> Result<Option<Listener>> {
    let Some(path) = profile.listener_path().as_ref() else {
        return Ok(None);
    };
    let fd = nix::fcntl::open(
        path,
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| {
        Error::Spec(format!(
            "linux.seccomp.listenerPath {}: {e}",
            path.display()
        ))
    })?;
    // SAFETY: open returned a fresh fd that nothing else owns.
    let socket = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    Ok(Some(Listener {
        socket,
        state_json: state_json.to_string(),
        pid: None,
    }))
}

/// Compile and load the profile into the calling process (right before exec, or before the
/// user switch when no_new_privs is off, since loading then needs CAP_SYS_ADMIN). A notify fd
/// is handed to the listener.
pub fn load(profile: &LinuxSeccomp, listener: Option<&Listener>) -> Result<()> {
    let filter =
        nestbox_seccomp::compile(profile).map_err(|e| Error::Other(format!("seccomp: {e}")))?;
    let Some(notify) = filter
        .load()
        .map_err(|e| Error::Other(format!("seccomp: {e}")))?
    else {
        return Ok(());
    };
    let listener = listener.ok_or_else(|| {
        Error::Other("seccomp: SCMP_ACT_NOTIFY needs linux.seccomp.listenerPath".into())
    })?;
    let state: serde_json::Value = serde_json::from_str(&listener.state_json).unwrap_or_default();
    let pid = listener
        .pid
        .unwrap_or_else(|| state["pid"].as_i64().unwrap_or(0) as i32);
    let via = format!("/proc/self/fd/{}", listener.socket.as_raw_fd());
    nestbox_seccomp::send_to_listener(
        Path::new(&via),
        notify.as_fd(),
        pid,
        profile.listener_metadata().as_deref(),
        &state,
    )
    .map_err(|e| Error::Other(format!("seccomp: {e}")))
}
