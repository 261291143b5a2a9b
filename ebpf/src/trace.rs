//! `trace`: tc programs (TCX links, or clsact filters on older kernels) on both
//! directions of every hop of the watched pods' paths — the pod's own interface (inside
//! its netns), its host veth, the bridge, the overlay device and the underlay (where the
//! pod's packets travel inside VXLAN) — counting each flow per hop in a map and sending
//! an event the first time a flow shows up at a hop. At the end every flow is printed
//! with the hops that saw it, in path order, and the hop after which it was no longer
//! seen. Everything is detached when the process ends, however it ends: a TCX link
//! lives only as long as its file descriptor.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};

use aya::maps::{HashMap, MapData, RingBuf};
use aya::programs::{SchedClassifier, TcAttachType};
use nestbox_cni::net::netlink::{Link, Netlink};
use nestbox_cni::net::netns::NetNs;
use serde_json::json;

use crate::bpf::{self, read_record, BpfError, FlowEvent, FlowKey, FlowStats};
use crate::events::{current_netns_ino, describe, Names, Stop};
use crate::target::{netns_inode, Target};

pub struct Options {
    pub json: bool,
    pub vxlan_port: u16,
    /// Print each flow the first time a hop sees it.
    pub live: bool,
}

/// Where a hop sits on the path (the order of a packet leaving a pod).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum HopKind {
    Pod,
    Veth,
    Bridge,
    Overlay,
    Underlay,
}

#[derive(Debug, Clone)]
pub struct TraceHop {
    pub kind: HopKind,
    pub netns_ino: u32,
    pub ifindex: u32,
    pub label: String,
    /// The pod the hop belongs to (pod and veth hops).
    pub pod: Option<usize>,
}

/// A pod's IPv4 addresses: IPAM's when known, else what its interface holds.
pub fn pod_addrs(t: &Target) -> Vec<Ipv4Addr> {
    let mut out: Vec<Ipv4Addr> = t
        .ips
        .iter()
        .filter_map(|a| match a.ip() {
            IpAddr::V4(v) => Some(v),
            _ => None,
        })
        .collect();
    if out.is_empty() {
        if let Ok(ns) = NetNs::open(&t.netns.display().to_string()) {
            let got = ns.run(|| -> std::io::Result<Vec<Ipv4Addr>> {
                let mut nl = Netlink::new()?;
                let Some(l) = nl.link_by_name(&t.ifname)? else {
                    return Ok(Vec::new());
                };
                Ok(nl
                    .addrs(l.index)?
                    .into_iter()
                    .filter_map(|a| match a.ip() {
                        IpAddr::V4(v) => Some(v),
                        _ => None,
                    })
                    .collect())
            });
            if let Ok(Ok(v)) = got {
                out = v;
            }
        }
    }
    out
}

/// The hops of the pods' paths as they are now.
pub fn hops(targets: &[Target]) -> anyhow::Result<Vec<TraceHop>> {
    let node_ino = current_netns_ino()?;
    let mut nl = Netlink::new()?;
    let links = nl.links()?;
    let by_index = |i: u32| links.iter().find(|l| l.index == i);
    let mut out = Vec::new();
    let mut bridges: Vec<&Link> = Vec::new();
    for (pi, t) in targets.iter().enumerate() {
        let ino = netns_inode(&t.netns)
            .map_err(|e| anyhow::anyhow!("netns of {}: {} ({e})", t.name, t.netns.display()))?;
        let ns = NetNs::open(&t.netns.display().to_string())?;
        let eth = ns.run(|| Netlink::new()?.link_by_name(&t.ifname))??;
        let Some(eth) = eth else {
            anyhow::bail!("{} has no {} in {}", t.name, t.ifname, t.netns.display());
        };
        out.push(TraceHop {
            kind: HopKind::Pod,
            netns_ino: ino,
            ifindex: eth.index,
            label: format!("pod {} ({})", t.ifname, t.name),
            pod: Some(pi),
        });
        let veth = eth
            .peer
            .and_then(by_index)
            .filter(|l| l.kind.as_deref() == Some("veth") && l.peer == Some(eth.index));
        if let Some(v) = veth {
            out.push(TraceHop {
                kind: HopKind::Veth,
                netns_ino: node_ino,
                ifindex: v.index,
                label: format!("veth {}", v.name),
                pod: Some(pi),
            });
            if let Some(b) = v.master.and_then(by_index) {
                if !bridges.iter().any(|x| x.index == b.index) {
                    bridges.push(b);
                }
            }
        }
    }
    if targets.is_empty() {
        // The whole node: every bridge and its ports.
        for b in links.iter().filter(|l| l.kind.as_deref() == Some("bridge")) {
            bridges.push(b);
            for p in links.iter().filter(|l| l.master == Some(b.index)) {
                out.push(TraceHop {
                    kind: HopKind::Veth,
                    netns_ino: node_ino,
                    ifindex: p.index,
                    label: format!("veth {}", p.name),
                    pod: None,
                });
            }
        }
    }
    for b in bridges {
        out.push(TraceHop {
            kind: HopKind::Bridge,
            netns_ino: node_ino,
            ifindex: b.index,
            label: format!("bridge {}", b.name),
            pod: None,
        });
    }
    let overlay = links
        .iter()
        .find(|l| l.kind.as_deref() == Some("vxlan") && l.name.starts_with("flannel."))
        .or_else(|| links.iter().find(|l| l.kind.as_deref() == Some("vxlan")));
    if let Some(o) = overlay {
        out.push(TraceHop {
            kind: HopKind::Overlay,
            netns_ino: node_ino,
            ifindex: o.index,
            label: format!("overlay {}", o.name),
            pod: None,
        });
        if let Some(u) = o.vxlan.as_ref().and_then(|x| x.underlay).and_then(by_index) {
            out.push(TraceHop {
                kind: HopKind::Underlay,
                netns_ino: node_ino,
                ifindex: u.index,
                label: format!("underlay {}", u.name),
                pod: None,
            });
        }
    }
    Ok(out)
}

fn prog_err(name: &str) -> impl FnOnce(aya::programs::ProgramError) -> BpfError + '_ {
    move |source| BpfError::Program {
        name: name.to_string(),
        source,
    }
}

/// One flow (both directions kept apart) with what each hop counted.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Flow {
    kind: u8,
    proto: u8,
    saddr: u32,
    daddr: u32,
    sport: u16,
    dport: u16,
}

impl Flow {
    fn of(k: &FlowKey) -> Flow {
        Flow {
            kind: k.kind,
            proto: k.proto,
            saddr: k.saddr,
            daddr: k.daddr,
            sport: k.sport,
            dport: k.dport,
        }
    }
    fn text(&self) -> String {
        describe(
            self.kind, self.proto, self.saddr, self.daddr, self.sport, self.dport,
        )
    }
}

/// Attach, watch until `stop`, then report every flow.
pub fn run(targets: &[Target], opts: &Options, stop: &Stop) -> anyhow::Result<()> {
    let hops = hops(targets)?;
    let node_ino = current_netns_ino()?;
    let mut names = Names::default();
    names.netns.insert(node_ino, "node".into());
    let mut pod_ips: BTreeMap<Ipv4Addr, usize> = BTreeMap::new();
    for (i, t) in targets.iter().enumerate() {
        for a in pod_addrs(t) {
            pod_ips.insert(a, i);
        }
    }
    let mut ebpf = bpf::load_trace(opts.vxlan_port, !targets.is_empty())?;
    {
        let mut addrs: HashMap<_, u32, u32> = HashMap::try_from(
            ebpf.map_mut("addrs")
                .ok_or(BpfError::Missing("addrs".into()))?,
        )
        .map_err(|source| BpfError::Map {
            name: "addrs".into(),
            source,
        })?;
        for (a, i) in &pod_ips {
            addrs
                .insert(bpf::ip_key(*a), *i as u32, 0)
                .map_err(|source| BpfError::Map {
                    name: "addrs".into(),
                    source,
                })?;
        }
    }
    for name in ["trace_ingress", "trace_egress"] {
        let p: &mut SchedClassifier = ebpf
            .program_mut(name)
            .ok_or(BpfError::Missing(name.into()))?
            .try_into()
            .map_err(prog_err(name))?;
        p.load().map_err(prog_err(name))?;
    }
    // Attach in each hop's netns (an ifindex means something only there).
    for h in &hops {
        let ns = match h.pod {
            Some(i) if h.kind == HopKind::Pod => {
                Some(NetNs::open(&targets[i].netns.display().to_string())?)
            }
            _ => None,
        };
        for (name, dir) in [
            ("trace_ingress", TcAttachType::Ingress),
            ("trace_egress", TcAttachType::Egress),
        ] {
            let p: &mut SchedClassifier = ebpf
                .program_mut(name)
                .ok_or(BpfError::Missing(name.into()))?
                .try_into()
                .map_err(prog_err(name))?;
            let iface = attach_name(h, ns.as_ref())?;
            let r = match &ns {
                Some(ns) => ns.run(|| attach(p, &iface, dir))?,
                None => attach(p, &iface, dir),
            };
            r.map_err(|e| anyhow::anyhow!("attaching to {} ({:?}): {e}", h.label, dir))?;
        }
        names
            .ifaces
            .insert((h.netns_ino, h.ifindex), h.label.clone());
    }
    let mut ring = RingBuf::try_from(
        ebpf.take_map("flow_events")
            .ok_or(BpfError::Missing("flow_events".into()))?,
    )
    .map_err(|source| BpfError::Map {
        name: "flow_events".into(),
        source,
    })?;
    eprintln!(
        "nestbox-netdiag: tracing {} hops: {} (Ctrl-C to stop)",
        hops.len(),
        hops.iter()
            .map(|h| h.label.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );

    let stdout = std::io::stdout();
    while !stop.stopped() {
        stop.wait_readable(&ring);
        while let Some(item) = ring.next() {
            let Some(e) = read_record::<FlowEvent>(&item) else {
                continue;
            };
            drop(item);
            if opts.live && !opts.json {
                let mut out = stdout.lock();
                let _ = writeln!(
                    out,
                    "seen {} at {} {}{}",
                    Flow::of(&e.key).text(),
                    names.iface(e.key.netns_ino, e.key.ifindex),
                    if e.key.dir == 0 { "ingress" } else { "egress" },
                    if e.key.encap == 1 {
                        " (inside VXLAN)"
                    } else {
                        ""
                    }
                );
                let _ = out.flush();
            }
        }
    }
    let flows: HashMap<&MapData, FlowKey, FlowStats> = HashMap::try_from(
        ebpf.map("flows").ok_or(BpfError::Missing("flows".into()))?,
    )
    .map_err(|source| BpfError::Map {
        name: "flows".into(),
        source,
    })?;
    let mut by_flow: BTreeMap<Flow, Vec<(FlowKey, FlowStats)>> = BTreeMap::new();
    for kv in flows.iter().flatten() {
        by_flow.entry(Flow::of(&kv.0)).or_default().push(kv);
    }
    let report = summarize(&by_flow, &hops, &pod_ips, targets);
    if opts.json {
        println!(
            "{}",
            json!({ "hops": hops.iter().map(|h| h.label.clone()).collect::<Vec<_>>(), "flows": report })
        );
    } else {
        print_text(&report);
    }
    Ok(())
}

fn attach_name(h: &TraceHop, ns: Option<&NetNs>) -> anyhow::Result<String> {
    let find = || -> std::io::Result<Option<String>> {
        Ok(Netlink::new()?
            .links()?
            .into_iter()
            .find(|l| l.index == h.ifindex)
            .map(|l| l.name))
    };
    let name = match ns {
        Some(ns) => ns.run(find)??,
        None => find()?,
    };
    name.ok_or_else(|| anyhow::anyhow!("{} is gone", h.label))
}

fn attach(
    p: &mut SchedClassifier,
    iface: &str,
    dir: TcAttachType,
) -> Result<(), aya::programs::ProgramError> {
    // Before TCX (Linux 6.6) a classifier needs the clsact qdisc; an existing one is fine.
    let _ = aya::programs::tc::qdisc_add_clsact(iface);
    p.attach(iface, dir).map(|_| ())
}

/// The hops a flow should cross, in order, given which pod sent or receives it.
fn expected_path(
    f: &Flow,
    hops: &[TraceHop],
    pod_ips: &BTreeMap<Ipv4Addr, usize>,
) -> Vec<(usize, u8)> {
    let src = pod_ips.get(&bpf::ip(f.saddr)).copied();
    let dst = pod_ips.get(&bpf::ip(f.daddr)).copied();
    // Does the flow stay on the node's bridge (both ends in one bridge subnet)?
    let local = src.is_some() && dst.is_some();
    let mut path = Vec::new();
    let hop_of = |kind: HopKind, pod: Option<usize>| {
        hops.iter()
            .position(|h| h.kind == kind && (pod.is_none() || h.pod == pod))
    };
    if let Some(s) = src {
        path.extend(hop_of(HopKind::Pod, Some(s)).map(|i| (i, 1)));
        path.extend(hop_of(HopKind::Veth, Some(s)).map(|i| (i, 0)));
        if !local && f.kind == bpf::PKT_IPV4 {
            path.extend(hop_of(HopKind::Bridge, None).map(|i| (i, 0)));
            path.extend(hop_of(HopKind::Overlay, None).map(|i| (i, 1)));
            path.extend(hop_of(HopKind::Underlay, None).map(|i| (i, 1)));
        }
    }
    if let Some(d) = dst {
        if src.is_none() && f.kind == bpf::PKT_IPV4 {
            path.extend(hop_of(HopKind::Underlay, None).map(|i| (i, 0)));
            path.extend(hop_of(HopKind::Overlay, None).map(|i| (i, 0)));
            path.extend(hop_of(HopKind::Bridge, None).map(|i| (i, 1)));
        }
        path.extend(hop_of(HopKind::Veth, Some(d)).map(|i| (i, 1)));
        path.extend(hop_of(HopKind::Pod, Some(d)).map(|i| (i, 0)));
    }
    path
}

fn summarize(
    by_flow: &BTreeMap<Flow, Vec<(FlowKey, FlowStats)>>,
    hops: &[TraceHop],
    pod_ips: &BTreeMap<Ipv4Addr, usize>,
    targets: &[Target],
) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    for (f, seen) in by_flow {
        let at = |hop: &TraceHop, dir: u8| {
            seen.iter()
                .find(|(k, _)| {
                    k.netns_ino == hop.netns_ino && k.ifindex == hop.ifindex && k.dir == dir
                })
                .map(|(_, s)| *s)
        };
        let mut rows = Vec::new();
        let path = expected_path(f, hops, pod_ips);
        let mut last_seen: Option<String> = None;
        let mut stopped_after: Option<String> = None;
        for (i, dir) in &path {
            let h = &hops[*i];
            let s = at(h, *dir);
            if s.is_some() {
                last_seen = Some(h.label.clone());
            } else if stopped_after.is_none() {
                stopped_after = Some(
                    last_seen
                        .clone()
                        .unwrap_or_else(|| "(before the first hop)".into()),
                );
            }
            rows.push(json!({
                "hop": h.label, "dir": if *dir == 0 { "ingress" } else { "egress" },
                "seen": s.is_some(), "packets": s.map(|s| s.packets).unwrap_or(0), "bytes": s.map(|s| s.bytes).unwrap_or(0),
            }));
        }
        // Hops off the expected path that saw it anyway.
        for (k, s) in seen {
            let on_path = path.iter().any(|(i, d)| {
                hops[*i].netns_ino == k.netns_ino && hops[*i].ifindex == k.ifindex && *d == k.dir
            });
            if on_path {
                continue;
            }
            let label = hops
                .iter()
                .find(|h| h.netns_ino == k.netns_ino && h.ifindex == k.ifindex)
                .map(|h| h.label.clone())
                .unwrap_or_else(|| format!("if{}", k.ifindex));
            rows.push(json!({
                "hop": label, "dir": if k.dir == 0 { "ingress" } else { "egress" },
                "seen": true, "packets": s.packets, "bytes": s.bytes, "off_path": true,
            }));
        }
        let pod = pod_ips
            .get(&bpf::ip(f.saddr))
            .or_else(|| pod_ips.get(&bpf::ip(f.daddr)))
            .and_then(|i| targets.get(*i))
            .map(|t| t.name.clone());
        out.push(json!({
            "flow": f.text(),
            "pod": pod,
            "hops": rows,
            "stops_after": stopped_after,
        }));
    }
    out
}

fn print_text(flows: &[serde_json::Value]) {
    if flows.is_empty() {
        println!("no flows seen");
    }
    for f in flows {
        println!(
            "flow {}{}",
            f["flow"].as_str().unwrap_or(""),
            f["pod"]
                .as_str()
                .map(|p| format!("  (pod {p})"))
                .unwrap_or_default()
        );
        for h in f["hops"].as_array().cloned().unwrap_or_default() {
            let seen = h["seen"].as_bool().unwrap_or(false);
            println!(
                "  {:<6} {:<40} {:<8} {:>8} pkts {:>10} bytes{}",
                if seen { "seen" } else { "never" },
                h["hop"].as_str().unwrap_or(""),
                h["dir"].as_str().unwrap_or(""),
                h["packets"],
                h["bytes"],
                if h["off_path"] == true {
                    "  (off the expected path)"
                } else {
                    ""
                }
            );
        }
        if let Some(s) = f["stops_after"].as_str() {
            println!("  => not seen after {s}");
        }
    }
}
