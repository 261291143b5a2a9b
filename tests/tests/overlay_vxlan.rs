//! VXLAN overlay end to end: three node namespaces on an underlay switch, etcd leases,
//! `nestbox-overlayd` on each node, pods attached through `nestbox-vxlan`; every pod
//! reaches every other pod, and each node's kernel state is flannel's layout field by
//! field (device, address, neighbours, FDB, onlink routes, subnet.env, masquerade table).

mod overlay_common;

use overlay_common::*;
use serde_json::Value;

#[test]
fn vxlan_pods_reach_each_other_and_nodes_hold_flannels_layout() {
    let mut c = Cluster::new(3, VXLAN_CONF, &["--ip-masq"]);
    c.start_all();
    for i in 0..3 {
        c.add_pod(i, "nestbox-vxlan");
    }
    let leases = c.etcd.leases();
    assert_eq!(leases.len(), 3, "three leases: {leases:?}");
    for i in 0..3 {
        if let Err(e) = wait_vxlan_layout(&c, i, 10) {
            panic!("node {i}: {e}\nlog:\n{}", c.nodes[i].log());
        }
    }
    assert_full_mesh(&c);

    for node in &c.nodes {
        let (subnet, lease) = c.etcd.lease_of(&node.ip).expect("a lease per node");
        // subnet.env
        assert_eq!(
            node.env_value("FLANNEL_NETWORK").as_deref(),
            Some("10.244.0.0/16")
        );
        assert_eq!(node.env_value("FLANNEL_MTU").as_deref(), Some("1450"));
        assert_eq!(node.env_value("FLANNEL_IPMASQ").as_deref(), Some("true"));
        let env_subnet = node.env_value("FLANNEL_SUBNET").expect("FLANNEL_SUBNET");
        assert_eq!(lease_of_env(&env_subnet), subnet);
        assert!(
            env_subnet.starts_with(&subnet[..subnet.len() - 4]) && env_subnet.contains(".1/"),
            "{env_subnet}"
        );
        // the lease
        assert_eq!(lease["BackendType"], "vxlan");
        assert_eq!(lease["BackendData"]["VNI"], 1);
        // the device
        let l = link_json(node, "flannel.1");
        let data = &l["linkinfo"]["info_data"];
        assert_eq!(l["linkinfo"]["info_kind"], "vxlan", "{l}");
        assert_eq!(data["id"], 1);
        assert_eq!(data["local"], node.ip.as_str());
        assert_eq!(data["port"], 8472);
        assert_eq!(data["learning"], false);
        assert_eq!(data["link"], "eth0");
        assert_eq!(l["mtu"], 1450);
        assert_eq!(l["address"], lease["BackendData"]["VtepMAC"]);
        let addrs = node.json(&["ip", "-j", "-4", "addr", "show", "dev", "flannel.1"]);
        let got: Vec<String> = addrs[0]["addr_info"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|a| format!("{}/{}", a["local"].as_str().unwrap_or(""), a["prefixlen"]))
            .collect();
        assert_eq!(
            got,
            vec![format!("{}/32", subnet.split('/').next().unwrap_or(""))]
        );
        // masquerade table (flannel's rules)
        let nft = node
            .ns
            .exec_ok(&["nft", "list", "table", "ip", "nestbox-overlay"]);
        assert!(
            nft.contains("ip saddr 10.244.0.0/16 ip daddr != 224.0.0.0/4 masquerade"),
            "{nft}"
        );
        assert!(
            nft.contains(&format!(
                "ip saddr != 10.244.0.0/16 ip daddr {subnet} return"
            )),
            "{nft}"
        );
    }
}

#[test]
fn vxlan_mtu_lets_1422_byte_pings_through_and_refuses_larger_locally() {
    let mut c = Cluster::new(2, VXLAN_CONF, &[]);
    c.start_all();
    c.add_pod(0, "nestbox-vxlan");
    let target = c.add_pod(1, "nestbox-vxlan");
    for i in 0..2 {
        wait_vxlan_layout(&c, i, 10).unwrap_or_else(|e| panic!("node {i}: {e}"));
    }
    let src = &c.nodes[0].pods[0].ns;
    let mut out = String::new();
    let ok = eventually(10, || {
        let (ok, o) = ping(src, &target, &["-M", "do", "-s", "1422"]);
        out = o;
        ok
    });
    assert!(ok, "1422-byte DF ping should cross VXLAN (1450 MTU): {out}");
    let (ok, out) = ping(src, &target, &["-M", "do", "-s", "1423"]);
    assert!(!ok, "1423-byte DF ping must not pass: {out}");
    assert!(
        out.contains("message too long"),
        "expected a local EMSGSIZE: {out}"
    );
}

#[test]
fn cni_plugin_answers_try_again_later_while_subnet_env_is_missing() {
    let c = Cluster::new(1, VXLAN_CONF, &[]);
    let node = &c.nodes[0];
    let pod = nestbox_tests::NetNs::new("opd");
    let conf = serde_json::json!({
        "cniVersion": "1.0.0", "name": "ovltest", "type": "nestbox-vxlan",
        "subnetFile": node.env_path(), "dataDir": node.dir.path().join("flannel"),
    });
    let (code, out, _) = cni(
        node,
        &c.cni_bin,
        "ADD",
        "ctr1",
        &pod.path().display().to_string(),
        &conf,
    );
    assert_ne!(code, 0);
    let v: Value = serde_json::from_str(&out).expect("error JSON");
    assert_eq!(v["code"], 11, "{out}");
    // DEL of something never added succeeds.
    let (code, out, _) = cni(node, &c.cni_bin, "DEL", "ctr1", "", &conf);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn direct_routing_uses_host_gw_routes_for_peers_on_the_same_network() {
    let mut c = Cluster::new(2, VXLAN_CONF, &["--direct-routing", "--ip-masq"]);
    c.start_all();
    c.add_pod(0, "nestbox-vxlan");
    c.add_pod(1, "nestbox-vxlan");
    for (i, node) in c.nodes.iter().enumerate() {
        let (peer_subnet, peer) = c
            .etcd
            .leases()
            .into_iter()
            .find(|(_, v)| v["PublicIP"] != node.ip.as_str())
            .expect("a peer lease");
        let peer_ip = peer["PublicIP"].as_str().unwrap_or_default().to_string();
        let ok = eventually(10, || {
            let routes = node.json(&["ip", "-j", "route", "show", &peer_subnet]);
            routes[0]["gateway"] == peer_ip.as_str() && routes[0]["dev"] == "eth0"
        });
        assert!(
            ok,
            "node {i}: no direct route to {peer_subnet} via {peer_ip}\n{}",
            node.log()
        );
        let st = vxlan_state(node, 1);
        assert!(
            st.neigh.is_empty() && st.fdb.is_empty() && st.routes.is_empty(),
            "node {i}: direct routing must not program VXLAN entries: {:?} {:?} {:?}",
            st.neigh,
            st.fdb,
            st.routes
        );
        // The device still exists (and is published) for peers that are not adjacent.
        assert_eq!(
            link_json(node, "flannel.1")["linkinfo"]["info_kind"],
            "vxlan"
        );
    }
    assert_full_mesh(&c);
}

#[test]
fn cni_plugin_delegates_flannel_style_and_del_uses_the_saved_delegate() {
    let mut c = Cluster::new(1, VXLAN_CONF, &[]);
    c.start_all();
    let node = &c.nodes[0];
    let pod = nestbox_tests::NetNs::new("opd");
    let data_dir = node.dir.path().join("flannel");
    let ipam_dir = node.dir.path().join("ipam");
    let conf = serde_json::json!({
        "cniVersion": "1.0.0", "name": "ovlcni", "type": "nestbox-vxlan",
        "subnetFile": node.env_path(), "dataDir": data_dir,
        "ipam": {"dataDir": ipam_dir},
        "delegate": {"hairpinMode": true},
    });
    let netns = pod.path().display().to_string();
    let (code, out, err) = cni(node, &c.cni_bin, "ADD", "ctr7", &netns, &conf);
    assert_eq!(code, 0, "{out}{err}");
    let result: Value = serde_json::from_str(&out).expect("result");

    // The saved delegate: flannel's keys from subnet.env plus the user's.
    let saved: Value = serde_json::from_slice(
        &std::fs::read(data_dir.join("ctr7")).expect("delegate saved at dataDir/<containerID>"),
    )
    .expect("delegate JSON");
    let lease = lease_of_env(&node.env_value("FLANNEL_SUBNET").unwrap_or_default());
    assert_eq!(saved["type"], "nestbox-bridge");
    assert_eq!(saved["isGateway"], true);
    assert_eq!(saved["mtu"], 1450);
    assert_eq!(
        saved["ipMasq"], true,
        "agent without --ip-masq → the bridge masquerades"
    );
    assert_eq!(saved["hairpinMode"], true);
    assert_eq!(saved["ipam"]["type"], "nestbox-host-local");
    assert_eq!(saved["ipam"]["ranges"][0][0]["subnet"], lease.as_str());
    assert_eq!(saved["ipam"]["routes"][0]["dst"], "10.244.0.0/16");
    let mtu = pod.exec_ok(&["cat", "/sys/class/net/eth0/mtu"]);
    assert_eq!(mtu.trim(), "1450");

    // CHECK against the ADD result, then DEL: address released, delegate file removed.
    let mut check = conf.clone();
    check["prevResult"] = result;
    let (code, out, err) = cni(node, &c.cni_bin, "CHECK", "ctr7", &netns, &check);
    assert_eq!(code, 0, "CHECK: {out}{err}");
    let (code, out, err) = cni(node, &c.cni_bin, "DEL", "ctr7", &netns, &conf);
    assert_eq!(code, 0, "DEL: {out}{err}");
    assert!(!data_dir.join("ctr7").exists());
    assert!(!pod.exec(&["ip", "link", "show", "eth0"]).status.success());
    let leftover: Vec<String> = std::fs::read_dir(ipam_dir.join("ovlcni"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("10."))
                .collect()
        })
        .unwrap_or_default();
    assert!(
        leftover.is_empty(),
        "addresses still reserved: {leftover:?}"
    );
}
