//! The container's filesystem view, built by init: propagation, the rootfs bind, the spec's
//! mounts (targets resolved inside the rootfs, mounted through an O_PATH fd), /dev,
//! pivot_root, masked and read-only paths.
//!
//! Usually in a mount namespace of the container's own (new, or joined by path: the rootfs
//! becomes its root, as with runc and crun). A spec without a mount namespace shares the
//! runtime's: then nothing outside the rootfs changes (no propagation is touched), every mount
//! sits on a bind of the rootfs onto itself (so a read-only root stays a property of that
//! bind, and detaching it undoes them all, see [`detach_shared_rootfs`]) and the root is
//! entered with chroot, since pivot_root would move every process of the runtime's namespace.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{symlink, DirBuilderExt, FileTypeExt, MetadataExt};
use std::path::{Component, Path, PathBuf};

use nix::fcntl::{open, OFlag};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::{makedev, mknod, Mode, SFlag};
use nix::unistd::{chdir, chown, chroot, fchdir, pivot_root, Gid, Uid};
use oci_spec::runtime::{LinuxDevice, LinuxDeviceType, Mount, Spec};

use crate::error::{shown, Context, Error, Result};

/// A host cgroup directory to show at /sys/fs/cgroup/<name> inside the container.
#[derive(Debug, Clone)]
pub struct CgroupBind {
    pub name: String,
    pub source: PathBuf,
}

/// The cgroup directories init itself is in, per mounted hierarchy (read before the cgroup
/// namespace is unshared, so paths are host paths).
pub fn own_cgroup_binds() -> Vec<CgroupBind> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let procs = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let procs = nestbox_cgroups::mountinfo::parse_proc_cgroup(&procs);
    nestbox_cgroups::mountinfo::parse_mountinfo(&mountinfo)
        .into_iter()
        .filter_map(|m| {
            let own = nestbox_cgroups::mountinfo::own_path(&m, &procs);
            let rel = own.strip_prefix(m.root.as_str()).unwrap_or(own);
            let name = m.mount_point.file_name()?.to_string_lossy().into_owned();
            Some(CgroupBind {
                source: m.mount_point.join(rel.trim_start_matches('/')),
                name,
            })
        })
        .collect()
}

/// Everything rootfs setup needs besides the spec.
pub struct RootfsContext<'a> {
    pub spec: &'a Spec,
    pub bundle: &'a Path,
    pub rootfs: &'a Path,
    pub cgroup_binds: &'a [CgroupBind],
    /// In a new user namespace: device nodes are bind mounted from the host, not created.
    pub in_userns: bool,
    /// No mount namespace in the spec: the mounts are made in the runtime's own.
    pub shares_runtime_mounts: bool,
}

/// linux.rootfsPropagation as mount flags (None when unset).
fn rootfs_propagation(spec: &Spec) -> Result<Option<MsFlags>> {
    match spec
        .linux()
        .as_ref()
        .and_then(|l| l.rootfs_propagation().as_deref())
    {
        None | Some("") => Ok(None),
        Some(p) => propagation_flag(p)
            .map(Some)
            .ok_or_else(|| Error::Spec(format!("linux.rootfsPropagation: unknown value {p:?}"))),
    }
}

/// Propagation of the container's mount namespace, and the bind of the rootfs onto itself that
/// becomes the container's `/` (and carries every later mount).
///
/// The bind must not be shared, nor its parent mount, nor `/`, for pivot_root; the spec's
/// rootfsPropagation is applied to the new `/` afterwards, in [`finish`]. Unset (our default)
/// or recursive: every mount of the namespace becomes private (or slave for `rslave`), so
/// nothing the container mounts reaches the host. `shared`, `private`, `unbindable`: only `/`
/// and the rootfs's parent mount are made private, so the spec's bind mounts of shared host
/// mounts keep their peers (as with runc and crun). `slave`: `/` and the parent become slaves
/// instead, so the rootfs bind, made from its parent, receives the host's mounts under the
/// rootfs ("receives propagation events from the host … but not the other way around").
pub fn bind_rootfs(ctx: &RootfsContext) -> Result<()> {
    let requested = rootfs_propagation(ctx.spec)?;
    if !ctx.shares_runtime_mounts {
        let rec = MsFlags::MS_REC;
        let slave = requested.is_some_and(|f| f.contains(MsFlags::MS_SLAVE));
        let keep_peers =
            requested.is_some_and(|f| !f.contains(rec) || f.contains(MsFlags::MS_SHARED));
        let (root, parent) = match (keep_peers, slave) {
            (true, true) => (MsFlags::MS_SLAVE, MsFlags::MS_SLAVE),
            (true, false) => (MsFlags::MS_PRIVATE, MsFlags::MS_PRIVATE),
            (false, true) => (rec | MsFlags::MS_SLAVE, MsFlags::MS_SLAVE),
            (false, false) => (rec | MsFlags::MS_PRIVATE, MsFlags::MS_PRIVATE),
        };
        mount(None::<&str>, "/", None::<&str>, root, None::<&str>)
            .ctx(|| "setting the propagation of / in the container's mount namespace".into())?;
        unshare_parent_mount(ctx.rootfs, parent)?;
    }
    mount(
        Some(ctx.rootfs),
        ctx.rootfs,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .ctx(|| format!("bind mounting the rootfs {}", shown(ctx.rootfs)))?;
    if ctx.shares_runtime_mounts {
        // In the runtime's namespace the bind may have joined a shared host mount's peer
        // group: keep the container's mounts from spreading to its peers.
        mount(
            None::<&str>,
            ctx.rootfs,
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None::<&str>,
        )
        .ctx(|| format!("making the rootfs bind {} private", shown(ctx.rootfs)))?;
    }
    Ok(())
}

/// The spec's mounts and the device nodes on the rootfs bind, before pivot_root.
pub fn prepare(ctx: &RootfsContext) -> Result<()> {
    let linux = ctx.spec.linux().as_ref();
    let mut dev_is_bind = false;
    for m in ctx.spec.mounts().as_deref().unwrap_or_default() {
        if m.destination() == Path::new("/dev") && is_bind(m) {
            dev_is_bind = true;
        }
        mount_entry(ctx, m).map_err(|e| {
            Error::Other(format!(
                "mount {} on {}: {e}",
                m.source()
                    .as_deref()
                    .map(shown)
                    .unwrap_or_else(|| "none".into()),
                shown(m.destination())
            ))
        })?;
    }
    if !dev_is_bind {
        create_default_devices(ctx)?;
        create_dev_links(ctx.rootfs)?;
    }
    for dev in linux
        .and_then(|l| l.devices().as_deref())
        .unwrap_or_default()
    {
        create_device(ctx, dev)?;
    }
    Ok(())
}

/// Switch the root to the rootfs: pivot_root, or MS_MOVE + chroot with `--no-pivot`, or
/// only chroot in the runtime's mount namespace (`shares_runtime_mounts`).
pub fn enter(rootfs: &Path, no_pivot: bool, shares_runtime_mounts: bool) -> Result<()> {
    if shares_runtime_mounts {
        chdir(rootfs).ctx(|| format!("chdir {}", shown(rootfs)))?;
        chroot(".").ctx(|| "chroot into the rootfs".into())?;
        return chdir("/").ctx(|| "chdir /".into());
    }
    if no_pivot {
        chdir(rootfs).ctx(|| format!("chdir {}", shown(rootfs)))?;
        mount(
            Some(rootfs),
            "/",
            None::<&str>,
            MsFlags::MS_MOVE,
            None::<&str>,
        )
        .ctx(|| "moving the rootfs to /".into())?;
        chroot(".").ctx(|| "chroot into the rootfs".into())?;
        return chdir("/").ctx(|| "chdir /".into());
    }
    let old_root = open(
        "/",
        OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .ctx(|| "open /".into())?;
    // SAFETY: open returned a fresh fd that nothing else owns.
    let old_root = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(old_root) };
    chdir(rootfs).ctx(|| format!("chdir {}", shown(rootfs)))?;
    // pivot_root(".", ".") stacks the old root under the new one; it is then detached.
    pivot_root(".", ".").ctx(|| format!("pivot_root into {}", shown(rootfs)))?;
    fchdir(old_root.as_raw_fd()).ctx(|| "fchdir to the old root".into())?;
    mount(
        None::<&str>,
        ".",
        None::<&str>,
        MsFlags::MS_SLAVE | MsFlags::MS_REC,
        None::<&str>,
    )
    .ctx(|| "making the old root a slave".into())?;
    umount2(".", MntFlags::MNT_DETACH).ctx(|| "detaching the old root".into())?;
    chdir("/").ctx(|| "chdir /".into())
}

/// After pivot: masked paths, read-only paths, read-only root, then rootfsPropagation on `/`.
pub fn finish(spec: &Spec) -> Result<()> {
    let linux = spec.linux().as_ref();
    for p in linux
        .and_then(|l| l.masked_paths().as_deref())
        .unwrap_or_default()
    {
        mask_path(Path::new(p))?;
    }
    for p in linux
        .and_then(|l| l.readonly_paths().as_deref())
        .unwrap_or_default()
    {
        readonly_path(Path::new(p))?;
    }
    if spec
        .root()
        .as_ref()
        .and_then(|r| r.readonly())
        .unwrap_or(false)
    {
        let flags = locked_flags(Path::new("/"));
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | flags,
            None::<&str>,
        )
        .ctx(|| "remounting / read-only".into())?;
    }
    // Last: an unbindable `/` would refuse the binds above.
    if let Some(flag) = rootfs_propagation(spec)? {
        mount(None::<&str>, "/", None::<&str>, flag, None::<&str>)
            .ctx(|| "applying linux.rootfsPropagation to /".into())?;
    }
    Ok(())
}

/// The bind of the rootfs onto itself that a container without a mount namespace of its own
/// left in the runtime's mount namespace: `mount_id` in the namespace `mount_ns` (device and
/// inode of its nsfs file).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SharedRootfs {
    pub mount_ns: (u64, u64),
    pub mount_id: u64,
}

/// (device, inode) of a mount namespace file such as /proc/self/ns/mnt.
pub fn mount_ns_of(ns_file: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(ns_file).ok().map(|m| (m.dev(), m.ino()))
}

impl SharedRootfs {
    /// Find the bind in the mountinfo of `pid`, a process chrooted into it (its `/`).
    pub fn of_process(pid: i32) -> Result<SharedRootfs> {
        let path = format!("/proc/{pid}/mountinfo");
        let text = std::fs::read_to_string(&path).ctx(|| format!("reading {path}"))?;
        let mount_id = text
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.get(4) == Some(&"/")).then(|| f.first()?.parse().ok())?
            })
            .next_back()
            .ok_or_else(|| Error::Other(format!("{path}: no mount at /")))?;
        let mount_ns = mount_ns_of(Path::new(&format!("/proc/{pid}/ns/mnt")))
            .ok_or_else(|| Error::Other(format!("container init {pid} is gone")))?;
        Ok(SharedRootfs { mount_ns, mount_id })
    }
}

/// Undo the mounts of a container that shared the runtime's mount namespace: detach its rootfs
/// bind (the mounts it made sit on it) if this process is in that namespace and the bind is
/// still the top mount at `rootfs`; otherwise leave everything and say why.
pub fn detach_shared_rootfs(rootfs: &Path, shared: &SharedRootfs) -> Result<()> {
    if mount_ns_of(Path::new("/proc/self/ns/mnt")) != Some(shared.mount_ns) {
        tracing::warn!(
            "the container's mounts on {} are in another mount namespace: left as they are",
            shown(rootfs)
        );
        return Ok(());
    }
    let text =
        std::fs::read_to_string("/proc/self/mountinfo").ctx(|| "reading mountinfo".into())?;
    let escaped = escape_mountinfo(rootfs);
    // (id, parent id) of every mount at the rootfs path; the top one is nobody's parent there.
    let at_rootfs: Vec<(u64, u64)> = text
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.get(4) != Some(&escaped.as_str()) {
                return None;
            }
            Some((f.first()?.parse().ok()?, f.get(1)?.parse().ok()?))
        })
        .collect();
    if !at_rootfs.iter().any(|(id, _)| *id == shared.mount_id) {
        return Ok(());
    }
    let top = at_rootfs
        .iter()
        .find(|(id, _)| !at_rootfs.iter().any(|(_, parent)| parent == id))
        .map(|(id, _)| *id);
    if top != Some(shared.mount_id) {
        tracing::warn!(
            "another mount covers the container's rootfs bind on {}: left as it is",
            shown(rootfs)
        );
        return Ok(());
    }
    umount2(rootfs, MntFlags::MNT_DETACH).ctx(|| format!("detaching {}", shown(rootfs)))
}

/// A path as /proc/self/mountinfo writes it (space, tab, newline and backslash in octal).
fn escape_mountinfo(path: &Path) -> String {
    let mut out = String::new();
    for c in path.to_string_lossy().chars() {
        match c {
            ' ' => out.push_str("\\040"),
            '\t' => out.push_str("\\011"),
            '\n' => out.push_str("\\012"),
            '\\' => out.push_str("\\134"),
            c => out.push(c),
        }
    }
    out
}

/// Resolve `unsafe_path` inside `root` as if `root` were `/`: symlinks (absolute or with
/// `..`) never lead outside it. Missing components are kept as named.
pub fn secure_join(root: &Path, unsafe_path: &Path) -> Result<PathBuf> {
    let mut pending: VecDeque<OsString> = components(unsafe_path);
    let mut resolved = PathBuf::new();
    let mut links = 0;
    while let Some(c) = pending.pop_front() {
        if c == ".." {
            resolved.pop();
            continue;
        }
        let candidate = resolved.join(&c);
        let full = root.join(&candidate);
        match std::fs::symlink_metadata(&full) {
            Ok(meta) if meta.file_type().is_symlink() => {
                links += 1;
                if links > 255 {
                    return Err(Error::Other(format!(
                        "{}: too many levels of symbolic links",
                        shown(unsafe_path)
                    )));
                }
                let target =
                    std::fs::read_link(&full).ctx(|| format!("readlink {}", shown(&full)))?;
                if target.is_absolute() {
                    resolved = PathBuf::new();
                }
                let mut next = components(&target);
                next.extend(pending);
                pending = next;
            }
            _ => resolved = candidate,
        }
    }
    Ok(root.join(resolved))
}

fn components(path: &Path) -> VecDeque<OsString> {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            _ => None,
        })
        .collect()
}

/// Parsed `options` of a mount entry.
#[derive(Debug)]
pub struct MountOptions {
    pub flags: MsFlags,
    pub propagation: Vec<MsFlags>,
    pub data: Vec<String>,
}

pub fn parse_options(options: &[String]) -> MountOptions {
    let mut out = MountOptions {
        flags: MsFlags::empty(),
        propagation: Vec::new(),
        data: Vec::new(),
    };
    for o in options {
        if let Some(p) = propagation_flag(o) {
            out.propagation.push(p);
            continue;
        }
        let (clear, flag) = match o.as_str() {
            "defaults" => (false, MsFlags::empty()),
            "ro" => (false, MsFlags::MS_RDONLY),
            "rw" => (true, MsFlags::MS_RDONLY),
            "suid" => (true, MsFlags::MS_NOSUID),
            "nosuid" => (false, MsFlags::MS_NOSUID),
            "dev" => (true, MsFlags::MS_NODEV),
            "nodev" => (false, MsFlags::MS_NODEV),
            "exec" => (true, MsFlags::MS_NOEXEC),
            "noexec" => (false, MsFlags::MS_NOEXEC),
            "sync" => (false, MsFlags::MS_SYNCHRONOUS),
            "async" => (true, MsFlags::MS_SYNCHRONOUS),
            "dirsync" => (false, MsFlags::MS_DIRSYNC),
            "remount" => (false, MsFlags::MS_REMOUNT),
            "mand" => (false, MsFlags::MS_MANDLOCK),
            "nomand" => (true, MsFlags::MS_MANDLOCK),
            "atime" => (true, MsFlags::MS_NOATIME),
            "noatime" => (false, MsFlags::MS_NOATIME),
            "diratime" => (true, MsFlags::MS_NODIRATIME),
            "nodiratime" => (false, MsFlags::MS_NODIRATIME),
            "bind" => (false, MsFlags::MS_BIND),
            "rbind" => (false, MsFlags::MS_BIND | MsFlags::MS_REC),
            "relatime" => (false, MsFlags::MS_RELATIME),
            "norelatime" => (true, MsFlags::MS_RELATIME),
            "strictatime" => (false, MsFlags::MS_STRICTATIME),
            "nostrictatime" => (true, MsFlags::MS_STRICTATIME),
            "lazytime" => (false, MsFlags::MS_LAZYTIME),
            "nolazytime" => (true, MsFlags::MS_LAZYTIME),
            // Runtime-specific extensions without a kernel flag here.
            "tmpcopyup" | "rro" | "rrw" | "idmap" | "ridmap" => {
                tracing::warn!("mount option {o:?} is not supported, ignored");
                continue;
            }
            _ => {
                out.data.push(o.clone());
                continue;
            }
        };
        if clear {
            out.flags.remove(flag);
        } else {
            out.flags.insert(flag);
        }
    }
    out
}

fn propagation_flag(name: &str) -> Option<MsFlags> {
    Some(match name {
        "private" => MsFlags::MS_PRIVATE,
        "rprivate" => MsFlags::MS_PRIVATE | MsFlags::MS_REC,
        "shared" => MsFlags::MS_SHARED,
        "rshared" => MsFlags::MS_SHARED | MsFlags::MS_REC,
        "slave" => MsFlags::MS_SLAVE,
        "rslave" => MsFlags::MS_SLAVE | MsFlags::MS_REC,
        "unbindable" => MsFlags::MS_UNBINDABLE,
        "runbindable" => MsFlags::MS_UNBINDABLE | MsFlags::MS_REC,
        _ => return None,
    })
}

fn is_bind(m: &Mount) -> bool {
    m.typ().as_deref() == Some("bind")
        || m.options()
            .as_deref()
            .unwrap_or_default()
            .iter()
            .any(|o| o == "bind" || o == "rbind")
}

/// pivot_root refuses a rootfs whose parent mount is shared (and binding the rootfs there
/// would propagate to the parent's peers): when it is, make it `flag` (private, or slave so
/// the rootfs bind still receives from the host). As runc, only when shared.
fn unshare_parent_mount(rootfs: &Path, flag: MsFlags) -> Result<()> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let parent = mountinfo
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let mount_point = PathBuf::from(f.get(4)?);
            let shared = f
                .iter()
                .skip(6)
                .take_while(|o| **o != "-")
                .any(|o| o.starts_with("shared:"));
            Some((mount_point, shared))
        })
        .filter(|(mp, _)| rootfs.starts_with(mp))
        .max_by_key(|(mp, _)| mp.as_os_str().len());
    match parent {
        Some((parent, true)) => mount(None::<&str>, &parent, None::<&str>, flag, None::<&str>)
            .ctx(|| format!("unsharing {}, the rootfs's parent mount", shown(&parent))),
        _ => Ok(()),
    }
}

/// An O_PATH fd on `path`, checked to really be inside `rootfs` (no symlink swapped in), and
/// the magic /proc/self/fd path to mount through it.
fn open_target(rootfs: &Path, path: &Path) -> Result<(OwnedFd, PathBuf)> {
    let fd = open(
        path,
        OFlag::O_PATH | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
        Mode::empty(),
    )
    .ctx(|| format!("open {}", shown(path)))?;
    // SAFETY: open returned a fresh fd that nothing else owns.
    let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let proc_path = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
    let real = std::fs::read_link(&proc_path).ctx(|| format!("readlink {}", shown(&proc_path)))?;
    if !real.starts_with(rootfs) {
        return Err(Error::Other(format!(
            "mount target {} resolves outside the rootfs ({})",
            shown(path),
            shown(&real)
        )));
    }
    Ok((fd, proc_path))
}

fn mkdir_all(path: &Path) -> Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(path)
        .ctx(|| format!("mkdir {}", shown(path)))
}

fn mount_entry(ctx: &RootfsContext, m: &Mount) -> Result<()> {
    let typ = m.typ().as_deref().unwrap_or("");
    let opts = parse_options(m.options().as_deref().unwrap_or_default());
    let dest = secure_join(ctx.rootfs, m.destination())?;
    if typ == "cgroup" {
        return mount_cgroup(ctx, &dest, &opts);
    }
    let bind = opts.flags.contains(MsFlags::MS_BIND) || typ == "bind";
    let source = m.source().clone().unwrap_or_else(|| PathBuf::from(typ));
    let source = if bind && source.is_relative() {
        ctx.bundle.join(source)
    } else {
        source
    };
    if bind {
        let meta = std::fs::metadata(&source).ctx(|| format!("source {}", shown(&source)))?;
        if meta.is_dir() {
            mkdir_all(&dest)?;
        } else {
            if let Some(parent) = dest.parent() {
                mkdir_all(parent)?;
            }
            if std::fs::symlink_metadata(&dest).is_err() {
                std::fs::File::create(&dest).ctx(|| format!("create {}", shown(&dest)))?;
            }
        }
    } else {
        mkdir_all(&dest)?;
    }
    let (fd, via) = open_target(ctx.rootfs, &dest)?;
    let data = opts.data.join(",");
    let data = (!data.is_empty()).then_some(data.as_str());
    if bind {
        let rec = opts.flags & MsFlags::MS_REC;
        mount(
            Some(&source),
            &via,
            None::<&str>,
            MsFlags::MS_BIND | rec,
            None::<&str>,
        )
        .ctx(|| "bind".into())?;
        drop(fd);
        let extra = opts.flags - (MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_REMOUNT);
        if !extra.is_empty() {
            let keep = locked_flags(&dest);
            mount(
                None::<&str>,
                &dest,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | rec | extra | keep,
                None::<&str>,
            )
            .ctx(|| "remount with options".into())?;
        }
    } else {
        let flags = opts.flags - MsFlags::MS_REMOUNT;
        let result = mount(Some(&source), &via, Some(typ), flags, data);
        if typ == "sysfs" && result == Err(nix::errno::Errno::EPERM) {
            // A user namespace without its own network namespace may not mount sysfs: show
            // the host's, read-only.
            mount(
                Some("/sys"),
                &via,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .ctx(|| "bind /sys".into())?;
            drop(fd);
            return remount_bind(&dest, flags | MsFlags::MS_RDONLY);
        }
        if let Err(nix::errno::Errno::EPERM | nix::errno::Errno::EBUSY) = result {
            // Read-only sysfs/proc mounts can be refused outright in some namespaces: mount
            // read-write, then remount read-only.
            if flags.contains(MsFlags::MS_RDONLY) {
                mount(
                    Some(&source),
                    &via,
                    Some(typ),
                    flags - MsFlags::MS_RDONLY,
                    data,
                )
                .ctx(|| typ.to_string())?;
                drop(fd);
                mount(
                    None::<&str>,
                    &dest,
                    None::<&str>,
                    MsFlags::MS_REMOUNT | flags,
                    data,
                )
                .ctx(|| "remount read-only".into())?;
            } else {
                result.ctx(|| typ.to_string())?;
            }
        } else {
            result.ctx(|| typ.to_string())?;
        }
    }
    for p in &opts.propagation {
        mount(None::<&str>, &dest, None::<&str>, *p, None::<&str>)
            .ctx(|| "set propagation".into())?;
    }
    Ok(())
}

/// `type: cgroup` on a v1 or hybrid host: a tmpfs with the container's own directory of each
/// hierarchy bind mounted in (what the container would see with a cgroup namespace).
fn mount_cgroup(ctx: &RootfsContext, dest: &Path, opts: &MountOptions) -> Result<()> {
    mkdir_all(dest)?;
    let flags = opts.flags - (MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_REMOUNT);
    let base = flags - MsFlags::MS_RDONLY;
    let v2_only = ctx.cgroup_binds.len() == 1 && ctx.cgroup_binds[0].name == "cgroup";
    if v2_only {
        let (_fd, via) = open_target(ctx.rootfs, dest)?;
        mount(
            Some(&ctx.cgroup_binds[0].source),
            &via,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .ctx(|| "bind the cgroup2 directory".into())?;
        return remount_bind(dest, flags);
    }
    let (fd, via) = open_target(ctx.rootfs, dest)?;
    mount(Some("tmpfs"), &via, Some("tmpfs"), base, Some("mode=755"))
        .ctx(|| "tmpfs for cgroups".into())?;
    drop(fd);
    for bind in ctx.cgroup_binds {
        let sub = dest.join(&bind.name);
        mkdir_all(&sub)?;
        mount(
            Some(&bind.source),
            &sub,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .ctx(|| format!("bind {}", shown(&bind.source)))?;
        remount_bind(&sub, flags)?;
        if bind.name.contains(',') {
            for part in bind.name.split(',') {
                let link = dest.join(part);
                if std::fs::symlink_metadata(&link).is_err() {
                    symlink(&bind.name, &link).ctx(|| format!("symlink {}", shown(&link)))?;
                }
            }
        }
    }
    if flags.contains(MsFlags::MS_RDONLY) {
        mount(
            None::<&str>,
            dest,
            None::<&str>,
            MsFlags::MS_REMOUNT | flags,
            Some("mode=755"),
        )
        .ctx(|| "remount the cgroup tmpfs read-only".into())?;
    }
    Ok(())
}

fn remount_bind(path: &Path, flags: MsFlags) -> Result<()> {
    if flags.is_empty() {
        return Ok(());
    }
    mount(
        None::<&str>,
        path,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | flags | locked_flags(path),
        None::<&str>,
    )
    .ctx(|| format!("remount {}", shown(path)))
}

/// nosuid/nodev/noexec already on a mount: a bind remount must keep them (in a user namespace
/// the kernel refuses to clear them).
fn locked_flags(path: &Path) -> MsFlags {
    let Ok(st) = nix::sys::statvfs::statvfs(path) else {
        return MsFlags::empty();
    };
    use nix::sys::statvfs::FsFlags;
    let f = st.flags();
    let mut out = MsFlags::empty();
    for (fs, ms) in [
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
    ] {
        if f.contains(fs) {
            out |= ms;
        }
    }
    out
}

const DEFAULT_DEVICES: &[(&str, u64, u64)] = &[
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];

fn create_default_devices(ctx: &RootfsContext) -> Result<()> {
    for (name, major, minor) in DEFAULT_DEVICES {
        let dest = device_path(ctx.rootfs, &Path::new("/dev").join(name))?;
        make_node(
            ctx,
            &dest,
            SFlag::S_IFCHR,
            *major,
            *minor,
            0o666,
            Some((0, 0)),
        )?;
    }
    Ok(())
}

fn create_dev_links(rootfs: &Path) -> Result<()> {
    let dev = secure_join(rootfs, Path::new("/dev"))?;
    let mut links = vec![
        ("/proc/self/fd", "fd"),
        ("/proc/self/fd/0", "stdin"),
        ("/proc/self/fd/1", "stdout"),
        ("/proc/self/fd/2", "stderr"),
    ];
    if dev.join("pts/ptmx").exists() {
        links.push(("pts/ptmx", "ptmx"));
    }
    for (target, name) in links {
        let link = dev.join(name);
        if name == "ptmx" {
            let _ = std::fs::remove_file(&link);
        }
        if std::fs::symlink_metadata(&link).is_err() {
            symlink(target, &link).ctx(|| format!("symlink {}", shown(&link)))?;
        }
    }
    Ok(())
}

fn create_device(ctx: &RootfsContext, dev: &LinuxDevice) -> Result<()> {
    let kind = match dev.typ() {
        LinuxDeviceType::C | LinuxDeviceType::U => SFlag::S_IFCHR,
        LinuxDeviceType::B => SFlag::S_IFBLK,
        LinuxDeviceType::P => SFlag::S_IFIFO,
        LinuxDeviceType::A => {
            return Err(Error::Spec(format!(
                "linux.devices {}: type 'a' is not a device node",
                shown(dev.path())
            )))
        }
    };
    if !dev.path().starts_with("/dev") {
        return Err(Error::Spec(format!(
            "linux.devices {}: device paths must be under /dev",
            shown(dev.path())
        )));
    }
    let dest = device_path(ctx.rootfs, dev.path())?;
    let owner = Some((dev.uid().unwrap_or(0), dev.gid().unwrap_or(0)));
    make_node(
        ctx,
        &dest,
        kind,
        dev.major() as u64,
        dev.minor() as u64,
        dev.file_mode().unwrap_or(0o666),
        owner,
    )
}

/// Where the node for `path` goes: its parent resolved inside the rootfs, the last component
/// not followed. A rootfs entry already there (say `/dev/null` as a symlink to anywhere) is
/// replaced by the node itself, never written through.
fn device_path(rootfs: &Path, path: &Path) -> Result<PathBuf> {
    let name = path
        .file_name()
        .ok_or_else(|| Error::Spec(format!("device path {}: no file name", shown(path))))?;
    let parent = secure_join(rootfs, path.parent().unwrap_or(Path::new("/")))?;
    Ok(parent.join(name))
}

/// mknod a device node, or (in a user namespace, where mknod is refused) bind mount the
/// host's node of the same path.
fn make_node(
    ctx: &RootfsContext,
    dest: &Path,
    kind: SFlag,
    major: u64,
    minor: u64,
    mode: u32,
    owner: Option<(u32, u32)>,
) -> Result<()> {
    if let Some(parent) = dest.parent() {
        mkdir_all(parent)?;
    }
    let _ = std::fs::remove_file(dest);
    if ctx.in_userns {
        let host = Path::new("/").join(dest.strip_prefix(ctx.rootfs).unwrap_or(dest));
        std::fs::File::create(dest).ctx(|| format!("create {}", shown(dest)))?;
        let (_fd, via) = open_target(ctx.rootfs, dest)?;
        return mount(
            Some(&host),
            &via,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .ctx(|| format!("bind {} from the host", shown(&host)));
    }
    mknod(
        dest,
        kind,
        Mode::from_bits_truncate(mode),
        makedev(major, minor),
    )
    .ctx(|| format!("mknod {}", shown(dest)))?;
    // mknod applies the umask: set the exact mode.
    nix::sys::stat::fchmodat(
        None,
        dest,
        Mode::from_bits_truncate(mode),
        nix::sys::stat::FchmodatFlags::NoFollowSymlink,
    )
    .ctx(|| format!("chmod {}", shown(dest)))?;
    if let Some((uid, gid)) = owner {
        chown(dest, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))
            .ctx(|| format!("chown {}", shown(dest)))?;
    }
    Ok(())
}

/// Hide a path: /dev/null over a file, an empty read-only tmpfs over a directory.
fn mask_path(path: &Path) -> Result<()> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(_) => return Ok(()),
    };
    if meta.is_dir() {
        return mount(
            Some("tmpfs"),
            path,
            Some("tmpfs"),
            MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .ctx(|| format!("masking {}", shown(path)));
    }
    // Only a real /dev/null (char 1:3) may be used to mask.
    let null = std::fs::metadata("/dev/null").ctx(|| "stat /dev/null".into())?;
    if !null.file_type().is_char_device() || null.rdev() != makedev(1, 3) {
        return Err(Error::Other(
            "/dev/null is not the null device (1:3)".into(),
        ));
    }
    match mount(
        Some("/dev/null"),
        path,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    ) {
        Ok(()) | Err(nix::errno::Errno::ENOENT) => Ok(()),
        Err(e) => Err(e).ctx(|| format!("masking {}", shown(path))),
    }
}

fn readonly_path(path: &Path) -> Result<()> {
    if std::fs::symlink_metadata(path).is_err() {
        return Ok(());
    }
    mount(
        Some(path),
        path,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .ctx(|| format!("bind {} read-only", shown(path)))?;
    mount(
        None::<&str>,
        path,
        None::<&str>,
        MsFlags::MS_BIND
            | MsFlags::MS_REMOUNT
            | MsFlags::MS_RDONLY
            | MsFlags::MS_REC
            | locked_flags(path),
        None::<&str>,
    )
    .ctx(|| format!("remount {} read-only", shown(path)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secure_join_keeps_symlinks_inside() {
        let dir = std::env::temp_dir().join(format!("nestbox-sj-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("a")).expect("mkdir");
        symlink("/etc", dir.join("abs")).expect("link");
        symlink("../../../..", dir.join("a/up")).expect("link");
        assert_eq!(
            secure_join(&dir, Path::new("/abs/passwd")).expect("join"),
            dir.join("etc/passwd")
        );
        assert_eq!(
            secure_join(&dir, Path::new("a/up/x")).expect("join"),
            dir.join("x")
        );
        assert_eq!(
            secure_join(&dir, Path::new("/../../y")).expect("join"),
            dir.join("y")
        );
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn mountinfo_escapes_spaces_tabs_newlines_and_backslashes() {
        assert_eq!(
            escape_mountinfo(Path::new("/a b\tc\nd\\e")),
            "/a\\040b\\011c\\012d\\134e"
        );
    }

    #[test]
    fn options_split_into_flags_propagation_and_data() {
        let o: Vec<String> = ["nosuid", "ro", "rslave", "mode=755", "rw", "size=1k"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let p = parse_options(&o);
        assert_eq!(p.flags, MsFlags::MS_NOSUID);
        assert_eq!(p.propagation, vec![MsFlags::MS_SLAVE | MsFlags::MS_REC]);
        assert_eq!(p.data, vec!["mode=755", "size=1k"]);
    }
}
