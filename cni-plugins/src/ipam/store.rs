//! The reference host-local on-disk layout, so the two implementations share a node:
//! `<dataDir>/<network>/<ip>` holds `<containerID>\r\n<ifname>` (old files: the id only),
//! `last_reserved_ip.<set>` the round-robin cursor, `lock` is flock'ed for the whole
//! operation. A reservation appears atomically (written to a temp file, then
//! `link(2)`ed into place with EEXIST as "taken"), so a plugin killed mid-write never
//! leaves an empty, unreleasable file.
//!
//! The owner index: the temp file is then renamed to `.owner-<key>-<ip>` (key: a hash of
//! the container id and ifname), a second hard link to the same inode. Looking up a
//! container's reservations then needs only the directory listing: a file that shares
//! its inode with another owner's link cannot be this container's and is not read.
//! Files without a link (written by the reference plugin or by an older nestbox) are read
//! as before. The link holds the same bytes as the reservation, so the reference, which
//! releases every file whose content names the container, removes both; a link whose
//! reservation went some other way no longer shares an inode with it, is ignored, and
//! goes at the next release or GC.

use std::collections::{HashMap, HashSet};
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
/// Prefix of the owner index links (see the module doc).
const OWNER: &str = ".owner-";

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
    /// Its owner index link, when it has one.
    pub link: Option<PathBuf>,
}

/// What a scan of the network dir found: the selected reservations, and owner links
/// whose reservation is gone.
struct Scan {
    entries: Vec<Entry>,
    stale: Vec<PathBuf>,
}

/// The owner key of (id, ifname): 64-bit FNV-1a of the reservation's content, in hex.
/// A collision only costs a read: ownership is always confirmed from the content.
fn owner_key(id: &str, ifname: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in id
        .trim()
        .bytes()
        .chain(LINE_BREAK.bytes())
        .chain(ifname.trim().bytes())
    {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

fn is_meta(name: &str) -> bool {
    name == "lock" || name.starts_with(LAST_RESERVED)
}

impl Store {
    /// Create the network dir if needed and take its lock.
    pub fn open(dir: &Path) -> Result<Store> {
        let lock_file = || {
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(dir.join("lock"))
        };
        // The directory is made on first use only (the lock's ENOENT says it is missing).
        let f = match lock_file() {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir_all(dir)
                    .map_err(|e| Error::io(format!("failed to create {}", dir.display()), e))?;
                lock_file()
            }
            r => r,
        }
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
        if taken {
            let _ = fs::remove_file(&tmp);
            return Ok(false);
        }
        // The temp file stays as the owner link; without it the reservation is only
        // slower to find.
        let link = format!("{OWNER}{}-{ip}", owner_key(id, ifname));
        if fs::rename(&tmp, self.dir.join(link)).is_err() {
            let _ = fs::remove_file(&tmp);
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
        Ok(self.scan(None)?.entries)
    }

    /// The reservations of (id, ifname) (`Some`), or all of them. With an owner, a file
    /// whose inode carries another owner's link is skipped unread; every other file is
    /// read (a node with many pods written by the reference reads them all on every ADD
    /// and DEL, as the reference does). The directory is listed with one getdents64 per
    /// 32 KiB, each file opened relative to it and read once into a stack buffer
    /// (O_NOATIME: no inode update for the first read of a new reservation), and files
    /// that do not match allocate nothing.
    fn scan(&self, owner: Option<(&str, &str)>) -> Result<Scan> {
        let dir = match nix::fcntl::open(
            &self.dir,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        ) {
            // SAFETY: `open` just returned this fd and nothing else owns it.
            Ok(fd) => unsafe { OwnedFd::from_raw_fd(fd) },
            Err(Errno::ENOENT) => {
                return Ok(Scan {
                    entries: Vec::new(),
                    stale: Vec::new(),
                })
            }
            Err(e) => return Err(Error::io("failed to read IPAM store", io::Error::from(e))),
        };
        let dfd = dir.as_raw_fd();
        let listing = list(dfd).map_err(|e| Error::io("failed to read IPAM store", e))?;
        let key = owner.map(|(id, ifname)| owner_key(id, ifname));

        // Owner links by inode: (link name, whether it is the wanted owner's).
        let mut links: HashMap<u64, (&CStr, bool)> = HashMap::new();
        for (ino, raw, d_type) in Dirents(&listing) {
            let Some(rest) = raw.to_bytes().strip_prefix(OWNER.as_bytes()) else {
                continue;
            };
            if !is_file(dfd, raw, d_type) {
                continue;
            }
            let ours = key.as_ref().is_some_and(|k| {
                rest.strip_prefix(k.as_bytes())
                    .is_some_and(|r| r.first() == Some(&b'-'))
            });
            links.insert(ino, (raw, ours));
        }

        let mut entries = Vec::new();
        let mut linked = HashSet::new();
        let mut data = Vec::new();
        let mut noatime = true;
        for (ino, raw, d_type) in Dirents(&listing) {
            let bytes = raw.to_bytes();
            if bytes == b"." || bytes == b".." || bytes.starts_with(OWNER.as_bytes()) {
                continue;
            }
            let Ok(name) = std::str::from_utf8(bytes) else {
                continue;
            };
            if is_meta(name) || !is_file(dfd, raw, d_type) {
                continue;
            }
            let link = links.get(&ino);
            if link.is_some() {
                linked.insert(ino);
            }
            if matches!(link, Some((_, false))) && key.is_some() {
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
            if owner.is_some_and(|(want, _)| want != id) {
                continue;
            }
            entries.push(Entry {
                ip: name.parse().ok(),
                path: self.dir.join(OsStr::from_bytes(bytes)),
                container_id: id.to_string(),
                ifname: ifname.to_string(),
                link: link.map(|(l, _)| self.dir.join(OsStr::from_bytes(l.to_bytes()))),
            });
        }
        let stale = links
            .iter()
            .filter(|(ino, _)| !linked.contains(*ino))
            .map(|(_, (l, _))| self.dir.join(OsStr::from_bytes(l.to_bytes())))
            .collect();
        Ok(Scan { entries, stale })
    }

    /// The reservations of (id, ifname); old id-only files match when no new-style one does.
    pub fn find(&self, id: &str, ifname: &str) -> Result<Vec<Entry>> {
        Ok(self.find_scan(id, ifname)?.entries)
    }

    fn find_scan(&self, id: &str, ifname: &str) -> Result<Scan> {
        let Scan { entries, stale } = self.scan(Some((id, ifname)))?;
        let exact: Vec<Entry> = entries
            .iter()
            .filter(|e| e.container_id == id && e.ifname == ifname)
            .cloned()
            .collect();
        let entries = if exact.is_empty() {
            entries
                .into_iter()
                .filter(|e| e.container_id == id && e.ifname.is_empty())
                .collect()
        } else {
            exact
        };
        Ok(Scan { entries, stale })
    }

    /// Remove a reservation and its owner link.
    pub fn remove(&self, e: &Entry) -> Result<()> {
        remove(&e.path)?;
        if let Some(l) = &e.link {
            remove(l)?;
        }
        Ok(())
    }

    /// Release everything held by (id, ifname); idempotent.
    pub fn release(&self, id: &str, ifname: &str) -> Result<Vec<IpAddr>> {
        let scan = self.find_scan(id, ifname)?;
        let mut freed = Vec::new();
        for e in &scan.entries {
            self.remove(e)?;
            freed.extend(e.ip);
        }
        for l in &scan.stale {
            let _ = remove(l);
        }
        Ok(freed)
    }

    /// Release every reservation not held by one of `valid` (id, ifname).
    pub fn gc(&self, valid: &[(String, String)]) -> Result<Vec<IpAddr>> {
        let scan = self.scan(None)?;
        let mut freed = Vec::new();
        for e in scan.entries {
            let keep = valid.iter().any(|(id, ifname)| {
                *id == e.container_id && (e.ifname.is_empty() || *ifname == e.ifname)
            });
            if !keep {
                self.remove(&e)?;
                freed.extend(e.ip);
            }
        }
        for l in &scan.stale {
            remove(l)?;
        }
        Ok(freed)
    }
}

/// The whole listing of the directory `dfd`: getdents64 records, 32 KiB per call.
fn list(dfd: RawFd) -> io::Result<Vec<u8>> {
    const CHUNK: usize = 32 << 10;
    let mut out: Vec<u8> = Vec::with_capacity(CHUNK);
    loop {
        // A directory of a few hundred entries fits the first chunk: grow only when
        // less than a page is left.
        if out.capacity() - out.len() < 4096 {
            out.reserve(CHUNK);
        }
        let spare = out.spare_capacity_mut();
        // SAFETY: getdents64(2) writes at most `spare.len()` bytes into the vector's
        // spare capacity, which we own; only the bytes it reports are then exposed.
        let n =
            unsafe { libc::syscall(libc::SYS_getdents64, dfd, spare.as_mut_ptr(), spare.len()) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Ok(out);
        }
        // SAFETY: the kernel initialised the first `n` bytes of the spare capacity.
        unsafe { out.set_len(out.len() + n as usize) };
    }
}

/// The (inode, name, d_type) records of a getdents64 listing.
struct Dirents<'a>(&'a [u8]);

impl<'a> Iterator for Dirents<'a> {
    type Item = (u64, &'a CStr, u8);

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
        let ino = u64::from_ne_bytes(b[..8].try_into().ok()?);
        Some((ino, name, b[18]))
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

    fn names(d: &Path) -> Vec<String> {
        let mut n: Vec<String> = fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n != "lock" && !n.starts_with(LAST_RESERVED))
            .collect();
        n.sort();
        n
    }

    #[test]
    fn a_reservation_gets_an_owner_link_to_the_same_inode() {
        use std::os::unix::fs::MetadataExt;
        let d = tmpdir("link");
        let s = Store::open(&d).unwrap();
        let ip: IpAddr = "10.0.1.2".parse().unwrap();
        assert!(s.reserve("c1", "eth0", ip, 0).unwrap());
        let link = format!("{OWNER}{}-10.0.1.2", owner_key("c1", "eth0"));
        assert_eq!(names(&d), vec![link.clone(), "10.0.1.2".to_string()]);
        let (a, b) = (
            fs::metadata(d.join("10.0.1.2")).unwrap(),
            fs::metadata(d.join(&link)).unwrap(),
        );
        assert_eq!((a.ino(), a.nlink()), (b.ino(), 2));
        // Listed once, with its link; released with it.
        let e = s.entries().unwrap();
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(e[0].link, Some(d.join(&link)));
        assert_eq!(s.find("c1", "eth0").unwrap().len(), 1);
        assert!(s.find("c1", "eth1").unwrap().is_empty());
        assert_eq!(s.release("c1", "eth0").unwrap(), vec![ip]);
        assert!(names(&d).is_empty(), "{:?}", names(&d));
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn find_skips_files_linked_to_another_owner_and_reads_unlinked_ones() {
        let d = tmpdir("skip");
        let s = Store::open(&d).unwrap();
        assert!(s
            .reserve("other", "eth0", "10.0.2.2".parse().unwrap(), 0)
            .unwrap());
        // Rewritten behind the store's back: a lookup that read it would now match "c1".
        // Linked to "other", it is not read.
        fs::write(d.join("10.0.2.2"), "c1\r\neth0").unwrap();
        assert!(s.find("c1", "eth0").unwrap().is_empty());
        // A reservation the reference wrote (no link) is read.
        fs::write(d.join("10.0.2.3"), "c1\r\neth0").unwrap();
        let f = s.find("c1", "eth0").unwrap();
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].ip, Some("10.0.2.3".parse().unwrap()));
        assert_eq!(f[0].link, None);
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn a_link_left_behind_is_ignored_then_removed() {
        let d = tmpdir("stale");
        let s = Store::open(&d).unwrap();
        let ip: IpAddr = "10.0.3.2".parse().unwrap();
        assert!(s.reserve("c1", "eth0", ip, 0).unwrap());
        // Released by name only (as a tool that knows only the reference layout might),
        // then the address is taken by someone else (reference-style, no link).
        fs::remove_file(d.join("10.0.3.2")).unwrap();
        fs::write(d.join("10.0.3.2"), "c2\r\neth0").unwrap();
        assert!(s.find("c1", "eth0").unwrap().is_empty());
        assert_eq!(s.find("c2", "eth0").unwrap().len(), 1);
        // The next release (of anyone) drops the dangling link.
        assert!(s.release("c9", "eth0").unwrap().is_empty());
        assert_eq!(names(&d), vec!["10.0.3.2".to_string()]);
        // And GC removes a reservation together with its link.
        assert!(s
            .reserve("c3", "eth0", "10.0.3.3".parse().unwrap(), 0)
            .unwrap());
        assert_eq!(s.gc(&[("c2".into(), "eth0".into())]).unwrap().len(), 1);
        assert_eq!(names(&d), vec!["10.0.3.2".to_string()]);
        let _ = fs::remove_dir_all(&d);
    }
}
