//! cgroup management for nestbox: detects the v1, v2 and hybrid layouts from
//! /proc/self/mountinfo, resolves a container's directory in every mounted hierarchy, creates
//! it, writes `linux.resources`, moves tasks in, freezes/thaws, reads statistics and removes it.
//!
//! The hybrid layout (v1 controllers plus a cgroup2 mount holding only a few controllers, e.g.
//! `hugetlb` at `/sys/fs/cgroup/unified`) is a first-class case: every controller is written in
//! whichever hierarchy actually holds it.

pub mod bpf;
mod devices;
mod fs;
pub mod mountinfo;
mod oom;
mod stats;
mod v1;
mod v2;

use std::path::{Path, PathBuf};
use std::time::Duration;

use oci_spec::runtime::LinuxResources;
use serde::{Deserialize, Serialize};

pub use devices::default_allowed_devices;
pub use mountinfo::Layout;
pub use oom::OomNotifier;
pub use stats::{
    BlkioEntry, BlkioStats, CpuStats, CpuUsage, HugetlbStats, MemoryEntry, MemoryStats, PidsStats,
    Stats, Throttling,
};

/// Errors name the resource field and the cgroup file involved.
#[derive(thiserror::Error, Debug)]
pub enum Error {
    #[error(
        "no cgroup filesystem is mounted (nothing of type cgroup/cgroup2 in /proc/self/mountinfo)"
    )]
    NoCgroupMount,
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{field}: writing {value:?} to {path}: {source}")]
    Write {
        field: String,
        path: PathBuf,
        value: String,
        source: std::io::Error,
    },
    #[error("parsing {path}: {reason}")]
    Parse { path: PathBuf, reason: String },
    #[error("creating cgroup directory {path}: {source}")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("removing cgroup directory {path}: {source}")]
    Remove {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid cgroupsPath {path:?}: {reason}")]
    InvalidPath { path: String, reason: String },
    #[error("systemd cgroup driver requested (--systemd-cgroup) but systemd is not running on this host (no /run/systemd/system); drop --systemd-cgroup to use cgroupfs")]
    SystemdUnsupported,
    #[error("{field}: invalid value: {reason}")]
    InvalidValue { field: String, reason: String },
    #[error(
        "{field}: the {controller} controller is not available in any mounted cgroup hierarchy"
    )]
    MissingController { field: String, controller: String },
    #[error("{field}: not supported with {layout}: {reason}")]
    Unsupported {
        field: String,
        layout: Layout,
        reason: String,
    },
    #[error("freezer: {path} did not reach {state} within {timeout:?}")]
    FreezeTimeout {
        path: PathBuf,
        state: &'static str,
        timeout: Duration,
    },
}

/// What the cgroup side of the runtime supports, for `nestbox features` (runtime-spec
/// features.json "linux.cgroup"): both versions (and hybrid hosts), no systemd driver (the
/// "slice:prefix:name" form is mapped to a cgroupfs path), rdma limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Features {
    pub v1: bool,
    pub v2: bool,
    pub systemd: bool,
    pub systemd_user: bool,
    pub rdma: bool,
}

pub fn features() -> Features {
    Features {
        v1: true,
        v2: true,
        systemd: false,
        systemd_user: false,
        rdma: true,
    }
}

/// The cgroup layout of this host, from /proc/self/mountinfo (never assumed).
pub fn detect() -> Result<Layout, Error> {
    let text = read_proc("/proc/self/mountinfo")?;
    mountinfo::layout_of(&mountinfo::parse_mountinfo(&text)).ok_or(Error::NoCgroupMount)
}

fn read_proc(path: &str) -> Result<String, Error> {
    std::fs::read_to_string(path).map_err(|source| Error::Read {
        path: PathBuf::from(path),
        source,
    })
}

/// One mounted hierarchy and the container's directory in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hierarchy {
    /// true for the cgroup2 tree.
    pub v2: bool,
    /// v1: controllers bound to the hierarchy (`cpu`, `name=systemd`, …). v2: the controllers
    /// the root of the tree offers (`cgroup.controllers`), read at resolve time.
    pub controllers: Vec<String>,
    /// Where the hierarchy is mounted.
    pub mount_point: PathBuf,
    /// The container's directory.
    pub dir: PathBuf,
}

impl Hierarchy {
    fn has(&self, controller: &str) -> bool {
        self.controllers.iter().any(|c| c == controller)
    }
}

/// A container's cgroup: resolved absolute directories per hierarchy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cgroup {
    layout: Layout,
    hierarchies: Vec<Hierarchy>,
}

/// The relative or absolute path requested, split into validated components.
enum Requested {
    Absolute(Vec<String>),
    Relative(Vec<String>),
}

fn components(original: &str, path: &str) -> Result<Vec<String>, Error> {
    let mut out = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                return Err(Error::InvalidPath {
                    path: original.to_owned(),
                    reason: "\"..\" is not allowed".to_owned(),
                })
            }
            c => out.push(c.to_owned()),
        }
    }
    Ok(out)
}

/// "a-b-c.slice" → ["a.slice", "a-b.slice", "a-b-c.slice"] as systemd lays slices out.
fn expand_slice(original: &str, slice: &str) -> Result<Vec<String>, Error> {
    let bad = |reason: &str| Error::InvalidPath {
        path: original.to_owned(),
        reason: reason.to_owned(),
    };
    if slice.is_empty() || slice == "-.slice" {
        return Ok(Vec::new());
    }
    let Some(stem) = slice.strip_suffix(".slice") else {
        return Err(bad("the slice must end in .slice"));
    };
    if slice.contains('/') {
        return Err(bad("the slice must not contain '/'"));
    }
    let mut out = Vec::new();
    let mut prefix = String::new();
    for part in stem.split('-') {
        if part.is_empty() {
            return Err(bad("empty component in slice name"));
        }
        if !prefix.is_empty() {
            prefix.push('-');
        }
        prefix.push_str(part);
        out.push(format!("{prefix}.slice"));
    }
    Ok(out)
}

fn requested_path(
    cgroups_path: Option<&str>,
    container_id: &str,
    systemd: bool,
    systemd_running: bool,
) -> Result<Requested, Error> {
    if systemd {
        if !systemd_running {
            return Err(Error::SystemdUnsupported);
        }
        let spec = cgroups_path.unwrap_or("");
        let (slice, prefix, name) = if spec.is_empty() {
            ("system.slice", "nestbox", container_id)
        } else {
            let parts: Vec<&str> = spec.split(':').collect();
            match parts.as_slice() {
                [s, p, n] => (*s, *p, *n),
                _ => {
                    return Err(Error::InvalidPath {
                        path: spec.to_owned(),
                        reason: "with --systemd-cgroup the path must be \"slice:prefix:name\""
                            .to_owned(),
                    })
                }
            }
        };
        let slice = if slice.is_empty() {
            "system.slice"
        } else {
            slice
        };
        let mut comps = expand_slice(spec, slice)?;
        let unit = if name.ends_with(".slice") {
            name.to_owned()
        } else if prefix.is_empty() {
            format!("{name}.scope")
        } else {
            format!("{prefix}-{name}.scope")
        };
        comps.extend(components(spec, &unit)?);
        return Ok(Requested::Absolute(comps));
    }
    let named = |p: &str| -> Result<Vec<String>, Error> {
        let comps = components(p, p)?;
        if comps.is_empty() {
            // "/" or "." would be the hierarchy root or the caller's own cgroup.
            return Err(Error::InvalidPath {
                path: p.to_owned(),
                reason: "must name a cgroup below the hierarchy root".to_owned(),
            });
        }
        Ok(comps)
    };
    match cgroups_path {
        Some(p) if p.starts_with('/') => Ok(Requested::Absolute(named(p)?)),
        Some(p) if !p.is_empty() => Ok(Requested::Relative(named(p)?)),
        _ => {
            let comps = components(container_id, container_id)?;
            if comps.len() != 1 {
                return Err(Error::InvalidPath {
                    path: container_id.to_owned(),
                    reason: "the container id must be a single path component".to_owned(),
                });
            }
            Ok(Requested::Relative(
                std::iter::once("nestbox".to_owned()).chain(comps).collect(),
            ))
        }
    }
}

/// The controllers a cgroup2 directory offers (empty if unreadable).
fn v2_controllers(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("cgroup.controllers"))
        .map(|s| s.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default()
}

/// Where a cgroup path as /proc/<pid>/cgroup shows it lies under a mount of its hierarchy. A
/// bind of a sub-tree shows its root in mountinfo; the process's path is relative to the
/// hierarchy, so that root is stripped.
fn mount_dir(m: &mountinfo::CgroupMount, path: &str) -> PathBuf {
    let inside = if m.root == "/" {
        path
    } else {
        path.strip_prefix(m.root.as_str()).unwrap_or(path)
    };
    let mut dir = m.mount_point.clone();
    dir.extend(inside.split('/').filter(|c| !c.is_empty() && *c != ".."));
    dir
}

/// The rmdir retry budget while tasks drain out of a cgroup.
const REMOVE_ATTEMPTS: u32 = 20;
const REMOVE_WAIT: Duration = Duration::from_millis(50);

impl Cgroup {
    /// Resolve (no filesystem changes). `cgroups_path`: the spec's linux.cgroupsPath or None.
    /// Absolute: used as is under every hierarchy root. Relative: nested under the calling
    /// process's own cgroup (per hierarchy, from /proc/self/cgroup; on a pure v2 host under
    /// its parent, as runc does, since the own cgroup holds processes). None: "nestbox/<id>",
    /// relative. systemd=true: "slice:prefix:name" mapped to the path systemd would use, or
    /// Error::SystemdUnsupported when systemd is not running.
    pub fn resolve(
        cgroups_path: Option<&str>,
        container_id: &str,
        systemd: bool,
    ) -> Result<Cgroup, Error> {
        let mountinfo = read_proc("/proc/self/mountinfo")?;
        let own = read_proc("/proc/self/cgroup")?;
        let systemd_running = Path::new("/run/systemd/system").is_dir();
        Self::resolve_from(
            &mountinfo,
            &own,
            v2_controllers,
            cgroups_path,
            container_id,
            systemd,
            systemd_running,
        )
    }

    /// [`Cgroup::resolve`] on given mountinfo and /proc/self/cgroup texts (for tests).
    pub fn resolve_from(
        mountinfo_text: &str,
        proc_cgroup_text: &str,
        controllers_of: impl Fn(&Path) -> Vec<String>,
        cgroups_path: Option<&str>,
        container_id: &str,
        systemd: bool,
        systemd_running: bool,
    ) -> Result<Cgroup, Error> {
        let mounts = mountinfo::parse_mountinfo(mountinfo_text);
        let layout = mountinfo::layout_of(&mounts).ok_or(Error::NoCgroupMount)?;
        let procs = mountinfo::parse_proc_cgroup(proc_cgroup_text);
        let requested = requested_path(cgroups_path, container_id, systemd, systemd_running)?;
        let hierarchies = mounts
            .iter()
            .map(|m| {
                let (base, comps) = match &requested {
                    Requested::Absolute(c) => (m.mount_point.clone(), c),
                    Requested::Relative(c) => {
                        let mut own = mountinfo::own_path(m, &procs);
                        if m.v2 && layout == Layout::V2 {
                            // As runc: on a pure v2 host the caller's own cgroup most likely
                            // has processes, so controllers cannot be enabled for a child of
                            // it ("no internal processes"); nest under its parent instead.
                            own = own.rsplit_once('/').map_or("/", |(parent, _)| {
                                if parent.is_empty() {
                                    "/"
                                } else {
                                    parent
                                }
                            });
                        }
                        (mount_dir(m, own), c)
                    }
                };
                let mut dir = base;
                dir.extend(comps.iter());
                Hierarchy {
                    v2: m.v2,
                    controllers: if m.v2 {
                        controllers_of(&m.mount_point)
                    } else {
                        m.controllers.clone()
                    },
                    mount_point: m.mount_point.clone(),
                    dir,
                }
            })
            .collect();
        Ok(Cgroup {
            layout,
            hierarchies,
        })
    }

    /// The cgroup a running process is in, in every mounted hierarchy (from /proc/<pid>/cgroup),
    /// whoever created it: what a shim needs for statistics and OOM events of a container that
    /// any runc-compatible runtime started.
    pub fn of_pid(pid: u32) -> Result<Cgroup, Error> {
        let mountinfo = read_proc("/proc/self/mountinfo")?;
        let procs = read_proc(&format!("/proc/{pid}/cgroup"))?;
        Self::of_process_from(&mountinfo, &procs, v2_controllers)
    }

    /// [`Cgroup::of_pid`] on given mountinfo and /proc/<pid>/cgroup texts (for tests).
    pub fn of_process_from(
        mountinfo_text: &str,
        proc_cgroup_text: &str,
        controllers_of: impl Fn(&Path) -> Vec<String>,
    ) -> Result<Cgroup, Error> {
        let mounts = mountinfo::parse_mountinfo(mountinfo_text);
        let layout = mountinfo::layout_of(&mounts).ok_or(Error::NoCgroupMount)?;
        let procs = mountinfo::parse_proc_cgroup(proc_cgroup_text);
        let hierarchies = mounts
            .iter()
            .map(|m| Hierarchy {
                v2: m.v2,
                controllers: if m.v2 {
                    controllers_of(&m.mount_point)
                } else {
                    m.controllers.clone()
                },
                mount_point: m.mount_point.clone(),
                dir: mount_dir(m, mountinfo::own_path(m, &procs)),
            })
            .collect();
        Ok(Cgroup {
            layout,
            hierarchies,
        })
    }

    /// The host layout this cgroup was resolved on.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// Every hierarchy and the container's directory in it.
    pub fn hierarchies(&self) -> &[Hierarchy] {
        &self.hierarchies
    }

    /// The hierarchy holding `controller`: a v1 one first, else the cgroup2 tree.
    fn hierarchy_of(&self, controller: &str) -> Option<&Hierarchy> {
        self.hierarchies
            .iter()
            .find(|h| !h.v2 && h.has(controller))
            .or_else(|| self.hierarchies.iter().find(|h| h.v2 && h.has(controller)))
    }

    fn unified(&self) -> Option<&Hierarchy> {
        self.hierarchies.iter().find(|h| h.v2)
    }

    /// The directory of one controller (v1 name such as "memory", "cpu", "name=systemd" or
    /// "systemd"; on the cgroup2 tree any controller it holds). "" or "unified" gives the
    /// cgroup2 directory. On a pure v2 host every name gives the single directory.
    pub fn path(&self, controller: &str) -> Option<PathBuf> {
        if controller.is_empty() || controller == "unified" {
            return self.unified().map(|h| h.dir.clone());
        }
        if self.layout == Layout::V2 {
            return self.unified().map(|h| h.dir.clone());
        }
        if controller == "systemd" {
            return self.path("name=systemd");
        }
        self.hierarchy_of(controller).map(|h| h.dir.clone())
    }

    /// mkdir -p in every mounted hierarchy. Idempotent. v1 cpuset directories get their
    /// parent's cpus/mems copied down; on the cgroup2 tree the available controllers are
    /// enabled in every ancestor's cgroup.subtree_control (warnings only when refused).
    pub fn create(&self) -> Result<(), Error> {
        for h in &self.hierarchies {
            if h.v2 {
                v2::create(h)?;
            } else {
                std::fs::create_dir_all(&h.dir).map_err(|source| Error::Create {
                    path: h.dir.clone(),
                    source,
                })?;
                if h.has("cpuset") {
                    v1::copy_cpuset_down(&h.mount_point, &h.dir)?;
                }
            }
        }
        Ok(())
    }

    /// Write every supported field of linux.resources. Fields left out (None) are not touched,
    /// so this also serves `update` with partial resources.
    pub fn apply(&self, resources: &LinuxResources) -> Result<(), Error> {
        if let Some(mem) = resources.memory() {
            match self.hierarchy_of("memory") {
                Some(h) if !h.v2 => v1::set_memory(&h.dir, mem)?,
                Some(h) => v2::set_memory(&h.dir, mem)?,
                None if v1::memory_is_empty(mem) => {}
                None => return Err(self.missing("memory", "memory")),
            }
        }
        if let Some(cpu) = resources.cpu() {
            match self.hierarchy_of("cpu") {
                Some(h) if !h.v2 => v1::set_cpu(&h.dir, cpu)?,
                Some(h) => v2::set_cpu(&h.dir, cpu)?,
                None if v1::cpu_is_empty(cpu) => {}
                None => return Err(self.missing("cpu", "cpu")),
            }
            let non_empty = |v: &Option<String>| v.as_deref().is_some_and(|s| !s.is_empty());
            if non_empty(cpu.cpus()) || non_empty(cpu.mems()) {
                match self.hierarchy_of("cpuset") {
                    Some(h) => v1::set_cpuset(&h.dir, cpu)?,
                    None => return Err(self.missing("cpu.cpus", "cpuset")),
                }
            }
        }
        if let Some(pids) = resources.pids() {
            let h = self
                .hierarchy_of("pids")
                .ok_or_else(|| self.missing("pids.limit", "pids"))?;
            let limit = pids.limit();
            let value = if limit <= 0 {
                "max".to_owned()
            } else {
                limit.to_string()
            };
            fs::write("pids.limit", &h.dir, "pids.max", &value)?;
        }
        if let Some(blkio) = resources.block_io() {
            match self
                .hierarchy_of("blkio")
                .or_else(|| self.hierarchy_of("io"))
            {
                Some(h) if !h.v2 => v1::set_blkio(&h.dir, blkio)?,
                Some(h) => v2::set_io(&h.dir, blkio)?,
                None if v1::blkio_is_empty(blkio) => {}
                None => return Err(self.missing("blockIO", "blkio/io")),
            }
        }
        if let Some(limits) = resources.hugepage_limits() {
            if !limits.is_empty() {
                let h = self
                    .hierarchy_of("hugetlb")
                    .ok_or_else(|| self.missing("hugepageLimits", "hugetlb"))?;
                for l in limits {
                    if h.v2 {
                        v2::set_hugetlb(&h.dir, l)?;
                    } else {
                        v1::set_hugetlb(&h.dir, l)?;
                    }
                }
            }
        }
        if let Some(rules) = resources.devices() {
            match (self.hierarchy_of("devices"), self.unified()) {
                (Some(h), _) => devices::set_v1(&h.dir, rules)?,
                // cgroup v2 has no devices files: a BPF program attached to the directory.
                (None, Some(u)) => devices::set_v2(&u.dir, rules)?,
                (None, None) => return Err(self.missing("devices", "devices")),
            }
        }
        if let Some(net) = resources.network() {
            if let Some(class_id) = net.class_id() {
                let h = self
                    .hierarchy_of("net_cls")
                    .ok_or_else(|| self.missing("network.classID", "net_cls"))?;
                fs::write(
                    "network.classID",
                    &h.dir,
                    "net_cls.classid",
                    &class_id.to_string(),
                )?;
            }
            if let Some(prios) = net.priorities() {
                if !prios.is_empty() {
                    let h = self
                        .hierarchy_of("net_prio")
                        .ok_or_else(|| self.missing("network.priorities", "net_prio"))?;
                    for p in prios {
                        fs::write(
                            "network.priorities",
                            &h.dir,
                            "net_prio.ifpriomap",
                            &format!("{} {}", p.name(), p.priority()),
                        )?;
                    }
                }
            }
        }
        if let Some(rdma) = resources.rdma() {
            if !rdma.is_empty() {
                let h = self
                    .hierarchy_of("rdma")
                    .ok_or_else(|| self.missing("rdma", "rdma"))?;
                let mut devices: Vec<_> = rdma.iter().collect();
                devices.sort_by(|a, b| a.0.cmp(b.0));
                for (device, limit) in devices {
                    let n = |v: Option<u32>| v.map_or("max".to_owned(), |v| v.to_string());
                    let value = format!(
                        "{device} hca_handle={} hca_object={}",
                        n(limit.hca_handles()),
                        n(limit.hca_objects())
                    );
                    fs::write(&format!("rdma[{device:?}]"), &h.dir, "rdma.max", &value)?;
                }
            }
        }
        if let Some(unified) = resources.unified() {
            if !unified.is_empty() {
                let h = self.unified().ok_or_else(|| Error::Unsupported {
                    field: "unified".to_owned(),
                    layout: self.layout,
                    reason: "no cgroup2 hierarchy is mounted".to_owned(),
                })?;
                v2::set_unified(&h.dir, unified)?;
            }
        }
        Ok(())
    }

    fn missing(&self, field: &str, controller: &str) -> Error {
        Error::MissingController {
            field: field.to_owned(),
            controller: controller.to_owned(),
        }
    }

    /// Move a pid into every hierarchy (cgroup.procs).
    pub fn add_task(&self, pid: i32) -> Result<(), Error> {
        for h in &self.hierarchies {
            fs::write("cgroup.procs", &h.dir, "cgroup.procs", &pid.to_string())?;
        }
        Ok(())
    }

    /// Move the calling thread into every v1 hierarchy by writing "0" to `tasks`: for a
    /// single-threaded process (a freshly cloned container process, before it runs anything
    /// else) that is the whole process. Unlike a write to cgroup.procs, which takes the
    /// global cgroup_threadgroup_rwsem for writing and waits out an RCU grace period
    /// (about 7-13 ms on a 2-CPU VM, the largest single cost of `run`), the kernel migrates
    /// the caller alone without that lock (~0.1 ms). The v2 tree is left to
    /// [`Cgroup::v2_dir`] (clone3's CLONE_INTO_CGROUP) or [`Cgroup::add_task_v2`].
    pub fn enter_v1_self(&self) -> Result<(), Error> {
        for h in self.hierarchies.iter().filter(|h| !h.v2) {
            fs::write("tasks", &h.dir, "tasks", "0")?;
        }
        Ok(())
    }

    /// The container's directory in the cgroup2 tree (v2 or hybrid), if any.
    pub fn v2_dir(&self) -> Option<&Path> {
        self.hierarchies
            .iter()
            .find(|h| h.v2)
            .map(|h| h.dir.as_path())
    }

    /// Move a pid into the cgroup2 tree only (cgroup.procs), when it was not born there.
    pub fn add_task_v2(&self, pid: i32) -> Result<(), Error> {
        for h in self.hierarchies.iter().filter(|h| h.v2) {
            fs::write("cgroup.procs", &h.dir, "cgroup.procs", &pid.to_string())?;
        }
        Ok(())
    }

    /// All pids in the container's cgroup and its sub-cgroups.
    pub fn pids(&self) -> Result<Vec<i32>, Error> {
        let h = self
            .hierarchy_of("pids")
            .or_else(|| self.hierarchy_of("memory"))
            .or_else(|| self.unified())
            .or_else(|| self.hierarchies.first())
            .ok_or(Error::NoCgroupMount)?;
        let mut out = Vec::new();
        collect_pids(&h.dir, &mut out)?;
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }

    /// Freeze every task; returns once the kernel reports the cgroup frozen.
    pub fn freeze(&self) -> Result<(), Error> {
        match self.freezer()? {
            (dir, false) => v1::freeze(dir, true),
            (dir, true) => v2::freeze(dir, true),
        }
    }

    /// Thaw; returns once the kernel reports the cgroup thawed.
    pub fn thaw(&self) -> Result<(), Error> {
        match self.freezer()? {
            (dir, false) => v1::freeze(dir, false),
            (dir, true) => v2::freeze(dir, false),
        }
    }

    pub fn is_frozen(&self) -> Result<bool, Error> {
        match self.freezer()? {
            (dir, false) => Ok(fs::read(dir, "freezer.state")?.trim() == "FROZEN"),
            (dir, true) => v2::is_frozen(dir),
        }
    }

    /// The v1 freezer directory, or the cgroup2 directory (cgroup.freeze is a core file, so
    /// the unified tree of a hybrid host can freeze too).
    fn freezer(&self) -> Result<(&Path, bool), Error> {
        if let Some(h) = self.hierarchies.iter().find(|h| !h.v2 && h.has("freezer")) {
            return Ok((&h.dir, false));
        }
        match self.unified() {
            Some(h) => Ok((&h.dir, true)),
            None => Err(self.missing("freezer", "freezer")),
        }
    }

    /// Remove the directories (and sub-cgroups the container made), rmdir retried briefly
    /// while tasks drain; kills nothing. Missing directories are fine. Idempotent.
    pub fn destroy(&self) -> Result<(), Error> {
        let mut first_err = None;
        for h in &self.hierarchies {
            if h.dir == h.mount_point {
                continue;
            }
            if let Err(e) = remove_with_retry(&h.dir) {
                tracing::warn!(error = %e, "cgroup removal failed");
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Statistics shaped like runc's `events --stats` data.
    pub fn stats(&self) -> Result<Stats, Error> {
        stats::collect(self)
    }

    /// OOM kills so far (memory.oom_control oom_kill on v1, memory.events oom_kill on v2).
    pub fn oom_kill_count(&self) -> Result<u64, Error> {
        match self.hierarchy_of("memory") {
            Some(h) if !h.v2 => Ok(fs::read_kv_opt(&h.dir, "memory.oom_control")?
                .get("oom_kill")
                .copied()
                .unwrap_or(0)),
            Some(h) => Ok(fs::read_kv_opt(&h.dir, "memory.events")?
                .get("oom_kill")
                .copied()
                .unwrap_or(0)),
            None => Err(self.missing("oom_kill", "memory")),
        }
    }
}

fn collect_pids(dir: &Path, out: &mut Vec<i32>) -> Result<(), Error> {
    let Some(text) = fs::read_opt(dir, "cgroup.procs")? else {
        return Ok(());
    };
    out.extend(text.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(Error::Read {
                path: dir.to_owned(),
                source,
            })
        }
    };
    for entry in entries.flatten() {
        if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            collect_pids(&entry.path(), out)?;
        }
    }
    Ok(())
}

/// rmdir children first (cgroup directories hold only kernel files, so rmdir works on them).
fn remove_tree(dir: &Path) -> std::io::Result<()> {
    match std::fs::read_dir(dir) {
        Ok(entries) => {
            for entry in entries.flatten() {
                if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    remove_tree(&entry.path())?;
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    }
    match std::fs::remove_dir(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

fn remove_with_retry(dir: &Path) -> Result<(), Error> {
    let mut attempt = 0;
    loop {
        match remove_tree(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && attempt + 1 < REMOVE_ATTEMPTS => {
                attempt += 1;
                std::thread::sleep(REMOVE_WAIT);
            }
            Err(source) => {
                return Err(Error::Remove {
                    path: dir.to_owned(),
                    source,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests;
