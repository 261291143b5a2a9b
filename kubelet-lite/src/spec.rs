//! OCI runtime specs for a pod's sandbox (pause) and its containers, built the way
//! containerd's CRI plugin builds them: the sandbox owns new net, ipc and uts namespaces;
//! containers join them by `/proc/<pause pid>/ns/*` and get their own pid and mount ones.

use serde_json::{json, Value};

/// containerd's default capability set for containers.
pub const DEFAULT_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Every capability this kernel knows (privileged containers).
pub const ALL_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

const MASKED: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
];

const READONLY: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Normalize a Kubernetes capability name (`NET_ADMIN`) to the OCI form (`CAP_NET_ADMIN`).
pub fn cap_name(c: &str) -> String {
    let up = c.to_ascii_uppercase();
    if up.starts_with("CAP_") {
        up
    } else {
        format!("CAP_{up}")
    }
}

/// A bind mount of a host path.
#[derive(Clone, Debug)]
pub struct BindMount {
    pub source: String,
    pub destination: String,
    pub readonly: bool,
}

/// Linux resources of a container (already converted from the pod spec).
#[derive(Clone, Debug, Default)]
pub struct Resources {
    pub cpu_shares: Option<u64>,
    pub cpu_quota: Option<i64>,
    pub cpu_period: Option<u64>,
    pub memory_limit: Option<i64>,
}

impl Resources {
    fn to_json(&self) -> Value {
        let mut r = json!({"devices": [{"allow": false, "access": "rwm"}]});
        let mut cpu = serde_json::Map::new();
        if let Some(s) = self.cpu_shares {
            cpu.insert("shares".into(), json!(s));
        }
        if let Some(q) = self.cpu_quota {
            cpu.insert("quota".into(), json!(q));
        }
        if let Some(p) = self.cpu_period {
            cpu.insert("period".into(), json!(p));
        }
        if !cpu.is_empty() {
            r["cpu"] = Value::Object(cpu);
        }
        if let Some(m) = self.memory_limit {
            r["memory"] = json!({"limit": m});
        }
        r
    }
}

/// The sandbox: `/pause` from a shared read-only rootfs.
pub struct SandboxSpec<'a> {
    pub rootfs: &'a str,
    pub hostname: &'a str,
    pub host_network: bool,
    pub host_ipc: bool,
    pub host_pid: bool,
    pub cgroups_path: &'a str,
    pub annotations: Vec<(String, String)>,
    pub oom_score_adj: i32,
}

fn base_mounts() -> Vec<Value> {
    vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
               "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts",
               "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
               "options": ["nosuid", "noexec", "nodev"]}),
    ]
}

fn annotations(list: &[(String, String)]) -> Value {
    Value::Object(list.iter().map(|(k, v)| (k.clone(), json!(v))).collect())
}

pub fn sandbox(s: &SandboxSpec) -> Value {
    let mut ns = vec![json!({"type": "mount"})];
    if !s.host_pid {
        ns.push(json!({"type": "pid"}));
    }
    if !s.host_ipc {
        ns.push(json!({"type": "ipc"}));
    }
    if !s.host_network {
        ns.push(json!({"type": "network"}));
        ns.push(json!({"type": "uts"}));
    }
    let mut mounts = base_mounts();
    mounts.push(
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
                       "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
    );
    let mut spec = json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": 65535, "gid": 65535},
            "args": ["/pause"],
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "cwd": "/",
            "capabilities": {"bounding": [], "effective": [], "permitted": [], "ambient": []},
            "noNewPrivileges": true,
            "oomScoreAdj": s.oom_score_adj,
        },
        "root": {"path": s.rootfs, "readonly": true},
        "mounts": mounts,
        "annotations": annotations(&s.annotations),
        "linux": {
            "cgroupsPath": s.cgroups_path,
            "resources": {"devices": [{"allow": false, "access": "rwm"}], "cpu": {"shares": 2}},
            "namespaces": ns,
            "maskedPaths": MASKED,
            "readonlyPaths": READONLY,
        }
    });
    if !s.host_network {
        spec["hostname"] = json!(s.hostname);
    }
    spec
}

/// An app or init container.
pub struct ContainerSpec<'a> {
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    pub caps: Vec<String>,
    pub privileged: bool,
    pub no_new_privileges: bool,
    pub readonly_rootfs: bool,
    /// `/proc/<pid>/ns` of the sandbox, when the pod has one.
    pub sandbox_ns: &'a str,
    pub host_network: bool,
    pub host_ipc: bool,
    pub host_pid: bool,
    pub binds: Vec<BindMount>,
    pub cgroups_path: String,
    pub resources: Resources,
    pub annotations: Vec<(String, String)>,
    pub oom_score_adj: i32,
}

pub fn container(c: &ContainerSpec) -> Value {
    let mut ns = vec![json!({"type": "mount"})];
    if !c.host_pid {
        ns.push(json!({"type": "pid"}));
    }
    if !c.host_ipc {
        ns.push(json!({"type": "ipc", "path": format!("{}/ipc", c.sandbox_ns)}));
    }
    if !c.host_network {
        ns.push(json!({"type": "network", "path": format!("{}/net", c.sandbox_ns)}));
        ns.push(json!({"type": "uts", "path": format!("{}/uts", c.sandbox_ns)}));
    }
    let mut mounts = base_mounts();
    mounts.push(
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
                       "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
    );
    mounts.push(json!({"destination": "/sys", "type": "sysfs", "source": "sysfs",
                       "options": ["nosuid", "noexec", "nodev", if c.privileged { "rw" } else { "ro" }]}));
    mounts.push(json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
                       "options": ["nosuid", "noexec", "nodev", "relatime", if c.privileged { "rw" } else { "ro" }]}));
    for b in &c.binds {
        let mut opts = vec!["rbind", "rprivate"];
        if b.readonly {
            opts.push("ro");
        }
        mounts.push(json!({"destination": b.destination, "type": "bind", "source": b.source, "options": opts}));
    }
    let caps: Vec<String> = if c.privileged {
        ALL_CAPS.iter().map(|s| s.to_string()).collect()
    } else {
        c.caps.clone()
    };
    let mut process = json!({
        "terminal": false,
        "user": {"uid": c.uid, "gid": c.gid},
        "args": c.args,
        "env": c.env,
        "cwd": if c.cwd.is_empty() { "/" } else { c.cwd.as_str() },
        "capabilities": {"bounding": caps, "effective": caps, "permitted": caps, "ambient": []},
        "noNewPrivileges": c.no_new_privileges && !c.privileged,
        "oomScoreAdj": c.oom_score_adj,
    });
    if !c.additional_gids.is_empty() {
        process["user"]["additionalGids"] = json!(c.additional_gids);
    }
    let mut resources = c.resources.to_json();
    let mut linux = json!({
        "cgroupsPath": c.cgroups_path,
        "namespaces": ns,
    });
    if c.privileged {
        resources["devices"] = json!([{"allow": true, "access": "rwm"}]);
    } else {
        linux["maskedPaths"] = json!(MASKED);
        linux["readonlyPaths"] = json!(READONLY);
    }
    linux["resources"] = resources;
    json!({
        "ociVersion": "1.0.2",
        "process": process,
        "root": {"path": "rootfs", "readonly": c.readonly_rootfs},
        "mounts": mounts,
        "annotations": annotations(&c.annotations),
        "linux": linux,
    })
}

/// Check a spec against the runtime-spec schema (oci-spec's types) before it is written.
pub fn validate(spec: &Value) -> Result<(), String> {
    serde_json::from_value::<oci_spec::runtime::Spec>(spec.clone())
        .map(|_| ())
        .map_err(|e| format!("invalid runtime spec: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containers_join_the_sandbox_namespaces() {
        let s = container(&ContainerSpec {
            args: vec!["sh".into()],
            env: vec![],
            cwd: String::new(),
            uid: 0,
            gid: 0,
            additional_gids: vec![],
            caps: DEFAULT_CAPS.iter().map(|s| s.to_string()).collect(),
            privileged: false,
            no_new_privileges: false,
            readonly_rootfs: false,
            sandbox_ns: "/proc/42/ns",
            host_network: false,
            host_ipc: false,
            host_pid: false,
            binds: vec![],
            cgroups_path: "/nestlet/besteffort/podx/c".into(),
            resources: Resources::default(),
            annotations: vec![],
            oom_score_adj: 1000,
        });
        validate(&s).unwrap();
        let ns = s["linux"]["namespaces"].as_array().unwrap();
        assert!(ns.contains(&json!({"type": "network", "path": "/proc/42/ns/net"})));
        assert!(ns.contains(&json!({"type": "pid"})));
        let sb = sandbox(&SandboxSpec {
            rootfs: "/var/lib/nestlet/pause",
            hostname: "p",
            host_network: false,
            host_ipc: false,
            host_pid: false,
            cgroups_path: "/nestlet/besteffort/podx/s",
            annotations: vec![],
            oom_score_adj: -998,
        });
        validate(&sb).unwrap();
        assert_eq!(sb["hostname"], "p");
    }
}
