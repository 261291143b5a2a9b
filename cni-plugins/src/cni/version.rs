//! Spec versions this library speaks, and their ordering.

use super::{Code, Error, Result};

pub const SUPPORTED: &[&str] = &[
    "0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0",
];
pub const CURRENT: &str = "1.1.0";

/// A parsed `major.minor.patch`.
pub type Version = (u32, u32, u32);

pub fn parse(v: &str) -> Result<Version> {
    let mut parts = v.split('.');
    let mut next = || -> Result<u32> {
        parts
            .next()
            .and_then(|p| p.parse::<u32>().ok())
            .ok_or_else(|| Error::new(Code::Decode, format!("invalid version {v:?}")))
    };
    let ver = (next()?, next()?, next()?);
    Ok(ver)
}

/// The version a config asks for: empty means 0.1.0 (as libcni does).
pub fn of_config(v: &str) -> &str {
    if v.is_empty() {
        "0.1.0"
    } else {
        v
    }
}

pub fn is_supported(v: &str) -> bool {
    SUPPORTED.contains(&v)
}

pub fn at_least(v: &str, min: &str) -> bool {
    match (parse(v), parse(min)) {
        (Ok(a), Ok(b)) => a >= b,
        _ => false,
    }
}

pub fn version_info_json() -> String {
    serde_json::json!({ "cniVersion": CURRENT, "supportedVersions": SUPPORTED }).to_string()
}
