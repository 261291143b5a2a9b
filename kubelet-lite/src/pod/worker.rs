//! One pod's worker: creates the sandbox (pause container with new net/ipc/uts, CNI ADD),
//! runs init containers in order then the app containers joined to the sandbox's
//! namespaces, restarts them by the restart policy with the crash backoff, reports status,
//! and on deletion runs preStop, SIGTERM, SIGKILL at the grace deadline, CNI DEL and removes
//! the sandbox.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    ConfigMap, Container, EnvVar, LifecycleHandler, Pod, PodStatus, Secret,
};
use kube::api::{Api, DeleteParams, Preconditions};
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};

use super::env;
use super::state::{ContainerState, Phase, PodState, SandboxState, Terminated};
use super::status;
use super::volumes::{self, Prepared};
use super::{Context, Msg, StatusReport};
use crate::cni::{self, RuntimeConf};
use crate::image::{self, ImageError, ImageRecord};
use crate::shim::{self, TaskEvent, TaskStatus};
use crate::spec::{self, BindMount, ContainerSpec, Resources, SandboxSpec};
use crate::util::{now_unix_nanos, random_hex};

const NS: i128 = 1_000_000_000;
const BACKOFF_START: u64 = 10;
const BACKOFF_MAX: u64 = 300;
/// A container that ran this long has its crash backoff reset.
const BACKOFF_RESET: i128 = 600 * NS;
const DEFAULT_GRACE: i64 = 30;
/// How long ErrImagePull shows before the backoff turns it into ImagePullBackOff.
const PULL_ERROR_SHOWN: i128 = 3 * NS;

struct Worker {
    ctx: Arc<Context>,
    pod: Pod,
    st: PodState,
    dir: PathBuf,
    tx: mpsc::UnboundedSender<Msg>,
    removed: bool,
    logs: HashMap<String, watch::Sender<bool>>,
    ooms: HashSet<String>,
    sandbox_dead: bool,
    /// Why the pod has no sandbox (CNI not ready, sandbox creation failed).
    pod_message: Option<String>,
    sandbox_backoff: u64,
    sandbox_retry_at: i128,
    volumes: Option<BTreeMap<String, Prepared>>,
    last_status: Option<PodStatus>,
    /// Terminal phase reached and the sandbox released.
    stopped: bool,
    /// The state as last written.
    saved: Vec<u8>,
    /// This pod's turn to be set up (`Context::start_slots`), held for one pass that
    /// creates its sandbox; given back early while an image is pulled.
    start_turn: Option<tokio::sync::OwnedSemaphorePermit>,
}

fn uid_of(pod: &Pod) -> String {
    pod.metadata.uid.clone().unwrap_or_default()
}

fn pod_name(pod: &Pod) -> (String, String) {
    (
        pod.metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into()),
        pod.metadata.name.clone().unwrap_or_default(),
    )
}

/// Start the worker of `pod` (with the state of an earlier run when adopting it); returns
/// its message channel. `done` gets the uid when the worker finished.
pub fn spawn(
    ctx: Arc<Context>,
    pod: Pod,
    restored: Option<PodState>,
    static_pod: bool,
    done: mpsc::UnboundedSender<String>,
) -> mpsc::UnboundedSender<Msg> {
    let (tx, rx) = mpsc::unbounded_channel();
    let uid = uid_of(&pod);
    let (namespace, name) = pod_name(&pod);
    let dir = ctx.pod_dir(&uid);
    let adopting = restored.is_some();
    tracing::debug!(pod = %format!("{namespace}/{name}"), adopting, "pod worker");
    let st = restored.unwrap_or_else(|| PodState {
        uid: uid.clone(),
        namespace,
        name,
        static_pod,
        start_time: now_unix_nanos(),
        pod_json: serde_json::to_string(&pod).unwrap_or_default(),
        ..Default::default()
    });
    let w = Worker {
        ctx,
        pod,
        st,
        dir,
        tx: tx.clone(),
        removed: false,
        logs: HashMap::new(),
        ooms: HashSet::new(),
        sandbox_dead: false,
        pod_message: None,
        sandbox_backoff: 0,
        sandbox_retry_at: 0,
        volumes: None,
        last_status: None,
        stopped: false,
        saved: Vec::new(),
        start_turn: None,
    };
    tokio::spawn(async move {
        w.run(rx, adopting).await;
        let _ = done.send(uid);
    });
    tx
}

fn exit_reason(code: i32, oom: bool) -> &'static str {
    if oom {
        "OOMKilled"
    } else if code == 0 {
        "Completed"
    } else {
        "Error"
    }
}

impl Worker {
    fn id(&self) -> String {
        format!("{}/{}", self.st.namespace, self.st.name)
    }

    fn spec(&self) -> k8s_openapi::api::core::v1::PodSpec {
        self.pod.spec.clone().unwrap_or_default()
    }

    /// Persist the state when it changed since the last save.
    fn save(&mut self) {
        let bytes = serde_json::to_vec(&self.st).unwrap_or_default();
        if bytes == self.saved {
            return;
        }
        std::fs::create_dir_all(&self.dir).ok();
        self.st.save(&self.dir.join("state.json"));
        self.saved = bytes;
    }

    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Msg>, adopting: bool) {
        if adopting {
            self.adopt().await;
        }
        loop {
            let wake = self.reconcile().await;
            if self.removed && self.st.sandbox.is_none() && self.finished_teardown() {
                break;
            }
            let msg = match wake {
                Some(d) => match tokio::time::timeout(d, rx.recv()).await {
                    Ok(Some(m)) => Some(m),
                    Ok(None) => break,
                    Err(_) => None,
                },
                None => match rx.recv().await {
                    Some(m) => Some(m),
                    None => break,
                },
            };
            if let Some(m) = msg {
                self.apply(m);
            }
            while let Ok(m) = rx.try_recv() {
                self.apply(m);
            }
        }
    }

    fn finished_teardown(&self) -> bool {
        !self.dir.exists()
    }

    fn apply(&mut self, m: Msg) {
        match m {
            Msg::Update(p) => {
                self.pod = *p;
                self.st.pod_json = serde_json::to_string(&self.pod).unwrap_or_default();
            }
            Msg::Remove => self.removed = true,
            Msg::Task(TaskEvent::Oom { container_id }) => {
                self.ooms.insert(container_id);
            }
            Msg::Task(TaskEvent::Exit {
                container_id,
                exec_id,
                status,
                at_nanos,
            }) => {
                if exec_id.is_empty() {
                    self.exited(&container_id, status, at_nanos);
                }
            }
        }
    }

    /// A container (or the sandbox) exited.
    fn exited(&mut self, id: &str, code: u32, at: i128) {
        if let Some(tx) = self.logs.remove(id) {
            let _ = tx.send(true);
        }
        if self.st.sandbox.as_ref().is_some_and(|s| s.id == id) {
            if !self.removed {
                tracing::warn!(pod = %self.id(), "sandbox exited; recreating it");
            }
            self.sandbox_dead = true;
            return;
        }
        let oom = self.ooms.contains(id);
        let at = if at == 0 { now_unix_nanos() } else { at };
        for cs in self.st.init.values_mut().chain(self.st.apps.values_mut()) {
            if cs.id == id && cs.phase == Phase::Running {
                let code = code as i32;
                cs.phase = Phase::Exited;
                cs.exited = Some(Terminated {
                    exit_code: code,
                    signal: 0,
                    reason: exit_reason(code, oom).into(),
                    message: String::new(),
                    started_at: cs.started_at,
                    finished_at: at,
                    container_id: id.to_string(),
                });
            }
        }
        self.save();
    }

    fn terminating(&self) -> bool {
        self.removed || self.pod.metadata.deletion_timestamp.is_some()
    }

    fn grace_seconds(&self) -> i64 {
        self.pod
            .metadata
            .deletion_grace_period_seconds
            .or(self.spec().termination_grace_period_seconds)
            .unwrap_or(DEFAULT_GRACE)
            .max(0)
    }

    /// After a restart: reconnect to the containers the state names.
    async fn adopt(&mut self) {
        let ctx = self.ctx.clone();
        let shims = &ctx.shims;
        if let Some(sb) = self.st.sandbox.clone() {
            self.ctx.register_container(&sb.id, &self.st.uid);
            match shims.state(&sb.shim_address, &sb.id).await {
                Ok(s) if s.status == TaskStatus::Running => {
                    self.watch_exit(&sb.shim_address, &sb.id)
                }
                _ => self.sandbox_dead = true,
            }
        }
        let addr = self
            .st
            .sandbox
            .as_ref()
            .map(|s| s.shim_address.clone())
            .unwrap_or_default();
        let ids: Vec<(String, String, String)> = self
            .st
            .init
            .values()
            .chain(self.st.apps.values())
            .filter(|c| c.phase == Phase::Running)
            .map(|c| (c.id.clone(), c.log_path.clone(), String::new()))
            .collect();
        for (id, log, _) in ids {
            self.ctx.register_container(&id, &self.st.uid);
            match shims.state(&addr, &id).await {
                Ok(s) if s.status == TaskStatus::Running => {
                    let io = self.ctx.container_dir(&id).join("io");
                    if let Ok((_, _, tx)) = crate::logs::start(&io, &id, Path::new(&log)) {
                        self.logs.insert(id.clone(), tx);
                    }
                    self.watch_exit(&addr, &id);
                }
                Ok(s) => self.exited(&id, s.exit.status, s.exit.at_nanos),
                Err(e) => {
                    tracing::warn!(pod = %self.id(), container = %id, "container lost with its shim: {e}");
                    self.exited(&id, 255, 0);
                }
            }
        }
    }

    fn watch_exit(&self, addr: &str, id: &str) {
        let ctx = self.ctx.clone();
        let tx = self.tx.clone();
        let (addr, id) = (addr.to_string(), id.to_string());
        tokio::spawn(async move {
            let (status, at) = match ctx.shims.wait(&addr, &id, "").await {
                Ok(e) => (e.status, e.at_nanos),
                Err(e) if e.is_not_found() => return,
                Err(e) => {
                    tracing::debug!(container = %id, "wait: {e}");
                    (255, 0)
                }
            };
            let _ = tx.send(Msg::Task(TaskEvent::Exit {
                container_id: id,
                exec_id: String::new(),
                status,
                at_nanos: at,
            }));
        });
    }

    fn publish(&mut self) {
        let st = status::compute(
            &self.pod,
            &self.st,
            &self.ctx.cfg.node_ip,
            &self.ctx.runtime_name,
            self.last_status.as_ref(),
            self.pod_message.as_deref(),
        );
        if self
            .last_status
            .as_ref()
            .is_some_and(|o| status::same(o, &st))
        {
            return;
        }
        self.last_status = Some(st.clone());
        let _ = self.ctx.status.send(StatusReport {
            uid: self.st.uid.clone(),
            namespace: self.st.namespace.clone(),
            name: self.st.name.clone(),
            static_pod: self.st.static_pod,
            status: st,
            gone: false,
        });
    }

    async fn reconcile(&mut self) -> Option<Duration> {
        let wake = self.pass().await;
        self.start_turn = None;
        wake
    }

    async fn pass(&mut self) -> Option<Duration> {
        if self.terminating() {
            self.terminate().await;
            return None;
        }
        let phase = status::phase(&self.pod, &self.st);
        if phase == "Succeeded" || phase == "Failed" {
            if !self.stopped {
                self.kill_containers(0).await;
                self.teardown_sandbox().await;
                self.stopped = true;
                self.save();
            }
            self.publish();
            return None;
        }
        let now = now_unix_nanos();
        if self.st.sandbox.is_none() || self.sandbox_dead {
            if now < self.sandbox_retry_at {
                return Some(nanos_to_dur(self.sandbox_retry_at - now));
            }
            // Wait for a turn: pods of a burst are set up a few at a time, in the order
            // they came, so the first ones do not wait for all the others.
            self.start_turn = self.ctx.start_slots.clone().acquire_owned().await.ok();
            if self.sandbox_dead {
                // The kubelet's answer to a dead sandbox: stop everything, start over.
                self.kill_containers(2).await;
                self.teardown_sandbox().await;
                for cs in self.st.apps.values_mut().chain(self.st.init.values_mut()) {
                    if cs.phase == Phase::Running {
                        cs.phase = Phase::Exited;
                    }
                }
                self.sandbox_dead = false;
            }
            if let Err(msg) = self.create_sandbox().await {
                tracing::warn!(pod = %self.id(), "creating the pod sandbox: {msg}");
                self.pod_message = Some(msg);
                self.sandbox_backoff = (self.sandbox_backoff * 2).clamp(1, 30);
                self.sandbox_retry_at = now_unix_nanos() + self.sandbox_backoff as i128 * NS;
                self.publish();
                return Some(Duration::from_secs(self.sandbox_backoff));
            }
            self.pod_message = None;
            self.sandbox_backoff = 0;
            self.save();
        }
        if self.volumes.is_none() {
            match volumes::prepare(&self.pod, &self.dir, self.ctx.api.as_ref()).await {
                Ok(v) => self.volumes = Some(v),
                Err(msg) => {
                    self.set_all_waiting("CreateContainerConfigError", &msg);
                    self.publish();
                    return Some(Duration::from_secs(10));
                }
            }
        }
        let mut wake: Option<Duration> = None;
        let mut min_wake = |d: Duration| {
            wake = Some(wake.map_or(d, |w: Duration| w.min(d)));
        };
        let spec = self.spec();
        let policy = status::restart_policy(&self.pod).to_string();
        let mut inits_done = true;
        for c in spec.init_containers.iter().flatten() {
            let cs = self.st.init.get(&c.name).cloned().unwrap_or_default();
            match cs.phase {
                Phase::Exited if cs.exited.as_ref().is_some_and(|t| t.exit_code == 0) => continue,
                Phase::Running => {
                    inits_done = false;
                    break;
                }
                Phase::Exited if policy == "Never" => {
                    inits_done = false;
                    break;
                }
                _ => {
                    inits_done = false;
                    if let Some(d) = self.start_due(&c.name, true, now) {
                        min_wake(d);
                    } else {
                        let d = self.start_container(c, true).await;
                        if let Some(d) = d {
                            min_wake(d);
                        }
                    }
                    break;
                }
            }
        }
        if inits_done {
            for c in &spec.containers {
                let cs = self.st.apps.get(&c.name).cloned().unwrap_or_default();
                let start = match cs.phase {
                    Phase::Running => false,
                    Phase::Waiting => true,
                    Phase::Exited => {
                        let code = cs.exited.as_ref().map(|t| t.exit_code).unwrap_or(0);
                        status::should_restart(&policy, code)
                    }
                };
                if !start {
                    continue;
                }
                if let Some(d) = self.start_due(&c.name, false, now) {
                    min_wake(d);
                    continue;
                }
                if let Some(d) = self.start_container(c, false).await {
                    min_wake(d);
                }
            }
        }
        self.save();
        self.publish();
        // A status-only change (ImagePullBackOff after ErrImagePull) needs a prompt pass.
        wake
    }

    /// When a container's next start is not due yet (backoff): how long to wait; the
    /// waiting reason becomes CrashLoopBackOff / ImagePullBackOff meanwhile.
    fn start_due(&mut self, name: &str, init: bool, now: i128) -> Option<Duration> {
        let cs = if init {
            self.st.init.entry(name.to_string()).or_default()
        } else {
            self.st.apps.entry(name.to_string()).or_default()
        };
        if cs.backoff_until <= now {
            return None;
        }
        if cs.phase == Phase::Exited {
            // Crashed: from now on waiting (with lastState) until the backoff ends.
            if let Some(t) = cs.exited.take() {
                cs.last = Some(t);
            }
            cs.phase = Phase::Waiting;
        }
        if cs.pull_failures > 0 {
            // ErrImagePull stays visible for a moment after the failure (our own status
            // patch wakes the worker at once), then the backoff shows as ImagePullBackOff.
            let failed_at = cs.backoff_until - cs.backoff_secs as i128 * NS;
            let flip = failed_at + PULL_ERROR_SHOWN;
            if now < flip {
                return Some(nanos_to_dur(flip - now));
            }
            if cs.waiting_reason != "ImagePullBackOff" {
                cs.waiting_reason = "ImagePullBackOff".into();
                cs.waiting_message = format!("Back-off pulling image: {}", cs.waiting_message);
            }
        } else if cs.last.is_some() {
            cs.waiting_reason = "CrashLoopBackOff".into();
            cs.waiting_message = format!(
                "back-off {}s restarting failed container={name} pod={}",
                cs.backoff_secs, self.st.name
            );
        }
        Some(nanos_to_dur(cs.backoff_until - now))
    }

    fn set_all_waiting(&mut self, reason: &str, msg: &str) {
        let spec = self.spec();
        for c in spec.init_containers.iter().flatten() {
            let cs = self.st.init.entry(c.name.clone()).or_default();
            if cs.phase == Phase::Waiting {
                cs.waiting_reason = reason.into();
                cs.waiting_message = msg.into();
            }
        }
        for c in &spec.containers {
            let cs = self.st.apps.entry(c.name.clone()).or_default();
            if cs.phase == Phase::Waiting {
                cs.waiting_reason = reason.into();
                cs.waiting_message = msg.into();
            }
        }
    }

    fn cgroup_parent(&self) -> String {
        let q = env::qos(&self.pod);
        let root = self.ctx.cfg.cgroup_root.trim_end_matches('/');
        let d = q.cgroup_dir();
        if d.is_empty() {
            format!("{root}/pod{}", self.st.uid)
        } else {
            format!("{root}/{d}/pod{}", self.st.uid)
        }
    }

    fn cri_args(&self, sandbox_id: &str) -> Vec<(String, String)> {
        vec![
            ("IgnoreUnknown".into(), "1".into()),
            ("K8S_POD_NAMESPACE".into(), self.st.namespace.clone()),
            ("K8S_POD_NAME".into(), self.st.name.clone()),
            ("K8S_POD_INFRA_CONTAINER_ID".into(), sandbox_id.into()),
            ("K8S_POD_UID".into(), self.st.uid.clone()),
        ]
    }

    fn hostname(&self) -> String {
        let spec = self.spec();
        let h = spec
            .hostname
            .clone()
            .unwrap_or_else(|| self.st.name.clone());
        h.chars()
            .take(63)
            .collect::<String>()
            .trim_end_matches(['-', '.'])
            .to_string()
    }

    async fn create_sandbox(&mut self) -> Result<(), String> {
        let spec = self.spec();
        let host_network = spec.host_network.unwrap_or(false);
        let net = if host_network {
            None
        } else {
            Some(
                self.ctx
                    .cni
                    .load()
                    .map_err(|_| crate::node::NO_CNI_MESSAGE.to_string())?,
            )
        };
        std::fs::create_dir_all(&self.dir).map_err(|e| e.to_string())?;
        let id = random_hex(32);
        let bundle = self.ctx.container_dir(&id).join("bundle");
        std::fs::create_dir_all(bundle.join("rootfs")).map_err(|e| e.to_string())?;
        let pause = self.ctx.cfg.pause_rootfs();
        let annotations = vec![
            (
                shim::CONTAINER_TYPE_ANNOTATION.to_string(),
                "sandbox".to_string(),
            ),
            (shim::SANDBOX_ID_ANNOTATION.to_string(), id.clone()),
            (
                "io.kubernetes.cri.sandbox-name".into(),
                self.st.name.clone(),
            ),
            (
                "io.kubernetes.cri.sandbox-namespace".into(),
                self.st.namespace.clone(),
            ),
            ("io.kubernetes.cri.sandbox-uid".into(), self.st.uid.clone()),
        ];
        // The kubelet's sandbox score, unless this process may not go that low.
        let oom = (-998).max(self.ctx.oom_floor);
        let sb_spec = spec::sandbox(&SandboxSpec {
            rootfs: &pause.display().to_string(),
            hostname: &self.hostname(),
            host_network,
            host_ipc: spec.host_ipc.unwrap_or(false),
            host_pid: spec.host_pid.unwrap_or(false),
            cgroups_path: &format!("{}/{id}", self.cgroup_parent()),
            annotations,
            oom_score_adj: oom,
        });
        spec::validate(&sb_spec)?;
        crate::util::write_atomic(
            &bundle.join("config.json"),
            &serde_json::to_vec(&sb_spec).unwrap_or_default(),
        )
        .map_err(|e| e.to_string())?;
        let ctx = self.ctx.clone();
        let shims = &ctx.shims;
        self.ctx.register_container(&id, &self.st.uid);
        let result: Result<SandboxState, String> = async {
            let addr = shims.start(&id, &bundle).await.map_err(|e| e.to_string())?;
            let mut sb = SandboxState {
                id: id.clone(),
                shim_address: addr.clone(),
                host_network,
                ..Default::default()
            };
            // Recorded before anything that can fail half-way, so teardown finds it.
            self.st.sandbox = Some(sb.clone());
            self.save();
            shims
                .create(&addr, &id, &bundle, &[], "", "")
                .await
                .map_err(|e| e.to_string())?;
            let pid = shims
                .start_task(&addr, &id, "")
                .await
                .map_err(|e| e.to_string())?;
            sb.pid = pid;
            self.st.sandbox = Some(sb.clone());
            self.save();
            self.watch_exit(&addr, &id);
            if let Some(net) = &net {
                let rt = self.runtime_conf(&id, pid);
                self.ctx
                    .cni
                    .loopback(&rt)
                    .await
                    .map_err(|e| e.to_string())?;
                let result = self
                    .ctx
                    .cni
                    .add(net, &rt)
                    .await
                    .map_err(|e| e.to_string())?;
                sb.network = net.name.clone();
                sb.ips = cni::result_ips(&result);
            }
            Ok(sb)
        }
        .await;
        match result {
            Ok(sb) => {
                self.st.sandbox = Some(sb);
                self.write_etc_files()
                    .map_err(|e| format!("writing /etc files: {e}"))?;
                tracing::info!(pod = %self.id(), sandbox = %id, ips = ?self.st.sandbox.as_ref().map(|s| s.ips.clone()), "sandbox ready");
                Ok(())
            }
            Err(e) => {
                self.teardown_sandbox().await;
                Err(e)
            }
        }
    }

    fn runtime_conf(&self, sandbox_id: &str, pid: u32) -> RuntimeConf {
        let mut caps = BTreeMap::new();
        let mut ports = Vec::new();
        for c in &self.spec().containers {
            for p in c.ports.iter().flatten() {
                if let Some(hp) = p.host_port.filter(|h| *h > 0) {
                    let mut m = json!({
                        "hostPort": hp,
                        "containerPort": p.container_port,
                        "protocol": p.protocol.clone().unwrap_or_else(|| "TCP".into()).to_lowercase(),
                    });
                    if let Some(ip) = p.host_ip.as_ref().filter(|s| !s.is_empty()) {
                        m["hostIP"] = json!(ip);
                    }
                    ports.push(m);
                }
            }
        }
        if !ports.is_empty() {
            caps.insert("portMappings".to_string(), Value::Array(ports));
        }
        RuntimeConf {
            container_id: sandbox_id.to_string(),
            netns: if pid > 0 {
                format!("/proc/{pid}/ns/net")
            } else {
                String::new()
            },
            ifname: "eth0".into(),
            args: self.cri_args(sandbox_id),
            capability_args: caps,
        }
    }

    /// `/etc/hosts`, `/etc/resolv.conf` and `/etc/hostname` of the pod.
    fn write_etc_files(&self) -> std::io::Result<()> {
        let spec = self.spec();
        let host_network = spec.host_network.unwrap_or(false);
        let hostname = if host_network {
            crate::node::hostname()
        } else {
            self.hostname()
        };
        let mut hosts = String::from("# Kubernetes-managed hosts file.\n");
        if host_network {
            hosts = std::fs::read_to_string("/etc/hosts")
                .unwrap_or_else(|_| "127.0.0.1\tlocalhost\n".into());
        } else {
            hosts.push_str("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n");
            let ips = self
                .st
                .sandbox
                .as_ref()
                .map(|s| s.ips.clone())
                .unwrap_or_default();
            for ip in ips {
                match spec.subdomain.as_deref().filter(|s| !s.is_empty()) {
                    Some(sub) => hosts.push_str(&format!(
                        "{ip}\t{hostname}.{sub}.{}.svc.{}\t{hostname}\n",
                        self.st.namespace, self.ctx.cfg.cluster_domain
                    )),
                    None => hosts.push_str(&format!("{ip}\t{hostname}\n")),
                }
            }
        }
        if let Some(aliases) = spec.host_aliases.as_ref().filter(|a| !a.is_empty()) {
            hosts.push_str("\n# Entries added by HostAliases.\n");
            for a in aliases {
                hosts.push_str(&format!(
                    "{}\t{}\n",
                    a.ip,
                    a.hostnames.clone().unwrap_or_default().join("\t")
                ));
            }
        }
        crate::util::write_atomic(&self.dir.join("etc-hosts"), hosts.as_bytes())?;
        crate::util::write_atomic(
            &self.dir.join("etc-hostname"),
            format!("{hostname}\n").as_bytes(),
        )?;
        crate::util::write_atomic(&self.dir.join("resolv.conf"), self.resolv_conf().as_bytes())?;
        Ok(())
    }

    fn resolv_conf(&self) -> String {
        let spec = self.spec();
        let host = std::fs::read_to_string(&self.ctx.cfg.resolv_conf).unwrap_or_default();
        let host_field = |key: &str| -> Vec<String> {
            host.lines()
                .filter_map(|l| l.strip_prefix(key))
                .flat_map(|v| v.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
                .collect()
        };
        let policy = spec
            .dns_policy
            .clone()
            .unwrap_or_else(|| "ClusterFirst".into());
        let host_network = spec.host_network.unwrap_or(false);
        let cluster = !self.ctx.cfg.cluster_dns.is_empty()
            && (policy == "ClusterFirst" && !host_network || policy == "ClusterFirstWithHostNet");
        let (mut ns, mut search, mut opts): (Vec<String>, Vec<String>, Vec<String>) =
            if policy == "None" {
                (vec![], vec![], vec![])
            } else if cluster {
                let d = &self.ctx.cfg.cluster_domain;
                let mut s = vec![
                    format!("{}.svc.{d}", self.st.namespace),
                    format!("svc.{d}"),
                    d.clone(),
                ];
                s.extend(host_field("search "));
                (self.ctx.cfg.cluster_dns.clone(), s, vec!["ndots:5".into()])
            } else {
                (
                    host_field("nameserver "),
                    host_field("search "),
                    host_field("options "),
                )
            };
        if let Some(c) = &spec.dns_config {
            ns.extend(c.nameservers.clone().unwrap_or_default());
            search.extend(c.searches.clone().unwrap_or_default());
            for o in c.options.iter().flatten() {
                let name = o.name.clone().unwrap_or_default();
                opts.retain(|x| x.split(':').next() != Some(name.as_str()));
                match &o.value {
                    Some(v) => opts.push(format!("{name}:{v}")),
                    None => opts.push(name),
                }
            }
        }
        let mut out = String::new();
        for n in ns.iter().take(3) {
            out.push_str(&format!("nameserver {n}\n"));
        }
        if !search.is_empty() {
            search.dedup();
            out.push_str(&format!(
                "search {}\n",
                search.iter().take(6).cloned().collect::<Vec<_>>().join(" ")
            ));
        }
        if !opts.is_empty() {
            out.push_str(&format!("options {}\n", opts.join(" ")));
        }
        out
    }

    /// Resolve the container's image by its pull policy. Errors are (reason, message).
    async fn ensure_image(&mut self, c: &Container) -> Result<ImageRecord, (String, String)> {
        let image = c.image.clone().unwrap_or_default();
        if let Err(e) = image::parse_reference(&image) {
            return Err((
                "InvalidImageName".into(),
                format!("Failed to apply default image tag {image:?}: {e}"),
            ));
        }
        let policy = c.image_pull_policy.clone().unwrap_or_else(|| {
            if image::is_latest(&image) {
                "Always".into()
            } else {
                "IfNotPresent".into()
            }
        });
        let present = self.ctx.images.get(&image).ok().flatten();
        match (policy.as_str(), present) {
            ("Never", Some(r)) | ("IfNotPresent", Some(r)) => Ok(r),
            ("Never", None) => Err((
                "ErrImageNeverPull".into(),
                format!("Container image {image:?} is not present with pull policy of Never"),
            )),
            _ => {
                tracing::info!(pod = %self.id(), image = %image, "pulling image");
                // A pull can take minutes: others may be set up meanwhile.
                self.start_turn = None;
                self.ctx
                    .images
                    .pull(&image, false, None)
                    .await
                    .map_err(|e| {
                        let reason = match e {
                            ImageError::InvalidReference(..) => "InvalidImageName",
                            _ => "ErrImagePull",
                        };
                        (reason.to_string(), e.to_string())
                    })
            }
        }
    }

    /// Start (or restart) one container. Returns when to look again if it could not start.
    async fn start_container(&mut self, c: &Container, init: bool) -> Option<Duration> {
        let name = c.name.clone();
        let mut cs = if init {
            self.st.init.get(&name)
        } else {
            self.st.apps.get(&name)
        }
        .cloned()
        .unwrap_or_default();
        // Clear out the previous attempt (its log file stays for `previous`).
        if !cs.id.is_empty() {
            if let Some(sb) = &self.st.sandbox {
                let _ = self.ctx.shims.delete(&sb.shim_address, &cs.id, "").await;
            }
            self.ctx.forget_container(&cs.id);
            let _ = std::fs::remove_dir_all(self.ctx.container_dir(&cs.id));
            if let Some(t) = cs.exited.take() {
                cs.last = Some(t);
            }
            if cs.phase != Phase::Waiting || cs.last.is_some() {
                cs.restarts += 1;
            }
            cs.id.clear();
            cs.phase = Phase::Waiting;
        } else if cs.phase == Phase::Exited {
            cs.phase = Phase::Waiting;
        }
        let result = self.create_and_start(c, &mut cs, init).await;
        let wake = match result {
            Ok(()) => {
                cs.pull_failures = 0;
                cs.waiting_reason.clear();
                cs.waiting_message.clear();
                None
            }
            Err((reason, msg)) => {
                tracing::warn!(pod = %self.id(), container = %name, "{reason}: {msg}");
                let pull = reason == "ErrImagePull";
                if pull {
                    cs.pull_failures += 1;
                }
                cs.phase = Phase::Waiting;
                cs.waiting_reason = reason;
                cs.waiting_message = msg;
                cs.backoff_secs = if cs.backoff_secs == 0 {
                    BACKOFF_START
                } else {
                    (cs.backoff_secs * 2).min(BACKOFF_MAX)
                };
                cs.backoff_until = now_unix_nanos() + cs.backoff_secs as i128 * NS;
                // ErrImagePull shows until the next pass turns it into ImagePullBackOff.
                Some(Duration::from_secs(if pull { 3 } else { cs.backoff_secs }))
            }
        };
        if init {
            self.st.init.insert(name, cs);
        } else {
            self.st.apps.insert(name, cs);
        }
        self.save();
        wake
    }

    async fn create_and_start(
        &mut self,
        c: &Container,
        cs: &mut ContainerState,
        init: bool,
    ) -> Result<(), (String, String)> {
        let Some(sb) = self.st.sandbox.clone() else {
            return Err(("ContainerCreating".into(), "no sandbox".into()));
        };
        let rec = self.ensure_image(c).await?;
        cs.image_id = rec.repo_digest();
        let img = self
            .ctx
            .images
            .config(&rec)
            .map_err(|e| ("CreateContainerError".to_string(), e.to_string()))?;
        let id = random_hex(32);
        let cdir = self.ctx.container_dir(&id);
        let cfg_err = |m: String| ("CreateContainerConfigError".to_string(), m);
        let spec_json = self
            .container_spec(c, &rec, &img, &sb, &id)
            .await
            .map_err(cfg_err)?;
        let bundle = cdir.join("bundle");
        let create_err = |m: String| ("CreateContainerError".to_string(), m);
        let setup = || -> std::io::Result<()> {
            std::fs::create_dir_all(bundle.join("rootfs"))?;
            std::fs::create_dir_all(cdir.join("upper"))?;
            std::fs::create_dir_all(cdir.join("work"))?;
            std::fs::write(cdir.join("termination-log"), b"")?;
            crate::util::write_atomic(
                &bundle.join("config.json"),
                &serde_json::to_vec(&spec_json).unwrap_or_default(),
            )
        };
        if let Err(e) = setup() {
            let _ = std::fs::remove_dir_all(&cdir);
            return Err(create_err(e.to_string()));
        }
        let restarts = if cs.last.is_some() { cs.restarts } else { 0 };
        let log = crate::logs::pod_log_dir(
            &self.ctx.cfg.pod_log_dir,
            &self.st.namespace,
            &self.st.name,
            &self.st.uid,
        )
        .join(&c.name)
        .join(format!("{restarts}.log"));
        let (stdout, stderr, log_tx) = match crate::logs::start(&cdir.join("io"), &id, &log) {
            Ok(v) => v,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&cdir);
                return Err(create_err(format!("log FIFOs: {e}")));
            }
        };
        self.ctx.register_container(&id, &self.st.uid);
        let rootfs = self
            .ctx
            .images
            .rootfs_mount(&rec, &cdir.join("upper"), &cdir.join("work"))
            .map_err(|e| create_err(e.to_string()))?;
        let ctx = self.ctx.clone();
        let shims = &ctx.shims;
        let started = async {
            let addr = shims.start(&id, &bundle).await.map_err(|e| e.to_string())?;
            if addr != sb.shim_address {
                tracing::warn!(pod = %self.id(), "the shim put container {id} at {addr}, not with its sandbox at {}", sb.shim_address);
            }
            shims
                .create(&addr, &id, &bundle, &[rootfs], &stdout, &stderr)
                .await
                .map_err(|e| e.to_string())?;
            cs.id = id.clone();
            if let Err(e) = shims.start_task(&addr, &id, "").await {
                let _ = shims.delete(&addr, &id, "").await;
                return Err(e.to_string());
            }
            Ok::<String, String>(addr)
        }
        .await;
        let addr = match started {
            Ok(a) => a,
            Err(e) => {
                let _ = log_tx.send(true);
                self.ctx.forget_container(&id);
                cs.id.clear();
                let _ = std::fs::remove_dir_all(&cdir);
                return Err(create_err(e));
            }
        };
        let now = now_unix_nanos();
        // A container that ran long enough before this start gets a fresh backoff.
        if let Some(t) = &cs.last {
            if t.finished_at - t.started_at >= BACKOFF_RESET {
                cs.backoff_secs = 0;
            }
        }
        cs.id = id.clone();
        cs.phase = Phase::Running;
        cs.started_at = now;
        cs.log_path = log.display().to_string();
        // The first restart is immediate, then 10 s doubling to 5 min (the kubelet's).
        cs.backoff_until = 0;
        self.logs.insert(id.clone(), log_tx);
        self.watch_exit(&addr, &id);
        tracing::info!(pod = %self.id(), container = %c.name, id = %&id[..12], init, "container started");
        if let Some(h) = c.lifecycle.as_ref().and_then(|l| l.post_start.as_ref()) {
            if let Err(e) = self.run_hook(h, &id, Duration::from_secs(30)).await {
                tracing::warn!(pod = %self.id(), container = %c.name, "postStart hook failed: {e}; killing the container");
                let _ = shims.kill(&addr, &id, libc::SIGKILL as u32, true).await;
            }
        }
        Ok(())
    }

    /// Environment of a container: image env, then the pod spec's env with `$(VAR)`
    /// expansion and `valueFrom`, `envFrom` first as the kubelet orders it.
    async fn container_env(
        &self,
        c: &Container,
        image_env: &[String],
    ) -> Result<Vec<(String, String)>, String> {
        let mut env: Vec<(String, String)> = Vec::new();
        let set = |env: &mut Vec<(String, String)>, k: String, v: String| {
            if let Some(e) = env.iter_mut().find(|(n, _)| *n == k) {
                e.1 = v;
            } else {
                env.push((k, v));
            }
        };
        for e in image_env {
            let (k, v) = e.split_once('=').unwrap_or((e, ""));
            set(&mut env, k.to_string(), v.to_string());
        }
        let ns = self.st.namespace.clone();
        let mut spec_env: Vec<(String, String)> = Vec::new();
        for from in c.env_from.iter().flatten() {
            let prefix = from.prefix.clone().unwrap_or_default();
            if let Some(r) = &from.config_map_ref {
                let m = self
                    .get_config_map(&ns, &r.name, r.optional.unwrap_or(false))
                    .await?;
                for (k, v) in m {
                    set(&mut spec_env, format!("{prefix}{k}"), v);
                }
            }
            if let Some(r) = &from.secret_ref {
                let m = self
                    .get_secret(&ns, &r.name, r.optional.unwrap_or(false))
                    .await?;
                for (k, v) in m {
                    set(&mut spec_env, format!("{prefix}{k}"), v);
                }
            }
        }
        let ips = self
            .st
            .sandbox
            .as_ref()
            .map(|s| {
                if s.host_network {
                    vec![self.ctx.cfg.node_ip.clone()]
                } else {
                    s.ips.clone()
                }
            })
            .unwrap_or_default();
        for EnvVar {
            name,
            value,
            value_from,
        } in c.env.iter().flatten()
        {
            let v = if let Some(vf) = value_from {
                if let Some(f) = &vf.field_ref {
                    env::field_ref(&self.pod, &f.field_path, &self.ctx.cfg.node_ip, &ips)
                        .ok_or_else(|| {
                            format!("env {name}: unsupported fieldPath {:?}", f.field_path)
                        })?
                } else if let Some(r) = &vf.resource_field_ref {
                    let target = match r.container_name.as_deref() {
                        Some(n) if !n.is_empty() => self
                            .spec()
                            .containers
                            .iter()
                            .find(|x| x.name == n)
                            .cloned()
                            .ok_or_else(|| format!("env {name}: no container {n:?}"))?,
                        _ => c.clone(),
                    };
                    env::resource_field(
                        &target,
                        &r.resource,
                        r.divisor.as_ref().map(|q| q.0.as_str()),
                    )
                    .ok_or_else(|| format!("env {name}: unsupported resource {:?}", r.resource))?
                } else if let Some(r) = &vf.config_map_key_ref {
                    let m = self
                        .get_config_map(&ns, &r.name, r.optional.unwrap_or(false))
                        .await?;
                    match m.get(&r.key) {
                        Some(v) => v.clone(),
                        None if r.optional.unwrap_or(false) => continue,
                        None => {
                            return Err(format!(
                                "couldn't find key {} in ConfigMap {ns}/{}",
                                r.key, r.name
                            ))
                        }
                    }
                } else if let Some(r) = &vf.secret_key_ref {
                    let m = self
                        .get_secret(&ns, &r.name, r.optional.unwrap_or(false))
                        .await?;
                    match m.get(&r.key) {
                        Some(v) => v.clone(),
                        None if r.optional.unwrap_or(false) => continue,
                        None => {
                            return Err(format!(
                                "couldn't find key {} in Secret {ns}/{}",
                                r.key, r.name
                            ))
                        }
                    }
                } else {
                    String::new()
                }
            } else {
                let so_far = spec_env.clone();
                let lookup =
                    move |k: &str| so_far.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
                env::expand(value.as_deref().unwrap_or(""), &lookup)
            };
            set(&mut spec_env, name.clone(), v);
        }
        for (k, v) in spec_env {
            set(&mut env, k, v);
        }
        Ok(env)
    }

    async fn get_config_map(
        &self,
        ns: &str,
        name: &str,
        optional: bool,
    ) -> Result<BTreeMap<String, String>, String> {
        let Some(client) = &self.ctx.api else {
            return Err(format!(
                "configmap {name:?}: no apiserver (standalone mode)"
            ));
        };
        match Api::<ConfigMap>::namespaced(client.clone(), ns)
            .get_opt(name)
            .await
        {
            Ok(Some(c)) => Ok(c.data.unwrap_or_default()),
            Ok(None) if optional => Ok(BTreeMap::new()),
            Ok(None) => Err(format!("configmap {name:?} not found")),
            Err(e) => Err(format!("configmap {name:?}: {e}")),
        }
    }

    async fn get_secret(
        &self,
        ns: &str,
        name: &str,
        optional: bool,
    ) -> Result<BTreeMap<String, String>, String> {
        let Some(client) = &self.ctx.api else {
            return Err(format!("secret {name:?}: no apiserver (standalone mode)"));
        };
        match Api::<Secret>::namespaced(client.clone(), ns)
            .get_opt(name)
            .await
        {
            Ok(Some(s)) => Ok(s
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
                .collect()),
            Ok(None) if optional => Ok(BTreeMap::new()),
            Ok(None) => Err(format!("secret {name:?} not found")),
            Err(e) => Err(format!("secret {name:?}: {e}")),
        }
    }

    async fn container_spec(
        &self,
        c: &Container,
        rec: &ImageRecord,
        img: &image::ImageConfig,
        sb: &SandboxState,
        id: &str,
    ) -> Result<Value, String> {
        let pod_spec = self.spec();
        let env = self.container_env(c, &img.env).await?;
        let lookup = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        let expand = |v: &Vec<String>| {
            v.iter()
                .map(|s| env::expand(s, &lookup))
                .collect::<Vec<_>>()
        };
        // The image's entrypoint/cmd unless the pod overrides them (Docker's rules).
        let args: Vec<String> = match (&c.command, &c.args) {
            (Some(cmd), Some(a)) => [expand(cmd), expand(a)].concat(),
            (Some(cmd), None) => expand(cmd),
            (None, Some(a)) => [img.entrypoint.clone(), expand(a)].concat(),
            (None, None) => [img.entrypoint.clone(), img.cmd.clone()].concat(),
        };
        if args.is_empty() {
            return Err("no command specified".into());
        }
        let psc = pod_spec.security_context.clone().unwrap_or_default();
        let sc = c.security_context.clone().unwrap_or_default();
        // User: securityContext, else the image's USER (name or uid[:gid]).
        let (mut uid, mut gid) = (0u32, 0u32);
        let image_user = img.user.trim();
        if !image_user.is_empty() {
            let (u, g) = image_user
                .split_once(':')
                .map_or((image_user, None), |(u, g)| (u, Some(g)));
            match u.parse::<u32>() {
                Ok(n) => {
                    uid = n;
                    gid = self.ctx.images.lookup_passwd_by_uid(rec, n).unwrap_or(0);
                }
                Err(_) => {
                    let (a, b) = self.ctx.images.lookup_passwd(rec, u).ok_or_else(|| {
                        format!("unable to find user {u}: no matching entries in passwd file")
                    })?;
                    uid = a;
                    gid = b;
                }
            }
            if let Some(g) = g {
                gid = match g.parse::<u32>() {
                    Ok(n) => n,
                    Err(_) => self
                        .ctx
                        .images
                        .lookup_group(rec, g)
                        .ok_or_else(|| format!("unable to find group {g}"))?,
                };
            }
        }
        if let Some(u) = sc.run_as_user.or(psc.run_as_user) {
            uid = u32::try_from(u).map_err(|_| format!("invalid runAsUser {u}"))?;
            if sc.run_as_group.or(psc.run_as_group).is_none() {
                gid = self
                    .ctx
                    .images
                    .lookup_passwd_by_uid(rec, uid)
                    .unwrap_or(gid);
            }
        }
        if let Some(g) = sc.run_as_group.or(psc.run_as_group) {
            gid = u32::try_from(g).map_err(|_| format!("invalid runAsGroup {g}"))?;
        }
        if sc.run_as_non_root.or(psc.run_as_non_root).unwrap_or(false) && uid == 0 {
            return Err("container has runAsNonRoot and image will run as root".into());
        }
        let mut gids: Vec<u32> = psc
            .supplemental_groups
            .iter()
            .flatten()
            .filter_map(|g| u32::try_from(*g).ok())
            .collect();
        if let Some(fg) = psc.fs_group.and_then(|g| u32::try_from(g).ok()) {
            gids.push(fg);
        }
        let privileged = sc.privileged.unwrap_or(false);
        if privileged && sc.allow_privilege_escalation == Some(false) {
            return Err(
                "cannot set allowPrivilegeEscalation to false and privileged to true".into(),
            );
        }
        let mut caps: Vec<String> = spec::DEFAULT_CAPS.iter().map(|s| s.to_string()).collect();
        if let Some(cp) = &sc.capabilities {
            let drops: Vec<String> = cp
                .drop
                .iter()
                .flatten()
                .map(|d| spec::cap_name(d))
                .collect();
            if drops.iter().any(|d| d == "CAP_ALL") {
                caps.clear();
            } else {
                caps.retain(|c| !drops.contains(c));
            }
            for a in cp.add.iter().flatten() {
                let a = spec::cap_name(a);
                if a == "CAP_ALL" {
                    caps = spec::ALL_CAPS.iter().map(|s| s.to_string()).collect();
                } else if !spec::ALL_CAPS.contains(&a.as_str()) {
                    return Err(format!("unknown capability {a:?}"));
                } else if !caps.contains(&a) {
                    caps.push(a);
                }
            }
        }
        // Volume mounts.
        let vols = self.volumes.clone().unwrap_or_default();
        let mut binds = Vec::new();
        for m in c.volume_mounts.iter().flatten() {
            let v = vols
                .get(&m.name)
                .ok_or_else(|| format!("volume mount {:?}: no volume of that name", m.name))?;
            let mut src = v.path.clone();
            if let Some(sp) = m.sub_path.as_ref().filter(|s| !s.is_empty()) {
                if sp.starts_with('/') || sp.split('/').any(|c| c == "..") {
                    return Err(format!("invalid subPath {sp:?}"));
                }
                src = src.join(sp);
                if !src.exists() {
                    std::fs::create_dir_all(&src).map_err(|e| e.to_string())?;
                }
            }
            binds.push(BindMount {
                source: src.display().to_string(),
                destination: m.mount_path.clone(),
                readonly: m.read_only.unwrap_or(false),
            });
        }
        let has = |binds: &Vec<BindMount>, dst: &str| binds.iter().any(|b| b.destination == dst);
        for (file, dst) in [
            ("etc-hosts", "/etc/hosts"),
            ("resolv.conf", "/etc/resolv.conf"),
            ("etc-hostname", "/etc/hostname"),
        ] {
            if !has(&binds, dst) {
                binds.push(BindMount {
                    source: self.dir.join(file).display().to_string(),
                    destination: dst.into(),
                    readonly: false,
                });
            }
        }
        let tlog = c
            .termination_message_path
            .clone()
            .unwrap_or_else(|| "/dev/termination-log".into());
        if !has(&binds, &tlog) {
            binds.push(BindMount {
                source: self
                    .ctx
                    .container_dir(id)
                    .join("termination-log")
                    .display()
                    .to_string(),
                destination: tlog,
                readonly: false,
            });
        }
        // Resources.
        let (cpu_req, cpu_lim) = env::requests_limits(c, "cpu");
        let (_, mem_lim) = env::requests_limits(c, "memory");
        let mut res = Resources::default();
        if let Some(m) = cpu_req.and_then(env::cpu_millis) {
            res.cpu_shares = Some(((m * 1024) / 1000).max(2) as u64);
        } else if cpu_lim.is_none() {
            res.cpu_shares = Some(2);
        }
        if let Some(m) = cpu_lim.and_then(env::cpu_millis) {
            res.cpu_period = Some(100_000);
            res.cpu_quota = Some((m * 100_000 / 1000).max(1000));
        }
        if let Some(b) = mem_lim.and_then(env::bytes) {
            res.memory_limit = Some(b);
        }
        let q = env::qos(&self.pod);
        let annotations = vec![
            (
                shim::CONTAINER_TYPE_ANNOTATION.to_string(),
                "container".to_string(),
            ),
            (shim::SANDBOX_ID_ANNOTATION.to_string(), sb.id.clone()),
            ("io.kubernetes.cri.container-name".into(), c.name.clone()),
            ("io.kubernetes.cri.image-name".into(), rec.name.clone()),
            (
                "io.kubernetes.cri.sandbox-name".into(),
                self.st.name.clone(),
            ),
            (
                "io.kubernetes.cri.sandbox-namespace".into(),
                self.st.namespace.clone(),
            ),
            ("io.kubernetes.cri.sandbox-uid".into(), self.st.uid.clone()),
        ];
        let ns_dir = format!("/proc/{}/ns", sb.pid);
        let s = spec::container(&ContainerSpec {
            args,
            env: env.iter().map(|(k, v)| format!("{k}={v}")).collect(),
            cwd: c
                .working_dir
                .clone()
                .filter(|w| !w.is_empty())
                .unwrap_or_else(|| img.working_dir.clone()),
            uid,
            gid,
            additional_gids: gids,
            caps,
            privileged,
            no_new_privileges: sc.allow_privilege_escalation == Some(false),
            readonly_rootfs: sc.read_only_root_filesystem.unwrap_or(false),
            sandbox_ns: &ns_dir,
            host_network: pod_spec.host_network.unwrap_or(false),
            host_ipc: pod_spec.host_ipc.unwrap_or(false),
            host_pid: pod_spec.host_pid.unwrap_or(false),
            binds,
            cgroups_path: format!("{}/{id}", self.cgroup_parent()),
            resources: res,
            annotations,
            oom_score_adj: env::oom_score_adj(q, c, self.ctx.oom_floor),
        });
        spec::validate(&s)?;
        Ok(s)
    }

    /// Run a lifecycle hook (exec in the container, or an HTTP GET to the pod).
    async fn run_hook(
        &self,
        h: &LifecycleHandler,
        id: &str,
        timeout: Duration,
    ) -> Result<(), String> {
        let Some(sb) = &self.st.sandbox else {
            return Err("no sandbox".into());
        };
        if let Some(e) = &h.exec {
            let cmd = e.command.clone().unwrap_or_default();
            if cmd.is_empty() {
                return Err("exec hook without a command".into());
            }
            let spec_path = self.ctx.container_dir(id).join("bundle/config.json");
            let spec: Value = std::fs::read(&spec_path)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or_default();
            let mut process = spec["process"].clone();
            process["args"] = json!(cmd);
            process["terminal"] = json!(false);
            let code = self
                .ctx
                .shims
                .exec_sync(&sb.shim_address, id, &process, timeout.as_secs().max(1))
                .await
                .map_err(|e| e.to_string())?;
            return if code == 0 {
                Ok(())
            } else {
                Err(format!("command {cmd:?} exited with {code}"))
            };
        }
        if let Some(g) = &h.http_get {
            let host = g.host.clone().filter(|h| !h.is_empty()).unwrap_or_else(|| {
                if sb.host_network {
                    self.ctx.cfg.node_ip.clone()
                } else {
                    sb.ips.first().cloned().unwrap_or_default()
                }
            });
            let port = match &g.port {
                k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(p) => *p,
                k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(name) => self
                    .spec()
                    .containers
                    .iter()
                    .flat_map(|c| c.ports.iter().flatten())
                    .find(|p| p.name.as_deref() == Some(name.as_str()))
                    .map(|p| p.container_port)
                    .ok_or_else(|| format!("no port named {name:?}"))?,
            };
            let path = g.path.clone().unwrap_or_else(|| "/".into());
            return tokio::time::timeout(timeout, http_get(&host, port as u16, &path))
                .await
                .map_err(|_| "HTTP hook timed out".to_string())?;
        }
        if let Some(s) = &h.sleep {
            tokio::time::sleep(Duration::from_secs(s.seconds.max(0) as u64).min(timeout)).await;
            return Ok(());
        }
        Err("hook has no handler".into())
    }

    /// Stop every running container: preStop, SIGTERM, SIGKILL at the deadline.
    async fn kill_containers(&mut self, grace: i64) {
        let Some(sb) = self.st.sandbox.clone() else {
            return;
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(grace as u64);
        let spec = self.spec();
        let running: Vec<(Container, String)> = spec
            .containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
            .filter_map(|c| {
                let cs = self
                    .st
                    .apps
                    .get(&c.name)
                    .filter(|cs| cs.phase == Phase::Running)
                    .or_else(|| {
                        self.st
                            .init
                            .get(&c.name)
                            .filter(|cs| cs.phase == Phase::Running)
                    })?;
                Some((c.clone(), cs.id.clone()))
            })
            .collect();
        let this = &*self;
        let stops = running.iter().map(|(c, id)| {
            let addr = sb.shim_address.clone();
            async move {
                let shims = &this.ctx.shims;
                if let Some(h) = c.lifecycle.as_ref().and_then(|l| l.pre_stop.as_ref()) {
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    if let Err(e) = this.run_hook(h, id, left).await {
                        tracing::warn!(pod = %this.id(), container = %c.name, "preStop hook: {e}");
                    }
                }
                let _ = shims.kill(&addr, id, libc::SIGTERM as u32, false).await;
                let waited = tokio::time::timeout_at(deadline, shims.wait(&addr, id, "")).await;
                let exit = match waited {
                    Ok(Ok(e)) => Some(e),
                    _ => {
                        let _ = shims.kill(&addr, id, libc::SIGKILL as u32, true).await;
                        tokio::time::timeout(Duration::from_secs(10), shims.wait(&addr, id, ""))
                            .await
                            .ok()
                            .and_then(|r| r.ok())
                    }
                };
                (id.clone(), exit)
            }
        });
        let results = futures::future::join_all(stops).await;
        for (id, exit) in results {
            let (code, at) = exit.map(|e| (e.status, e.at_nanos)).unwrap_or((137, 0));
            self.exited(&id, code, at);
        }
    }

    /// Remove the sandbox: CNI DEL, the pause container, the shim, the pod cgroup.
    async fn teardown_sandbox(&mut self) {
        let Some(sb) = self.st.sandbox.clone() else {
            return;
        };
        let ctx = self.ctx.clone();
        let shims = &ctx.shims;
        // Delete every container task of the pod first (the shim exits with the last).
        let ids: Vec<String> = self
            .st
            .init
            .values()
            .chain(self.st.apps.values())
            .filter(|c| !c.id.is_empty())
            .map(|c| c.id.clone())
            .collect();
        for id in &ids {
            if let Err(e) = shims.delete(&sb.shim_address, id, "").await {
                if e.is_unreachable() {
                    shims
                        .cleanup_dead(id, &self.ctx.container_dir(id).join("bundle"))
                        .await;
                } else {
                    let _ = shims
                        .kill(&sb.shim_address, id, libc::SIGKILL as u32, true)
                        .await;
                    let _ = tokio::time::timeout(
                        Duration::from_secs(5),
                        shims.wait(&sb.shim_address, id, ""),
                    )
                    .await;
                    let _ = shims.delete(&sb.shim_address, id, "").await;
                }
            }
            if let Some(tx) = self.logs.remove(id) {
                let _ = tx.send(true);
            }
        }
        if !sb.network.is_empty() {
            let rt = self.runtime_conf(&sb.id, sb.pid);
            let rt = RuntimeConf {
                netns: if sb.pid > 0 && Path::new(&format!("/proc/{}/ns/net", sb.pid)).exists() {
                    rt.netns
                } else {
                    String::new()
                },
                ..rt
            };
            let fallback = self.ctx.cni.load().ok();
            if let Err(e) = self.ctx.cni.del(&sb.network, fallback.as_ref(), &rt).await {
                tracing::warn!(pod = %self.id(), "CNI DEL: {e}");
            }
        }
        let _ = shims
            .kill(&sb.shim_address, &sb.id, libc::SIGKILL as u32, true)
            .await;
        let _ = tokio::time::timeout(
            Duration::from_secs(10),
            shims.wait(&sb.shim_address, &sb.id, ""),
        )
        .await;
        match shims.delete(&sb.shim_address, &sb.id, "").await {
            Err(e) if e.is_unreachable() => {
                shims
                    .cleanup_dead(&sb.id, &self.ctx.container_dir(&sb.id).join("bundle"))
                    .await;
            }
            Err(e) => tracing::warn!(pod = %self.id(), "deleting the sandbox: {e}"),
            Ok(_) => {}
        }
        shims.shutdown(&sb.shim_address, &sb.id).await;
        for id in ids.iter().chain(std::iter::once(&sb.id)) {
            self.ctx.forget_container(id);
            let _ = std::fs::remove_dir_all(self.ctx.container_dir(id));
        }
        crate::cgroups::remove(&self.cgroup_parent());
        self.st.sandbox = None;
        self.save();
    }

    /// Deletion: kill everything, release the network, remove the pod's files, and (API
    /// pods) delete the object with grace 0 and a UID precondition.
    async fn terminate(&mut self) {
        let grace = self.grace_seconds();
        tracing::info!(pod = %self.id(), grace, "stopping pod");
        self.kill_containers(grace).await;
        self.teardown_sandbox().await;
        volumes::teardown(&self.dir);
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_dir_all(crate::logs::pod_log_dir(
            &self.ctx.cfg.pod_log_dir,
            &self.st.namespace,
            &self.st.name,
            &self.st.uid,
        ));
        if !self.st.static_pod && self.pod.metadata.deletion_timestamp.is_some() {
            if let Some(client) = &self.ctx.api {
                let api: Api<Pod> = Api::namespaced(client.clone(), &self.st.namespace);
                let dp = DeleteParams {
                    grace_period_seconds: Some(0),
                    preconditions: Some(Preconditions {
                        uid: Some(self.st.uid.clone()),
                        resource_version: None,
                    }),
                    ..Default::default()
                };
                for attempt in 0..5 {
                    match api.delete(&self.st.name, &dp).await {
                        Ok(_) => break,
                        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => break,
                        Err(e) => {
                            tracing::warn!(pod = %self.id(), "deleting the pod object: {e}");
                            tokio::time::sleep(Duration::from_millis(500 << attempt)).await;
                        }
                    }
                }
            }
        }
        self.removed = true;
        let _ = self.ctx.status.send(StatusReport {
            uid: self.st.uid.clone(),
            namespace: self.st.namespace.clone(),
            name: self.st.name.clone(),
            static_pod: self.st.static_pod,
            status: PodStatus::default(),
            gone: true,
        });
        tracing::info!(pod = %self.id(), "pod removed");
    }
}

fn nanos_to_dur(n: i128) -> Duration {
    Duration::from_nanos(n.clamp(0, u64::MAX as i128) as u64)
}

/// A minimal HTTP/1.1 GET (lifecycle hooks); success is a 2xx or 3xx status.
pub async fn http_get(host: &str, port: u16, path: &str) -> Result<(), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let mut s = tokio::net::TcpStream::connect(&addr)
        .await
        .map_err(|e| format!("{addr}: {e}"))?;
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: nestlet\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 512];
    let n = s.read(&mut buf).await.map_err(|e| e.to_string())?;
    let head = String::from_utf8_lossy(&buf[..n]);
    let code: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    if (200..400).contains(&code) {
        Ok(())
    } else {
        Err(format!("HTTP GET {path}: status {code}"))
    }
}
