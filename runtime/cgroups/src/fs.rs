//! Reading and writing cgroup interface files, with errors that name the field and the file.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::Error;

/// Write `value` to `dir/file` (no create, no truncate: cgroup files take one write).
pub(crate) fn write(field: &str, dir: &Path, file: &str, value: &str) -> Result<(), Error> {
    let path = dir.join(file);
    tracing::debug!(path = %path.display(), value, "cgroup write");
    let result = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .and_then(|mut f| loop {
            match f.write(value.as_bytes()) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                other => break other.map(|_| ()),
            }
        });
    result.map_err(|source| Error::Write {
        field: field.to_owned(),
        path,
        value: value.to_owned(),
        source,
    })
}

pub(crate) fn exists(dir: &Path, file: &str) -> bool {
    dir.join(file).exists()
}

pub(crate) fn read(dir: &Path, file: &str) -> Result<String, Error> {
    let path = dir.join(file);
    std::fs::read_to_string(&path).map_err(|source| Error::Read { path, source })
}

/// The file's content if it exists, None if it does not.
pub(crate) fn read_opt(dir: &Path, file: &str) -> Result<Option<String>, Error> {
    match std::fs::read_to_string(dir.join(file)) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(Error::Read {
            path: dir.join(file),
            source,
        }),
    }
}

fn parse_err(path: PathBuf, what: &str) -> Error {
    Error::Parse {
        path,
        reason: what.to_owned(),
    }
}

/// One number; "max" reads as u64::MAX.
pub(crate) fn parse_u64(path: &Path, text: &str) -> Result<u64, Error> {
    let t = text.trim();
    if t == "max" {
        return Ok(u64::MAX);
    }
    t.parse::<u64>()
        .or_else(|_| {
            t.parse::<i64>()
                .map(|v| if v < 0 { u64::MAX } else { v as u64 })
        })
        .map_err(|_| parse_err(path.to_owned(), &format!("expected a number, found {t:?}")))
}

pub(crate) fn read_u64(dir: &Path, file: &str) -> Result<u64, Error> {
    let text = read(dir, file)?;
    parse_u64(&dir.join(file), &text)
}

/// A number if the file exists (0 otherwise); for optional statistics.
pub(crate) fn read_u64_or_zero(dir: &Path, file: &str) -> Result<u64, Error> {
    match read_opt(dir, file)? {
        Some(text) => parse_u64(&dir.join(file), &text),
        None => Ok(0),
    }
}

/// "key value" lines (memory.stat, cpu.stat, memory.events, oom_control).
pub(crate) fn parse_kv(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let k = it.next()?;
            let v = it.next()?.parse().ok()?;
            Some((k.to_owned(), v))
        })
        .collect()
}

pub(crate) fn read_kv_opt(dir: &Path, file: &str) -> Result<BTreeMap<String, u64>, Error> {
    Ok(read_opt(dir, file)?
        .map(|t| parse_kv(&t))
        .unwrap_or_default())
}

/// Whitespace-separated numbers (cpuacct.usage_percpu).
pub(crate) fn parse_list(text: &str) -> Vec<u64> {
    text.split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_max() {
        let p = Path::new("/x");
        assert_eq!(parse_u64(p, "42\n").ok(), Some(42));
        assert_eq!(parse_u64(p, "max\n").ok(), Some(u64::MAX));
        assert_eq!(parse_u64(p, "-1").ok(), Some(u64::MAX));
        let err = parse_u64(p, "abc")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("/x") && err.contains("abc"), "{err}");
    }

    #[test]
    fn kv_lines() {
        let kv = parse_kv("oom_kill_disable 0\nunder_oom 0\noom_kill 3\n");
        assert_eq!(kv.get("oom_kill"), Some(&3));
        assert_eq!(parse_list("1 2 3 \n"), vec![1, 2, 3]);
    }
}
