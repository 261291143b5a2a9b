//! Detached helpers: a forked child does a kernel operation whose *completion* is
//! slow for reasons that do not concern the caller (RCU grace periods on socket close or
//! device teardown) and reports the operation's answer through a pipe as soon as it has
//! it. The child gives up stdio first (a runtime reading our stdout must not wait for
//! it) and dies with us until it has answered (PDEATHSIG), so an interrupted plugin
//! never leaves a change to happen later; after answering it finishes on its own.

use std::io::{self, Read};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use nix::unistd::{fork, ForkResult};

pub struct Detached {
    answer: std::fs::File,
}

/// Fork; the child runs `work`, writes its outcome, then runs `after` and exits.
/// Falls back to running `work` inline when fork fails.
pub fn spawn(work: impl FnOnce() -> io::Result<()>, after: impl FnOnce()) -> io::Result<Detached> {
    let (r, w): (OwnedFd, OwnedFd) = nix::unistd::pipe().map_err(io::Error::from)?;
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the plugins are single-threaded (see net::netns), so the child may run
    // arbitrary code after fork; it touches only its own fds and memory, then _exits.
    match unsafe { fork() } {
        Err(_) => {
            write_code(&w, code_of(work()));
            drop(w);
            Ok(Detached {
                answer: std::fs::File::from(r),
            })
        }
        Ok(ForkResult::Child) => {
            drop(r);
            // SAFETY: plain syscalls on this process's own fds.
            unsafe {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                if libc::getppid() != parent {
                    libc::_exit(1);
                }
                let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
                if null >= 0 {
                    libc::dup2(null, 0);
                    libc::dup2(null, 1);
                    libc::dup2(null, 2);
                }
            }
            let code = code_of(work());
            // SAFETY: as above. Once the answer is out, the child may outlive us.
            unsafe {
                libc::prctl(libc::PR_SET_PDEATHSIG, 0);
            }
            write_code(&w, code);
            drop(w);
            after();
            // SAFETY: leave the forked child without running the parent's destructors.
            unsafe { libc::_exit(0) }
        }
        Ok(ForkResult::Parent { .. }) => {
            drop(w);
            Ok(Detached {
                answer: std::fs::File::from(r),
            })
        }
    }
}

fn code_of(r: io::Result<()>) -> i32 {
    match r {
        Ok(()) => 0,
        Err(e) => e.raw_os_error().unwrap_or(libc::EIO),
    }
}

fn write_code(w: &OwnedFd, code: i32) {
    let b = code.to_ne_bytes();
    // SAFETY: writes 4 bytes from a local buffer to a pipe we own.
    unsafe {
        libc::write(w.as_raw_fd(), b.as_ptr().cast(), b.len());
    }
}

fn decode(b: [u8; 4]) -> io::Result<()> {
    match i32::from_ne_bytes(b) {
        0 => Ok(()),
        code => Err(io::Error::from_raw_os_error(code)),
    }
}

impl Detached {
    /// Block until the child's answer.
    pub fn wait(mut self) -> io::Result<()> {
        let mut b = [0u8; 4];
        self.answer
            .read_exact(&mut b)
            .map_err(|e| io::Error::other(format!("detached helper died: {e}")))?;
        decode(b)
    }

    /// The answer if it arrives within `timeout`.
    pub fn poll(&mut self, timeout: Duration) -> Option<io::Result<()>> {
        let mut pfd = libc::pollfd {
            fd: self.answer.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd on our own pipe.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        if n <= 0 {
            return None;
        }
        let mut b = [0u8; 4];
        Some(match self.answer.read_exact(&mut b) {
            Ok(()) => decode(b),
            Err(e) => Err(io::Error::other(format!("detached helper died: {e}"))),
        })
    }

    /// Wait until `done()` holds or the child answers, whichever comes first. `done()` is
    /// asked again whenever `wake` (if any) becomes readable, and at least every
    /// 100 µs (`done()` should be cheap: no RTNL); it must consume what made `wake` readable.
    pub fn wait_until(
        mut self,
        wake: Option<RawFd>,
        mut done: impl FnMut() -> bool,
        limit: Duration,
    ) -> io::Result<()> {
        let start = Instant::now();
        loop {
            if let Some(answer) = self.poll(Duration::from_millis(0)) {
                return answer;
            }
            if done() {
                return Ok(());
            }
            if start.elapsed() > limit {
                return self.wait();
            }
            let mut pfds = [
                libc::pollfd {
                    fd: self.answer.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: wake.unwrap_or(-1),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            let tick = libc::timespec {
                tv_sec: 0,
                tv_nsec: 100_000,
            };
            // SAFETY: two pollfds in a local array (a negative fd is ignored by ppoll), a
            // local timespec, no signal mask; the answer, if any, is read at the top of
            // the loop.
            unsafe {
                libc::ppoll(
                    pfds.as_mut_ptr(),
                    pfds.len() as libc::nfds_t,
                    &tick,
                    std::ptr::null(),
                );
            }
        }
    }
}
