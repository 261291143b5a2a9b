//! What runs inside the container: init's setup from namespaces to execve.
//!
//! Phase 1 (during `create`): join/unshare namespaces, hostname, sysctl, rootfs and mounts,
//! pivot_root, console, rlimits; find the executable; report `Ready`. Phase 2 (after `start`
//! connects to the exec socket): startContainer hooks, cwd, fds, capabilities and user switch,
//! umask, no_new_privs, seccomp (last: a profile may deny what the runtime itself uses),
//! execve. Phase-2 errors go back to `start` over its connection.

use std::convert::Infallible;
use std::ffi::CString;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use nix::sched::{unshare, CloneFlags};
use nix::sys::socket::{accept4, SockFlag};
use nix::sys::stat::Mode;
use nix::unistd::{access, AccessFlags, Gid, Uid};
use oci_spec::runtime::{LinuxNamespaceType, PosixRlimitType, Process, Spec};

use crate::capabilities;
use crate::channel::{Channel, Message};
use crate::error::{Context, Error, Result};
use crate::namespaces;
use crate::process::user;
use crate::process::InitConfig;
use crate::rootfs::{self, RootfsContext};

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Run init. Returns only on error (before `Ready`; the caller reports it on the channel).
pub fn run(config: InitConfig, channel: &Channel) -> Result<Infallible> {
    match channel.recv()? {
        Message::Go => {}
        other => return Err(Error::Other(format!("sync channel: unexpected {other:?}"))),
    }
    let spec = config.spec;
    let process = spec
        .process()
        .as_ref()
        .ok_or_else(|| Error::Spec("process: missing".into()))?;
    let ns = config.namespaces;
    let in_userns =
        ns.has_new(LinuxNamespaceType::User) || ns.joins(LinuxNamespaceType::User).is_some();
    // Host paths of our own cgroups (we are in them since `Go`), before a cgroup namespace,
    // new or joined, re-roots what /proc/self/cgroup says.
    let cgroup_binds = rootfs::own_cgroup_binds();
    if ns.has_new(LinuxNamespaceType::User) {
        become_root_in_userns()?;
    }
    for (typ, fd) in &config.joins {
        namespaces::join(*typ, fd)?;
        if *typ == LinuxNamespaceType::User {
            become_root_in_userns()?;
        }
    }
    if let Some(adj) = process.oom_score_adj() {
        std::fs::write("/proc/self/oom_score_adj", adj.to_string())
            .ctx(|| "writing oom_score_adj".into())?;
    }
    let unshare_flags = ns.new
        - (CloneFlags::CLONE_NEWPID
            | CloneFlags::CLONE_NEWUSER
            | namespaces::clone_flag(LinuxNamespaceType::Time));
    unshare(unshare_flags).ctx(|| "unsharing namespaces".into())?;
    set_hostname(spec, ns)?;
    apply_sysctl(spec)?;
    // Runtime-side hooks (e.g. network setup) need our namespaces to exist: pause for them.
    let hooks = spec.hooks().as_ref();
    let seccomp_profile = spec.linux().as_ref().and_then(|l| l.seccomp().as_ref());
    let wants_listener = seccomp_profile.is_some_and(|p| p.listener_path().is_some());
    // The parent sends the compiled seccomp program right after `Go`: it may come first.
    let mut seccomp_program = None;
    let state_json = match hooks.is_some() || wants_listener {
        true => {
            channel.send(&Message::NamespacesReady)?;
            loop {
                match channel.recv()? {
                    Message::Continue(json) => break json,
                    Message::Seccomp(bytes) if seccomp_profile.is_some() => {
                        seccomp_program = Some(crate::seccomp::decode(&bytes)?)
                    }
                    other => {
                        return Err(Error::Other(format!("sync channel: unexpected {other:?}")))
                    }
                }
            }
        }
        false => String::new(),
    };
    let listener = config
        .seccomp_listener
        .map(|(connection, path)| crate::seccomp::Listener {
            connection,
            path,
            state_json: state_json.clone(),
            pid: None,
        });
    // createContainer and startContainer run in the container's namespaces: their pid is ours.
    let hook_state = crate::hooks::state_in_container(&state_json);

    // No mount namespace in the spec: the container's mounts go into the runtime's own, all
    // on the rootfs bind; until `Ready`, a failure detaches that bind (and with it the rest).
    let shares_runtime_mounts =
        !ns.has_new(LinuxNamespaceType::Mount) && ns.joins(LinuxNamespaceType::Mount).is_none();
    let rootfs_ctx = RootfsContext {
        spec,
        bundle: config.bundle,
        rootfs: config.rootfs,
        cgroup_binds: &cgroup_binds,
        in_userns,
        shares_runtime_mounts,
    };
    rootfs::bind_rootfs(&rootfs_ctx)?;
    let mut shared_mounts = SharedMountsGuard(shares_runtime_mounts.then(|| config.rootfs.into()));
    rootfs::prepare(&rootfs_ctx)?;
    crate::hooks::run(
        "createContainer",
        hooks.and_then(|h| h.create_container().as_ref()),
        &hook_state,
    )?;
    rootfs::enter(config.rootfs, config.no_pivot, shares_runtime_mounts)?;
    if shares_runtime_mounts {
        shared_mounts.0 = Some("/".into());
    }
    nix::unistd::setsid().ctx(|| "setsid".into())?;
    if process.terminal().unwrap_or(false) {
        let socket = config.console.ok_or_else(|| {
            Error::Other("process.terminal is true but no --console-socket was given".into())
        })?;
        let size = process
            .console_size()
            .map(|b| (b.height() as u16, b.width() as u16));
        crate::console::setup(socket, size)?;
    }
    rootfs::finish(spec)?;
    set_rlimits(process)?;

    let args = process.args().clone().unwrap_or_default();
    let arg0 = args
        .first()
        .ok_or_else(|| Error::Spec("process.args: empty".into()))?;
    let mut env = process.env().clone().unwrap_or_default();
    let exe = find_executable(arg0, &env)?;
    let exec_user = user::lookup(process.user().uid(), Path::new("/etc"));
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        env.push(format!(
            "HOME={}",
            exec_user.home.clone().unwrap_or_else(|| "/".into())
        ));
    }

    let seccomp_program = match (seccomp_program, seccomp_profile) {
        (None, Some(_)) => Some(crate::seccomp::recv_program(channel)?),
        (program, _) => program,
    };
    channel.send(&Message::Ready)?;
    // From here on the container exists: `delete` undoes its mounts.
    shared_mounts.0 = None;
    let conn = wait_for_start(&config.exec_listener)?;
    drop(config.exec_listener);
    let started = crate::hooks::run(
        "startContainer",
        hooks.and_then(|h| h.start_container().as_ref()),
        &hook_state,
    );
    let err = match started.and_then(|()| {
        finalize(
            spec,
            process,
            &exe,
            &args,
            &env,
            SeccompParts {
                program: seccomp_program.as_ref(),
                listener,
            },
            KeptFds {
                preserved: config.preserve_fds,
                error_fd: conn.as_raw_fd(),
            },
        )
    }) {
        Ok(never) => match never {},
        Err(e) => e,
    };
    let mut conn = std::fs::File::from(conn);
    let _ = conn.write_all(err.to_string().as_bytes());
    // SAFETY: _exit ends init; `start` reads the error from the connection.
    unsafe { libc::_exit(1) }
}

/// Detaches the rootfs bind in the runtime's mount namespace (at the path it has before or after
/// the chroot) when init fails before `Ready`.
struct SharedMountsGuard(Option<PathBuf>);

impl Drop for SharedMountsGuard {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = nix::mount::umount2(&path, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// Inside a new user namespace: become its root (uid/gid 0 are mapped by the parent).
fn become_root_in_userns() -> Result<()> {
    nix::unistd::setresgid(Gid::from_raw(0), Gid::from_raw(0), Gid::from_raw(0))
        .ctx(|| "setresgid(0) in the user namespace".into())?;
    nix::unistd::setresuid(Uid::from_raw(0), Uid::from_raw(0), Uid::from_raw(0))
        .ctx(|| "setresuid(0) in the user namespace".into())
}

fn set_hostname(spec: &Spec, ns: &namespaces::Namespaces) -> Result<()> {
    let private_uts =
        ns.has_new(LinuxNamespaceType::Uts) || ns.joins(LinuxNamespaceType::Uts).is_some();
    if let Some(h) = spec.hostname().as_deref().filter(|h| !h.is_empty()) {
        if !private_uts {
            return Err(Error::Spec(
                "hostname: needs a private UTS namespace".into(),
            ));
        }
        nix::unistd::sethostname(h).ctx(|| format!("sethostname {h:?}"))?;
    }
    if let Some(d) = spec.domainname().as_deref().filter(|d| !d.is_empty()) {
        if !private_uts {
            return Err(Error::Spec(
                "domainname: needs a private UTS namespace".into(),
            ));
        }
        // SAFETY: pointer and length describe the bytes of `d`.
        if unsafe { libc::setdomainname(d.as_ptr().cast(), d.len()) } != 0 {
            return Err(std::io::Error::last_os_error()).ctx(|| format!("setdomainname {d:?}"));
        }
    }
    Ok(())
}

/// Written through the host's /proc before pivot_root: per-namespace sysctls (net.*, ipc
/// kernel.*) follow the writer's namespaces.
fn apply_sysctl(spec: &Spec) -> Result<()> {
    let Some(sysctl) = spec.linux().as_ref().and_then(|l| l.sysctl().as_ref()) else {
        return Ok(());
    };
    for (key, value) in sysctl {
        if key.contains("..") || key.starts_with('/') {
            return Err(Error::Spec(format!("linux.sysctl: invalid key {key:?}")));
        }
        let path = PathBuf::from("/proc/sys").join(key.replace('.', "/"));
        std::fs::write(&path, value.as_bytes()).ctx(|| format!("sysctl {key}={value}"))?;
    }
    Ok(())
}

fn rlimit_resource(typ: PosixRlimitType) -> Option<libc::__rlimit_resource_t> {
    let name = serde_json::to_value(typ).ok()?;
    Some(match name.as_str()? {
        "RLIMIT_CPU" => libc::RLIMIT_CPU,
        "RLIMIT_FSIZE" => libc::RLIMIT_FSIZE,
        "RLIMIT_DATA" => libc::RLIMIT_DATA,
        "RLIMIT_STACK" => libc::RLIMIT_STACK,
        "RLIMIT_CORE" => libc::RLIMIT_CORE,
        "RLIMIT_RSS" => libc::RLIMIT_RSS,
        "RLIMIT_NPROC" => libc::RLIMIT_NPROC,
        "RLIMIT_NOFILE" => libc::RLIMIT_NOFILE,
        "RLIMIT_MEMLOCK" => libc::RLIMIT_MEMLOCK,
        "RLIMIT_AS" => libc::RLIMIT_AS,
        "RLIMIT_LOCKS" => libc::RLIMIT_LOCKS,
        "RLIMIT_SIGPENDING" => libc::RLIMIT_SIGPENDING,
        "RLIMIT_MSGQUEUE" => libc::RLIMIT_MSGQUEUE,
        "RLIMIT_NICE" => libc::RLIMIT_NICE,
        "RLIMIT_RTPRIO" => libc::RLIMIT_RTPRIO,
        "RLIMIT_RTTIME" => libc::RLIMIT_RTTIME,
        _ => return None,
    })
}

pub(crate) fn set_rlimits(process: &Process) -> Result<()> {
    for r in process.rlimits().as_deref().unwrap_or_default() {
        let resource = rlimit_resource(r.typ())
            .ok_or_else(|| Error::Spec(format!("process.rlimits: unknown type {:?}", r.typ())))?;
        let lim = libc::rlimit {
            rlim_cur: r.soft(),
            rlim_max: r.hard(),
        };
        // SAFETY: setrlimit reads one rlimit struct from a valid pointer.
        if unsafe { libc::setrlimit(resource, &lim) } != 0 {
            return Err(std::io::Error::last_os_error())
                .ctx(|| format!("setrlimit {:?} {}/{}", r.typ(), r.soft(), r.hard()));
        }
    }
    Ok(())
}

/// The executable the process will exec, looked up in the container like runc does (PATH
/// from the process env), so `create` fails early for a missing binary.
pub fn find_executable(arg0: &str, env: &[String]) -> Result<PathBuf> {
    let is_exec = |p: &Path| p.is_file() && access(p, AccessFlags::X_OK).is_ok();
    if arg0.contains('/') {
        let p = PathBuf::from(arg0);
        return if is_exec(&p) {
            Ok(p)
        } else {
            Err(Error::Other(format!(
                "exec: {arg0:?}: no such executable file"
            )))
        };
    }
    let path = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH);
    path.split(':')
        .map(|d| Path::new(if d.is_empty() { "." } else { d }).join(arg0))
        .find(|p| is_exec(p))
        .ok_or_else(|| {
            Error::Other(format!(
                "exec: {arg0:?}: executable file not found in $PATH"
            ))
        })
}

fn wait_for_start(listener: &OwnedFd) -> Result<OwnedFd> {
    loop {
        match accept4(listener.as_raw_fd(), SockFlag::SOCK_CLOEXEC) {
            // SAFETY: accept4 returned a fresh fd that nothing else owns.
            Ok(fd) => return Ok(unsafe { OwnedFd::from_raw_fd(fd) }),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e).ctx(|| "waiting for start".into()),
        }
    }
}

/// The fds above stdio that survive until the execve: `preserved` are passed to the process
/// (3 up), `error_fd` reports an exec failure and closes on exec.
pub(crate) struct KeptFds {
    pub preserved: i32,
    pub error_fd: RawFd,
}

/// The seccomp step's inputs: the program the runtime compiled (None without a profile)
/// and the connection to the profile's listenerPath.
pub(crate) struct SeccompParts<'a> {
    pub program: Option<&'a nestbox_seccomp::Program>,
    pub listener: Option<crate::seccomp::Listener>,
}

pub(crate) fn finalize(
    spec: &Spec,
    process: &Process,
    exe: &Path,
    args: &[String],
    env: &[String],
    parts: SeccompParts,
    fds: KeptFds,
) -> Result<Infallible> {
    let nnp = process.no_new_privileges().unwrap_or(false);
    let listener = parts.listener;
    let seccomp = match (
        spec.linux().as_ref().and_then(|l| l.seccomp().as_ref()),
        parts.program,
    ) {
        (Some(profile), Some(program)) => Some((profile, program)),
        (Some(_), None) => {
            return Err(Error::Other(
                "seccomp: the compiled program did not arrive".into(),
            ))
        }
        (None, _) => None,
    };

    crate::process::attrs::apply(spec, process)?;
    // The cwd first, still as root (like runc and crun: a directory only root can enter works
    // too), so its check is not at the mercy of the profile; a permission error is retried as
    // the container's user below.
    let cwd = process.cwd();
    let cwd_pending = match nix::unistd::chdir(cwd) {
        Ok(()) => {
            check_cwd_inside(cwd)?;
            false
        }
        Err(nix::errno::Errno::EACCES | nix::errno::Errno::EPERM) => true,
        Err(e) => return Err(e).ctx(|| format!("chdir to cwd {}", cwd.display())),
    };
    let caps = process.capabilities().as_ref();
    capabilities::drop_bounding(caps)?;
    // CVE-2024-21626: no fd beyond stdio and the preserved ones may survive to the execve,
    // not even close-on-exec: the path lookup of the executable could go through
    // /proc/self/fd/N of one (a directory leaked to us) and run a host binary. Only
    // `fds.error_fd` (a socket, to report an exec failure) and the seccomp agent's
    // connection (a socket, closed once used) stay. Done before seccomp, which may deny it.
    let agent = listener.as_ref().map(|l| l.connection.as_raw_fd());
    close_fds_except(3 + fds.preserved.max(0), &[Some(fds.error_fd), agent])?;
    let mut listener = listener;
    // Without no_new_privs the kernel loads a filter only for CAP_SYS_ADMIN: before the user
    // switch drops it (runc and crun do the same). With it: the very last step, below.
    if let (Some((profile, program)), false) = (seccomp, nnp) {
        crate::seccomp::load(program, profile, listener.take())?;
    }

    // SAFETY: prctl with integer arguments only.
    unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) };
    let u = process.user();
    // Like runc for a numeric user: only additionalGids, not /etc/group memberships.
    let mut groups: Vec<Gid> = Vec::new();
    for g in u.additional_gids().as_deref().unwrap_or_default() {
        if !groups.contains(&Gid::from_raw(*g)) {
            groups.push(Gid::from_raw(*g));
        }
    }
    nix::unistd::setgroups(&groups).ctx(|| format!("setgroups {groups:?}"))?;
    let gid = Gid::from_raw(u.gid());
    let uid = Uid::from_raw(u.uid());
    nix::unistd::setresgid(gid, gid, gid).ctx(|| format!("setgid {gid}"))?;
    nix::unistd::setresuid(uid, uid, uid).ctx(|| format!("setuid {uid}"))?;
    // SAFETY: prctl with integer arguments only.
    unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 0, 0, 0, 0) };
    capabilities::apply(caps)?;

    if let Some(mask) = u.umask() {
        nix::sys::stat::umask(Mode::from_bits_truncate(mask));
    }
    if cwd_pending {
        nix::unistd::chdir(cwd).ctx(|| format!("chdir to cwd {}", cwd.display()))?;
        check_cwd_inside(cwd)?;
    }
    if nnp {
        // SAFETY: prctl with integer arguments only.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            return Err(std::io::Error::last_os_error()).ctx(|| "setting no_new_privs".into());
        }
        if let Some((profile, program)) = seccomp {
            crate::seccomp::load(program, profile, listener.take())?;
        }
    }
    drop(listener);

    let cstr =
        |s: &str| CString::new(s).map_err(|_| Error::Spec(format!("{s:?} contains a NUL byte")));
    let exe_c = cstr(&exe.to_string_lossy())?;
    let argv = args.iter().map(|a| cstr(a)).collect::<Result<Vec<_>>>()?;
    let envp = env.iter().map(|e| cstr(e)).collect::<Result<Vec<_>>>()?;
    let err = nix::unistd::execve(&exe_c, &argv, &envp).unwrap_err();
    Err(err).ctx(|| format!("exec {}", exe.display()))
}

/// CVE-2024-21626: a cwd reached through a leaked host fd is outside our root. The kernel then
/// answers getcwd with "(unreachable)/…" and glibc turns that into ENOENT.
fn check_cwd_inside(cwd: &Path) -> Result<()> {
    let outside = || {
        Error::Other(format!(
            "cwd {} is outside the container root",
            cwd.display()
        ))
    };
    let real = match nix::unistd::getcwd() {
        Ok(real) => real,
        Err(nix::errno::Errno::ENOENT) => return Err(outside()),
        Err(e) => return Err(e).ctx(|| "getcwd".into()),
    };
    if !real.is_absolute() || real.to_string_lossy().starts_with("(unreachable)") {
        return Err(outside());
    }
    Ok(())
}

/// Close every fd from `first` up except those in `keep` (which must already be
/// close-on-exec). The OwnedFds still holding closed numbers are never used again: execve
/// follows, or an error report on a kept fd and _exit.
fn close_fds_except(first: i32, keep: &[Option<RawFd>]) -> Result<()> {
    let mut kept: Vec<RawFd> = keep
        .iter()
        .flatten()
        .copied()
        .filter(|fd| *fd >= first)
        .collect();
    kept.sort_unstable();
    kept.dedup();
    let close_range = |lo: i32, hi: libc::c_uint| -> bool {
        if (lo as libc::c_uint) > hi {
            return true;
        }
        // SAFETY: close_range closes fd numbers only; see the function comment for owners.
        unsafe { libc::syscall(libc::SYS_close_range, lo as libc::c_uint, hi, 0) == 0 }
    };
    let mut lo = first;
    let mut done = true;
    for fd in &kept {
        done &= close_range(lo, (*fd - 1) as libc::c_uint);
        lo = fd + 1;
    }
    done &= close_range(lo, libc::c_uint::MAX);
    if done {
        return Ok(());
    }
    // Kernels without close_range: walk /proc/self/fd.
    let fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .ctx(|| "listing /proc/self/fd".into())?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|fd| *fd >= first && !kept.contains(fd))
        .collect();
    for fd in fds {
        // SAFETY: as above; the directory fd of the listing is already closed (EBADF then).
        unsafe { libc::close(fd) };
    }
    Ok(())
}
