//! Device access rules: the v1 devices.allow/devices.deny lists, and runc's default allowed
//! devices appended to every rule list so /dev/null, /dev/tty, ptys… keep working.

use std::path::Path;

use oci_spec::runtime::{LinuxDeviceCgroup, LinuxDeviceType};

use crate::{fs, Error, Layout};

fn rule(
    typ: LinuxDeviceType,
    major: Option<i64>,
    minor: Option<i64>,
    access: &str,
) -> LinuxDeviceCgroup {
    let mut r = LinuxDeviceCgroup::default();
    r.set_allow(true);
    r.set_typ(Some(typ));
    r.set_major(major);
    r.set_minor(minor);
    r.set_access(Some(access.to_owned()));
    r
}

/// The devices runc allows in every container, after the spec's own rules: mknod of any
/// char/block device, /dev/null, zero, full, random, urandom, tty, console, ptmx and pts.
pub fn default_allowed_devices() -> Vec<LinuxDeviceCgroup> {
    use LinuxDeviceType::{B, C};
    vec![
        rule(C, None, None, "m"),
        rule(B, None, None, "m"),
        rule(C, Some(1), Some(3), "rwm"),
        rule(C, Some(1), Some(8), "rwm"),
        rule(C, Some(1), Some(7), "rwm"),
        rule(C, Some(5), Some(0), "rwm"),
        rule(C, Some(1), Some(5), "rwm"),
        rule(C, Some(1), Some(9), "rwm"),
        rule(C, Some(5), Some(1), "rwm"),
        rule(C, Some(136), None, "rwm"),
        rule(C, Some(5), Some(2), "rwm"),
    ]
}

/// "all devices": type a (or none) with no major/minor.
fn is_all(r: &LinuxDeviceCgroup) -> bool {
    matches!(r.typ(), None | Some(LinuxDeviceType::A)) && r.major().is_none() && r.minor().is_none()
}

fn access_of(r: &LinuxDeviceCgroup) -> Result<String, Error> {
    let access = r.access().as_deref().unwrap_or("rwm");
    let access = if access.is_empty() { "rwm" } else { access };
    if access.chars().all(|c| matches!(c, 'r' | 'w' | 'm')) {
        Ok(access.to_owned())
    } else {
        Err(Error::InvalidValue {
            field: "devices.access".to_owned(),
            reason: format!("{access:?} is not a combination of r, w and m"),
        })
    }
}

/// The v1 rule line: "c 1:3 rwm", "b *:* m".
pub(crate) fn v1_line(r: &LinuxDeviceCgroup) -> Result<String, Error> {
    let typ = r.typ().unwrap_or_default();
    if matches!(typ, LinuxDeviceType::U | LinuxDeviceType::P) {
        return Err(Error::InvalidValue {
            field: "devices.type".to_owned(),
            reason: format!(
                "{:?} rules cannot be expressed in the devices cgroup",
                typ.as_str()
            ),
        });
    }
    let n = |v: Option<i64>| v.map_or("*".to_owned(), |v| v.to_string());
    Ok(format!(
        "{} {}:{} {}",
        typ.as_str(),
        n(r.major()),
        n(r.minor()),
        access_of(r)?
    ))
}

/// v1: start from "deny everything", then the spec's rules in order, then the defaults.
pub(crate) fn set_v1(dir: &Path, rules: &[LinuxDeviceCgroup]) -> Result<(), Error> {
    fs::write("devices", dir, "devices.deny", "a")?;
    let defaults = default_allowed_devices();
    for r in rules.iter().chain(defaults.iter()) {
        let file = if r.allow() {
            "devices.allow"
        } else {
            "devices.deny"
        };
        if is_all(r) {
            // "a" alone switches the default policy and clears the list.
            fs::write("devices", dir, file, "a")?;
            continue;
        }
        fs::write("devices", dir, file, &v1_line(r)?)?;
    }
    Ok(())
}

/// Whether the rules only restate the default policy (deny all, then some of the default
/// devices), which every OCI config carries.
fn only_default_rules(rules: &[LinuxDeviceCgroup]) -> bool {
    let defaults = default_allowed_devices();
    rules.iter().all(|r| {
        (!r.allow() && is_all(r))
            || (r.allow()
                && defaults.iter().any(|d| {
                    d.typ() == r.typ() && d.major() == r.major() && d.minor() == r.minor()
                }))
    })
}

/// v2 needs a BPF_PROG_TYPE_CGROUP_DEVICE program. Until that lands, the default policy is
/// accepted (with a warning that it is not enforced) and anything more specific is refused.
pub(crate) fn set_v2(dir: &Path, rules: &[LinuxDeviceCgroup]) -> Result<(), Error> {
    if only_default_rules(rules) {
        tracing::warn!(
            cgroup = %dir.display(),
            "devices: cgroup v2 device rules are not enforced yet (no BPF device program)"
        );
        return Ok(());
    }
    Err(Error::Unsupported {
        field: "devices".to_owned(),
        layout: Layout::V2,
        reason: "device rules beyond the default need a BPF device program, not implemented yet"
            .to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_lines() {
        let lines: Vec<String> = default_allowed_devices()
            .iter()
            .map(|r| v1_line(r).unwrap_or_default())
            .collect();
        assert_eq!(lines[0], "c *:* m");
        assert_eq!(lines[2], "c 1:3 rwm");
        assert_eq!(lines[9], "c 136:* rwm");
        let mut bad = rule(LinuxDeviceType::C, Some(1), Some(3), "rwx");
        assert!(v1_line(&bad).is_err());
        bad.set_access(None);
        assert_eq!(v1_line(&bad).ok().as_deref(), Some("c 1:3 rwm"));
    }

    #[test]
    fn default_policy_is_recognised() {
        let mut deny_all = LinuxDeviceCgroup::default();
        deny_all.set_access(Some("rwm".to_owned()));
        assert!(only_default_rules(&[deny_all.clone()]));
        let null = rule(LinuxDeviceType::C, Some(1), Some(3), "rwm");
        assert!(only_default_rules(&[deny_all.clone(), null]));
        let fuse = rule(LinuxDeviceType::C, Some(10), Some(229), "rwm");
        assert!(!only_default_rules(&[deny_all, fuse]));
    }
}
