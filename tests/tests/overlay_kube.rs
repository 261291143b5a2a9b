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

/// Node `name`'s podCIDR, once the controller-manager has allocated it.
fn pod_cidr(cp: &ControlPlane, name: &str) -> String {
    let mut cidr = String::new();
    let ok = eventually(30, || {
        let n = cp.kubectl_json(&["get", "node", name]);
        cidr = n["spec"]["podCIDR"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        !cidr.is_empty()
    });
    assert!(ok, "no podCIDR for {name}");
    cidr
}

#[test]
fn kube_node_that_ran_flannel_is_taken_over_in_place() {
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
            "--ip-masq".into(),
        ];
    }
    let url = c.etcd.url();
    c.nodes[1].start_agent(&url);
    c.nodes[1].wait_env();
    let name0 = c.nodes[0].ns.name().to_string();
    let name1 = c.nodes[1].ns.name().to_string();
    let cidr0 = pod_cidr(&cp, &name0);
    let cidr1 = pod_cidr(&cp, &name1);
    let n1 = cp.kubectl_json(&["get", "node", &name1]);
    let data1: Value = serde_json::from_str(
        n1["metadata"]["annotations"]["flannel.alpha.coreos.com/backend-data"]
            .as_str()
            .unwrap_or("{}"),
    )
    .unwrap_or(Value::Null);
    let mac1 = data1["VtepMAC"].as_str().unwrap_or_default().to_string();

    // Node 0 as flannel left it: its annotations, its kernel state, its rules.
    let mac0 = "0e:f1:a0:00:00:0a";
    cp.kubectl_ok(&[
        "annotate",
        "--overwrite",
        "node",
        &name0,
        "flannel.alpha.coreos.com/backend-type=vxlan",
        &format!(r#"flannel.alpha.coreos.com/backend-data={{"VNI":1,"VtepMAC":"{mac0}"}}"#),
        "flannel.alpha.coreos.com/kube-subnet-manager=true",
        &format!("flannel.alpha.coreos.com/public-ip={}", c.nodes[0].ip),
    ]);
    build_flannel_node(
        &c.nodes[0],
        &cidr0,
        mac0,
        &[(cidr1.clone(), mac1, c.nodes[1].ip.clone())],
    );
    let pod0 = c.add_pod(0, "nestbox-vxlan");
    let pod1 = c.add_pod(1, "nestbox-vxlan");
    let src = &c.nodes[0].pods[0].ns;
    assert!(
        eventually(15, || ping(src, &pod1, &[]).0),
        "flannel-built node 0 cannot reach node 1's pod\n{}",
        c.nodes[1].log()
    );
    let index_before = link_json(&c.nodes[0], "flannel.1")["ifindex"].clone();

    let pings = ping_series(&c.nodes[1].pods[0].ns, &pod0, 50, "0.1");
    std::thread::sleep(std::time::Duration::from_millis(1000));
    c.nodes[0].start_agent(&url);
    assert!(
        eventually(20, || c.nodes[0].log().contains("took over from flannel")),
        "no takeover line:\n{}",
        c.nodes[0].log()
    );
    let (tx, rx, out) = finish_series(pings);
    eprintln!("kube migration: pod←pod {}/{tx} lost", tx - rx);
    assert!(
        tx >= 45 && rx == tx,
        "lost pings: {out}\n{}",
        c.nodes[0].log()
    );
    // Same subnet, same device and MAC, same annotations; flannel's rules gone.
    assert_eq!(
        lease_of_env(&c.nodes[0].env_value("FLANNEL_SUBNET").unwrap_or_default()),
        cidr0
    );
    let l = link_json(&c.nodes[0], "flannel.1");
    assert_eq!(l["ifindex"], index_before, "device recreated");
    assert_eq!(l["address"], mac0);
    let n0 = cp.kubectl_json(&["get", "node", &name0]);
    let data0: Value = serde_json::from_str(
        n0["metadata"]["annotations"]["flannel.alpha.coreos.com/backend-data"]
            .as_str()
            .unwrap_or("{}"),
    )
    .unwrap_or(Value::Null);
    assert_eq!(data0["VtepMAC"], mac0);
    assert!(!c.nodes[0]
        .ns
        .exec(&["iptables", "-t", "nat", "-S", "FLANNEL-POSTRTG"])
        .status
        .success());
    assert!(ping(&c.nodes[0].pods[0].ns, &pod1, &[]).0);
}
