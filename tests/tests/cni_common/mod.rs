//! Test-only helpers for the CNI tests: plugin dirs for ours and the reference (or
//! installed by scripts/install.sh), running a plugin inside a test node netns with a CNI
//! environment, and result normalisation.
#![allow(dead_code)]

use std::io::Write;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use nestbox_tests::{bin, cni_bin, require_cmd, require_root, workspace_root, NetNs, TempDir};
use serde_json::{json, Value};

pub const REFERENCE_DIR: &str = "/usr/lib/cni";

/// A CNI_PATH dir whose `bridge`, `host-local`, `loopback` are the implementations asked for.
pub struct PluginDir {
    pub dir: TempDir,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Impl {
    Ours,
    Reference,
}

impl Impl {
    pub fn exe(self, plugin: &str) -> PathBuf {
        match self {
            Impl::Ours => cni_bin(),
            Impl::Reference => {
                let p = Path::new(REFERENCE_DIR).join(plugin);
                assert!(
                    p.is_file(),
                    "reference plugin {} missing: apt-get install containernetworking-plugins",
                    p.display()
                );
                p
            }
        }
    }
}

impl PluginDir {
    /// `bridge` from `bridge_impl`, `host-local` from `ipam_impl`, `loopback` from `bridge_impl`.
    pub fn new(bridge_impl: Impl, ipam_impl: Impl) -> PluginDir {
        require_root();
        let dir = TempDir::new("cnibin");
        for (name, imp) in [
            ("bridge", bridge_impl),
            ("loopback", bridge_impl),
            ("host-local", ipam_impl),
        ] {
            symlink(imp.exe(name), dir.path().join(name)).expect("symlink plugin");
        }
        // Our own names too (for configs that say nestbox-*).
        for name in ["nestbox-bridge", "nestbox-host-local", "nestbox-loopback"] {
            symlink(cni_bin(), dir.path().join(name)).expect("symlink plugin");
        }
        PluginDir { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// Run scripts/install.sh into `dir` with the built nestbox-cni and nestbox-overlayd.
pub fn install(dir: &Path, drop_in: bool) {
    let mut c = Command::new(workspace_root().join("scripts/install.sh"));
    c.arg("--cni-bin-dir")
        .arg(dir)
        .env("NESTBOX_CNI_BIN", cni_bin())
        .env("NESTBOX_OVERLAYD_BIN", bin("nestbox-overlayd"));
    if drop_in {
        c.arg("--drop-in");
    }
    let out = c.output().expect("run install.sh");
    assert!(
        out.status.success(),
        "install.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// What a plugin run returned.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Outcome {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "plugin stdout is not JSON ({e}): {:?} stderr {:?}",
                self.stdout, self.stderr
            )
        })
    }
    pub fn ok(&self) -> Value {
        assert_eq!(
            self.code, 0,
            "plugin failed: {} {}",
            self.stdout, self.stderr
        );
        if self.stdout.trim().is_empty() {
            Value::Null
        } else {
            self.json()
        }
    }
    /// The error JSON's code (panics when the run succeeded or the output is not an error).
    pub fn err_code(&self) -> u64 {
        assert_ne!(self.code, 0, "expected a failure, got {}", self.stdout);
        self.json()["code"]
            .as_u64()
            .unwrap_or_else(|| panic!("no code in {}", self.stdout))
    }
}

/// A CNI invocation.
#[derive(Debug, Clone, Default)]
pub struct Call {
    pub command: String,
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
    pub args: String,
    pub path: String,
}

impl Call {
    pub fn new(command: &str, container_id: &str, netns: &str, ifname: &str, path: &Path) -> Call {
        Call {
            command: command.into(),
            container_id: container_id.into(),
            netns: netns.into(),
            ifname: ifname.into(),
            args: String::new(),
            path: path.display().to_string(),
        }
    }

    /// The command line (inside `node` when given) with the CNI environment set.
    pub fn command(&self, node: Option<&NetNs>, exe: &Path) -> Command {
        let mut c = match node {
            Some(n) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", n.name()]).arg(exe);
                c
            }
            None => Command::new(exe),
        };
        for k in [
            "CNI_COMMAND",
            "CNI_CONTAINERID",
            "CNI_NETNS",
            "CNI_IFNAME",
            "CNI_ARGS",
            "CNI_PATH",
        ] {
            c.env_remove(k);
        }
        for (k, v) in [
            ("CNI_COMMAND", &self.command),
            ("CNI_CONTAINERID", &self.container_id),
            ("CNI_NETNS", &self.netns),
            ("CNI_IFNAME", &self.ifname),
            ("CNI_ARGS", &self.args),
            ("CNI_PATH", &self.path),
        ] {
            if !v.is_empty() {
                c.env(k, v);
            }
        }
        c.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    }

    pub fn spawn(&self, node: Option<&NetNs>, exe: &Path, conf: &Value) -> Child {
        let mut child = self.command(node, exe).spawn().expect("spawn plugin");
        let data = conf.to_string();
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(data.as_bytes())
            .expect("write config");
        child
    }

    pub fn run_raw(&self, node: Option<&NetNs>, exe: &Path, stdin: &[u8]) -> Outcome {
        let mut child = self.command(node, exe).spawn().expect("spawn plugin");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(stdin)
            .expect("write config");
        let out = child.wait_with_output().expect("wait plugin");
        Outcome {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    pub fn run(&self, node: Option<&NetNs>, exe: &Path, conf: &Value) -> Outcome {
        self.run_raw(node, exe, conf.to_string().as_bytes())
    }
}

/// A bridge network config (type `bridge`, IPAM `host-local`).
pub fn bridge_conf(
    version: &str,
    name: &str,
    bridge: &str,
    subnet: &str,
    data_dir: &Path,
) -> Value {
    json!({
        "cniVersion": version,
        "name": name,
        "type": "bridge",
        "bridge": bridge,
        "isGateway": true,
        "isDefaultGateway": true,
        "ipMasq": true,
        "ipam": {
            "type": "host-local",
            "dataDir": data_dir.display().to_string(),
            "ranges": [[{"subnet": subnet}]],
            // Not 0.0.0.0/0: with isDefaultGateway the reference (1.1.1) then fails with
            // "file exists" adding the default route twice (ours tolerates it). With a
            // `gw`: the reference's CHECK cannot match a gateway-less route it installed
            // via the gateway (ours can).
            "routes": [{"dst": "192.168.250.0/24", "gw": gateway_of(subnet)}]
        }
    })
}

/// network + 1 of an IPv4 CIDR.
pub fn gateway_of(subnet: &str) -> String {
    let net: std::net::Ipv4Addr = subnet
        .split('/')
        .next()
        .and_then(|s| s.parse().ok())
        .expect("v4 subnet");
    std::net::Ipv4Addr::from(u32::from(net) + 1).to_string()
}

pub fn with_prev(conf: &Value, prev: &Value) -> Value {
    let mut c = conf.clone();
    c["prevResult"] = prev.clone();
    c
}

/// A result with MACs and veth names blanked, keys order-independent (serde_json maps).
pub fn normalize(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(ifs) = v.get_mut("interfaces").and_then(|i| i.as_array_mut()) {
        for i in ifs {
            if let Some(m) = i.get_mut("sandbox") {
                *m = json!("<netns>");
            }
            if let Some(m) = i.get_mut("mac") {
                *m = json!("<mac>");
            }
            if let Some(n) = i.get("name").and_then(|n| n.as_str()) {
                if n.starts_with("veth") {
                    i["name"] = json!("<veth>");
                }
            }
        }
    }
    v
}

/// The addresses host-local holds for network `net` under `data` (its files named by an
/// address), sorted.
pub fn ip_files(data: &Path, net: &str) -> Vec<String> {
    store_files(data, net)
        .into_iter()
        .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
        .collect()
}

/// Everything in network `net`'s host-local store but its lock and round-robin cursors:
/// reservations, and the owner links nestbox adds beside them. Empty once every
/// attachment is gone.
pub fn store_files(data: &Path, net: &str) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(data.join(net))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n != "lock" && !n.starts_with("last_reserved_ip"))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

pub fn veths(node: &NetNs) -> Vec<String> {
    let out = node.exec_ok(&["ip", "-o", "link", "show", "type", "veth"]);
    out.lines()
        .filter_map(|l| {
            l.split(": ")
                .nth(1)
                .map(|n| n.split('@').next().unwrap_or(n).to_string())
        })
        .collect()
}

/// Masquerade rules in the node: nft rules in our table plus iptables CNI chains.
pub fn masq_rules(node: &NetNs) -> usize {
    let nft = node.exec(&["nft", "list", "table", "inet", "cni_plugins_masquerade"]);
    let n = String::from_utf8_lossy(&nft.stdout)
        .lines()
        .filter(|l| l.contains("masquerade comment"))
        .count();
    n
}

pub fn require_cni_tools() {
    require_root();
    require_cmd("ip");
    require_cmd("nft");
    require_cmd("iptables");
    require_cmd("ping");
    require_cmd("bridge");
    assert!(
        Path::new(REFERENCE_DIR).join("bridge").is_file(),
        "reference plugins missing in {REFERENCE_DIR}: apt-get install containernetworking-plugins"
    );
}
