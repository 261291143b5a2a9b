//! OCI hooks: each runs with the container state JSON on stdin, the hook's own args and env,
//! and an optional timeout. prestart/createRuntime/poststart/poststop run in the runtime's
//! namespaces (from the CLI); createContainer and startContainer run from init, inside the
//! container's namespaces (their state's pid is init's pid there).
//!
//! The state's status: `created` for prestart, createRuntime, createContainer and
//! startContainer (the spec: "created: the runtime has finished the create operation (after
//! step 2 in the lifecycle), and the container process has neither exited nor executed the
//! user-specified program"; these hooks are steps 3 to 7), `running` for poststart (after
//! step 8, the program runs), `stopped` for poststop.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use oci_spec::runtime::Hook;

use crate::error::{Error, Result};

/// Run `hooks` in order; the first failure stops and is returned.
pub fn run(kind: &str, hooks: Option<&Vec<Hook>>, state_json: &str) -> Result<()> {
    for hook in hooks.map(Vec::as_slice).unwrap_or_default() {
        run_one(kind, hook, state_json)?;
    }
    Ok(())
}

/// Run hooks whose failure must not fail the operation (poststart, poststop): each one, a
/// failure is a warning and the next hook still runs.
pub fn run_warn(kind: &str, hooks: Option<&Vec<Hook>>, state_json: &str) {
    for hook in hooks.map(Vec::as_slice).unwrap_or_default() {
        if let Err(e) = run_one(kind, hook, state_json) {
            tracing::warn!("{e}");
        }
    }
}

/// The state JSON with `pid` as seen from inside the container's pid namespace (this
/// process's own pid there), for the hooks init runs.
pub fn state_in_container(state_json: &str) -> String {
    match serde_json::from_str::<serde_json::Value>(state_json) {
        Ok(mut state) => {
            state["pid"] = nix::unistd::getpid().as_raw().into();
            state.to_string()
        }
        Err(_) => state_json.to_owned(),
    }
}

fn run_one(kind: &str, hook: &Hook, state_json: &str) -> Result<()> {
    let path = hook.path();
    let fail = |msg: String| Error::Other(format!("{kind} hook {}: {msg}", path.display()));
    let args = hook.args().clone().unwrap_or_default();
    let mut cmd = Command::new(path);
    if let Some(arg0) = args.first() {
        cmd.arg0(arg0);
    }
    cmd.args(args.iter().skip(1))
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for kv in hook.env().as_deref().unwrap_or_default() {
        if let Some((k, v)) = kv.split_once('=') {
            cmd.env(k, v);
        }
    }
    let mut child = cmd.spawn().map_err(|e| fail(e.to_string()))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A hook may exit without reading its stdin: EPIPE is not its failure. SIGPIPE is at
        // its default (see the nestbox binary's main), which would kill us on that write:
        // ignore it around the write. The runtime's processes are single-threaded.
        // SAFETY: changing a signal disposition has no memory-safety preconditions.
        let previous = unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
        let _ = stdin.write_all(state_json.as_bytes());
        drop(stdin);
        if previous != libc::SIG_ERR {
            // SAFETY: as above; restores what was there before.
            unsafe { libc::signal(libc::SIGPIPE, previous) };
        }
    }
    let deadline = hook
        .timeout()
        .filter(|t| *t > 0)
        .map(|t| Instant::now() + Duration::from_secs(t as u64));
    let status = loop {
        match child.try_wait().map_err(|e| fail(e.to_string()))? {
            Some(status) => break status,
            None if deadline.is_some_and(|d| Instant::now() >= d) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(fail(format!(
                    "timed out after {} s",
                    hook.timeout().unwrap_or_default()
                )));
            }
            None => std::thread::sleep(Duration::from_millis(2)),
        }
    };
    if !status.success() {
        let mut stderr = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut stderr);
        }
        return Err(fail(format!(
            "{status}: {}",
            stderr.trim().replace('\n', " ")
        )));
    }
    Ok(())
}
