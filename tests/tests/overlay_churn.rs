//! Churn: peers that leave are removed within 10 s and come back when they return;
//! hand-made damage (VXLAN device deleted, peer route/neighbour/FDB entry deleted, a stale
//! route added) is repaired by the reconcile loop; a restart keeps the subnet and the VTEP
//! MAC; an agent killed without renewing loses its lease at the TTL and peers drop it;
//! `--cleanup` removes what the agent built.

mod overlay_common;

use overlay_common::*;

fn mac_of(node: &Node) -> String {
    link_json(node, "flannel.1")["address"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn settle(c: &Cluster) {
    for i in 0..c.nodes.len() {
        wait_vxlan_layout(c, i, 10)
            .unwrap_or_else(|e| panic!("node {i}: {e}\n{}", c.nodes[i].log()));
    }
}

#[test]
fn peers_follow_leases_and_hand_deleted_state_is_repaired_within_10s() {
    let mut c = Cluster::new(3, VXLAN_CONF, &[]);
    c.start_all();
    settle(&c);

    // Node 2 leaves: clean stop (its kernel state stays), lease deleted.
    let (subnet2, lease2) = c.etcd.lease_of(&c.nodes[2].ip).expect("lease of node 2");
    c.nodes[2].stop_agent();
    assert!(
        c.nodes[2]
            .ns
            .exec(&["ip", "link", "show", "flannel.1"])
            .status
            .success(),
        "a clean stop leaves the device in place"
    );
    c.etcd
        .del(&format!("{PREFIX}/subnets/{}", subnet2.replace('/', "-")));
    for i in 0..2 {
        wait_vxlan_layout(&c, i, 10)
            .unwrap_or_else(|e| panic!("node {i} kept node 2's entries: {e}"));
        let st = vxlan_state(&c.nodes[i], 1);
        assert_eq!(st.routes.len(), 1, "node {i}: {:?}", st.routes);
    }

    // It comes back: same subnet (from its subnet.env), same MAC (from its device).
    let url = c.etcd.url();
    c.nodes[2].start_agent(&url);
    assert!(eventually(10, || c.etcd.lease_of(&c.nodes[2].ip).is_some()));
    let (subnet2b, lease2b) = c
        .etcd
        .lease_of(&c.nodes[2].ip)
        .expect("new lease of node 2");
    assert_eq!(
        subnet2b, subnet2,
        "a returning node prefers its previous subnet"
    );
    assert_eq!(
        lease2b["BackendData"]["VtepMAC"],
        lease2["BackendData"]["VtepMAC"]
    );
    settle(&c);

    // flannel.1 deleted by hand on node 0 → recreated with the same MAC, peers restored.
    let mac0 = mac_of(&c.nodes[0]);
    c.nodes[0].ns.exec_ok(&["ip", "link", "del", "flannel.1"]);
    let back = eventually(10, || mac_of(&c.nodes[0]) == mac0);
    assert!(
        back,
        "flannel.1 not recreated with MAC {mac0}:\n{}",
        c.nodes[0].log()
    );
    wait_vxlan_layout(&c, 0, 10).unwrap_or_else(|e| panic!("node 0 after device loss: {e}"));

    // A peer route, a neighbour and an FDB entry deleted by hand on node 1 → restored.
    let st = vxlan_state(&c.nodes[1], 1);
    let (dst, _) = st.routes[0].clone();
    c.nodes[1].ns.exec_ok(&["ip", "route", "del", &dst]);
    let (nip, _) = st.neigh[0].clone();
    c.nodes[1]
        .ns
        .exec_ok(&["ip", "neigh", "del", &nip, "dev", "flannel.1"]);
    let (fmac, fdst) = st.fdb[1].clone();
    c.nodes[1].ns.exec_ok(&[
        "bridge",
        "fdb",
        "del",
        &fmac,
        "dev",
        "flannel.1",
        "dst",
        &fdst,
        "self",
    ]);
    // And a stale route nobody leased.
    c.nodes[1].ns.exec_ok(&[
        "ip",
        "route",
        "add",
        "10.244.250.0/24",
        "via",
        "10.244.250.0",
        "dev",
        "flannel.1",
        "onlink",
    ]);
    wait_vxlan_layout(&c, 1, 10)
        .unwrap_or_else(|e| panic!("node 1 not repaired: {e}\n{}", c.nodes[1].log()));
    assert_full_mesh_of_nodes(&c);
}

/// Node to node over the overlay: each node pings every peer's VTEP address.
fn assert_full_mesh_of_nodes(c: &Cluster) {
    let leases = c.etcd.leases();
    for n in &c.nodes {
        for (subnet, v) in &leases {
            if v["PublicIP"] == n.ip.as_str() {
                continue;
            }
            let vtep = subnet.split('/').next().unwrap_or_default();
            let mut out = String::new();
            let ok = eventually(5, || {
                let (ok, o) = ping(&n.ns, vtep, &[]);
                out = o;
                ok
            });
            assert!(ok, "{} cannot reach VTEP {vtep}: {out}", n.ns.name());
        }
    }
}

#[test]
fn restart_keeps_subnet_and_mac_and_cleanup_removes_everything() {
    let mut c = Cluster::new(2, VXLAN_CONF, &["--ip-masq"]);
    c.start_all();
    settle(&c);
    let (subnet, lease) = c.etcd.lease_of(&c.nodes[0].ip).expect("lease");
    c.nodes[0].stop_agent();
    // The env file is gone too: the lease in etcd alone must bring the subnet and MAC back.
    std::fs::remove_file(c.nodes[0].env_path()).expect("rm subnet.env");
    c.nodes[0].ns.exec_ok(&["ip", "link", "del", "flannel.1"]);
    let url = c.etcd.url();
    c.nodes[0].start_agent(&url);
    c.nodes[0].wait_env();
    let (subnet_b, lease_b) = c
        .etcd
        .lease_of(&c.nodes[0].ip)
        .expect("lease after restart");
    assert_eq!(subnet_b, subnet);
    assert_eq!(
        lease_b["BackendData"]["VtepMAC"],
        lease["BackendData"]["VtepMAC"]
    );
    assert_eq!(
        mac_of(&c.nodes[0]),
        lease["BackendData"]["VtepMAC"].as_str().unwrap_or("")
    );
    assert_eq!(
        c.etcd.leases().len(),
        2,
        "no second lease for the same node"
    );
    settle(&c);

    c.nodes[0].stop_agent();
    let n = &c.nodes[0];
    let out = std::process::Command::new(nestbox_tests::bin("nestbox-overlayd"))
        .arg("--netns")
        .arg(n.ns.path())
        .args([
            "--iface",
            "eth0",
            "--etcd-endpoints",
            &url,
            "--cleanup",
            "--subnet-file",
        ])
        .arg(n.env_path())
        .output()
        .expect("run --cleanup");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!n
        .ns
        .exec(&["ip", "link", "show", "flannel.1"])
        .status
        .success());
    assert!(!n.env_path().exists());
    assert!(!n
        .ns
        .exec(&["nft", "list", "table", "ip", "nestbox-overlay"])
        .status
        .success());
}

#[test]
fn a_killed_agents_lease_expires_at_its_ttl_and_peers_drop_it() {
    let mut c = Cluster::new(2, VXLAN_CONF, &["--subnet-lease-ttl", "3"]);
    c.start_all();
    settle(&c);
    c.nodes[1].kill_agent();
    // TTL 3 s, then at most one poll + reconcile on node 0.
    let gone = eventually(15, || c.etcd.leases().len() == 1);
    assert!(gone, "the killed agent's lease did not expire");
    wait_vxlan_layout(&c, 0, 10).unwrap_or_else(|e| panic!("node 0 kept the expired peer: {e}"));
    assert!(vxlan_state(&c.nodes[0], 1).routes.is_empty());
    // The live agent keeps renewing its own short lease.
    std::thread::sleep(std::time::Duration::from_secs(4));
    assert!(
        c.etcd.lease_of(&c.nodes[0].ip).is_some(),
        "live agent lost its lease"
    );
}

#[test]
fn iptables_masquerade_fallback_holds_flannels_rules_and_cleanup_removes_them() {
    nestbox_tests::require_cmd("iptables");
    let mut c = Cluster::new(
        1,
        VXLAN_CONF,
        &["--ip-masq", "--ip-masq-backend", "iptables"],
    );
    c.start_all();
    let n = &c.nodes[0];
    let lease = lease_of_env(&n.env_value("FLANNEL_SUBNET").unwrap_or_default());
    let mut nat = String::new();
    let ok = eventually(10, || {
        nat = String::from_utf8_lossy(
            &n.ns
                .exec(&["iptables", "-t", "nat", "-S", "NESTBOX-OVL-POSTRTG"])
                .stdout,
        )
        .into_owned();
        nat.lines().count() == 6
    });
    assert!(ok, "nat chain: {nat}\n{}", n.log());
    let c_ = "-m comment --comment \"nestbox-overlayd masq\"";
    for rule in [
        format!("-m mark --mark 0x4000/0x4000 {c_} -j RETURN"),
        format!("-s 10.244.0.0/16 -d 10.244.0.0/16 {c_} -j RETURN"),
        format!("-s 10.244.0.0/16 ! -d 224.0.0.0/4 {c_} -j MASQUERADE --random-fully"),
        format!("! -s 10.244.0.0/16 -d {lease} {c_} -j RETURN"),
        format!("! -s 10.244.0.0/16 -d 10.244.0.0/16 {c_} -j MASQUERADE --random-fully"),
    ] {
        assert!(nat.contains(&rule), "missing {rule}:\n{nat}");
    }
    let post =
        n.ns.exec_ok(&["iptables", "-t", "nat", "-S", "POSTROUTING"]);
    assert!(post.contains("-j NESTBOX-OVL-POSTRTG"), "{post}");
    let fwd = n.ns.exec_ok(&["iptables", "-S", "NESTBOX-OVL-FWD"]);
    assert!(
        fwd.contains(
            "-s 10.244.0.0/16 -m comment --comment \"nestbox-overlayd forward\" -j ACCEPT"
        ) && fwd.contains(
            "-d 10.244.0.0/16 -m comment --comment \"nestbox-overlayd forward\" -j ACCEPT"
        ),
        "{fwd}"
    );
    // No nftables table from us in this mode.
    assert!(!n
        .ns
        .exec(&["nft", "list", "table", "ip", "nestbox-overlay"])
        .status
        .success());

    c.nodes[0].stop_agent();
    let n = &c.nodes[0];
    let out = std::process::Command::new(nestbox_tests::bin("nestbox-overlayd"))
        .arg("--netns")
        .arg(n.ns.path())
        .args([
            "--iface",
            "eth0",
            "--etcd-endpoints",
            &c.etcd.url(),
            "--cleanup",
            "--subnet-file",
        ])
        .arg(n.env_path())
        .output()
        .expect("run --cleanup");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!n
        .ns
        .exec(&["iptables", "-t", "nat", "-S", "NESTBOX-OVL-POSTRTG"])
        .status
        .success());
    assert!(!n
        .ns
        .exec_ok(&["iptables", "-t", "nat", "-S", "POSTROUTING"])
        .contains("NESTBOX-OVL"));
}

#[test]
fn conflicting_device_settings_are_repaired_with_the_same_mac() {
    let mut c = Cluster::new(2, VXLAN_CONF, &[]);
    c.start_all();
    settle(&c);
    let n = &c.nodes[0];
    let mac = mac_of(n);
    // Learning switched on (a setting that needs a new device) and the MTU changed.
    n.ns.exec_ok(&["ip", "link", "set", "flannel.1", "mtu", "1300"]);
    n.ns.exec_ok(&[
        "ip",
        "link",
        "set",
        "flannel.1",
        "type",
        "vxlan",
        "learning",
    ]);
    let ok = eventually(10, || {
        let l = link_json(n, "flannel.1");
        l["linkinfo"]["info_data"]["learning"] == false
            && l["mtu"] == 1450
            && l["address"] == mac.as_str()
    });
    assert!(
        ok,
        "device not repaired: {}\n{}",
        link_json(n, "flannel.1"),
        n.log()
    );
    wait_vxlan_layout(&c, 0, 10).unwrap_or_else(|e| panic!("entries after device repair: {e}"));
}
