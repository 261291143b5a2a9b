//! Running the userspace firewall tools (`iptables`, `nft` scripts) where netlink is not
//! spoken: one place for the exec, the script piped to stdin, and an error that carries
//! the tool's stderr.

use std::io::{self, Write};
use std::process::{Command, Stdio};

/// Whether `cmd` is on PATH.
pub fn which(cmd: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(cmd).is_file()))
        .unwrap_or(false)
}

/// Run `cmd args` (with `stdin` piped in when given) and return its stdout; a non-zero
/// exit is an error saying the command line and the tool's stderr.
pub fn run(cmd: &str, args: &[&str], stdin: Option<&str>) -> io::Result<String> {
    let mut child = Command::new(cmd)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| io::Error::new(e.kind(), format!("failed to run {cmd}: {e}")))?;
    if let (Some(input), Some(mut si)) = (stdin, child.stdin.take()) {
        let _ = si.write_all(input.as_bytes());
    }
    let out = child
        .wait_with_output()
        .map_err(|e| io::Error::new(e.kind(), format!("failed to wait for {cmd}: {e}")))?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "{cmd} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
