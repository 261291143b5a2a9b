//! The Task service (containerd.task.v2.Task) over ttrpc: what containerd's task manager and
//! nestlet call for every container of the pod this shim serves. Handlers validate, drive the
//! runtime, keep each process's state, and queue the task events containerd expects (create,
//! start, exit after start, delete, exec-added, exec-started, oom, paused, resumed).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, SystemTime};

use containerd_shim::api::{
    CloseIORequest, ConnectRequest, ConnectResponse, CreateTaskRequest, CreateTaskResponse,
    DeleteRequest, Empty, ExecProcessRequest, KillRequest, PauseRequest, PidsRequest, PidsResponse,
    ResizePtyRequest, ResumeRequest, ShutdownRequest, StartRequest, StartResponse, StateRequest,
    StateResponse, StatsRequest, StatsResponse, UpdateTaskRequest, WaitRequest, WaitResponse,
};
use containerd_shim::protos::api::{CheckpointTaskRequest, ProcessInfo, Status};
use containerd_shim::protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO, TaskOOM, TaskPaused,
    TaskResumed, TaskStart,
};
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::Message;
use containerd_shim::protos::shim::oci::ProcessDetails;
use containerd_shim::protos::types::mount::Mount;
use containerd_shim::{DeleteResponse, ExitSignal, Task, TtrpcContext, TtrpcResult};
use nestbox_cgroups::Cgroup;
use runc::options::{CreateOpts, ExecOpts};

use crate::container::{lock, Container, Process, ProcessState};
use crate::error::{Error, Result};
use crate::events::Publisher;
use crate::exits::Exits;
use crate::io::{ProcessIo, Stdio};
use crate::runtime::{is_gone, Runtime, RuntimeOptions};
use crate::{metrics, timestamp};

/// How long Delete waits for a process's output to drain (the Go shim's bound).
const OUTPUT_DRAIN: Duration = Duration::from_secs(2);
const SIGKILL: u32 = 9;

/// Which process a watched pid belongs to.
#[derive(Clone)]
struct Watch {
    container: Arc<Container>,
    exec_id: Option<String>,
}

pub struct Service {
    inner: Arc<Inner>,
}

struct Inner {
    namespace: String,
    containers: Mutex<HashMap<String, Arc<Container>>>,
    /// Ids whose Create is running (so a second Create of the same id is refused).
    creating: Mutex<HashSet<String>>,
    events: Publisher,
    exits: Arc<Exits<Watch>>,
    exit: Arc<ExitSignal>,
}

impl Service {
    pub fn new(
        namespace: &str,
        events_address: &str,
        exit: Arc<ExitSignal>,
    ) -> std::io::Result<Service> {
        let target: Arc<OnceLock<Weak<Inner>>> = Arc::default();
        let t = Arc::clone(&target);
        let exits = Exits::start(move |w: Watch, code| {
            if let Some(inner) = t.get().and_then(Weak::upgrade) {
                inner.on_exit(&w.container, w.exec_id.as_deref(), code);
            }
        })?;
        let inner = Arc::new(Inner {
            namespace: namespace.to_owned(),
            containers: Mutex::new(HashMap::new()),
            creating: Mutex::new(HashSet::new()),
            events: Publisher::spawn(events_address.to_owned(), namespace.to_owned())?,
            exits,
            exit,
        });
        let _ = target.set(Arc::downgrade(&inner));
        Ok(Service { inner })
    }
}

fn read_pid(path: &Path) -> Result<u32> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::io(format!("reading pid file {}", path.display()), e))?;
    text.trim()
        .parse()
        .map_err(|_| Error::Other(format!("pid file {} holds {text:?}", path.display())))
}

fn exited_fields(
    st: &ProcessState,
) -> (
    u32,
    Option<containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp>,
) {
    match st.exited {
        Some(e) => (e.status, Some(timestamp(e.at))),
        None => (0, None),
    }
}

/// `type_url`: containerd's name for the message (its proto full name; see events.rs on why
/// it is not looked up).
fn any_of<M: Message>(type_url: &str, m: &M) -> Result<Any> {
    let mut any = Any::new();
    any.type_url = type_url.to_owned();
    any.value = m
        .write_to_bytes()
        .map_err(|e| Error::Other(format!("encoding {}: {e}", any.type_url)))?;
    Ok(any)
}

/// An exec id names a pid file in the bundle: keep it one plain path component.
fn check_exec_id(id: &str) -> Result<()> {
    if id.is_empty() || id == "." || id == ".." || id.contains(['/', '\0']) {
        return Err(Error::InvalidArgument(format!("invalid exec id {id:?}")));
    }
    Ok(())
}

/// Mount the request's rootfs list at `<bundle>/rootfs` (all stacked on the one target, as
/// containerd does); nothing stays mounted when one fails.
fn mount_rootfs(mounts: &[Mount], bundle: &Path) -> Result<bool> {
    if mounts.is_empty() {
        return Ok(false);
    }
    let target = bundle.join("rootfs");
    std::fs::create_dir_all(&target)
        .map_err(|e| Error::io(format!("creating {}", target.display()), e))?;
    for m in mounts {
        let nonempty = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        if let Err(e) = containerd_shim::mount::mount_rootfs(
            nonempty(&m.type_).as_deref(),
            nonempty(&m.source).as_deref(),
            &m.options,
            &target,
        ) {
            unmount_rootfs(bundle);
            return Err(Error::InvalidArgument(format!(
                "mounting rootfs ({} {} {:?}) on {}: {e}",
                m.type_,
                m.source,
                m.options,
                target.display()
            )));
        }
    }
    Ok(true)
}

pub(crate) fn unmount_rootfs(bundle: &Path) {
    let target = bundle.join("rootfs");
    let Some(t) = target.to_str() else { return };
    if containerd_shim::mount::umount_recursive(Some(t), 0).is_err() {
        if let Err(e) = containerd_shim::mount::umount_recursive(Some(t), libc::MNT_DETACH) {
            tracing::warn!(target = t, error = %e, "unmounting the rootfs");
        }
    }
}

/// Without a PID namespace of its own (none, or one joined by path), processes can outlive
/// the container's init: they are killed when it exits, as the Go shim does.
fn shares_pid_namespace(spec: &serde_json::Value) -> bool {
    let own = spec["linux"]["namespaces"].as_array().is_some_and(|list| {
        list.iter()
            .any(|n| n["type"] == "pid" && n["path"].as_str().is_none_or(str::is_empty))
    });
    !own
}

impl Inner {
    fn container(&self, id: &str) -> Result<Arc<Container>> {
        lock(&self.containers)
            .get(id)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("container {id} not found")))
    }

    fn process(&self, id: &str, exec_id: &str) -> Result<(Arc<Container>, Arc<Process>)> {
        let c = self.container(id)?;
        let p = c.process(exec_id).ok_or_else(|| {
            Error::NotFound(format!("exec {exec_id} not found in container {id}"))
        })?;
        Ok((c, p))
    }

    fn publish_exit(&self, c: &Container, p: &Process, st: &mut ProcessState) {
        let Some(e) = st.exited else { return };
        if st.exit_published {
            return;
        }
        st.exit_published = true;
        self.events.exit(TaskExit {
            container_id: c.id.clone(),
            id: p.exec_id.clone().unwrap_or_else(|| c.id.clone()),
            pid: st.pid,
            exit_status: e.status,
            exited_at: Some(timestamp(e.at)).into(),
            ..Default::default()
        });
    }

    fn publish_oom(&self, c: &Container) {
        if c.new_oom_kills() {
            self.events.oom(TaskOOM {
                container_id: c.id.clone(),
                ..Default::default()
            });
        }
    }

    fn on_exit(&self, c: &Arc<Container>, exec_id: Option<&str>, code: i32) {
        let Some(p) = c.process(exec_id.unwrap_or("")) else {
            return;
        };
        if exec_id.is_none() {
            if c.kill_all_on_exit {
                if let Err(e) = c.runtime.kill(&c.id, SIGKILL, true) {
                    tracing::debug!(id = %c.id, error = %e, "kill --all after init exit");
                }
            }
            // An OOM kill of init is reported before its exit, so CRI says OOMKilled.
            self.publish_oom(c);
        }
        let mut st = p.state();
        p.set_exited(&mut st, code);
        if !st.starting {
            self.publish_exit(c, &p, &mut st);
        }
    }

    /// One thread per container waits for the kernel's OOM notification (it ends when the
    /// cgroup is removed).
    fn watch_oom(self: &Arc<Self>, c: &Arc<Container>) {
        let Some(cgroup) = &c.cgroup else { return };
        let mut notifier = match cgroup.oom_notifier() {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(id = %c.id, error = %e, "no OOM notifications for this container");
                return;
            }
        };
        let inner = Arc::downgrade(self);
        let container = Arc::downgrade(c);
        let spawned = std::thread::Builder::new()
            .name("oom".to_owned())
            .stack_size(64 * 1024)
            .spawn(move || {
                while let Ok(Some(_)) = notifier.wait() {
                    let (Some(inner), Some(c)) = (inner.upgrade(), container.upgrade()) else {
                        return;
                    };
                    inner.publish_oom(&c);
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(id = %c.id, error = %e, "starting the OOM watcher");
        }
    }

    fn create(self: &Arc<Self>, req: CreateTaskRequest) -> Result<CreateTaskResponse> {
        let id = req.id.clone();
        if id.is_empty() {
            return Err(Error::InvalidArgument("container id is empty".to_owned()));
        }
        if lock(&self.containers).contains_key(&id) || !lock(&self.creating).insert(id.clone()) {
            return Err(Error::AlreadyExists(format!(
                "container {id} already exists"
            )));
        }
        let res = self.create_reserved(&req);
        lock(&self.creating).remove(&id);
        res
    }

    fn create_reserved(self: &Arc<Self>, req: &CreateTaskRequest) -> Result<CreateTaskResponse> {
        let id = &req.id;
        let bundle = PathBuf::from(&req.bundle);
        let config = bundle.join("config.json");
        let spec: serde_json::Value = std::fs::read(&config)
            .map_err(|e| format!("{e}"))
            .and_then(|b| serde_json::from_slice(&b).map_err(|e| format!("{e}")))
            .map_err(|e| {
                Error::InvalidArgument(format!("bundle {}: {}: {e}", req.bundle, config.display()))
            })?;
        let options = RuntimeOptions::from_any(req.options.as_ref(), &self.namespace)?;
        options.save(&bundle)?;
        let runtime = Runtime::new(options, &bundle)?;
        let stdio = Stdio {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        let mounted = mount_rootfs(&req.rootfs, &bundle)?;
        let undo = |runtime_created: bool| {
            if runtime_created {
                let _ = runtime.delete(id, true);
            }
            if mounted {
                unmount_rootfs(&bundle);
            }
        };
        let io = match ProcessIo::prepare(
            &stdio,
            runtime.options.io_uid,
            runtime.options.io_gid,
            id,
            &self.namespace,
        ) {
            Ok(io) => Arc::new(io),
            Err(e) => {
                undo(false);
                return Err(e);
            }
        };
        let pid_file = bundle.join("init.pid");
        let mut opts = CreateOpts::new()
            .io(io.clone())
            .pid_file(&pid_file)
            .no_pivot(runtime.options.no_pivot_root)
            .no_new_keyring(runtime.options.no_new_keyring);
        if let Some(socket) = io.console_socket() {
            opts = opts.console_socket(socket);
        }
        if let Err(e) = runtime.create(id, &bundle, &opts) {
            undo(true);
            return Err(e);
        }
        drop(opts);
        let pid = match read_pid(&pid_file).and_then(|pid| io.started().map(|()| pid)) {
            Ok(pid) => pid,
            Err(e) => {
                undo(true);
                return Err(e);
            }
        };
        let cgroup = match Cgroup::of_pid(pid) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(id = %id, error = %e, "container cgroup not found: no stats or OOM events");
                None
            }
        };
        let oom_base = cgroup
            .as_ref()
            .and_then(|c| c.oom_kill_count().ok())
            .unwrap_or(0);
        let init = Arc::new(Process::new(None, stdio, None));
        init.state().pid = pid;
        *lock(&init.io) = Some(io);
        let c = Arc::new(Container {
            id: id.clone(),
            bundle: bundle.clone(),
            runtime,
            mounted_rootfs: mounted,
            kill_all_on_exit: shares_pid_namespace(&spec),
            cgroup,
            oom_reported: oom_base.into(),
            init,
            execs: Mutex::new(HashMap::new()),
        });
        lock(&self.containers).insert(id.clone(), Arc::clone(&c));
        self.events.create(TaskCreate {
            container_id: id.clone(),
            bundle: req.bundle.clone(),
            rootfs: req.rootfs.clone(),
            io: Some(TaskIO {
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
                terminal: req.terminal,
                ..Default::default()
            })
            .into(),
            checkpoint: req.checkpoint.clone(),
            pid,
            ..Default::default()
        });
        self.watch_oom(&c);
        let watch = Watch {
            container: Arc::clone(&c),
            exec_id: None,
        };
        if let Some(code) = self.exits.watch(pid as i32, watch) {
            self.on_exit(&c, None, code);
        }
        tracing::info!(id = %id, pid, runtime = %c.runtime.binary().display(), "created");
        Ok(CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    fn start(&self, req: &StartRequest) -> Result<StartResponse> {
        let (c, p) = self.process(&req.id, &req.exec_id)?;
        {
            let mut st = p.state();
            if st.status != Status::CREATED || st.exited.is_some() || st.starting {
                return Err(Error::FailedPrecondition(format!(
                    "cannot start {} {}: it is {:?}",
                    if req.exec_id.is_empty() {
                        "task"
                    } else {
                        "exec"
                    },
                    if req.exec_id.is_empty() {
                        &req.id
                    } else {
                        &req.exec_id
                    },
                    st.status
                )));
            }
            st.starting = true;
        }
        let started = match &p.exec_id {
            None => c.runtime.start(&c.id).map(|()| p.state().pid),
            Some(exec_id) => self.start_exec(&c, &p, exec_id),
        };
        let mut st = p.state();
        st.starting = false;
        let pid = match started {
            Ok(pid) => pid,
            Err(e) => {
                // The exit of a process that died on the way is still owed.
                self.publish_exit(&c, &p, &mut st);
                return Err(e);
            }
        };
        if st.exited.is_none() {
            st.status = Status::RUNNING;
        }
        match &p.exec_id {
            None => self.events.start(TaskStart {
                container_id: c.id.clone(),
                pid,
                ..Default::default()
            }),
            Some(exec_id) => self.events.exec_started(TaskExecStarted {
                container_id: c.id.clone(),
                exec_id: exec_id.clone(),
                pid,
                ..Default::default()
            }),
        }
        self.publish_exit(&c, &p, &mut st);
        Ok(StartResponse {
            pid,
            ..Default::default()
        })
    }

    fn start_exec(&self, c: &Arc<Container>, p: &Arc<Process>, exec_id: &str) -> Result<u32> {
        let spec = p
            .spec
            .as_ref()
            .ok_or_else(|| Error::Other(format!("exec {exec_id} has no process spec")))?;
        let io = Arc::new(ProcessIo::prepare(
            &p.stdio,
            c.runtime.options.io_uid,
            c.runtime.options.io_gid,
            &c.id,
            &self.namespace,
        )?);
        let pid_file = c.bundle.join(format!("{exec_id}.pid"));
        let mut opts = ExecOpts::new()
            .io(io.clone())
            .pid_file(&pid_file)
            .detach(true);
        if let Some(socket) = io.console_socket() {
            opts = opts.console_socket(socket);
        }
        c.runtime.exec(&c.id, spec, &opts)?;
        drop(opts);
        let pid = read_pid(&pid_file);
        let _ = std::fs::remove_file(&pid_file);
        let pid = pid?;
        p.state().pid = pid;
        let started = io.started();
        *lock(&p.io) = Some(io);
        let watch = Watch {
            container: Arc::clone(c),
            exec_id: Some(exec_id.to_owned()),
        };
        if let Some(code) = self.exits.watch(pid as i32, watch) {
            self.on_exit(c, Some(exec_id), code);
        }
        started.map(|()| pid)
    }

    fn delete(&self, req: &DeleteRequest) -> Result<DeleteResponse> {
        let (c, p) = self.process(&req.id, &req.exec_id)?;
        if !req.exec_id.is_empty() {
            let (pid, status, exited) = {
                let st = p.state();
                (st.pid, st.status, exited_fields(&st))
            };
            if status != Status::CREATED && exited.1.is_none() {
                return Err(Error::FailedPrecondition(format!(
                    "cannot delete exec {}: it is still running",
                    req.exec_id
                )));
            }
            lock(&c.execs).remove(&req.exec_id);
            if pid != 0 {
                self.exits.unwatch(pid as i32);
            }
            if let Some(io) = lock(&p.io).take() {
                io.wait_output(OUTPUT_DRAIN);
            }
            return Ok(DeleteResponse {
                pid,
                exit_status: exited.0,
                exited_at: exited.1.into(),
                ..Default::default()
            });
        }
        let (pid, status, running) = {
            let st = p.state();
            (st.pid, st.status, st.exited.is_none())
        };
        if running && status != Status::CREATED {
            return Err(Error::FailedPrecondition(format!(
                "cannot delete task {}: it is {status:?}; kill it first",
                c.id
            )));
        }
        if let Some(io) = p.io() {
            io.wait_output(OUTPUT_DRAIN);
        }
        match c.runtime.delete(&c.id, status == Status::CREATED) {
            Err(e) if !is_gone(&e) => return Err(e),
            _ => {}
        }
        // A created container's init dies with the delete: its exit is on the way.
        if running {
            let _ = p.wait_for(OUTPUT_DRAIN);
        }
        self.exits.unwatch(pid as i32);
        let _ = lock(&p.io).take();
        for e in lock(&c.execs).drain() {
            let _ = lock(&e.1.io).take();
        }
        if c.mounted_rootfs {
            unmount_rootfs(&c.bundle);
        }
        lock(&self.containers).remove(&c.id);
        let (exit_status, exited_at) = {
            let st = p.state();
            exited_fields(&st)
        };
        let exited_at = exited_at.unwrap_or_else(|| timestamp(SystemTime::now()));
        self.events.delete(TaskDelete {
            container_id: c.id.clone(),
            pid,
            exit_status,
            exited_at: Some(exited_at.clone()).into(),
            id: c.id.clone(),
            ..Default::default()
        });
        tracing::info!(id = %c.id, exit_status, "deleted");
        Ok(DeleteResponse {
            pid,
            exit_status,
            exited_at: Some(exited_at).into(),
            ..Default::default()
        })
    }

    fn kill(&self, req: &KillRequest) -> Result<()> {
        let (c, p) = self.process(&req.id, &req.exec_id)?;
        if !req.exec_id.is_empty() {
            let st = p.state();
            if st.exited.is_some() {
                return Err(Error::NotFound(format!(
                    "process already finished: exec {} has exited",
                    req.exec_id
                )));
            }
            if st.pid == 0 {
                return Err(Error::FailedPrecondition(format!(
                    "exec {} is not started",
                    req.exec_id
                )));
            }
            let signal = nix::sys::signal::Signal::try_from(req.signal as i32)
                .map_err(|_| Error::InvalidArgument(format!("invalid signal {}", req.signal)))?;
            return nix::sys::signal::kill(nix::unistd::Pid::from_raw(st.pid as i32), signal)
                .map_err(|e| match e {
                    nix::errno::Errno::ESRCH => {
                        Error::NotFound(format!("process already finished: exec {}", req.exec_id))
                    }
                    e => Error::io(format!("kill of exec {}", req.exec_id), e.into()),
                });
        }
        if p.state().exited.is_some() && !req.all {
            return Err(Error::NotFound(format!(
                "process already finished: task {} has exited",
                c.id
            )));
        }
        match c.runtime.kill(&c.id, req.signal, req.all) {
            Err(e) if is_gone(&e) => Err(Error::NotFound(format!("process already finished: {e}"))),
            other => other,
        }
    }

    fn state(&self, req: &StateRequest) -> Result<StateResponse> {
        let (c, p) = self.process(&req.id, &req.exec_id)?;
        let st = p.state();
        let (exit_status, exited_at) = exited_fields(&st);
        Ok(StateResponse {
            id: p.exec_id.clone().unwrap_or_else(|| c.id.clone()),
            bundle: c.bundle.display().to_string(),
            pid: st.pid,
            status: st.status.into(),
            stdin: p.stdio.stdin.clone(),
            stdout: p.stdio.stdout.clone(),
            stderr: p.stdio.stderr.clone(),
            terminal: p.stdio.terminal,
            exit_status,
            exited_at: exited_at.into(),
            exec_id: req.exec_id.clone(),
            ..Default::default()
        })
    }

    fn pids(&self, req: &PidsRequest) -> Result<PidsResponse> {
        let c = self.container(&req.id)?;
        let pids = c.runtime.ps(&c.id)?;
        let execs: HashMap<u32, String> = lock(&c.execs)
            .iter()
            .map(|(id, p)| (p.state().pid, id.clone()))
            .filter(|(pid, _)| *pid != 0)
            .collect();
        let mut processes = Vec::with_capacity(pids.len());
        for pid in pids {
            let pid = pid as u32;
            let mut info = ProcessInfo {
                pid,
                ..Default::default()
            };
            if let Some(exec_id) = execs.get(&pid) {
                let details = ProcessDetails {
                    exec_id: exec_id.clone(),
                    ..Default::default()
                };
                info.info = Some(any_of("containerd.runc.v1.ProcessDetails", &details)?).into();
            }
            processes.push(info);
        }
        Ok(PidsResponse {
            processes,
            ..Default::default()
        })
    }

    fn set_paused(&self, id: &str, pause: bool) -> Result<()> {
        let c = self.container(id)?;
        let want = if pause {
            Status::RUNNING
        } else {
            Status::PAUSED
        };
        {
            let st = c.init.state();
            if st.status != want || st.exited.is_some() {
                return Err(Error::FailedPrecondition(format!(
                    "cannot {} task {id}: it is {:?}",
                    if pause { "pause" } else { "resume" },
                    st.status
                )));
            }
        }
        if pause {
            c.runtime.pause(id)?;
        } else {
            c.runtime.resume(id)?;
        }
        let mut st = c.init.state();
        if st.exited.is_none() {
            st.status = if pause {
                Status::PAUSED
            } else {
                Status::RUNNING
            };
        }
        if pause {
            self.events.paused(TaskPaused {
                container_id: id.to_owned(),
                ..Default::default()
            });
        } else {
            self.events.resumed(TaskResumed {
                container_id: id.to_owned(),
                ..Default::default()
            });
        }
        Ok(())
    }

    fn exec(&self, req: &ExecProcessRequest) -> Result<()> {
        let c = self.container(&req.id)?;
        check_exec_id(&req.exec_id)?;
        if c.init.state().exited.is_some() {
            return Err(Error::FailedPrecondition(format!(
                "cannot exec in task {}: it has exited",
                c.id
            )));
        }
        let any = req.spec.as_ref().ok_or_else(|| {
            Error::InvalidArgument(format!("exec {}: no process spec", req.exec_id))
        })?;
        let spec: oci_spec::runtime::Process = serde_json::from_slice(&any.value).map_err(|e| {
            Error::InvalidArgument(format!("exec {}: process spec: {e}", req.exec_id))
        })?;
        let stdio = Stdio {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        {
            let mut execs = lock(&c.execs);
            if execs.contains_key(&req.exec_id) {
                return Err(Error::AlreadyExists(format!(
                    "exec {} already exists in task {}",
                    req.exec_id, c.id
                )));
            }
            execs.insert(
                req.exec_id.clone(),
                Arc::new(Process::new(Some(req.exec_id.clone()), stdio, Some(spec))),
            );
        }
        self.events.exec_added(TaskExecAdded {
            container_id: c.id.clone(),
            exec_id: req.exec_id.clone(),
            ..Default::default()
        });
        Ok(())
    }

    fn update(&self, req: &UpdateTaskRequest) -> Result<()> {
        let c = self.container(&req.id)?;
        let any = req
            .resources
            .as_ref()
            .ok_or_else(|| Error::InvalidArgument("update: no resources".to_owned()))?;
        let resources: oci_spec::runtime::LinuxResources = serde_json::from_slice(&any.value)
            .map_err(|e| Error::InvalidArgument(format!("update: resources: {e}")))?;
        c.runtime.update(&c.id, &resources)
    }

    fn stats(&self, req: &StatsRequest) -> Result<StatsResponse> {
        let c = self.container(&req.id)?;
        let cgroup = c
            .cgroup
            .as_ref()
            .ok_or_else(|| Error::NotFound(format!("no cgroup is known for task {}", c.id)))?;
        Ok(StatsResponse {
            stats: Some(metrics::collect(cgroup)?).into(),
            ..Default::default()
        })
    }

    fn shutdown(&self, req: &ShutdownRequest) {
        let busy = !lock(&self.containers).is_empty() || !lock(&self.creating).is_empty();
        if busy && !req.now {
            return;
        }
        tracing::info!("shutting down");
        self.exit.signal();
    }
}

/// Log a failed call and turn it into the ttrpc status containerd reads.
fn reply<T>(call: &str, id: &str, r: Result<T>) -> TtrpcResult<T> {
    r.map_err(|e| {
        tracing::warn!(call, id, error = %e, "request failed");
        e.into()
    })
}

impl Task for Service {
    fn create(&self, _: &TtrpcContext, req: CreateTaskRequest) -> TtrpcResult<CreateTaskResponse> {
        let id = req.id.clone();
        reply("Create", &id, self.inner.create(req))
    }

    fn start(&self, _: &TtrpcContext, req: StartRequest) -> TtrpcResult<StartResponse> {
        reply("Start", &req.id, self.inner.start(&req))
    }

    fn delete(&self, _: &TtrpcContext, req: DeleteRequest) -> TtrpcResult<DeleteResponse> {
        reply("Delete", &req.id, self.inner.delete(&req))
    }

    fn kill(&self, _: &TtrpcContext, req: KillRequest) -> TtrpcResult<Empty> {
        reply(
            "Kill",
            &req.id,
            self.inner.kill(&req).map(|()| Empty::new()),
        )
    }

    fn state(&self, _: &TtrpcContext, req: StateRequest) -> TtrpcResult<StateResponse> {
        reply("State", &req.id, self.inner.state(&req))
    }

    fn wait(&self, _: &TtrpcContext, req: WaitRequest) -> TtrpcResult<WaitResponse> {
        let r = self.inner.process(&req.id, &req.exec_id).map(|(_, p)| {
            let e = p.wait();
            WaitResponse {
                exit_status: e.status,
                exited_at: Some(timestamp(e.at)).into(),
                ..Default::default()
            }
        });
        reply("Wait", &req.id, r)
    }

    fn pids(&self, _: &TtrpcContext, req: PidsRequest) -> TtrpcResult<PidsResponse> {
        reply("Pids", &req.id, self.inner.pids(&req))
    }

    fn pause(&self, _: &TtrpcContext, req: PauseRequest) -> TtrpcResult<Empty> {
        reply(
            "Pause",
            &req.id,
            self.inner.set_paused(&req.id, true).map(|()| Empty::new()),
        )
    }

    fn resume(&self, _: &TtrpcContext, req: ResumeRequest) -> TtrpcResult<Empty> {
        reply(
            "Resume",
            &req.id,
            self.inner.set_paused(&req.id, false).map(|()| Empty::new()),
        )
    }

    fn checkpoint(&self, _: &TtrpcContext, req: CheckpointTaskRequest) -> TtrpcResult<Empty> {
        reply(
            "Checkpoint",
            &req.id,
            Err(Error::Unimplemented("Checkpoint")),
        )
    }

    fn exec(&self, _: &TtrpcContext, req: ExecProcessRequest) -> TtrpcResult<Empty> {
        reply(
            "Exec",
            &req.id,
            self.inner.exec(&req).map(|()| Empty::new()),
        )
    }

    fn resize_pty(&self, _: &TtrpcContext, req: ResizePtyRequest) -> TtrpcResult<Empty> {
        let r = self
            .inner
            .process(&req.id, &req.exec_id)
            .and_then(|(_, p)| match p.io() {
                Some(io) => io.resize(req.width, req.height),
                None => Ok(()),
            });
        reply("ResizePty", &req.id, r.map(|()| Empty::new()))
    }

    fn close_io(&self, _: &TtrpcContext, req: CloseIORequest) -> TtrpcResult<Empty> {
        let r = self.inner.process(&req.id, &req.exec_id).map(|(_, p)| {
            if req.stdin {
                if let Some(io) = p.io() {
                    io.close_stdin();
                }
            }
            Empty::new()
        });
        reply("CloseIO", &req.id, r)
    }

    fn update(&self, _: &TtrpcContext, req: UpdateTaskRequest) -> TtrpcResult<Empty> {
        reply(
            "Update",
            &req.id,
            self.inner.update(&req).map(|()| Empty::new()),
        )
    }

    fn stats(&self, _: &TtrpcContext, req: StatsRequest) -> TtrpcResult<StatsResponse> {
        reply("Stats", &req.id, self.inner.stats(&req))
    }

    fn connect(&self, _: &TtrpcContext, req: ConnectRequest) -> TtrpcResult<ConnectResponse> {
        let task_pid = self
            .inner
            .container(&req.id)
            .map(|c| c.init.state().pid)
            .unwrap_or(0);
        Ok(ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            ..Default::default()
        })
    }

    fn shutdown(&self, _: &TtrpcContext, req: ShutdownRequest) -> TtrpcResult<Empty> {
        self.inner.shutdown(&req);
        Ok(Empty::new())
    }
}
