//! nestbox-netdiag against a real two-node VXLAN lab (node and pod netns, our bridge and
//! overlay plugins, etcd leases): each test injects one fault inside the lab and checks
//! that doctor names it (FAIL or WARN on that check, exit code != 0), that drops reports
//! the pod's dropped packets with the kernel's reason, and that trace shows where a flow
//! stops; a healthy lab passes every check.

mod netdiag_common;

use netdiag_common::*;
use serde_json::Value;

/// The single failing or warning check with `id` (panics with the report otherwise).
fn assert_flagged<'a>(r: &'a Value, id: &str, status: &str) -> &'a Value {
    let c = checks(r, id);
    let hit = c.iter().find(|c| c["status"] == status);
    hit.unwrap_or_else(|| {
        panic!(
            "expected {status} on {id}; not passed: {:#?}",
            not_passed(r)
        )
    })
}

fn trace_flows(out: &str) -> Vec<Value> {
    let v: Value = serde_json::from_str(out).unwrap_or_else(|e| panic!("trace JSON ({e}): {out}"));
    v["flows"].as_array().cloned().unwrap_or_default()
}

/// The flows of `trace --json` whose text contains `pat`.
fn flows_matching(out: &str, pat: &str) -> Vec<Value> {
    trace_flows(out)
        .into_iter()
        .filter(|f| f["flow"].as_str().is_some_and(|s| s.contains(pat)))
        .collect()
}

fn seen_hops(f: &Value) -> Vec<String> {
    f["hops"]
        .as_array()
        .map(|h| {
            h.iter()
                .filter(|h| h["seen"] == true)
                .map(|h| {
                    format!(
                        "{} {}",
                        h["hop"].as_str().unwrap_or(""),
                        h["dir"].as_str().unwrap_or("")
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn healthy_lab_passes_every_check_and_trace_sees_every_hop() {
    let lab = Lab::new();
    for i in 0..2 {
        for p in &lab.pods[i] {
            let (code, r) = lab.doctor(i, &p.name);
            assert_eq!(code, 0, "{}: {:#?}", p.name, not_passed(&r));
            assert_eq!(r["summary"]["fail"], 0);
            assert_eq!(r["target"], p.name.as_str());
            // Every kind of check ran, the peer ones included.
            for id in [
                "pod-link",
                "pod-addr",
                "pod-route",
                "veth-up",
                "veth-bridge",
                "veth-hairpin",
                "bridge-addr",
                "ip-forward",
                "rp-filter",
                "forward-policy",
                "nft-drop",
                "masquerade",
                "mtu-chain",
                "peer-route",
                "peer-neigh",
                "peer-fdb",
                "peer-underlay",
            ] {
                assert!(!checks(&r, id).is_empty(), "{}: no {id} check", p.name);
            }
        }
    }
    // The same pod by container id and by netns path; text and graph outputs.
    let id = lab.c.nodes[0].pods[0].id.clone();
    let out = lab
        .cmd(
            0,
            &[
                "doctor",
                &id,
                "--etcd-endpoints",
                &lab.c.etcd.url(),
                "--subnet-file",
                lab.c.nodes[0].env_path().to_str().unwrap(),
            ],
        )
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("PASS veth") && text.contains("summary: ") && text.contains(" 0 failed"),
        "{text}"
    );
    let ns = lab.pods[0][0].netns.display().to_string();
    let out = lab
        .cmd(
            0,
            &[
                "doctor",
                &ns,
                "--dot",
                "--subnet-file",
                lab.c.nodes[0].env_path().to_str().unwrap(),
            ],
        )
        .output()
        .unwrap();
    let dot = String::from_utf8_lossy(&out.stdout);
    assert!(
        dot.starts_with("digraph")
            && dot.contains("pod -> veth")
            && dot.contains("palegreen")
            && !dot.contains("tomato"),
        "{dot}"
    );

    // trace: a ping from n0p0 to n1p0 crosses every hop of node 0 going out.
    let src = &lab.pods[0][0];
    let dst = &lab.pods[1][0];
    let mut t = lab.start(0, &["trace", "--pod", &src.name, "--json"]);
    pings(lab.pod_ns(0, 0), &dst.ip, &[]);
    let (code, out) = t.stop();
    assert_eq!(code, 0, "{out}\n{}", t.stderr());
    // One flow per ping (each has its own echo id), each seen at every hop, and the
    // replies came back the same way.
    for kind in ["echo-request", "echo-reply"] {
        let (a, b) = if kind == "echo-request" {
            (&src.ip, &dst.ip)
        } else {
            (&dst.ip, &src.ip)
        };
        let flows = flows_matching(&out, &format!("{a} > {b} {kind}"));
        assert!(!flows.is_empty(), "{out}");
        for f in flows {
            assert!(f["stops_after"].is_null(), "{f:#}");
            let seen = seen_hops(&f);
            for h in [
                "pod eth0",
                "veth ",
                "bridge ",
                "overlay flannel.1",
                "underlay eth0",
            ] {
                assert!(
                    seen.iter().any(|s| s.starts_with(h)),
                    "{h} not seen: {seen:?}"
                );
            }
        }
    }
}

#[test]
fn host_veth_down_fails_doctor_and_trace_shows_the_flow_stop_at_the_pod() {
    let lab = Lab::new();
    let src = &lab.pods[0][0];
    let dst = &lab.pods[1][0];
    let (_, r) = lab.doctor(0, &src.name);
    let veth = checks(&r, "veth-peer")[0]["found"]
        .as_str()
        .unwrap()
        .to_string();
    lab.node(0).exec_ok(&["ip", "link", "set", &veth, "down"]);

    let (code, r) = lab.doctor(0, &src.name);
    assert_ne!(code, 0);
    let c = assert_flagged(&r, "veth-up", "FAIL");
    assert!(c["subject"].as_str().unwrap().contains(&veth), "{c}");
    assert_flagged(&r, "pod-link", "FAIL"); // the pod's end lost its carrier

    let mut t = lab.start(0, &["trace", "--pod", &src.name, "--json"]);
    pings(lab.pod_ns(0, 0), &dst.ip, &[]);
    let (_, out) = t.stop();
    // The pod tries (ARP for its gateway, or the ping itself) and nothing reaches the veth.
    let tried: Vec<Value> = trace_flows(&out)
        .into_iter()
        .filter(|f| {
            f["flow"].as_str().is_some_and(|s| {
                s.contains(&format!("tell {}", src.ip))
                    || s.contains(&format!("{} > {}", src.ip, dst.ip))
            })
        })
        .collect();
    assert!(!tried.is_empty(), "no flow of the pod seen: {out}");
    for f in &tried {
        let seen = seen_hops(f);
        assert!(seen.iter().all(|s| s.starts_with("pod eth0")), "{seen:?}");
        assert!(
            f["stops_after"]
                .as_str()
                .is_some_and(|s| s.starts_with("pod eth0")),
            "{f:#}"
        );
    }
}

#[test]
fn removed_peer_route_is_named_and_drops_and_trace_show_where_packets_die() {
    let lab = Lab::new();
    let src = &lab.pods[0][0];
    let dst = &lab.pods[1][0];
    let peer_subnet = lease_of_env(&lab.c.nodes[1].env_value("FLANNEL_SUBNET").unwrap());
    lab.node(0).exec_ok(&["ip", "route", "del", &peer_subnet]);

    let (code, r) = lab.doctor(0, &src.name);
    assert_ne!(code, 0);
    let c = assert_flagged(&r, "peer-route", "FAIL");
    assert!(c["subject"].as_str().unwrap().contains(&peer_subnet), "{c}");
    assert!(c["subject"].as_str().unwrap().contains("missing"), "{c}");

    let mut d = lab.start(0, &["drops", "--pod", &src.name, "--json"]);
    let mut t = lab.start(0, &["trace", "--pod", &src.name, "--json"]);
    pings(lab.pod_ns(0, 0), &dst.ip, &[]);
    let ok = nestbox_tests::wait_until(10, || {
        d.drop_events()
            .iter()
            .any(|e| e["pod"] == src.name.as_str() && e["daddr"] == dst.ip.as_str())
    });
    let (_, tout) = t.stop();
    let (_, _) = d.stop();
    assert!(
        ok,
        "no drop of {} > {} reported: {}",
        src.ip,
        dst.ip,
        d.stdout()
    );
    let ev: Vec<Value> = d
        .drop_events()
        .into_iter()
        .filter(|e| e["daddr"] == dst.ip.as_str())
        .collect();
    // No route: the node drops it while routing the packet that came in on the bridge.
    assert!(
        ev.iter().any(|e| e["netns"] == "node"
            && e["reason"].as_str().is_some_and(|r| r.contains("NOROUTES")
                || r.contains("UNREACHABLE")
                || r.contains("NO_ROUTE"))),
        "{ev:#?}"
    );
    let f = flows_matching(&tout, &format!("{} > {} echo-request", src.ip, dst.ip));
    assert!(!f.is_empty(), "{tout}");
    for f in f {
        assert!(
            f["stops_after"]
                .as_str()
                .is_some_and(|s| s.starts_with("bridge")),
            "{f:#}"
        );
    }
}

#[test]
fn mtu_mismatch_is_named_and_drops_reports_the_too_big_packets() {
    let lab = Lab::new();
    let src = &lab.pods[0][0];
    let dst = &lab.pods[1][0];
    let (_, r) = lab.doctor(0, &src.name);
    let veth = checks(&r, "veth-peer")[0]["found"]
        .as_str()
        .unwrap()
        .to_string();
    let bridge = checks(&r, "veth-bridge")[0]["found"]
        .as_str()
        .unwrap()
        .to_string();
    lab.pod_ns(0, 0)
        .exec_ok(&["ip", "link", "set", "eth0", "mtu", "1500"]);
    lab.node(0)
        .exec_ok(&["ip", "link", "set", &veth, "mtu", "1500"]);
    lab.node(0)
        .exec_ok(&["ip", "link", "set", &bridge, "mtu", "1500"]);

    let (code, r) = lab.doctor(0, &src.name);
    assert_ne!(code, 0);
    let c = assert_flagged(&r, "mtu-chain", "FAIL");
    assert!(
        c["found"].as_str().unwrap().contains("flannel.1 1450"),
        "{c}"
    );

    let mut d = lab.start(0, &["drops", "--pod", &src.name, "--json"]);
    // DF, 1472 bytes of payload: a 1500-byte packet for a 1450-byte overlay.
    pings(lab.pod_ns(0, 0), &dst.ip, &["-M", "do", "-s", "1472"]);
    let ok = nestbox_tests::wait_until(10, || {
        d.drop_events().iter().any(|e| e["reason"] == "PKT_TOO_BIG")
    });
    d.stop();
    assert!(ok, "no PKT_TOO_BIG drop: {}", d.stdout());
    let e = d
        .drop_events()
        .into_iter()
        .find(|e| e["reason"] == "PKT_TOO_BIG")
        .unwrap();
    assert_eq!(e["pod"], src.name.as_str());
    assert_eq!(e["saddr"], src.ip.as_str());
    assert!(
        e["location"]
            .as_str()
            .is_some_and(|l| l.starts_with("ip_forward")),
        "{e}"
    );
}

#[test]
fn nft_drop_rule_in_forward_is_named_and_drops_reports_netfilter_drop() {
    let lab = Lab::new();
    let src = &lab.pods[0][0];
    let dst = &lab.pods[1][0];
    let node = lab.node(0);
    node.exec_ok(&["nft", "add", "table", "inet", "ndtest"]);
    node.exec_ok(&[
        "nft",
        "add chain inet ndtest podfilter { type filter hook forward priority 0; policy accept; }",
    ]);
    node.exec_ok(&[
        "nft",
        "add",
        "rule",
        "inet",
        "ndtest",
        "podfilter",
        "ip",
        "saddr",
        &src.ip,
        "counter",
        "drop",
    ]);

    let (code, r) = lab.doctor(0, &src.name);
    assert_ne!(code, 0);
    let c = assert_flagged(&r, "nft-drop", "FAIL");
    let subject = c["subject"].as_str().unwrap();
    assert!(
        subject.contains("inet ndtest podfilter handle")
            && subject.contains(&src.ip)
            && subject.contains("drop"),
        "{c}"
    );
    assert!(
        c["command"]
            .as_str()
            .unwrap()
            .contains("nft -a list chain inet ndtest podfilter"),
        "{c}"
    );
    // The other pod on the node is caught only for its traffic with the first one: a
    // warning, not a failure.
    let (code, r) = lab.doctor(0, &lab.pods[0][1].name);
    assert_eq!(code, 2, "{:#?}", not_passed(&r));
    let c = assert_flagged(&r, "nft-drop", "WARN");
    assert!(c["found"].as_str().unwrap().contains("some of it"), "{c}");

    let mut d = lab.start(0, &["drops", "--pod", &src.name, "--json"]);
    pings(lab.pod_ns(0, 0), &dst.ip, &[]);
    let ok = nestbox_tests::wait_until(10, || {
        d.drop_events()
            .iter()
            .any(|e| e["reason"] == "NETFILTER_DROP")
    });
    d.stop();
    assert!(ok, "no NETFILTER_DROP: {}", d.stdout());
    let e = d
        .drop_events()
        .into_iter()
        .find(|e| e["reason"] == "NETFILTER_DROP")
        .unwrap();
    assert_eq!(e["pod"], src.name.as_str(), "{e}");
    assert_eq!(e["daddr"], dst.ip.as_str(), "{e}");
    // Where depends on the kernel: nf_hook_slow, or nft_do_chain on newer ones.
    assert!(
        e["location"]
            .as_str()
            .is_some_and(|l| l.starts_with("nf_hook_slow") || l.starts_with("nft_do_chain")),
        "{e}"
    );
}

#[test]
fn strict_rp_filter_on_an_asymmetric_path_warns_and_drops_shows_the_reason() {
    let lab = Lab::new();
    let _src = &lab.pods[0][0];
    let dst = &lab.pods[1][0];
    // Node 1 answers node 0's pods directly over the underlay (host-gw style) while node 0
    // still sends through VXLAN: requests arrive on flannel.1, replies leave by eth0.
    let subnet0 = lease_of_env(&lab.c.nodes[0].env_value("FLANNEL_SUBNET").unwrap());
    let n1 = lab.node(1);
    n1.exec_ok(&[
        "ip",
        "route",
        "replace",
        &subnet0,
        "via",
        &lab.c.nodes[0].ip,
        "dev",
        "eth0",
    ]);
    n1.exec_ok(&["sysctl", "-qw", "net.ipv4.conf.all.rp_filter=1"]);
    n1.exec_ok(&["sysctl", "-qw", "net.ipv4.conf.flannel/1.rp_filter=1"]);

    let (code, r) = lab.doctor(1, &dst.name);
    assert_ne!(code, 0);
    let c = assert_flagged(&r, "rp-filter", "WARN");
    assert!(
        c["subject"].as_str().unwrap().contains("flannel.1")
            && c["subject"].as_str().unwrap().contains(&subnet0),
        "{c}"
    );

    let mut d = lab.start(1, &["drops", "--pod", &dst.name, "--json"]);
    pings(lab.pod_ns(0, 0), &dst.ip, &[]);
    let ok = nestbox_tests::wait_until(10, || {
        d.drop_events().iter().any(|e| e["reason"] == "IP_RPFILTER")
    });
    d.stop();
    assert!(ok, "no IP_RPFILTER drop: {}", d.stdout());
    let e = d
        .drop_events()
        .into_iter()
        .find(|e| e["reason"] == "IP_RPFILTER")
        .unwrap();
    assert_eq!(e["pod"], dst.name.as_str(), "{e}");
    assert_eq!(e["interface"], "flannel.1", "{e}");
}

#[test]
fn missing_fdb_entry_is_named() {
    let lab = Lab::new();
    let src = &lab.pods[0][0];
    let (subnet1, lease1) = lab
        .c
        .etcd
        .lease_of(&lab.c.nodes[1].ip)
        .expect("node 1 lease");
    let mac = lease1["BackendData"]["VtepMAC"]
        .as_str()
        .unwrap()
        .to_string();
    lab.node(0).exec_ok(&[
        "bridge",
        "fdb",
        "del",
        &mac,
        "dev",
        "flannel.1",
        "dst",
        &lab.c.nodes[1].ip,
        "self",
    ]);

    let (code, r) = lab.doctor(0, &src.name);
    assert_ne!(code, 0);
    let c = assert_flagged(&r, "peer-fdb", "FAIL");
    assert!(c["subject"].as_str().unwrap().contains(&subnet1), "{c}");
    assert!(c["expected"].as_str().unwrap().contains(&mac), "{c}");
    // Only that: route and neighbour are still right.
    for id in ["peer-route", "peer-neigh"] {
        assert!(
            checks(&r, id).iter().all(|c| c["status"] == "PASS"),
            "{id}: {:#?}",
            not_passed(&r)
        );
    }
}
