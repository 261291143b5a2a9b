//! OOM notifications for `events` and the shim: an fd that becomes readable when the
//! container's memory cgroup hits OOM (v1: an eventfd registered on memory.oom_control
//! through cgroup.event_control; v2: inotify on memory.events), and a blocking wait that
//! returns the oom_kill count after the event.

use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use crate::{fs, Cgroup, Error};

/// What the notifier fd is.
#[derive(Debug)]
enum Kind {
    /// v1 eventfd (the memory.oom_control fd must stay open while registered).
    EventFd { _oom_control: std::fs::File },
    /// v2 inotify watching memory.events.
    Inotify,
}

/// Readable when an OOM happened (or the cgroup went away). See [`Cgroup::oom_notifier`].
#[derive(Debug)]
pub struct OomNotifier {
    fd: OwnedFd,
    kind: Kind,
    dir: PathBuf,
    last: u64,
}

fn os_err(path: &Path, what: &str) -> Error {
    Error::Write {
        field: "oom notification".to_owned(),
        path: path.to_owned(),
        value: what.to_owned(),
        source: std::io::Error::last_os_error(),
    }
}

fn oom_count(dir: &Path, v2: bool) -> Result<u64, Error> {
    let file = if v2 {
        "memory.events"
    } else {
        "memory.oom_control"
    };
    let kv = fs::read_kv_opt(dir, file)?;
    Ok(kv
        .get("oom_kill")
        .or_else(|| kv.get("oom"))
        .copied()
        .unwrap_or(0))
}

impl Cgroup {
    /// An OOM notifier for the container's memory cgroup.
    pub fn oom_notifier(&self) -> Result<OomNotifier, Error> {
        let h = self
            .hierarchy_of("memory")
            .ok_or(Error::MissingController {
                field: "oom notification".to_owned(),
                controller: "memory".to_owned(),
            })?;
        let dir = h.dir.clone();
        let last = oom_count(&dir, h.v2)?;
        if h.v2 {
            // SAFETY: inotify_init1 with a valid flag; the result is checked.
            let raw = unsafe { libc::inotify_init1(libc::IN_CLOEXEC) };
            if raw < 0 {
                return Err(os_err(&dir, "inotify_init1"));
            }
            // SAFETY: a fresh fd owned by nothing else.
            let fd = unsafe { OwnedFd::from_raw_fd(raw) };
            let path = dir.join("memory.events");
            let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
                .map_err(|_| os_err(&path, "path with NUL"))?;
            // SAFETY: valid fd and NUL-terminated path.
            if unsafe { libc::inotify_add_watch(fd.as_raw_fd(), c.as_ptr(), libc::IN_MODIFY) } < 0 {
                return Err(os_err(&path, "inotify_add_watch"));
            }
            return Ok(OomNotifier {
                fd,
                kind: Kind::Inotify,
                dir,
                last,
            });
        }
        let oom_control =
            std::fs::File::open(dir.join("memory.oom_control")).map_err(|source| Error::Read {
                path: dir.join("memory.oom_control"),
                source,
            })?;
        // SAFETY: eventfd with valid flags; the result is checked.
        let raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if raw < 0 {
            return Err(os_err(&dir, "eventfd"));
        }
        // SAFETY: a fresh fd owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let registration = format!("{} {}", fd.as_raw_fd(), oom_control.as_raw_fd());
        fs::write(
            "oom notification",
            &dir,
            "cgroup.event_control",
            &registration,
        )?;
        Ok(OomNotifier {
            fd,
            kind: Kind::EventFd {
                _oom_control: oom_control,
            },
            dir,
            last,
        })
    }
}

impl OomNotifier {
    /// Block until the next OOM; returns the oom_kill count after it, or None when the
    /// cgroup was removed (v1 signals removal on the same eventfd).
    pub fn wait(&mut self) -> Result<Option<u64>, Error> {
        let v2 = matches!(self.kind, Kind::Inotify);
        loop {
            let mut buf = [0u8; 4096];
            let mut file =
                std::fs::File::from(self.fd.try_clone().map_err(|source| Error::Read {
                    path: self.dir.clone(),
                    source,
                })?);
            let n = file.read(&mut buf).map_err(|source| Error::Read {
                path: self.dir.clone(),
                source,
            })?;
            if !self.dir.exists() {
                return Ok(None);
            }
            if v2 && n >= 16 {
                // struct inotify_event { int wd; u32 mask; u32 cookie; u32 len; }
                let mask = u32::from_ne_bytes([buf[4], buf[5], buf[6], buf[7]]);
                if mask & libc::IN_IGNORED != 0 {
                    return Ok(None);
                }
            }
            let count = oom_count(&self.dir, v2)?;
            if !v2 || count > self.last {
                self.last = count;
                return Ok(Some(count));
            }
        }
    }
}

impl AsFd for OomNotifier {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}
