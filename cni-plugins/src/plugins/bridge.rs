//! bridge: a Linux bridge on the node, a veth per pod (pod end named CNI_IFNAME in the
//! pod's netns, node end enslaved), addresses from the IPAM delegate, optional gateway
//! address on the bridge, default route and masquerade. Accepts the reference schema.

use std::io;
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use netlink_packet_route::link::InfoBridgePort;
use serde::Deserialize;

use crate::cni::skel::{CmdArgs, Command, Plugin};
use crate::cni::{CniResult, Code, Error, Interface, Result, Route};
use crate::net::detach;
use crate::net::masq::{self, Backend, Owner};
use crate::net::netlink::{self, Link, LinkEvents, Netlink};
use crate::net::netns::NetNs;
use crate::net::sysctl;
use crate::net::tool;

pub struct Bridge;

#[derive(Debug, Clone, Deserialize)]
struct VlanTrunk {
    #[serde(default, rename = "minID")]
    min_id: Option<i64>,
    #[serde(default, rename = "maxID")]
    max_id: Option<i64>,
    #[serde(default)]
    id: Option<i64>,
}

fn default_bridge() -> String {
    "cni0".into()
}
fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize)]
struct Conf {
    #[serde(default = "default_bridge")]
    bridge: String,
    #[serde(default, rename = "isGateway")]
    is_gw: bool,
    #[serde(default, rename = "isDefaultGateway")]
    is_default_gw: bool,
    #[serde(default, rename = "forceAddress")]
    force_address: bool,
    #[serde(default, rename = "ipMasq")]
    ip_masq: bool,
    #[serde(default, rename = "ipMasqBackend")]
    ip_masq_backend: Option<String>,
    #[serde(default)]
    mtu: u32,
    #[serde(default, rename = "hairpinMode")]
    hairpin: bool,
    #[serde(default, rename = "promiscMode")]
    promisc: bool,
    #[serde(default)]
    vlan: i64,
    #[serde(default, rename = "vlanTrunk")]
    vlan_trunk: Option<Vec<VlanTrunk>>,
    #[serde(default = "yes", rename = "preserveDefaultVlan")]
    preserve_default_vlan: bool,
    #[serde(default)]
    macspoofchk: bool,
    #[serde(default)]
    enabledad: bool,
    #[serde(default, rename = "disableContainerInterface")]
    disable_container_interface: bool,
    #[serde(default, rename = "portIsolation")]
    port_isolation: bool,
    #[serde(skip)]
    vlans: Vec<u16>,
    #[serde(skip)]
    mac: Option<String>,
}

fn load(args: &CmdArgs) -> Result<Conf> {
    let mut n: Conf = args.plugin_conf()?;
    if n.vlan < 0 || n.vlan > 4094 {
        return Err(Error::config(format!(
            "invalid VLAN ID {} (must be between 0 and 4094)",
            n.vlan
        )));
    }
    let mut vlans = std::collections::BTreeSet::new();
    for t in n.vlan_trunk.iter().flatten() {
        let ok = |v: i64| (1..=4094).contains(&v);
        match (t.min_id, t.max_id) {
            (Some(a), Some(b)) => {
                if !ok(a) || !ok(b) {
                    return Err(Error::config("incorrect trunk minID/maxID parameter"));
                }
                if b < a {
                    return Err(Error::config(
                        "minID is greater than maxID in trunk parameter",
                    ));
                }
                vlans.extend((a..=b).map(|v| v as u16));
            }
            (None, Some(_)) | (Some(_), None) => {
                return Err(Error::config(
                    "minID and maxID should be configured simultaneously",
                ))
            }
            (None, None) => {}
        }
        if let Some(id) = t.id {
            if !ok(id) {
                return Err(Error::config("incorrect trunk id parameter"));
            }
            vlans.insert(id as u16);
        }
    }
    n.vlans = vlans.into_iter().collect();
    if n.vlan > 0 && !n.vlans.is_empty() {
        return Err(Error::config(
            "cannot set vlan and vlanTrunk at the same time",
        ));
    }
    if n.is_default_gw {
        n.is_gw = true;
    }
    for (k, v) in args.cni_args() {
        if k.eq_ignore_ascii_case("MAC") && !v.is_empty() {
            n.mac = Some(v);
        }
    }
    for p in ["/args/cni/mac", "/runtimeConfig/mac"] {
        if let Some(m) = args
            .raw
            .pointer(p)
            .and_then(|v| v.as_str())
            .filter(|m| !m.is_empty())
        {
            n.mac = Some(m.to_string());
        }
    }
    Ok(n)
}

fn nl_err(what: impl std::fmt::Display) -> impl FnOnce(io::Error) -> Error {
    move |e| Error::internal(format!("{what}: {e}"))
}

fn owner<'a>(args: &'a CmdArgs) -> Owner<'a> {
    Owner {
        network: &args.conf.name,
        container_id: &args.container_id,
        ifname: &args.ifname,
    }
}

/// Create the bridge if missing (race-safe: EEXIST means another ADD won) and bring it up.
fn ensure_bridge(nl: &mut Netlink, n: &Conf) -> Result<Link> {
    let mut br = nl
        .link_by_name(&n.bridge)
        .map_err(nl_err("lookup bridge"))?;
    if br.is_none() {
        let mtu = (n.mtu > 0).then_some(n.mtu);
        let vlan_filtering = n.vlan != 0 || n.vlan_trunk.is_some();
        match nl.create_bridge(&n.bridge, mtu, vlan_filtering) {
            Ok(()) => {}
            Err(e) if netlink::is_exists(&e) => {}
            Err(e) => {
                return Err(Error::internal(format!(
                    "could not add {:?}: {e}",
                    n.bridge
                )))
            }
        }
        // We own the routes of this interface.
        let _ = std::fs::write(sysctl::iface_path("ipv6", &n.bridge, "accept_ra"), "0");
        br = nl
            .link_by_name(&n.bridge)
            .map_err(nl_err("lookup bridge"))?;
    }
    let br = br.ok_or_else(|| Error::internal(format!("could not lookup {:?}", n.bridge)))?;
    if br.kind.as_deref() != Some("bridge") {
        return Err(Error::internal(format!(
            "{:?} already exists but is not a bridge",
            n.bridge
        )));
    }
    if n.promisc && !br.promisc {
        nl.set_promisc(br.index, true)
            .map_err(nl_err("set promisc"))?;
    }
    if !br.up {
        nl.set_up(br.index, true).map_err(nl_err("set bridge up"))?;
    }
    Ok(br)
}

fn random_veth_name() -> String {
    let mut b = [0u8; 4];
    // SAFETY: getrandom writes at most b.len() bytes into the buffer we own.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n != b.len() as isize {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0)
            ^ std::process::id();
        b = t.to_ne_bytes();
    }
    format!("veth{:08x}", u32::from_ne_bytes(b))
}

/// What a failed ADD must undo, in reverse.
#[derive(Default)]
struct Undo {
    host_veth: Option<u32>,
    /// The IPAM ADD, started at the beginning of the ADD until collected.
    ipam_add: Option<super::IpamAdd>,
    ipam: bool,
    masq: Option<Backend>,
    /// A masquerade setup still in flight: awaited before any teardown.
    masq_pending: Option<masq::Pending>,
    spoofchk: bool,
}

/// `<bridge>.<vlan>`: created once (a veth, its peer an untagged access port of the VLAN
/// on the bridge) to carry the gateway address of a VLAN network.
fn ensure_vlan_interface(nl: &mut Netlink, br: &Link, n: &Conf) -> Result<Link> {
    let name = format!("{}.{}", br.name, n.vlan);
    if let Some(l) = nl
        .link_by_name(&name)
        .map_err(nl_err("lookup vlan interface"))?
    {
        return Ok(l);
    }
    let here = NetNs::current().map_err(nl_err("open current netns"))?;
    let port = random_veth_name();
    let mtu = (br.mtu > 0).then_some(br.mtu);
    match nl.create_veth(&port, &name, here.fd(), mtu, None, Some(br.index)) {
        Ok(_) => {}
        // Another ADD created it first.
        Err(e) if netlink::is_exists(&e) => {}
        Err(e) => {
            return Err(Error::internal(format!(
                "failed to create vlan gateway {name:?}: {e}"
            )))
        }
    }
    let port = nl.link_by_name(&port).map_err(nl_err("lookup vlan port"))?;
    if let Some(p) = &port {
        if !n.preserve_default_vlan {
            let _ = nl.bridge_vlan(p.index, 1, false, false, false);
        }
        nl.bridge_vlan(p.index, n.vlan as u16, true, true, true)
            .map_err(nl_err(format!("failed to setup vlan tag on {}", p.name)))?;
    }
    let l = nl
        .link_by_name(&name)
        .map_err(nl_err("lookup vlan interface"))?
        .ok_or_else(|| Error::internal(format!("failed to lookup {name:?}")))?;
    if !l.up {
        nl.set_up(l.index, true)
            .map_err(nl_err(format!("failed to set {name} up")))?;
    }
    // The bridge port last (see Netlink::create_veth).
    if let Some(p) = port.filter(|p| !p.up) {
        nl.set_up(p.index, true)
            .map_err(nl_err(format!("failed to set {} up", p.name)))?;
    }
    Ok(l)
}

/// DAD off unless `enabledad` (waiting for DAD made ADDs take seconds). arp_notify is
/// set with the link-up request.
fn container_sysctls(ns: &NetNs, ifname: &str, enabledad: bool) -> Result<()> {
    ns.run(|| {
        let conf = sysctl::IfaceSysctls::new();
        if enabledad {
            let _ = conf.set("ipv6", ifname, "enhanced_dad", "1");
            let _ = conf.set("ipv6", ifname, "accept_dad", "1");
        } else {
            let _ = conf.set("ipv6", ifname, "accept_dad", "0");
        }
        // arp_notify goes with the link-up request (Netlink::set_arp_notify).
    })
    .map_err(|e| Error::internal(e.to_string()))
}

/// `net.ipv4.ip_forward` / `net.ipv6.conf.all.forwarding`: read over netlink, written
/// (rarely) through /proc/sys.
fn enable_forward(nl: &mut Netlink, v6: bool) -> Result<()> {
    if matches!(nl.forwarding(v6), Ok(true)) {
        return Ok(());
    }
    let p = if v6 {
        "/proc/sys/net/ipv6/conf/all/forwarding"
    } else {
        "/proc/sys/net/ipv4/ip_forward"
    };
    sysctl::ensure(p, "1").map_err(|e| Error::io("failed to enable forwarding", e))
}

fn gateway_of(a: &IpNetwork) -> IpAddr {
    let net = crate::ipam::config::to_u128(a.network());
    crate::ipam::config::from_u128(net + 1, &a.ip())
}

/// Put `gw` on the bridge; another address of the family (overlapping for v6) is an
/// error unless forceAddress, which replaces it. Returns whether `gw` was added.
///
/// The add comes first: on a running node the gateway is already there and the kernel's
/// EEXIST says so in one request (for IPv4 it means this very address and prefix; IPv6
/// compares the address only, so the prefix is checked in the listing). Only a new
/// gateway pays for listing the bridge's addresses, and is taken back off if another
/// one conflicts.
fn ensure_gateway_addr(nl: &mut Netlink, br: &Link, gw: IpNetwork, force: bool) -> Result<bool> {
    let added = match nl.add_addr(br.index, gw, true) {
        Ok(()) => true,
        Err(e) if netlink::is_exists(&e) => false,
        Err(e) => {
            return Err(Error::internal(format!(
                "could not add IP address to {:?}: {e}",
                br.name
            )))
        }
    };
    if !added && gw.is_ipv4() {
        return Ok(false);
    }
    let addrs = nl
        .addrs(br.index)
        .map_err(nl_err("list bridge addresses"))?;
    if !added && addrs.contains(&gw) {
        return Ok(false);
    }
    for a in &addrs {
        if *a == gw || a.is_ipv4() != gw.is_ipv4() {
            continue;
        }
        let conflicts = gw.is_ipv4() || a.contains(gw.ip()) || gw.contains(a.ip());
        if conflicts && !(a.is_ipv6() && a.ip().to_string().starts_with("fe80")) {
            if force {
                nl.del_addr(br.index, *a)
                    .map_err(nl_err("remove bridge address"))?;
            } else {
                if added {
                    let _ = nl.del_addr(br.index, gw);
                }
                return Err(Error::internal(format!(
                    "{:?} already has an IP address different from {gw}",
                    br.name
                )));
            }
        }
    }
    if !added {
        // The same IPv6 address under another prefix: replaced only with forceAddress.
        nl.add_addr(br.index, gw, true).map_err(|e| {
            Error::internal(format!("could not add IP address to {:?}: {e}", br.name))
        })?;
    }
    Ok(true)
}

// ---- macspoofchk (nftables, bridge family) ----
//
// The reference's layout, names included, so that either plugin's DEL removes what the
// other's ADD made: in table `bridge nat`, a PREROUTING base chain (filter, priority
// -300) jumps for the pod's port to `cni-br-iface-<id>`, which jumps to
// `cni-br-iface-<id>-mac`: return for the pod's MAC, else drop. `<id>` is
// `<containerID>-<ifname>`; every rule carries the comment `macspoofchk-<id>`. The
// rules go through nft's script syntax (`nft -f -`), which cannot quote a chain name:
// see spoof_chain.

fn spoof_id(args: &CmdArgs) -> String {
    format!("{}-{}", args.container_id, args.ifname)
}

/// The single chain older nestbox versions made (`cni-br-iface-` + 16 hex digits of the
/// SHA-256 of the id): still removed on DEL, and the name used for an id that nft's
/// script syntax cannot carry.
fn hashed_spoof_chain(args: &CmdArgs) -> String {
    use sha2::{Digest, Sha256};
    let h = Sha256::digest(spoof_id(args));
    let hex: String = h.iter().take(8).map(|b| format!("{b:02x}")).collect();
    format!("cni-br-iface-{hex}")
}

/// The pod's iface chain: the reference's name when the id is made of characters an nft
/// identifier allows (a container ID always is; an interface name may hold others, even
/// a quote), else the hashed name.
fn spoof_chain(args: &CmdArgs) -> String {
    let id = spoof_id(args);
    if id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
    {
        format!("cni-br-iface-{id}")
    } else {
        hashed_spoof_chain(args)
    }
}

fn spoof_setup(args: &CmdArgs, host_veth: &str, mac: &str) -> Result<()> {
    let c = spoof_chain(args);
    let m = format!("{c}-mac");
    let cm = format!(
        "comment \"macspoofchk-{}\"",
        c.trim_start_matches("cni-br-iface-")
    );
    // Chains declared, then emptied, then filled, in one transaction: the chains a
    // killed ADD of the same pod left are refilled, not doubled (a jump it left in
    // PREROUTING stays until DEL, which removes every jump to them, as the reference's
    // does).
    let script = format!(
        "add table bridge nat\n\
         add chain bridge nat PREROUTING {{ type filter hook prerouting priority -300; policy accept; }}\n\
         add chain bridge nat {c}\n\
         add chain bridge nat {m}\n\
         flush chain bridge nat {c}\n\
         flush chain bridge nat {m}\n\
         add rule bridge nat PREROUTING iifname \"{host_veth}\" jump {c} {cm}\n\
         add rule bridge nat {c} jump {m} {cm}\n\
         add rule bridge nat {m} ether saddr {mac} return {cm}\n\
         add rule bridge nat {m} drop {cm}\n"
    );
    nft(&script)
}

/// Remove the pod's jumps and chains (ours or the reference's, and the hashed ones), in
/// one transaction naming only what exists.
fn spoof_teardown(args: &CmdArgs) {
    let Ok(table) = tool::run("nft", &["-a", "list", "table", "bridge", "nat"], None) else {
        return;
    };
    let (c, h) = (spoof_chain(args), hashed_spoof_chain(args));
    let ours = [format!("{c}-mac"), format!("{h}-mac"), c, h];
    let mut script = String::new();
    let mut chains = Vec::new();
    let mut chain = "";
    for line in table.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("chain ") {
            chain = rest.split_whitespace().next().unwrap_or_default();
            if ours.iter().any(|o| o == chain) {
                chains.push(chain);
            }
            continue;
        }
        let jumps_to_ours = line
            .split_whitespace()
            .skip_while(|w| *w != "jump")
            .nth(1)
            .is_some_and(|t| ours.iter().any(|o| o == t));
        if chain == "PREROUTING" && jumps_to_ours {
            if let Some((_, h)) = line.split_once("# handle ") {
                script.push_str(&format!(
                    "delete rule bridge nat PREROUTING handle {}\n",
                    h.trim()
                ));
            }
        }
    }
    // A chain can go only once nothing jumps to it: every chain is emptied first.
    for ch in &chains {
        script.push_str(&format!("flush chain bridge nat {ch}\n"));
    }
    for ch in &chains {
        script.push_str(&format!("delete chain bridge nat {ch}\n"));
    }
    if !script.is_empty() {
        let _ = nft(&script);
    }
}

fn nft(script: &str) -> Result<()> {
    tool::run("nft", &["-f", "-"], Some(script))
        .map(drop)
        .map_err(|e| Error::internal(e.to_string()))
}

/// CNI_IFNAME already exists in the pod's netns: the reference's error.
fn refuse_taken_ifname(cnl: &mut Netlink, ifname: &str) -> Result<()> {
    match cnl.link_by_name(ifname).map_err(nl_err("lookup"))? {
        Some(_) => Err(Error::internal(format!(
            "container veth name provided ({ifname}) already exists"
        ))),
        None => Ok(()),
    }
}

impl Bridge {
    fn add_inner(&self, args: &CmdArgs, n: &Conf, undo: &mut Undo) -> Result<CniResult> {
        // IPAM may run alongside the link setup (see IpamAdd); collected before anything
        // forks.
        if !args.conf.ipam.plugin_type.is_empty() {
            undo.ipam_add = Some(super::IpamAdd::start(args));
        }
        let mut nl = Netlink::new().map_err(nl_err("netlink"))?;
        let br = ensure_bridge(&mut nl, n)?;
        let ns = NetNs::open(&args.netns).map_err(|e| {
            Error::new(
                Code::InvalidNetns,
                format!("failed to open netns {:?}: {e}", args.netns),
            )
        })?;
        let mut cnl = ns.netlink().map_err(nl_err("netlink in netns"))?;
        // A taken pod ifname shows as EEXIST from the create below (then looked up).
        let mac = match &n.mac {
            Some(m) => Some(netlink::parse_mac(m).map_err(|e| Error::config(e.to_string()))?),
            None => None,
        };
        let mtu = (n.mtu > 0).then_some(n.mtu);

        // The veth: created in one message, node end already enslaved; both ends down.
        let mut host_name = String::new();
        let mut echoed = None;
        for attempt in 0..10 {
            let name = random_veth_name();
            match nl.create_veth(
                &name,
                &args.ifname,
                ns.fd(),
                mtu,
                mac.as_deref(),
                Some(br.index),
            ) {
                Ok(l) => {
                    host_name = name;
                    echoed = l;
                    break;
                }
                // A random host name collided, or the pod's name was taken meanwhile.
                Err(e) if netlink::is_exists(&e) && attempt < 9 => {
                    refuse_taken_ifname(&mut cnl, &args.ifname)?;
                }
                Err(e) => return Err(Error::internal(format!("failed to create veth: {e}"))),
            }
        }
        let host = match echoed {
            Some(l) => l,
            None => nl
                .link_by_name(&host_name)
                .map_err(nl_err("lookup veth"))?
                .ok_or_else(|| Error::internal(format!("failed to lookup {host_name:?}")))?,
        };
        undo.host_veth = Some(host.index);
        // The node end is a bridge port: frames arriving on it belong to the bridge, so
        // an IPv6 link-local address of its own is never reachable. Without one, its
        // coming up adds no route to the node's IPv6 table (where every port's
        // fe80::/64 shares one node, walked on each insert), starts no DAD or MLD, and
        // its removal has less to clean. (The reference keeps it.) Best effort: a
        // kernel without IPv6 refuses the request.
        let _ = nl.set_no_link_local(host.index);

        if n.hairpin || n.port_isolation {
            let mut opts = Vec::new();
            if n.hairpin {
                opts.push(InfoBridgePort::HairpinMode(true));
            }
            if n.port_isolation {
                opts.push(InfoBridgePort::Isolated(true));
            }
            nl.set_bridge_port(host.index, opts)
                .map_err(nl_err(format!(
                    "failed to set bridge port options on {host_name}"
                )))?;
        }
        if (n.vlan != 0 || !n.vlans.is_empty()) && !n.preserve_default_vlan {
            let _ = nl.bridge_vlan(host.index, 1, false, false, false);
        }
        if n.vlan != 0 {
            nl.bridge_vlan(host.index, n.vlan as u16, true, true, true)
                .map_err(nl_err(format!(
                    "failed to setup vlan tag on interface {host_name}"
                )))?;
        }
        for v in &n.vlans {
            nl.bridge_vlan(host.index, *v, false, false, true)
                .map_err(nl_err(format!(
                    "failed to setup vlan tag on interface {host_name}"
                )))?;
        }

        let cont = cnl
            .link_by_name(&args.ifname)
            .map_err(nl_err("lookup"))?
            .ok_or_else(|| Error::internal(format!("failed to lookup {:?}", args.ifname)))?;
        // Before carrier (the node end comes up last): the link-local address must not
        // start DAD either.
        container_sysctls(&ns, &args.ifname, n.enabledad)?;
        cnl.set_arp_notify(cont.index, !n.disable_container_interface)
            .map_err(nl_err("set container interface up"))?;

        // The IPAM result, before anything below forks (macspoofchk, masquerade).
        let ipam_result = match undo.ipam_add.take() {
            Some(job) => {
                let r = job.finish(args)?.unwrap_or_default();
                undo.ipam = true;
                Some(r)
            }
            None => None,
        };

        if n.macspoofchk {
            undo.spoofchk = true;
            spoof_setup(args, &host_name, &cont.mac)?;
        }

        let mut result = CniResult::default();
        let mut vlan_iface: Option<Link> = None;
        if let Some(r) = ipam_result {
            result.ips = r.ips;
            result.routes = r.routes;
            result.dns = r.dns;
            if result.ips.is_empty() {
                return Err(Error::internal("IPAM plugin returned missing IP config"));
            }
            // Gateways and default routes per family.
            let mut default_found = [false, false];
            for ip in result.ips.iter_mut() {
                ip.interface = Some(2);
                if ip.gateway.is_none() && n.is_gw {
                    ip.gateway = Some(gateway_of(&ip.address));
                }
            }
            if n.is_default_gw {
                for ip in result.ips.clone() {
                    let fam = ip.address.is_ipv6() as usize;
                    let zero: IpNetwork = if fam == 0 { "0.0.0.0/0" } else { "::/0" }
                        .parse()
                        .expect("literal");
                    if !default_found[fam] {
                        default_found[fam] = result
                            .routes
                            .iter()
                            .any(|r| r.gw.is_some() && r.dst == zero);
                    }
                    if !default_found[fam] {
                        result.routes.push(Route::new(zero, ip.gateway));
                        default_found[fam] = true;
                    }
                }
            }

            // Masquerade runs in a helper while we configure the pod and the bridge.
            if n.ip_masq {
                let backend = Backend::choose(n.ip_masq_backend.as_deref())?;
                undo.masq = Some(backend);
                let addrs: Vec<IpNetwork> = result.ips.iter().map(|i| i.address).collect();
                undo.masq_pending = Some(masq::setup_start(backend, &addrs, &owner(args))?);
            }

            if !n.disable_container_interface {
                self.configure_container(&mut cnl, &cont, args, n, &result)?;
            }

            if n.is_gw {
                // With a VLAN the gateway lives on `<bridge>.<vlan>`, a veth whose other
                // end is an access port of that VLAN (as the reference does).
                let gw_link = if n.vlan != 0 && result.ips.iter().any(|i| i.gateway.is_some()) {
                    let l = ensure_vlan_interface(&mut nl, &br, n)?;
                    vlan_iface = Some(l.clone());
                    l
                } else {
                    br.clone()
                };
                let mut pinned = false;
                for ip in &result.ips {
                    let Some(gw) = ip.gateway else { continue };
                    let gw = IpNetwork::new(gw, ip.address.prefix())
                        .map_err(|e| Error::internal(e.to_string()))?;
                    if ensure_gateway_addr(&mut nl, &gw_link, gw, n.force_address)?
                        && !pinned
                        && n.vlan == 0
                    {
                        // Pin the bridge's MAC, else it follows the lowest port's MAC.
                        if let Some(b) =
                            nl.link_by_name(&br.name).map_err(nl_err("lookup bridge"))?
                        {
                            if let Ok(mac) = netlink::parse_mac(&b.mac) {
                                let _ = nl.set_mac(b.index, &mac);
                            }
                        }
                        pinned = true;
                    }
                    enable_forward(&mut nl, gw.is_ipv6())?;
                }
            }
        }

        // The node end's name, MAC and MTU are as created; the bridge's MAC may have
        // followed its ports (all enslaved by now).
        let br = nl
            .link_by_name(&n.bridge)
            .map_err(nl_err("lookup bridge"))?
            .unwrap_or(br);
        // The node end up last, after the pod's (see Netlink::create_veth). Carrier
        // comes on here, and with it the kernel's IPv6 start-up on the pod link (DAD
        // completion, MLD reports, router solicitations), which a worker runs under the
        // RTNL lock while the bridge floods the multicast to every port: on a bridge
        // with hundreds of ports, milliseconds that our own requests no longer queue
        // behind.
        nl.set_up(host.index, true)
            .map_err(nl_err(format!("failed to set {host_name} up")))?;
        if let Some(p) = undo.masq_pending.take() {
            p.finish()?;
        }
        result.interfaces = vec![
            Interface {
                name: br.name.clone(),
                mac: br.mac.clone(),
                mtu: Some(br.mtu),
                ..Default::default()
            },
            Interface {
                name: host.name.clone(),
                mac: host.mac.clone(),
                mtu: Some(host.mtu),
                ..Default::default()
            },
            Interface {
                name: cont.name.clone(),
                mac: cont.mac.clone(),
                mtu: Some(cont.mtu),
                sandbox: args.netns.clone(),
                ..Default::default()
            },
        ];
        if let Some(v) = vlan_iface {
            result.interfaces.push(Interface {
                name: v.name,
                mac: v.mac,
                ..Default::default()
            });
        }
        if args.conf.dns.is_set() {
            result.dns = args.conf.dns.clone();
        }
        Ok(result)
    }

    /// Addresses, sysctls and routes inside the pod's netns.
    fn configure_container(
        &self,
        cnl: &mut Netlink,
        cont: &Link,
        args: &CmdArgs,
        n: &Conf,
        result: &CniResult,
    ) -> Result<()> {
        for ip in &result.ips {
            match cnl.add_addr(cont.index, ip.address, !n.enabledad) {
                Ok(()) => {}
                Err(e) if netlink::is_exists(&e) => {}
                Err(e) => {
                    return Err(Error::internal(format!(
                        "failed to add IP addr {} to {:?}: {e}",
                        ip.address, args.ifname
                    )))
                }
            }
        }
        let gw4 = result
            .ips
            .iter()
            .filter(|i| i.address.is_ipv4())
            .find_map(|i| i.gateway);
        let gw6 = result
            .ips
            .iter()
            .filter(|i| i.address.is_ipv6())
            .find_map(|i| i.gateway);
        for r in &result.routes {
            let gw = r.gw.or(if r.dst.is_ipv4() { gw4 } else { gw6 });
            match cnl.add_route(cont.index, r.dst, gw, Some(r)) {
                Ok(()) => {}
                Err(e) if netlink::is_exists(&e) => {}
                Err(e) => {
                    return Err(Error::internal(format!(
                        "failed to add route '{} via {:?} dev {}': {e}",
                        r.dst, gw, args.ifname
                    )))
                }
            }
        }
        Ok(())
    }
}

/// Delete the pod's veth (both ends go). The kernel answers only after the device's
/// teardown (RCU grace periods, ~10 ms), but the name and the link are gone from the
/// netns at the start of it: a detached child waits for the answer while we return as
/// soon as the link has disappeared (or the child reports an error).
/// Link notifications from the netns wake us as soon as something changes there rather
/// than on the next tick.
fn delete_container_link(ns: &NetNs, cnl: &mut Netlink, index: u32, ifname: &str) -> Result<()> {
    // Subscribed before the delete is sent, so its notification cannot be missed; an
    // error here only costs the wake-ups (the tick remains).
    let mut events = ns.run(LinkEvents::new).ok().and_then(|r| r.ok());
    let child = detach::spawn(
        || match ns.netlink()?.delete_link(index) {
            Err(e) if netlink::is_not_found(&e) => Ok(()),
            other => other,
        },
        || {},
    )
    .map_err(nl_err("fork"))?;
    child
        .wait_until(
            events.as_ref().map(LinkEvents::fd),
            || {
                if let Some(ev) = events.as_mut() {
                    ev.drain();
                }
                // A dump, not RTM_GETLINK by name: link dumps do not wait for the RTNL
                // lock, which the deleting child holds for the whole unregistration
                // (milliseconds with many ports on the bridge), while the name is gone
                // from the netns at its start. The pod's netns holds few links.
                matches!(cnl.links(), Ok(ls) if !ls.iter().any(|l| l.name == ifname))
            },
            std::time::Duration::from_secs(10),
        )
        .map_err(|e| Error::internal(format!("failed to delete {ifname:?}: {e}")))
}

impl Plugin for Bridge {
    fn add(&self, args: &CmdArgs) -> Result<CniResult> {
        let n = load(args)?;
        if n.hairpin && n.promisc {
            return Err(Error::config(
                "cannot set hairpin mode and promiscuous mode at the same time",
            ));
        }
        let mut undo = Undo::default();
        let out = self.add_inner(args, &n, &mut undo);
        if out.is_err() {
            // An IPAM ADD still running when the link setup failed: what it reserved
            // is released below like any other reservation.
            if let Some(job) = undo.ipam_add.take() {
                if job.finish_started().is_ok() {
                    undo.ipam = true;
                }
            }
            if let Some(p) = undo.masq_pending.take() {
                let _ = p.finish();
            }
            if let Some(b) = undo.masq {
                let _ = masq::teardown(b, &owner(args));
            }
            if undo.ipam {
                let _ = super::ipam(args, Command::Del);
            }
            if undo.spoofchk {
                spoof_teardown(args);
            }
            if let Some(idx) = undo.host_veth {
                if let Ok(mut nl) = Netlink::new() {
                    let _ = nl.delete_link(idx);
                }
            }
        }
        out
    }

    fn del(&self, args: &CmdArgs) -> Result<()> {
        let n = load(args)?;
        let l3 = !args.conf.ipam.plugin_type.is_empty();
        if !args.netns.is_empty() {
            match NetNs::open(&args.netns) {
                Ok(ns) => {
                    let mut cnl = ns.netlink().map_err(nl_err("netlink in netns"))?;
                    if let Some(l) = cnl.link_by_name(&args.ifname).map_err(nl_err("lookup"))? {
                        delete_container_link(&ns, &mut cnl, l.index, &args.ifname)?;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(Error::new(
                        Code::InvalidNetns,
                        format!("failed to open netns {:?}: {e}", args.netns),
                    ))
                }
            }
        }
        if l3 {
            super::ipam(args, Command::Del)?;
        }
        if n.macspoofchk {
            spoof_teardown(args);
        }
        if l3 && n.ip_masq {
            masq::teardown(Backend::choose(n.ip_masq_backend.as_deref())?, &owner(args))?;
        }
        Ok(())
    }

    fn check(&self, args: &CmdArgs) -> Result<()> {
        let n = load(args)?;
        let ns = NetNs::open(&args.netns).map_err(|e| {
            Error::new(
                Code::InvalidNetns,
                format!("failed to open netns {:?}: {e}", args.netns),
            )
        })?;
        if !args.conf.ipam.plugin_type.is_empty() {
            super::ipam(args, Command::Check)?;
        }
        let prev = args
            .prev_result()?
            .ok_or_else(|| Error::config("Required prevResult missing"))?;
        let mut nl = Netlink::new().map_err(nl_err("netlink"))?;
        let mut cnl = ns.netlink().map_err(nl_err("netlink in netns"))?;

        let br_if = prev.interfaces.iter().find(|i| i.name == n.bridge);
        let cont_if = prev
            .interfaces
            .iter()
            .find(|i| i.name == args.ifname && i.sandbox == args.netns);
        let br = nl
            .link_by_name(&n.bridge)
            .map_err(nl_err("lookup bridge"))?
            .filter(|_| br_if.is_some())
            .ok_or_else(|| {
                Error::internal(format!(
                    "CNI created bridge {} in host namespace was not found",
                    n.bridge
                ))
            })?;
        if br.kind.as_deref() != Some("bridge") {
            return Err(Error::internal(format!(
                "Interface {} does not have link type of bridge",
                br.name
            )));
        }
        if let Some(bi) = br_if {
            if !bi.mac.is_empty() && bi.mac != br.mac {
                return Err(Error::internal(format!(
                    "Bridge interface {} Mac doesn't match: {}",
                    br.name, bi.mac
                )));
            }
        }
        if br.promisc != n.promisc {
            return Err(Error::internal(format!(
                "Bridge interface {} configured Promisc Mode {} doesn't match current state: {}",
                br.name, n.promisc, br.promisc
            )));
        }
        let cont_if = cont_if.ok_or_else(|| {
            Error::internal(format!(
                "Sandbox in prevResult doesn't match configured netns: {}",
                args.netns
            ))
        })?;
        let cont = cnl
            .link_by_name(&args.ifname)
            .map_err(nl_err("lookup"))?
            .ok_or_else(|| Error::internal(format!("Interface name {} not found", args.ifname)))?;
        if cont.kind.as_deref() != Some("veth") {
            return Err(Error::internal(format!(
                "Error: Container interface {} not of type veth",
                cont.name
            )));
        }
        if !cont_if.mac.is_empty() && cont_if.mac != cont.mac {
            return Err(Error::internal(format!(
                "Interface {} Mac {} doesn't match container Mac: {}",
                cont.name, cont_if.mac, cont.mac
            )));
        }
        let veth_ok = prev
            .interfaces
            .iter()
            .filter(|i| i.name != n.bridge && i.sandbox.is_empty())
            .filter_map(|i| nl.link_by_name(&i.name).ok().flatten())
            .any(|l| {
                l.index == cont.peer.unwrap_or(0)
                    && l.peer == Some(cont.index)
                    && l.master == Some(br.index)
            });
        if !veth_ok {
            return Err(Error::internal(format!(
                "CNI veth created for bridge {} was not found",
                n.bridge
            )));
        }
        let have = cnl.addrs(cont.index).map_err(nl_err("list addresses"))?;
        for ip in &prev.ips {
            if !have.contains(&ip.address) {
                return Err(Error::internal(format!(
                    "Failed to match addr {} on interface {}",
                    ip.address, args.ifname
                )));
            }
        }
        let routes = cnl.routes().map_err(nl_err("list routes"))?;
        for r in &prev.routes {
            let found = routes.iter().any(|k| {
                k.dst == IpNetwork::new(r.dst.network(), r.dst.prefix()).unwrap_or(r.dst)
                    && (r.gw.is_none() || k.gw == r.gw)
            });
            if !found {
                return Err(Error::internal(format!("Route to {} not found", r.dst)));
            }
        }
        Ok(())
    }

    fn status(&self, args: &CmdArgs) -> Result<()> {
        load(args)?;
        if !args.conf.ipam.plugin_type.is_empty() {
            super::ipam(args, Command::Status)?;
        }
        Ok(())
    }

    fn gc(&self, args: &CmdArgs) -> Result<()> {
        let n = load(args)?;
        if n.ip_masq {
            let valid = super::valid_attachments(args);
            masq::gc(
                Backend::choose(n.ip_masq_backend.as_deref())?,
                &args.conf.name,
                &valid,
            )?;
        }
        if !args.conf.ipam.plugin_type.is_empty() {
            super::ipam(args, Command::Gc)?;
        }
        Ok(())
    }
}
