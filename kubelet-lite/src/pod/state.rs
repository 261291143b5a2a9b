//! What nestlet keeps about a pod across its own restarts: `<root>/pods/<uid>/state.json`,
//! written atomically on every change. With the shims (which keep the containers
//! running) it is all a restarted nestlet needs to adopt its pods.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SandboxState {
    pub id: String,
    pub shim_address: String,
    pub pid: u32,
    /// CNI network the pod is attached to (empty with hostNetwork).
    pub network: String,
    pub ips: Vec<String>,
    pub host_network: bool,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Terminated {
    pub exit_code: i32,
    pub signal: i32,
    pub reason: String,
    pub message: String,
    /// Unix nanoseconds.
    pub started_at: i128,
    pub finished_at: i128,
    pub container_id: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub enum Phase {
    /// Not created yet, or waiting to be (re)started: reason and message.
    #[default]
    Waiting,
    Running,
    Exited,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ContainerState {
    /// The current attempt's container id (empty before the first).
    pub id: String,
    /// Restarts so far.
    pub restarts: u32,
    pub phase: Phase,
    pub waiting_reason: String,
    pub waiting_message: String,
    pub started_at: i128,
    /// Set when `phase` is `Exited`.
    pub exited: Option<Terminated>,
    /// The previous attempt's end (`lastState`).
    pub last: Option<Terminated>,
    pub image_id: String,
    /// Crash/pull backoff: not before this unix time (ns); and the current delay (s).
    pub backoff_until: i128,
    pub backoff_secs: u64,
    /// The log file of the current attempt.
    pub log_path: String,
    /// Attempts of an image pull that failed (for ErrImagePull → ImagePullBackOff).
    pub pull_failures: u32,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PodState {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    /// From the manifest directory (no apiserver object unless mirrored).
    pub static_pod: bool,
    pub start_time: i128,
    pub sandbox: Option<SandboxState>,
    /// Old sandboxes still to be removed (after a sandbox restart).
    pub init: BTreeMap<String, ContainerState>,
    pub apps: BTreeMap<String, ContainerState>,
    /// The pod's manifest (static pods are re-read from disk, API pods re-listed).
    pub pod_json: String,
}

impl PodState {
    pub fn load(path: &Path) -> Option<PodState> {
        let b = std::fs::read(path).ok()?;
        serde_json::from_slice(&b).ok()
    }

    pub fn save(&self, path: &Path) {
        let data = serde_json::to_vec(self).unwrap_or_default();
        if let Err(e) = crate::util::write_atomic(path, &data) {
            tracing::warn!(path = %path.display(), "saving pod state: {e}");
        }
    }
}
