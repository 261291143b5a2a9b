//! `doctor`: walk the path a packet of one pod takes and check every hop against the
//! kernel's state: the pod's netns and interface, its veth and bridge, the node's
//! forwarding settings and firewall, the MTU chain, and for an overlay every peer's
//! route, neighbour and FDB entry against the leases (etcd or Node annotations) and the
//! peer's reachability on the underlay. Node-wide facts are read once ([`NodeFacts`]),
//! so checking every pod of a node costs one netns visit per pod.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnetwork::{IpNetwork, Ipv4Network};
use nestbox_cni::net::netlink::{mac_string, Fdb, Link, Neigh, Netlink, RouteEntry};
use nestbox_cni::net::netns::NetNs;
use nestbox_cni::plugins::overlay::subnet_env::SubnetEnv;
use nestbox_overlayd::config::Lease;
use nestbox_overlayd::subnet::SubnetManager;

use crate::nft::{Applies, Ruleset, Traffic};
use crate::report::{Check, Hop, Report, Status};
use crate::target::Target;

/// Where doctor finds the overlay's intent.
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub subnet_file: PathBuf,
    pub etcd_endpoints: Vec<String>,
    pub etcd_prefix: String,
    pub kubeconfig: Option<PathBuf>,
    /// Send one ICMP echo to every peer's public address.
    pub ping_peers: bool,
}

/// What a peer node should look like from here.
#[derive(Debug, Clone)]
pub struct Peer {
    pub subnet: Ipv4Network,
    pub public_ip: Ipv4Addr,
    pub backend: String,
    pub vtep_mac: Option<String>,
    /// Where the peer list came from (`etcd`, `kube`, `routes`).
    pub source: &'static str,
}

/// The node's side of every path, read once.
pub struct NodeFacts {
    pub links: Vec<Link>,
    pub addrs: BTreeMap<u32, Vec<IpNetwork>>,
    pub routes: Vec<RouteEntry>,
    pub forwarding: Option<bool>,
    pub nft: Option<serde_json::Value>,
    pub nft_error: Option<String>,
    pub subnet_env: Option<SubnetEnv>,
    pub overlay: Option<Link>,
    pub underlay: Option<Link>,
    pub neighbours: Vec<Neigh>,
    pub fdb: Vec<Fdb>,
    pub peers: Vec<Peer>,
    pub lease_error: Option<String>,
    pub own_lease: Option<Ipv4Network>,
    /// Peer public IP → answered an echo.
    pub reachable: BTreeMap<Ipv4Addr, bool>,
    /// `net.bridge.bridge-nf-call-iptables` when br_netfilter is loaded.
    pub br_nf_call_iptables: Option<String>,
    nl: Netlink,
}

fn io_ctx(what: &str) -> impl FnOnce(std::io::Error) -> anyhow::Error + '_ {
    move |e| anyhow::anyhow!("{what}: {e}")
}

impl NodeFacts {
    /// Read the calling thread's netns (the node).
    pub fn gather(opts: &Options) -> anyhow::Result<NodeFacts> {
        let mut nl = Netlink::new().map_err(io_ctx("netlink socket"))?;
        let links = nl.links().map_err(io_ctx("listing links"))?;
        let mut addrs = BTreeMap::new();
        for l in &links {
            if matches!(l.kind.as_deref(), Some("bridge") | Some("vxlan")) || l.name == "eth0" {
                addrs.insert(l.index, nl.addrs(l.index).unwrap_or_default());
            }
        }
        let routes = nl.routes().map_err(io_ctx("listing routes"))?;
        let forwarding = nl.forwarding(false).ok();
        let (nft, nft_error) =
            match nestbox_cni::net::tool::run("nft", &["-j", "list", "ruleset"], None) {
                Ok(out) => match serde_json::from_str(&out) {
                    Ok(v) => (Some(v), None),
                    Err(e) => (None, Some(format!("nft -j output: {e}"))),
                },
                Err(e) => (None, Some(e.to_string())),
            };
        let subnet_env = SubnetEnv::read(&opts.subnet_file).ok().flatten();

        let (mut peers, mut lease_error, mut own_lease) = (Vec::new(), None, None);
        match read_leases(opts) {
            Ok(Some((leases, source))) => {
                for l in leases {
                    peers.push(peer_of(&l, source));
                }
            }
            Ok(None) => {}
            Err(e) => lease_error = Some(e),
        }
        // The overlay device: flannel's (`flannel.<VNI>`), else any VXLAN link.
        let overlay = links
            .iter()
            .find(|l| l.kind.as_deref() == Some("vxlan") && l.name.starts_with("flannel."))
            .or_else(|| links.iter().find(|l| l.kind.as_deref() == Some("vxlan")))
            .cloned();
        let underlay = overlay
            .as_ref()
            .and_then(|o| o.vxlan.as_ref()?.underlay)
            .and_then(|i| links.iter().find(|l| l.index == i))
            .or_else(|| links.iter().find(|l| l.name == "eth0"))
            .cloned();
        let local: Option<Ipv4Addr> = overlay
            .as_ref()
            .and_then(|o| o.vxlan.as_ref()?.local)
            .or_else(|| {
                underlay.as_ref().and_then(|u| {
                    addrs
                        .get(&u.index)
                        .cloned()
                        .or_else(|| nl.addrs(u.index).ok())?
                        .iter()
                        .find_map(|a| match a.ip() {
                            IpAddr::V4(v) => Some(v),
                            _ => None,
                        })
                })
            });
        // Our own lease: the one with our public IP, else the one subnet.env names.
        if let Some(i) = peers
            .iter()
            .position(|p| Some(p.public_ip) == local)
            .or_else(|| {
                let env = subnet_env.as_ref()?;
                peers.iter().position(|p| p.subnet == env.lease())
            })
        {
            own_lease = Some(peers.remove(i).subnet);
        } else if let Some(env) = &subnet_env {
            own_lease = Some(env.lease());
        }
        let (neighbours, fdb) = match &overlay {
            Some(o) => (
                nl.neighbours(o.index).unwrap_or_default(),
                nl.fdb(o.index).unwrap_or_default(),
            ),
            None => (Vec::new(), Vec::new()),
        };
        // Without a lease store, the peers are what the overlay's routes say.
        if peers.is_empty() && lease_error.is_none() {
            if let Some(o) = &overlay {
                for r in routes.iter().filter(|r| r.oif == Some(o.index)) {
                    let (IpNetwork::V4(dst), Some(IpAddr::V4(gw))) = (r.dst, r.gw) else {
                        continue;
                    };
                    let mac = neighbours
                        .iter()
                        .find(|n| n.ip == IpAddr::V4(gw))
                        .map(|n| mac_string(&n.mac));
                    let public = mac.as_ref().and_then(|m| {
                        fdb.iter()
                            .find(|f| &mac_string(&f.mac) == m)?
                            .dst
                            .and_then(|d| match d {
                                IpAddr::V4(v) => Some(v),
                                _ => None,
                            })
                    });
                    peers.push(Peer {
                        subnet: dst,
                        public_ip: public.unwrap_or(Ipv4Addr::UNSPECIFIED),
                        backend: "vxlan".into(),
                        vtep_mac: mac,
                        source: "routes",
                    });
                }
            }
        }
        let br_nf_call_iptables =
            std::fs::read_to_string("/proc/sys/net/bridge/bridge-nf-call-iptables")
                .ok()
                .map(|s| s.trim().to_string());
        let reachable = if opts.ping_peers {
            let targets: Vec<Ipv4Addr> = peers
                .iter()
                .map(|p| p.public_ip)
                .filter(|ip| !ip.is_unspecified())
                .collect();
            crate::ping::echo_all(&targets, Duration::from_millis(1000))
        } else {
            BTreeMap::new()
        };
        Ok(NodeFacts {
            links,
            addrs,
            routes,
            forwarding,
            nft,
            nft_error,
            subnet_env,
            overlay,
            underlay,
            neighbours,
            fdb,
            peers,
            lease_error,
            own_lease,
            reachable,
            br_nf_call_iptables,
            nl,
        })
    }

    fn link(&self, index: u32) -> Option<&Link> {
        self.links.iter().find(|l| l.index == index)
    }

    fn addrs_of(&mut self, index: u32) -> Vec<IpNetwork> {
        if let Some(a) = self.addrs.get(&index) {
            return a.clone();
        }
        let a = self.nl.addrs(index).unwrap_or_default();
        self.addrs.insert(index, a.clone());
        a
    }

    /// The outgoing interface for `dst` (`ip route get`).
    fn route_dev(&mut self, dst: Ipv4Addr) -> Option<u32> {
        self.nl.route_get(IpAddr::V4(dst)).ok().flatten()?.oif
    }

    fn name_of(&self, index: Option<u32>) -> String {
        index
            .and_then(|i| self.link(i))
            .map(|l| l.name.clone())
            .unwrap_or_else(|| "none".into())
    }
}

fn peer_of(l: &Lease, source: &'static str) -> Peer {
    Peer {
        subnet: l.subnet,
        public_ip: l.attrs.public_ip,
        backend: l.attrs.backend_type.clone(),
        vtep_mac: l.vxlan_data().map(|d| d.vtep_mac.to_lowercase()),
        source,
    }
}

/// The leases from etcd or the Kubernetes Nodes, when doctor was told where they are.
fn read_leases(opts: &Options) -> Result<Option<(Vec<Lease>, &'static str)>, String> {
    if !opts.etcd_endpoints.is_empty() {
        let mut m = nestbox_overlayd::subnet::etcd::EtcdSubnetManager::new(
            &opts.etcd_endpoints,
            &opts.etcd_prefix,
            Duration::from_secs(60),
        );
        return m
            .leases()
            .map(|l| Some((l, "etcd")))
            .map_err(|e| format!("reading leases from etcd: {e}"));
    }
    if let Some(kc) = &opts.kubeconfig {
        let mut m = nestbox_overlayd::subnet::kube::KubeSubnetManager::new(
            Some(kc),
            "",
            Path::new("/dev/null"),
        )
        .map_err(|e| format!("kube client: {e}"))?;
        return m
            .leases()
            .map(|l| Some((l, "kube")))
            .map_err(|e| format!("reading leases from the Node annotations: {e}"));
    }
    Ok(None)
}

/// Builds the report.
struct Walk<'a> {
    r: Report,
    target: &'a Target,
    pod_cmd: String,
}

impl Walk<'_> {
    #[allow(clippy::too_many_arguments)]
    fn add(
        &mut self,
        hop: Hop,
        id: &str,
        ok: Status,
        subject: String,
        expected: impl Into<String>,
        found: impl Into<String>,
        command: String,
    ) {
        self.r.checks.push(Check {
            hop,
            id: id.to_string(),
            status: ok,
            subject,
            expected: expected.into(),
            found: found.into(),
            command,
            peer: None,
        });
    }

    fn pass_fail(ok: bool) -> Status {
        if ok {
            Status::Pass
        } else {
            Status::Fail
        }
    }
}

/// How a person runs a command inside the pod's netns.
fn pod_prefix(netns: &Path) -> String {
    match (netns.parent(), netns.file_name()) {
        (Some(d), Some(n)) if d == Path::new("/run/netns") || d == Path::new("/var/run/netns") => {
            format!("ip -n {}", n.to_string_lossy())
        }
        _ => format!("nsenter --net={} ip", netns.display()),
    }
}

fn v4(a: &IpNetwork) -> Option<Ipv4Network> {
    match a {
        IpNetwork::V4(v) => Some(*v),
        _ => None,
    }
}

/// The pod's side, read inside its netns.
struct PodSide {
    link: Option<Link>,
    addrs: Vec<IpNetwork>,
    routes: Vec<RouteEntry>,
}

fn read_pod(netns: &NetNs, ifname: &str) -> std::io::Result<PodSide> {
    let mut nl = netns.netlink()?;
    let link = nl.link_by_name(ifname)?;
    let (addrs, routes) = match &link {
        Some(l) => (nl.addrs(l.index)?, nl.routes()?),
        None => (Vec::new(), Vec::new()),
    };
    Ok(PodSide {
        link,
        addrs,
        routes,
    })
}

/// Check one pod.
pub fn doctor(target: &Target, facts: &mut NodeFacts) -> Report {
    let mut w = Walk {
        r: Report {
            target: target.name.clone(),
            netns: target.netns.display().to_string(),
            hops: Vec::new(),
            checks: Vec::new(),
        },
        target,
        pod_cmd: pod_prefix(&target.netns),
    };
    let ifname = target.ifname.clone();
    let pc = w.pod_cmd.clone();

    // ---- pod ----
    let ns = match NetNs::open(&target.netns.display().to_string()) {
        Ok(ns) => ns,
        Err(e) => {
            w.add(
                Hop::Pod,
                "netns",
                Status::Fail,
                format!("pod netns {}", target.netns.display()),
                "exists",
                format!("{e}"),
                "ip netns list".into(),
            );
            return w.r;
        }
    };
    w.add(
        Hop::Pod,
        "netns",
        Status::Pass,
        format!("pod netns {}", target.netns.display()),
        "exists",
        "exists",
        "ip netns list".into(),
    );
    let pod = match read_pod(&ns, &ifname) {
        Ok(p) => p,
        Err(e) => {
            w.add(
                Hop::Pod,
                "pod-link",
                Status::Fail,
                format!("pod {ifname}"),
                "readable",
                format!("netlink: {e}"),
                format!("{pc} link show {ifname}"),
            );
            return w.r;
        }
    };
    let Some(eth) = pod.link.clone() else {
        w.add(
            Hop::Pod,
            "pod-link",
            Status::Fail,
            format!("pod {ifname}"),
            "present",
            "missing",
            format!("{pc} link show"),
        );
        return w.r;
    };
    w.r.hops
        .push((Hop::Pod, format!("{ifname} ({})", target.name)));
    let state = |l: &Link| match (l.up, l.oper_up) {
        (true, true) => "up".to_string(),
        (true, false) => "up, no carrier".to_string(),
        (false, _) => "down".to_string(),
    };
    w.add(
        Hop::Pod,
        "pod-link",
        Walk::pass_fail(eth.up && eth.oper_up),
        format!("pod {ifname} up"),
        "up",
        state(&eth),
        format!("{pc} link show {ifname}"),
    );

    let pod_v4: Vec<Ipv4Network> = pod.addrs.iter().filter_map(v4).collect();
    let pod_ip = pod_v4.first().map(|a| a.ip());
    let want: Vec<String> = target.ips.iter().map(|a| a.ip().to_string()).collect();
    let have: Vec<String> = pod
        .addrs
        .iter()
        .filter(|a| !is_link_local(a))
        .map(|a| a.to_string())
        .collect();
    let addr_ok = !pod_v4.is_empty()
        && want
            .iter()
            .all(|w| have.iter().any(|h| h.split('/').next() == Some(w)));
    w.add(
        Hop::Pod,
        "pod-addr",
        Walk::pass_fail(addr_ok),
        format!("pod {ifname} address"),
        if want.is_empty() {
            "an IPv4 address".to_string()
        } else {
            format!("{} (IPAM)", want.join(", "))
        },
        if have.is_empty() {
            "none".to_string()
        } else {
            have.join(", ")
        },
        format!("{pc} addr show {ifname}"),
    );

    // The route a pod packet to the cluster (else anywhere) takes.
    let cluster = facts.subnet_env.as_ref().map(|e| e.network);
    let route = pod
        .routes
        .iter()
        .filter(|r| r.oif == Some(eth.index) && r.gw.is_some())
        .filter(|r| match (cluster, r.dst) {
            (Some(c), IpNetwork::V4(d)) => {
                d.prefix() == 0 || (d.contains(c.network()) && d.prefix() <= c.prefix())
            }
            _ => r.dst.prefix() == 0,
        })
        .min_by_key(|r| std::cmp::Reverse(r.dst.prefix()))
        .cloned();
    let gateway = route.as_ref().and_then(|r| r.gw).or(target.gateway);
    let route_ok = route.as_ref().is_some_and(|r| {
        r.gw.is_some_and(|g| {
            r.onlink
                || pod_v4
                    .iter()
                    .any(|a| matches!(g, IpAddr::V4(g) if a.contains(g)))
        })
    });
    w.add(
        Hop::Pod,
        "pod-route",
        Walk::pass_fail(route_ok),
        format!(
            "pod route to {}",
            cluster
                .map(|c| c.to_string())
                .unwrap_or_else(|| "default".into())
        ),
        format!("via a gateway on {ifname}"),
        route
            .as_ref()
            .map(|r| {
                format!(
                    "{} via {}",
                    r.dst,
                    r.gw.map(|g| g.to_string()).unwrap_or_default()
                )
            })
            .unwrap_or_else(|| "no route".into()),
        format!("{pc} route show"),
    );

    // ---- veth ----
    let host = eth
        .peer
        .and_then(|i| facts.link(i).cloned())
        .filter(|l| l.kind.as_deref() == Some("veth") && l.peer == Some(eth.index));
    let Some(veth) = host else {
        w.add(
            Hop::Veth,
            "veth-peer",
            Status::Fail,
            format!("host end of the pod's {ifname}"),
            "a veth in this (node) netns",
            format!(
                "none with index {}",
                eth.peer
                    .map(|p| p.to_string())
                    .unwrap_or_else(|| "?".into())
            ),
            "ip -d link show type veth".into(),
        );
        return w.r;
    };
    w.r.hops.push((Hop::Veth, veth.name.clone()));
    let vn = veth.name.clone();
    w.add(
        Hop::Veth,
        "veth-peer",
        Status::Pass,
        format!("host end of the pod's {ifname}"),
        "a veth in this (node) netns",
        vn.clone(),
        format!("ip -d link show {vn}"),
    );
    w.add(
        Hop::Veth,
        "veth-up",
        Walk::pass_fail(veth.up && veth.oper_up),
        format!("veth {vn} up"),
        "up",
        state(&veth),
        format!("ip link show {vn}"),
    );

    // The right bridge: the config's, else the one holding the pod's gateway.
    let conf_bridge = target
        .net_conf
        .as_ref()
        .and_then(|c| c["bridge"].as_str().map(str::to_string));
    let gw_bridge = gateway.and_then(|g| {
        let bridges: Vec<u32> = facts
            .links
            .iter()
            .filter(|l| l.kind.as_deref() == Some("bridge"))
            .map(|l| l.index)
            .collect();
        bridges
            .into_iter()
            .find(|b| facts.addrs_of(*b).iter().any(|a| a.ip() == g))
            .and_then(|b| facts.link(b))
            .map(|l| l.name.clone())
    });
    let master = veth.master.and_then(|m| facts.link(m).cloned());
    let want_bridge = conf_bridge.clone().or(gw_bridge.clone());
    let bridge_ok = master.as_ref().is_some_and(|m| {
        m.kind.as_deref() == Some("bridge") && want_bridge.as_ref().is_none_or(|b| *b == m.name)
    });
    w.add(
        Hop::Veth,
        "veth-bridge",
        Walk::pass_fail(bridge_ok),
        format!("veth {vn} enslaved to the pod's bridge"),
        want_bridge.clone().unwrap_or_else(|| "a bridge".into()),
        master
            .as_ref()
            .map(|m| m.name.clone())
            .unwrap_or_else(|| "no master".into()),
        format!("ip link show {vn}"),
    );
    let hairpin = crate::nl::hairpin(veth.index).ok().flatten();
    let want_hairpin = target.net_conf.as_ref().and_then(|c| {
        c["hairpinMode"]
            .as_bool()
            .or_else(|| c["delegate"]["hairpinMode"].as_bool())
    });
    let hp_ok = match (want_hairpin, hairpin) {
        (Some(wh), Some(h)) => wh == h,
        _ => true,
    };
    w.add(
        Hop::Veth,
        "veth-hairpin",
        Walk::pass_fail(hp_ok),
        format!("veth {vn} hairpin"),
        want_hairpin
            .map(|h| if h { "on" } else { "off" }.to_string())
            .unwrap_or_else(|| "as configured (no config known)".into()),
        hairpin
            .map(|h| if h { "on" } else { "off" }.to_string())
            .unwrap_or_else(|| "not a bridge port".into()),
        format!("bridge -d link show dev {vn}"),
    );
    w.add(
        Hop::Veth,
        "veth-mtu",
        Walk::pass_fail(veth.mtu == eth.mtu),
        format!("veth {vn} MTU"),
        format!("{} (the pod's {ifname})", eth.mtu),
        veth.mtu.to_string(),
        format!("ip link show {vn}"),
    );

    // ---- bridge ----
    let Some(bridge) = master.filter(|m| m.kind.as_deref() == Some("bridge")) else {
        return w.r;
    };
    let bn = bridge.name.clone();
    w.r.hops.push((Hop::Bridge, bn.clone()));
    w.add(
        Hop::Bridge,
        "bridge-up",
        Walk::pass_fail(bridge.up),
        format!("bridge {bn} up"),
        "up",
        state(&bridge),
        format!("ip link show {bn}"),
    );
    let baddrs = facts.addrs_of(bridge.index);
    let gw_ok = gateway.is_some_and(|g| {
        baddrs
            .iter()
            .any(|a| a.ip() == g && pod_ip.is_none_or(|p| a.contains(IpAddr::V4(p))))
    });
    w.add(
        Hop::Bridge,
        "bridge-addr",
        Walk::pass_fail(gw_ok),
        format!("bridge {bn} holds the pod's gateway"),
        gateway
            .map(|g| g.to_string())
            .unwrap_or_else(|| "the pod's gateway (none found)".into()),
        if baddrs.is_empty() {
            "no address".into()
        } else {
            baddrs
                .iter()
                .filter(|a| !is_link_local(a))
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        },
        format!("ip addr show dev {bn}"),
    );

    // ---- node ----
    match facts.forwarding {
        Some(f) => w.add(
            Hop::Node,
            "ip-forward",
            Walk::pass_fail(f),
            "net.ipv4.ip_forward".into(),
            "1",
            if f { "1" } else { "0" },
            "sysctl net.ipv4.ip_forward".into(),
        ),
        None => w.add(
            Hop::Node,
            "ip-forward",
            Status::Warn,
            "net.ipv4.ip_forward".into(),
            "1",
            "unreadable",
            "sysctl net.ipv4.ip_forward".into(),
        ),
    }
    rp_filter_checks(&mut w, facts, &bridge, pod_ip);
    let mut ifaces = vec![vn.clone(), bn.clone()];
    if let Some(o) = &facts.overlay {
        ifaces.push(o.name.clone());
    }
    if let Some(u) = &facts.underlay {
        ifaces.push(u.name.clone());
    }
    firewall_checks(&mut w, facts, pod_ip, &ifaces);

    // ---- overlay ----
    overlay_checks(&mut w, facts, &eth, &bridge, pod_ip);
    w.r
}

fn is_link_local(a: &IpNetwork) -> bool {
    match a.ip() {
        IpAddr::V6(v) => (v.segments()[0] & 0xffc0) == 0xfe80,
        IpAddr::V4(v) => v.is_link_local(),
    }
}

fn rp_value(iface: &str) -> Option<u32> {
    std::fs::read_to_string(format!("/proc/sys/net/ipv4/conf/{iface}/rp_filter"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Strict reverse-path filtering (1) drops a packet whose source is routed back out of
/// another interface than it came in on: fine on a symmetric path, a silent drop on an
/// asymmetric one. The kernel uses max(all, <iface>).
fn rp_filter_checks(w: &mut Walk, facts: &mut NodeFacts, bridge: &Link, pod_ip: Option<Ipv4Addr>) {
    let all = rp_value("all").unwrap_or(0);
    let mut ifaces = vec![(bridge.clone(), None::<Ipv4Network>)];
    if let Some(o) = facts.overlay.clone() {
        for p in facts.peers.clone() {
            ifaces.push((o.clone(), Some(p.subnet)));
        }
        if facts.peers.is_empty() {
            ifaces.push((o, None));
        }
    }
    let mut reported = std::collections::BTreeSet::new();
    for (link, peer) in ifaces {
        let eff = all.max(rp_value(&link.name).unwrap_or(0));
        let cmd = format!(
            "sysctl net.ipv4.conf.all.rp_filter net.ipv4.conf.{}.rp_filter",
            link.name
        );
        // Which sources arrive on this interface, and where the node routes them back.
        let src = match peer {
            Some(s) => Some(Ipv4Addr::from(u32::from(s.network()) + 1)),
            None if link.kind.as_deref() == Some("bridge") => pod_ip,
            None => None,
        };
        if eff != 1 {
            if reported.insert(link.name.clone()) {
                w.add(
                    Hop::Node,
                    "rp-filter",
                    Status::Pass,
                    format!("rp_filter on {}", link.name),
                    "off (0) or loose (2), or strict on a symmetric path",
                    format!(
                        "{eff}{}",
                        if eff == 2 {
                            " (loose)"
                        } else if eff == 0 {
                            " (off)"
                        } else {
                            ""
                        }
                    ),
                    cmd,
                );
            }
            continue;
        }
        let Some(src) = src else { continue };
        let back = facts.route_dev(src);
        let symmetric = back == Some(link.index);
        let what = peer.map(|p| format!(" for {p}")).unwrap_or_default();
        let found = format!(
            "1 (strict); replies to {src} leave by {}",
            facts.name_of(back)
        );
        let mut c = Check {
            hop: Hop::Node,
            id: "rp-filter".into(),
            status: if symmetric {
                Status::Pass
            } else {
                Status::Warn
            },
            subject: format!("rp_filter on {}{what}", link.name),
            expected: format!(
                "a symmetric path (replies by {}) or rp_filter 0/2",
                link.name
            ),
            found,
            command: format!("{cmd}; ip route get {src}"),
            peer: None,
        };
        if !symmetric {
            c.subject = format!(
                "rp_filter strict on {} with an asymmetric path{what}",
                link.name
            );
        }
        w.r.checks.push(c);
    }
}

fn firewall_checks(w: &mut Walk, facts: &NodeFacts, pod_ip: Option<Ipv4Addr>, ifaces: &[String]) {
    let br_nf = facts.br_nf_call_iptables.clone();
    w.add(
        Hop::Node,
        "br-netfilter",
        Status::Pass,
        "br_netfilter".into(),
        "known interplay with FORWARD",
        match br_nf.as_deref() {
            None => "not loaded: bridged (same-node) pod traffic skips the ip FORWARD chains".to_string(),
            Some("1") => "loaded, bridge-nf-call-iptables=1: bridged pod traffic also passes the ip FORWARD chains".to_string(),
            Some(v) => format!("loaded, bridge-nf-call-iptables={v}"),
        },
        "sysctl net.bridge.bridge-nf-call-iptables".into(),
    );
    let (Some(json), Some(ip)) = (&facts.nft, pod_ip) else {
        w.add(
            Hop::Node,
            "nft-drop",
            Status::Warn,
            "firewall rules".into(),
            "readable",
            facts
                .nft_error
                .clone()
                .unwrap_or_else(|| "no pod address to match".into()),
            "nft list ruleset".into(),
        );
        return;
    };
    let mut peers: Vec<Ipv4Network> = facts.subnet_env.iter().map(|e| e.network).collect();
    if peers.is_empty() {
        if let Some(l) = facts.own_lease {
            peers.push(l);
        }
    }
    let rs = Ruleset::parse(
        json,
        &Traffic {
            pod_ip: ip,
            peers: peers.clone(),
            ifaces: ifaces.to_vec(),
        },
    );
    let policies = rs.forward_policies();
    if policies.is_empty() {
        w.add(
            Hop::Node,
            "forward-policy",
            Status::Pass,
            "FORWARD policy".into(),
            "accept, or drop with an accept for pod traffic",
            "accept (no forward chain with a drop policy)",
            "nft list chains".into(),
        );
    }
    for (c, accepted) in policies {
        w.add(
            Hop::Node,
            "forward-policy",
            Walk::pass_fail(accepted),
            format!("FORWARD policy of {} {} {}", c.family, c.table, c.name),
            "accept, or drop with an accept for pod traffic",
            if accepted {
                "drop, pod traffic accepted by a rule".to_string()
            } else {
                "drop, and no rule accepts the pod's traffic".to_string()
            },
            format!("nft list chain {} {} {}", c.family, c.table, c.name),
        );
    }
    let drops = rs.drops();
    if drops.is_empty() {
        w.add(
            Hop::Node,
            "nft-drop",
            Status::Pass,
            format!("firewall rules for {ip}"),
            "no rule on the path drops or rejects it",
            "none",
            "nft -a list ruleset".into(),
        );
    }
    for r in drops {
        w.add(
            Hop::Node,
            "nft-drop",
            if r.applies == Applies::Full {
                Status::Fail
            } else {
                Status::Warn
            },
            format!("nft rule {}", r.name()),
            format!("no rule on the path drops or rejects {ip}'s traffic"),
            if r.applies == Applies::Full {
                format!("{} on hook {} takes all of it", r.verdict, r.hook)
            } else {
                format!("{} on hook {} takes some of it", r.verdict, r.hook)
            },
            r.command(),
        );
    }
    // Masquerade: required when the config or the overlay asks for it.
    let masq = rs.masquerades();
    let asked = w
        .target
        .net_conf
        .as_ref()
        .and_then(|c| c["ipMasq"].as_bool())
        .unwrap_or(false)
        || facts.subnet_env.as_ref().is_some_and(|e| e.ipmasq);
    let found = if masq.is_empty() {
        "none".to_string()
    } else {
        masq.iter().map(|r| r.name()).collect::<Vec<_>>().join("; ")
    };
    w.add(
        Hop::Node,
        "masquerade",
        Walk::pass_fail(!asked || !masq.is_empty()),
        format!("masquerade of {ip}'s traffic leaving the cluster"),
        if asked {
            "a masquerade rule (ipMasq)".to_string()
        } else {
            "none required (ipMasq off)".to_string()
        },
        found,
        "nft list table inet cni_plugins_masquerade; nft list table ip nestbox-overlay".into(),
    );
}

fn overlay_checks(
    w: &mut Walk,
    facts: &mut NodeFacts,
    eth: &Link,
    bridge: &Link,
    pod_ip: Option<Ipv4Addr>,
) {
    let ifname = w.target.ifname.clone();
    let env = facts.subnet_env.clone();
    if let Some(e) = &facts.lease_error {
        w.add(
            Hop::Overlay,
            "overlay-leases",
            Status::Fail,
            "overlay leases".into(),
            "readable",
            e.clone(),
            "etcdctl get --prefix /coreos.com/network/subnets".into(),
        );
    }
    let Some(overlay) = facts.overlay.clone() else {
        // A bridge-only node (or host-gw): the MTU chain ends at the bridge.
        let mut chain = vec![
            (format!("pod {ifname}"), eth.mtu),
            (format!("bridge {}", bridge.name), bridge.mtu),
        ];
        if env.is_some() || !facts.peers.is_empty() {
            if let Some(u) = &facts.underlay {
                chain.push((format!("underlay {}", u.name), u.mtu));
            }
        }
        mtu_chain(w, &chain, None);
        if !facts.peers.is_empty() {
            for p in facts.peers.clone() {
                peer_checks(w, facts, &p, None);
            }
        }
        return;
    };
    let on = overlay.name.clone();
    w.r.hops.push((Hop::Overlay, on.clone()));
    w.add(
        Hop::Overlay,
        "overlay-up",
        Walk::pass_fail(overlay.up),
        format!("overlay device {on} up"),
        "up",
        if overlay.up { "up" } else { "down" },
        format!("ip -d link show {on}"),
    );
    if let (Some(e), Some(ip)) = (&env, pod_ip) {
        w.add(
            Hop::Overlay,
            "overlay-lease",
            Walk::pass_fail(e.lease().contains(ip)),
            format!("pod address {ip} in the node's lease"),
            e.lease().to_string(),
            ip.to_string(),
            "cat /run/flannel/subnet.env".into(),
        );
    }
    let underlay = facts.underlay.clone();
    let mut chain = vec![
        (format!("pod {ifname}"), eth.mtu),
        (format!("bridge {}", bridge.name), bridge.mtu),
        (format!("overlay {on}"), overlay.mtu),
    ];
    if let Some(u) = &underlay {
        w.r.hops.push((Hop::Underlay, u.name.clone()));
        chain.push((
            format!("underlay {} - 50", u.name),
            u.mtu.saturating_sub(50),
        ));
        w.add(
            Hop::Underlay,
            "underlay-up",
            Walk::pass_fail(u.up && u.oper_up),
            format!("underlay {} up", u.name),
            "up",
            if u.up && u.oper_up { "up" } else { "down" },
            format!("ip link show {}", u.name),
        );
    }
    mtu_chain(w, &chain, env.as_ref().map(|e| (e.mtu, overlay.mtu)));
    for p in facts.peers.clone() {
        peer_checks(w, facts, &p, Some(&overlay));
    }
}

/// pod ≤ bridge ≤ overlay ≤ underlay − 50: a packet the pod may send must fit every
/// later hop, else it is dropped (DF) or fragmented where the MTU shrinks.
fn mtu_chain(w: &mut Walk, chain: &[(String, u32)], env_mtu: Option<(u32, u32)>) {
    let mut bad = Vec::new();
    for pair in chain.windows(2) {
        if pair[0].1 > pair[1].1 {
            bad.push(format!(
                "{} {} > {} {}",
                pair[0].0, pair[0].1, pair[1].0, pair[1].1
            ));
        }
    }
    if let Some((env, dev)) = env_mtu {
        if env != dev {
            bad.push(format!("FLANNEL_MTU {env} != overlay {dev}"));
        }
    }
    let names: Vec<String> = chain.iter().map(|(n, m)| format!("{n} {m}")).collect();
    w.add(
        Hop::Overlay,
        "mtu-chain",
        Walk::pass_fail(bad.is_empty()),
        "MTU chain".into(),
        "each hop's MTU <= the next's",
        if bad.is_empty() {
            names.join(" <= ")
        } else {
            bad.join("; ")
        },
        "ip link show".into(),
    );
}

fn peer_checks(w: &mut Walk, facts: &mut NodeFacts, p: &Peer, overlay: Option<&Link>) {
    let s = p.subnet;
    let tag = Some(s.to_string());
    let add = |w: &mut Walk,
               id: &str,
               st: Status,
               subject: String,
               exp: String,
               found: String,
               cmd: String| {
        w.r.checks.push(Check {
            hop: Hop::Peer,
            id: id.into(),
            status: st,
            subject,
            expected: exp,
            found,
            command: cmd,
            peer: tag.clone(),
        });
    };
    let routes: Vec<RouteEntry> = facts
        .routes
        .iter()
        .filter(|r| r.dst == IpNetwork::V4(s))
        .cloned()
        .collect();
    let underlay = facts.underlay.clone();
    let vxlan = p.backend != "host-gw" && overlay.is_some();
    let (want_gw, want_dev) = if vxlan {
        (IpAddr::V4(s.network()), overlay.map(|o| o.index))
    } else {
        (IpAddr::V4(p.public_ip), underlay.as_ref().map(|u| u.index))
    };
    let want = format!(
        "{s} via {want_gw} dev {}{}",
        facts.name_of(want_dev),
        if vxlan { " onlink" } else { "" }
    );
    let found = if routes.is_empty() {
        "missing".to_string()
    } else {
        routes
            .iter()
            .map(|r| {
                format!(
                    "{} via {} dev {}{}",
                    r.dst,
                    r.gw.map(|g| g.to_string()).unwrap_or_else(|| "-".into()),
                    facts.name_of(r.oif),
                    if r.onlink { " onlink" } else { "" }
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    };
    let ok = routes
        .iter()
        .any(|r| r.gw == Some(want_gw) && r.oif == want_dev);
    let subject = if routes.is_empty() {
        format!("route to peer subnet {s} missing")
    } else {
        format!("route to peer subnet {s}")
    };
    add(
        w,
        "peer-route",
        Walk::pass_fail(ok),
        subject,
        format!("{want} (lease from {})", p.source),
        found,
        format!("ip route show {s}"),
    );
    if vxlan {
        let o = overlay.map(|o| o.name.clone()).unwrap_or_default();
        let mac = p.vtep_mac.clone().unwrap_or_default();
        let n = facts
            .neighbours
            .iter()
            .find(|n| n.ip == IpAddr::V4(s.network()));
        let n_ok = n.is_some_and(|n| n.permanent && (mac.is_empty() || mac_string(&n.mac) == mac));
        add(
            w,
            "peer-neigh",
            Walk::pass_fail(n_ok),
            format!("neighbour {} on {o} for peer subnet {s}", s.network()),
            format!(
                "lladdr {} permanent",
                if mac.is_empty() { "<VTEP MAC>" } else { &mac }
            ),
            n.map(|n| {
                format!(
                    "lladdr {}{}",
                    mac_string(&n.mac),
                    if n.permanent { " permanent" } else { "" }
                )
            })
            .unwrap_or_else(|| "missing".into()),
            format!("ip neigh show dev {o}"),
        );
        let f: Vec<&Fdb> = facts
            .fdb
            .iter()
            .filter(|f| !mac.is_empty() && mac_string(&f.mac) == mac)
            .collect();
        let f_ok = f.iter().any(|f| f.dst == Some(IpAddr::V4(p.public_ip)));
        add(
            w,
            "peer-fdb",
            Walk::pass_fail(f_ok),
            format!(
                "FDB entry for peer subnet {s}{}",
                if f.is_empty() { " missing" } else { "" }
            ),
            format!(
                "{} dst {} self permanent",
                if mac.is_empty() { "<VTEP MAC>" } else { &mac },
                p.public_ip
            ),
            if f.is_empty() {
                "missing".to_string()
            } else {
                f.iter()
                    .map(|f| {
                        format!(
                            "{} dst {}",
                            mac_string(&f.mac),
                            f.dst.map(|d| d.to_string()).unwrap_or_else(|| "-".into())
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("; ")
            },
            format!("bridge fdb show dev {o}"),
        );
    }
    if !p.public_ip.is_unspecified() {
        let dev = facts.route_dev(p.public_ip);
        let via_underlay = underlay.as_ref().is_none_or(|u| dev == Some(u.index));
        let answered = facts.reachable.get(&p.public_ip).copied();
        let ok = via_underlay && answered != Some(false);
        add(
            w,
            "peer-underlay",
            Walk::pass_fail(ok),
            format!("peer {} of {s} reachable on the underlay", p.public_ip),
            format!(
                "routed by {} and answering ICMP echo",
                underlay
                    .as_ref()
                    .map(|u| u.name.clone())
                    .unwrap_or_else(|| "the underlay".into())
            ),
            format!(
                "routed by {}, {}",
                facts.name_of(dev),
                match answered {
                    Some(true) => "answers",
                    Some(false) => "no answer in 1 s",
                    None => "not pinged",
                }
            ),
            format!("ip route get {}; ping -c1 {}", p.public_ip, p.public_ip),
        );
    }
}
