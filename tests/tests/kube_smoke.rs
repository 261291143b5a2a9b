//! Smoke test of the test control plane (etcd + kube-apiserver + kube-controller-manager 1.20.2
//! in a netns): Nodes get distinct `spec.podCIDR`s from the cluster CIDR, and the apiserver is
//! reachable from another namespace on the test switch with the exported kubeconfig.

mod kube_common;

use std::collections::HashSet;
use std::net::Ipv4Addr;

use kube_common::{kube_bin, ControlPlane, KubeOpts, CLUSTER_CIDR};
use nestbox_tests::{sh_ok, unique, veth_between, wait_until, NetNs};
use serde_json::json;

/// `a.b.c.d/n` → (network, prefix length).
fn parse_cidr(s: &str) -> (Ipv4Addr, u8) {
    let (ip, len) = s
        .split_once('/')
        .unwrap_or_else(|| panic!("not a CIDR: {s}"));
    (
        ip.parse()
            .unwrap_or_else(|e| panic!("bad address in {s}: {e}")),
        len.parse()
            .unwrap_or_else(|e| panic!("bad prefix in {s}: {e}")),
    )
}

fn within(inner: &str, outer: &str) -> bool {
    let (ia, il) = parse_cidr(inner);
    let (oa, ol) = parse_cidr(outer);
    let mask = |l: u8| if l == 0 { 0 } else { u32::MAX << (32 - l) };
    il >= ol && (u32::from(ia) & mask(ol)) == (u32::from(oa) & mask(ol))
}

#[test]
fn nodes_get_distinct_pod_cidrs_from_the_controller_manager() {
    let cp = ControlPlane::start();

    let names: Vec<String> = (0..3).map(|_| unique("node")).collect();
    for n in &names {
        let node = json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": n, "labels": {"nestbox.test/smoke": "true"}},
        });
        cp.apply(&node.to_string());
    }

    let mut cidrs: Vec<String> = Vec::new();
    let ok = wait_until(60, || {
        cidrs = names
            .iter()
            .filter_map(|n| {
                let out = cp.kubectl(&["get", "node", n, "-o", "jsonpath={.spec.podCIDR}"]);
                let s = String::from_utf8_lossy(&out.stdout).trim().to_string();
                (out.status.success() && !s.is_empty()).then_some(s)
            })
            .collect();
        cidrs.len() == names.len()
    });
    assert!(
        ok,
        "not every node got a podCIDR within 60 s: {cidrs:?}\n{}",
        cp.logs()
    );

    let distinct: HashSet<&String> = cidrs.iter().collect();
    assert_eq!(distinct.len(), 3, "podCIDRs not distinct: {cidrs:?}");
    for c in &cidrs {
        assert!(
            within(c, CLUSTER_CIDR),
            "podCIDR {c} outside {CLUSTER_CIDR}"
        );
        assert_eq!(parse_cidr(c).1, 24, "podCIDR {c} is not a /24");
    }
    // spec.podCIDRs (plural) agrees with spec.podCIDR.
    for (n, c) in names.iter().zip(&cidrs) {
        let node = cp.kubectl_json(&["get", "node", n]);
        assert_eq!(node["spec"]["podCIDRs"][0], c.as_str(), "{node}");
    }
}

#[test]
fn apiserver_is_reachable_from_another_netns_on_the_switch() {
    let cp = ControlPlane::start();
    let switch = NetNs::new("ksw");
    sh_ok(&format!(
        "ip -n {s} link add br0 type bridge && ip -n {s} link set br0 up",
        s = switch.name()
    ));
    cp.connect(&switch, "br0", "pcp");
    let client = NetNs::new("kcl");
    veth_between(&switch, "pcl", &client, "eth0");
    sh_ok(&format!(
        "ip -n {s} link set pcl master br0 && ip -n {c} addr add 192.168.99.50/24 dev eth0",
        s = switch.name(),
        c = client.name()
    ));

    // Same kubeconfig file, used from a different namespace: TLS (CA + SAN) and token work.
    let kubectl = kube_bin("kubectl");
    let kc = cp.kubeconfig();
    let mut out = None;
    let ok = wait_until(20, || {
        let o = client.exec(&[
            kubectl.to_str().expect("utf-8 path"),
            &format!("--kubeconfig={}", kc.display()),
            "get",
            "--raw=/readyz",
        ]);
        let good = o.status.success();
        out = Some(o);
        good
    });
    let o = out.expect("at least one attempt");
    assert!(
        ok,
        "kubectl from another netns failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "ok");

    // A wrong token is refused (the token file is really in use).
    let bad = cp.kubeconfig_for("bad", "not-a-token");
    let o = client.exec(&[
        kubectl.to_str().expect("utf-8 path"),
        &format!("--kubeconfig={}", bad.display()),
        "get",
        "nodes",
    ]);
    assert!(!o.status.success(), "a bad token was accepted");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("Unauthorized"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn scheduler_binds_a_pod_to_a_ready_node_and_state_survives_an_apiserver_restart() {
    let mut cp = ControlPlane::start_with(KubeOpts {
        scheduler: true,
        ..KubeOpts::default()
    });
    let node = unique("node");
    cp.apply(&json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": node}}).to_string());
    // What a kubelet reports: capacity (the scheduler's pod-count fit) and Ready.
    let (code, body) = cp.api(
        "PATCH",
        &format!("/api/v1/nodes/{node}/status"),
        Some((
            "application/strategic-merge-patch+json",
            &json!({"status": {
                "capacity": {"cpu": "2", "memory": "2Gi", "pods": "10"},
                "allocatable": {"cpu": "2", "memory": "2Gi", "pods": "10"},
                "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                                "message": "test", "lastHeartbeatTime": null}],
            }}),
        )),
    );
    assert_eq!(code, 200, "status patch: {body}");
    assert_eq!(body["status"]["allocatable"]["pods"], "10", "{body}");

    cp.apply(
        &json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p1", "namespace": "default"},
            "spec": {
                "containers": [{"name": "c", "image": "busybox"}],
                "tolerations": [{"operator": "Exists"}],
            },
        })
        .to_string(),
    );
    let mut bound = String::new();
    let ok = wait_until(60, || {
        let out = cp.kubectl(&["get", "pod", "p1", "-o", "jsonpath={.spec.nodeName}"]);
        bound = String::from_utf8_lossy(&out.stdout).trim().to_string();
        !bound.is_empty()
    });
    assert!(ok, "pod p1 was not scheduled within 60 s\n{}", cp.logs());
    assert_eq!(bound, node);

    cp.restart_apiserver();
    let pod = cp.kubectl_json(&["get", "pod", "p1"]);
    assert_eq!(pod["spec"]["nodeName"], node.as_str(), "{pod}");
    let mut n = json!(null);
    let ok = wait_until(30, || {
        n = cp.kubectl_json(&["get", "node", &node]);
        n["spec"]["podCIDR"]
            .as_str()
            .is_some_and(|c| within(c, CLUSTER_CIDR))
    });
    assert!(ok, "no podCIDR after the restart: {n}");
}

#[test]
fn a_component_that_dies_at_start_up_fails_clearly_and_leaves_nothing_behind() {
    let res = std::panic::catch_unwind(|| {
        ControlPlane::start_with(KubeOpts {
            apiserver_args: vec!["--no-such-flag=1".into()],
            ..KubeOpts::default()
        })
    });
    let err = match res {
        Ok(_) => panic!("a control plane with a bad apiserver flag started"),
        Err(e) => e
            .downcast_ref::<String>()
            .cloned()
            .unwrap_or_else(|| "<non-string panic>".into()),
    };
    assert!(err.contains("kube-apiserver exited"), "{err}");
    assert!(
        err.contains("no-such-flag"),
        "the log tail is missing: {err}"
    );
    let ns = err
        .split("control plane in netns ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("no netns name in: {err}"));
    assert!(
        !std::path::Path::new("/run/netns").join(ns).exists(),
        "netns {ns} left behind"
    );
    let dir = err
        .split("(files in ")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .unwrap_or_else(|| panic!("no dir in: {err}"));
    assert!(!std::path::Path::new(dir).exists(), "{dir} left behind");
}
