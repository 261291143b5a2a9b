//! The container user's extras that runc derives from the container's /etc files: HOME and
//! the supplementary groups the user is a member of.

use std::path::Path;

/// From the container's /etc/passwd and /etc/group (read after pivot_root).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ExecUser {
    pub home: Option<String>,
    pub groups: Vec<u32>,
}

pub fn lookup(uid: u32, etc: &Path) -> ExecUser {
    let passwd = std::fs::read_to_string(etc.join("passwd")).unwrap_or_default();
    let group = std::fs::read_to_string(etc.join("group")).unwrap_or_default();
    lookup_in(uid, &passwd, &group)
}

pub fn lookup_in(uid: u32, passwd: &str, group: &str) -> ExecUser {
    let entry = passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.len() >= 6 && f[2].parse::<u32>().ok() == Some(uid));
    let Some(entry) = entry else {
        return ExecUser::default();
    };
    let name = entry[0];
    let groups = group
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .filter(|f| f.len() >= 4 && f[3].split(',').any(|m| m.trim() == name))
        .filter_map(|f| f[2].parse().ok())
        .collect();
    ExecUser {
        home: Some(entry[5].to_string()).filter(|h| !h.is_empty()),
        groups,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_home_and_member_groups() {
        let passwd = "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/home/user:/bin/sh\n";
        let group = "root:x:0:\nuser:x:1000:\nextra:x:2000:user,bob\n";
        let u = lookup_in(1000, passwd, group);
        assert_eq!(u.home.as_deref(), Some("/home/user"));
        assert_eq!(u.groups, vec![2000]);
        assert_eq!(lookup_in(5, passwd, group), ExecUser::default());
    }
}
