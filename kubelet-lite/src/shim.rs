//! The shim v2 client: nestlet drives every container through `containerd-shim-nestbox-v2`
//! exactly as containerd does — `start` (one shim per pod, grouped by the bundle's
//! `io.kubernetes.cri.sandbox-id` annotation) prints the shim's ttrpc address; the Task
//! service creates, starts, waits, kills and deletes; `delete` cleans up after a dead shim.
//! [`EventsServer`] serves `containerd.services.events.ttrpc.v1.Events` on the
//! `TTRPC_ADDRESS` the shims publish to (task exits and OOMs).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use containerd_shim_protos::api;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::{Message, MessageField};
use containerd_shim_protos::shim_async::{Client, TaskClient};
use containerd_shim_protos::ttrpc;
use containerd_shim_protos::ttrpc::context::{self, Context};
use tokio::sync::{mpsc, Mutex};

/// containerd's namespace for Kubernetes (the shim's socket path derives from it).
pub const NAMESPACE: &str = "k8s.io";
/// Bundle annotation that groups a pod's containers into one shim.
pub const SANDBOX_ID_ANNOTATION: &str = "io.kubernetes.cri.sandbox-id";
pub const CONTAINER_TYPE_ANNOTATION: &str = "io.kubernetes.cri.container-type";

#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    #[error("shim {verb} for {id}: {msg}")]
    Launch {
        verb: &'static str,
        id: String,
        msg: String,
    },
    #[error("shim {op} {id}: {source}")]
    Rpc {
        op: &'static str,
        id: String,
        #[source]
        source: ttrpc::Error,
    },
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
}

impl ShimError {
    /// The shim answered NOT_FOUND (the task or process is gone).
    pub fn is_not_found(&self) -> bool {
        matches!(self, ShimError::Rpc { source: ttrpc::Error::RpcStatus(s), .. }
            if s.code() == ttrpc::Code::NOT_FOUND)
    }

    /// The shim's socket is gone or closed (the shim died).
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            ShimError::Rpc {
                source: ttrpc::Error::Socket(_)
                    | ttrpc::Error::RemoteClosed
                    | ttrpc::Error::LocalClosed
                    | ttrpc::Error::Nix(_),
                ..
            }
        )
    }
}

/// A rootfs mount for Create (the shim mounts it onto `<bundle>/rootfs`).
#[derive(Clone, Debug)]
pub struct RootfsMount {
    pub fstype: String,
    pub source: String,
    pub options: Vec<String>,
}

/// How shims are started, and connections to the running ones.
pub struct Shims {
    pub binary: PathBuf,
    /// `-address`: only used by the shim to derive its socket path.
    pub address: String,
    pub publish_binary: PathBuf,
    /// Unix socket path of our events service (`TTRPC_ADDRESS`).
    pub events_socket: PathBuf,
    /// The OCI runtime binary the shim runs (`containerd.runc.v1.Options.binary_name`).
    pub runtime_binary: PathBuf,
    /// The runtime's `--root` (`Options.root`).
    pub runtime_root: PathBuf,
    clients: Mutex<HashMap<String, TaskClient>>,
}

/// Exit of a task as the shim reports it.
#[derive(Clone, Copy, Debug)]
pub struct Exit {
    pub status: u32,
    /// Unix nanoseconds (0 when unknown).
    pub at_nanos: i128,
}

fn ts_nanos(
    t: &MessageField<containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp>,
) -> i128 {
    t.as_ref()
        .map(|t| t.seconds as i128 * 1_000_000_000 + t.nanos as i128)
        .unwrap_or(0)
}

fn ctx(secs: i64) -> Context {
    let mut c = context::with_timeout(secs * 1_000_000_000);
    // containerd sends its namespace with every call.
    c.add("containerd-namespace".to_string(), NAMESPACE.to_string());
    c.add(
        "containerd-namespace-ttrpc".to_string(),
        NAMESPACE.to_string(),
    );
    c
}

/// Timeout of the calls that run the OCI runtime (create, start, kill, delete): generous,
/// since 30 pods starting at once on 2 cores queue behind each other.
const CALL_SECS: i64 = 60;

impl Shims {
    pub fn new(
        binary: PathBuf,
        address: String,
        publish_binary: PathBuf,
        events_socket: PathBuf,
        runtime_binary: PathBuf,
        runtime_root: PathBuf,
    ) -> Shims {
        Shims {
            binary,
            address,
            publish_binary,
            events_socket,
            runtime_binary,
            runtime_root,
            clients: Mutex::new(HashMap::new()),
        }
    }

    fn base_cmd(&self, id: &str, cwd: &Path) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(&self.binary);
        cmd.arg("-namespace")
            .arg(NAMESPACE)
            .arg("-address")
            .arg(&self.address)
            .arg("-publish-binary")
            .arg(&self.publish_binary)
            .arg("-id")
            .arg(id)
            .current_dir(cwd)
            // A plain socket path, as containerd passes it.
            .env("TTRPC_ADDRESS", &self.events_socket)
            .env("GRPC_ADDRESS", &self.address)
            .env("NAMESPACE", NAMESPACE)
            .stdin(std::process::Stdio::null());
        cmd
    }

    /// `shim start`: start (or reuse) the pod's shim for container `id` whose bundle is
    /// `bundle`; returns the shim's address (`unix:///run/containerd/s/…`).
    pub async fn start(&self, id: &str, bundle: &Path) -> Result<String, ShimError> {
        // stdout to a file, not a pipe: the daemon the start command forks may keep the
        // inherited descriptor, and a pipe would then never reach EOF.
        let out_path = bundle.join(".shim-start.out");
        let err_path = bundle.join(".shim-start.err");
        let io = |e| ShimError::Io(format!("shim start output in {}", bundle.display()), e);
        let out = std::fs::File::create(&out_path).map_err(io)?;
        let err = std::fs::File::create(&err_path).map_err(io)?;
        let status = self
            .base_cmd(id, bundle)
            .arg("start")
            .stdout(out)
            .stderr(err)
            .status()
            .await
            .map_err(|e| ShimError::Io(format!("exec {}", self.binary.display()), e))?;
        let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
        let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
        let _ = std::fs::remove_file(&out_path);
        let _ = std::fs::remove_file(&err_path);
        let addr = stdout.trim().to_string();
        if !status.success() || addr.is_empty() {
            return Err(ShimError::Launch {
                verb: "start",
                id: id.to_string(),
                msg: format!("{status}: {}", last_lines(&stderr, 5)),
            });
        }
        Ok(addr)
    }

    /// `shim delete -bundle B`: clean up a container whose shim is gone (unmount the
    /// rootfs, delete the runtime's state). Errors are logged, not returned.
    pub async fn cleanup_dead(&self, id: &str, bundle: &Path) {
        if !bundle.is_dir() {
            return;
        }
        let res = self
            .base_cmd(id, bundle)
            .arg("-bundle")
            .arg(bundle)
            .arg("delete")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .output()
            .await;
        match res {
            Ok(o) if o.status.success() => {}
            Ok(o) => tracing::warn!(
                id,
                "shim delete: {}: {}",
                o.status,
                last_lines(&String::from_utf8_lossy(&o.stderr), 3)
            ),
            Err(e) => tracing::warn!(id, "shim delete: {e}"),
        }
    }

    async fn client(&self, address: &str) -> Result<TaskClient, ShimError> {
        let mut clients = self.clients.lock().await;
        if let Some(c) = clients.get(address) {
            return Ok(c.clone());
        }
        let c = Client::connect(address).await.map_err(|e| ShimError::Rpc {
            op: "connect",
            id: address.to_string(),
            source: e,
        })?;
        let tc = TaskClient::new(c);
        clients.insert(address.to_string(), tc.clone());
        Ok(tc)
    }

    /// Forget a cached connection (after the shim went away).
    pub async fn forget(&self, address: &str) {
        self.clients.lock().await.remove(address);
    }

    async fn call<T, F, Fut>(
        &self,
        address: &str,
        op: &'static str,
        id: &str,
        f: F,
    ) -> Result<T, ShimError>
    where
        F: Fn(TaskClient) -> Fut,
        Fut: std::future::Future<Output = ttrpc::Result<T>>,
    {
        let c = self.client(address).await?;
        match f(c).await {
            Ok(v) => Ok(v),
            Err(e) => {
                let err = ShimError::Rpc {
                    op,
                    id: id.to_string(),
                    source: e,
                };
                if err.is_unreachable() {
                    self.forget(address).await;
                }
                Err(err)
            }
        }
    }

    fn runtime_options(&self) -> Any {
        let mut o = containerd_shim_protos::shim::oci::Options::new();
        o.binary_name = self.runtime_binary.display().to_string();
        o.root = self.runtime_root.display().to_string();
        Any {
            type_url: "containerd.runc.v1.Options".to_string(),
            value: o.write_to_bytes().unwrap_or_default(),
            ..Default::default()
        }
    }

    /// Create the task; returns its pid.
    #[allow(clippy::too_many_arguments)]
    pub async fn create(
        &self,
        address: &str,
        id: &str,
        bundle: &Path,
        rootfs: &[RootfsMount],
        stdout: &str,
        stderr: &str,
    ) -> Result<u32, ShimError> {
        let mut req = api::CreateTaskRequest::new();
        req.id = id.to_string();
        req.bundle = bundle.display().to_string();
        req.rootfs = rootfs
            .iter()
            .map(|m| {
                let mut mm = api::Mount::new();
                mm.type_ = m.fstype.clone();
                mm.source = m.source.clone();
                mm.options = m.options.clone();
                mm
            })
            .collect();
        req.stdout = stdout.to_string();
        req.stderr = stderr.to_string();
        req.options = MessageField::some(self.runtime_options());
        let r = self
            .call(address, "create", id, |c| {
                let req = req.clone();
                async move { c.create(ctx(CALL_SECS), &req).await }
            })
            .await?;
        Ok(r.pid)
    }

    pub async fn start_task(
        &self,
        address: &str,
        id: &str,
        exec_id: &str,
    ) -> Result<u32, ShimError> {
        let mut req = api::StartRequest::new();
        req.id = id.to_string();
        req.exec_id = exec_id.to_string();
        let r = self
            .call(address, "start", id, |c| {
                let req = req.clone();
                async move { c.start(ctx(CALL_SECS), &req).await }
            })
            .await?;
        Ok(r.pid)
    }

    /// Block until the task (or exec process) exits.
    pub async fn wait(&self, address: &str, id: &str, exec_id: &str) -> Result<Exit, ShimError> {
        let mut req = api::WaitRequest::new();
        req.id = id.to_string();
        req.exec_id = exec_id.to_string();
        let r = self
            .call(address, "wait", id, |c| {
                let req = req.clone();
                async move { c.wait(context::with_timeout(0), &req).await }
            })
            .await?;
        Ok(Exit {
            status: r.exit_status,
            at_nanos: ts_nanos(&r.exited_at),
        })
    }

    pub async fn kill(
        &self,
        address: &str,
        id: &str,
        signal: u32,
        all: bool,
    ) -> Result<(), ShimError> {
        let mut req = api::KillRequest::new();
        req.id = id.to_string();
        req.signal = signal;
        req.all = all;
        self.call(address, "kill", id, |c| {
            let req = req.clone();
            async move { c.kill(ctx(CALL_SECS), &req).await }
        })
        .await?;
        Ok(())
    }

    /// Delete the task (or an exec process); NOT_FOUND counts as done.
    pub async fn delete(
        &self,
        address: &str,
        id: &str,
        exec_id: &str,
    ) -> Result<Option<Exit>, ShimError> {
        let mut req = api::DeleteRequest::new();
        req.id = id.to_string();
        req.exec_id = exec_id.to_string();
        match self
            .call(address, "delete", id, |c| {
                let req = req.clone();
                async move { c.delete(ctx(CALL_SECS), &req).await }
            })
            .await
        {
            Ok(r) => Ok(Some(Exit {
                status: r.exit_status,
                at_nanos: ts_nanos(&r.exited_at),
            })),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The task's state: (status, pid, exit).
    pub async fn state(&self, address: &str, id: &str) -> Result<TaskState, ShimError> {
        let mut req = api::StateRequest::new();
        req.id = id.to_string();
        let r = self
            .call(address, "state", id, |c| {
                let req = req.clone();
                async move { c.state(ctx(10), &req).await }
            })
            .await?;
        use containerd_shim_protos::api::Status;
        let status = match r.status.enum_value_or_default() {
            Status::CREATED => TaskStatus::Created,
            Status::RUNNING | Status::PAUSED | Status::PAUSING => TaskStatus::Running,
            Status::STOPPED => TaskStatus::Stopped,
            _ => TaskStatus::Unknown,
        };
        Ok(TaskState {
            status,
            pid: r.pid,
            exit: Exit {
                status: r.exit_status,
                at_nanos: ts_nanos(&r.exited_at),
            },
        })
    }

    /// Run a process in the container (hooks): returns its exit status, or an error when it
    /// did not finish within `timeout_secs`.
    pub async fn exec_sync(
        &self,
        address: &str,
        id: &str,
        process: &serde_json::Value,
        timeout_secs: u64,
    ) -> Result<u32, ShimError> {
        let exec_id = format!("hook-{}", crate::util::random_hex(6));
        let mut req = api::ExecProcessRequest::new();
        req.id = id.to_string();
        req.exec_id = exec_id.clone();
        req.spec = MessageField::some(Any {
            type_url: "types.containerd.io/opencontainers/runtime-spec/1/Process".to_string(),
            value: serde_json::to_vec(process).unwrap_or_default(),
            ..Default::default()
        });
        self.call(address, "exec", id, |c| {
            let req = req.clone();
            async move { c.exec(ctx(CALL_SECS), &req).await }
        })
        .await?;
        let result = async {
            self.start_task(address, id, &exec_id).await?;
            match tokio::time::timeout(
                std::time::Duration::from_secs(timeout_secs),
                self.wait(address, id, &exec_id),
            )
            .await
            {
                Ok(r) => r.map(|e| e.status),
                Err(_) => {
                    let mut k = api::KillRequest::new();
                    k.id = id.to_string();
                    k.exec_id = exec_id.clone();
                    k.signal = libc::SIGKILL as u32;
                    let _ = self
                        .call(address, "kill", id, |c| {
                            let k = k.clone();
                            async move { c.kill(ctx(10), &k).await }
                        })
                        .await;
                    let _ = self.wait(address, id, &exec_id).await;
                    Err(ShimError::Launch {
                        verb: "exec",
                        id: id.to_string(),
                        msg: format!("timed out after {timeout_secs} s"),
                    })
                }
            }
        }
        .await;
        let _ = self.delete(address, id, &exec_id).await;
        result
    }

    /// Ask the shim to exit (after its last task was deleted).
    pub async fn shutdown(&self, address: &str, id: &str) {
        let mut req = api::ShutdownRequest::new();
        req.id = id.to_string();
        let r = self
            .call(address, "shutdown", id, |c| {
                let req = req.clone();
                async move { c.shutdown(ctx(10), &req).await }
            })
            .await;
        if let Err(e) = r {
            if !e.is_unreachable() {
                tracing::debug!(id, "shim shutdown: {e}");
            }
        }
        self.forget(address).await;
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskStatus {
    Created,
    Running,
    Stopped,
    Unknown,
}

#[derive(Clone, Copy, Debug)]
pub struct TaskState {
    pub status: TaskStatus,
    pub pid: u32,
    pub exit: Exit,
}

fn last_lines(s: &str, n: usize) -> String {
    let v: Vec<&str> = s.lines().filter(|l| !l.trim().is_empty()).collect();
    v[v.len().saturating_sub(n)..].join(" | ")
}

/// What a shim told us through the events service.
#[derive(Clone, Debug)]
pub enum TaskEvent {
    Exit {
        container_id: String,
        exec_id: String,
        status: u32,
        at_nanos: i128,
    },
    Oom {
        container_id: String,
    },
}

struct EventsService {
    tx: mpsc::UnboundedSender<TaskEvent>,
}

#[async_trait::async_trait]
impl containerd_shim_protos::shim_async::Events for EventsService {
    async fn forward(
        &self,
        _ctx: &ttrpc::r#async::TtrpcContext,
        req: api::ForwardRequest,
    ) -> ttrpc::Result<api::Empty> {
        use containerd_shim_protos::events::task::{TaskExit, TaskOOM};
        let Some(env) = req.envelope.as_ref() else {
            return Ok(api::Empty::new());
        };
        let Some(any) = env.event.as_ref() else {
            return Ok(api::Empty::new());
        };
        let ty = any.type_url.rsplit('/').next().unwrap_or("");
        match ty {
            "containerd.events.TaskExit" => {
                if let Ok(e) = TaskExit::parse_from_bytes(&any.value) {
                    let _ = self.tx.send(TaskEvent::Exit {
                        exec_id: if e.id == e.container_id {
                            String::new()
                        } else {
                            e.id.clone()
                        },
                        container_id: e.container_id.clone(),
                        status: e.exit_status,
                        at_nanos: ts_nanos(&e.exited_at),
                    });
                }
            }
            "containerd.events.TaskOOM" => {
                if let Ok(e) = TaskOOM::parse_from_bytes(&any.value) {
                    let _ = self.tx.send(TaskEvent::Oom {
                        container_id: e.container_id.clone(),
                    });
                }
            }
            _ => tracing::trace!(topic = env.topic, "shim event"),
        }
        Ok(api::Empty::new())
    }
}

/// The ttrpc server the shims publish their events to.
pub struct EventsServer {
    server: ttrpc::asynchronous::Server,
    path: PathBuf,
}

impl EventsServer {
    /// Listen on `path` (a stale socket from an earlier run is replaced).
    pub async fn start(
        path: &Path,
        tx: mpsc::UnboundedSender<TaskEvent>,
    ) -> Result<EventsServer, ShimError> {
        let _ = std::fs::remove_file(path);
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d).map_err(|e| ShimError::Io(d.display().to_string(), e))?;
        }
        let service =
            containerd_shim_protos::shim_async::create_events(Arc::new(EventsService { tx }));
        let rpc = |e| ShimError::Rpc {
            op: "serve events",
            id: path.display().to_string(),
            source: e,
        };
        let mut server = ttrpc::asynchronous::Server::new()
            .bind(&format!("unix://{}", path.display()))
            .map_err(rpc)?
            .register_service(service);
        server.start().await.map_err(rpc)?;
        Ok(EventsServer {
            server,
            path: path.to_path_buf(),
        })
    }

    pub async fn stop(mut self) {
        let _ = self.server.shutdown().await;
        let _ = std::fs::remove_file(&self.path);
    }
}
