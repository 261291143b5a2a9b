//! What the runtime remembers about a container between CLI invocations: `<root>/<id>/`.
//!
//! `state.json` (written atomically) holds the OCI state plus what later commands need: the
//! init's start time (to tell our init from a recycled pid) and the resolved cgroup.
//! `exec.sock` exists from `create` until `start`: the init waits on it.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use nestbox_cgroups::Cgroup;
use serde::{Deserialize, Serialize};

use crate::error::{shown, Context, Error, Result};

pub const STATE_FILE: &str = "state.json";
/// Where the created init waits for `start` (runc uses a fifo called exec.fifo).
pub const EXEC_SOCKET: &str = "exec.sock";

/// Container status as the OCI state reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Creating,
    Created,
    Running,
    Paused,
    Stopped,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self {
            Status::Creating => "creating",
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
        };
        f.write_str(s)
    }
}

/// The persisted state of one container.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    pub oci_version: String,
    pub id: String,
    pub pid: i32,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    pub created: String,
    pub owner: String,
    #[serde(default)]
    pub annotations: HashMap<String, String>,
    /// Field 22 of /proc/<pid>/stat when init was started.
    pub init_start_time: u64,
    pub cgroup: Option<Cgroup>,
    /// The spec's hooks: poststart and poststop run from later commands.
    #[serde(default)]
    pub hooks: Option<oci_spec::runtime::Hooks>,
    /// Without a mount namespace of its own, the container's mounts are in the runtime's
    /// namespace, on this bind of the rootfs: `delete` detaches it.
    #[serde(default)]
    pub shared_rootfs: Option<crate::rootfs::SharedRootfs>,
}

/// `nestbox state` / `list --format json` output: runc's field names and order.
#[derive(Debug, Serialize)]
pub struct OciState<'a> {
    #[serde(rename = "ociVersion")]
    pub oci_version: &'a str,
    pub id: &'a str,
    pub pid: i32,
    pub status: Status,
    pub bundle: &'a Path,
    pub rootfs: &'a Path,
    pub created: &'a str,
    #[serde(skip_serializing_if = "HashMap::is_empty")]
    pub annotations: &'a HashMap<String, String>,
    pub owner: &'a str,
}

impl State {
    pub fn load(dir: &Path, id: &str) -> Result<State> {
        let file = dir.join(STATE_FILE);
        let text = match std::fs::read_to_string(&file) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::NotExist(id.to_string()))
            }
            Err(e) => return Err(e).ctx(|| format!("reading {}", shown(&file))),
        };
        serde_json::from_str(&text)
            .map_err(|e| Error::Other(format!("{}: corrupt state: {e}", shown(&file))))
    }

    /// Write state.json atomically (temp file + rename).
    pub fn save(&self, dir: &Path) -> Result<()> {
        let text = serde_json::to_vec(self).map_err(|e| Error::Other(e.to_string()))?;
        write_atomic(&dir.join(STATE_FILE), &text)
    }

    /// The current status, from the kernel's view of the init process.
    pub fn status(&self, dir: &Path) -> Status {
        if !init_alive(self.pid, self.init_start_time) {
            return Status::Stopped;
        }
        if dir.join(EXEC_SOCKET).exists() {
            return Status::Created;
        }
        match self.cgroup.as_ref().map(Cgroup::is_frozen) {
            Some(Ok(true)) => Status::Paused,
            _ => Status::Running,
        }
    }

    /// The OCI state as JSON (what `state` prints and hooks read on stdin).
    pub fn oci_json(&self, status: Status) -> String {
        serde_json::to_string(&self.oci(status)).unwrap_or_default()
    }

    pub fn oci(&self, status: Status) -> OciState<'_> {
        OciState {
            oci_version: &self.oci_version,
            id: &self.id,
            pid: if status == Status::Stopped {
                0
            } else {
                self.pid
            },
            status,
            bundle: &self.bundle,
            rootfs: &self.rootfs,
            created: &self.created,
            annotations: &self.annotations,
            owner: &self.owner,
        }
    }
}

/// Whether `pid` is still our init: alive, not a zombie, same start time.
pub fn init_alive(pid: i32, start_time: u64) -> bool {
    if pid <= 0 {
        return false;
    }
    match proc_stat(pid) {
        Some((state, start)) => !matches!(state, 'Z' | 'X' | 'x') && start == start_time,
        None => false,
    }
}

/// (state char, start time) from /proc/<pid>/stat.
pub fn proc_stat(pid: i32) -> Option<(char, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let rest = &text[text.rfind(')')? + 2..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    // starttime is field 22 overall, the 20th after the state field.
    let start = fields.nth(18)?.parse().ok()?;
    Some((state, start))
}

/// Write a file atomically: a temp file in the same directory, then rename. Readers see the
/// old or the new content, never a part. Not fsync'ed: what this writes (state.json, pid
/// files) describes processes that do not survive a crash of the machine either, and it
/// usually lives on a tmpfs (/run); the fsync cost ~1 ms per create on a disk-backed root.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(data)?;
        drop(f);
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.ctx(|| format!("writing {}", shown(path)))
}

/// Ids of the containers under `root`, sorted.
pub fn list_ids(root: &Path) -> Result<Vec<String>> {
    let entries = match std::fs::read_dir(root) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).ctx(|| format!("reading {}", shown(root))),
    };
    let mut ids: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join(STATE_FILE).is_file())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    ids.sort();
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_stat_is_parsed() {
        let (state, start) = proc_stat(std::process::id() as i32).expect("own stat");
        assert!(state == 'R' || state == 'S', "{state}");
        assert!(start > 0);
        assert!(init_alive(std::process::id() as i32, start));
        assert!(!init_alive(std::process::id() as i32, start + 1));
    }
}
