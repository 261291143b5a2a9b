//! `drops`: the kernel's `kfree_skb` tracepoint (a raw tracepoint: no tracefs needed)
//! reporting every packet of the watched pods that the kernel frees as dropped, with
//! the drop reason named from this kernel's BTF, the code location from kallsyms, the
//! packet, the interface and the pod.

use std::collections::BTreeMap;
use std::io::Write;

use aya::maps::{HashMap, RingBuf};
use aya::programs::RawTracePoint;
use nestbox_cni::net::netns::NetNs;
use serde_json::json;

use crate::bpf::{self, read_record, BpfError, DropEvent};
use crate::btf::{DropReasons, Enums};
use crate::events::{current_netns_ino, describe, Names, Stop};
use crate::kallsyms::Kallsyms;
use crate::target::{netns_inode, Target};

pub struct Options {
    pub json: bool,
    pub count: Option<usize>,
    pub vxlan_port: u16,
}

/// A pod index the node itself uses (drops anywhere in the node netns).
const NODE: u32 = u32::MAX;

fn map_err(name: &str) -> impl FnOnce(aya::maps::MapError) -> BpfError + '_ {
    move |source| BpfError::Map {
        name: name.to_string(),
        source,
    }
}

/// Watch until `stop`; returns the number of drops reported.
pub fn run(targets: &[Target], opts: &Options, stop: &Stop) -> anyhow::Result<usize> {
    let enums = Enums::kernel()?;
    let reasons = DropReasons::from_enums(&enums)
        .ok_or_else(|| anyhow::anyhow!("the kernel's BTF has no enum skb_drop_reason"))?;
    let not_dropped = reasons.value("SKB_NOT_DROPPED_YET").unwrap_or(0);
    let consumed = reasons.value("SKB_CONSUMED").unwrap_or(1);
    let syms = Kallsyms::load();

    let node_ino = current_netns_ino()?;
    let mut names = Names::default();
    names.netns.insert(node_ino, "node".into());
    names.read_links(node_ino);

    let mut ebpf = bpf::load_drops(not_dropped, consumed, opts.vxlan_port)?;
    {
        let mut pod_netns: HashMap<_, u32, u32> = HashMap::try_from(
            ebpf.map_mut("pod_netns")
                .ok_or(BpfError::Missing("pod_netns".into()))?,
        )
        .map_err(map_err("pod_netns"))?;
        for (i, t) in targets.iter().enumerate() {
            let ino = netns_inode(&t.netns)
                .map_err(|e| anyhow::anyhow!("netns of {}: {} ({e})", t.name, t.netns.display()))?;
            pod_netns
                .insert(ino, i as u32, 0)
                .map_err(map_err("pod_netns"))?;
            names.netns.insert(ino, t.name.clone());
            if let Ok(ns) = NetNs::open(&t.netns.display().to_string()) {
                let _ = ns.run(|| names.read_links(ino));
            }
        }
        if targets.is_empty() {
            pod_netns
                .insert(node_ino, NODE, 0)
                .map_err(map_err("pod_netns"))?;
        }
    }
    {
        let mut node_netns: HashMap<_, u32, u32> = HashMap::try_from(
            ebpf.map_mut("node_netns")
                .ok_or(BpfError::Missing("node_netns".into()))?,
        )
        .map_err(map_err("node_netns"))?;
        node_netns
            .insert(node_ino, 1, 0)
            .map_err(map_err("node_netns"))?;
    }
    {
        let mut pod_addr: HashMap<_, u32, u32> = HashMap::try_from(
            ebpf.map_mut("pod_addr")
                .ok_or(BpfError::Missing("pod_addr".into()))?,
        )
        .map_err(map_err("pod_addr"))?;
        for (i, t) in targets.iter().enumerate() {
            for a in crate::trace::pod_addrs(t) {
                pod_addr
                    .insert(bpf::ip_key(a), i as u32, 0)
                    .map_err(map_err("pod_addr"))?;
                names.pods.insert(a, t.name.clone());
            }
        }
    }
    let prog: &mut RawTracePoint = ebpf
        .program_mut("on_kfree_skb")
        .ok_or(BpfError::Missing("on_kfree_skb".into()))?
        .try_into()
        .map_err(|source| BpfError::Program {
            name: "on_kfree_skb".into(),
            source,
        })?;
    prog.load().map_err(|source| BpfError::Program {
        name: "on_kfree_skb".into(),
        source,
    })?;
    prog.attach("kfree_skb")
        .map_err(|source| BpfError::Program {
            name: "on_kfree_skb".into(),
            source,
        })?;
    let mut ring = RingBuf::try_from(
        ebpf.take_map("drop_events")
            .ok_or(BpfError::Missing("drop_events".into()))?,
    )
    .map_err(map_err("drop_events"))?;

    let watched: Vec<String> = if targets.is_empty() {
        vec!["the node netns".into()]
    } else {
        targets.iter().map(|t| t.name.clone()).collect()
    };
    eprintln!(
        "nestbox-netdiag: watching drops of {} (Ctrl-C to stop)",
        watched.join(", ")
    );

    let mut total = 0usize;
    let mut summary: BTreeMap<(String, String), usize> = BTreeMap::new();
    let stdout = std::io::stdout();
    'outer: while !stop.stopped() {
        stop.wait_readable(&ring);
        while let Some(item) = ring.next() {
            let Some(e) = read_record::<DropEvent>(&item) else {
                continue;
            };
            drop(item);
            let pod = if e.pod == NODE {
                "node".to_string()
            } else {
                targets
                    .get(e.pod as usize)
                    .map(|t| t.name.clone())
                    .unwrap_or_else(|| "?".into())
            };
            let reason = reasons.name(e.reason);
            let location = syms.symbolize(e.location);
            let ifname = {
                let n = e
                    .ifname
                    .iter()
                    .position(|&c| c == 0)
                    .unwrap_or(e.ifname.len());
                let n = String::from_utf8_lossy(&e.ifname[..n]).into_owned();
                if n.is_empty() {
                    names.iface(e.netns_ino, e.ifindex)
                } else {
                    n
                }
            };
            let packet = describe(e.kind, e.proto, e.saddr, e.daddr, e.sport, e.dport);
            let netns = names.netns(e.netns_ino);
            let mut out = stdout.lock();
            if opts.json {
                let v = json!({
                    "pod": pod, "reason": reason, "reason_code": e.reason, "location": location,
                    "netns": netns, "netns_inode": e.netns_ino, "interface": ifname, "ifindex": e.ifindex,
                    "packet": packet, "saddr": bpf::ip(e.saddr).to_string(), "daddr": bpf::ip(e.daddr).to_string(),
                    "protocol": e.proto, "sport": u16::from_be(e.sport), "dport": u16::from_be(e.dport),
                    "encapsulated": e.encap == 1, "len": e.len,
                });
                let _ = writeln!(out, "{v}");
            } else {
                let _ = writeln!(
                    out,
                    "DROP pod={pod} reason={reason} at={location} netns={netns} dev={ifname} {packet}{} len={}",
                    if e.encap == 1 { " (inside VXLAN)" } else { "" },
                    e.len
                );
            }
            let _ = out.flush();
            *summary.entry((pod, reason)).or_default() += 1;
            total += 1;
            if opts.count.is_some_and(|c| total >= c) {
                break 'outer;
            }
        }
    }
    if !opts.json {
        println!("summary: {total} drops");
        for ((pod, reason), n) in &summary {
            println!("  {n:>6}  {pod}  {reason}");
        }
    }
    Ok(total)
}
