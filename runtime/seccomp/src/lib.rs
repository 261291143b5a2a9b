//! OCI seccomp profiles for nestbox, compiled with libseccomp: default action and errno,
//! every action (with per-rule errnoRet), argument comparisons, several architectures, filter
//! flags and SCMP_ACT_NOTIFY listeners. Behaviour follows runc's libcontainer/seccomp.

mod enosys;

use std::io::{Read, Seek};
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd};

use libseccomp::{
    ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall,
};
use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompFilterFlag,
    LinuxSeccompOperator,
};

#[derive(thiserror::Error, Debug)]
pub enum Error {
    #[error("seccomp: sending the notify fd to listenerPath {path}: {source}")]
    Listener {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("seccomp: creating the filter (defaultAction {action}): {source}")]
    Init {
        action: String,
        source: libseccomp::error::SeccompError,
    },
    #[error("seccomp: adding architecture {arch}: {source}")]
    Arch {
        arch: String,
        source: libseccomp::error::SeccompError,
    },
    #[error("seccomp: adding the rule for {syscall} ({action}): {source}")]
    Rule {
        syscall: String,
        action: String,
        source: libseccomp::error::SeccompError,
    },
    #[error("seccomp: {field}: {reason}")]
    Invalid { field: String, reason: String },
    #[error("seccomp: setting flag {flag}: {source}")]
    Flag {
        flag: String,
        source: libseccomp::error::SeccompError,
    },
    #[error("seccomp: loading the filter: {source}")]
    Load {
        source: libseccomp::error::SeccompError,
    },
    #[error("seccomp: loading the filter (seccomp(2)): {0}")]
    LoadRaw(std::io::Error),
    #[error("seccomp: getting the notify listener fd: {0}")]
    Notify(String),
    #[error("seccomp: exporting the filter: {0}")]
    Export(String),
}

/// A compiled filter, ready to load.
pub struct Filter {
    ctx: ScmpFilterContext,
    notify: bool,
    skipped: Vec<String>,
    /// The whole program with runc's ENOSYS stub in front, built at compile time so load()
    /// is a single syscall (None: default is permissive or already ENOSYS, or the stub could
    /// not be built; libseccomp then loads its own program).
    program: Option<Vec<enosys::SockFilter>>,
    /// SECCOMP_FILTER_FLAG_* for seccomp(2) when we load the program ourselves.
    flags: libc::c_ulong,
}

impl std::fmt::Debug for Filter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Filter")
            .field("notify", &self.notify)
            .field("skipped", &self.skipped)
            .field("program", &self.program.as_ref().map(Vec::len))
            .finish()
    }
}

fn action_name(a: LinuxSeccompAction) -> String {
    a.to_string()
}

/// The libseccomp action for an OCI action. ERRNO and TRACE take errnoRet (EPERM when absent,
/// as runc does).
fn to_action(a: LinuxSeccompAction, errno_ret: Option<u32>) -> ScmpAction {
    let ret = errno_ret.map_or(libc::EPERM, |e| e as i32);
    match a {
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => {
            ScmpAction::KillThread
        }
        LinuxSeccompAction::ScmpActKillProcess => ScmpAction::KillProcess,
        LinuxSeccompAction::ScmpActTrap => ScmpAction::Trap,
        LinuxSeccompAction::ScmpActErrno => ScmpAction::Errno(ret),
        LinuxSeccompAction::ScmpActTrace => ScmpAction::Trace(ret as u16),
        LinuxSeccompAction::ScmpActNotify => ScmpAction::Notify,
        LinuxSeccompAction::ScmpActLog => ScmpAction::Log,
        LinuxSeccompAction::ScmpActAllow => ScmpAction::Allow,
    }
}

fn to_arch(a: Arch) -> ScmpArch {
    match a {
        Arch::ScmpArchNative => ScmpArch::Native,
        Arch::ScmpArchX86 => ScmpArch::X86,
        Arch::ScmpArchX86_64 => ScmpArch::X8664,
        Arch::ScmpArchX32 => ScmpArch::X32,
        Arch::ScmpArchArm => ScmpArch::Arm,
        Arch::ScmpArchAarch64 => ScmpArch::Aarch64,
        Arch::ScmpArchMips => ScmpArch::Mips,
        Arch::ScmpArchMips64 => ScmpArch::Mips64,
        Arch::ScmpArchMips64n32 => ScmpArch::Mips64N32,
        Arch::ScmpArchMipsel => ScmpArch::Mipsel,
        Arch::ScmpArchMipsel64 => ScmpArch::Mipsel64,
        Arch::ScmpArchMipsel64n32 => ScmpArch::Mipsel64N32,
        Arch::ScmpArchPpc => ScmpArch::Ppc,
        Arch::ScmpArchPpc64 => ScmpArch::Ppc64,
        Arch::ScmpArchPpc64le => ScmpArch::Ppc64Le,
        Arch::ScmpArchS390 => ScmpArch::S390,
        Arch::ScmpArchS390x => ScmpArch::S390X,
        Arch::ScmpArchRiscv64 => ScmpArch::Riscv64,
    }
}

fn to_condition(syscall: &str, arg: &LinuxSeccompArg) -> Result<ScmpArgCompare, Error> {
    if arg.index() > 5 {
        return Err(Error::Invalid {
            field: format!("syscalls[{syscall}].args.index"),
            reason: format!("{} is out of range 0..=5", arg.index()),
        });
    }
    let op = match arg.op() {
        LinuxSeccompOperator::ScmpCmpNe => ScmpCompareOp::NotEqual,
        LinuxSeccompOperator::ScmpCmpLt => ScmpCompareOp::Less,
        LinuxSeccompOperator::ScmpCmpLe => ScmpCompareOp::LessOrEqual,
        LinuxSeccompOperator::ScmpCmpEq => ScmpCompareOp::Equal,
        LinuxSeccompOperator::ScmpCmpGe => ScmpCompareOp::GreaterEqual,
        LinuxSeccompOperator::ScmpCmpGt => ScmpCompareOp::Greater,
        // OCI (and runc): value is the mask, valueTwo the value compared after masking.
        LinuxSeccompOperator::ScmpCmpMaskedEq => {
            return Ok(ScmpArgCompare::new(
                arg.index() as u32,
                ScmpCompareOp::MaskedEqual(arg.value()),
                arg.value_two().unwrap_or(0),
            ))
        }
    };
    Ok(ScmpArgCompare::new(arg.index() as u32, op, arg.value()))
}

/// Build the filter for a profile. Unknown syscall names are skipped with a tracing::warn;
/// rules whose action equals the default action are skipped (libseccomp refuses them).
/// The filter does not set no_new_privs itself: the caller decides (process.noNewPrivileges),
/// and without it loading needs CAP_SYS_ADMIN, exactly as with runc.
pub fn compile(profile: &LinuxSeccomp) -> Result<Filter, Error> {
    let default_action = profile.default_action();
    if default_action == LinuxSeccompAction::ScmpActNotify {
        return Err(Error::Invalid {
            field: "defaultAction".to_owned(),
            reason: "SCMP_ACT_NOTIFY cannot be the default action".to_owned(),
        });
    }
    let default = to_action(default_action, profile.default_errno_ret());
    let mut ctx = ScmpFilterContext::new(default).map_err(|source| Error::Init {
        action: action_name(default_action),
        source,
    })?;
    ctx.set_ctl_nnp(false).map_err(|source| Error::Flag {
        flag: "no_new_privs (off)".to_owned(),
        source,
    })?;

    for arch in profile.architectures().iter().flatten() {
        let a = to_arch(*arch);
        let present = ctx.is_arch_present(a).unwrap_or(false);
        if !present {
            ctx.add_arch(a).map_err(|source| Error::Arch {
                arch: arch.to_string(),
                source,
            })?;
        }
    }

    let mut flags: libc::c_ulong = 0;
    for flag in profile.flags().iter().flatten() {
        let name = flag.to_string();
        let result = match flag {
            LinuxSeccompFilterFlag::SeccompFilterFlagTsync => {
                flags |= FLAG_TSYNC;
                ctx.set_ctl_tsync(true)
            }
            LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow => {
                flags |= FLAG_SPEC_ALLOW;
                ctx.set_ctl_ssb(true)
            }
            LinuxSeccompFilterFlag::SeccompFilterFlagLog => {
                flags |= FLAG_LOG;
                ctx.set_ctl_log(true)
            }
        };
        result.map_err(|source| Error::Flag { flag: name, source })?;
    }

    let mut notify = false;
    let mut skipped = Vec::new();
    let mut named = Vec::new();
    for rule in profile.syscalls().iter().flatten() {
        let action = to_action(rule.action(), rule.errno_ret());
        // Every name the profile mentions counts for the ENOSYS stub's "newest known
        // syscall", whatever its action (as runc).
        named.extend(
            rule.names()
                .iter()
                .filter(|n| ScmpSyscall::from_name(n).is_ok())
                .cloned(),
        );
        if action == default {
            tracing::debug!(names = ?rule.names(), "seccomp: rule has the default action; skipped");
            continue;
        }
        for name in rule.names() {
            let syscall = match ScmpSyscall::from_name(name) {
                Ok(s) => s,
                Err(_) => {
                    tracing::warn!(syscall = %name, "seccomp: unknown syscall; rule skipped");
                    skipped.push(name.clone());
                    continue;
                }
            };
            let conditions = rule
                .args()
                .iter()
                .flatten()
                .map(|a| to_condition(name, a))
                .collect::<Result<Vec<_>, _>>()?;
            let rule_err = |source| Error::Rule {
                syscall: name.clone(),
                action: action_name(rule.action()),
                source,
            };
            if conditions.is_empty() {
                ctx.add_rule(action, syscall).map_err(rule_err)?;
            } else if has_repeated_index(rule.args().as_deref().unwrap_or_default()) {
                // libseccomp cannot compare one argument twice in a rule: like runc, each
                // comparison becomes its own rule (OR instead of AND).
                for c in &conditions {
                    ctx.add_rule_conditional(action, syscall, std::slice::from_ref(c))
                        .map_err(rule_err)?;
                }
            } else {
                ctx.add_rule_conditional(action, syscall, &conditions)
                    .map_err(rule_err)?;
            }
            if action == ScmpAction::Notify {
                notify = true;
            }
        }
    }
    // As runc: only when the default is restrictive and not already ENOSYS.
    let permissive = matches!(
        default,
        ScmpAction::Allow | ScmpAction::Log | ScmpAction::Notify
    );
    let enosys = if permissive || default == ScmpAction::Errno(libc::ENOSYS) {
        None
    } else {
        enosys::stub(&ctx, &named)
    };
    if notify {
        flags |= FLAG_NEW_LISTENER;
        if flags & FLAG_TSYNC != 0 {
            flags |= FLAG_TSYNC_ESRCH;
        }
    }
    let mut filter = Filter {
        ctx,
        notify,
        skipped,
        program: None,
        flags,
    };
    if let Some(stub) = enosys {
        match filter.program_with_stub(&stub) {
            Ok(program) => filter.program = Some(program),
            Err(e) => {
                tracing::warn!(error = %e, "seccomp: no ENOSYS stub; libseccomp loads the filter")
            }
        }
    }
    Ok(filter)
}

const FLAG_TSYNC: libc::c_ulong = 1;
const FLAG_LOG: libc::c_ulong = 2;
const FLAG_SPEC_ALLOW: libc::c_ulong = 4;
const FLAG_NEW_LISTENER: libc::c_ulong = 8;
const FLAG_TSYNC_ESRCH: libc::c_ulong = 16;
const SECCOMP_SET_MODE_FILTER: libc::c_ulong = 1;
/// The size of [`Program::to_bytes`]'s flags.
const FLAGS_LEN: usize = std::mem::size_of::<libc::c_ulong>();

fn has_repeated_index(args: &[LinuxSeccompArg]) -> bool {
    let mut seen = [false; 6];
    for a in args {
        if let Some(s) = seen.get_mut(a.index()) {
            if *s {
                return true;
            }
            *s = true;
        }
    }
    false
}

impl Filter {
    /// Whether some rule uses SCMP_ACT_NOTIFY (then load() returns the listener fd).
    pub fn uses_notify(&self) -> bool {
        self.notify
    }

    /// Syscall names that libseccomp does not know and were left out.
    pub fn skipped_syscalls(&self) -> &[String] {
        &self.skipped
    }

    /// The filter in libseccomp's pseudo-filter-code text form (for debugging and tests).
    pub fn pfc(&self) -> Result<String, Error> {
        let mut file = memfd("nestbox-seccomp-pfc")?;
        self.ctx
            .export_pfc(file.as_fd())
            .map_err(|e| Error::Export(e.to_string()))?;
        file.rewind().map_err(|e| Error::Export(e.to_string()))?;
        let mut out = String::new();
        file.read_to_string(&mut out)
            .map_err(|e| Error::Export(e.to_string()))?;
        Ok(out)
    }

    /// The size of the BPF program in instructions.
    pub fn bpf_instructions(&self) -> Result<usize, Error> {
        let mut file = memfd("nestbox-seccomp-bpf")?;
        self.ctx
            .export_bpf(file.as_fd())
            .map_err(|e| Error::Export(e.to_string()))?;
        let len = file
            .seek(std::io::SeekFrom::End(0))
            .map_err(|e| Error::Export(e.to_string()))?;
        Ok(len as usize / 8)
    }

    /// Load into the calling thread (all threads with SECCOMP_FILTER_FLAG_TSYNC). Call right
    /// before execve, after no_new_privs when the process asks for it. Returns the notify fd
    /// (close-on-exec) when the profile uses SCMP_ACT_NOTIFY.
    pub fn load(self) -> Result<Option<OwnedFd>, Error> {
        if let Some(program) = &self.program {
            return self.load_program(program);
        }
        self.ctx.load().map_err(|source| Error::Load { source })?;
        if !self.notify {
            return Ok(None);
        }
        let raw = self
            .ctx
            .get_notify_fd()
            .map_err(|e| Error::Notify(e.to_string()))?;
        // SAFETY: libseccomp keeps owning `raw` (it is valid while ctx lives); we only borrow
        // it to duplicate, so the returned fd is ours alone.
        let borrowed = unsafe { BorrowedFd::borrow_raw(raw) };
        let owned = borrowed
            .try_clone_to_owned()
            .map_err(|e| Error::Notify(e.to_string()))?;
        Ok(Some(owned))
    }

    /// The whole BPF program and its seccomp(2) flags: what [`Program::load`] hands the
    /// kernel, with no libseccomp involved. The runtime compiles the filter in its own
    /// process while the container's process sets up and sends it this over the sync
    /// channel ([`Program::to_bytes`]), so the container's process only makes one syscall.
    pub fn program(&self) -> Result<Program, Error> {
        let code = match &self.program {
            Some(program) => program.clone(),
            None => {
                let code = enosys::parse_program(&self.export_bpf()?);
                if code.is_empty() || code.len() > 4096 {
                    return Err(Error::Export(format!(
                        "{} instructions (the kernel takes 1 to 4096)",
                        code.len()
                    )));
                }
                code
            }
        };
        Ok(Program {
            flags: self.flags,
            code,
        })
    }

    fn export_bpf(&self) -> Result<Vec<u8>, Error> {
        let mut file = memfd("nestbox-seccomp-bpf")?;
        self.ctx
            .export_bpf(file.as_fd())
            .map_err(|e| Error::Export(e.to_string()))?;
        file.rewind().map_err(|e| Error::Export(e.to_string()))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .map_err(|e| Error::Export(e.to_string()))?;
        Ok(bytes)
    }

    /// Whether load() puts runc's ENOSYS stub in front of the filter.
    pub fn has_enosys_stub(&self) -> bool {
        self.program.is_some()
    }

    fn program_with_stub(
        &self,
        stub: &[enosys::SockFilter],
    ) -> Result<Vec<enosys::SockFilter>, Error> {
        let mut program = stub.to_vec();
        program.extend(enosys::parse_program(&self.export_bpf()?));
        if program.len() > 4096 {
            return Err(Error::Export(format!(
                "{} instructions exceed the kernel's 4096",
                program.len()
            )));
        }
        Ok(program)
    }

    fn load_program(&self, program: &[enosys::SockFilter]) -> Result<Option<OwnedFd>, Error> {
        load_raw(self.flags, program)
    }
}

/// A compiled filter as the kernel takes it: BPF instructions and seccomp(2) flags
/// ([`Filter::program`]). Loading it needs no libseccomp.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Program {
    flags: libc::c_ulong,
    code: Vec<enosys::SockFilter>,
}

impl Program {
    /// Load into the calling thread, as [`Filter::load`] does (same rules for
    /// no_new_privs and CAP_SYS_ADMIN). Returns the notify fd (close-on-exec) when the
    /// profile uses SCMP_ACT_NOTIFY.
    pub fn load(&self) -> Result<Option<OwnedFd>, Error> {
        load_raw(self.flags, &self.code)
    }

    /// Whether load() returns a notify fd.
    pub fn uses_notify(&self) -> bool {
        self.flags & FLAG_NEW_LISTENER != 0
    }

    /// The size in instructions.
    pub fn len(&self) -> usize {
        self.code.len()
    }

    pub fn is_empty(&self) -> bool {
        self.code.is_empty()
    }

    /// Flat bytes: the flags (a C unsigned long), then the instructions (8 bytes each),
    /// native endian: for a process of the same binary.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(FLAGS_LEN + 8 * self.code.len());
        out.extend_from_slice(&self.flags.to_ne_bytes());
        for insn in &self.code {
            out.extend_from_slice(&insn.code.to_ne_bytes());
            out.push(insn.jt);
            out.push(insn.jf);
            out.extend_from_slice(&insn.k.to_ne_bytes());
        }
        out
    }

    /// The inverse of [`Program::to_bytes`]; None for a malformed buffer.
    pub fn from_bytes(bytes: &[u8]) -> Option<Program> {
        let (flags, code) = bytes.split_at_checked(FLAGS_LEN)?;
        if code.is_empty() || code.len() % 8 != 0 || code.len() / 8 > 4096 {
            return None;
        }
        let flags = libc::c_ulong::from_ne_bytes(flags.try_into().ok()?);
        Some(Program {
            flags,
            code: enosys::parse_program(code),
        })
    }
}

fn load_raw(
    flags: libc::c_ulong,
    program: &[enosys::SockFilter],
) -> Result<Option<OwnedFd>, Error> {
    #[repr(C)]
    struct SockFprog {
        len: libc::c_ushort,
        filter: *const enosys::SockFilter,
    }
    let prog = SockFprog {
        len: program.len() as libc::c_ushort,
        filter: program.as_ptr(),
    };
    // SAFETY: prog points at `program`, alive for the call; the kernel copies it.
    let r = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            SECCOMP_SET_MODE_FILTER,
            flags,
            &prog as *const SockFprog,
        )
    };
    if r < 0 {
        return Err(Error::LoadRaw(std::io::Error::last_os_error()));
    }
    if flags & FLAG_NEW_LISTENER != 0 {
        // SAFETY: with NEW_LISTENER seccomp(2) returns a new fd that we own.
        return Ok(Some(unsafe { OwnedFd::from_raw_fd(r as i32) }));
    }
    Ok(None)
}

/// Send the notify fd to the seccomp agent at `listener_path` (linux.seccomp.listenerPath):
/// one message whose payload is the runtime-spec "containerProcessState" JSON
/// (`{"ociVersion", "fds": ["seccompFd"], "pid", "metadata", "state"}`) and whose SCM_RIGHTS
/// carries the fd. `state` is the container's state JSON as `nestbox state` prints it.
pub fn send_to_listener(
    listener_path: &std::path::Path,
    notify_fd: BorrowedFd<'_>,
    pid: i32,
    metadata: Option<&str>,
    state: &serde_json::Value,
) -> Result<(), Error> {
    let stream = std::os::unix::net::UnixStream::connect(listener_path).map_err(|source| {
        Error::Listener {
            path: listener_path.to_owned(),
            source,
        }
    })?;
    send_on_connection(&stream, listener_path, notify_fd, pid, metadata, state)
}

/// [`send_to_listener`] over a connection opened earlier (by a process that could still
/// reach and write the socket: the runtime connects before namespaces and the user switch);
/// `listener_path` only names it in errors. One message per connection: close it after.
pub fn send_on_connection(
    stream: &std::os::unix::net::UnixStream,
    listener_path: &std::path::Path,
    notify_fd: BorrowedFd<'_>,
    pid: i32,
    metadata: Option<&str>,
    state: &serde_json::Value,
) -> Result<(), Error> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    use std::os::fd::AsRawFd;
    let err = |source: std::io::Error| Error::Listener {
        path: listener_path.to_owned(),
        source,
    };
    let message = serde_json::json!({
        "ociVersion": state.get("ociVersion").cloned().unwrap_or_else(|| "1.0.2".into()),
        "fds": ["seccompFd"],
        "pid": pid,
        "metadata": metadata.unwrap_or(""),
        "state": state,
    });
    let payload = serde_json::to_vec(&message).map_err(|e| err(e.into()))?;
    let fds = [notify_fd.as_raw_fd()];
    let iov = [std::io::IoSlice::new(&payload)];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    let sent = sendmsg::<()>(stream.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), None)
        .map_err(|e| err(e.into()))?;
    if sent != payload.len() {
        return Err(err(std::io::Error::new(
            std::io::ErrorKind::WriteZero,
            format!("short write: {sent} of {} bytes", payload.len()),
        )));
    }
    Ok(())
}

fn memfd(name: &str) -> Result<std::fs::File, Error> {
    let cname = std::ffi::CString::new(name).map_err(|e| Error::Export(e.to_string()))?;
    // SAFETY: memfd_create with a valid NUL-terminated name; the fd is checked below.
    let fd = unsafe { libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(Error::Export(std::io::Error::last_os_error().to_string()));
    }
    // SAFETY: fd was just created and is owned by nothing else.
    Ok(std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// For `nestbox features`: the action names supported.
pub fn supported_actions() -> Vec<&'static str> {
    vec![
        "SCMP_ACT_ALLOW",
        "SCMP_ACT_ERRNO",
        "SCMP_ACT_KILL",
        "SCMP_ACT_KILL_PROCESS",
        "SCMP_ACT_KILL_THREAD",
        "SCMP_ACT_LOG",
        "SCMP_ACT_NOTIFY",
        "SCMP_ACT_TRACE",
        "SCMP_ACT_TRAP",
    ]
}

pub fn supported_operators() -> Vec<&'static str> {
    vec![
        "SCMP_CMP_EQ",
        "SCMP_CMP_GE",
        "SCMP_CMP_GT",
        "SCMP_CMP_LE",
        "SCMP_CMP_LT",
        "SCMP_CMP_MASKED_EQ",
        "SCMP_CMP_NE",
    ]
}

pub fn supported_archs() -> Vec<&'static str> {
    vec![
        "SCMP_ARCH_AARCH64",
        "SCMP_ARCH_ARM",
        "SCMP_ARCH_MIPS",
        "SCMP_ARCH_MIPS64",
        "SCMP_ARCH_MIPS64N32",
        "SCMP_ARCH_MIPSEL",
        "SCMP_ARCH_MIPSEL64",
        "SCMP_ARCH_MIPSEL64N32",
        "SCMP_ARCH_PPC",
        "SCMP_ARCH_PPC64",
        "SCMP_ARCH_PPC64LE",
        "SCMP_ARCH_RISCV64",
        "SCMP_ARCH_S390",
        "SCMP_ARCH_S390X",
        "SCMP_ARCH_X32",
        "SCMP_ARCH_X86",
        "SCMP_ARCH_X86_64",
    ]
}

/// The filter flags nestbox understands (features.json "knownFlags").
pub fn known_flags() -> Vec<&'static str> {
    vec![
        "SECCOMP_FILTER_FLAG_LOG",
        "SECCOMP_FILTER_FLAG_SPEC_ALLOW",
        "SECCOMP_FILTER_FLAG_TSYNC",
    ]
}

/// The known flags this kernel accepts (features.json "supportedFlags"), probed as runc
/// does: seccomp(SECCOMP_SET_MODE_FILTER, flag, NULL) fails with EFAULT when the flag is
/// understood and EINVAL when it is not. Nothing is installed.
pub fn supported_flags() -> Vec<&'static str> {
    let probe = |flag: libc::c_ulong| {
        // SAFETY: a NULL filter is never installed; the kernel only validates the flags and
        // then fails to copy the program.
        let r = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                SECCOMP_SET_MODE_FILTER,
                flag,
                std::ptr::null::<libc::c_void>(),
            )
        };
        r < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EFAULT)
    };
    [
        ("SECCOMP_FILTER_FLAG_LOG", FLAG_LOG),
        ("SECCOMP_FILTER_FLAG_SPEC_ALLOW", FLAG_SPEC_ALLOW),
        ("SECCOMP_FILTER_FLAG_TSYNC", FLAG_TSYNC),
    ]
    .into_iter()
    .filter(|(_, f)| probe(*f))
    .map(|(name, _)| name)
    .collect()
}

#[cfg(test)]
mod tests;
