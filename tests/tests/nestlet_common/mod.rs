//! Test-only helpers for nestlet: the busybox test image as an OCI layout (made with umoci),
//! a real `docker-registry` on 127.0.0.1 inside a test netns (filled with skopeo), a CNI
//! bin dir and conflist, and [`Nestlet`], a nestlet process in a test "node" netns that
//! leaves nothing behind on drop: it stops nestlet, kills what is left of its pods (shims,
//! and every process in its cgroup root), unmounts and removes its state.
#![allow(dead_code)]

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use nestbox_tests::{
    bin, busybox_rootfs, cni_bin, require_cmd, require_root, sh, sh_ok, unique, wait_until, NetNs,
    TempDir,
};
use serde_json::{json, Value};

/// Where the reference CNI plugins (portmap, …) are.
pub const REFERENCE_CNI: &str = "/usr/lib/cni";
/// The test image's name inside a layout and in registries.
pub const IMAGE_TAG: &str = "1.36";

/// The busybox test image as an OCI image layout (one layer: the busybox-static rootfs;
/// `Cmd ["sh"]`), built once per machine with umoci. Treat as read-only.
pub fn busybox_layout() -> PathBuf {
    static L: OnceLock<PathBuf> = OnceLock::new();
    L.get_or_init(build_layout).clone()
}

fn build_layout() -> PathBuf {
    require_root();
    require_cmd("umoci");
    let rootfs = busybox_rootfs();
    let key = rootfs.file_name().unwrap().to_string_lossy().into_owned();
    let dest = std::env::temp_dir().join(format!("nestlet-oci-{key}"));
    if dest.join("index.json").is_file() {
        return dest;
    }
    let work = std::env::temp_dir().join(format!("nestlet-oci-build-{}", unique("")));
    let layout = work.join("layout");
    let bundle = work.join("bundle");
    let l = layout.display();
    sh_ok(&format!(
        "umoci init --layout {l} && umoci new --image {l}:{IMAGE_TAG} && \
         umoci unpack --image {l}:{IMAGE_TAG} {b} && cp -a {r}/. {b}/rootfs/ && \
         umoci repack --image {l}:{IMAGE_TAG} {b} && \
         umoci config --image {l}:{IMAGE_TAG} --config.cmd sh \
           --config.env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin && \
         umoci gc --layout {l}",
        b = bundle.display(),
        r = rootfs.display()
    ));
    match fs::rename(&layout, &dest) {
        Ok(()) => {}
        Err(_) if dest.join("index.json").is_file() => {}
        Err(e) => panic!("install layout at {}: {e}", dest.display()),
    }
    let _ = fs::remove_dir_all(&work);
    dest
}

/// A `docker-registry` serving on 127.0.0.1:5000 inside `ns`; killed on drop.
pub struct Registry {
    child: Child,
    pub dir: TempDir,
}

impl Registry {
    pub fn start(ns: &NetNs) -> Registry {
        let exe = require_cmd("docker-registry");
        let dir = TempDir::new("registry");
        let conf = dir.path().join("config.yml");
        fs::write(
            &conf,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:5000\n",
                dir.path().join("data").display()
            ),
        )
        .expect("registry config");
        let log = fs::File::create(dir.path().join("registry.log")).expect("log");
        let child = Command::new("ip")
            .args(["netns", "exec", ns.name()])
            .arg(exe)
            .arg("serve")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup"))
            .stderr(log)
            .spawn()
            .expect("spawn docker-registry");
        let r = Registry { child, dir };
        let ok = wait_until(20, || {
            ns.exec(&["curl", "-sf", "-m", "2", "http://127.0.0.1:5000/v2/"])
                .status
                .success()
        });
        assert!(ok, "docker-registry did not come up: {}", r.log());
        r
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// Push the busybox layout as `127.0.0.1:5000/<repo>:<tag>` (skopeo, from inside `ns`).
    pub fn push_busybox(&self, ns: &NetNs, repo: &str, tag: &str) -> String {
        require_cmd("skopeo");
        let layout = busybox_layout();
        let dst = format!("127.0.0.1:5000/{repo}:{tag}");
        let out = ns.exec(&[
            "skopeo",
            "--insecure-policy",
            "copy",
            "--dest-tls-verify=false",
            &format!("oci:{}:{IMAGE_TAG}", layout.display()),
            &format!("docker://{dst}"),
        ]);
        assert!(
            out.status.success(),
            "skopeo copy: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        dst
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A CNI bin dir: our plugins under their names, and the reference ones beside.
pub fn cni_bin_dir() -> TempDir {
    let d = TempDir::new("nlcni");
    for name in ["nestbox-bridge", "nestbox-host-local", "nestbox-loopback"] {
        symlink(cni_bin(), d.path().join(name)).expect("symlink plugin");
    }
    d
}

/// A conflist: nestbox-bridge (gateway, masquerade off) + host-local on `subnet`, chained
/// with the reference portmap (hostPort).
pub fn conflist(subnet: &str, bridge: &str, data_dir: &Path) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": "nestlet-test",
        "plugins": [
            {
                "type": "nestbox-bridge",
                "bridge": bridge,
                "isGateway": true,
                "isDefaultGateway": true,
                "ipMasq": false,
                "hairpinMode": true,
                "ipam": {
                    "type": "nestbox-host-local",
                    "ranges": [[{"subnet": subnet}]],
                    "dataDir": data_dir.display().to_string(),
                }
            },
            {"type": "portmap", "capabilities": {"portMappings": true}}
        ]
    })
}

/// Options of a [`Nestlet`].
pub struct Opts {
    pub kubeconfig: Option<PathBuf>,
    pub node_name: String,
    pub node_ip: String,
    pub manifests: bool,
    pub extra: Vec<String>,
}

/// nestlet running inside a node netns, with its own root, log dir, manifest dir, CNI
/// dirs and cgroup root (all unique).
pub struct Nestlet {
    child: Option<Child>,
    pub dir: TempDir,
    pub root: PathBuf,
    pub logs: PathBuf,
    pub manifests: PathBuf,
    pub conf_dir: PathBuf,
    pub cni_bin: TempDir,
    pub ipam_dir: PathBuf,
    pub cgroup_root: String,
    pub node: String,
    ns_path: PathBuf,
    args: Vec<String>,
}

pub fn require_nestlet_peers() {
    require_root();
    for c in ["ip", "nsenter", "umoci", "curl"] {
        require_cmd(c);
    }
    for b in ["nestlet", "nestbox", "nestbox-pause"] {
        bin(b);
    }
    nestbox_tests::shim_bin();
}

impl Nestlet {
    /// Prepare (not start) a nestlet for `ns`.
    pub fn new(ns: &NetNs, opts: Opts) -> Nestlet {
        require_nestlet_peers();
        let dir = TempDir::new("nestlet");
        let root = dir.path().join("root");
        let logs = dir.path().join("pods-logs");
        let manifests = dir.path().join("manifests");
        let conf_dir = dir.path().join("net.d");
        let ipam_dir = dir.path().join("ipam");
        for d in [&root, &logs, &manifests, &conf_dir, &ipam_dir] {
            fs::create_dir_all(d).expect("mkdir");
        }
        let cni = cni_bin_dir();
        let cgroup_root = format!("/nestlet-test-{}", unique(""));
        let mut args: Vec<String> = vec![
            format!("--node-name={}", opts.node_name),
            format!("--node-ip={}", opts.node_ip),
            format!("--root={}", root.display()),
            format!("--pod-log-dir={}", logs.display()),
            format!("--cni-conf-dir={}", conf_dir.display()),
            format!("--cni-bin-dir={}:{REFERENCE_CNI}", cni.path().display()),
            format!("--cgroup-root={cgroup_root}"),
            // The shim under test: the installed (static) build when scripts/test.sh runs.
            format!("--shim-binary={}", nestbox_tests::shim_bin().display()),
            format!("--runtime-binary={}", bin("nestbox").display()),
            format!("--pause-binary={}", bin("nestbox-pause").display()),
        ];
        if opts.manifests {
            args.push(format!("--pod-manifest-path={}", manifests.display()));
        }
        if let Some(k) = &opts.kubeconfig {
            args.push(format!("--kubeconfig={}", k.display()));
        }
        args.extend(opts.extra);
        Nestlet {
            child: None,
            dir,
            root,
            logs,
            manifests,
            conf_dir,
            cni_bin: cni,
            ipam_dir,
            cgroup_root,
            node: opts.node_name,
            ns_path: ns.path(),
            args,
        }
    }

    /// Write the CNI config (the operator's job, never nestlet's).
    pub fn write_cni_config(&self, subnet: &str, bridge: &str) {
        fs::write(
            self.conf_dir.join("10-nestlet-test.conflist"),
            serde_json::to_string_pretty(&conflist(subnet, bridge, &self.ipam_dir)).unwrap(),
        )
        .expect("write conflist");
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("nestlet.log")
    }

    pub fn log(&self) -> String {
        let s = fs::read_to_string(self.log_path()).unwrap_or_default();
        let v: Vec<&str> = s.lines().collect();
        v[v.len().saturating_sub(60)..].join("\n")
    }

    pub fn start(&mut self) {
        assert!(self.child.is_none(), "already running");
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("log");
        let child = Command::new("nsenter")
            .arg(format!("--net={}", self.ns_path.display()))
            .arg("--")
            .arg(bin("nestlet"))
            .args(&self.args)
            .env("NESTLET_LOG", "info,nestlet=debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup"))
            .stderr(log)
            .spawn()
            .expect("spawn nestlet");
        self.child = Some(child);
    }

    /// SIGTERM and wait (pods keep running).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            if !wait_until(10, || matches!(c.try_wait(), Ok(Some(_)))) {
                let _ = c.kill();
            }
            let _ = c.wait();
        }
    }

    /// nestlet's pid (nsenter execs it, so it is the child's).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// `nestlet pods` rows: (namespace, name, ready, status, restarts, ip).
    pub fn pods(&self) -> Vec<Vec<String>> {
        let out = Command::new(bin("nestlet"))
            .args(["pods", "--root"])
            .arg(&self.root)
            .output()
            .expect("nestlet pods");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .skip(1)
            .map(|l| l.split_whitespace().map(str::to_owned).collect())
            .collect()
    }

    /// The pod's status.json (static pods), by pod name.
    pub fn status(&self, name: &str) -> Option<Value> {
        for e in fs::read_dir(self.root.join("pods")).ok()?.flatten() {
            let st: Value = fs::read(e.path().join("state.json"))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())?;
            if st["name"] == name {
                return fs::read(e.path().join("status.json"))
                    .ok()
                    .and_then(|b| serde_json::from_slice(&b).ok());
            }
        }
        None
    }

    /// Every process in the node's cgroups (all hierarchies).
    pub fn cgroup_pids(&self) -> Vec<i32> {
        let mut pids = Vec::new();
        for m in cgroup_mounts() {
            let d = m.join(self.cgroup_root.trim_start_matches('/'));
            for_each_dir(&d, &mut |p| {
                if let Ok(s) = fs::read_to_string(p.join("cgroup.procs")) {
                    pids.extend(s.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
                }
            });
        }
        pids.sort();
        pids.dedup();
        pids
    }

    /// Shim processes started for this nestlet (by their `-address` under our root).
    pub fn shim_pids(&self) -> Vec<i32> {
        let addr = self.root.join("nestlet.sock").display().to_string();
        let mut out = Vec::new();
        for e in fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let Ok(cmd) = fs::read(e.path().join("cmdline")) else {
                continue;
            };
            let args: Vec<String> = cmd
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            if args
                .first()
                .is_some_and(|a| a.contains("containerd-shim-nestbox-v2"))
                && args.windows(2).any(|w| w[0] == "-address" && w[1] == addr)
            {
                out.push(pid);
            }
        }
        out
    }

    /// Mount points under the nestlet root.
    pub fn mounts(&self) -> Vec<String> {
        let root = self.root.display().to_string();
        fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_whitespace().nth(4).map(str::to_owned))
            .filter(|m| m.starts_with(&root))
            .collect()
    }
}

pub fn cgroup_mounts() -> Vec<PathBuf> {
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let t = post.split_whitespace().next()?;
            (t == "cgroup" || t == "cgroup2")
                .then(|| PathBuf::from(pre.split_whitespace().nth(4).unwrap_or("/")))
        })
        .collect()
}

/// Visit `d` and its subdirectories, deepest first.
fn for_each_dir(d: &Path, f: &mut dyn FnMut(&Path)) {
    if !d.is_dir() {
        return;
    }
    if let Ok(rd) = fs::read_dir(d) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                for_each_dir(&e.path(), f);
            }
        }
    }
    f(d);
}

impl Drop for Nestlet {
    fn drop(&mut self) {
        self.stop();
        // What a failed test may have left: shims, container processes, mounts, cgroups.
        for pid in self.shim_pids() {
            // SAFETY: kill(2) of a shim this test's nestlet started (matched by its address).
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let pids = self.cgroup_pids();
            if pids.is_empty() || Instant::now() > deadline {
                break;
            }
            for p in pids {
                // SAFETY: kill(2) of a process inside this test's own cgroup root.
                unsafe { libc::kill(p, libc::SIGKILL) };
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut mounts = self.mounts();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounts {
            let _ = nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH);
        }
        for m in cgroup_mounts() {
            let d = m.join(self.cgroup_root.trim_start_matches('/'));
            for_each_dir(&d, &mut |p| {
                let _ = fs::remove_dir(p);
            });
        }
        // Shim sockets of pods whose shim was killed.
        for e in fs::read_dir(self.root.join("pods"))
            .into_iter()
            .flatten()
            .flatten()
        {
            if let Some(addr) = fs::read(e.path().join("state.json"))
                .ok()
                .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                .and_then(|v| v["sandbox"]["shim_address"].as_str().map(str::to_owned))
            {
                let _ = fs::remove_file(addr.trim_start_matches("unix://"));
            }
        }
        let _ = sh(&format!("rm -rf {}", self.root.display()));
    }
}

/// A node netns with an address, for nestlet (standalone: no switch needed).
pub fn node_ns(prefix: &str, ip: &str) -> NetNs {
    let ns = NetNs::new(prefix);
    ns.exec_ok(&["ip", "addr", "add", &format!("{ip}/32"), "dev", "lo"]);
    ns
}
