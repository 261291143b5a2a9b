//! `/proc/sys` writes for the current netns (`net.*` is per netns at open time).

use std::io;

pub fn path(key: &str) -> String {
    format!(
        "/proc/sys/{}",
        key.trim_start_matches('/').replace('.', "/")
    )
}

pub fn get(key_path: &str) -> io::Result<String> {
    Ok(std::fs::read_to_string(key_path)?.trim().to_string())
}

/// Write `value` unless it is already set (skipping a write keeps ADD cheap).
pub fn ensure(key_path: &str, value: &str) -> io::Result<()> {
    if get(key_path).map(|v| v == value).unwrap_or(false) {
        return Ok(());
    }
    std::fs::write(key_path, value)
}

/// `net/ipv6/conf/<if>/<name>`: ifnames may contain dots, so build the path directly.
pub fn iface_path(family: &str, ifname: &str, name: &str) -> String {
    format!("/proc/sys/net/{family}/conf/{ifname}/{name}")
}
