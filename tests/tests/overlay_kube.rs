//! The Kubernetes subnet manager against a real apiserver (Kubernetes 1.20.2 built by
//! scripts/kube-build.sh): the controller-manager's node podCIDRs become the leases, each
//! agent publishes flannel's node annotations, and the VXLAN layout and pod mesh follow.

#[path = "kube_common/mod.rs"]
mod kube_common;
mod overlay_common;

use kube_common::{ControlPlane, KubeOpts};
use overlay_common::*;
use serde_json::{json, Value};

#[test]
fn kube_subnet_manager_uses_node_pod_cidrs_and_publishes_flannel_annotations() {
    let cp = ControlPlane::start_with(KubeOpts {
        ip: "192.168.77.3".into(),
        ..KubeOpts::default()
    });
    let mut c = Cluster::new(2, VXLAN_CONF, &[]);
    cp.connect(&c.switch, "br0", "pkube");
    let net_conf = c.nodes[0].dir.path().join("net-conf.json");
    std::fs::write(&net_conf, VXLAN_CONF).expect("write net-conf.json");
    for n in &mut c.nodes {
        let name = n.ns.name().to_string();
        cp.apply(
            &json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}}).to_string(),
        );
        n.args = vec![
            "--subnet-mgr".into(),
            "kube".into(),
            "--kubeconfig".into(),
            cp.kubeconfig().display().to_string(),
            "--node-name".into(),
            name,
            "--net-conf".into(),
            net_conf.display().to_string(),
        ];
    }
    c.start_all();
    c.add_pod(0, "nestbox-vxlan");
    c.add_pod(1, "nestbox-vxlan");

    // Leases as the layout checker wants them, from the Node objects.
    let leases = || -> Vec<(String, Value)> {
        let nodes = cp.kubectl_json(&["get", "nodes"]);
        nodes["items"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .filter_map(|n| {
                let a = &n["metadata"]["annotations"];
                let data: Value =
                    serde_json::from_str(a["flannel.alpha.coreos.com/backend-data"].as_str()?)
                        .ok()?;
                Some((
                    n["spec"]["podCIDR"].as_str()?.to_string(),
                    json!({"PublicIP": a["flannel.alpha.coreos.com/public-ip"],
                           "BackendType": a["flannel.alpha.coreos.com/backend-type"],
                           "BackendData": data}),
                ))
            })
            .collect()
    };
    for (i, node) in c.nodes.iter().enumerate() {
        let n = cp.kubectl_json(&["get", "node", node.ns.name()]);
        let cidr = n["spec"]["podCIDR"]
            .as_str()
            .expect("podCIDR allocated")
            .to_string();
        let env_subnet = node.env_value("FLANNEL_SUBNET").unwrap_or_default();
        assert_eq!(
            lease_of_env(&env_subnet),
            cidr,
            "node {i}: subnet.env follows spec.podCIDR"
        );
        let a = &n["metadata"]["annotations"];
        assert_eq!(a["flannel.alpha.coreos.com/backend-type"], "vxlan");
        assert_eq!(a["flannel.alpha.coreos.com/public-ip"], node.ip.as_str());
        assert_eq!(a["flannel.alpha.coreos.com/kube-subnet-manager"], "true");
        let mut last = Ok(());
        let ok = eventually(10, || {
            last = vxlan_matches(node, &leases(), 1);
            last.is_ok()
        });
        assert!(ok, "node {i}: {last:?}\n{}", node.log());
        let data: Value = serde_json::from_str(
            a["flannel.alpha.coreos.com/backend-data"]
                .as_str()
                .unwrap_or("{}"),
        )
        .unwrap_or(Value::Null);
        assert_eq!(link_json(node, "flannel.1")["address"], data["VtepMAC"]);
    }
    assert_full_mesh(&c);
}
