//! Mixed clusters and migration from flannel: a peer whose VTEP MAC changes (what flannel
//! does when it recreates `flannel.1`) is followed with at most one lost packet; a node
//! that ran flannel (its state built here by hand, exactly as flannel leaves it) is taken
//! over in place while its pods keep talking; switching `--ip-masq-backend` leaves one
//! set of rules; the lease JSON, the VTEP and the iptables rules carry flannel's fields.

mod overlay_common;

use nestbox_tests::sh_ok;
use overlay_common::*;
use serde_json::json;

fn settle(c: &Cluster) {
    for i in 0..c.nodes.len() {
        wait_vxlan_layout(c, i, 10)
            .unwrap_or_else(|e| panic!("node {i}: {e}\n{}", c.nodes[i].log()));
    }
}

fn subnet_key(subnet: &str) -> String {
    format!("{PREFIX}/subnets/{}", subnet.replace('/', "-"))
}

#[test]
fn a_peers_new_vtep_mac_is_followed_with_at_most_one_lost_packet() {
    let mut c = Cluster::new(2, VXLAN_CONF, &[]);
    c.start_all();
    c.add_pod(0, "nestbox-vxlan");
    let target = c.add_pod(1, "nestbox-vxlan");
    settle(&c);
    assert!(
        eventually(10, || ping(&c.nodes[0].pods[0].ns, &target, &[]).0),
        "no baseline connectivity"
    );

    // Node 1 plays a flannel node that restarts: its VTEP gets a new MAC and its lease
    // is rewritten. Its own agent is stopped first (its kernel state stays), so only
    // node 0's agent reacts.
    c.nodes[1].stop_agent();
    let (subnet1, mut lease1) = c.etcd.lease_of(&c.nodes[1].ip).expect("lease of node 1");
    let old_mac = lease1["BackendData"]["VtepMAC"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let new_mac = if old_mac == "0e:5a:00:00:00:01" {
        "0e:5a:00:00:00:02"
    } else {
        "0e:5a:00:00:00:01"
    };
    lease1["BackendData"]["VtepMAC"] = json!(new_mac);
    // A MAC change flushes the device's neighbours (permanent ones too): flannel then
    // programs its peers again, and so does this stand-in for it.
    let (subnet0, lease0) = c.etcd.lease_of(&c.nodes[0].ip).expect("lease of node 0");
    let gw0 = subnet0.split('/').next().unwrap_or_default().to_string();
    let mac0 = lease0["BackendData"]["VtepMAC"]
        .as_str()
        .unwrap_or_default()
        .to_string();

    let pinger = ping_series(&c.nodes[0].pods[0].ns, &target, 80, "0.05");
    std::thread::sleep(std::time::Duration::from_millis(1500));
    // The device and the lease change together, as flannel does (device first).
    sh_ok(&format!(
        "ip -n {n1} link set flannel.1 address {new_mac} && \
         ip -n {n1} neigh replace {gw0} lladdr {mac0} dev flannel.1 nud permanent && {put}",
        n1 = c.nodes[1].ns.name(),
        put = c.etcd.put_cmd(&subnet_key(&subnet1), &lease1.to_string())
    ));
    let (tx, rx, out) = finish_series(pinger);
    let lost = tx - rx;
    eprintln!("MAC change {old_mac} -> {new_mac}: {tx} sent every 50 ms, {lost} lost");
    assert!(tx >= 70, "ping did not run: {out}");
    assert!(
        lost <= 1,
        "{lost} of {tx} packets lost while the peer's MAC changed:\n{out}\n{}",
        c.nodes[0].log()
    );

    // Node 0 holds exactly the new entries: the old FDB entry is gone.
    wait_vxlan_layout(&c, 0, 5).unwrap_or_else(|e| panic!("node 0: {e}"));
    let st = vxlan_state(&c.nodes[0], 1);
    assert_eq!(
        st.fdb,
        vec![(new_mac.to_string(), c.nodes[1].ip.clone())],
        "FDB"
    );
    assert!(
        !st.fdb.iter().any(|(m, _)| *m == old_mac),
        "old FDB entry {old_mac} still there"
    );
    assert!(
        !c.nodes[0].log().contains("stale neighbour removed"),
        "the neighbour was deleted after being replaced:\n{}",
        c.nodes[0].log()
    );
}

fn ifindex(node: &Node, dev: &str) -> u64 {
    link_json(node, dev)["ifindex"].as_u64().unwrap_or(0)
}

#[test]
fn a_node_that_ran_flannel_is_taken_over_in_place_while_its_pods_keep_talking() {
    let mut c = Cluster::new(2, VXLAN_CONF, &["--ip-masq"]);
    let url = c.etcd.url();
    // Node 1 runs our agent from the start.
    c.nodes[1].start_agent(&url);
    c.nodes[1].wait_env();
    let (subnet1, lease1) = c.etcd.lease_of(&c.nodes[1].ip).expect("lease of node 1");
    let mac1 = lease1["BackendData"]["VtepMAC"]
        .as_str()
        .unwrap_or_default()
        .to_string();

    // Node 0: flannel's state, by hand. Lease (flannel's JSON, attached to a 24 h etcd
    // lease), VTEP, entries for node 1, subnet.env, iptables chains.
    let subnet0 = "10.244.7.0/24";
    let mac0 = "0e:f1:a0:00:07:07";
    let flannel_lease = format!(
        r#"{{"PublicIP":"{}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{mac0}"}}}}"#,
        c.nodes[0].ip
    );
    let id = c.etcd.grant(86400);
    c.etcd
        .put_with_lease(&subnet_key(subnet0), &flannel_lease, &id);
    build_flannel_node(
        &c.nodes[0],
        subnet0,
        mac0,
        &[(subnet1, mac1, c.nodes[1].ip.clone())],
    );

    // Pods (with a default route, to reach the outside host through the masquerade).
    let gw = json!({"hairpinMode": true, "isDefaultGateway": true});
    let pod0 = c.add_pod_with(0, "nestbox-vxlan", gw.clone());
    let pod1 = c.add_pod_with(1, "nestbox-vxlan", gw);
    assert!(pod0.starts_with("10.244.7."), "pod on node 0 got {pod0}");
    let outside = c.add_host("192.168.77.50", "pex");
    let src = &c.nodes[0].pods[0].ns;
    assert!(
        eventually(10, || ping(src, &pod1, &[]).0),
        "flannel-built node 0 cannot reach node 1's pod\n{}",
        c.nodes[1].log()
    );
    assert!(
        ping(src, "192.168.77.50", &[]).0,
        "no masqueraded path to the outside host through flannel's rules"
    );
    let index_before = ifindex(&c.nodes[0], "flannel.1");

    // Traffic throughout: pod → pod (one flow) and pod → outside as new flows (each a
    // fresh NAT decision: a packet leaving unmasqueraded gets no answer).
    let pod_pings = ping_series(src, &pod1, 60, "0.1");
    let back_pings = ping_series(&c.nodes[1].pods[0].ns, &pod0, 60, "0.1");
    let outside_pings = std::process::Command::new("ip")
        .args(["netns", "exec", c.nodes[0].pods[0].ns.name(), "sh", "-c"])
        .arg(
            "ok=0; lost=0; for i in $(seq 50); do \
               if ping -n -q -c 1 -W 1 192.168.77.50 > /dev/null; then ok=$((ok+1)); else lost=$((lost+1)); fi; \
               sleep 0.05; done; echo \"$ok $lost\"",
        )
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("outside pings");
    std::thread::sleep(std::time::Duration::from_millis(1000));
    c.nodes[0].start_agent(&url);
    assert!(
        eventually(15, || c.nodes[0].log().contains("took over from flannel")),
        "no takeover line:\n{}",
        c.nodes[0].log()
    );
    let (tx, rx, out) = finish_series(pod_pings);
    let (btx, brx, bout) = finish_series(back_pings);
    let o = outside_pings.wait_with_output().expect("outside pings");
    let o = String::from_utf8_lossy(&o.stdout).to_string();
    let mut it = o.split_whitespace().map(|n| n.parse::<u32>().unwrap_or(0));
    let (ook, olost) = (it.next().unwrap_or(0), it.next().unwrap_or(99));
    eprintln!(
        "migration: pod→pod {}/{tx} lost, pod←pod {}/{btx} lost, pod→outside (new flows) {olost}/{} lost",
        tx - rx,
        btx - brx,
        ook + olost
    );
    let log = c.nodes[0].log();
    assert!(tx >= 55 && rx == tx, "pod→pod lost pings: {out}\n{log}");
    assert!(btx >= 55 && brx == btx, "pod←pod lost pings: {bout}\n{log}");
    assert_eq!(
        (ook, olost),
        (50, 0),
        "pings to the outside lost (unmasqueraded?)\n{log}"
    );

    // Kept: the subnet (lease key, subnet.env), the device (same ifindex and MAC).
    let (subnet, lease) = c.etcd.lease_of(&c.nodes[0].ip).expect("lease of node 0");
    assert_eq!(subnet, subnet0);
    assert_eq!(lease["BackendData"]["VtepMAC"], mac0);
    assert_eq!(c.etcd.leases().len(), 2, "{:?}", c.etcd.leases());
    assert_eq!(
        c.nodes[0].env_value("FLANNEL_SUBNET").as_deref(),
        Some("10.244.7.1/24")
    );
    assert_eq!(
        ifindex(&c.nodes[0], "flannel.1"),
        index_before,
        "device recreated"
    );
    assert_eq!(link_json(&c.nodes[0], "flannel.1")["address"], mac0);
    let takeover: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("took over from flannel"))
        .collect();
    assert_eq!(takeover.len(), 1, "{log}");
    assert!(
        takeover[0].contains(subnet0) && takeover[0].contains("adopted"),
        "{}",
        takeover[0]
    );
    // flannel's rules gone, ours in place.
    let ns = &c.nodes[0].ns;
    assert!(!ns
        .exec(&["iptables", "-t", "nat", "-S", "FLANNEL-POSTRTG"])
        .status
        .success());
    assert!(!ns
        .exec(&["iptables", "-t", "filter", "-S", "FLANNEL-FWD"])
        .status
        .success());
    let post = ns.exec_ok(&["iptables", "-t", "nat", "-S", "POSTROUTING"]);
    assert!(!post.contains("FLANNEL"), "{post}");
    let fwd = ns.exec_ok(&["iptables", "-S", "FORWARD"]);
    assert!(!fwd.contains("FLANNEL"), "{fwd}");
    let nft = ns.exec_ok(&["nft", "list", "table", "ip", "nestbox-overlay"]);
    assert!(nft.contains("masquerade"), "{nft}");
    settle(&c);
    drop(outside);
}

fn nat_chain(node: &Node) -> Option<String> {
    let o = node
        .ns
        .exec(&["iptables", "-t", "nat", "-S", "NESTBOX-OVL-POSTRTG"]);
    o.status
        .success()
        .then(|| String::from_utf8_lossy(&o.stdout).into_owned())
}

fn nft_table(node: &Node) -> Option<String> {
    let o = node
        .ns
        .exec(&["nft", "list", "table", "ip", "nestbox-overlay"]);
    o.status
        .success()
        .then(|| String::from_utf8_lossy(&o.stdout).into_owned())
}

fn hook_jumps(node: &Node, table: &str, hook: &str, chain: &str) -> usize {
    node.ns
        .exec_ok(&["iptables", "-t", table, "-S", hook])
        .lines()
        .filter(|l| l.ends_with(&format!("-j {chain}")))
        .count()
}

#[test]
fn switching_the_masquerade_backend_leaves_one_set_of_rules() {
    nestbox_tests::require_cmd("iptables");
    nestbox_tests::require_cmd("nft");
    let mut c = Cluster::new(
        1,
        VXLAN_CONF,
        &["--ip-masq", "--ip-masq-backend", "nftables"],
    );
    let url = c.etcd.url();
    c.start_all();
    let n = &c.nodes[0];
    assert!(eventually(10, || nft_table(n).is_some()), "{}", n.log());
    assert!(nat_chain(n).is_none());

    // nftables → iptables.
    c.nodes[0].stop_agent();
    c.nodes[0].args = vec![
        "--ip-masq".into(),
        "--ip-masq-backend".into(),
        "iptables".into(),
    ];
    c.nodes[0].start_agent(&url);
    let n = &c.nodes[0];
    assert!(
        eventually(10, || nat_chain(n).is_some() && nft_table(n).is_none()),
        "after the switch to iptables: nft {:?} iptables {:?}\n{}",
        nft_table(n),
        nat_chain(n),
        n.log()
    );
    assert_eq!(
        hook_jumps(n, "nat", "POSTROUTING", "NESTBOX-OVL-POSTRTG"),
        1
    );
    assert_eq!(hook_jumps(n, "filter", "FORWARD", "NESTBOX-OVL-FWD"), 1);
    // Parity: kube-proxy's mark is left alone first, every rule commented.
    let nat = nat_chain(n).unwrap_or_default();
    let rules: Vec<&str> = nat.lines().filter(|l| l.starts_with("-A")).collect();
    assert_eq!(rules.len(), 5, "{nat}");
    assert_eq!(
        rules[0],
        "-A NESTBOX-OVL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment \"nestbox-overlayd masq\" -j RETURN"
    );
    assert!(
        rules
            .iter()
            .all(|r| r.contains("--comment \"nestbox-overlayd masq\"")),
        "{nat}"
    );
    let post =
        n.ns.exec_ok(&["iptables", "-t", "nat", "-S", "POSTROUTING"]);
    assert!(
        post.contains(
            "-A POSTROUTING -m comment --comment \"nestbox-overlayd masq\" -j NESTBOX-OVL-POSTRTG"
        ),
        "{post}"
    );

    // A restart with the same backend changes nothing (no second jump).
    c.nodes[0].stop_agent();
    c.nodes[0].start_agent(&url);
    std::thread::sleep(std::time::Duration::from_secs(2));
    let n = &c.nodes[0];
    assert_eq!(
        hook_jumps(n, "nat", "POSTROUTING", "NESTBOX-OVL-POSTRTG"),
        1
    );
    assert_eq!(nat_chain(n).as_deref(), Some(nat.as_str()));

    // iptables → nftables.
    c.nodes[0].stop_agent();
    c.nodes[0].args = vec![
        "--ip-masq".into(),
        "--ip-masq-backend".into(),
        "nftables".into(),
    ];
    c.nodes[0].start_agent(&url);
    let n = &c.nodes[0];
    assert!(
        eventually(10, || nat_chain(n).is_none() && nft_table(n).is_some()),
        "after the switch back: nft {:?} iptables {:?}\n{}",
        nft_table(n),
        nat_chain(n),
        n.log()
    );
    assert_eq!(
        hook_jumps(n, "nat", "POSTROUTING", "NESTBOX-OVL-POSTRTG"),
        0
    );
    assert_eq!(hook_jumps(n, "filter", "FORWARD", "NESTBOX-OVL-FWD"), 0);
    let nft = nft_table(n).unwrap_or_default();
    assert!(
        nft.contains(
            "meta mark & 0x00004000 == 0x00004000 return comment \"nestbox-overlayd masq\""
        ),
        "{nft}"
    );

    // Without --ip-masq, no rules of ours stay behind.
    c.nodes[0].stop_agent();
    c.nodes[0].args = vec![];
    c.nodes[0].start_agent(&url);
    let n = &c.nodes[0];
    assert!(
        eventually(10, || nat_chain(n).is_none() && nft_table(n).is_none()),
        "{}",
        n.log()
    );
}

#[test]
fn lease_json_and_vtep_carry_flannels_fields() {
    let mut c = Cluster::new(1, VXLAN_CONF, &[]);
    c.start_all();
    let n = &c.nodes[0];
    let (subnet, lease) = c.etcd.lease_of(&n.ip).expect("lease");
    let raw = c.etcd.raw(&subnet_key(&subnet)).expect("raw lease");
    assert_eq!(
        raw,
        format!(
            r#"{{"PublicIP":"{}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{}"}}}}"#,
            n.ip,
            lease["BackendData"]["VtepMAC"].as_str().unwrap_or_default()
        )
    );
    let txqlen = || {
        n.ns.exec_ok(&["cat", "/sys/class/net/flannel.1/tx_queue_len"])
            .trim()
            .to_string()
    };
    assert_eq!(txqlen(), "0");
    // Repaired like any other setting.
    n.ns.exec_ok(&["ip", "link", "set", "flannel.1", "txqueuelen", "1000"]);
    assert_eq!(txqlen(), "1000");
    assert!(eventually(10, || txqlen() == "0"), "{}", n.log());
}
