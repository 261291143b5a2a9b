//! CVE-2019-5736: a container process could open the runtime's binary through
//! /proc/<pid>/exe and overwrite it. Commands that start container processes therefore re-exec
//! from a sealed view of the binary: nothing writable on disk is reachable through exe.
//!
//! The sealed view is, as in runc 1.2, a detached read-only bind mount of the binary:
//! `open_tree(OPEN_TREE_CLONE)` of /proc/self/exe (a mount of that one file, attached
//! nowhere), made read-only with `mount_setattr(MOUNT_ATTR_RDONLY)`, and exec'd through its
//! fd. A write through /proc/<pid>/exe then fails with EROFS, no container can reach the
//! mount to make it writable again (it is in no mount namespace), and the binary's page cache
//! is shared: nothing is copied. Without those syscalls (Linux < 5.12, or no CAP_SYS_ADMIN
//! over our mount namespace) the binary is copied into a sealed memfd instead.

use std::ffi::CString;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use nix::sys::memfd::{memfd_create, MemFdCreateFlag};

use crate::error::{Context, Error, Result};

/// Set in the re-executed copy so it happens once.
pub const SEALED_ENV: &str = "_NESTBOX_SEALED_EXE";

/// Test switch: `memfd` skips the read-only bind mount, so the fallback is exercised on
/// kernels that have open_tree (tests/tests/runtime_security.rs).
pub const MODE_ENV: &str = "_NESTBOX_SEALED_EXE_MODE";

/// Re-exec from a sealed view of /proc/self/exe unless this process already is one.
/// Returns only when already sealed; otherwise execs (or fails).
pub fn ensure_sealed_exe() -> Result<()> {
    if std::env::var_os(SEALED_ENV).is_some() {
        std::env::remove_var(SEALED_ENV);
        std::env::remove_var(MODE_ENV);
        return Ok(());
    }
    let force_memfd = std::env::var_os(MODE_ENV).is_some_and(|m| m == "memfd");
    let fd = match force_memfd {
        true => None,
        false => read_only_bind().ok(),
    };
    let fd = match fd {
        Some(fd) => fd,
        None => memfd_copy()?,
    };
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
    Err(err).ctx(|| "re-executing from the sealed binary".into())
}

const OPEN_TREE_CLONE: libc::c_uint = 1;
const MOUNT_ATTR_RDONLY: u64 = 0x1;

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// A detached, read-only bind mount of /proc/self/exe, as an fd of the binary.
fn read_only_bind() -> std::io::Result<OwnedFd> {
    // SAFETY: open_tree reads a NUL-terminated path; the returned fd is checked below.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            c"/proc/self/exe".as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: open_tree returned a fresh fd that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_RDONLY,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: mount_setattr reads `attr` (its size passed) and an empty NUL-terminated path.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(fd)
}

/// The fallback: a sealed in-memory copy of the binary.
fn memfd_copy() -> Result<OwnedFd> {
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
    Ok(fd)
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
