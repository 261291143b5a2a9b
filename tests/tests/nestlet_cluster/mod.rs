//! A one-node test cluster for nestlet: a real control plane (kube_common, with the
//! scheduler), a switch netns, a node netns running nestlet with a node identity, and a
//! docker-registry in the node netns holding the busybox image. Used by the nestlet
//! apiserver tests and the pods benchmark.
#![allow(dead_code)]

use std::fs;

use crate::kube_common::{new_token, ControlPlane, KubeOpts};
use crate::nestlet_common::{Nestlet, Opts, Registry};
use nestbox_tests::{sh_ok, unique, veth_between, wait_until, NetNs};
use serde_json::Value;

pub const NODE_IP: &str = "192.168.99.10";

pub struct Cluster {
    // Dropped in order: nestlet first (it may still talk to the apiserver), then the rest.
    pub n: Nestlet,
    _reg: Registry,
    pub node: NetNs,
    _switch: NetNs,
    pub cp: ControlPlane,
    pub image: String,
    pub name: String,
    pub pod_cidr: String,
}

impl Cluster {
    pub fn start() -> Cluster {
        let name = unique("node");
        let token = new_token(&format!("system:node:{name}"), &["system:nodes"]);
        let cp = ControlPlane::start_with(KubeOpts {
            scheduler: true,
            extra_tokens: vec![token.clone()],
            ..KubeOpts::default()
        });
        let switch = NetNs::new("nlsw");
        sh_ok(&format!(
            "ip -n {s} link add br0 type bridge && ip -n {s} link set br0 up",
            s = switch.name()
        ));
        cp.connect(&switch, "br0", "pcp");
        let node = NetNs::new("nlnd");
        veth_between(&switch, "pnode", &node, "eth0");
        sh_ok(&format!(
            "ip -n {s} link set pnode master br0 && ip -n {n} addr add {NODE_IP}/24 dev eth0",
            s = switch.name(),
            n = node.name()
        ));
        let reg = Registry::start(&node);
        let image = reg.push_busybox(&node, "busybox", "1.36");
        let kubeconfig = cp.kubeconfig_for("node", &token.token);
        let mut n = Nestlet::new(
            &node,
            Opts {
                kubeconfig: Some(kubeconfig),
                node_name: name.clone(),
                node_ip: NODE_IP.into(),
                manifests: false,
                extra: vec![],
            },
        );
        n.start();
        // Registered, NotReady until a CNI config exists (nestlet never writes one).
        let mut node_obj = Value::Null;
        let ok = wait_until(60, || {
            let out = cp.kubectl(&["get", "node", &name, "-o", "json"]);
            if !out.status.success() {
                return false;
            }
            node_obj = serde_json::from_slice(&out.stdout).unwrap_or_default();
            // The controller-manager's podCIDR and nestlet's first status (conditions) come
            // in separate writes, in either order.
            node_obj["spec"]["podCIDR"].is_string()
                && ready_condition(&node_obj)["status"].is_string()
        });
        assert!(
            ok,
            "node not registered with a podCIDR and a Ready condition: {node_obj}\n{}",
            n.log()
        );
        let ready = ready_condition(&node_obj);
        assert_eq!(ready["status"], "False", "{node_obj}");
        assert_eq!(
            ready["message"], "network not ready: no CNI configuration",
            "{ready}"
        );
        let pod_cidr = node_obj["spec"]["podCIDR"].as_str().unwrap().to_string();
        // The operator's part: a CNI config for the node's podCIDR.
        n.write_cni_config(&pod_cidr, "cni0");
        let ok = wait_until(40, || {
            let v = cp.kubectl_json(&["get", "node", &name]);
            ready_condition(&v)["status"] == "True"
        });
        assert!(
            ok,
            "node not Ready after the CNI config appeared\n{}",
            n.log()
        );
        Cluster {
            n,
            _reg: reg,
            node,
            _switch: switch,
            cp,
            image,
            name,
            pod_cidr,
        }
    }

    pub fn pod(&self, name: &str) -> Value {
        let out = self.cp.kubectl(&["get", "pod", name, "-o", "json"]);
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    }

    pub fn wait_pod(&self, name: &str, secs: u64, what: &str, f: impl Fn(&Value) -> bool) -> Value {
        let mut p = Value::Null;
        let ok = wait_until(secs, || {
            p = self.pod(name);
            f(&p)
        });
        assert!(
            ok,
            "pod {name}: not {what} within {secs} s: {}\n--- nestlet ---\n{}",
            p["status"],
            self.n.log()
        );
        p
    }

    pub fn log_of(&self, pod: &Value, container: &str) -> String {
        let dir = self.n.logs.join(format!(
            "{}_{}_{}",
            pod["metadata"]["namespace"].as_str().unwrap_or("default"),
            pod["metadata"]["name"].as_str().unwrap_or(""),
            pod["metadata"]["uid"].as_str().unwrap_or("")
        ));
        fs::read_to_string(dir.join(container).join("0.log")).unwrap_or_default()
    }
}

pub fn ready_condition(node: &Value) -> Value {
    node["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready").cloned())
        .unwrap_or(Value::Null)
}

pub fn phase(p: &Value) -> &str {
    p["status"]["phase"].as_str().unwrap_or("")
}
