//! CVE-2019-5736: a container process could open the runtime's binary through
//! /proc/<pid>/exe and overwrite it. Commands that start container processes therefore re-exec
//! from a sealed in-memory copy of the binary: nothing on disk is reachable through exe.

use std::ffi::CString;
use std::io::Write;
use std::os::fd::AsRawFd;

use nix::sys::memfd::{memfd_create, MemFdCreateFlag};

use crate::error::{Context, Error, Result};

/// Set in the re-executed copy so it happens once.
pub const SEALED_ENV: &str = "_NESTBOX_SEALED_EXE";

/// Re-exec from a sealed memfd copy of /proc/self/exe unless this process already is one.
/// Returns only when already sealed; otherwise execs (or fails).
pub fn ensure_sealed_exe() -> Result<()> {
    if std::env::var_os(SEALED_ENV).is_some() {
        std::env::remove_var(SEALED_ENV);
        return Ok(());
    }
    let fd = memfd_create(
        c"nestbox",
        MemFdCreateFlag::MFD_CLOEXEC | MemFdCreateFlag::MFD_ALLOW_SEALING,
    )
    .ctx(|| "memfd_create".into())?;
    let mut exe = std::fs::File::open("/proc/self/exe").ctx(|| "open /proc/self/exe".into())?;
    let mut copy = std::fs::File::from(fd.try_clone().ctx(|| "dup of the memfd".into())?);
    std::io::copy(&mut exe, &mut copy).ctx(|| "copying the binary into the memfd".into())?;
    copy.flush().ctx(|| "memfd flush".into())?;
    drop(copy);
    let seals = libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;
    // SAFETY: fcntl F_ADD_SEALS on a memfd we own, integer argument.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals) } < 0 {
        return Err(std::io::Error::last_os_error()).ctx(|| "sealing the memfd".into());
    }
    let args: Vec<CString> = std::env::args_os()
        .map(|a| CString::new(std::os::unix::ffi::OsStringExt::into_vec(a)))
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| Error::Other(e.to_string()))?;
    let mut env: Vec<CString> = std::env::vars_os()
        .filter_map(|(k, v)| {
            let mut kv = std::os::unix::ffi::OsStringExt::into_vec(k);
            kv.push(b'=');
            kv.extend(std::os::unix::ffi::OsStringExt::into_vec(v));
            CString::new(kv).ok()
        })
        .collect();
    env.push(CString::new(format!("{SEALED_ENV}=1")).map_err(|e| Error::Other(e.to_string()))?);
    let err = nix::unistd::fexecve(fd.as_raw_fd(), &args, &env).unwrap_err();
    Err(err).ctx(|| "re-executing from the sealed memfd".into())
}
