//! Pod cgroups: the runtime creates each container's cgroup (and its parents) and removes
//! the container's own on delete; the pod-level parent (`<root>/<qos>/pod<uid>`) is
//! nestlet's to remove, in every mounted hierarchy (v1, v2 or both, as detected).

use std::path::PathBuf;

/// The mount points of every cgroup hierarchy (v1 controllers and cgroup2).
pub fn mounts() -> Vec<PathBuf> {
    let Ok(s) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    s.lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let fstype = post.split_whitespace().next()?;
            (fstype == "cgroup" || fstype == "cgroup2")
                .then(|| pre.split_whitespace().nth(4).map(PathBuf::from))
                .flatten()
        })
        .collect()
}

/// Remove a cgroup (an absolute cgroupsPath-style path) from every hierarchy: its leftover
/// empty children first, then itself.
pub fn remove(path: &str) {
    let rel = path.trim_start_matches('/');
    if rel.is_empty() {
        return;
    }
    for m in mounts() {
        let dir = m.join(rel);
        if !dir.is_dir() {
            continue;
        }
        if let Ok(rd) = std::fs::read_dir(&dir) {
            for e in rd.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    let _ = std::fs::remove_dir(e.path());
                }
            }
        }
        if let Err(e) = std::fs::remove_dir(&dir) {
            tracing::debug!(cgroup = %dir.display(), "removing the pod cgroup: {e}");
        }
    }
}
