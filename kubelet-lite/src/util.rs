//! Small helpers shared by the modules: atomic file writes, ids, base64, time.

use std::io::Write;
use std::path::Path;

use base64::Engine;

/// Write `data` to `path` atomically (temp file in the same dir, fsync, rename); creates the
/// parent directories.
pub fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", random_hex(6)));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(data)?;
    f.sync_data()?;
    drop(f);
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// `n` random bytes as lower-case hex (from the kernel's CSPRNG).
pub fn random_hex(n: usize) -> String {
    let mut buf = vec![0u8; n];
    if let Err(e) = getrandom(&mut buf) {
        // Fall back to time and pid: ids need uniqueness, not secrecy.
        tracing::warn!("getrandom: {e}");
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        for (i, b) in buf.iter_mut().enumerate() {
            *b = (t >> ((i % 16) * 8)) as u8 ^ (std::process::id() as u8).wrapping_mul(i as u8);
        }
    }
    hex(&buf)
}

fn getrandom(buf: &mut [u8]) -> std::io::Result<()> {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")?.read_exact(buf)
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex(&sha2::Sha256::digest(data))
}

pub fn base64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

pub fn unbase64(s: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::STANDARD.decode(s).ok()
}

/// Now as RFC 3339 with nanoseconds (the CRI log timestamp).
pub fn now_rfc3339_nano() -> String {
    let ts = jiff::Timestamp::now();
    format!("{ts:.9}")
}

/// Now, as the API's `Time`.
pub fn now_time() -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Time {
    k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now())
}

/// A unix timestamp (nanoseconds) as the API's `Time`.
pub fn time_from_unix_nanos(ns: i128) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Time {
    k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        jiff::Timestamp::from_nanosecond(ns).unwrap_or_else(|_| jiff::Timestamp::now()),
    )
}

pub fn now_unix_nanos() -> i128 {
    jiff::Timestamp::now().as_nanosecond()
}
