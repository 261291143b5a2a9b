//! Bridge behaviours beyond the reference comparison: dual-stack, requested IP and MAC,
//! MTU, hairpin and port isolation, masquerade that really NATs (nftables and iptables
//! backends), gateway address conflicts, macspoofchk, and a failed ADD that undoes
//! everything.

mod cni_common;

use cni_common::*;
use nestbox_tests::{veth_between, NetNs, TempDir};
use serde_json::json;

#[test]
fn dual_stack_pod_gets_requested_ip_mac_and_mtu() {
    require_cni_tools();
    let node = NetNs::new("brn");
    let pod = NetNs::new("brp");
    let data = TempDir::new("cnids");
    let pd = PluginDir::new(Impl::Ours, Impl::Ours);
    let exe = pd.path().join("bridge");
    let conf = json!({
        "cniVersion": "1.1.0", "name": "ds", "type": "bridge", "bridge": "dsbr0",
        "isDefaultGateway": true, "mtu": 1400, "hairpinMode": true, "portIsolation": true,
        "runtimeConfig": {"mac": "02:11:22:33:44:55", "ips": ["10.70.0.50/24"]},
        "ipam": {"type": "host-local", "dataDir": data.path().display().to_string(),
                 "ranges": [[{"subnet": "10.70.0.0/24"}], [{"subnet": "fd00:70::/64"}]]}
    });
    let netns = pod.path().display().to_string();
    let r = Call::new("ADD", "ds1", &netns, "eth0", pd.path())
        .run(Some(&node), &exe, &conf)
        .ok();
    assert_eq!(r["ips"][0]["address"], "10.70.0.50/24");
    assert_eq!(r["ips"][1]["address"], "fd00:70::2/64");
    assert_eq!(r["interfaces"][2]["mac"], "02:11:22:33:44:55");
    assert_eq!(r["interfaces"][2]["mtu"], 1400);
    let routes: Vec<&str> = r["routes"]
        .as_array()
        .expect("routes")
        .iter()
        .filter_map(|x| x["dst"].as_str())
        .collect();
    assert_eq!(routes, vec!["0.0.0.0/0", "::/0"]);
    let link = pod.exec_ok(&["ip", "-d", "link", "show", "eth0"]);
    assert!(
        link.contains("mtu 1400") && link.contains("02:11:22:33:44:55"),
        "{link}"
    );
    let port = node.exec_ok(&["bridge", "-d", "link", "show"]);
    assert!(
        port.contains("hairpin on") && port.contains("isolated on"),
        "{port}"
    );
    assert!(pod
        .exec(&["ping", "-c1", "-W2", "10.70.0.1"])
        .status
        .success());
    assert!(pod
        .exec(&["ping", "-6", "-c1", "-W2", "fd00:70::1"])
        .status
        .success());
    // No DAD on the pod's addresses (enabledad defaults to false).
    assert!(!pod
        .exec_ok(&["ip", "-6", "addr", "show", "dev", "eth0"])
        .contains("tentative"));
    // The reference's sysctls, set by other means here (a private proc instance,
    // IFLA_INET_CONF, RTM_GETNETCONF + /proc/sys): a fresh node netns starts with
    // forwarding off and a fresh pod link with DAD on and arp_notify off.
    assert_eq!(
        pod.exec_ok(&["cat", "/proc/sys/net/ipv6/conf/eth0/accept_dad"])
            .trim(),
        "0"
    );
    assert_eq!(
        pod.exec_ok(&["cat", "/proc/sys/net/ipv4/conf/eth0/arp_notify"])
            .trim(),
        "1"
    );
    for key in ["ipv4/ip_forward", "ipv6/conf/all/forwarding"] {
        let v = node.exec_ok(&["cat", &format!("/proc/sys/net/{key}")]);
        assert_eq!(v.trim(), "1", "{key}");
    }
    // One queue each way on both ends (said at creation, so the kernel never shrinks
    // them), both up with carrier.
    let host = r["interfaces"][1]["name"].as_str().expect("host veth name");
    for (ns, dev) in [(&pod, "eth0"), (&node, host)] {
        let l = ns.exec_ok(&["ip", "-d", "link", "show", dev]);
        assert!(
            l.contains("numtxqueues 1 numrxqueues 1")
                && l.contains("state UP")
                && l.contains("LOWER_UP"),
            "{l}"
        );
    }
    // The node end is a bridge port without an IPv6 link-local address of its own; the
    // pod's end keeps its own (the v6 ping above went through that port).
    let node6 = node.exec_ok(&["ip", "-6", "addr", "show", "dev", host]);
    assert!(!node6.contains("inet6"), "{node6}");
    assert!(node
        .exec_ok(&["ip", "-d", "link", "show", host])
        .contains("addrgenmode none"));
    assert!(pod
        .exec_ok(&["ip", "-6", "addr", "show", "dev", "eth0", "scope", "link"])
        .contains("fe80::"));
    Call::new("DEL", "ds1", &netns, "eth0", pd.path())
        .run(Some(&node), &exe, &conf)
        .ok();
    assert!(store_files(data.path(), "ds").is_empty());
}

/// A node with an "outside" peer on 192.0.2.0/24 that has no route back to the pods:
/// a pod reaches it only when masqueraded.
fn masquerade_reaches_outside(backend: &str) {
    let node = NetNs::new("mqn");
    let outside = NetNs::new("mqo");
    let pod = NetNs::new("mqp");
    veth_between(&node, "up0", &outside, "up1");
    node.exec_ok(&["ip", "addr", "add", "192.0.2.1/24", "dev", "up0"]);
    outside.exec_ok(&["ip", "addr", "add", "192.0.2.2/24", "dev", "up1"]);
    let data = TempDir::new("cnimasq");
    let pd = PluginDir::new(Impl::Ours, Impl::Ours);
    let exe = pd.path().join("bridge");
    let mut conf = bridge_conf("1.0.0", "mq", "mqbr0", "10.71.0.0/24", data.path());
    conf["ipMasqBackend"] = json!(backend);
    let netns = pod.path().display().to_string();
    Call::new("ADD", "mq1", &netns, "eth0", pd.path())
        .run(Some(&node), &exe, &conf)
        .ok();
    assert!(
        pod.exec(&["ping", "-c1", "-W2", "192.0.2.2"])
            .status
            .success(),
        "{backend}: the pod cannot reach the outside peer (not masqueraded?)"
    );
    Call::new("DEL", "mq1", &netns, "eth0", pd.path())
        .run(Some(&node), &exe, &conf)
        .ok();
    if backend == "nftables" {
        assert_eq!(masq_rules(&node), 0);
    } else {
        let nat = node.exec_ok(&["iptables", "-t", "nat", "-S"]);
        assert!(!nat.contains("CNI-"), "iptables rules left: {nat}");
    }
}

#[test]
fn masquerade_with_nftables_lets_pods_reach_outside() {
    require_cni_tools();
    masquerade_reaches_outside("nftables");
}

#[test]
fn masquerade_with_iptables_lets_pods_reach_outside() {
    require_cni_tools();
    masquerade_reaches_outside("iptables");
}

#[test]
fn a_foreign_gateway_address_on_the_bridge_is_refused_unless_forced() {
    require_cni_tools();
    let node = NetNs::new("gwn");
    let pod = NetNs::new("gwp");
    let data = TempDir::new("cnigw");
    let pd = PluginDir::new(Impl::Ours, Impl::Ours);
    let exe = pd.path().join("bridge");
    node.exec_ok(&["ip", "link", "add", "gwbr0", "type", "bridge"]);
    node.exec_ok(&["ip", "addr", "add", "10.72.9.1/24", "dev", "gwbr0"]);
    let mut conf = bridge_conf("1.0.0", "gw", "gwbr0", "10.72.0.0/24", data.path());
    let netns = pod.path().display().to_string();
    let r = Call::new("ADD", "gw1", &netns, "eth0", pd.path()).run(Some(&node), &exe, &conf);
    assert!(
        r.code != 0
            && r.stdout
                .contains("already has an IP address different from"),
        "{}",
        r.stdout
    );
    // The failed ADD undid everything: no veth, no reservation, no rule, no pod link.
    assert!(veths(&node).is_empty());
    assert!(store_files(data.path(), "gw").is_empty());
    assert_eq!(masq_rules(&node), 0);
    assert!(!pod.exec_ok(&["ip", "-o", "link"]).contains("eth0"));
    let addrs = node.exec_ok(&["ip", "-4", "addr", "show", "gwbr0"]);
    assert!(
        addrs.contains("10.72.9.1/24") && !addrs.contains("10.72.0.1"),
        "{addrs}"
    );
    conf["forceAddress"] = json!(true);
    Call::new("ADD", "gw1", &netns, "eth0", pd.path())
        .run(Some(&node), &exe, &conf)
        .ok();
    let addrs = node.exec_ok(&["ip", "-4", "addr", "show", "gwbr0"]);
    assert!(
        addrs.contains("10.72.0.1/24") && !addrs.contains("10.72.9.1"),
        "{addrs}"
    );
    Call::new("DEL", "gw1", &netns, "eth0", pd.path())
        .run(Some(&node), &exe, &conf)
        .ok();
}

/// IPv6: the gateway address already on the bridge under another prefix conflicts (the
/// kernel's EEXIST for IPv6 ignores the prefix); forceAddress replaces it.
#[test]
fn a_v6_gateway_under_another_prefix_is_refused_unless_forced() {
    require_cni_tools();
    let node = NetNs::new("g6n");
    let pod = NetNs::new("g6p");
    let data = TempDir::new("cnig6");
    let pd = PluginDir::new(Impl::Ours, Impl::Ours);
    let exe = pd.path().join("bridge");
    node.exec_ok(&["ip", "link", "add", "g6br0", "type", "bridge"]);
    node.exec_ok(&[
        "ip",
        "addr",
        "add",
        "fd00:73::1/56",
        "dev",
        "g6br0",
        "nodad",
    ]);
    let mut conf = json!({
        "cniVersion": "1.0.0", "name": "g6", "type": "bridge", "bridge": "g6br0",
        "isGateway": true,
        "ipam": {"type": "host-local", "dataDir": data.path().display().to_string(),
                 "ranges": [[{"subnet": "fd00:73::/64"}]]}
    });
    let netns = pod.path().display().to_string();
    let r = Call::new("ADD", "g61", &netns, "eth0", pd.path()).run(Some(&node), &exe, &conf);
    assert!(
        r.code != 0
            && r.stdout
                .contains("already has an IP address different from"),
        "{}",
        r.stdout
    );
    assert!(veths(&node).is_empty());
    assert!(store_files(data.path(), "g6").is_empty());
    conf["forceAddress"] = json!(true);
    Call::new("ADD", "g61", &netns, "eth0", pd.path())
        .run(Some(&node), &exe, &conf)
        .ok();
    let addrs = node.exec_ok(&["ip", "-6", "addr", "show", "g6br0", "scope", "global"]);
    assert!(
        addrs.contains("fd00:73::1/64") && !addrs.contains("/56"),
        "{addrs}"
    );
    // A second pod finds the gateway in place.
    let pod2 = NetNs::new("g6q");
    let netns2 = pod2.path().display().to_string();
    conf["forceAddress"] = json!(false);
    Call::new("ADD", "g62", &netns2, "eth0", pd.path())
        .run(Some(&node), &exe, &conf)
        .ok();
    for (id, ns) in [("g61", &netns), ("g62", &netns2)] {
        Call::new("DEL", id, ns, "eth0", pd.path())
            .run(Some(&node), &exe, &conf)
            .ok();
    }
}

#[test]
fn hairpin_with_promiscuous_mode_is_invalid_config() {
    require_cni_tools();
    let pd = PluginDir::new(Impl::Ours, Impl::Ours);
    let conf = json!({"cniVersion": "1.0.0", "name": "x", "type": "bridge", "hairpinMode": true, "promiscMode": true, "ipam": {}});
    let r = Call::new("ADD", "x", "/run/netns/none", "eth0", pd.path()).run(
        None,
        &pd.path().join("bridge"),
        &conf,
    );
    assert_eq!(r.err_code(), 7);
}

/// With a large store host-local runs alongside the link setup (on its own thread); an
/// ADD whose link setup then fails still leaves no reservation, and a good ADD on that
/// store gets its address.
#[test]
fn a_failed_add_on_a_large_store_releases_its_reservation() {
    require_cni_tools();
    let node = NetNs::new("lsn");
    let pod = NetNs::new("lsp");
    let data = TempDir::new("cnils");
    let pd = PluginDir::new(Impl::Ours, Impl::Ours);
    let exe = pd.path().join("bridge");
    // 300 reservations of other containers: several directory blocks.
    let store = data.path().join("ls");
    std::fs::create_dir_all(&store).expect("store dir");
    for i in 0..300u32 {
        let ip = format!("10.74.{}.{}", 1 + i / 200, 1 + i % 200);
        std::fs::write(store.join(&ip), format!("other{i}\r\neth0")).expect("reservation");
    }
    assert!(std::fs::metadata(&store).expect("stat store").len() > 4096);
    let conf = bridge_conf("1.0.0", "ls", "lsbr0", "10.74.0.0/16", data.path());
    // The pod already has an eth0: the veth create fails after IPAM has started.
    pod.exec_ok(&[
        "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "lspeer",
    ]);
    let netns = pod.path().display().to_string();
    let r = Call::new("ADD", "ls1", &netns, "eth0", pd.path()).run(Some(&node), &exe, &conf);
    assert!(
        r.code != 0 && r.stdout.contains("already exists"),
        "{}",
        r.stdout
    );
    assert_eq!(ip_files(data.path(), "ls").len(), 300);
    assert!(veths(&node).is_empty());
    pod.exec_ok(&["ip", "link", "del", "eth0"]);
    let r = Call::new("ADD", "ls1", &netns, "eth0", pd.path())
        .run(Some(&node), &exe, &conf)
        .ok();
    let addr = r["ips"][0]["address"]
        .as_str()
        .expect("address")
        .to_string();
    assert_eq!(ip_files(data.path(), "ls").len(), 301, "{addr}");
    Call::new("DEL", "ls1", &netns, "eth0", pd.path())
        .run(Some(&node), &exe, &conf)
        .ok();
    assert_eq!(ip_files(data.path(), "ls").len(), 300);
}

/// macspoofchk: the pod's port lets through only frames from the MAC the ADD reported
/// (nftables, bridge family, in the reference's layout and names); DEL takes the rules
/// away, and each implementation's DEL removes what the other's ADD made.
#[test]
fn macspoofchk_drops_frames_from_another_mac() {
    require_cni_tools();
    let node = NetNs::new("msn");
    let pod = NetNs::new("msp");
    let data = TempDir::new("cnims");
    let ours = PluginDir::new(Impl::Ours, Impl::Ours);
    let reference = PluginDir::new(Impl::Reference, Impl::Ours);
    let mut conf = bridge_conf("1.0.0", "ms", "msbr0", "10.76.0.0/24", data.path());
    conf["ipMasq"] = json!(false);
    conf["macspoofchk"] = json!(true);
    let netns = pod.path().display().to_string();
    let table = |node: &NetNs| node.exec_ok(&["nft", "list", "table", "bridge", "nat"]);
    let call = |verb: &str, id: &str, ifname: &str, pd: &PluginDir| {
        Call::new(verb, id, &netns, ifname, pd.path())
            .run(Some(&node), &pd.path().join("bridge"), &conf)
            .ok()
    };
    let r = call("ADD", "ms1", "eth0", &ours);
    let host = r["interfaces"][1]["name"].as_str().expect("host veth");
    let mac = r["interfaces"][2]["mac"]
        .as_str()
        .expect("pod mac")
        .to_string();
    let rules = table(&node);
    for want in [
        format!("iifname \"{host}\" jump cni-br-iface-ms1-eth0 comment \"macspoofchk-ms1-eth0\""),
        "jump cni-br-iface-ms1-eth0-mac comment".to_string(),
        format!("ether saddr {mac} return comment"),
        "drop comment \"macspoofchk-ms1-eth0\"".to_string(),
    ] {
        assert!(rules.contains(&want), "lacks {want:?}: {rules}");
    }
    let ping = |pod: &NetNs| {
        pod.exec(&["ping", "-c1", "-W1", "10.76.0.1"])
            .status
            .success()
    };
    assert!(ping(&pod), "the pod's own MAC passes");
    // Another source MAC on the same port: dropped before the bridge sees it (the ARP
    // request or the echo request, whichever goes first).
    pod.exec_ok(&["ip", "link", "set", "eth0", "address", "02:00:00:00:76:99"]);
    pod.exec_ok(&["ip", "neigh", "flush", "dev", "eth0"]);
    assert!(!ping(&pod), "a spoofed MAC got through");
    pod.exec_ok(&["ip", "link", "set", "eth0", "address", &mac]);
    assert!(ping(&pod), "the pod's own MAC passes again");

    // The reference's DEL removes what our ADD made...
    call("DEL", "ms1", "eth0", &reference);
    let rules = table(&node);
    assert!(!rules.contains("cni-br-iface-"), "{rules}");
    // ...and ours what the reference's ADD made.
    call("ADD", "ms2", "eth0", &reference);
    assert!(table(&node).contains("cni-br-iface-ms2-eth0-mac"));
    call("DEL", "ms2", "eth0", &ours);
    let rules = table(&node);
    assert!(!rules.contains("cni-br-iface-"), "{rules}");
    // The single chain older nestbox versions made (named by a hash of the id) goes too.
    let sum = std::process::Command::new("sh")
        .args(["-c", "printf %s ms3-eth0 | sha256sum"])
        .output()
        .expect("sha256sum");
    let legacy = format!(
        "cni-br-iface-{}",
        &String::from_utf8_lossy(&sum.stdout)[..16]
    );
    let script = format!(
        "add chain bridge nat {legacy}\nadd rule bridge nat {legacy} drop\n\
         add rule bridge nat PREROUTING iifname \"msold\" jump {legacy} comment \"{legacy}\"\n"
    );
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", node.name(), "nft", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin
                .take()
                .expect("stdin")
                .write_all(script.as_bytes())?;
            c.wait()
        })
        .expect("nft");
    assert!(out.success());
    assert!(table(&node).contains(&legacy));
    call("DEL", "ms3", "eth0", &ours);
    let rules = table(&node);
    assert!(!rules.contains("cni-br-iface-"), "{rules}");
    // An interface name nft's script syntax cannot carry in a chain name: hashed names.
    call("ADD", "ms4", "e@th1", &ours);
    let rules = table(&node);
    assert!(
        rules.contains("jump cni-br-iface-") && !rules.contains('@'),
        "{rules}"
    );
    call("DEL", "ms4", "e@th1", &ours);
    let rules = table(&node);
    assert!(!rules.contains("cni-br-iface-"), "{rules}");
    assert!(store_files(data.path(), "ms").is_empty());
}
