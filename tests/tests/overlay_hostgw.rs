//! host-gw end to end: routes `S via P dev eth0` for every peer, full pod mesh, MTU 1500,
//! and a peer that is not on a directly connected network is refused with a clear log
//! line instead of getting a route that cannot work.

mod overlay_common;

use overlay_common::*;

fn hostgw_routes(node: &Node) -> Vec<(String, String, String)> {
    let mut r: Vec<(String, String, String)> = node
        .json(&["ip", "-j", "route", "show"])
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter(|r| r.get("gateway").is_some() && r["dev"] == "eth0")
        .map(|r| {
            (
                r["dst"].as_str().unwrap_or_default().to_string(),
                r["gateway"].as_str().unwrap_or_default().to_string(),
                r["dev"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    r.sort();
    r
}

fn expected_routes(node: &Node, c: &Cluster) -> Vec<(String, String, String)> {
    let mut r: Vec<(String, String, String)> = c
        .etcd
        .leases()
        .into_iter()
        .filter(|(_, v)| v["PublicIP"] != node.ip.as_str())
        .map(|(s, v)| {
            (
                s,
                v["PublicIP"].as_str().unwrap_or("").to_string(),
                "eth0".to_string(),
            )
        })
        .collect();
    r.sort();
    r
}

#[test]
fn host_gw_routes_via_peer_underlay_addresses_and_pods_reach_each_other() {
    let mut c = Cluster::new(3, HOSTGW_CONF, &["--ip-masq"]);
    c.start_all();
    for i in 0..3 {
        c.add_pod(i, "nestbox-host-gw");
    }
    for (i, node) in c.nodes.iter().enumerate() {
        let want = expected_routes(node, &c);
        assert_eq!(want.len(), 2);
        let mut got = Vec::new();
        let ok = eventually(10, || {
            got = hostgw_routes(node);
            got == want
        });
        assert!(
            ok,
            "node {i}: routes {got:?}, want {want:?}\n{}",
            node.log()
        );
        assert_eq!(node.env_value("FLANNEL_MTU").as_deref(), Some("1500"));
        let (_, lease) = c.etcd.lease_of(&node.ip).expect("lease");
        assert_eq!(lease["BackendType"], "host-gw");
        // No VXLAN device with host-gw.
        assert!(!node
            .ns
            .exec(&["ip", "link", "show", "flannel.1"])
            .status
            .success());
    }
    assert_full_mesh(&c);
    // Pods use the full 1500-byte MTU: 1472 bytes of payload with DF pass.
    let target = c.nodes[1].pods[0].ip.clone();
    let (ok, out) = ping(&c.nodes[0].pods[0].ns, &target, &["-M", "do", "-s", "1472"]);
    assert!(ok, "1472-byte DF ping over host-gw: {out}");
}

#[test]
fn host_gw_refuses_a_peer_that_is_not_directly_reachable() {
    let mut c = Cluster::new(1, HOSTGW_CONF, &[]);
    // A peer lease whose PublicIP is behind a router, not on eth0's network.
    c.etcd.put(
        &format!("{PREFIX}/subnets/10.244.200.0-24"),
        r#"{"PublicIP":"10.99.0.7","BackendType":"host-gw"}"#,
    );
    c.start_all();
    let node = &c.nodes[0];
    let refused = eventually(10, || {
        node.log().contains("not on a network directly connected")
    });
    assert!(refused, "no refusal logged:\n{}", node.log());
    assert!(
        !hostgw_routes(node).iter().any(|r| r.0 == "10.244.200.0/24"),
        "no route may be installed for an unreachable host-gw peer"
    );
}
