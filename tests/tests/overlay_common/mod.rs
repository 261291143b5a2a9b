//! Test-only helpers for the overlay tests: a test "cluster" made of namespaces — a
//! switch netns with a bridge, an etcd netns running Debian's etcd on its underlay
//! address, and node netns running `nestbox-overlayd --netns` — plus pods attached
//! through our overlay CNI plugin (`nestbox-vxlan` → `nestbox-bridge` + host-local, all
//! nestbox-cni, installed by scripts/install.sh into a per-cluster CNI bin dir), and
//! readers for the kernel state (`ip -j`, `bridge -j`) and the etcd leases (curl to the
//! JSON gateway inside the etcd netns).
#![allow(dead_code)]

use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nestbox_tests::{
    bin, require_cmd, require_root, sh_ok, veth_between, wait_until, NetNs, TempDir,
};
use serde_json::{json, Value};

#[path = "../cni_common/mod.rs"]
mod cni_common;

pub const ETCD_IP: &str = "192.168.77.2";
pub const PREFIX: &str = "/coreos.com/network";

pub fn b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// Decode etcd's base64 keys and values (lossy text; empty on malformed input).
pub fn unb64(s: &str) -> String {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(s)
        .unwrap_or_default();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// etcd in its own netns, on the underlay; killed on drop.
pub struct Etcd {
    pub ns: NetNs,
    child: Child,
    _dir: TempDir,
}

impl Etcd {
    pub fn url(&self) -> String {
        format!("http://{ETCD_IP}:2379")
    }

    /// POST to the v3 JSON gateway from inside the etcd netns.
    pub fn post(&self, path: &str, body: &Value) -> Value {
        let out = self.ns.exec(&[
            "curl",
            "-sS",
            "-m",
            "5",
            "-X",
            "POST",
            &format!("{}{path}", self.url()),
            "-d",
            &body.to_string(),
        ]);
        assert!(
            out.status.success(),
            "etcd {path}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    }

    pub fn put(&self, key: &str, value: &str) {
        self.post("/v3/kv/put", &json!({"key": b64(key), "value": b64(value)}));
    }

    pub fn del_prefix(&self, prefix: &str) {
        let mut end = prefix.as_bytes().to_vec();
        if let Some(l) = end.last_mut() {
            *l += 1;
        }
        let end = String::from_utf8(end).expect("ascii prefix");
        self.post(
            "/v3/kv/deleterange",
            &json!({"key": b64(prefix), "range_end": b64(&end)}),
        );
    }

    pub fn del(&self, key: &str) {
        self.post("/v3/kv/deleterange", &json!({"key": b64(key)}));
    }

    /// The leases: subnet ("10.244.3.0/24") → lease JSON.
    pub fn leases(&self) -> Vec<(String, Value)> {
        let p = format!("{PREFIX}/subnets/");
        let end = format!("{PREFIX}/subnets0");
        let r = self.post(
            "/v3/kv/range",
            &json!({"key": b64(&p), "range_end": b64(&end)}),
        );
        r.get("kvs")
            .and_then(|k| k.as_array())
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|kv| {
                let k = unb64(kv["key"].as_str().unwrap_or(""));
                let v = unb64(kv["value"].as_str().unwrap_or(""));
                let subnet = k.trim_start_matches(&p).replacen('-', "/", 1);
                (subnet, serde_json::from_str(&v).unwrap_or(Value::Null))
            })
            .collect()
    }

    /// A lease's value exactly as stored (to compare with flannel's JSON byte for byte).
    pub fn raw(&self, key: &str) -> Option<String> {
        let r = self.post("/v3/kv/range", &json!({ "key": b64(key) }));
        r["kvs"][0]["value"].as_str().map(unb64)
    }

    /// An etcd lease with `ttl` seconds (what flannel attaches its subnet key to).
    pub fn grant(&self, ttl: u64) -> String {
        let r = self.post("/v3/lease/grant", &json!({ "TTL": ttl }));
        r["ID"]
            .as_str()
            .map(str::to_string)
            .or_else(|| r["ID"].as_i64().map(|i| i.to_string()))
            .expect("lease ID")
    }

    pub fn put_with_lease(&self, key: &str, value: &str, lease: &str) {
        self.post(
            "/v3/kv/put",
            &json!({"key": b64(key), "value": b64(value), "lease": lease}),
        );
    }

    /// A shell command that puts `value` at `key` (to run in one `sh -c` with another
    /// change, as close to it in time as a shell allows).
    pub fn put_cmd(&self, key: &str, value: &str) -> String {
        format!(
            "ip netns exec {} curl -sS -m 5 -X POST {}/v3/kv/put -d '{}' > /dev/null",
            self.ns.name(),
            self.url(),
            json!({"key": b64(key), "value": b64(value)})
        )
    }

    pub fn lease_of(&self, public_ip: &str) -> Option<(String, Value)> {
        self.leases()
            .into_iter()
            .find(|(_, v)| v["PublicIP"] == public_ip)
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A node: netns on the underlay, its agent, its files.
pub struct Node {
    pub ns: NetNs,
    pub ip: String,
    pub dir: TempDir,
    pub agent: Option<Child>,
    pub args: Vec<String>,
    pub pods: Vec<Pod>,
}

pub struct Pod {
    pub ns: NetNs,
    pub id: String,
    pub ip: String,
}

impl Node {
    pub fn env_path(&self) -> PathBuf {
        self.dir.path().join("subnet.env")
    }
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("agent.log")
    }
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn start_agent(&mut self, etcd_url: &str) {
        assert!(self.agent.is_none(), "agent already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("agent log");
        let child = Command::new(bin("nestbox-overlayd"))
            .arg("--netns")
            .arg(self.ns.path())
            .args(["--iface", "eth0", "--etcd-endpoints", etcd_url])
            .arg("--subnet-file")
            .arg(self.env_path())
            .args(&self.args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("spawn nestbox-overlayd");
        self.agent = Some(child);
    }

    /// SIGTERM and wait (a clean shutdown).
    pub fn stop_agent(&mut self) {
        if let Some(mut c) = self.agent.take() {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let ok = wait_until(10, || matches!(c.try_wait(), Ok(Some(_))));
            if !ok {
                let _ = c.kill();
            }
            let _ = c.wait();
        }
    }

    pub fn kill_agent(&mut self) {
        if let Some(mut c) = self.agent.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn subnet_env(&self) -> Option<String> {
        std::fs::read_to_string(self.env_path()).ok()
    }

    pub fn env_value(&self, key: &str) -> Option<String> {
        self.subnet_env()?.lines().find_map(|l| {
            l.strip_prefix(&format!("{key}="))
                .map(|v| v.trim().to_string())
        })
    }

    pub fn wait_env(&self) -> String {
        assert!(
            wait_until(20, || self.subnet_env().is_some()),
            "agent on {} wrote no subnet.env; log:\n{}",
            self.ns.name(),
            self.log()
        );
        self.subnet_env().unwrap_or_default()
    }

    pub fn json(&self, argv: &[&str]) -> Value {
        let out = self.ns.exec(argv);
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Array(vec![]))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill_agent();
    }
}

/// switch + etcd + nodes; everything removed on drop.
pub struct Cluster {
    pub nodes: Vec<Node>,
    pub etcd: Etcd,
    pub switch: NetNs,
    pub cni_bin: TempDir,
}

pub fn require_tools() {
    require_root();
    for c in ["ip", "bridge", "etcd", "curl", "ping"] {
        require_cmd(c);
    }
}

impl Cluster {
    /// `n` nodes (underlay 192.168.77.11…), etcd at 192.168.77.2 holding `config`.
    pub fn new(n: usize, config: &str, agent_args: &[&str]) -> Cluster {
        require_tools();
        let switch = NetNs::new("osw");
        sh_ok(&format!(
            "ip -n {s} link add br0 type bridge && ip -n {s} link set br0 up",
            s = switch.name()
        ));
        let attach = |ns: &NetNs, ip: &str, port: &str| {
            veth_between(&switch, port, ns, "eth0");
            sh_ok(&format!(
                "ip -n {s} link set {port} master br0 && ip -n {n} addr add {ip}/24 dev eth0",
                s = switch.name(),
                n = ns.name()
            ));
        };
        let ens = NetNs::new("oet");
        attach(&ens, ETCD_IP, "pe");
        let dir = TempDir::new("etcd");
        let etcd_bin = require_cmd("etcd");
        let log = std::fs::File::create(dir.path().join("etcd.log")).expect("etcd log");
        let child = Command::new("ip")
            .args(["netns", "exec", ens.name()])
            .arg(&etcd_bin)
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args([
                "--listen-client-urls",
                &format!("http://{ETCD_IP}:2379"),
                "--advertise-client-urls",
                &format!("http://{ETCD_IP}:2379"),
                "--listen-peer-urls",
                "http://127.0.0.1:2380",
                "--initial-advertise-peer-urls",
                "http://127.0.0.1:2380",
                "--initial-cluster",
                "default=http://127.0.0.1:2380",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup"))
            .stderr(log)
            .spawn()
            .expect("spawn etcd");
        let etcd = Etcd {
            ns: ens,
            child,
            _dir: dir,
        };
        let up = wait_until(20, || {
            let o = etcd
                .ns
                .exec(&["curl", "-sf", "-m", "1", &format!("{}/health", etcd.url())]);
            o.status.success()
        });
        assert!(up, "etcd did not come up in its netns");
        etcd.put(&format!("{PREFIX}/config"), config);

        let mut nodes = Vec::new();
        for i in 0..n {
            let ns = NetNs::new("ond");
            let ip = format!("192.168.77.{}", 11 + i);
            attach(&ns, &ip, &format!("pn{i}"));
            nodes.push(Node {
                ns,
                ip,
                dir: TempDir::new("node"),
                agent: None,
                args: agent_args.iter().map(|s| s.to_string()).collect(),
                pods: Vec::new(),
            });
        }
        let cni_bin = TempDir::new("ovlbin");
        cni_common::install(cni_bin.path(), false);
        Cluster {
            nodes,
            etcd,
            switch,
            cni_bin,
        }
    }

    pub fn start_all(&mut self) {
        let url = self.etcd.url();
        for n in &mut self.nodes {
            n.start_agent(&url);
        }
        for n in &self.nodes {
            n.wait_env();
        }
    }

    /// Start the agents of the first `n` nodes and wait for their subnet.env.
    pub fn start_all_but(&mut self, n: usize) {
        let url = self.etcd.url();
        for node in self.nodes.iter_mut().take(n) {
            node.start_agent(&url);
        }
        for node in self.nodes.iter().take(n) {
            node.wait_env();
        }
    }

    /// A host on the underlay switch that is no node (an address outside the cluster:
    /// it has no route to any pod subnet, so only masqueraded pod traffic gets answers).
    pub fn add_host(&self, ip: &str, port: &str) -> NetNs {
        let ns = NetNs::new("oex");
        veth_between(&self.switch, port, &ns, "eth0");
        sh_ok(&format!(
            "ip -n {s} link set {port} master br0 && ip -n {n} addr add {ip}/24 dev eth0",
            s = self.switch.name(),
            n = ns.name()
        ));
        ns
    }

    /// Run our overlay CNI plugin for a new pod on node `i`; returns the pod's IP.
    pub fn add_pod(&mut self, i: usize, plugin: &str) -> String {
        self.add_pod_with(i, plugin, json!({"hairpinMode": true}))
    }

    /// [`Cluster::add_pod`] with the plugin's `delegate` keys given (e.g. a default route).
    pub fn add_pod_with(&mut self, i: usize, plugin: &str, delegate: Value) -> String {
        let node = &self.nodes[i];
        let pod = NetNs::new("opd");
        let id = pod.name().to_string();
        let conf = json!({
            "cniVersion": "1.0.0",
            "name": "ovltest",
            "type": plugin,
            "subnetFile": node.env_path(),
            "dataDir": node.dir.path().join("flannel"),
            "ipam": {"dataDir": node.dir.path().join("ipam")},
            "delegate": delegate,
        });
        let (code, out, err) = cni(
            node,
            &self.cni_bin,
            "ADD",
            &id,
            &pod.path().display().to_string(),
            &conf,
        );
        assert_eq!(code, 0, "{plugin} ADD failed: {out} {err}");
        let v: Value = serde_json::from_str(&out).expect("ADD result JSON");
        let ip = v["ips"][0]["address"]
            .as_str()
            .expect("an IP in the result")
            .split('/')
            .next()
            .unwrap_or_default()
            .to_string();
        self.nodes[i].pods.push(Pod {
            ns: pod,
            id,
            ip: ip.clone(),
        });
        ip
    }

    pub fn all_pods(&self) -> Vec<(&NetNs, String)> {
        self.nodes
            .iter()
            .flat_map(|n| n.pods.iter().map(|p| (&p.ns, p.ip.clone())))
            .collect()
    }
}

/// Run a CNI plugin inside the node netns (like a runtime on that node).
pub fn cni(
    node: &Node,
    bin_dir: &TempDir,
    verb: &str,
    id: &str,
    netns: &str,
    conf: &Value,
) -> (i32, String, String) {
    let plugin = conf["type"].as_str().unwrap_or_default().to_string();
    let mut c = Command::new("ip");
    c.args(["netns", "exec", node.ns.name()])
        .arg(bin_dir.path().join(&plugin))
        .env("CNI_COMMAND", verb)
        .env("CNI_CONTAINERID", id)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", bin_dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().expect("spawn plugin");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(conf.to_string().as_bytes())
        .expect("write conf");
    let out = child.wait_with_output().expect("plugin output");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// One ping from `ns` to `ip` (iputils; `extra` like `-M do -s 1422`); (ok, output).
pub fn ping(ns: &NetNs, ip: &str, extra: &[&str]) -> (bool, String) {
    let mut argv = vec!["ping", "-c", "1", "-W", "2"];
    argv.extend_from_slice(extra);
    argv.push(ip);
    let out = ns.exec(&argv);
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// `ping -c count -i interval` from `ns` to `ip`, in the background (read it with
/// [`ping_summary`] after `wait_with_output`).
pub fn ping_series(ns: &NetNs, ip: &str, count: u32, interval: &str) -> Child {
    Command::new("ip")
        .args([
            "netns",
            "exec",
            ns.name(),
            "ping",
            "-n",
            "-q",
            "-W",
            "1",
            "-i",
        ])
        .arg(interval)
        .arg("-c")
        .arg(count.to_string())
        .arg(ip)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ping")
}

/// (transmitted, received) from ping's summary line.
pub fn ping_summary(out: &str) -> (u32, u32) {
    let line = out
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .unwrap_or_default();
    let num = |word: &str| -> u32 {
        line.split(',')
            .find(|p| p.contains(word))
            .and_then(|p| p.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    (num("transmitted"), num("received"))
}

/// Finish a [`ping_series`]: (transmitted, received, output).
pub fn finish_series(child: Child) -> (u32, u32, String) {
    let out = child.wait_with_output().expect("ping output");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let (tx, rx) = ping_summary(&text);
    (tx, rx, text)
}

/// Every pod reaches every other pod (retrying briefly while routes settle).
pub fn assert_full_mesh(c: &Cluster) {
    let pods = c.all_pods();
    for (a, _) in &pods {
        for (_, ip) in &pods {
            let mut last = String::new();
            let ok = wait_until(10, || {
                let (ok, out) = ping(a, ip, &[]);
                last = out;
                ok
            });
            assert!(ok, "pod {} cannot reach {ip}: {last}", a.name());
        }
    }
}

/// Poll `f` for up to `secs`, sleeping 200 ms between tries.
pub fn eventually(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let end = std::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if f() {
            return true;
        }
        if std::time::Instant::now() > end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The "first usable /len" of FLANNEL_SUBNET back to the lease network ("10.244.3.0/24").
pub fn lease_of_env(subnet: &str) -> String {
    let (ip, len) = subnet.split_once('/').expect("cidr");
    let mut o: Vec<u32> = ip.split('.').map(|x| x.parse().expect("octet")).collect();
    let n = (o[0] << 24 | o[1] << 16 | o[2] << 8 | o[3])
        & (u32::MAX << (32 - len.parse::<u32>().expect("len")));
    o = vec![n >> 24, (n >> 16) & 255, (n >> 8) & 255, n & 255];
    format!("{}.{}.{}.{}/{len}", o[0], o[1], o[2], o[3])
}

/// What flannel's VXLAN layout puts on `node` for its peers, and what is there.
pub struct VxlanState {
    pub neigh: Vec<(String, String)>,
    pub fdb: Vec<(String, String)>,
    pub routes: Vec<(String, String)>,
}

pub fn vxlan_state(node: &Node, vni: u32) -> VxlanState {
    let dev = format!("flannel.{vni}");
    let mut neigh: Vec<(String, String)> = node
        .json(&["ip", "-j", "neigh", "show", "dev", &dev])
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter(|n| {
            n["state"]
                .as_array()
                .is_some_and(|s| s.iter().any(|x| x == "PERMANENT"))
        })
        .map(|n| {
            (
                n["dst"].as_str().unwrap_or_default().to_string(),
                n["lladdr"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    let mut fdb: Vec<(String, String)> = node
        .json(&["bridge", "-j", "fdb", "show", "dev", &dev])
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter(|f| {
            f["state"] == "permanent"
                && f["flags"]
                    .as_array()
                    .is_some_and(|fl| fl.iter().any(|x| x == "self"))
                && f.get("dst").is_some()
        })
        .map(|f| {
            (
                f["mac"].as_str().unwrap_or_default().to_string(),
                f["dst"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    let mut routes: Vec<(String, String)> = node
        .json(&["ip", "-j", "route", "show", "dev", &dev])
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter(|r| r.get("gateway").is_some())
        .map(|r| {
            let onlink = r["flags"]
                .as_array()
                .is_some_and(|f| f.iter().any(|x| x == "onlink"));
            (
                r["dst"].as_str().unwrap_or_default().to_string(),
                format!(
                    "{}{}",
                    r["gateway"].as_str().unwrap_or_default(),
                    if onlink { " onlink" } else { "" }
                ),
            )
        })
        .collect();
    neigh.sort();
    fdb.sort();
    routes.sort();
    VxlanState { neigh, fdb, routes }
}

/// flannel's expected entries on `node` given every lease in etcd.
pub fn expected_vxlan(node: &Node, leases: &[(String, Value)]) -> VxlanState {
    let mut neigh = Vec::new();
    let mut fdb = Vec::new();
    let mut routes = Vec::new();
    for (subnet, v) in leases {
        if v["PublicIP"] == node.ip.as_str() {
            continue;
        }
        let net = subnet.split('/').next().unwrap_or_default().to_string();
        let mac = v["BackendData"]["VtepMAC"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        neigh.push((net.clone(), mac.clone()));
        fdb.push((mac, v["PublicIP"].as_str().unwrap_or_default().to_string()));
        routes.push((subnet.clone(), format!("{net} onlink")));
    }
    neigh.sort();
    fdb.sort();
    routes.sort();
    VxlanState { neigh, fdb, routes }
}

pub fn vxlan_matches(node: &Node, leases: &[(String, Value)], vni: u32) -> Result<(), String> {
    let got = vxlan_state(node, vni);
    let want = expected_vxlan(node, leases);
    if got.neigh != want.neigh {
        return Err(format!(
            "neighbours: got {:?} want {:?}",
            got.neigh, want.neigh
        ));
    }
    if got.fdb != want.fdb {
        return Err(format!("fdb: got {:?} want {:?}", got.fdb, want.fdb));
    }
    if got.routes != want.routes {
        return Err(format!(
            "routes: got {:?} want {:?}",
            got.routes, want.routes
        ));
    }
    Ok(())
}

/// Wait up to `secs` for `node`'s VXLAN entries to equal flannel's layout for the leases.
pub fn wait_vxlan_layout(c: &Cluster, i: usize, secs: u64) -> Result<(), String> {
    let mut last = Ok(());
    let ok = eventually(secs, || {
        last = vxlan_matches(&c.nodes[i], &c.etcd.leases(), 1);
        last.is_ok()
    });
    if ok {
        Ok(())
    } else {
        last
    }
}

pub fn link_json(node: &Node, dev: &str) -> Value {
    node.json(&["ip", "-d", "-j", "link", "show", "dev", dev])
        .get(0)
        .cloned()
        .unwrap_or(Value::Null)
}

pub const VXLAN_CONF: &str =
    r#"{"Network":"10.244.0.0/16","SubnetLen":24,"Backend":{"Type":"vxlan"}}"#;
pub const HOSTGW_CONF: &str =
    r#"{"Network":"10.244.0.0/16","SubnetLen":24,"Backend":{"Type":"host-gw"}}"#;

/// flannel's iptables rules for `network` and lease `subnet`, as flannel (v0.22+)
/// installs them, in `iptables-restore --noflush` form.
pub fn flannel_iptables(network: &str, subnet: &str) -> String {
    let m = "-m comment --comment \"flanneld masq\"";
    let f = "-m comment --comment \"flanneld forward\"";
    format!(
        "*nat\n:FLANNEL-POSTRTG - [0:0]\n\
         -A POSTROUTING {m} -j FLANNEL-POSTRTG\n\
         -A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 {m} -j RETURN\n\
         -A FLANNEL-POSTRTG -s {subnet} -d {network} {m} -j RETURN\n\
         -A FLANNEL-POSTRTG -s {network} -d {subnet} {m} -j RETURN\n\
         -A FLANNEL-POSTRTG ! -s {network} -d {subnet} {m} -j RETURN\n\
         -A FLANNEL-POSTRTG -s {network} ! -d 224.0.0.0/4 {m} -j MASQUERADE --random-fully\n\
         -A FLANNEL-POSTRTG ! -s {network} -d {network} {m} -j MASQUERADE --random-fully\n\
         COMMIT\n*filter\n:FLANNEL-FWD - [0:0]\n\
         -A FORWARD {f} -j FLANNEL-FWD\n\
         -A FLANNEL-FWD -s {network} {f} -j ACCEPT\n\
         -A FLANNEL-FWD -d {network} {f} -j ACCEPT\n\
         COMMIT\n"
    )
}

/// A node's state as flannel (VXLAN, `--ip-masq`) leaves it, built by hand on `node`:
/// `flannel.1` (MAC `mac`, txqueuelen 0, lease network /32), per peer (subnet, VTEP MAC,
/// public IP) its neighbour, FDB entry and onlink route, ip_forward, its subnet.env and
/// its iptables chains with their jumps.
pub fn build_flannel_node(
    node: &Node,
    subnet: &str,
    mac: &str,
    peers: &[(String, String, String)],
) {
    require_cmd("iptables-restore");
    let n = node.ns.name();
    let net = subnet.split('/').next().unwrap_or_default();
    let mut cmd = format!(
        "ip -n {n} link add flannel.1 address {mac} mtu 1450 txqueuelen 0 type vxlan id 1 \
           local {ip} dev eth0 dstport 8472 nolearning && \
         ip -n {n} addr add {net}/32 dev flannel.1 && \
         ip -n {n} link set flannel.1 up && \
         ip netns exec {n} sysctl -qw net.ipv4.ip_forward=1",
        ip = node.ip,
    );
    for (psub, pmac, pip) in peers {
        let gw = psub.split('/').next().unwrap_or_default();
        cmd.push_str(&format!(
            " && ip -n {n} neigh replace {gw} lladdr {pmac} dev flannel.1 nud permanent \
             && bridge -n {n} fdb append {pmac} dev flannel.1 dst {pip} self permanent \
             && ip -n {n} route replace {psub} via {gw} dev flannel.1 onlink"
        ));
    }
    sh_ok(&cmd);
    let first = lease_first_ip(subnet);
    std::fs::write(
        node.env_path(),
        format!("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET={first}\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"),
    )
    .expect("write flannel's subnet.env");
    let ipt = flannel_iptables("10.244.0.0/16", subnet);
    let out = Command::new("ip")
        .args(["netns", "exec", n, "sh", "-c"])
        .arg(format!("printf '%s' '{ipt}' | iptables-restore --noflush"))
        .output()
        .expect("iptables-restore");
    assert!(
        out.status.success(),
        "flannel's rules: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `10.244.7.0/24` → `10.244.7.1/24` (subnet.env's FLANNEL_SUBNET).
pub fn lease_first_ip(subnet: &str) -> String {
    let (ip, len) = subnet.split_once('/').expect("cidr");
    let ip: std::net::Ipv4Addr = ip.parse().expect("ipv4");
    format!("{}/{len}", std::net::Ipv4Addr::from(u32::from(ip) + 1))
}
