//! Seccomp for the container process: the runtime compiles the profile through
//! nestbox-seccomp (libseccomp); the container's process loads the program with seccomp(2).

use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use oci_spec::runtime::LinuxSeccomp;

use crate::error::{Error, Result};

/// Where an SCMP_ACT_NOTIFY fd goes: a connection to the agent's socket, opened by the runtime
/// (its mount namespace, its credentials: the container's user may not write a root-owned
/// socket), and the container state to send with the fd.
pub struct Listener {
    pub connection: UnixStream,
    /// linux.seccomp.listenerPath, for errors.
    pub path: PathBuf,
    pub state_json: String,
    /// The process the filter is for, as the agent sees pids; None: the state's pid (init).
    pub pid: Option<i32>,
}

/// Connect to `linux.seccomp.listenerPath` (a host path) now; the state goes over the
/// connection when the filter is loaded. None without a listenerPath.
pub fn connect_listener(profile: &LinuxSeccomp) -> Result<Option<(UnixStream, PathBuf)>> {
    let Some(path) = profile.listener_path().as_ref() else {
        return Ok(None);
    };
    let connection = UnixStream::connect(path).map_err(|e| {
        Error::Spec(format!(
            "linux.seccomp.listenerPath {}: {e}",
            path.display()
        ))
    })?;
    Ok(Some((connection, path.clone())))
}

/// Compile the profile to the program the container's process loads (in the runtime's
/// process, while that one sets up): the bytes of a [`nestbox_seccomp::Program`].
pub fn compile(profile: &LinuxSeccomp) -> Result<Vec<u8>> {
    let program = nestbox_seccomp::compile(profile)
        .and_then(|filter| filter.program())
        .map_err(|e| Error::Other(format!("seccomp: {e}")))?;
    Ok(program.to_bytes())
}

/// Where [`compile_cached`] keeps programs, under the state root: a name no container id
/// can take (ids have no '@').
pub const CACHE_DIR: &str = "@seccomp-cache";
/// At most this many programs are kept; a miss that finds more clears the cache.
const CACHE_MAX: usize = 64;

/// [`compile`], through a cache of compiled programs in `<root>/@seccomp-cache/` (root-owned,
/// 0700, like the state next to it). Compiling a full default profile for three
/// architectures takes libseccomp 10-25 ms, more than the rest of `run`; containers mostly
/// share a handful of profiles. The key hashes the profile as parsed and the identity of
/// this binary (device, inode, size, mtime: a rebuilt or upgraded runtime, whose compiler may
/// differ, never reads an older build's programs). No cache for a binary running from a
/// memfd copy (no stable identity), and any cache error just means compiling.
pub fn compile_cached(root: &Path, profile: &LinuxSeccomp) -> Result<Vec<u8>> {
    let Some(key) = cache_key(profile) else {
        return compile(profile);
    };
    let dir = root.join(CACHE_DIR);
    let path = dir.join(&key);
    let trusted = trusted_dir(&dir);
    if trusted {
        if let Ok(bytes) = std::fs::read(&path) {
            if nestbox_seccomp::Program::from_bytes(&bytes).is_some() {
                return Ok(bytes);
            }
        }
    }
    let bytes = compile(profile)?;
    let stored = match trusted {
        true => store(&dir, &path, &bytes),
        // A fresh directory is ours; anything else already there is left alone.
        false => create_dir(&dir).and_then(|()| store(&dir, &path, &bytes)),
    };
    if let Err(e) = stored {
        tracing::debug!("seccomp cache: {e}");
    }
    Ok(bytes)
}

/// Only a real directory of ours that nobody else can write is read from: a program loaded
/// from it goes straight into the container's process.
fn trusted_dir(dir: &Path) -> bool {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    std::fs::symlink_metadata(dir).is_ok_and(|m| {
        m.is_dir()
            && m.uid() == nix::unistd::geteuid().as_raw()
            && m.permissions().mode() & 0o022 == 0
    })
}

fn create_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => Ok(()),
        Err(e) => Err(Error::Other(format!("creating {}: {e}", dir.display()))),
    }
}

fn cache_key(profile: &LinuxSeccomp) -> Option<String> {
    use sha2::Digest;
    use std::os::unix::fs::MetadataExt;
    let exe = std::fs::metadata("/proc/self/exe").ok()?;
    if exe.nlink() == 0 {
        return None;
    }
    let mut hash = sha2::Sha256::new();
    hash.update(
        format!(
            "nestbox {} {} {} {} {}.{}\n",
            env!("CARGO_PKG_VERSION"),
            exe.dev(),
            exe.ino(),
            exe.size(),
            exe.mtime(),
            exe.mtime_nsec()
        )
        .as_bytes(),
    );
    hash.update(serde_json::to_vec(profile).ok()?);
    Some(hash.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Into a trusted cache directory (it exists): a miss that finds it full clears it first.
fn store(dir: &Path, path: &Path, bytes: &[u8]) -> Result<()> {
    let entries = std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0);
    if entries >= CACHE_MAX {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    crate::state::write_atomic(path, bytes)
}

/// The program sent by [`compile`].
pub fn decode(bytes: &[u8]) -> Result<nestbox_seccomp::Program> {
    nestbox_seccomp::Program::from_bytes(bytes)
        .ok_or_else(|| Error::Other("seccomp: malformed program on the sync channel".into()))
}

/// Load the compiled profile into the calling process: the last step before execve, or
/// right before the user switch when no_new_privs is off (loading then needs
/// CAP_SYS_ADMIN). One seccomp(2) call, no libseccomp. A notify fd is handed to the
/// listener, whose connection is closed after.
pub fn load(
    program: &nestbox_seccomp::Program,
    profile: &LinuxSeccomp,
    listener: Option<Listener>,
) -> Result<()> {
    let Some(notify) = program
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
    nestbox_seccomp::send_on_connection(
        &listener.connection,
        &listener.path,
        notify.as_fd(),
        pid,
        profile.listener_metadata().as_deref(),
        &state,
    )
    .map_err(|e| Error::Other(format!("seccomp: {e}")))
}

/// Take the parent's `Seccomp` message (for a spec with a seccomp profile).
pub fn recv_program(channel: &crate::channel::Channel) -> Result<nestbox_seccomp::Program> {
    match channel.recv()? {
        crate::channel::Message::Seccomp(bytes) => decode(&bytes),
        other => Err(Error::Other(format!(
            "sync channel: expected the seccomp program, got {other:?}"
        ))),
    }
}
