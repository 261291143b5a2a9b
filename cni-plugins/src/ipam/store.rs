//! The reference host-local on-disk layout, so the two implementations share a node:
//! `<dataDir>/<network>/<ip>` holds `<containerID>\r\n<ifname>` (old files: the id only),
//! `last_reserved_ip.<set>` the round-robin cursor, `lock` is flock'ed for the whole
//! operation. A reservation appears atomically (written to a temp file, then
//! `link(2)`ed into place with EEXIST as "taken"), so a plugin killed mid-write never
//! leaves an empty, unreleasable file.

use std::ffi::{CStr, OsStr};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat, AtFlags, Flock, FlockArg, OFlag};
use nix::sys::stat::{fstatat, Mode};

use crate::cni::{Code, Error, Result};

const LINE_BREAK: &str = "\r\n";
const LAST_RESERVED: &str = "last_reserved_ip.";
const TMP: &str = ".tmp-reserve";

/// A locked store: the flock is held until drop.
pub struct Store {
    dir: PathBuf,
    _lock: Flock<File>,
}

/// One reservation file.
#[derive(Debug, Clone)]
pub struct Entry {
    pub ip: Option<IpAddr>,
    pub path: PathBuf,
    pub container_id: String,
    /// Empty for files written by old versions (id only).
    pub ifname: String,
}

fn is_meta(name: &str) -> bool {
    name == "lock" || name.starts_with(LAST_RESERVED)
}

impl Store {
    /// Create the network dir if needed and take its lock.
    pub fn open(dir: &Path) -> Result<Store> {
        fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("failed to create {}", dir.display()), e))?;
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(dir.join("lock"))
            .map_err(|e| Error::io(format!("failed to open lock in {}", dir.display()), e))?;
        let lock = Flock::lock(f, FlockArg::LockExclusive)
            .map_err(|(_, e)| Error::io("failed to lock IPAM store", io::Error::from(e)))?;
        // Only a lock holder writes the temp file: one found now is from a killed plugin.
        let _ = fs::remove_file(dir.join(TMP));
        Ok(Store {
            dir: dir.to_path_buf(),
            _lock: lock,
        })
    }

    /// Reserve `ip` for (id, ifname); Ok(false) when it is already taken.
    pub fn reserve(&self, id: &str, ifname: &str, ip: IpAddr, set: usize) -> Result<bool> {
        // (`open` removed any stale temp file under the lock.)
        let tmp = self.dir.join(TMP);
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| Error::io("failed to create reservation", e))?;
        f.write_all(format!("{id}{LINE_BREAK}{ifname}").as_bytes())
            .map_err(|e| Error::io("failed to write reservation", e))?;
        drop(f);
        let target = self.dir.join(ip.to_string());
        let taken = match fs::hard_link(&tmp, &target) {
            Ok(()) => false,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => true,
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                return Err(Error::io(format!("failed to reserve {ip}"), e));
            }
        };
        let _ = fs::remove_file(&tmp);
        if taken {
            return Ok(false);
        }
        write_in_place(
            &self.dir.join(format!("{LAST_RESERVED}{set}")),
            ip.to_string().as_bytes(),
        )
        .map_err(|e| Error::io("failed to write last reserved IP", e))?;
        Ok(true)
    }

    pub fn last_reserved(&self, set: usize) -> Option<IpAddr> {
        fs::read_to_string(self.dir.join(format!("{LAST_RESERVED}{set}")))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Every reservation (and stale temp file) in the network dir.
    pub fn entries(&self) -> Result<Vec<Entry>> {
        self.scan(|_| true)
    }

    /// The reservations whose container id passes `want`. Every file is read (a node
    /// with many pods reads them all on every ADD and DEL, as the reference does), but
    /// only the wanted ones become [`Entry`]s: the directory is listed with one
    /// getdents64 per 32 KiB, each file opened relative to it and read once into a stack
    /// buffer (O_NOATIME: no inode update for the first read of a new reservation), and
    /// the rest allocates nothing.
    fn scan(&self, mut want: impl FnMut(&str) -> bool) -> Result<Vec<Entry>> {
        let dir = match nix::fcntl::open(
            &self.dir,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        ) {
            // SAFETY: `open` just returned this fd and nothing else owns it.
            Ok(fd) => unsafe { OwnedFd::from_raw_fd(fd) },
            Err(Errno::ENOENT) => return Ok(Vec::new()),
            Err(e) => return Err(Error::io("failed to read IPAM store", io::Error::from(e))),
        };
        let dfd = dir.as_raw_fd();
        let mut out = Vec::new();
        let mut listing = vec![0u8; 32 << 10];
        let mut data = Vec::new();
        let mut noatime = true;
        loop {
            // SAFETY: getdents64(2) into a buffer we own, with its true length.
            let n = unsafe {
                libc::syscall(
                    libc::SYS_getdents64,
                    dfd,
                    listing.as_mut_ptr(),
                    listing.len(),
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(Error::io("failed to read IPAM store", e));
            }
            if n == 0 {
                break;
            }
            for (raw, d_type) in Dirents(&listing[..n as usize]) {
                let bytes = raw.to_bytes();
                if bytes == b"." || bytes == b".." {
                    continue;
                }
                let Ok(name) = std::str::from_utf8(bytes) else {
                    continue;
                };
                if is_meta(name) || !is_file(dfd, raw, d_type) {
                    continue;
                }
                if read_at(dfd, raw, &mut noatime, &mut data).is_err() {
                    continue;
                }
                let Ok(text) = std::str::from_utf8(&data) else {
                    continue;
                };
                let text = text.trim();
                let (id, ifname) = match text.split_once(LINE_BREAK) {
                    Some((id, ifname)) => (id.trim(), ifname.trim()),
                    None => (text, ""),
                };
                if !want(id) {
                    continue;
                }
                out.push(Entry {
                    ip: name.parse().ok(),
                    path: self.dir.join(OsStr::from_bytes(bytes)),
                    container_id: id.to_string(),
                    ifname: ifname.to_string(),
                });
            }
        }
        Ok(out)
    }

    /// The reservations of (id, ifname); old id-only files match when no new-style one does.
    pub fn find(&self, id: &str, ifname: &str) -> Result<Vec<Entry>> {
        let all = self.scan(|i| i == id)?;
        let exact: Vec<Entry> = all
            .iter()
            .filter(|e| e.container_id == id && e.ifname == ifname)
            .cloned()
            .collect();
        if !exact.is_empty() {
            return Ok(exact);
        }
        Ok(all
            .into_iter()
            .filter(|e| e.container_id == id && e.ifname.is_empty())
            .collect())
    }

    /// Release everything held by (id, ifname); idempotent.
    pub fn release(&self, id: &str, ifname: &str) -> Result<Vec<IpAddr>> {
        let mut freed = Vec::new();
        for e in self.find(id, ifname)? {
            remove(&e.path)?;
            freed.extend(e.ip);
        }
        Ok(freed)
    }

    /// Release every reservation not held by one of `valid` (id, ifname).
    pub fn gc(&self, valid: &[(String, String)]) -> Result<Vec<IpAddr>> {
        let mut freed = Vec::new();
        for e in self.entries()? {
            let keep = valid.iter().any(|(id, ifname)| {
                *id == e.container_id && (e.ifname.is_empty() || *ifname == e.ifname)
            });
            if !keep {
                remove(&e.path)?;
                freed.extend(e.ip);
            }
        }
        Ok(freed)
    }
}

/// The (name, d_type) records of a getdents64 buffer.
struct Dirents<'a>(&'a [u8]);

impl<'a> Iterator for Dirents<'a> {
    type Item = (&'a CStr, u8);

    fn next(&mut self) -> Option<Self::Item> {
        // struct linux_dirent64: u64 d_ino, i64 d_off, u16 d_reclen, u8 d_type, name.
        const NAME: usize = 19;
        let b = self.0;
        if b.len() < NAME {
            return None;
        }
        let reclen = u16::from_ne_bytes([b[16], b[17]]) as usize;
        if reclen < NAME || reclen > b.len() {
            return None;
        }
        self.0 = &b[reclen..];
        let name = CStr::from_bytes_until_nul(&b[NAME..reclen]).ok()?;
        Some((name, b[18]))
    }
}

/// A regular file (not following symlinks); `lstat`s only when the directory entry does
/// not say.
fn is_file(dfd: RawFd, name: &CStr, d_type: u8) -> bool {
    match d_type {
        libc::DT_REG => true,
        libc::DT_UNKNOWN => fstatat(Some(dfd), name, AtFlags::AT_SYMLINK_NOFOLLOW)
            .map(|st| st.st_mode & libc::S_IFMT == libc::S_IFREG)
            .unwrap_or(false),
        _ => false,
    }
}

/// The whole content of the regular file `name` in the directory `dfd` into `buf`. A
/// short read of a regular file is its end, so a reservation (tens of bytes) costs one
/// read. `noatime` is cleared when the kernel refuses O_NOATIME (not the file's owner
/// and no CAP_FOWNER).
fn read_at(dfd: RawFd, name: &CStr, noatime: &mut bool, buf: &mut Vec<u8>) -> io::Result<()> {
    let base = OFlag::O_RDONLY | OFlag::O_CLOEXEC;
    let flags = if *noatime {
        base | OFlag::O_NOATIME
    } else {
        base
    };
    let fd = match openat(Some(dfd), name, flags, Mode::empty()) {
        Err(Errno::EPERM) if *noatime => {
            *noatime = false;
            openat(Some(dfd), name, base, Mode::empty())?
        }
        r => r?,
    };
    // SAFETY: `openat` just returned this fd and nothing else owns it.
    let mut f = unsafe { File::from_raw_fd(fd) };
    buf.clear();
    let mut chunk = [0u8; 512];
    loop {
        match f.read(&mut chunk) {
            Ok(n) if n < chunk.len() => {
                buf.extend_from_slice(&chunk[..n]);
                return Ok(());
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Overwrite a small file without truncating it to zero first: on ext4 a truncate-to-zero
/// rewrite starts writeback of the file at close (auto_da_alloc), which costs more than
/// the whole reservation. A torn write only misplaces the round-robin cursor.
fn write_in_place(p: &Path, data: &[u8]) -> io::Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o644)
        .open(p)?;
    f.write_all(data)?;
    f.set_len(data.len() as u64)
}

fn remove(p: &Path) -> Result<()> {
    match fs::remove_file(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("failed to release {}", p.display()), e)),
    }
}

/// STATUS: the store can take new reservations (dir creatable, lock and files writable).
pub fn probe_writable(dir: &Path) -> Result<()> {
    let unavailable = |what: &str, e: io::Error| {
        Error::new(
            Code::NotAvailable,
            format!("IPAM data dir {} is not usable: {what}: {e}", dir.display()),
        )
    };
    fs::create_dir_all(dir).map_err(|e| unavailable("create", e))?;
    let probe = dir.join(".status-probe");
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&probe)
        .map_err(|e| unavailable("write", e))?;
    let _ = fs::remove_file(&probe);
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(dir.join("lock"))
        .map_err(|e| unavailable("lock", e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("nestbox-store-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn reserve_writes_reference_format_and_refuses_a_taken_ip() {
        let d = tmpdir("res");
        let s = Store::open(&d).unwrap();
        let ip: IpAddr = "10.0.0.2".parse().unwrap();
        assert!(s.reserve("c1", "eth0", ip, 0).unwrap());
        assert!(!s.reserve("c2", "eth0", ip, 0).unwrap());
        assert_eq!(
            fs::read_to_string(d.join("10.0.0.2")).unwrap(),
            "c1\r\neth0"
        );
        assert_eq!(s.last_reserved(0), Some(ip));
        assert!(!d.join(TMP).exists());
        assert_eq!(s.release("c1", "eth0").unwrap(), vec![ip]);
        assert!(!d.join("10.0.0.2").exists());
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn old_id_only_files_are_released_and_kept_by_gc_per_id() {
        let d = tmpdir("old");
        let s = Store::open(&d).unwrap();
        fs::write(d.join("10.0.0.3"), "old").unwrap();
        fs::write(d.join("10.0.0.4"), "gone\r\neth0").unwrap();
        assert_eq!(s.gc(&[("old".into(), "eth0".into())]).unwrap().len(), 1);
        assert!(d.join("10.0.0.3").exists());
        assert_eq!(s.release("old", "eth0").unwrap().len(), 1);
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn entries_reads_reservations_only_and_whole() {
        let d = tmpdir("ent");
        let s = Store::open(&d).unwrap();
        let long = "x".repeat(1500);
        fs::write(d.join("10.0.0.5"), format!("{long}\r\neth1\n")).unwrap();
        fs::write(d.join("10.0.0.6"), " old \n").unwrap();
        fs::write(d.join("last_reserved_ip.0"), "10.0.0.6").unwrap();
        fs::create_dir(d.join("10.0.0.7")).unwrap();
        std::os::unix::fs::symlink(d.join("10.0.0.6"), d.join("10.0.0.8")).unwrap();
        let mut e = s.entries().unwrap();
        e.sort_by_key(|e| e.ip);
        assert_eq!(e.len(), 2, "{e:?}");
        assert_eq!(e[0].ip, Some("10.0.0.5".parse().unwrap()));
        assert_eq!(e[0].path, d.join("10.0.0.5"));
        assert_eq!(
            (e[0].container_id.as_str(), e[0].ifname.as_str()),
            (long.as_str(), "eth1")
        );
        assert_eq!(
            (e[1].container_id.as_str(), e[1].ifname.as_str()),
            ("old", "")
        );
        let _ = fs::remove_dir_all(&d);
    }
}
