//! Filters loaded for real, each in a forked child: errno values, KILL_PROCESS/KILL/TRAP
//! signals seen by waitpid, a NOTIFY listener answering for a grandchild, and containerd's
//! default-profile shape (a large allow-list with default ERRNO over three architectures).

use std::ffi::CString;

use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};
use oci_spec::runtime::LinuxSeccomp;

fn profile(json: &str) -> LinuxSeccomp {
    serde_json::from_str(json).expect("profile JSON")
}

/// mkdir on a fresh path: 0 on success, else errno.
fn try_mkdir() -> i32 {
    let path = CString::new(format!("/tmp/nestbox-seccomp-{}", std::process::id())).expect("path");
    // SAFETY: valid NUL-terminated path.
    let r = unsafe { libc::mkdir(path.as_ptr(), 0o700) };
    if r == 0 {
        // SAFETY: same path.
        unsafe { libc::rmdir(path.as_ptr()) };
        0
    } else {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(-1)
    }
}

/// Fork; the child sets no_new_privs, loads the profile, runs `body` and _exits with its
/// result (100 + n when loading failed). Done twice: loaded by libseccomp-side
/// `Filter::load` and as the runtime does it, a `Program` sent as bytes and loaded with
/// seccomp(2) alone; both must end the same way (the second one's status is returned).
fn in_child(json: &str, body: fn(Option<std::os::fd::OwnedFd>) -> i32) -> WaitStatus {
    let via_filter = in_child_with(json, body, false);
    let via_program = in_child_with(json, body, true);
    assert_eq!(
        outcome(via_filter),
        outcome(via_program),
        "Filter::load and Program::load differ for {json}"
    );
    via_program
}

fn outcome(status: WaitStatus) -> String {
    match status {
        WaitStatus::Exited(_, code) => format!("exit {code}"),
        WaitStatus::Signaled(_, sig, _) => format!("signal {sig}"),
        other => format!("{other:?}"),
    }
}

fn in_child_with(
    json: &str,
    body: fn(Option<std::os::fd::OwnedFd>) -> i32,
    program: bool,
) -> WaitStatus {
    let filter = nestbox_seccomp::compile(&profile(json)).expect("compile");
    let program = program.then(|| {
        let bytes = filter.program().expect("program").to_bytes();
        nestbox_seccomp::Program::from_bytes(&bytes).expect("program from bytes")
    });
    // SAFETY: the child only makes syscalls and exits with _exit; the filter is compiled
    // before forking.
    match unsafe { fork() }.expect("fork") {
        ForkResult::Child => {
            // SAFETY: prctl with constant arguments.
            let code = if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
                101
            } else {
                let loaded = match &program {
                    Some(p) => p.load(),
                    None => filter.load(),
                };
                match loaded {
                    Ok(fd) => body(fd),
                    Err(_) => 102,
                }
            };
            // SAFETY: _exit never returns and skips atexit handlers inherited from the parent.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => {
            drop(filter);
            waitpid(child, None).expect("waitpid")
        }
    }
}

fn exited(status: WaitStatus) -> i32 {
    match status {
        WaitStatus::Exited(_, code) => code,
        other => panic!("child did not exit normally: {other:?}"),
    }
}

fn signalled(status: WaitStatus) -> nix::sys::signal::Signal {
    match status {
        WaitStatus::Signaled(_, sig, _) => sig,
        other => panic!("child was not killed by a signal: {other:?}"),
    }
}

#[test]
fn errno_default_eperm() {
    let s = in_child(
        r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
            {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO"}]}"#,
        |_| try_mkdir(),
    );
    assert_eq!(exited(s), libc::EPERM);
}

#[test]
fn errno_ret_38() {
    let s = in_child(
        r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
            {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}]}"#,
        |_| try_mkdir(),
    );
    assert_eq!(exited(s), 38);
}

#[test]
fn without_filter_mkdir_works() {
    let s = in_child(r#"{"defaultAction": "SCMP_ACT_ALLOW"}"#, |_| try_mkdir());
    assert_eq!(exited(s), 0);
}

#[test]
fn argument_condition_selects_the_call() {
    // mkdir with mode 0o700 is refused with EACCES; other modes are not filtered.
    let s = in_child(
        r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
            {"names": ["mkdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13,
             "args": [{"index": 1, "value": 448, "op": "SCMP_CMP_EQ"}]}]}"#,
        |_| {
            let first = try_mkdir();
            let path = CString::new(format!("/tmp/nestbox-seccomp-b-{}", std::process::id()))
                .expect("path");
            // SAFETY: valid path.
            let second = unsafe { libc::mkdir(path.as_ptr(), 0o755) };
            // SAFETY: valid path.
            unsafe { libc::rmdir(path.as_ptr()) };
            if first == libc::EACCES && second == 0 {
                0
            } else {
                1
            }
        },
    );
    assert_eq!(exited(s), 0);
}

#[test]
fn kill_process_is_sigsys() {
    let s = in_child(
        r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
            {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_KILL_PROCESS"}]}"#,
        |_| try_mkdir(),
    );
    assert_eq!(signalled(s), nix::sys::signal::Signal::SIGSYS);
}

#[test]
fn kill_thread_and_trap_are_sigsys() {
    for action in ["SCMP_ACT_KILL", "SCMP_ACT_KILL_THREAD", "SCMP_ACT_TRAP"] {
        let json = format!(
            r#"{{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
                {{"names": ["mkdir", "mkdirat"], "action": "{action}"}}]}}"#
        );
        let s = in_child(&json, |_| try_mkdir());
        assert_eq!(signalled(s), nix::sys::signal::Signal::SIGSYS, "{action}");
    }
}

#[test]
fn notify_listener_answers_for_the_filtered_process() {
    // The child loads a NOTIFY filter, forks a grandchild that calls mkdir, and answers the
    // notification with ENOTSUP itself; the grandchild's errno becomes the child's status.
    let s = in_child(
        r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
            {"names": ["mkdir"], "action": "SCMP_ACT_NOTIFY"}]}"#,
        |fd| {
            use std::os::fd::AsRawFd;
            let Some(fd) = fd else { return 110 };
            // SAFETY: fork in a single-threaded child.
            match unsafe { libc::fork() } {
                0 => {
                    // SAFETY: _exit.
                    unsafe { libc::_exit(try_mkdir()) }
                }
                pid if pid > 0 => {
                    let Ok(req) = libseccomp::ScmpNotifReq::receive(fd.as_raw_fd()) else {
                        return 111;
                    };
                    let resp = libseccomp::ScmpNotifResp::new_error(
                        req.id,
                        -libc::ENOTSUP,
                        libseccomp::ScmpNotifRespFlags::empty(),
                    );
                    if resp.respond(fd.as_raw_fd()).is_err() {
                        return 112;
                    }
                    match waitpid(Pid::from_raw(pid), None) {
                        Ok(WaitStatus::Exited(_, code)) => code,
                        _ => 113,
                    }
                }
                _ => 114,
            }
        },
    );
    assert_eq!(exited(s), libc::ENOTSUP);
}

#[test]
fn containerd_default_profile_shape_compiles_and_runs() {
    let json = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/default-errno-allowlist.json"
    ))
    .expect("fixture");
    let p = profile(&json);
    let f = nestbox_seccomp::compile(&p).expect("compile fixture");
    assert!(f.bpf_instructions().expect("bpf") > 100);
    eprintln!("skipped by this libseccomp: {:?}", f.skipped_syscalls());
    assert!(f
        .skipped_syscalls()
        .contains(&"nestbox_not_a_syscall".to_owned()));
    // Under the profile an ordinary program works, mkdir is allowed, and a syscall left out
    // of the allow-list (e.g. reboot) gets the default EPERM.
    let s = in_child(&json, |_| {
        if try_mkdir() != 0 {
            return 1;
        }
        // SAFETY: reboot with an invalid magic only reaches the filter (or fails with EINVAL).
        let r = unsafe { libc::syscall(libc::SYS_reboot, 0, 0, 0, 0) };
        let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
        if r != -1 || errno != libc::EPERM {
            return 2;
        }
        // A syscall number above everything the profile names gets ENOSYS (runc's stub),
        // so callers fall back instead of failing on EPERM.
        // SAFETY: an unassigned syscall number; the filter answers before the kernel would.
        let r = unsafe { libc::syscall(463, 0, 0, 0) };
        let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
        if r == -1 && errno == libc::ENOSYS {
            0
        } else {
            3
        }
    });
    assert_eq!(exited(s), 0);
    assert!(f.has_enosys_stub());
}

#[test]
fn notify_through_the_enosys_stub_path() {
    // The fixture (default ERRNO, so the stub is used and the program is loaded with
    // seccomp(2) directly) with mkdir turned into a NOTIFY rule.
    let json = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/default-errno-allowlist.json"
    ))
    .expect("fixture");
    let mut v: serde_json::Value = serde_json::from_str(&json).expect("fixture JSON");
    let rules = v["syscalls"].as_array_mut().expect("syscalls");
    let allow = rules[0]["names"].as_array_mut().expect("names");
    allow.retain(|n| n != "mkdir");
    rules.push(serde_json::json!({"names": ["mkdir"], "action": "SCMP_ACT_NOTIFY"}));
    let s = in_child(&v.to_string(), |fd| {
        use std::os::fd::AsRawFd;
        let Some(fd) = fd else { return 110 };
        // SAFETY: fork in a single-threaded child.
        match unsafe { libc::fork() } {
            // SAFETY: _exit.
            0 => unsafe { libc::_exit(try_mkdir()) },
            pid if pid > 0 => {
                let Ok(req) = libseccomp::ScmpNotifReq::receive(fd.as_raw_fd()) else {
                    return 111;
                };
                let resp = libseccomp::ScmpNotifResp::new_error(
                    req.id,
                    -libc::EROFS,
                    libseccomp::ScmpNotifRespFlags::empty(),
                );
                if resp.respond(fd.as_raw_fd()).is_err() {
                    return 112;
                }
                match waitpid(Pid::from_raw(pid), None) {
                    Ok(WaitStatus::Exited(_, code)) => code,
                    _ => 113,
                }
            }
            _ => 114,
        }
    });
    assert_eq!(exited(s), libc::EROFS);
}

#[test]
fn flags_are_passed_to_the_kernel() {
    let json = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/default-errno-allowlist.json"
    ))
    .expect("fixture");
    let mut v: serde_json::Value = serde_json::from_str(&json).expect("fixture JSON");
    v["flags"] = serde_json::json!([
        "SECCOMP_FILTER_FLAG_TSYNC",
        "SECCOMP_FILTER_FLAG_LOG",
        "SECCOMP_FILTER_FLAG_SPEC_ALLOW"
    ]);
    let s = in_child(&v.to_string(), |_| try_mkdir());
    assert_eq!(exited(s), 0);
    // And through libseccomp's own loader (permissive default: no ENOSYS stub).
    let s = in_child(
        r#"{"defaultAction": "SCMP_ACT_ALLOW",
            "flags": ["SECCOMP_FILTER_FLAG_TSYNC", "SECCOMP_FILTER_FLAG_LOG"],
            "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 5}]}"#,
        |_| try_mkdir(),
    );
    assert_eq!(exited(s), libc::EIO);
}
