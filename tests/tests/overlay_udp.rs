//! The UDP backend (flannel's first mode) end to end: three nodes whose pods reach each
//! other through `flannel0` TUN devices and the agents' forwarders; the layout is
//! flannel's (device, /32 address, cluster route, MTU − 28, lease without BackendData);
//! an agent restarted keeps its subnet; oversize DF packets get "message too long"; and
//! the wire format is flannel's: a stand-in flannel node that speaks raw IP-in-UDP to
//! port 8285 gets a pod's echo reply back the same way.

mod overlay_common;

use std::net::{Ipv4Addr, UdpSocket};
use std::time::Duration;

use overlay_common::*;

const UDP_CONF: &str =
    r#"{"Network":"10.244.0.0/16","SubnetLen":24,"Backend":{"Type":"udp","Port":8285}}"#;

fn udp_layout(c: &Cluster, i: usize) -> Result<(), String> {
    let n = &c.nodes[i];
    let (subnet, _) = c.etcd.lease_of(&n.ip).ok_or("no lease")?;
    let l = link_json(n, "flannel0");
    if l["linkinfo"]["info_kind"] != "tun" {
        return Err(format!("flannel0: {l}"));
    }
    if l["mtu"] != 1472 {
        return Err(format!("MTU {}", l["mtu"]));
    }
    let addrs = n.json(&["ip", "-j", "-4", "addr", "show", "dev", "flannel0"]);
    let got: Vec<String> = addrs[0]["addr_info"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|a| format!("{}/{}", a["local"].as_str().unwrap_or(""), a["prefixlen"]))
        .collect();
    let want = format!("{}/32", subnet.split('/').next().unwrap_or(""));
    if got != vec![want.clone()] {
        return Err(format!("addresses {got:?}, want {want}"));
    }
    let r = n.json(&["ip", "-j", "route", "show", "10.244.0.0/16"]);
    if r[0]["dev"] != "flannel0" || r[0].get("gateway").is_some() {
        return Err(format!("cluster route: {r}"));
    }
    Ok(())
}

fn settle(c: &Cluster) {
    for i in 0..c.nodes.len() {
        let mut last = Ok(());
        let ok = eventually(10, || {
            last = udp_layout(c, i);
            last.is_ok()
        });
        assert!(ok, "node {i}: {last:?}\n{}", c.nodes[i].log());
    }
}

#[test]
fn udp_pods_reach_each_other_across_every_pair_and_nodes_hold_flannels_layout() {
    let mut c = Cluster::new(3, UDP_CONF, &["--ip-masq"]);
    c.start_all();
    for i in 0..3 {
        c.add_pod(i, "nestbox-vxlan");
    }
    settle(&c);
    assert_full_mesh(&c);
    for n in &c.nodes {
        assert_eq!(n.env_value("FLANNEL_MTU").as_deref(), Some("1472"));
        let (subnet, _) = c.etcd.lease_of(&n.ip).expect("lease");
        let raw = c
            .etcd
            .raw(&format!("{PREFIX}/subnets/{}", subnet.replace('/', "-")))
            .expect("raw lease");
        assert_eq!(
            raw,
            format!(
                r#"{{"PublicIP":"{}","PublicIPv6":null,"BackendType":"udp"}}"#,
                n.ip
            )
        );
        // The forwarder's socket: the public address, port 8285.
        let ss = n.ns.exec_ok(&["ss", "-uln"]);
        assert!(ss.contains(&format!("{}:8285", n.ip)), "{ss}");
        // The pod MTU follows subnet.env.
        let mtu = n.pods[0].ns.exec_ok(&["cat", "/sys/class/net/eth0/mtu"]);
        assert_eq!(mtu.trim(), "1472");
    }
}

#[test]
fn udp_oversize_df_packets_get_message_too_long_not_a_blackhole() {
    let mut c = Cluster::new(2, UDP_CONF, &[]);
    c.start_all();
    c.add_pod(0, "nestbox-vxlan");
    let target = c.add_pod(1, "nestbox-vxlan");
    settle(&c);
    let src = &c.nodes[0].pods[0].ns;
    let mut out = String::new();
    let ok = eventually(10, || {
        let (ok, o) = ping(src, &target, &["-M", "do", "-s", "1444"]);
        out = o;
        ok
    });
    assert!(ok, "1444-byte DF ping should cross (1472 MTU): {out}");
    let (ok, out) = ping(src, &target, &["-M", "do", "-s", "1445"]);
    assert!(!ok, "1445-byte DF ping must not pass: {out}");
    assert!(out.contains("message too long"), "expected EMSGSIZE: {out}");
    // From the node itself (through flannel0, MTU 1472) the same.
    let (ok, out) = ping(&c.nodes[0].ns, &target, &["-M", "do", "-s", "1445"]);
    assert!(!ok && out.contains("message too long"), "{out}");
    // Large pings without DF are fragmented and pass.
    let (ok, out) = ping(src, &target, &["-s", "4000"]);
    assert!(ok, "fragmented 4000-byte ping: {out}");
}

#[test]
fn udp_agent_restart_keeps_its_subnet_and_traffic_resumes() {
    let mut c = Cluster::new(2, UDP_CONF, &[]);
    c.start_all();
    c.add_pod(0, "nestbox-vxlan");
    let target = c.add_pod(1, "nestbox-vxlan");
    settle(&c);
    let (subnet, _) = c.etcd.lease_of(&c.nodes[1].ip).expect("lease");
    assert!(eventually(10, || ping(
        &c.nodes[0].pods[0].ns,
        &target,
        &[]
    )
    .0));
    c.nodes[1].stop_agent();
    // The TUN goes with the agent (flannel's flannel0 does too).
    assert!(!c.nodes[1]
        .ns
        .exec(&["ip", "link", "show", "flannel0"])
        .status
        .success());
    let url = c.etcd.url();
    c.nodes[1].start_agent(&url);
    settle(&c);
    let (subnet_b, _) = c
        .etcd
        .lease_of(&c.nodes[1].ip)
        .expect("lease after restart");
    assert_eq!(subnet_b, subnet);
    assert_eq!(c.etcd.leases().len(), 2);
    let mut out = String::new();
    let ok = eventually(10, || {
        let (ok, o) = ping(&c.nodes[0].pods[0].ns, &target, &[]);
        out = o;
        ok
    });
    assert!(
        ok,
        "no traffic after the restart: {out}\n{}",
        c.nodes[1].log()
    );
}

/// An ICMP echo request from `src` to `dst` (IPv4 header + ICMP, checksums filled).
fn echo_request(src: Ipv4Addr, dst: Ipv4Addr, id: u16, seq: u16) -> Vec<u8> {
    let payload = b"nestbox-udp-wire";
    let total = 20 + 8 + payload.len();
    let mut p = vec![0u8; total];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[6] = 0x40; // DF
    p[8] = 64;
    p[9] = 1;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    let c = csum(&p[..20]);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    p[20] = 8;
    p[24..26].copy_from_slice(&id.to_be_bytes());
    p[26..28].copy_from_slice(&seq.to_be_bytes());
    p[28..].copy_from_slice(payload);
    let c = csum(&p[20..]);
    p[22..24].copy_from_slice(&c.to_be_bytes());
    p
}

fn csum(d: &[u8]) -> u16 {
    let mut s: u32 = 0;
    for c in d.chunks(2) {
        s += u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32;
    }
    while s >> 16 != 0 {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

/// A UDP socket bound inside `ns` (made on a thread that enters the netns; the socket
/// keeps its namespace afterwards).
fn socket_in(ns: &nestbox_tests::NetNs, addr: &str) -> UdpSocket {
    let path = ns.path();
    let addr = addr.to_string();
    std::thread::spawn(move || {
        let f = std::fs::File::open(&path).expect("open netns");
        nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        UdpSocket::bind(&addr).expect("bind in netns")
    })
    .join()
    .expect("socket thread")
}

#[test]
fn udp_wire_format_is_flannels_raw_ip_in_udp_on_8285() {
    let mut c = Cluster::new(1, UDP_CONF, &[]);
    // A flannel UDP node stand-in: its lease (flannel's JSON), its socket on 8285.
    let fake_ip = "192.168.77.60";
    c.etcd.put(
        &format!("{PREFIX}/subnets/10.244.200.0-24"),
        &format!(r#"{{"PublicIP":"{fake_ip}","PublicIPv6":null,"BackendType":"udp"}}"#),
    );
    let fake = c.add_host(fake_ip, "pfk");
    c.start_all();
    let pod = c.add_pod(0, "nestbox-vxlan");
    settle(&c);
    let sock = socket_in(&fake, &format!("{fake_ip}:8285"));
    sock.set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    let src: Ipv4Addr = "10.244.200.5".parse().unwrap();
    let dst: Ipv4Addr = pod.parse().unwrap();
    let node = format!("{}:8285", c.nodes[0].ip);
    let mut reply = None;
    for seq in 1..=20u16 {
        sock.send_to(&echo_request(src, dst, 0x4e42, seq), &node)
            .expect("send");
        let mut buf = [0u8; 2048];
        if let Ok((n, from)) = sock.recv_from(&mut buf) {
            reply = Some((buf[..n].to_vec(), from));
            break;
        }
    }
    let (p, from) = reply.unwrap_or_else(|| panic!("no reply over UDP\n{}", c.nodes[0].log()));
    assert_eq!(
        from.to_string(),
        node,
        "the reply comes from the node's 8285"
    );
    // The payload is the bare IP packet: the pod's echo reply to the stand-in's address.
    assert_eq!(p[0] >> 4, 4, "an IPv4 packet, no header before it");
    assert_eq!(u16::from_be_bytes([p[2], p[3]]) as usize, p.len());
    assert_eq!(&p[12..16], &dst.octets());
    assert_eq!(&p[16..20], &src.octets());
    assert_eq!((p[9], p[20]), (1, 0), "ICMP echo reply");
    assert_eq!(&p[24..26], &0x4e42u16.to_be_bytes());
    assert_eq!(csum(&p[..20]), 0, "IP checksum");
    assert_eq!(csum(&p[20..]), 0, "ICMP checksum");
    // Datagrams from an address holding no lease are not let in.
    let stranger = c.add_host("192.168.77.61", "pst");
    let s2 = socket_in(&stranger, "192.168.77.61:8285");
    s2.set_read_timeout(Some(Duration::from_millis(300)))
        .expect("timeout");
    s2.send_to(
        &echo_request("10.244.200.6".parse().unwrap(), dst, 1, 1),
        &node,
    )
    .expect("send");
    let mut buf = [0u8; 2048];
    assert!(sock.recv_from(&mut buf).is_err() && s2.recv_from(&mut buf).is_err());
}

/// Run `f` on a thread inside `ns` (sockets made there keep the namespace).
fn in_netns<T: Send + 'static>(
    ns: &nestbox_tests::NetNs,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let path = ns.path();
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).expect("open netns");
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
}

/// A reproducible byte stream (xorshift) and its FNV-1a hash.
fn pattern(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ *b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

fn rx_bytes_packets(node: &Node, dev: &str) -> (u64, u64) {
    let v = node.json(&["ip", "-s", "-j", "link", "show", "dev", dev]);
    let rx = &v[0]["stats64"]["rx"];
    (
        rx["bytes"].as_u64().unwrap_or(0),
        rx["packets"].as_u64().unwrap_or(0),
    )
}

#[test]
fn udp_tcp_streams_arrive_intact_through_segmentation_and_coalescing() {
    use std::io::{Read, Write};
    let mut c = Cluster::new(2, UDP_CONF, &[]);
    c.start_all();
    let ip0 = c.add_pod(0, "nestbox-vxlan");
    let ip1 = c.add_pod(1, "nestbox-vxlan");
    settle(&c);
    assert!(eventually(10, || ping(&c.nodes[0].pods[0].ns, &ip1, &[]).0));
    const LEN: usize = 48 << 20;
    let data = std::sync::Arc::new(pattern(LEN));
    let want = fnv(&data);
    let before = rx_bytes_packets(&c.nodes[1], "flannel0");
    // Both directions at once: bulk data one way, bulk data the other.
    let mut handles = Vec::new();
    for (srv, cli, srv_ip) in [(1usize, 0usize, ip1.clone()), (0, 1, ip0.clone())] {
        let listener = in_netns(&c.nodes[srv].pods[0].ns, move || {
            std::net::TcpListener::bind(format!("{srv_ip}:5201")).expect("listen")
        })
        .join()
        .expect("listener");
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().expect("accept");
            let mut got = Vec::with_capacity(LEN);
            s.read_to_end(&mut got).expect("read");
            got
        });
        let d = std::sync::Arc::clone(&data);
        let to = format!("{}:5201", if srv == 1 { &ip1 } else { &ip0 });
        let client = in_netns(&c.nodes[cli].pods[0].ns, move || {
            let mut s = std::net::TcpStream::connect(&to).expect("connect");
            s.write_all(&d).expect("write");
        });
        handles.push((server, client));
    }
    for (server, client) in handles {
        client.join().expect("client");
        let got = server.join().expect("server");
        assert_eq!(got.len(), LEN, "stream length");
        assert_eq!(fnv(&got), want, "stream content corrupted");
    }
    // The stream reached node 1's TUN as TSO packets, not one write per datagram.
    let after = rx_bytes_packets(&c.nodes[1], "flannel0");
    let (bytes, packets) = (after.0 - before.0, after.1 - before.1);
    assert!(bytes >= LEN as u64, "{bytes} bytes through flannel0");
    assert!(
        bytes / packets.max(1) > 3 * 1472,
        "{packets} packets for {bytes} bytes: no coalescing"
    );
}
