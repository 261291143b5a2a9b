//! Where the cgroup hierarchies are mounted (from /proc/self/mountinfo) and where the calling
//! process sits in each of them (from /proc/self/cgroup). Pure parsing, unit-tested with samples
//! of v1, v2 and hybrid hosts.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The cgroup layout of the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// Only v1 hierarchies are mounted.
    V1,
    /// A single cgroup2 hierarchy ("unified").
    V2,
    /// v1 controller hierarchies plus a cgroup2 mount (usually `/sys/fs/cgroup/unified`).
    Hybrid,
}

impl std::fmt::Display for Layout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Layout::V1 => "cgroup v1",
            Layout::V2 => "cgroup v2",
            Layout::Hybrid => "hybrid cgroups",
        })
    }
}

/// Controllers the kernel can bind to a v1 hierarchy. Any other mount option (`rw`,
/// `clone_children`, `release_agent=…`) is not a controller.
const V1_CONTROLLERS: &[&str] = &[
    "cpu",
    "cpuacct",
    "cpuset",
    "memory",
    "devices",
    "freezer",
    "net_cls",
    "net_prio",
    "blkio",
    "perf_event",
    "hugetlb",
    "pids",
    "rdma",
    "misc",
    "debug",
];

/// One mounted cgroup hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupMount {
    /// Where it is mounted, e.g. `/sys/fs/cgroup/cpu,cpuacct`.
    pub mount_point: PathBuf,
    /// Which directory of the hierarchy is mounted there (field 4 of mountinfo; `/` unless the
    /// mount is a bind of a sub-tree).
    pub root: String,
    /// true for cgroup2.
    pub v2: bool,
    /// v1: the controllers bound to the hierarchy (`cpu`, `cpuacct`, `name=systemd`). v2: empty
    /// (read `cgroup.controllers` for those).
    pub controllers: Vec<String>,
}

/// Undo the octal escapes mountinfo uses for space, tab, newline and backslash.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let decoded = std::str::from_utf8(&bytes[i + 1..i + 4])
                .ok()
                .and_then(|oct| u8::from_str_radix(oct, 8).ok());
            if let Some(v) = decoded {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// All cgroup mounts in a mountinfo text, first mount of each hierarchy only (a hierarchy bind
/// mounted twice is listed once).
pub fn parse_mountinfo(text: &str) -> Vec<CgroupMount> {
    let mut mounts: Vec<CgroupMount> = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let Some(sep) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        if sep < 5 || fields.len() < sep + 4 {
            continue;
        }
        let fstype = fields[sep + 1];
        let super_opts = fields[sep + 3];
        let v2 = match fstype {
            "cgroup2" => true,
            "cgroup" => false,
            _ => continue,
        };
        let controllers: Vec<String> = if v2 {
            Vec::new()
        } else {
            super_opts
                .split(',')
                .filter(|o| V1_CONTROLLERS.contains(o) || o.starts_with("name="))
                .map(str::to_owned)
                .collect()
        };
        if !v2 && controllers.is_empty() {
            continue;
        }
        let duplicate = mounts
            .iter()
            .any(|m| m.v2 == v2 && (v2 || m.controllers == controllers));
        if duplicate {
            continue;
        }
        mounts.push(CgroupMount {
            mount_point: PathBuf::from(unescape(fields[4])),
            root: unescape(fields[3]),
            v2,
            controllers,
        });
    }
    mounts
}

/// The layout the mounts describe; None when no cgroup filesystem is mounted.
pub fn layout_of(mounts: &[CgroupMount]) -> Option<Layout> {
    let has_v1 = mounts.iter().any(|m| !m.v2);
    let has_v2 = mounts.iter().any(|m| m.v2);
    match (has_v1, has_v2) {
        (true, true) => Some(Layout::Hybrid),
        (true, false) => Some(Layout::V1),
        (false, true) => Some(Layout::V2),
        (false, false) => None,
    }
}

/// One line of /proc/<pid>/cgroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcCgroup {
    pub hierarchy_id: u32,
    /// Empty for the v2 hierarchy.
    pub controllers: Vec<String>,
    /// Path inside the hierarchy, starting with `/`.
    pub path: String,
}

/// Parse /proc/<pid>/cgroup ("id:controllers:path" per line).
pub fn parse_proc_cgroup(text: &str) -> Vec<ProcCgroup> {
    text.lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let id = parts.next()?.parse().ok()?;
            let ctrls = parts.next()?;
            let path = parts.next()?.to_owned();
            let controllers = if ctrls.is_empty() {
                Vec::new()
            } else {
                ctrls.split(',').map(str::to_owned).collect()
            };
            Some(ProcCgroup {
                hierarchy_id: id,
                controllers,
                path,
            })
        })
        .collect()
}

/// The calling process's path in the hierarchy of `mount` ("/" when not listed).
pub fn own_path<'a>(mount: &CgroupMount, procs: &'a [ProcCgroup]) -> &'a str {
    let found = if mount.v2 {
        procs
            .iter()
            .find(|p| p.hierarchy_id == 0 && p.controllers.is_empty())
    } else {
        procs.iter().find(|p| {
            !p.controllers.is_empty() && p.controllers.iter().all(|c| mount.controllers.contains(c))
        })
    };
    found.map(|p| p.path.as_str()).unwrap_or("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 31 0:33 / /sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
38 31 0:35 / /sys/fs/cgroup/blkio rw,relatime - cgroup cgroup rw,blkio
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    const HYBRID_SELF: &str = "\
9:name=systemd:/
8:pids:/
7:blkio:/
6:freezer:/
5:devices:/
4:memory:/process_api/5dfad81183c806e833a2d0f05414a0a5
3:cpuset:/
2:cpuacct:/
1:cpu:/
0::/
";

    const V1_COMOUNTED: &str = "\
25 18 0:22 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
26 25 0:23 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:10 - cgroup cgroup rw,xattr,release_agent=/lib/systemd/systemd-cgroups-agent,name=systemd
29 25 0:26 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:14 - cgroup cgroup rw,cpu,cpuacct
30 25 0:27 / /sys/fs/cgroup/net_cls,net_prio rw,nosuid,nodev,noexec,relatime shared:15 - cgroup cgroup rw,net_cls,net_prio
31 25 0:28 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:16 - cgroup cgroup rw,memory
99 25 0:28 /sub /mnt/mem\\040copy rw,relatime - cgroup cgroup rw,memory
";

    const V2: &str = "\
30 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
";

    #[test]
    fn hybrid_sample_is_hybrid_with_every_controller() {
        let mounts = parse_mountinfo(HYBRID);
        assert_eq!(layout_of(&mounts), Some(Layout::Hybrid));
        assert_eq!(mounts.len(), 10);
        let unified = mounts.iter().find(|m| m.v2).expect("cgroup2 mount");
        assert_eq!(unified.mount_point, PathBuf::from("/sys/fs/cgroup/unified"));
        let sd = mounts
            .iter()
            .find(|m| m.controllers == ["name=systemd"])
            .expect("name=systemd");
        assert_eq!(sd.mount_point, PathBuf::from("/sys/fs/cgroup/systemd"));
    }

    #[test]
    fn comounted_controllers_share_one_hierarchy_and_duplicates_are_dropped() {
        let mounts = parse_mountinfo(V1_COMOUNTED);
        assert_eq!(layout_of(&mounts), Some(Layout::V1));
        assert_eq!(mounts.len(), 4, "{mounts:?}");
        let cpu = mounts
            .iter()
            .find(|m| m.controllers.contains(&"cpu".to_owned()))
            .expect("cpu");
        assert_eq!(cpu.controllers, ["cpu", "cpuacct"]);
        assert_eq!(cpu.mount_point, PathBuf::from("/sys/fs/cgroup/cpu,cpuacct"));
    }

    #[test]
    fn escaped_mount_points_are_decoded() {
        assert_eq!(unescape("/mnt/mem\\040copy"), "/mnt/mem copy");
        assert_eq!(unescape("/plain"), "/plain");
        assert_eq!(unescape("/trailing\\"), "/trailing\\");
    }

    #[test]
    fn pure_v2_sample_is_v2() {
        let mounts = parse_mountinfo(V2);
        assert_eq!(layout_of(&mounts), Some(Layout::V2));
        assert_eq!(mounts[0].mount_point, PathBuf::from("/sys/fs/cgroup"));
        assert!(layout_of(&parse_mountinfo("1 0 0:1 / / rw - ext4 /dev/sda rw")).is_none());
    }

    #[test]
    fn own_path_follows_each_hierarchy() {
        let mounts = parse_mountinfo(HYBRID);
        let procs = parse_proc_cgroup(HYBRID_SELF);
        assert_eq!(procs.len(), 10);
        let mem = mounts
            .iter()
            .find(|m| m.controllers == ["memory"])
            .expect("memory");
        assert_eq!(
            own_path(mem, &procs),
            "/process_api/5dfad81183c806e833a2d0f05414a0a5"
        );
        let cpu = mounts
            .iter()
            .find(|m| m.controllers == ["cpu"])
            .expect("cpu");
        assert_eq!(own_path(cpu, &procs), "/");
        let v2 = mounts.iter().find(|m| m.v2).expect("v2");
        assert_eq!(own_path(v2, &procs), "/");
    }

    #[test]
    fn comounted_proc_lines_match_their_hierarchy() {
        let mounts = parse_mountinfo(V1_COMOUNTED);
        let procs = parse_proc_cgroup(
            "4:cpu,cpuacct:/user.slice\n1:name=systemd:/user.slice/s.scope\n0::/x\n",
        );
        let cpu = mounts
            .iter()
            .find(|m| m.controllers.contains(&"cpuacct".to_owned()))
            .expect("cpuacct");
        assert_eq!(own_path(cpu, &procs), "/user.slice");
        let sd = mounts
            .iter()
            .find(|m| m.controllers == ["name=systemd"])
            .expect("systemd");
        assert_eq!(own_path(sd, &procs), "/user.slice/s.scope");
    }
}
