//! `--console-socket`: the container gets a pty allocated inside it; the master goes to the
//! caller over the unix socket (one message, payload = pty name, one SCM_RIGHTS fd), the slave
//! becomes the process's stdio, controlling terminal and /dev/console.

use std::io::IoSlice;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

use nix::fcntl::OFlag;
use nix::mount::{mount, MsFlags};
use nix::pty::{grantpt, posix_openpt, ptsname_r, unlockpt};
use nix::sys::socket::{
    connect, sendmsg, socket, AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType, UnixAddr,
};
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
    let (_, slave) = open_and_send(socket, size)?;
    // The rootfs's /dev may hold anything at /dev/console: a symlink is replaced, never
    // followed (CVE-2025-52565), and the pty is bound from our fd, not from its name.
    let console = Path::new("/dev/console");
    match std::fs::symlink_metadata(console) {
        Ok(m) if m.file_type().is_symlink() => {
            std::fs::remove_file(console).ctx(|| "removing the /dev/console symlink".into())?;
            std::fs::File::create(console).ctx(|| "creating /dev/console".into())?;
        }
        Ok(_) => {}
        Err(_) => {
            std::fs::File::create(console).ctx(|| "creating /dev/console".into())?;
        }
    }
    mount(
        Some(format!("/proc/self/fd/{slave}").as_str()),
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
    // The slave straight from the master: a path lookup of /dev/pts/N in the container could
    // be sent elsewhere by a symlink (CVE-2025-52565).
    // SAFETY: TIOCGPTPEER takes open flags as its integer argument and returns a new fd.
    let slave = unsafe {
        libc::ioctl(
            master.as_raw_fd(),
            libc::TIOCGPTPEER,
            libc::O_RDWR | libc::O_NOCTTY,
        )
    };
    if slave < 0 {
        return Err(std::io::Error::last_os_error())
            .ctx(|| format!("opening {name} (TIOCGPTPEER)"));
    }
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

/// Receive the pty master sent over an accepted console-socket connection.
pub fn receive_master(conn: &OwnedFd) -> Result<OwnedFd> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned};
    use std::os::fd::FromRawFd;
    let mut buf = [0u8; 4096];
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let msg = recvmsg::<()>(
        conn.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::empty(),
    )
    .ctx(|| "receiving the pty master".into())?;
    for c in msg.cmsgs().ctx(|| "reading the control message".into())? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            if let Some(fd) = fds.first() {
                // SAFETY: SCM_RIGHTS installed this fd in our table; we own it now.
                return Ok(unsafe { OwnedFd::from_raw_fd(*fd) });
            }
        }
    }
    Err(crate::error::Error::Other(
        "console socket: no fd received".into(),
    ))
}

/// `run` with a terminal and no console socket (runc's foreground mode): relay between our
/// stdio and the container's pty, forward signals (SIGWINCH resizes the pty), and return the
/// exit code of `pid` (128+signal when killed).
pub fn relay(
    master: OwnedFd,
    pid: nix::unistd::Pid,
    forward: &[nix::sys::signal::Signal],
) -> Result<i32> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use nix::sys::signal::{kill, SigSet, Signal};
    use nix::sys::signalfd::{SfdFlags, SignalFd};
    use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    use std::os::fd::{AsFd, BorrowedFd};

    let mut set = SigSet::empty();
    for s in forward {
        set.add(*s);
    }
    set.add(Signal::SIGCHLD);
    set.add(Signal::SIGWINCH);
    set.thread_block().ctx(|| "blocking signals".into())?;
    let sfd = SignalFd::with_flags(&set, SfdFlags::SFD_CLOEXEC).ctx(|| "signalfd".into())?;

    // SAFETY: fds 0 and 1 stay open for the whole life of this process.
    let stdin = unsafe { BorrowedFd::borrow_raw(0) };
    let saved = tcgetattr(stdin).ok();
    if let Some(t) = &saved {
        let mut raw = t.clone();
        cfmakeraw(&mut raw);
        let _ = tcsetattr(stdin, SetArg::TCSANOW, &raw);
    }
    let resize = || {
        let mut ws = libc::winsize {
            ws_row: 0,
            ws_col: 0,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCGWINSZ/TIOCSWINSZ read/write one winsize struct at a valid pointer.
        unsafe {
            if libc::ioctl(0, libc::TIOCGWINSZ, &mut ws) == 0 {
                libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws);
            }
        }
    };
    resize();

    let mut stdin_open = true;
    let mut master_open = true;
    let mut buf = [0u8; 8192];
    let code = loop {
        let mut fds = vec![
            PollFd::new(sfd.as_fd(), PollFlags::POLLIN),
            PollFd::new(master.as_fd(), PollFlags::POLLIN),
        ];
        if stdin_open {
            fds.push(PollFd::new(stdin, PollFlags::POLLIN));
        }
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e).ctx(|| "poll".into()),
        }
        let ready = |i: usize| {
            fds.get(i)
                .and_then(|f| f.revents())
                .is_some_and(|r| !r.is_empty())
        };
        let (sig_ready, master_ready, stdin_ready) = (ready(0), ready(1) && master_open, ready(2));
        drop(fds);
        if master_ready {
            match nix::unistd::read(master.as_raw_fd(), &mut buf) {
                Ok(0) | Err(nix::errno::Errno::EIO) => master_open = false,
                Ok(n) => {
                    let _ = nix::unistd::write(std::io::stdout(), &buf[..n]);
                }
                Err(_) => {}
            }
        }
        if stdin_ready {
            match nix::unistd::read(0, &mut buf) {
                Ok(0) | Err(_) => stdin_open = false,
                Ok(n) => {
                    let _ = nix::unistd::write(&master, &buf[..n]);
                }
            }
        }
        if sig_ready {
            if let Ok(Some(info)) = sfd.read_signal() {
                match Signal::try_from(info.ssi_signo as i32) {
                    Ok(Signal::SIGCHLD) => {}
                    Ok(Signal::SIGWINCH) => resize(),
                    Ok(sig) => {
                        let _ = kill(pid, sig);
                    }
                    Err(_) => {}
                }
            }
        }
        match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, c)) => break c,
            Ok(WaitStatus::Signaled(_, s, _)) => break 128 + s as i32,
            Err(nix::errno::Errno::ECHILD) => break 0,
            _ => {}
        }
        if !master_open && !stdin_open {
            // Nothing left to relay: just wait for the exit.
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    };
    // Drain what the process wrote last, without blocking on a slave still held elsewhere.
    let _ = nix::fcntl::fcntl(
        master.as_raw_fd(),
        nix::fcntl::FcntlArg::F_SETFL(OFlag::O_NONBLOCK),
    );
    while master_open {
        match nix::unistd::read(master.as_raw_fd(), &mut buf) {
            Ok(n) if n > 0 => {
                let _ = nix::unistd::write(std::io::stdout(), &buf[..n]);
            }
            _ => master_open = false,
        }
    }
    if let Some(t) = &saved {
        let _ = tcsetattr(stdin, SetArg::TCSANOW, t);
    }
    Ok(code)
}
