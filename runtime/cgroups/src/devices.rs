//! Device access rules: the v1 devices.allow/devices.deny lists, and the default allowed
//! devices appended to every rule list so /dev/null, /dev/tty, ptys… keep working. The spec's
//! rules keep their order ("The runtime MUST apply entries in the listed order"): a new v1
//! cgroup's devices.list reads like the config, then the defaults (as with crun), and the v2
//! program checks the exceptions in that order.

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

/// The devices allowed in every container, after the spec's own rules: mknod of any
/// char/block device, /dev/null, zero, full, random, urandom, tty, console, ptmx and pts (runc's
/// set, in crun's order).
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

/// "all devices": type a (or none). The kernel treats any "a" rule as the whole policy.
fn is_all(r: &LinuxDeviceCgroup) -> bool {
    matches!(r.typ(), None | Some(LinuxDeviceType::A))
}

/// Access bits as the kernel's BPF device context has them.
pub(crate) const ACC_MKNOD: u8 = 1;
pub(crate) const ACC_READ: u8 = 2;
pub(crate) const ACC_WRITE: u8 = 4;
const ACC_ALL: u8 = ACC_MKNOD | ACC_READ | ACC_WRITE;

fn access_bits(r: &LinuxDeviceCgroup) -> Result<u8, Error> {
    let access = r.access().as_deref().unwrap_or("rwm");
    let access = if access.is_empty() { "rwm" } else { access };
    let mut bits = 0;
    for c in access.chars() {
        bits |= match c {
            'r' => ACC_READ,
            'w' => ACC_WRITE,
            'm' => ACC_MKNOD,
            _ => {
                return Err(Error::InvalidValue {
                    field: "devices.access".to_owned(),
                    reason: format!("{access:?} is not a combination of r, w and m"),
                })
            }
        };
    }
    Ok(bits)
}

fn access_string(bits: u8) -> String {
    let mut s = String::new();
    if bits & ACC_READ != 0 {
        s.push('r');
    }
    if bits & ACC_WRITE != 0 {
        s.push('w');
    }
    if bits & ACC_MKNOD != 0 {
        s.push('m');
    }
    s
}

/// Device type, major, minor (None = any) of one exception.
pub(crate) type DeviceKey = (char, Option<i64>, Option<i64>);

/// The policy a rule list produces, computed the way the v1 kernel applies rules one by one:
/// a default (allow or deny everything) plus exceptions with the opposite effect, in the order
/// the kernel keeps them (a new exception goes last, a repeated one merges in place).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DevicePolicy {
    pub default_allow: bool,
    pub exceptions: Vec<(DeviceKey, u8)>,
}

impl DevicePolicy {
    fn deny_all() -> Self {
        DevicePolicy {
            default_allow: false,
            exceptions: Vec::new(),
        }
    }

    /// The access bits of one exception (0: none).
    pub(crate) fn bits(&self, key: &DeviceKey) -> u8 {
        self.exceptions
            .iter()
            .find(|(k, _)| k == key)
            .map_or(0, |(_, b)| *b)
    }

    fn add(&mut self, key: DeviceKey, bits: u8) {
        match self.exceptions.iter_mut().find(|(k, _)| *k == key) {
            Some((_, cur)) => *cur |= bits,
            None => self.exceptions.push((key, bits)),
        }
    }

    fn apply(&mut self, r: &LinuxDeviceCgroup) -> Result<(), Error> {
        if is_all(r) {
            self.default_allow = r.allow();
            self.exceptions.clear();
            return Ok(());
        }
        let typ = match r.typ() {
            Some(LinuxDeviceType::B) => 'b',
            Some(LinuxDeviceType::C) | Some(LinuxDeviceType::U) => 'c',
            other => {
                return Err(Error::InvalidValue {
                    field: "devices.type".to_owned(),
                    reason: format!(
                        "{:?} rules cannot be expressed in the devices cgroup",
                        other.map(|t| t.as_str().to_owned())
                    ),
                })
            }
        };
        let key = (
            typ,
            r.major().filter(|v| *v >= 0),
            r.minor().filter(|v| *v >= 0),
        );
        let bits = access_bits(r)?;
        if r.allow() == self.default_allow {
            // Same effect as the default: take those bits out of the exception.
            if let Some((_, cur)) = self.exceptions.iter_mut().find(|(k, _)| *k == key) {
                *cur &= !bits;
            }
            self.exceptions.retain(|(_, b)| *b != 0);
        } else {
            self.add(key, bits);
        }
        Ok(())
    }

    /// The container's policy: deny everything, the spec's rules in order, then runc's
    /// default devices.
    pub(crate) fn from_spec(rules: &[LinuxDeviceCgroup]) -> Result<Self, Error> {
        let mut p = DevicePolicy::deny_all();
        for r in rules.iter().chain(default_allowed_devices().iter()) {
            p.apply(r)?;
        }
        Ok(p)
    }

    /// Parse v1 devices.list: "a *:* rwm" means allow-all (its deny exceptions are not
    /// shown); otherwise the lines are the allowed exceptions.
    pub(crate) fn from_v1_list(text: &str) -> Self {
        let mut p = DevicePolicy::deny_all();
        for line in text.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            let [typ, dev, access] = f.as_slice() else {
                continue;
            };
            if *typ == "a" {
                p.default_allow = true;
                p.exceptions.clear();
                return p;
            }
            let Some((maj, min)) = dev.split_once(':') else {
                continue;
            };
            let n = |s: &str| if s == "*" { None } else { s.parse().ok() };
            let bits = access
                .chars()
                .map(|c| match c {
                    'r' => ACC_READ,
                    'w' => ACC_WRITE,
                    'm' => ACC_MKNOD,
                    _ => 0,
                })
                .fold(0, |a, b| a | b);
            let typ = typ.chars().next().unwrap_or('c');
            p.add((typ, n(maj), n(min)), bits);
        }
        p
    }
}

fn v1_key_line(key: &DeviceKey, bits: u8) -> String {
    let n = |v: Option<i64>| v.map_or("*".to_owned(), |v| v.to_string());
    format!(
        "{} {}:{} {}",
        key.0,
        n(key.1),
        n(key.2),
        access_string(bits)
    )
}

/// The v1 rule line: "c 1:3 rwm", "b *:* m".
#[cfg(test)]
pub(crate) fn v1_line(r: &LinuxDeviceCgroup) -> Result<String, Error> {
    let typ = r.typ().unwrap_or_default();
    if matches!(typ, LinuxDeviceType::P) {
        return Err(Error::InvalidValue {
            field: "devices.type".to_owned(),
            reason: "\"p\" rules cannot be expressed in the devices cgroup".to_owned(),
        });
    }
    let typ = if typ == LinuxDeviceType::U {
        "c"
    } else {
        typ.as_str()
    };
    let n = |v: Option<i64>| {
        v.filter(|v| *v >= 0)
            .map_or("*".to_owned(), |v| v.to_string())
    };
    Ok(format!(
        "{} {}:{} {}",
        typ,
        n(r.major()),
        n(r.minor()),
        access_string(access_bits(r)?)
    ))
}

/// v1: make devices.list say what the spec asks (the spec's rules in order, then the
/// defaults). A cgroup without processes or children (a container being created) gets the
/// policy written from scratch, so devices.list lists it in order. Otherwise (an update of a
/// running container, already in allow-list mode) new grants are written before old ones are
/// revoked, so devices kept in both policies never blink off.
pub(crate) fn set_v1(dir: &Path, rules: &[LinuxDeviceCgroup]) -> Result<(), Error> {
    let target = DevicePolicy::from_spec(rules)?;
    let current = DevicePolicy::from_v1_list(&fs::read(dir, "devices.list")?);
    if current == target {
        return Ok(());
    }
    let unused = fs::read(dir, "cgroup.procs")?.trim().is_empty() && !has_children(dir);
    if unused && !target.default_allow {
        fs::write("devices", dir, "devices.deny", "a")?;
        for (key, bits) in &target.exceptions {
            fs::write("devices", dir, "devices.allow", &v1_key_line(key, *bits))?;
        }
        return Ok(());
    }
    if target.default_allow {
        fs::write("devices", dir, "devices.allow", "a")?;
        for (key, bits) in &target.exceptions {
            fs::write("devices", dir, "devices.deny", &v1_key_line(key, *bits))?;
        }
        return Ok(());
    }
    if current.default_allow {
        fs::write("devices", dir, "devices.deny", "a")?;
    }
    let base = if current.default_allow {
        DevicePolicy::deny_all()
    } else {
        current
    };
    for (key, bits) in &target.exceptions {
        let have = base.bits(key);
        if bits & !have != 0 {
            fs::write("devices", dir, "devices.allow", &v1_key_line(key, *bits))?;
        }
    }
    for (key, have) in &base.exceptions {
        let keep = target.bits(key);
        let revoke = have & !keep & ACC_ALL;
        if revoke != 0 {
            fs::write("devices", dir, "devices.deny", &v1_key_line(key, revoke))?;
        }
    }
    Ok(())
}

/// Whether a cgroup directory has sub-cgroups (v1 refuses to reset the rules of a parent).
fn has_children(dir: &Path) -> bool {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .any(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        })
        .unwrap_or(false)
}

/// v2: a BPF_PROG_TYPE_CGROUP_DEVICE program built from the same policy, attached to the
/// cgroup (replacing the one attached before, so `update` works).
pub(crate) fn set_v2(dir: &Path, rules: &[LinuxDeviceCgroup]) -> Result<(), Error> {
    let policy = DevicePolicy::from_spec(rules)?;
    crate::bpf::attach_device_filter(dir, &policy).map_err(|e| match e {
        Error::Unsupported { reason, .. } => Error::Unsupported {
            field: "devices".to_owned(),
            layout: Layout::V2,
            reason,
        },
        other => other,
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
    fn policy_follows_v1_semantics() -> Result<(), Error> {
        let mut deny_all = LinuxDeviceCgroup::default();
        deny_all.set_access(Some("rwm".to_owned()));
        let fuse = rule(LinuxDeviceType::C, Some(10), Some(229), "rwm");
        let mut no_fuse_write = rule(LinuxDeviceType::C, Some(10), Some(229), "w");
        no_fuse_write.set_allow(false);
        let p = DevicePolicy::from_spec(&[deny_all.clone(), fuse, no_fuse_write])?;
        assert!(!p.default_allow);
        assert_eq!(p.bits(&('c', Some(10), Some(229))), ACC_READ | ACC_MKNOD);
        assert_eq!(p.bits(&('c', Some(136), None)), ACC_ALL);
        // The spec's rules first, in their order, then the defaults.
        assert_eq!(p.exceptions[0].0, ('c', Some(10), Some(229)));
        assert_eq!(p.exceptions[1].0, ('c', None, None));
        // An allow-all rule after the deny resets the list; the defaults add nothing then.
        let mut allow_all = deny_all.clone();
        allow_all.set_allow(true);
        let p = DevicePolicy::from_spec(&[deny_all, allow_all])?;
        assert!(p.default_allow);
        assert!(p.exceptions.is_empty());
        Ok(())
    }

    #[test]
    fn devices_list_round_trip() -> Result<(), Error> {
        let p = DevicePolicy::from_spec(&[])?;
        let text: String = p
            .exceptions
            .iter()
            .map(|(k, b)| v1_key_line(k, *b) + "\n")
            .collect();
        assert_eq!(DevicePolicy::from_v1_list(&text), p);
        assert!(DevicePolicy::from_v1_list("a *:* rwm\n").default_allow);
        Ok(())
    }
}
