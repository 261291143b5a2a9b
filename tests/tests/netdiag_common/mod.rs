//! Test-only helpers for the nestbox-netdiag tests: a two-node VXLAN lab (the overlay
//! tests' cluster: switch, etcd, `nestbox-overlayd` per node, two pods per node through
//! `nestbox-vxlan`), a libcni-style result cache per node so pods have names, and
//! running `nestbox-netdiag` against a node (one-shot for doctor, in the background for
//! trace and drops, stopped with SIGINT like a person's Ctrl-C).
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine;
use nestbox_tests::{bin, wait_until, NetNs, TempDir};
use serde_json::{json, Value};

#[path = "../overlay_common/mod.rs"]
mod overlay_common;
pub use overlay_common::*;

pub struct LabPod {
    pub name: String,
    pub ip: String,
    pub netns: PathBuf,
}

/// Two nodes, two pods each, the overlay agents stopped once the layout is in place (so a
/// fault injected by a test stays: the agents would repair it).
pub struct Lab {
    pub c: Cluster,
    pub caches: Vec<TempDir>,
    pub pods: Vec<Vec<LabPod>>,
    empty: TempDir,
}

impl Lab {
    pub fn new() -> Lab {
        let mut c = Cluster::new(2, VXLAN_CONF, &["--ip-masq"]);
        c.start_all();
        for i in 0..2 {
            for _ in 0..2 {
                c.add_pod(i, "nestbox-vxlan");
            }
        }
        for i in 0..2 {
            wait_vxlan_layout(&c, i, 15).unwrap_or_else(|e| panic!("node {i}: {e}"));
        }
        assert_full_mesh(&c);
        for n in &mut c.nodes {
            n.kill_agent();
        }
        let mut caches = Vec::new();
        let mut pods = Vec::new();
        for (i, node) in c.nodes.iter().enumerate() {
            let cache = TempDir::new("cnicache");
            std::fs::create_dir_all(cache.path().join("results")).expect("mkdir results");
            let mut list = Vec::new();
            for (j, p) in node.pods.iter().enumerate() {
                let name = format!("n{i}p{j}");
                write_cache_entry(&cache, node, p, &name);
                list.push(LabPod {
                    name: format!("default/{name}"),
                    ip: p.ip.clone(),
                    netns: p.ns.path(),
                });
            }
            caches.push(cache);
            pods.push(list);
        }
        Lab {
            c,
            caches,
            pods,
            empty: TempDir::new("nonestlet"),
        }
    }

    pub fn node(&self, i: usize) -> &NetNs {
        &self.c.nodes[i].ns
    }

    pub fn pod_ns(&self, i: usize, j: usize) -> &NetNs {
        &self.c.nodes[i].pods[j].ns
    }

    /// `nestbox-netdiag --node-netns <node i> … <args>` with this lab's name sources.
    pub fn cmd(&self, i: usize, args: &[&str]) -> Command {
        let mut c = Command::new(bin("nestbox-netdiag"));
        c.arg("--node-netns")
            .arg(self.node(i).path())
            .arg("--cni-cache-dir")
            .arg(self.caches[i].path())
            .arg("--nestlet-root")
            .arg(self.empty.path())
            .args(args)
            .stdin(Stdio::null());
        c
    }

    /// `doctor <pod> --json` with the lab's leases and subnet.env: (exit code, report).
    pub fn doctor(&self, i: usize, pod: &str) -> (i32, Value) {
        let env = self.c.nodes[i].env_path();
        let out = self
            .cmd(
                i,
                &[
                    "doctor",
                    pod,
                    "--json",
                    "--etcd-endpoints",
                    &self.c.etcd.url(),
                    "--subnet-file",
                    env.to_str().expect("utf-8 path"),
                ],
            )
            .output()
            .expect("run nestbox-netdiag doctor");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let v: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
            panic!(
                "doctor output is not JSON ({e}): {stdout}\nstderr: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (out.status.code().unwrap_or(-1), v)
    }

    /// Start trace or drops in the background; returns once it says it is attached.
    pub fn start(&self, i: usize, args: &[&str]) -> Background {
        let dir = TempDir::new("ndout");
        let out = dir.path().join("stdout");
        let err = dir.path().join("stderr");
        let child = self
            .cmd(i, args)
            .stdout(std::fs::File::create(&out).expect("stdout file"))
            .stderr(std::fs::File::create(&err).expect("stderr file"))
            .spawn()
            .expect("spawn nestbox-netdiag");
        let mut bg = Background {
            child: Some(child),
            out,
            err,
            _dir: dir,
        };
        let ready = wait_until(30, || {
            let e = bg.stderr();
            e.contains("watching") || e.contains("tracing") || bg.exited()
        });
        assert!(
            ready && !bg.exited(),
            "nestbox-netdiag {args:?} did not attach: {}",
            bg.stderr()
        );
        bg
    }
}

impl Default for Lab {
    fn default() -> Self {
        Lab::new()
    }
}

/// What libcni (containerd, podman, CRI-O) writes after an ADD: the network config, the
/// pod's identity in CNI_ARGS, and the result.
fn write_cache_entry(cache: &TempDir, node: &Node, p: &Pod, name: &str) {
    let conf = json!({
        "cniVersion": "1.0.0", "name": "ovltest", "type": "nestbox-vxlan",
        "subnetFile": node.env_path(), "delegate": {"hairpinMode": true},
    });
    let gw = {
        let mut o: Vec<u8> = p.ip.split('.').map(|x| x.parse().unwrap_or(0)).collect();
        o[3] = 1;
        format!("{}.{}.{}.{}", o[0], o[1], o[2], o[3])
    };
    let entry = json!({
        "kind": "cniCacheV1",
        "containerId": p.id,
        "ifName": "eth0",
        "networkName": "ovltest",
        "config": base64::engine::general_purpose::STANDARD.encode(conf.to_string()),
        "cniArgs": [["K8S_POD_NAMESPACE", "default"], ["K8S_POD_NAME", name]],
        "result": {
            "cniVersion": "1.0.0",
            "interfaces": [{"name": "eth0", "sandbox": p.ns.path()}],
            "ips": [{"address": format!("{}/24", p.ip), "gateway": gw, "interface": 0}],
        },
    });
    std::fs::write(
        cache.path().join(format!("results/ovltest-{}-eth0", p.id)),
        entry.to_string(),
    )
    .expect("write cache entry");
}

/// A trace or drops run in the background; SIGINT and reaped on drop.
pub struct Background {
    child: Option<Child>,
    out: PathBuf,
    err: PathBuf,
    _dir: TempDir,
}

impl Background {
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.err).unwrap_or_default()
    }
    fn exited(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(Some(_))))
    }

    /// Ctrl-C, wait for the exit; returns (exit code, stdout).
    pub fn stop(&mut self) -> (i32, String) {
        let mut code = -1;
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(c.id() as i32, libc::SIGINT) };
            let ok = wait_until(20, || matches!(c.try_wait(), Ok(Some(_))));
            if !ok {
                let _ = c.kill();
            }
            code = c.wait().ok().and_then(|s| s.code()).unwrap_or(-1);
        }
        (code, self.stdout())
    }

    /// The drop events printed so far (`drops --json`).
    pub fn drop_events(&self) -> Vec<Value> {
        self.stdout()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// The checks of a report with a given id.
pub fn checks<'a>(report: &'a Value, id: &str) -> Vec<&'a Value> {
    report["checks"]
        .as_array()
        .map(|a| a.iter().filter(|c| c["id"] == id).collect())
        .unwrap_or_default()
}

/// The checks that did not pass, for messages.
pub fn not_passed(report: &Value) -> Vec<String> {
    report["checks"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|c| c["status"] != "PASS")
                .map(|c| {
                    format!(
                        "{} {} {}: found {}",
                        c["status"], c["id"], c["subject"], c["found"]
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A few pings from a pod (their outcome is not the point: the tools watch them).
pub fn pings(from: &NetNs, ip: &str, extra: &[&str]) {
    for _ in 0..3 {
        let _ = ping(from, ip, extra);
        std::thread::sleep(Duration::from_millis(100));
    }
}
