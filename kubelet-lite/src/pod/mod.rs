//! Pods: one worker per pod (a task that owns the pod's sandbox and containers and
//! reconciles them against the spec), fed by the pod sources (apiserver watch, manifest
//! directory) through the [`Manager`] and by container events from the shims.

pub mod env;
pub mod state;
pub mod status;
pub mod volumes;
mod worker;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::{Pod, PodStatus};
use tokio::sync::mpsc;

use crate::cni::Cni;
use crate::config::Config;
use crate::image::ImageStore;
use crate::shim::{Shims, TaskEvent};

pub use worker::spawn;

/// Everything a pod worker needs, shared.
pub struct Context {
    pub cfg: Config,
    pub shims: Shims,
    pub images: ImageStore,
    pub cni: Cni,
    pub api: Option<kube::Client>,
    pub status: mpsc::UnboundedSender<StatusReport>,
    /// container id → pod uid, for routing shim events.
    pub containers: Mutex<HashMap<String, String>>,
    /// This process's oom_score_adj (containers cannot go below it without
    /// CAP_SYS_RESOURCE).
    pub oom_floor: i32,
    /// The runtime's version, for nodeInfo and containerIDs.
    pub runtime_name: String,
    /// Pods being set up (sandbox, network, first start of their containers) at once;
    /// the others wait their turn in arrival order (the semaphore is fair).
    pub start_slots: Arc<tokio::sync::Semaphore>,
}

impl Context {
    pub fn pod_dir(&self, uid: &str) -> PathBuf {
        self.cfg.root.join("pods").join(uid)
    }

    pub fn container_dir(&self, id: &str) -> PathBuf {
        self.cfg.root.join("containers").join(id)
    }

    pub fn register_container(&self, id: &str, uid: &str) {
        if let Ok(mut m) = self.containers.lock() {
            m.insert(id.to_string(), uid.to_string());
        }
    }

    pub fn forget_container(&self, id: &str) {
        if let Ok(mut m) = self.containers.lock() {
            m.remove(id);
        }
    }
}

/// A pod's status as a worker computed it.
#[derive(Clone, Debug)]
pub struct StatusReport {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub static_pod: bool,
    pub status: PodStatus,
    /// The worker finished (the pod is gone): forget it.
    pub gone: bool,
}

/// Messages to a pod worker.
#[derive(Debug)]
pub enum Msg {
    /// A new version of the pod from its source.
    Update(Box<Pod>),
    /// The pod disappeared from its source (kill it with its grace period).
    Remove,
    Task(TaskEvent),
}

/// Where a pod came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Api,
    File,
}

/// What the sources tell the manager.
#[derive(Debug)]
pub enum SourceMsg {
    Upsert(Box<Pod>, Source),
    Delete(String),
    /// The complete set of the source's pod uids (after a (re)list): others of this
    /// source are removed.
    Snapshot(Source, Vec<String>),
}

/// Routes source updates and shim events to pod workers, starting a worker per new pod.
pub struct Manager {
    ctx: Arc<Context>,
    workers: HashMap<String, (mpsc::UnboundedSender<Msg>, Source)>,
}

impl Manager {
    pub fn new(ctx: Arc<Context>) -> Manager {
        Manager {
            ctx,
            workers: HashMap::new(),
        }
    }

    /// Adopt the pods of an earlier run from the state directory.
    pub fn restore(&mut self, done: &mpsc::UnboundedSender<String>) {
        let dir = self.ctx.cfg.root.join("pods");
        let Ok(rd) = std::fs::read_dir(&dir) else {
            return;
        };
        for e in rd.flatten() {
            let Some(st) = state::PodState::load(&e.path().join("state.json")) else {
                continue;
            };
            let Ok(pod) = serde_json::from_str::<Pod>(&st.pod_json) else {
                continue;
            };
            let source = if st.static_pod {
                Source::File
            } else {
                Source::Api
            };
            tracing::info!(pod = %format!("{}/{}", st.namespace, st.name), "adopting pod from an earlier run");
            let uid = st.uid.clone();
            let tx = spawn(
                self.ctx.clone(),
                pod,
                Some(st),
                source == Source::File,
                done.clone(),
            );
            self.workers.insert(uid, (tx, source));
        }
    }

    pub fn handle(&mut self, msg: SourceMsg, done: &mpsc::UnboundedSender<String>) {
        match msg {
            SourceMsg::Upsert(pod, source) => {
                let uid = pod.metadata.uid.clone().unwrap_or_default();
                if uid.is_empty() {
                    return;
                }
                if let Some((tx, _)) = self.workers.get(&uid) {
                    if tx.send(Msg::Update(pod.clone())).is_ok() {
                        return;
                    }
                }
                // A pod that finished before we knew it (its state is gone) is not run again;
                // one being deleted still gets a worker, to finish the deletion.
                let terminal = matches!(
                    pod.status.as_ref().and_then(|s| s.phase.as_deref()),
                    Some("Succeeded" | "Failed")
                );
                if terminal && pod.metadata.deletion_timestamp.is_none() {
                    return;
                }
                let tx = spawn(
                    self.ctx.clone(),
                    *pod,
                    None,
                    source == Source::File,
                    done.clone(),
                );
                self.workers.insert(uid, (tx, source));
            }
            SourceMsg::Delete(uid) => {
                if let Some((tx, _)) = self.workers.get(&uid) {
                    let _ = tx.send(Msg::Remove);
                }
            }
            SourceMsg::Snapshot(source, uids) => {
                for (uid, (tx, s)) in &self.workers {
                    if *s == source && !uids.contains(uid) {
                        let _ = tx.send(Msg::Remove);
                    }
                }
            }
        }
    }

    pub fn event(&mut self, ev: TaskEvent) {
        let id = match &ev {
            TaskEvent::Exit { container_id, .. } | TaskEvent::Oom { container_id } => container_id,
        };
        let uid = self
            .ctx
            .containers
            .lock()
            .ok()
            .and_then(|m| m.get(id).cloned());
        if let Some(uid) = uid {
            if let Some((tx, _)) = self.workers.get(&uid) {
                let _ = tx.send(Msg::Task(ev));
            }
        }
    }

    pub fn finished(&mut self, uid: &str) {
        self.workers.remove(uid);
    }

    pub fn len(&self) -> usize {
        self.workers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.workers.is_empty()
    }
}
