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
    seal(fd.as_raw_fd())?;
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

/// Seal the copy against writes, shrinking and growing, and then against new seals.
///
/// F_SEAL_WRITE waits for every page of the copy to drop any extra reference the kernel
/// holds on it and gives up with EBUSY when one stays too long: rare, but it failed a
/// `create` in a CI run (one in 200 cycles). F_SEAL_FUTURE_WRITE (Linux 5.1) refuses
/// every later write(2) and writable mapping without that wait, which is all the
/// protection needs: the copy was written through an fd that is closed now and was never
/// mapped. So it goes first, and F_SEAL_WRITE is added when the kernel grants it.
fn seal(fd: std::os::fd::RawFd) -> Result<()> {
    let add = |seals: libc::c_int| {
        // SAFETY: fcntl F_ADD_SEALS on a memfd the caller owns, integer argument.
        if unsafe { libc::fcntl(fd, libc::F_ADD_SEALS, seals) } < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(())
        }
    };
    let ctx = || "sealing the memfd".to_string();
    let base = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW;
    match add(base | libc::F_SEAL_FUTURE_WRITE) {
        Ok(()) => match add(libc::F_SEAL_WRITE) {
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {}
            other => other.ctx(ctx)?,
        },
        // A kernel without F_SEAL_FUTURE_WRITE: the write seal itself.
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            add(base | libc::F_SEAL_WRITE).ctx(ctx)?
        }
        Err(e) => return Err(e).ctx(ctx),
    }
    add(libc::F_SEAL_SEAL).ctx(ctx)
}
