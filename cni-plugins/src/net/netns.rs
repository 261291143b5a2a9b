//! Network namespaces. Threading rule: `setns(CLONE_NEWNET)` moves only the calling
//! thread, so the plugins stay single-threaded (no async runtime, no worker threads) and
//! every entry is paired with a return in the same function ([`NetNs::run`]). Netlink
//! sockets stay bound to the netns they were opened in, so most work needs only the
//! short entry that opens the socket.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};

use nix::sched::{setns, CloneFlags};

use super::netlink::Netlink;

pub struct NetNs {
    file: File,
    pub path: String,
}

impl NetNs {
    /// Open a netns path; `NotFound` when it does not exist.
    pub fn open(path: &str) -> io::Result<NetNs> {
        let file = File::open(path)?;
        Ok(NetNs {
            file,
            path: path.to_string(),
        })
    }

    /// The calling thread's current netns.
    pub fn current() -> io::Result<NetNs> {
        NetNs::open("/proc/thread-self/ns/net")
    }

    pub fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// Run `f` with the calling thread inside this netns, then return to where it was.
    pub fn run<T>(&self, f: impl FnOnce() -> T) -> io::Result<T> {
        let home = NetNs::current()?;
        setns(self.file.as_fd(), CloneFlags::CLONE_NEWNET)
            .map_err(|e| io::Error::other(format!("failed to enter netns {}: {e}", self.path)))?;
        let out = f();
        if let Err(e) = setns(home.file.as_fd(), CloneFlags::CLONE_NEWNET) {
            // Continuing in the wrong netns would touch the container's network as if it
            // were the host's: stop here.
            eprintln!("fatal: cannot return to the original netns: {e}");
            std::process::abort();
        }
        Ok(out)
    }

    /// A netlink socket bound to this netns.
    pub fn netlink(&self) -> io::Result<Netlink> {
        self.run(Netlink::new)?
    }
}
