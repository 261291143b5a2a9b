//! The container lifecycle: create, start, run, state, kill, delete, list.
//!
//! `create` clones init (a direct child of the caller's process: the runtime never double-forks
//! it away; init enters its cgroup itself before anything else), writes id maps, waits for init's `Ready`, then records
//! state.json and the pid file. Every error after partial creation undoes it (the init is
//! killed, the cgroup removed, the state dir deleted) via [`CreateGuard`].

use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use nestbox_cgroups::Cgroup;
use nix::sys::signal::{kill, Signal};
use nix::sys::socket::{
    bind, connect, listen, socket, AddressFamily, Backlog, SockFlag, SockType, UnixAddr,
};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;
use oci_spec::runtime::LinuxNamespaceType;

use crate::channel::{self, Message};
use crate::error::{shown, Context, Error, Result};
use crate::namespaces::Namespaces;
use crate::process::{self, InitConfig};
use crate::spec;
use crate::state::{self, State, Status, EXEC_SOCKET};

/// Options of `create` (and of the create half of `run`).
#[derive(Debug, Clone, Default)]
pub struct CreateOptions {
    pub root: PathBuf,
    pub id: String,
    pub bundle: PathBuf,
    pub pid_file: Option<PathBuf>,
    pub console_socket: Option<PathBuf>,
    pub no_pivot: bool,
    pub preserve_fds: i32,
    pub systemd_cgroup: bool,
}

/// A created container whose init is a child of this process.
#[derive(Debug)]
pub struct Created {
    pub pid: Pid,
    pub dir: PathBuf,
}

fn container_dir(root: &Path, id: &str) -> PathBuf {
    root.join(id)
}

/// Undoes a partial `create` unless disarmed.
struct CreateGuard {
    dir: Option<PathBuf>,
    cgroup: Option<Cgroup>,
    child: Option<Pid>,
    shared_rootfs: Option<(PathBuf, crate::rootfs::SharedRootfs)>,
}

impl CreateGuard {
    fn disarm(mut self) {
        self.dir = None;
        self.cgroup = None;
        self.child = None;
        self.shared_rootfs = None;
    }
}

impl Drop for CreateGuard {
    fn drop(&mut self) {
        if let Some(pid) = self.child.take() {
            let _ = kill(pid, Signal::SIGKILL);
            let _ = waitpid(pid, None);
        }
        if let Some((rootfs, shared)) = self.shared_rootfs.take() {
            if let Err(e) = crate::rootfs::detach_shared_rootfs(&rootfs, &shared) {
                tracing::warn!("cleanup: {e}");
            }
        }
        if let Some(cg) = self.cgroup.take() {
            if let Err(e) = cg.destroy() {
                tracing::warn!("cleanup: removing the cgroup: {e}");
            }
        }
        if let Some(dir) = self.dir.take() {
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}

/// Create the container: init waits inside its namespaces and cgroup until `start`.
pub fn create(opts: &CreateOptions) -> Result<Created> {
    spec::validate_id(&opts.id)?;
    let bundle = spec::load_bundle(&opts.bundle)?;
    let namespaces = Namespaces::from_spec(&bundle.spec);
    // Open namespace paths before creating anything: a bad path fails cleanly.
    let mut joins = namespaces.open_joins()?;

    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o711)
        .create(&opts.root)
        .ctx(|| format!("creating the state root {}", shown(&opts.root)))?;
    let dir = container_dir(&opts.root, &opts.id);
    match std::fs::DirBuilder::new().mode(0o711).create(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(Error::AlreadyExists(opts.id.clone()))
        }
        Err(e) => return Err(e).ctx(|| format!("creating {}", shown(&dir))),
    }
    let mut guard = CreateGuard {
        dir: Some(dir.clone()),
        cgroup: None,
        child: None,
        shared_rootfs: None,
    };

    let linux = bundle.spec.linux().as_ref();
    let cgroups_path = linux
        .and_then(|l| l.cgroups_path().as_ref())
        .map(|p| p.to_string_lossy().into_owned());
    let cgroup = Cgroup::resolve(cgroups_path.as_deref(), &opts.id, opts.systemd_cgroup)?;
    cgroup.create()?;
    guard.cgroup = Some(cgroup.clone());
    if let Some(resources) = linux.and_then(|l| l.resources().as_ref()) {
        cgroup.apply(resources)?;
    }

    let exec_listener = listen_exec_socket(&dir.join(EXEC_SOCKET))?;
    let terminal = bundle
        .spec
        .process()
        .as_ref()
        .and_then(|p| p.terminal())
        .unwrap_or(false);
    let console = match (&opts.console_socket, terminal) {
        (Some(path), true) => Some(crate::console::connect_socket(path)?),
        (None, true) => {
            return Err(Error::Other(
                "process.terminal is true: --console-socket is required".into(),
            ))
        }
        _ => None,
    };

    // A pid namespace joined by path applies to our children: setns before the clone. With a
    // new user namespace, init could no longer join namespaces owned by ours, so net, ipc and
    // uts are joined here too (this process only writes files from now on) and inherited.
    let new_user = namespaces.has_new(LinuxNamespaceType::User);
    let mut i = 0;
    while i < joins.len() {
        let typ = joins[i].0;
        let early = typ == LinuxNamespaceType::Pid
            || (new_user
                && matches!(
                    typ,
                    LinuxNamespaceType::Network | LinuxNamespaceType::Ipc | LinuxNamespaceType::Uts
                ));
        if early {
            let (typ, fd) = joins.remove(i);
            crate::namespaces::join(typ, &fd)?;
        } else {
            i += 1;
        }
    }
    // A new time namespace applies to children only: unshare it here so init is born in it.
    let time_offsets = linux
        .and_then(|l| l.time_offsets().as_ref())
        .filter(|o| !o.is_empty());
    if namespaces.has_new(LinuxNamespaceType::Time) {
        nix::sched::unshare(crate::namespaces::clone_flag(LinuxNamespaceType::Time))
            .ctx(|| "unsharing the time namespace".into())?;
        if let Some(offsets) = time_offsets {
            write_time_offsets(offsets)?;
        }
    } else if time_offsets.is_some() {
        return Err(Error::Spec(
            "linux.timeOffsets: needs a new time namespace".into(),
        ));
    }
    let seccomp_listener = match linux.and_then(|l| l.seccomp().as_ref()) {
        Some(profile) => crate::seccomp::connect_listener(profile)?,
        None => None,
    };
    let (parent_end, init_end) = channel::pair()?;
    let config = InitConfig {
        spec: &bundle.spec,
        bundle: &bundle.path,
        rootfs: &bundle.rootfs,
        namespaces: &namespaces,
        joins,
        exec_listener,
        console,
        seccomp_listener,
        no_pivot: opts.no_pivot,
        preserve_fds: opts.preserve_fds,
        cgroup: Some(&cgroup),
    };
    // Init enters its cgroup itself, first thing (cheap for the caller alone; see
    // Cgroup::enter_v1_self), or is born in its cgroup2 directory.
    let (pid, channel) = process::spawn(config, init_end, parent_end)?;
    guard.child = Some(pid);

    if namespaces.has_new(LinuxNamespaceType::User) {
        process::write_id_maps(pid, &bundle.spec)?;
    }
    let (_, start_time) = state::proc_stat(pid.as_raw())
        .ok_or_else(|| Error::Init("container init exited during create".into()))?;
    let mut state = State {
        oci_version: bundle.spec.version().clone(),
        id: opts.id.clone(),
        pid: pid.as_raw(),
        bundle: bundle.path.clone(),
        rootfs: bundle.rootfs.clone(),
        created: crate::time::rfc3339_nano(SystemTime::now()),
        owner: String::new(),
        annotations: bundle.spec.annotations().clone().unwrap_or_default(),
        init_start_time: start_time,
        cgroup: Some(cgroup),
        hooks: bundle.spec.hooks().clone(),
        shared_rootfs: None,
    };
    channel.send(&Message::Go)?;
    // Compiled here while init sets up; init takes it before `Ready`.
    if let Some(profile) = linux.and_then(|l| l.seccomp().as_ref()) {
        let program = crate::seccomp::compile_cached(&opts.root, profile)?;
        channel.send(&Message::Seccomp(program))?;
    }
    loop {
        match channel.recv()? {
            Message::Ready => break,
            Message::NamespacesReady => {
                let hooks = state.hooks.as_ref();
                let json = state.oci_json(Status::Created);
                crate::hooks::run("prestart", hooks.and_then(|h| h.prestart().as_ref()), &json)?;
                crate::hooks::run(
                    "createRuntime",
                    hooks.and_then(|h| h.create_runtime().as_ref()),
                    &json,
                )?;
                channel.send(&Message::Continue(state.oci_json(Status::Created)))?;
            }
            Message::Failed(reason) => return Err(Error::Init(reason)),
            other => return Err(Error::Other(format!("sync channel: unexpected {other:?}"))),
        }
    }
    if !namespaces.has_new(LinuxNamespaceType::Mount)
        && namespaces.joins(LinuxNamespaceType::Mount).is_none()
    {
        let shared = crate::rootfs::SharedRootfs::of_process(pid.as_raw())?;
        guard.shared_rootfs = Some((bundle.rootfs.clone(), shared.clone()));
        state.shared_rootfs = Some(shared);
    }

    state.save(&dir)?;
    if let Some(pid_file) = &opts.pid_file {
        state::write_atomic(pid_file, pid.as_raw().to_string().as_bytes())?;
    }
    guard.disarm();
    Ok(Created { pid, dir })
}

fn listen_exec_socket(path: &Path) -> Result<OwnedFd> {
    let fd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .ctx(|| "exec socket".into())?;
    let (_dir, short) = short_socket_path(path)?;
    let addr = UnixAddr::new(&short).ctx(|| format!("exec socket {}", shown(path)))?;
    bind(fd.as_raw_fd(), &addr).ctx(|| format!("binding {}", shown(path)))?;
    listen(&fd, Backlog::new(1).unwrap_or(Backlog::MAXCONN))
        .ctx(|| "listen on the exec socket".into())?;
    Ok(fd)
}

/// A unix socket path short enough for sun_path (108 bytes): long paths (deep --root, long
/// ids) go through an O_PATH fd of the directory, `/proc/self/fd/N/name`. Keep the returned
/// fd alive while the path is used.
fn short_socket_path(path: &Path) -> Result<(Option<OwnedFd>, PathBuf)> {
    if path.as_os_str().len() < 100 {
        return Ok((None, path.to_path_buf()));
    }
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Ok((None, path.to_path_buf()));
    };
    let fd = nix::fcntl::open(
        dir,
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .ctx(|| format!("open {}", shown(dir)))?;
    // SAFETY: open returned a fresh fd that nothing else owns.
    let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let short = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd())).join(name);
    Ok((Some(fd), short))
}

/// Load a container's state; unknown ids give "does not exist".
pub fn load(root: &Path, id: &str) -> Result<(State, PathBuf)> {
    spec::validate_id(id)?;
    let dir = container_dir(root, id);
    let state = State::load(&dir, id)?;
    Ok((state, dir))
}

/// Release a created container's init: it execs the process (or reports why it cannot).
pub fn start(root: &Path, id: &str) -> Result<()> {
    let (state, dir) = load(root, id)?;
    match state.status(&dir) {
        Status::Created => {}
        Status::Stopped => {
            return Err(Error::WrongState {
                id: id.into(),
                msg: "cannot start a container that has stopped".into(),
            })
        }
        s => {
            return Err(Error::WrongState {
                id: id.into(),
                msg: format!("cannot start an already {s} container"),
            })
        }
    }
    let path = dir.join(EXEC_SOCKET);
    let fd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .ctx(|| "exec socket".into())?;
    let (_dir, short) = short_socket_path(&path)?;
    let addr = UnixAddr::new(&short).ctx(|| format!("exec socket {}", shown(&path)))?;
    connect(fd.as_raw_fd(), &addr).ctx(|| format!("connecting to {}", shown(&path)))?;
    let _ = std::fs::remove_file(&path);
    // Init closes the connection by exec (close-on-exec) or writes why it failed.
    let mut conn = std::fs::File::from(fd);
    let mut reply = String::new();
    let _ = conn.read_to_string(&mut reply);
    if !reply.is_empty() {
        return Err(Error::Init(reply));
    }
    let hooks = state.hooks.as_ref().and_then(|h| h.poststart().as_ref());
    crate::hooks::run_warn("poststart", hooks, &state.oci_json(Status::Running));
    Ok(())
}

/// `state`: the OCI state JSON.
pub fn state_json(root: &Path, id: &str) -> Result<String> {
    let (state, dir) = load(root, id)?;
    let status = state.status(&dir);
    serde_json::to_string_pretty(&state.oci(status)).map_err(|e| Error::Other(e.to_string()))
}

/// (state, status) of every container under `root`.
pub fn list(root: &Path) -> Result<Vec<(State, Status)>> {
    let mut out = Vec::new();
    for id in state::list_ids(root)? {
        let dir = container_dir(root, &id);
        if let Ok(state) = State::load(&dir, &id) {
            let status = state.status(&dir);
            out.push((state, status));
        }
    }
    Ok(out)
}

/// `kill [--all] ID SIGNAL`. Plain `kill` signals init and refuses a stopped container;
/// `--all` signals whatever is in the container's cgroup, whatever the status (see
/// [`signal_all`]).
pub fn kill_container(root: &Path, id: &str, signal: Signal, all: bool) -> Result<()> {
    let (state, dir) = load(root, id)?;
    if all {
        return signal_all(&state, signal);
    }
    let status = state.status(&dir);
    if status == Status::Stopped {
        return Err(Error::NotRunning(id.into()));
    }
    match kill(Pid::from_raw(state.pid), signal) {
        Ok(()) => {}
        Err(nix::errno::Errno::ESRCH) => {
            return Err(Error::Other(format!("container {id:?}: no such process")))
        }
        Err(e) => return Err(e).ctx(|| format!("signalling container {id:?}")),
    }
    // As runc: a frozen (v1) task does not even die of SIGKILL until it is thawed.
    if status == Status::Paused && signal == Signal::SIGKILL {
        if let Some(cg) = &state.cgroup {
            if let Err(e) = cg.thaw() {
                tracing::warn!("kill: thawing the paused container: {e}");
            }
        }
    }
    Ok(())
}

/// `kill --all`: every process in the container's cgroup. containerd's shims call it after
/// init exited, to reach what is left (processes of a pod sharing a PID namespace, or of the
/// host's): a stopped container with an empty cgroup is success, not "not running". As
/// runc: the cgroup is frozen while it is listed and signalled, so nothing forks past the
/// list, then thawed, so the signal is delivered (a paused container ends up thawed).
fn signal_all(state: &State, signal: Signal) -> Result<()> {
    let cgroup = cgroup_of(state)?;
    if cgroup.pids()?.is_empty() {
        return Ok(());
    }
    if let Err(e) = cgroup.freeze() {
        tracing::warn!("kill --all: freezing the cgroup: {e}");
    }
    let pids = cgroup.pids();
    for pid in pids.as_deref().unwrap_or_default() {
        match kill(Pid::from_raw(*pid), signal) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
            Err(e) => tracing::warn!("kill --all: signalling {pid}: {e}"),
        }
    }
    if let Err(e) = cgroup.thaw() {
        tracing::warn!("kill --all: thawing the cgroup: {e}");
    }
    pids.map(|_| ()).map_err(Error::from)
}

/// `delete [--force] ID`.
pub fn delete(root: &Path, id: &str, force: bool) -> Result<()> {
    spec::validate_id(id)?;
    let dir = container_dir(root, id);
    let state = match State::load(&dir, id) {
        Ok(s) => s,
        Err(Error::NotExist(_)) => {
            // A create that died before writing state.json may leave the dir behind.
            let existed = dir.exists();
            let _ = std::fs::remove_dir_all(&dir);
            return if force || existed {
                Ok(())
            } else {
                Err(Error::NotExist(id.into()))
            };
        }
        Err(e) => return Err(e),
    };
    match state.status(&dir) {
        Status::Stopped => {}
        Status::Created => kill_and_wait(&state)?,
        s if force => {
            if s == Status::Paused {
                if let Some(cg) = &state.cgroup {
                    let _ = cg.thaw();
                }
            }
            kill_and_wait(&state)?
        }
        s => {
            return Err(Error::WrongState {
                id: id.into(),
                msg: format!("cannot delete a container that is not stopped: {s}"),
            })
        }
    }
    destroy(&state, &dir)
}

/// SIGKILL everything in the container and wait until init is gone.
fn kill_and_wait(state: &State) -> Result<()> {
    if let Some(cg) = &state.cgroup {
        for pid in cg.pids().unwrap_or_default() {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
    let _ = kill(Pid::from_raw(state.pid), Signal::SIGKILL);
    let deadline = Instant::now() + Duration::from_secs(10);
    while state::init_alive(state.pid, state.init_start_time) {
        if Instant::now() > deadline {
            return Err(Error::Other(format!(
                "container {:?}: init {} did not die after SIGKILL",
                state.id, state.pid
            )));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

/// Remove the cgroup and the state dir of a stopped container.
fn destroy(state: &State, dir: &Path) -> Result<()> {
    if let Some(cg) = &state.cgroup {
        // Processes other than init may still be draining out of the cgroup.
        for pid in cg.pids().unwrap_or_default() {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        cg.destroy()?;
    }
    if let Some(shared) = &state.shared_rootfs {
        crate::rootfs::detach_shared_rootfs(&state.rootfs, shared)?;
    }
    std::fs::remove_dir_all(dir).ctx(|| format!("removing {}", shown(dir)))?;
    let hooks = state.hooks.as_ref().and_then(|h| h.poststop().as_ref());
    crate::hooks::run_warn("poststop", hooks, &state.oci_json(Status::Stopped));
    Ok(())
}

/// Wait for our child init to exit; returns its exit code (128+signal when killed).
/// `forward` lists signals to pass on to the container while waiting.
pub fn wait_forwarding(pid: Pid, forward: &[Signal]) -> Result<i32> {
    use nix::sys::signal::SigSet;
    let mut set = SigSet::empty();
    for s in forward {
        set.add(*s);
    }
    set.add(Signal::SIGCHLD);
    set.thread_block().ctx(|| "blocking signals".into())?;
    loop {
        match waitpid(pid, Some(nix::sys::wait::WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(code),
            Ok(WaitStatus::Signaled(_, sig, _)) => return Ok(128 + sig as i32),
            Ok(_) => {}
            Err(nix::errno::Errno::ECHILD) => return Ok(0),
            Err(e) => return Err(e).ctx(|| "waitpid".into()),
        }
        match set.wait() {
            Ok(Signal::SIGCHLD) | Err(_) => {}
            Ok(sig) => {
                let _ = kill(pid, sig);
            }
        }
    }
}

/// After `run` saw the container exit: remove what `create` made.
pub fn cleanup_after_run(root: &Path, id: &str) -> Result<()> {
    let (state, dir) = load(root, id)?;
    destroy(&state, &dir)
}

/// `pause`: freeze every process of a running container.
pub fn pause(root: &Path, id: &str) -> Result<()> {
    let (state, dir) = load(root, id)?;
    match state.status(&dir) {
        Status::Running => {}
        Status::Paused => return Ok(()),
        _ => return Err(Error::NotRunning(id.into())),
    }
    cgroup_of(&state)?.freeze()?;
    Ok(())
}

/// `resume`: thaw a paused container.
pub fn resume(root: &Path, id: &str) -> Result<()> {
    let (state, dir) = load(root, id)?;
    if state.status(&dir) != Status::Paused {
        return Err(Error::WrongState {
            id: id.into(),
            msg: "container not paused".into(),
        });
    }
    cgroup_of(&state)?.thaw()?;
    Ok(())
}

/// Host pids of every process in the container's cgroup.
pub fn pids(root: &Path, id: &str) -> Result<Vec<i32>> {
    let (state, _) = load(root, id)?;
    let mut pids = cgroup_of(&state)?.pids()?;
    pids.sort_unstable();
    Ok(pids)
}

fn cgroup_of(state: &State) -> Result<&Cgroup> {
    state
        .cgroup
        .as_ref()
        .ok_or_else(|| Error::Other(format!("container {:?}: no cgroup recorded", state.id)))
}

/// How `exec` describes the new process: a process JSON file, or args plus overrides applied
/// to the container's own `process` (as runc does).
#[derive(Debug, Clone, Default)]
pub struct ExecProcess {
    pub process_file: Option<PathBuf>,
    pub args: Vec<String>,
    pub tty: bool,
    pub cwd: Option<PathBuf>,
    pub env: Vec<String>,
    /// `uid[:gid]`.
    pub user: Option<String>,
    pub additional_gids: Vec<u32>,
    pub caps: Vec<String>,
    pub no_new_privs: bool,
}

/// Options of `exec`.
#[derive(Debug, Clone, Default)]
pub struct ExecOptions {
    pub process: ExecProcess,
    pub pid_file: Option<PathBuf>,
    pub console_socket: Option<PathBuf>,
    pub preserve_fds: i32,
}

fn build_exec_process(
    spec: &oci_spec::runtime::Spec,
    p: &ExecProcess,
) -> Result<oci_spec::runtime::Process> {
    if let Some(file) = &p.process_file {
        let text = std::fs::read_to_string(file)
            .ctx(|| format!("reading the process file {}", shown(file)))?;
        return spec::parse_process(&text);
    }
    if p.args.is_empty() {
        return Err(Error::Other(
            "exec: no command given (args or --process)".into(),
        ));
    }
    let mut process = spec.process().clone().unwrap_or_default();
    process.set_args(Some(p.args.clone()));
    process.set_terminal(Some(p.tty));
    if let Some(cwd) = &p.cwd {
        process.set_cwd(cwd.clone());
    }
    let mut env = process.env().clone().unwrap_or_default();
    for kv in &p.env {
        let key = kv.split('=').next().unwrap_or_default();
        env.retain(|e| e.split('=').next() != Some(key));
        env.push(kv.clone());
    }
    process.set_env(Some(env));
    if let Some(user) = &p.user {
        let (uid, gid) = user.split_once(':').unwrap_or((user, ""));
        let uid: u32 = uid
            .parse()
            .map_err(|_| Error::Other(format!("exec --user {user:?}: expected uid[:gid]")))?;
        process.user_mut().set_uid(uid);
        if !gid.is_empty() {
            let gid: u32 = gid
                .parse()
                .map_err(|_| Error::Other(format!("exec --user {user:?}: bad gid")))?;
            process.user_mut().set_gid(gid);
        }
    }
    if !p.additional_gids.is_empty() {
        let mut gids = process.user().additional_gids().clone().unwrap_or_default();
        gids.extend(&p.additional_gids);
        process.user_mut().set_additional_gids(Some(gids));
    }
    if !p.caps.is_empty() {
        let mut caps = process.capabilities().clone().unwrap_or_default();
        for name in &p.caps {
            let cap: oci_spec::runtime::Capability =
                serde_json::from_value(serde_json::Value::String(name.clone()))
                    .map_err(|_| Error::Other(format!("exec --cap: unknown capability {name}")))?;
            for set in [
                caps.bounding().clone(),
                caps.effective().clone(),
                caps.permitted().clone(),
                caps.ambient().clone(),
            ]
            .iter()
            .enumerate()
            {
                let mut s = set.1.clone().unwrap_or_default();
                s.insert(cap);
                match set.0 {
                    0 => caps.set_bounding(Some(s)),
                    1 => caps.set_effective(Some(s)),
                    2 => caps.set_permitted(Some(s)),
                    _ => caps.set_ambient(Some(s)),
                };
            }
        }
        process.set_capabilities(Some(caps));
    }
    if p.no_new_privs {
        process.set_no_new_privileges(Some(true));
    }
    Ok(process)
}

/// Start a new process in a running container; it is a child of this process.
pub fn exec(root: &Path, id: &str, opts: &ExecOptions) -> Result<Pid> {
    let state_root = root;
    let (state, dir) = load(root, id)?;
    match state.status(&dir) {
        Status::Stopped => {
            return Err(Error::WrongState {
                id: id.into(),
                msg: "cannot exec in a stopped container".into(),
            })
        }
        Status::Paused => {
            return Err(Error::WrongState {
                id: id.into(),
                msg: "cannot exec in a paused container".into(),
            })
        }
        _ => {}
    }
    let bundle = spec::load_bundle(&state.bundle)?;
    let process = build_exec_process(&bundle.spec, &opts.process)?;
    let mut joins = process::exec::namespaces_to_join(state.pid)?;
    // A container in the runtime's own mount namespace is only chrooted: take init's root.
    let root = if joins.iter().any(|(t, _)| *t == LinuxNamespaceType::Mount) {
        None
    } else {
        let path = format!("/proc/{}/root", state.pid);
        let fd = nix::fcntl::open(
            path.as_str(),
            nix::fcntl::OFlag::O_PATH
                | nix::fcntl::OFlag::O_DIRECTORY
                | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .ctx(|| format!("open {path}"))?;
        // SAFETY: open returned a fresh fd that nothing else owns.
        Some(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
    };
    let console = match (&opts.console_socket, process.terminal().unwrap_or(false)) {
        (Some(path), true) => Some(crate::console::connect_socket(path)?),
        (None, true) => {
            return Err(Error::Other(
                "exec with a terminal: --console-socket is required".into(),
            ))
        }
        _ => None,
    };
    if let Some(pos) = joins
        .iter()
        .position(|(t, _)| *t == LinuxNamespaceType::Pid)
    {
        let (typ, fd) = joins.remove(pos);
        crate::namespaces::join(typ, &fd)?;
    }
    let seccomp_listener = match bundle
        .spec
        .linux()
        .as_ref()
        .and_then(|l| l.seccomp().as_ref())
    {
        Some(profile) => crate::seccomp::connect_listener(profile)?,
        None => None,
    };
    let (parent_end, child_end) = channel::pair()?;
    let config = process::exec::ExecConfig {
        spec: &bundle.spec,
        process: &process,
        joins,
        root,
        console,
        seccomp_listener,
        preserve_fds: opts.preserve_fds,
        state_json: state.oci_json(Status::Running),
        cgroup: state.cgroup.as_ref(),
    };
    // The child enters the container's cgroup itself, first thing.
    let (pid, channel) = process::exec::spawn(config, child_end, parent_end)?;
    let fail = |e: Error| {
        let _ = kill(pid, Signal::SIGKILL);
        let _ = waitpid(pid, None);
        e
    };
    channel.send(&Message::Go).map_err(fail)?;
    // Compiled here while the child joins the container's namespaces.
    if let Some(profile) = bundle
        .spec
        .linux()
        .as_ref()
        .and_then(|l| l.seccomp().as_ref())
    {
        let program = crate::seccomp::compile_cached(state_root, profile).map_err(fail)?;
        channel.send(&Message::Seccomp(program)).map_err(fail)?;
    }
    // The channel closes on exec (close-on-exec); a message means the setup failed.
    match channel.recv_or_closed().map_err(fail)? {
        None => {}
        Some(Message::Failed(reason)) => return Err(fail(Error::Init(reason))),
        Some(other) => {
            return Err(fail(Error::Other(format!(
                "sync channel: unexpected {other:?}"
            ))))
        }
    }
    if let Some(pid_file) = &opts.pid_file {
        state::write_atomic(pid_file, pid.as_raw().to_string().as_bytes())?;
    }
    Ok(pid)
}

/// linux.timeOffsets (checked and flattened to "<secs> <nanosecs>" by spec::parse_spec)
/// into the time namespace our children will be born in: it has no process yet, so the
/// offsets may still be written.
fn write_time_offsets(offsets: &std::collections::HashMap<String, String>) -> Result<()> {
    let mut clocks: Vec<_> = offsets.iter().collect();
    clocks.sort();
    let text: String = clocks
        .iter()
        .map(|(clock, offset)| format!("{clock} {offset}\n"))
        .collect();
    std::fs::write("/proc/self/timens_offsets", text.as_bytes()).ctx(|| {
        format!(
            "writing linux.timeOffsets ({})",
            text.trim().replace('\n', ", ")
        )
    })
}

/// `update`: apply new resource limits to a container's cgroup.
pub fn update(root: &Path, id: &str, resources: &oci_spec::runtime::LinuxResources) -> Result<()> {
    let (state, dir) = load(root, id)?;
    if state.status(&dir) == Status::Stopped {
        return Err(Error::NotRunning(id.into()));
    }
    cgroup_of(&state)?.apply(resources)?;
    Ok(())
}

/// One `events` record as runc prints it: `{"type":"stats"|"oom","id":…,"data":…}`.
pub fn event_json(kind: &str, id: &str, data: Option<serde_json::Value>) -> String {
    let mut v = serde_json::json!({"type": kind, "id": id});
    if let Some(d) = data {
        v["data"] = d;
    }
    v.to_string()
}

/// `events`: the stats record now (`--stats`), or a stream of stats every `interval` plus an
/// `oom` record whenever the OOM-kill count grows, until the container stops.
pub fn events(
    root: &Path,
    id: &str,
    stats_once: bool,
    interval: Duration,
    mut emit: impl FnMut(String),
) -> Result<()> {
    let (state, dir) = load(root, id)?;
    let cgroup = cgroup_of(&state)?;
    let stats = || -> Result<serde_json::Value> {
        serde_json::to_value(cgroup.stats()?).map_err(|e| Error::Other(e.to_string()))
    };
    if stats_once {
        if state.status(&dir) == Status::Stopped {
            return Err(Error::NotRunning(id.into()));
        }
        emit(event_json("stats", id, Some(stats()?)));
        return Ok(());
    }
    let mut ooms = cgroup.oom_kill_count().unwrap_or(0);
    while state.status(&dir) != Status::Stopped {
        let now = cgroup.oom_kill_count().unwrap_or(ooms);
        if now > ooms {
            emit(event_json("oom", id, None));
            ooms = now;
        }
        if let Ok(s) = stats() {
            emit(event_json("stats", id, Some(s)));
        }
        std::thread::sleep(interval);
    }
    Ok(())
}
