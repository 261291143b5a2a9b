//! `nestbox features`: what this runtime supports, in the runtime-spec features schema.

use super::Cli;

#[derive(Debug, clap::Args)]
pub struct Args {}

const MOUNT_OPTIONS: &[&str] = &[
    "async",
    "atime",
    "bind",
    "defaults",
    "dev",
    "diratime",
    "dirsync",
    "exec",
    "lazytime",
    "mand",
    "noatime",
    "nodev",
    "nodiratime",
    "noexec",
    "nolazytime",
    "nomand",
    "norelatime",
    "nostrictatime",
    "nosuid",
    "private",
    "rbind",
    "relatime",
    "remount",
    "ro",
    "rprivate",
    "rshared",
    "rslave",
    "runbindable",
    "rw",
    "shared",
    "slave",
    "strictatime",
    "suid",
    "sync",
    "unbindable",
];

pub fn run(_cli: &Cli, _args: &Args) -> anyhow::Result<i32> {
    let caps: Vec<String> = caps::all().iter().map(|c| c.to_string()).collect();
    let features = serde_json::json!({
        "ociVersionMin": "1.0.0",
        "ociVersionMax": nestbox_runtime::SPEC_VERSION,
        "hooks": ["prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop"],
        "mountOptions": MOUNT_OPTIONS,
        "linux": {
            "namespaces": ["cgroup", "ipc", "mount", "network", "pid", "time", "user", "uts"],
            "capabilities": caps,
            "cgroup": {"v1": true, "v2": true, "systemd": false, "systemdUser": false},
            "seccomp": {
                "enabled": true,
                "actions": nestbox_seccomp::supported_actions(),
                "operators": nestbox_seccomp::supported_operators(),
                "archs": nestbox_seccomp::supported_archs(),
                "knownFlags": nestbox_seccomp::supported_flags(),
                "supportedFlags": nestbox_seccomp::supported_flags(),
            },
            "apparmor": {"enabled": false},
            "selinux": {"enabled": false},
        },
        "annotations": {"org.opencontainers.runtime-spec.features.nestbox.version": env!("CARGO_PKG_VERSION")},
    });
    println!("{}", serde_json::to_string_pretty(&features)?);
    Ok(0)
}
