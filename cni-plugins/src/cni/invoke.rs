//! Exec a delegate plugin (IPAM) as libcni does: found in `CNI_PATH`, same environment
//! with `CNI_COMMAND` set, the whole config on stdin, result or error JSON on stdout.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

use super::{CniResult, Code, Error, Result};

pub fn find_in_path(plugin: &str, path: &[PathBuf]) -> Result<PathBuf> {
    if plugin.is_empty() || plugin.contains('/') {
        return Err(Error::config(format!("invalid plugin type {plugin:?}")));
    }
    path.iter()
        .map(|d| d.join(plugin))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            Error::internal(format!(
                "failed to find plugin {plugin:?} in path {:?}",
                path.iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
            ))
        })
}

/// Run `exe` with `command`; returns stdout on success and the delegate's own error
/// (code, msg, details) on failure.
pub fn exec(
    exe: &Path,
    command: &str,
    stdin: &[u8],
    extra_env: &[(&str, &str)],
) -> Result<Vec<u8>> {
    let mut cmd = Command::new(exe);
    cmd.env("CNI_COMMAND", command)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| Error::internal(format!("exec {}: {e}", exe.display())))?;
    if let Some(mut si) = child.stdin.take() {
        let _ = si.write_all(stdin);
    }
    let out = child
        .wait_with_output()
        .map_err(|e| Error::internal(format!("wait {}: {e}", exe.display())))?;
    if out.status.success() {
        return Ok(out.stdout);
    }
    if let Ok(v) = serde_json::from_slice::<Value>(&out.stdout) {
        if let Some(code) = v.get("code").and_then(|c| c.as_u64()) {
            return Err(Error {
                code: code as u32,
                msg: v
                    .get("msg")
                    .and_then(|m| m.as_str())
                    .unwrap_or("")
                    .to_string(),
                details: v
                    .get("details")
                    .and_then(|m| m.as_str())
                    .unwrap_or("")
                    .to_string(),
            });
        }
    }
    Err(Error::internal(format!(
        "plugin {} failed ({}): {}",
        exe.display(),
        out.status,
        String::from_utf8_lossy(&out.stdout)
    )))
}

pub fn exec_add(exe: &Path, stdin: &[u8]) -> Result<CniResult> {
    let out = exec(exe, "ADD", stdin, &[])?;
    let v: Value = serde_json::from_slice(&out)
        .map_err(|e| Error::new(Code::Decode, format!("decoding IPAM result: {e}")))?;
    CniResult::parse(&v)
}
