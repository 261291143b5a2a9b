//! Reading and checking a bundle's config.json before anything is created.
//!
//! Checks run on the raw JSON first so a bad config gets a message naming the problem (an
//! unknown namespace type, a malformed file) rather than a serde path, and so unknown
//! capability names are dropped with a warning instead of failing the whole spec.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use oci_spec::runtime::Spec;
use serde_json::Value;

use crate::error::{Error, Result};

/// What `nestbox spec` writes: runc 1.1's default config (hostname aside).
pub const DEFAULT_CONFIG: &str = include_str!("default-config.json");

const NAMESPACE_TYPES: &[&str] = &[
    "pid", "network", "ipc", "uts", "mount", "user", "cgroup", "time",
];

/// Container ids as runc accepts them: `^[\w+\-.]+$`, not `.` or `..`.
pub fn validate_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id != "."
        && id != ".."
        && id.len() <= 1024
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '+' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidId(id.to_string()))
    }
}

/// A loaded bundle: its absolute path, the parsed spec and the absolute rootfs.
#[derive(Debug)]
pub struct Bundle {
    pub path: PathBuf,
    pub spec: Spec,
    pub rootfs: PathBuf,
}

/// Read, check and parse `<bundle>/config.json`.
pub fn load_bundle(bundle: &Path) -> Result<Bundle> {
    let shown = bundle.display().to_string();
    let path = std::fs::canonicalize(bundle).map_err(|e| Error::Bundle {
        path: shown.clone(),
        msg: e.to_string(),
    })?;
    if !path.is_dir() {
        return Err(Error::Bundle {
            path: shown,
            msg: "not a directory".into(),
        });
    }
    let config = path.join("config.json");
    let text = std::fs::read_to_string(&config).map_err(|e| Error::Bundle {
        path: shown.clone(),
        msg: format!("reading config.json: {e}"),
    })?;
    let spec = parse_spec(&text)?;
    let root = spec
        .root()
        .as_ref()
        .ok_or_else(|| Error::Spec("root: missing (root.path is required)".into()))?;
    let rootfs = if root.path().is_absolute() {
        root.path().clone()
    } else {
        path.join(root.path())
    };
    let rootfs = std::fs::canonicalize(&rootfs)
        .map_err(|e| Error::Spec(format!("root.path {:?}: {e}", rootfs.display())))?;
    if spec.process().is_none() {
        return Err(Error::Spec("process: missing".into()));
    }
    Ok(Bundle { path, spec, rootfs })
}

/// Parse config.json text, after the checks on raw JSON described in the module docs.
pub fn parse_spec(text: &str) -> Result<Spec> {
    let mut value: Value =
        serde_json::from_str(text).map_err(|e| Error::Spec(format!("malformed JSON: {e}")))?;
    if !value.is_object() {
        return Err(Error::Spec(
            "malformed: the top level is not an object".into(),
        ));
    }
    check_namespaces(&value)?;
    drop_unknown_capabilities(&mut value);
    flatten_time_offsets(&mut value)?;
    serde_json::from_value(value).map_err(|e| Error::Spec(format!("invalid: {e}")))
}

/// oci-spec 0.7 types `linux.timeOffsets` as clock → string, while the runtime-spec has
/// clock → `{"secs", "nanosecs"}`. Check each entry and rewrite it to the string
/// `"<secs> <nanosecs>"` (the line format of /proc/<pid>/timens_offsets after the clock).
fn flatten_time_offsets(value: &mut Value) -> Result<()> {
    let Some(offsets) = value.pointer_mut("/linux/timeOffsets") else {
        return Ok(());
    };
    if offsets.is_null() {
        return Ok(());
    }
    let offsets = offsets
        .as_object_mut()
        .ok_or_else(|| Error::Spec("linux.timeOffsets: not an object".into()))?;
    for (clock, offset) in offsets.iter_mut() {
        if clock != "monotonic" && clock != "boottime" {
            return Err(Error::Spec(format!(
                "linux.timeOffsets: unknown clock {clock:?} (monotonic or boottime)"
            )));
        }
        let bad = |what: &str| Error::Spec(format!("linux.timeOffsets.{clock}: {what}"));
        let obj = offset
            .as_object()
            .ok_or_else(|| bad("not an object with secs and nanosecs"))?;
        let secs = match obj.get("secs") {
            None | Some(Value::Null) => 0,
            Some(v) => v.as_i64().ok_or_else(|| bad("secs is not an integer"))?,
        };
        let nanos = match obj.get("nanosecs") {
            None | Some(Value::Null) => 0,
            Some(v) => v
                .as_u64()
                .filter(|n| *n < 1_000_000_000)
                .ok_or_else(|| bad("nanosecs is not an integer below 1000000000"))?,
        };
        *offset = Value::String(format!("{secs} {nanos}"));
    }
    Ok(())
}

fn check_namespaces(value: &Value) -> Result<()> {
    let Some(list) = value.pointer("/linux/namespaces") else {
        return Ok(());
    };
    let list = list
        .as_array()
        .ok_or_else(|| Error::Spec("linux.namespaces: not a list".into()))?;
    let mut seen = HashSet::new();
    for ns in list {
        let typ = ns
            .get("type")
            .and_then(Value::as_str)
            .ok_or_else(|| Error::Spec("linux.namespaces: an entry has no type".into()))?;
        if !NAMESPACE_TYPES.contains(&typ) {
            return Err(Error::Spec(format!(
                "linux.namespaces: unknown namespace type {typ:?}"
            )));
        }
        if !seen.insert(typ) {
            return Err(Error::Spec(format!(
                "linux.namespaces: namespace type {typ:?} listed twice"
            )));
        }
    }
    Ok(())
}

/// Parse a process JSON (`exec --process`), dropping unknown capability names.
pub fn parse_process(text: &str) -> Result<oci_spec::runtime::Process> {
    let value: Value = serde_json::from_str(text)
        .map_err(|e| Error::Other(format!("process JSON: malformed: {e}")))?;
    let mut wrapped = serde_json::json!({ "process": value });
    drop_unknown_capabilities(&mut wrapped);
    serde_json::from_value(wrapped["process"].take())
        .map_err(|e| Error::Other(format!("process JSON: invalid: {e}")))
}

/// Remove capability names oci-spec does not know, warning about each.
fn drop_unknown_capabilities(value: &mut Value) {
    let Some(sets) = value
        .pointer_mut("/process/capabilities")
        .and_then(Value::as_object_mut)
    else {
        return;
    };
    for (set, names) in sets.iter_mut() {
        if let Some(list) = names.as_array_mut() {
            list.retain(|name| {
                let ok =
                    serde_json::from_value::<oci_spec::runtime::Capability>(name.clone()).is_ok();
                if !ok {
                    tracing::warn!("capabilities.{set}: unknown capability {name}, ignored");
                }
                ok
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_follow_runc_rules() {
        assert!(validate_id("abc-1.2_x+y").is_ok());
        for bad in ["", ".", "..", "a/b", "a b", "é"] {
            assert!(validate_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn unknown_namespace_type_is_named() {
        let text = r#"{"ociVersion":"1.0.2","linux":{"namespaces":[{"type":"bogus"}]}}"#;
        let err = parse_spec(text).unwrap_err().to_string();
        assert!(err.contains("unknown namespace type \"bogus\""), "{err}");
    }

    #[test]
    fn unknown_capabilities_are_dropped() {
        let text = r#"{"ociVersion":"1.0.2","process":{"cwd":"/","user":{"uid":0,"gid":0},
            "capabilities":{"bounding":["CAP_KILL","CAP_NOPE"]}}}"#;
        let spec = parse_spec(text).expect("parses");
        let caps = spec
            .process()
            .as_ref()
            .unwrap()
            .capabilities()
            .as_ref()
            .unwrap();
        assert_eq!(caps.bounding().as_ref().map(|b| b.len()), Some(1));
    }

    #[test]
    fn default_config_parses() {
        parse_spec(DEFAULT_CONFIG).expect("default config");
    }
}
