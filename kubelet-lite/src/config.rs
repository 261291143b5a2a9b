//! nestlet's configuration (from the command line).

use std::path::PathBuf;

#[derive(Clone, Debug)]
pub struct Config {
    /// State: pods, containers, images, CNI cache, runtime state, sockets.
    pub root: PathBuf,
    /// CRI log files (`<dir>/<ns>_<pod>_<uid>/<ctr>/<n>.log`).
    pub pod_log_dir: PathBuf,
    pub node_name: String,
    pub node_ip: String,
    pub cni_conf_dir: PathBuf,
    pub cni_bin_dirs: Vec<PathBuf>,
    /// The static pause binary copied into the sandbox rootfs.
    pub pause_binary: PathBuf,
    /// Absolute cgroup path under which pod cgroups are made (`<root>/<qos>/pod<uid>`).
    pub cgroup_root: String,
    pub cluster_dns: Vec<String>,
    pub cluster_domain: String,
    /// The resolv.conf pods with dnsPolicy Default (or no cluster DNS) get.
    pub resolv_conf: PathBuf,
    pub insecure_registries: Vec<String>,
    pub shim_binary: PathBuf,
    pub runtime_binary: PathBuf,
    pub pod_manifest_path: Option<PathBuf>,
    pub kubeconfig: Option<PathBuf>,
    pub max_pods: u32,
    /// How many pods are set up at once (see `pod::Context::start_slots`).
    pub parallel_pod_starts: usize,
}

impl Config {
    /// The shared read-only rootfs of every sandbox: only `/pause`.
    pub fn pause_rootfs(&self) -> PathBuf {
        self.root.join("pause-rootfs")
    }

    /// Make the pause rootfs (the binary and the mount points the runtime needs).
    pub fn prepare_pause_rootfs(&self) -> std::io::Result<()> {
        let dir = self.pause_rootfs();
        for d in ["proc", "dev", "sys", "etc"] {
            std::fs::create_dir_all(dir.join(d))?;
        }
        let dst = dir.join("pause");
        let fresh = match (
            std::fs::metadata(&self.pause_binary),
            std::fs::metadata(&dst),
        ) {
            (Ok(a), Ok(b)) => a.len() == b.len() && a.modified().ok() <= b.modified().ok(),
            _ => false,
        };
        if !fresh {
            let tmp = dir.join(".pause.tmp");
            std::fs::copy(&self.pause_binary, &tmp)?;
            std::fs::rename(&tmp, &dst)?;
        }
        Ok(())
    }
}
