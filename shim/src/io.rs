//! A process's stdio as containerd names it: FIFO paths (the `ctr` and CRI case), `file://`
//! and `binary://` URIs, or a terminal through the runtime's console socket. The process
//! itself always gets plain pipes (or the pty slave); shim threads copy between those and
//! containerd's ends, so a containerd restart never leaves the process writing into a
//! closed FIFO: the shim keeps its own reader on each output FIFO, as the Go shim does.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio as CmdStdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use crate::error::{Error, Result};

/// What containerd asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stdio {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

/// One output destination of the shim's copy threads.
enum Sink {
    /// containerd's FIFO, with a reader of our own kept open beside the writer.
    Fifo {
        writer: File,
        _reader: File,
    },
    File(File),
}

impl Sink {
    fn writer(&mut self) -> &mut File {
        match self {
            Sink::Fifo { writer, .. } => writer,
            Sink::File(f) => f,
        }
    }
}

/// Counts the output copy threads still running, so Delete can wait for the output to drain.
#[derive(Default)]
struct Copiers {
    running: Mutex<usize>,
    done: Condvar,
}

impl Copiers {
    fn spawn(self: &Arc<Self>, name: &str, f: impl FnOnce() + Send + 'static) -> Result<()> {
        *lock(&self.running) += 1;
        let me = Arc::clone(self);
        std::thread::Builder::new()
            .name(name.to_owned())
            .stack_size(64 * 1024)
            .spawn(move || {
                f();
                let mut n = lock(&me.running);
                *n -= 1;
                me.done.notify_all();
            })
            .map(|_| ())
            .map_err(|e| {
                *lock(&self.running) -= 1;
                Error::io("starting a stdio copy thread", e)
            })
    }

    fn wait(&self, timeout: Duration) {
        let n = lock(&self.running);
        let _ = self.done.wait_timeout_while(n, timeout, |n| *n > 0);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The ends the runtime command hands to the process; ours are closed once it returned.
#[derive(Default)]
struct ChildEnds {
    stdin: Option<OwnedFd>,
    stdout: Option<OwnedFd>,
    stderr: Option<OwnedFd>,
}

/// A process's stdio plumbing, from before the runtime call until the process is deleted.
pub struct ProcessIo {
    stdio: Stdio,
    child: Mutex<ChildEnds>,
    /// Terminal: the console socket the runtime sends the pty master to.
    console: Option<(UnixListener, PathBuf)>,
    /// The pty master (terminal), for resizing.
    master: Mutex<Option<File>>,
    /// Where stdin data goes (the pipe to the process, or the pty master); None once closed.
    stdin_sink: Arc<Mutex<Option<File>>>,
    /// Set once the stdin copy thread has opened containerd's FIFO.
    stdin_opened: Arc<Mutex<bool>>,
    copiers: Arc<Copiers>,
}

static CONSOLE_SEQ: AtomicU32 = AtomicU32::new(0);

fn pipe() -> Result<(File, File)> {
    let (r, w) = std::io::pipe().map_err(|e| Error::io("creating a stdio pipe", e))?;
    Ok((File::from(OwnedFd::from(r)), File::from(OwnedFd::from(w))))
}

/// Open an output FIFO without blocking: a reader of our own first, then the writer.
fn open_fifo_out(path: &str) -> Result<Sink> {
    let reader = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| Error::io(format!("opening stdio FIFO {path}"), e))?;
    let writer = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| Error::io(format!("opening stdio FIFO {path}"), e))?;
    Ok(Sink::Fifo {
        writer,
        _reader: reader,
    })
}

/// `scheme://rest` split at the scheme, if the string has one.
fn scheme(uri: &str) -> Option<(&str, &str)> {
    let (s, rest) = uri.split_once("://")?;
    (!s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '+')).then_some((s, rest))
}

/// Undo %XX escapes (and `+` in queries) of a URI component.
fn unescape(s: &str, plus_is_space: bool) -> String {
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                    out.push(h << 4 | l);
                    i += 3;
                    continue;
                }
                out.push(b'%');
            }
            b'+' if plus_is_space => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A `file://` or `binary://` URI: its path and query arguments (key, value pairs in order).
fn parse_uri(rest: &str) -> (String, Vec<(String, String)>) {
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    let args = query
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (unescape(k, true), unescape(v, true))
        })
        .collect();
    (unescape(path, false), args)
}

fn copy_to(name: &str, copiers: &Arc<Copiers>, mut from: File, mut to: Sink) -> Result<()> {
    copiers.spawn(name, move || {
        let mut buf = [0u8; 32 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if to.writer().write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                // EIO: the pty slave side is closed (the process and its children exited).
                Err(_) => break,
            }
        }
    })
}

impl ProcessIo {
    /// Open containerd's ends and make the process's; copying starts here for outputs (it
    /// ends when the process side closes) and for stdin (once containerd opens its FIFO).
    pub fn prepare(
        stdio: &Stdio,
        uid: u32,
        gid: u32,
        id: &str,
        namespace: &str,
    ) -> Result<ProcessIo> {
        let mut io = ProcessIo {
            stdio: stdio.clone(),
            child: Mutex::new(ChildEnds::default()),
            console: None,
            master: Mutex::new(None),
            stdin_sink: Arc::new(Mutex::new(None)),
            stdin_opened: Arc::new(Mutex::new(false)),
            copiers: Arc::new(Copiers::default()),
        };
        if stdio.terminal {
            if stdio.stdout.starts_with("binary://") {
                return Err(Error::InvalidArgument(
                    "binary:// logging is not supported with a terminal".to_owned(),
                ));
            }
            let path = std::env::temp_dir().join(format!(
                "nestbox-pty-{}-{}.sock",
                std::process::id(),
                CONSOLE_SEQ.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = std::fs::remove_file(&path);
            let listener = UnixListener::bind(&path)
                .map_err(|e| Error::io(format!("console socket {}", path.display()), e))?;
            io.console = Some((listener, path));
            return Ok(io);
        }
        let chown = |f: &File| {
            if uid != 0 || gid != 0 {
                // SAFETY: fchown on a valid fd; the result is checked.
                if unsafe { libc::fchown(f.as_raw_fd(), uid, gid) } != 0 {
                    return Err(Error::io(
                        "chown of a stdio pipe (io_uid/io_gid)",
                        std::io::Error::last_os_error(),
                    ));
                }
            }
            Ok(())
        };
        let mut ends = ChildEnds::default();
        if !stdio.stdin.is_empty() {
            let (r, w) = pipe()?;
            chown(&r)?;
            ends.stdin = Some(r.into());
            *lock(&io.stdin_sink) = Some(w);
            io.copy_stdin()?;
        }
        if let Some(("binary", rest)) = scheme(&stdio.stdout) {
            let (out_r, out_w) = pipe()?;
            let (err_r, err_w) = pipe()?;
            chown(&out_w)?;
            chown(&err_w)?;
            start_logger(rest, out_r, err_r, id, namespace)?;
            ends.stdout = Some(out_w.into());
            ends.stderr = Some(err_w.into());
        } else {
            let mut file_sink = None;
            for (which, target) in [(1, &stdio.stdout), (2, &stdio.stderr)] {
                if target.is_empty() {
                    continue;
                }
                let sink = match scheme(target) {
                    Some(("file", rest)) => {
                        // stdout and stderr may name one file: open it once.
                        let (path, _) = parse_uri(rest);
                        let f = match &file_sink {
                            Some((p, f)) if *p == path => File::try_clone(f)
                                .map_err(|e| Error::io(format!("log file {path}"), e))?,
                            _ => {
                                if let Some(dir) = Path::new(&path).parent() {
                                    let _ = std::fs::create_dir_all(dir);
                                }
                                let f = OpenOptions::new()
                                    .append(true)
                                    .create(true)
                                    .mode(0o640)
                                    .open(&path)
                                    .map_err(|e| Error::io(format!("log file {path}"), e))?;
                                file_sink = Some((path, f.try_clone().map_err(|e| Error::io("dup", e))?));
                                f
                            }
                        };
                        Sink::File(f)
                    }
                    Some((other, _)) if other != "fifo" => {
                        return Err(Error::InvalidArgument(format!(
                            "unsupported stdio URI scheme {other:?} in {target:?} (FIFO paths, file:// and binary:// are)"
                        )))
                    }
                    _ => open_fifo_out(target.strip_prefix("fifo://").unwrap_or(target))?,
                };
                let (r, w) = pipe()?;
                chown(&w)?;
                if which == 1 {
                    ends.stdout = Some(w.into());
                } else {
                    ends.stderr = Some(w.into());
                }
                copy_to(
                    if which == 1 { "stdout" } else { "stderr" },
                    &io.copiers,
                    r,
                    sink,
                )?;
            }
        }
        *lock(&io.child) = ends;
        Ok(io)
    }

    /// Copy containerd's stdin FIFO into `stdin_sink`, opening the FIFO in the thread (the
    /// open waits for containerd's writer).
    fn copy_stdin(&self) -> Result<()> {
        let path = self.stdio.stdin.clone();
        let sink = Arc::clone(&self.stdin_sink);
        let opened = Arc::clone(&self.stdin_opened);
        // Not counted with the output copiers: containerd may hold stdin open for ever.
        let thread = std::thread::Builder::new()
            .name("stdin".to_owned())
            .stack_size(64 * 1024);
        let spawned = thread.spawn(move || {
            let Ok(mut fifo) = File::open(&path) else {
                return;
            };
            *lock(&opened) = true;
            let mut buf = [0u8; 32 * 1024];
            loop {
                let n = match fifo.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(_) => break,
                };
                let mut guard = lock(&sink);
                let Some(w) = guard.as_mut() else { return };
                if w.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            // EOF from containerd: the process sees EOF on its stdin pipe (a pty stays open
            // through the other master fds).
            let _ = lock(&sink).take();
        });
        spawned
            .map(|_| ())
            .map_err(|e| Error::io("starting the stdin copy thread", e))
    }

    /// The console socket to pass to the runtime (terminal only).
    pub fn console_socket(&self) -> Option<&Path> {
        self.console.as_ref().map(|(_, p)| p.as_path())
    }

    /// After the runtime returned: close our copies of the process's ends; for a terminal,
    /// take the pty master the runtime sent and start copying through it.
    pub fn started(&self) -> Result<()> {
        *lock(&self.child) = ChildEnds::default();
        let Some((listener, path)) = &self.console else {
            return Ok(());
        };
        let _ = std::fs::remove_file(path);
        listener
            .set_nonblocking(true)
            .map_err(|e| Error::io("console socket", e))?;
        let (conn, _) = listener
            .accept()
            .map_err(|e| Error::io("the runtime sent no pty master over the console socket", e))?;
        conn.set_nonblocking(false)
            .map_err(|e| Error::io("console socket", e))?;
        let master = receive_fd(&conn)?;
        let master = File::from(master);
        let dup = |f: &File| {
            f.try_clone()
                .map_err(|e| Error::io("dup of the pty master", e))
        };
        if !self.stdio.stdin.is_empty() {
            *lock(&self.stdin_sink) = Some(dup(&master)?);
            self.copy_stdin()?;
        }
        if !self.stdio.stdout.is_empty() {
            let sink = match scheme(&self.stdio.stdout) {
                Some(("file", rest)) => {
                    let (p, _) = parse_uri(rest);
                    Sink::File(
                        OpenOptions::new()
                            .append(true)
                            .create(true)
                            .mode(0o640)
                            .open(&p)
                            .map_err(|e| Error::io(format!("log file {p}"), e))?,
                    )
                }
                _ => open_fifo_out(
                    self.stdio
                        .stdout
                        .strip_prefix("fifo://")
                        .unwrap_or(&self.stdio.stdout),
                )?,
            };
            copy_to("console", &self.copiers, dup(&master)?, sink)?;
        }
        *lock(&self.master) = Some(master);
        Ok(())
    }

    /// Close the process's stdin (CloseIO): EOF for a pipe; a terminal keeps its pty.
    pub fn close_stdin(&self) {
        if !self.stdio.terminal {
            let _ = lock(&self.stdin_sink).take();
        }
    }

    pub fn resize(&self, width: u32, height: u32) -> Result<()> {
        let guard = lock(&self.master);
        let Some(master) = guard.as_ref() else {
            return Ok(());
        };
        let ws = libc::winsize {
            ws_row: height as u16,
            ws_col: width as u16,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ on the pty master fd with a valid winsize.
        if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) } != 0 {
            return Err(Error::io(
                "resizing the pty",
                std::io::Error::last_os_error(),
            ));
        }
        Ok(())
    }

    /// Wait (bounded) for the output copies to drain, as the Go shim does before delete.
    pub fn wait_output(&self, timeout: Duration) {
        self.copiers.wait(timeout);
    }

    pub fn stdio(&self) -> &Stdio {
        &self.stdio
    }
}

impl Drop for ProcessIo {
    fn drop(&mut self) {
        let _ = lock(&self.stdin_sink).take();
        let _ = lock(&self.master).take();
        if let Some((_, path)) = &self.console {
            let _ = std::fs::remove_file(path);
        }
        // A stdin thread still waiting in open() for containerd's writer: open the writer side
        // ourselves so it wakes, sees EOF and ends.
        if !self.stdio.stdin.is_empty() && !*lock(&self.stdin_opened) {
            let _ = OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&self.stdio.stdin);
        }
    }
}

impl runc::io::Io for ProcessIo {
    fn set(&self, cmd: &mut Command) -> std::io::Result<()> {
        let ends = lock(&self.child);
        let dup = |fd: &Option<OwnedFd>| -> std::io::Result<CmdStdio> {
            Ok(match fd {
                Some(fd) => CmdStdio::from(fd.try_clone()?),
                None => CmdStdio::null(),
            })
        };
        cmd.stdin(dup(&ends.stdin)?)
            .stdout(dup(&ends.stdout)?)
            .stderr(dup(&ends.stderr)?);
        Ok(())
    }

    fn close_after_start(&self) {}
}

impl std::fmt::Debug for ProcessIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessIo")
            .field("stdio", &self.stdio)
            .finish()
    }
}

/// Receive the one fd of a console-socket message (payload: the pty name).
fn receive_fd(conn: &std::os::unix::net::UnixStream) -> Result<OwnedFd> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    let mut buf = [0u8; 4096];
    let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let msg = recvmsg::<()>(
        conn.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(|e| Error::io("receiving the pty master", e.into()))?;
    let fd = msg
        .cmsgs()
        .map_err(|e| Error::io("receiving the pty master", e.into()))?
        .find_map(|c| match c {
            ControlMessageOwned::ScmRights(fds) => fds.first().copied(),
            _ => None,
        })
        .ok_or_else(|| Error::Other("the console socket message carried no fd".to_owned()))?;
    // SAFETY: SCM_RIGHTS installed this fd in our table; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Start a `binary://` logging process as containerd's shims do: fd 3 the process's stdout,
/// fd 4 its stderr, fd 5 a pipe the logger closes once it is ready; CONTAINER_ID and
/// CONTAINER_NAMESPACE in its environment, the URI's query as arguments.
fn start_logger(rest: &str, stdout: File, stderr: File, id: &str, namespace: &str) -> Result<()> {
    let (path, args) = parse_uri(rest);
    let (mut ready_r, ready_w) = pipe()?;
    let fds = [stdout.as_raw_fd(), stderr.as_raw_fd(), ready_w.as_raw_fd()];
    let mut cmd = Command::new(&path);
    for (k, v) in &args {
        cmd.arg(k);
        if !v.is_empty() {
            cmd.arg(v);
        }
    }
    cmd.env("CONTAINER_ID", id)
        .env("CONTAINER_NAMESPACE", namespace)
        .stdin(CmdStdio::null())
        .stdout(CmdStdio::null())
        .stderr(CmdStdio::null());
    // SAFETY: only dup2 (async-signal-safe) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            for (i, fd) in fds.iter().enumerate() {
                if libc::dup2(*fd, 3 + i as i32) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    cmd.spawn()
        .map_err(|e| Error::io(format!("starting logging binary {path}"), e))?;
    drop(ready_w);
    drop(stdout);
    drop(stderr);
    // The logger is ready when it closes (or writes to) fd 5; Go's shims wait the same way.
    let mut b = [0u8; 1];
    loop {
        match ready_r.read(&mut b) {
            // 0: closed, 1: a byte written; either says ready.
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io(format!("waiting for logging binary {path}"), e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_split_into_path_and_arguments() {
        assert_eq!(
            scheme("binary:///usr/bin/log?a=1"),
            Some(("binary", "/usr/bin/log?a=1"))
        );
        assert_eq!(scheme("/run/fifo/stdout"), None);
        let (p, args) = parse_uri("/var/log/my%20app.log?id=c%2F1&flag&x=a+b");
        assert_eq!(p, "/var/log/my app.log");
        assert_eq!(
            args,
            vec![
                ("id".to_owned(), "c/1".to_owned()),
                ("flag".to_owned(), String::new()),
                ("x".to_owned(), "a b".to_owned())
            ]
        );
        assert_eq!(unescape("100%", false), "100%");
        assert_eq!(unescape("%zz", false), "%zz");
    }
}
