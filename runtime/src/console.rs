//! `--console-socket`: the container gets a pty allocated inside it; the master goes to the
//! caller over the unix socket (one message, payload = pty name, one SCM_RIGHTS fd), the slave
//! becomes the process's stdio, controlling terminal and /dev/console.

use std::io::IoSlice;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

use nix::fcntl::{open, OFlag};
use nix::mount::{mount, MsFlags};
use nix::pty::{grantpt, posix_openpt, ptsname_r, unlockpt};
use nix::sys::socket::{
    connect, sendmsg, socket, AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType, UnixAddr,
};
use nix::sys::stat::Mode;
use nix::unistd::dup2;

use crate::error::{shown, Context, Result};

/// Connect to the caller's console socket (done by the runtime before the container starts,
/// while the host path is still visible).
pub fn connect_socket(path: &Path) -> Result<OwnedFd> {
    let fd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .ctx(|| "console socket".into())?;
    let addr = UnixAddr::new(path).ctx(|| format!("console socket {}", shown(path)))?;
    connect(fd.as_raw_fd(), &addr)
        .ctx(|| format!("connecting to console socket {}", shown(path)))?;
    Ok(fd)
}

/// Inside the container (after pivot_root and setsid): allocate the pty and hand it over.
pub fn setup(socket: OwnedFd, size: Option<(u16, u16)>) -> Result<()> {
    let (name, slave) = open_and_send(socket, size)?;
    let console = Path::new("/dev/console");
    if std::fs::symlink_metadata(console).is_err() {
        let _ = std::fs::File::create(console);
    }
    mount(
        Some(name.as_str()),
        console,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .ctx(|| "bind mounting the pty on /dev/console".into())?;
    make_stdio(slave)
}

/// For `exec --tty`: a pty for the new process only (/dev/console stays init's).
pub fn setup_exec(socket: OwnedFd, size: Option<(u16, u16)>) -> Result<()> {
    let (_, slave) = open_and_send(socket, size)?;
    make_stdio(slave)
}

/// Allocate a pty and send the master over `socket`; returns (pty name, slave fd).
fn open_and_send(socket: OwnedFd, size: Option<(u16, u16)>) -> Result<(String, i32)> {
    let master = posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
        .ctx(|| "opening /dev/ptmx".into())?;
    grantpt(&master).ctx(|| "grantpt".into())?;
    unlockpt(&master).ctx(|| "unlockpt".into())?;
    let name = ptsname_r(&master).ctx(|| "ptsname".into())?;
    if let Some((rows, cols)) = size {
        let ws = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads one winsize struct from a valid pointer.
        unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    }
    let fds = [master.as_raw_fd()];
    sendmsg::<UnixAddr>(
        socket.as_raw_fd(),
        &[IoSlice::new(name.as_bytes())],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .ctx(|| "sending the pty master over the console socket".into())?;
    drop(socket);
    let slave = open(
        name.as_str(),
        OFlag::O_RDWR | OFlag::O_NOCTTY,
        Mode::empty(),
    )
    .ctx(|| format!("opening {name}"))?;
    drop(master);
    Ok((name, slave))
}

/// The pty slave becomes stdio and the controlling terminal (we are a session leader).
fn make_stdio(slave: i32) -> Result<()> {
    for target in 0..=2 {
        dup2(slave, target).ctx(|| format!("dup2 pty to fd {target}"))?;
    }
    if slave > 2 {
        let _ = nix::unistd::close(slave);
    }
    // SAFETY: TIOCSCTTY on fd 0 (now the pty slave) with arg 0.
    if unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) } < 0 {
        return Err(std::io::Error::last_os_error())
            .ctx(|| "setting the controlling terminal".into());
    }
    Ok(())
}
