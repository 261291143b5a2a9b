//! A small synchronous rtnetlink client (one socket, bound to the netns it was created
//! in) with the link/address/route/neighbour operations the plugins and the overlay agent
//! need: veth/bridge/VXLAN links, addresses, routes (with `onlink`), ARP neighbours and
//! bridge FDB entries. No async runtime: a plugin is one short-lived single-threaded
//! process, and the agent keeps one client per backend.

use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsRawFd, RawFd};

use ipnetwork::IpNetwork;
use netlink_packet_core::{
    DecodeError, NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload, NlasIterator,
    Parseable, ParseableParametrized, NLMSG_DONE, NLMSG_ERROR, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP,
    NLM_F_DUMP_INTR, NLM_F_ECHO, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressMessage};
use netlink_packet_route::link::{
    AfSpecBridge, AfSpecInet, AfSpecInet6, AfSpecUnspec, BridgeVlanInfo, BridgeVlanInfoFlags,
    In6AddrGenMode, InetDevConf, InfoBridge, InfoBridgePort, InfoData, InfoKind, InfoPortData,
    InfoPortKind, InfoVeth, InfoVxlan, LinkAttribute, LinkFlags, LinkHeader, LinkInfo, LinkMessage,
    State,
};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
    RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

pub struct Netlink {
    sock: Socket,
    seq: u32,
    buf: Vec<u8>,
}

/// The facts about a link the plugins look at.
#[derive(Debug, Clone, Default)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mac: String,
    pub kind: Option<String>,
    pub master: Option<u32>,
    /// For a veth: the peer's ifindex (in the peer's netns).
    pub peer: Option<u32>,
    pub up: bool,
    pub promisc: bool,
    pub oper_up: bool,
    pub mtu: u32,
    /// `txqueuelen` (`qlen` in `ip link`).
    pub txqlen: u32,
    /// Segments the stack may put in one GSO packet for this link.
    pub gso_max_segs: u32,
    /// For a VXLAN device: its settings as the kernel reports them.
    pub vxlan: Option<VxlanInfo>,
}

/// A VXLAN device's settings as read back (`ip -d link show`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VxlanInfo {
    pub vni: Option<u32>,
    pub local: Option<Ipv4Addr>,
    pub port: Option<u16>,
    pub learning: Option<bool>,
    /// The underlay device's ifindex (`dev <iface>`).
    pub underlay: Option<u32>,
}

/// A VXLAN device to create (flannel's layout: learning off, `local` and `dev` pinned).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanSpec {
    pub name: String,
    pub vni: u32,
    pub local: Ipv4Addr,
    pub port: u16,
    /// The underlay device's ifindex.
    pub underlay: u32,
    pub mtu: u32,
    pub mac: [u8; 6],
    /// `txqueuelen` (flannel creates its VTEP with 0).
    pub txqlen: u32,
}

/// A neighbour (ARP / NDP) entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Neigh {
    pub ip: IpAddr,
    pub mac: Vec<u8>,
    pub permanent: bool,
}

/// A bridge FDB entry (on a VXLAN device: which remote VTEP a MAC lives behind).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fdb {
    pub mac: Vec<u8>,
    pub dst: Option<IpAddr>,
    pub permanent: bool,
    /// `self`: the entry belongs to the device itself, not to a bridge above it.
    pub is_self: bool,
}

pub fn mac_string(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

pub fn parse_mac(s: &str) -> io::Result<Vec<u8>> {
    let bytes: Result<Vec<u8>, _> = s.split(':').map(|p| u8::from_str_radix(p, 16)).collect();
    match bytes {
        Ok(b) if b.len() == 6 => Ok(b),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid MAC {s:?}"),
        )),
    }
}

// Link attribute types (<linux/if_link.h>) that [`Link`] keeps.
const IFLA_ADDRESS: u16 = 1;
const IFLA_IFNAME: u16 = 3;
const IFLA_MTU: u16 = 4;
const IFLA_LINK: u16 = 5;
const IFLA_MASTER: u16 = 10;
const IFLA_TXQLEN: u16 = 13;
const IFLA_GSO_MAX_SEGS: u16 = 40;
const IFLA_OPERSTATE: u16 = 16;
const IFLA_LINKINFO: u16 = 18;
const IFLA_INFO_KIND: u16 = 1;
const LINK_HEADER_LEN: usize = 16;

impl Link {
    /// From an RTM_NEWLINK payload, decoding only the attributes kept here. A link
    /// message carries dozens more (statistics, per-family settings, a bridge's or a
    /// port's options), and decoding them all cost more than the kernel's answer: about
    /// 40 µs for a bridge in a plugin's first lookup. The link info is decoded whole
    /// only for VXLAN devices, whose settings are kept.
    fn parse(payload: &[u8]) -> Result<Link, DecodeError> {
        let header = LinkHeader::parse(payload)?;
        let mut l = Link {
            index: header.index,
            up: header.flags.contains(LinkFlags::Up),
            promisc: header.flags.contains(LinkFlags::Promisc),
            ..Default::default()
        };
        let attrs = payload.get(LINK_HEADER_LEN..).unwrap_or_default();
        for nla in NlasIterator::new(attrs) {
            let nla = nla?;
            match nla.kind() {
                IFLA_ADDRESS | IFLA_IFNAME | IFLA_MTU | IFLA_LINK | IFLA_MASTER
                | IFLA_OPERSTATE | IFLA_TXQLEN | IFLA_GSO_MAX_SEGS => l.apply(
                    &LinkAttribute::parse_with_param(&nla, header.interface_family)?,
                ),
                IFLA_LINKINFO => {
                    let kind = NlasIterator::new(nla.value())
                        .filter_map(Result::ok)
                        .find(|i| i.kind() == IFLA_INFO_KIND)
                        .map(|i| InfoKind::parse(&i))
                        .transpose()?;
                    match kind {
                        Some(InfoKind::Vxlan) => l.apply(&LinkAttribute::parse_with_param(
                            &nla,
                            header.interface_family,
                        )?),
                        Some(k) => l.kind = Some(k.to_string()),
                        None => {}
                    }
                }
                _ => {}
            }
        }
        Ok(l)
    }

    fn apply(&mut self, a: &LinkAttribute) {
        let l = self;
        match a {
            LinkAttribute::IfName(n) => l.name = n.clone(),
            LinkAttribute::Address(b) => l.mac = mac_string(b),
            LinkAttribute::Controller(i) => l.master = Some(*i),
            LinkAttribute::Link(i) => l.peer = Some(*i),
            LinkAttribute::Mtu(m) => l.mtu = *m,
            LinkAttribute::TxQueueLen(q) => l.txqlen = *q,
            LinkAttribute::GsoMaxSegs(n) => l.gso_max_segs = *n,
            LinkAttribute::OperState(s) => l.oper_up = *s == State::Up,
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    match i {
                        LinkInfo::Kind(k) => {
                            l.kind = Some(k.to_string());
                            if *k == InfoKind::Vxlan {
                                l.vxlan.get_or_insert_with(VxlanInfo::default);
                            }
                        }
                        LinkInfo::Data(InfoData::Vxlan(v)) => {
                            let x = l.vxlan.get_or_insert_with(VxlanInfo::default);
                            for a in v {
                                match a {
                                    InfoVxlan::Id(i) => x.vni = Some(*i),
                                    InfoVxlan::Local(a) => x.local = Some(*a),
                                    InfoVxlan::Port(p) => x.port = Some(*p),
                                    InfoVxlan::Learning(b) => x.learning = Some(*b),
                                    InfoVxlan::Link(i) => x.underlay = Some(*i),
                                    _ => {}
                                }
                            }
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
}

fn is_errno(e: &io::Error, errno: i32) -> bool {
    e.raw_os_error() == Some(errno)
}

pub fn is_exists(e: &io::Error) -> bool {
    is_errno(e, libc::EEXIST)
}

pub fn is_not_found(e: &io::Error) -> bool {
    is_errno(e, libc::ENODEV)
        || is_errno(e, libc::ENOENT)
        || is_errno(e, libc::ESRCH)
        || is_errno(e, libc::EADDRNOTAVAIL)
}

fn family_of(ip: &IpAddr) -> AddressFamily {
    match ip {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

fn route_addr(ip: IpAddr) -> RouteAddress {
    match ip {
        IpAddr::V4(a) => RouteAddress::Inet(a),
        IpAddr::V6(a) => RouteAddress::Inet6(a),
    }
}

fn ip_of(r: &RouteAddress) -> Option<IpAddr> {
    match r {
        RouteAddress::Inet(a) => Some(IpAddr::V4(*a)),
        RouteAddress::Inet6(a) => Some(IpAddr::V6(*a)),
        _ => None,
    }
}

fn ip_of_neigh(a: &NeighbourAddress) -> Option<IpAddr> {
    match a {
        NeighbourAddress::Inet(a) => Some(IpAddr::V4(*a)),
        NeighbourAddress::Inet6(a) => Some(IpAddr::V6(*a)),
        // Bridge-family (FDB) messages carry the remote address undecoded.
        NeighbourAddress::Other(b) => match b.len() {
            4 => <[u8; 4]>::try_from(b.as_slice()).ok().map(IpAddr::from),
            16 => <[u8; 16]>::try_from(b.as_slice()).ok().map(IpAddr::from),
            _ => None,
        },
        _ => None,
    }
}

/// Deleting what is already gone is success (reconcilers delete what they saw a moment ago).
fn ok_if_gone<T>(r: io::Result<T>) -> io::Result<()> {
    match r {
        Ok(_) => Ok(()),
        Err(e) if is_not_found(&e) => Ok(()),
        Err(e) => Err(e),
    }
}

/// A unicast route to `dst` in the main table (the fields every route request shares).
fn route_msg(dst: IpNetwork) -> RouteMessage {
    let mut m = RouteMessage::default();
    m.header.address_family = family_of(&dst.ip());
    m.header.destination_prefix_length = dst.prefix();
    m.header.table = RouteHeader::RT_TABLE_MAIN;
    m.header.kind = RouteType::Unicast;
    if dst.prefix() > 0 {
        m.attributes
            .push(RouteAttribute::Destination(route_addr(dst.network())));
    }
    m
}

/// A neighbour-table entry of any family, as dumped.
struct NeighEntry {
    ip: Option<IpAddr>,
    mac: Vec<u8>,
    permanent: bool,
    is_self: bool,
}

fn neigh_msg(ifindex: u32, ip: IpAddr) -> NeighbourMessage {
    let mut m = NeighbourMessage::default();
    m.header.family = family_of(&ip);
    m.header.ifindex = ifindex;
    m.attributes
        .push(NeighbourAttribute::Destination(ip.into()));
    m
}

fn fdb_msg(ifindex: u32, mac: &[u8], dst: IpAddr) -> NeighbourMessage {
    let mut m = NeighbourMessage::default();
    m.header.family = AddressFamily::Bridge;
    m.header.ifindex = ifindex;
    m.header.state = NeighbourState::Permanent;
    m.header.flags = NeighbourFlags::Own;
    m.header.kind = RouteType::Unspec;
    m.attributes
        .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
    m.attributes
        .push(NeighbourAttribute::Destination(dst.into()));
    m
}

/// A route as read back from the kernel (main table only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteEntry {
    pub dst: IpNetwork,
    pub gw: Option<IpAddr>,
    pub oif: Option<u32>,
    pub onlink: bool,
}

impl RouteEntry {
    /// The entry and its table.
    fn from_msg(r: &RouteMessage) -> Option<(u32, RouteEntry)> {
        let mut table = r.header.table as u32;
        let mut dst = None;
        let mut gw = None;
        let mut oif = None;
        for a in &r.attributes {
            match a {
                RouteAttribute::Destination(d) => dst = ip_of(d),
                RouteAttribute::Gateway(g) => gw = ip_of(g),
                RouteAttribute::Oif(i) => oif = Some(*i),
                RouteAttribute::Table(t) => table = *t,
                _ => {}
            }
        }
        let dst = dst.unwrap_or(match r.header.address_family {
            AddressFamily::Inet6 => IpAddr::from([0u16; 8]),
            _ => IpAddr::from([0u8; 4]),
        });
        let dst = IpNetwork::new(dst, r.header.destination_prefix_length).ok()?;
        let onlink = r.header.flags.contains(RouteFlags::Onlink);
        Some((
            table,
            RouteEntry {
                dst,
                gw,
                oif,
                onlink,
            },
        ))
    }
}

/// A socket subscribed to the link notifications (`RTMGRP_LINK`) of the network
/// namespace it was opened in: readable whenever a link there appears, changes or goes.
pub struct LinkEvents {
    sock: Socket,
    buf: Vec<u8>,
}

impl LinkEvents {
    /// Subscribe in the calling thread's current network namespace.
    pub fn new() -> io::Result<LinkEvents> {
        let mut sock = Socket::new(NETLINK_ROUTE)?;
        sock.bind(&SocketAddr::new(0, libc::RTMGRP_LINK as u32))?;
        sock.set_non_blocking(true)?;
        Ok(LinkEvents {
            sock,
            buf: vec![0; 1 << 14],
        })
    }

    pub fn fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }

    /// Discard what has arrived (the caller looks at the state itself; an overrun,
    /// ENOBUFS, only means notifications were lost, which that look covers too).
    pub fn drain(&mut self) {
        while matches!(self.sock.recv(&mut &mut self.buf[..], 0), Ok(n) if n > 0) {}
    }
}

impl Netlink {
    /// A socket in the calling thread's current network namespace.
    pub fn new() -> io::Result<Netlink> {
        let mut sock = Socket::new(NETLINK_ROUTE)?;
        sock.bind_auto()?;
        sock.connect(&SocketAddr::new(0, 0))?;
        let _ = sock.set_ext_ack(true);
        // Lets dumps be filtered by the kernel (addresses of one link).
        let _ = sock.set_netlink_get_strict_chk(true);
        Ok(Netlink {
            sock,
            seq: 0,
            buf: Vec::with_capacity(1 << 16),
        })
    }

    /// One request; dumps that a concurrent change interrupted (NLM_F_DUMP_INTR: they may
    /// have skipped entries) are redone.
    fn request(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.request_with(msg, flags, |bytes| {
            match NetlinkMessage::<RouteNetlinkMessage>::deserialize(bytes)?.payload {
                NetlinkPayload::InnerMessage(inner) => Ok(Some(inner)),
                _ => Ok(None),
            }
        })
    }

    /// A request whose answers are links (RTM_NEWLINK), decoded by [`Link::parse`].
    fn request_links(&mut self, msg: RouteNetlinkMessage, flags: u16) -> io::Result<Vec<Link>> {
        self.request_with(msg, flags, |bytes| {
            let b = NetlinkBuffer::new_checked(bytes)?;
            if b.message_type() != libc::RTM_NEWLINK {
                return Ok(None);
            }
            Link::parse(b.payload()).map(Some)
        })
    }

    /// [`Netlink::request`] with the answers (each a whole netlink message, neither an
    /// error nor a dump's end) decoded by `decode`.
    fn request_with<T>(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
        decode: impl Fn(&[u8]) -> Result<Option<T>, DecodeError>,
    ) -> io::Result<Vec<T>> {
        for _ in 0..20 {
            let (replies, interrupted) = self.request_once(msg.clone(), flags, &decode)?;
            if !interrupted {
                return Ok(replies);
            }
        }
        Err(io::Error::other("netlink dump kept being interrupted"))
    }

    fn request_once<T>(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
        decode: &impl Fn(&[u8]) -> Result<Option<T>, DecodeError>,
    ) -> io::Result<(Vec<T>, bool)> {
        let invalid = |e: DecodeError| io::Error::new(io::ErrorKind::InvalidData, e.to_string());
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags | if dump { 0 } else { NLM_F_ACK };
        header.sequence_number = seq;
        let mut nl = NetlinkMessage::new(header, NetlinkPayload::from(msg));
        nl.finalize();
        let mut out = vec![0u8; nl.buffer_len()];
        nl.serialize(&mut out);
        self.sock.send(&out, 0)?;

        let mut replies = Vec::new();
        let mut interrupted = false;
        loop {
            // Into the buffer's spare capacity: never zeroed, and only the pages a
            // reply reaches are ever touched.
            self.buf.clear();
            let n = self.sock.recv(&mut self.buf, 0)?.min(self.buf.len());
            let mut off = 0;
            while off + 16 <= n {
                let len = u32::from_ne_bytes([
                    self.buf[off],
                    self.buf[off + 1],
                    self.buf[off + 2],
                    self.buf[off + 3],
                ]) as usize;
                if len < 16 || off + len > n {
                    break;
                }
                let bytes = &self.buf[off..off + len];
                off += (len + 3) & !3;
                let b = NetlinkBuffer::new_checked(bytes).map_err(invalid)?;
                if b.flags() & NLM_F_DUMP_INTR != 0 {
                    interrupted = true;
                }
                if b.sequence_number() != seq {
                    continue;
                }
                match b.message_type() {
                    NLMSG_ERROR | NLMSG_DONE => {
                        let m = NetlinkMessage::<RouteNetlinkMessage>::deserialize(bytes)
                            .map_err(invalid)?;
                        if let NetlinkPayload::Error(e) = m.payload {
                            if e.code.is_some() {
                                return Err(e.to_io());
                            }
                        }
                        return Ok((replies, interrupted));
                    }
                    _ => {
                        if let Some(r) = decode(bytes).map_err(invalid)? {
                            replies.push(r);
                        }
                    }
                }
            }
        }
    }

    // ---- links ----

    pub fn link_by_name(&mut self, name: &str) -> io::Result<Option<Link>> {
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.to_string()));
        match self.request_links(RouteNetlinkMessage::GetLink(m), 0) {
            Ok(r) => Ok(r.into_iter().next()),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn links(&mut self) -> io::Result<Vec<Link>> {
        self.request_links(
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            NLM_F_DUMP,
        )
    }

    /// Create a bridge; EEXIST is returned as is (the caller looks it up: many ADDs race here).
    pub fn create_bridge(
        &mut self,
        name: &str,
        mtu: Option<u32>,
        vlan_filtering: bool,
    ) -> io::Result<()> {
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.to_string()));
        if let Some(mtu) = mtu {
            m.attributes.push(LinkAttribute::Mtu(mtu));
        }
        let mut info = vec![LinkInfo::Kind(InfoKind::Bridge)];
        if vlan_filtering {
            info.push(LinkInfo::Data(InfoData::Bridge(vec![
                InfoBridge::VlanFiltering(true),
            ])));
        }
        m.attributes.push(LinkAttribute::LinkInfo(info));
        self.request(RouteNetlinkMessage::NewLink(m), NLM_F_CREATE | NLM_F_EXCL)
            .map(|_| ())
    }

    /// Create a veth pair: `host` here (enslaved to `master`) and `peer` in the netns
    /// `peer_ns`, with an optional MAC, both down: the caller brings the peer up, then
    /// `host`. One message: no intermediate state to undo. Returns `host` as the kernel
    /// echoes it (NLM_F_ECHO, Linux 6.3+), or None from kernels that do not echo.
    #[allow(clippy::too_many_arguments)]
    pub fn create_veth(
        &mut self,
        host: &str,
        peer: &str,
        peer_ns: RawFd,
        mtu: Option<u32>,
        peer_mac: Option<&[u8]>,
        master: Option<u32>,
    ) -> io::Result<Option<Link>> {
        // Both ends are created down: the peer cannot be created up (opening it before
        // this end exists is ENOTCONN), and an end that is up while its peer is down
        // has no carrier, which the kernel's link watcher answers with a qdisc
        // deactivation costing an RCU grace period (the caller brings the peer up
        // first, then this end, so carrier only ever comes on).
        // One queue each way, said explicitly: without it the kernel allocates one per
        // CPU and then shrinks the real count to one, waiting for an RCU grace period
        // per end.
        let mut p = LinkMessage::default();
        p.attributes.push(LinkAttribute::IfName(peer.to_string()));
        p.attributes.push(LinkAttribute::NetNsFd(peer_ns));
        p.attributes.push(LinkAttribute::NumTxQueues(1));
        p.attributes.push(LinkAttribute::NumRxQueues(1));
        if let Some(mtu) = mtu {
            p.attributes.push(LinkAttribute::Mtu(mtu));
        }
        if let Some(mac) = peer_mac {
            p.attributes.push(LinkAttribute::Address(mac.to_vec()));
        }
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(host.to_string()));
        m.attributes.push(LinkAttribute::NumTxQueues(1));
        m.attributes.push(LinkAttribute::NumRxQueues(1));
        if let Some(mtu) = mtu {
            m.attributes.push(LinkAttribute::Mtu(mtu));
        }
        if let Some(master) = master {
            m.attributes.push(LinkAttribute::Controller(master));
        }
        m.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(p))),
        ]));
        let r = self.request_links(
            RouteNetlinkMessage::NewLink(m),
            NLM_F_CREATE | NLM_F_EXCL | NLM_F_ECHO,
        )?;
        Ok(r.into_iter().find(|l| l.name == host))
    }

    /// `ip link add <name> address <mac> mtu <mtu> txqueuelen <txqlen> type vxlan id <vni>
    /// local <local> dev <underlay> dstport <port> nolearning` (down: the caller brings it
    /// up).
    pub fn create_vxlan(&mut self, s: &VxlanSpec) -> io::Result<()> {
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(s.name.clone()));
        m.attributes.push(LinkAttribute::Address(s.mac.to_vec()));
        m.attributes.push(LinkAttribute::Mtu(s.mtu));
        m.attributes.push(LinkAttribute::TxQueueLen(s.txqlen));
        m.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Vxlan),
            LinkInfo::Data(InfoData::Vxlan(vec![
                InfoVxlan::Id(s.vni),
                InfoVxlan::Local(s.local),
                InfoVxlan::Link(s.underlay),
                InfoVxlan::Port(s.port),
                InfoVxlan::Learning(false),
            ])),
        ]));
        self.request(RouteNetlinkMessage::NewLink(m), NLM_F_CREATE | NLM_F_EXCL)
            .map(|_| ())
    }

    fn set_link(&mut self, index: u32, f: impl FnOnce(&mut LinkMessage)) -> io::Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        f(&mut m);
        self.request(RouteNetlinkMessage::SetLink(m), 0).map(|_| ())
    }

    fn set_flag(&mut self, index: u32, flag: LinkFlags, on: bool) -> io::Result<()> {
        self.set_link(index, |m| {
            m.header.flags = if on { flag } else { LinkFlags::empty() };
            m.header.change_mask = flag;
        })
    }

    pub fn set_up(&mut self, index: u32, up: bool) -> io::Result<()> {
        self.set_flag(index, LinkFlags::Up, up)
    }

    /// `net.ipv4.conf.<link>.arp_notify = 1`, and the link up if `up`, in one request.
    /// Through netlink (IFLA_INET_CONF) rather than /proc/sys: on a node with many
    /// network namespaces each /proc/sys/net lookup walks a dentry chain holding every
    /// namespace's entry of that name (tens of µs with a few hundred pods).
    pub fn set_arp_notify(&mut self, index: u32, up: bool) -> io::Result<()> {
        let mut conf = InetDevConf::default();
        conf.arp_notify = 1;
        self.set_link(index, |m| {
            if up {
                m.header.flags = LinkFlags::Up;
                m.header.change_mask = LinkFlags::Up;
            }
            m.attributes
                .push(LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet(vec![
                    AfSpecInet::DevConfRequest(conf),
                ])]));
        })
    }

    /// `ip link set <dev> addrgenmode none`: no IPv6 link-local address when the link
    /// comes up (the kernel makes it then, so this goes before). Refused at creation
    /// (the link has no IPv6 state yet), hence a request of its own.
    pub fn set_no_link_local(&mut self, index: u32) -> io::Result<()> {
        self.set_link(index, |m| {
            m.attributes
                .push(LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet6(
                    vec![AfSpecInet6::AddrGenMode(In6AddrGenMode::None)],
                )]));
        })
    }

    /// `net.ipv4.ip_forward` (`net.ipv6.conf.all.forwarding` with `v6`), read with
    /// RTM_GETNETCONF for NETCONFA_IFINDEX_ALL: the same kernel value as the sysctl,
    /// without its /proc/sys lookup (see [`Netlink::set_arp_notify`]).
    /// netlink-packet-route has no netconf messages, so this one is built by hand.
    pub fn forwarding(&mut self, v6: bool) -> io::Result<bool> {
        const RTM_GETNETCONF: u16 = 82;
        const RTM_NEWNETCONF: u16 = 80;
        const NETCONFA_IFINDEX: u16 = 1;
        const NETCONFA_FORWARDING: u16 = 2;
        const NETCONFA_IFINDEX_ALL: i32 = -1;
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let family = if v6 { libc::AF_INET6 } else { libc::AF_INET } as u8;
        // nlmsghdr, struct netconfmsg (one byte, padded to 4), NETCONFA_IFINDEX.
        let mut req = Vec::with_capacity(28);
        req.extend_from_slice(&28u32.to_ne_bytes());
        req.extend_from_slice(&RTM_GETNETCONF.to_ne_bytes());
        req.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
        req.extend_from_slice(&seq.to_ne_bytes());
        req.extend_from_slice(&0u32.to_ne_bytes());
        req.extend_from_slice(&[family, 0, 0, 0]);
        req.extend_from_slice(&8u16.to_ne_bytes());
        req.extend_from_slice(&NETCONFA_IFINDEX.to_ne_bytes());
        req.extend_from_slice(&NETCONFA_IFINDEX_ALL.to_ne_bytes());
        self.sock.send(&req, 0)?;
        loop {
            self.buf.clear();
            let n = self.sock.recv(&mut self.buf, 0)?.min(self.buf.len());
            let mut off = 0;
            while off + 16 <= n {
                let b = &self.buf[off..n];
                let len = u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize;
                if len < 16 || len > b.len() {
                    break;
                }
                let kind = u16::from_ne_bytes([b[4], b[5]]);
                let mseq = u32::from_ne_bytes([b[8], b[9], b[10], b[11]]);
                let msg = &b[16..len];
                off += (len + 3) & !3;
                if mseq != seq {
                    continue;
                }
                if kind == netlink_packet_core::NLMSG_ERROR && msg.len() >= 4 {
                    let code = i32::from_ne_bytes([msg[0], msg[1], msg[2], msg[3]]);
                    return Err(io::Error::from_raw_os_error(-code));
                }
                if kind != RTM_NEWNETCONF {
                    continue;
                }
                // Attributes follow the padded netconfmsg.
                let mut a = 4;
                while a + 4 <= msg.len() {
                    let alen = u16::from_ne_bytes([msg[a], msg[a + 1]]) as usize;
                    let atype = u16::from_ne_bytes([msg[a + 2], msg[a + 3]]) & 0x3fff;
                    if alen < 4 || a + alen > msg.len() {
                        break;
                    }
                    if atype == NETCONFA_FORWARDING && alen >= 8 {
                        let v = &msg[a + 4..a + 8];
                        return Ok(i32::from_ne_bytes([v[0], v[1], v[2], v[3]]) != 0);
                    }
                    a += (alen + 3) & !3;
                }
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "RTM_NEWNETCONF without NETCONFA_FORWARDING",
                ));
            }
        }
    }

    pub fn set_promisc(&mut self, index: u32, on: bool) -> io::Result<()> {
        self.set_flag(index, LinkFlags::Promisc, on)
    }

    pub fn set_mac(&mut self, index: u32, mac: &[u8]) -> io::Result<()> {
        self.set_link(index, |m| {
            m.attributes.push(LinkAttribute::Address(mac.to_vec()))
        })
    }

    pub fn set_mtu(&mut self, index: u32, mtu: u32) -> io::Result<()> {
        self.set_link(index, |m| m.attributes.push(LinkAttribute::Mtu(mtu)))
    }

    pub fn set_gso_max_segs(&mut self, index: u32, segs: u32) -> io::Result<()> {
        self.set_link(index, |m| {
            m.attributes.push(LinkAttribute::GsoMaxSegs(segs))
        })
    }

    pub fn set_txqlen(&mut self, index: u32, txqlen: u32) -> io::Result<()> {
        self.set_link(index, |m| {
            m.attributes.push(LinkAttribute::TxQueueLen(txqlen))
        })
    }

    /// Bridge port options (hairpin, isolation) on an enslaved link.
    pub fn set_bridge_port(&mut self, index: u32, opts: Vec<InfoBridgePort>) -> io::Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::PortKind(InfoPortKind::Bridge),
            LinkInfo::PortData(InfoPortData::BridgePort(opts)),
        ]));
        self.request(RouteNetlinkMessage::NewLink(m), 0).map(|_| ())
    }

    /// `bridge vlan add/del dev <index> vid <vid> [pvid] [untagged] master`.
    pub fn bridge_vlan(
        &mut self,
        index: u32,
        vid: u16,
        pvid: bool,
        untagged: bool,
        add: bool,
    ) -> io::Result<()> {
        let mut flags = BridgeVlanInfoFlags::empty();
        if pvid {
            flags |= BridgeVlanInfoFlags::Pvid;
        }
        if untagged {
            flags |= BridgeVlanInfoFlags::Untagged;
        }
        let mut m = LinkMessage::default();
        m.header.interface_family = AddressFamily::Bridge;
        m.header.index = index;
        let info = BridgeVlanInfo { flags, vid };
        m.attributes
            .push(LinkAttribute::AfSpecBridge(vec![AfSpecBridge::VlanInfo(
                info,
            )]));
        let msg = if add {
            RouteNetlinkMessage::SetLink(m)
        } else {
            RouteNetlinkMessage::DelLink(m)
        };
        self.request(msg, 0).map(|_| ())
    }

    pub fn delete_link(&mut self, index: u32) -> io::Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        self.request(RouteNetlinkMessage::DelLink(m), 0).map(|_| ())
    }

    // ---- addresses ----

    pub fn add_addr(&mut self, index: u32, addr: IpNetwork, nodad: bool) -> io::Result<()> {
        let mut m = AddressMessage::default();
        m.header.family = family_of(&addr.ip());
        m.header.prefix_len = addr.prefix();
        m.header.index = index;
        m.attributes.push(AddressAttribute::Local(addr.ip()));
        m.attributes.push(AddressAttribute::Address(addr.ip()));
        if let IpNetwork::V4(v4) = addr {
            if v4.prefix() < 31 {
                m.attributes
                    .push(AddressAttribute::Broadcast(v4.broadcast()));
            }
        }
        if nodad && addr.is_ipv6() {
            m.attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        self.request(
            RouteNetlinkMessage::NewAddress(m),
            NLM_F_CREATE | NLM_F_EXCL,
        )
        .map(|_| ())
    }

    pub fn del_addr(&mut self, index: u32, addr: IpNetwork) -> io::Result<()> {
        let mut m = AddressMessage::default();
        m.header.family = family_of(&addr.ip());
        m.header.prefix_len = addr.prefix();
        m.header.index = index;
        m.attributes.push(AddressAttribute::Local(addr.ip()));
        m.attributes.push(AddressAttribute::Address(addr.ip()));
        self.request(RouteNetlinkMessage::DelAddress(m), 0)
            .map(|_| ())
    }

    /// Addresses on `index` (universe/site scope and link-local both), any family.
    pub fn addrs(&mut self, index: u32) -> io::Result<Vec<IpNetwork>> {
        let mut q = AddressMessage::default();
        q.header.index = index;
        let r = self.request(RouteNetlinkMessage::GetAddress(q), NLM_F_DUMP)?;
        let mut out = Vec::new();
        for m in r {
            if let RouteNetlinkMessage::NewAddress(a) = m {
                if a.header.index != index {
                    continue;
                }
                let ip = a.attributes.iter().find_map(|x| match x {
                    AddressAttribute::Local(ip) => Some(*ip),
                    _ => None,
                });
                let ip = ip.or_else(|| {
                    a.attributes.iter().find_map(|x| match x {
                        AddressAttribute::Address(ip) => Some(*ip),
                        _ => None,
                    })
                });
                if let Some(ip) = ip {
                    if let Ok(n) = IpNetwork::new(ip, a.header.prefix_len) {
                        out.push(n);
                    }
                }
            }
        }
        Ok(out)
    }

    // ---- routes ----

    pub fn add_route(
        &mut self,
        index: u32,
        dst: IpNetwork,
        gw: Option<IpAddr>,
        r: Option<&crate::cni::Route>,
    ) -> io::Result<()> {
        let mut m = route_msg(dst);
        m.header.table = r
            .and_then(|r| r.table)
            .filter(|t| *t < 256)
            .map(|t| t as u8)
            .unwrap_or(RouteHeader::RT_TABLE_MAIN);
        m.header.protocol = RouteProtocol::Boot;
        m.header.scope = match (r.and_then(|r| r.scope), gw) {
            (Some(s), _) => RouteScope::from(s),
            (None, Some(_)) => RouteScope::Universe,
            (None, None) => RouteScope::Link,
        };
        if let Some(gw) = gw {
            m.attributes.push(RouteAttribute::Gateway(route_addr(gw)));
        }
        m.attributes.push(RouteAttribute::Oif(index));
        if let Some(r) = r {
            if let Some(p) = r.priority {
                m.attributes.push(RouteAttribute::Priority(p));
            }
            if let Some(t) = r.table.filter(|t| *t >= 256) {
                m.attributes.push(RouteAttribute::Table(t));
            }
            let mut metrics = Vec::new();
            if let Some(mtu) = r.mtu {
                metrics.push(netlink_packet_route::route::RouteMetric::Mtu(mtu));
            }
            if let Some(mss) = r.adv_mss {
                metrics.push(netlink_packet_route::route::RouteMetric::Advmss(mss));
            }
            if !metrics.is_empty() {
                m.attributes.push(RouteAttribute::Metrics(metrics));
            }
        }
        self.request(RouteNetlinkMessage::NewRoute(m), NLM_F_CREATE | NLM_F_EXCL)
            .map(|_| ())
    }

    /// `ip route replace <dst> via <gw> dev <oif> [onlink]` (main table, proto boot).
    pub fn replace_route(
        &mut self,
        dst: IpNetwork,
        gw: IpAddr,
        oif: u32,
        onlink: bool,
    ) -> io::Result<()> {
        let mut m = route_msg(dst);
        m.header.protocol = RouteProtocol::Boot;
        m.header.scope = RouteScope::Universe;
        if onlink {
            m.header.flags = RouteFlags::Onlink;
        }
        m.attributes.push(RouteAttribute::Gateway(route_addr(gw)));
        m.attributes.push(RouteAttribute::Oif(oif));
        self.request(
            RouteNetlinkMessage::NewRoute(m),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
        .map(|_| ())
    }

    /// `ip route replace <dst> dev <oif>` with universe scope (main table, proto boot):
    /// a whole network through a point-to-point device such as a TUN.
    pub fn replace_dev_route(&mut self, dst: IpNetwork, oif: u32) -> io::Result<()> {
        let mut m = route_msg(dst);
        m.header.protocol = RouteProtocol::Boot;
        m.header.scope = RouteScope::Universe;
        m.attributes.push(RouteAttribute::Oif(oif));
        self.request(
            RouteNetlinkMessage::NewRoute(m),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
        .map(|_| ())
    }

    /// Delete the main-table route to `dst` (matching gateway and device when given);
    /// already gone is success.
    pub fn del_route(
        &mut self,
        dst: IpNetwork,
        gw: Option<IpAddr>,
        oif: Option<u32>,
    ) -> io::Result<()> {
        let mut m = route_msg(dst);
        m.header.scope = RouteScope::NoWhere;
        if let Some(gw) = gw {
            m.attributes.push(RouteAttribute::Gateway(route_addr(gw)));
        }
        if let Some(oif) = oif {
            m.attributes.push(RouteAttribute::Oif(oif));
        }
        ok_if_gone(self.request(RouteNetlinkMessage::DelRoute(m), 0))
    }

    /// The route the kernel would take to `dst` (`ip route get`); None when unreachable.
    pub fn route_get(&mut self, dst: IpAddr) -> io::Result<Option<RouteEntry>> {
        let mut m = RouteMessage::default();
        m.header.address_family = family_of(&dst);
        m.header.destination_prefix_length = if dst.is_ipv4() { 32 } else { 128 };
        m.attributes
            .push(RouteAttribute::Destination(route_addr(dst)));
        let r = match self.request(RouteNetlinkMessage::GetRoute(m), 0) {
            Ok(r) => r,
            Err(e) if is_errno(&e, libc::ENETUNREACH) => return Ok(None),
            Err(e) => return Err(e),
        };
        Ok(r.iter().find_map(|m| match m {
            RouteNetlinkMessage::NewRoute(r) => RouteEntry::from_msg(r).map(|(_, e)| e),
            _ => None,
        }))
    }

    /// Unicast routes of the main table, both families.
    pub fn routes(&mut self) -> io::Result<Vec<RouteEntry>> {
        let mut out = Vec::new();
        for fam in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut q = RouteMessage::default();
            q.header.address_family = fam;
            for m in self.request(RouteNetlinkMessage::GetRoute(q), NLM_F_DUMP)? {
                let RouteNetlinkMessage::NewRoute(r) = m else {
                    continue;
                };
                if r.header.kind != RouteType::Unicast {
                    continue;
                }
                match RouteEntry::from_msg(&r) {
                    Some((table, e)) if table == RouteHeader::RT_TABLE_MAIN as u32 => out.push(e),
                    _ => {}
                }
            }
        }
        Ok(out)
    }

    // ---- neighbours (ARP / NDP) and bridge FDB: both RTM_*NEIGH ----

    /// One family's neighbour-table entries on `ifindex`, with their address and MAC.
    fn neigh_dump(&mut self, family: AddressFamily, ifindex: u32) -> io::Result<Vec<NeighEntry>> {
        let mut q = NeighbourMessage::default();
        q.header.family = family;
        let mut out = Vec::new();
        for m in self.request(RouteNetlinkMessage::GetNeighbour(q), NLM_F_DUMP)? {
            let RouteNetlinkMessage::NewNeighbour(n) = m else {
                continue;
            };
            if n.header.ifindex != ifindex || n.header.family != family {
                continue;
            }
            let mut ip = None;
            let mut mac = Vec::new();
            for a in &n.attributes {
                match a {
                    NeighbourAttribute::Destination(d) => ip = ip_of_neigh(d),
                    NeighbourAttribute::LinkLayerAddress(b) => mac = b.clone(),
                    _ => {}
                }
            }
            out.push(NeighEntry {
                ip,
                mac,
                permanent: n.header.state == NeighbourState::Permanent,
                is_self: n.header.flags.contains(NeighbourFlags::Own),
            });
        }
        Ok(out)
    }

    /// IPv4 and IPv6 neighbours on `ifindex`.
    pub fn neighbours(&mut self, ifindex: u32) -> io::Result<Vec<Neigh>> {
        let mut out = Vec::new();
        for fam in [AddressFamily::Inet, AddressFamily::Inet6] {
            for e in self.neigh_dump(fam, ifindex)? {
                if let Some(ip) = e.ip {
                    out.push(Neigh {
                        ip,
                        mac: e.mac,
                        permanent: e.permanent,
                    });
                }
            }
        }
        Ok(out)
    }

    /// `ip neigh replace <ip> lladdr <mac> dev <ifindex> nud permanent`.
    pub fn set_neigh(&mut self, ifindex: u32, ip: IpAddr, mac: &[u8]) -> io::Result<()> {
        let mut m = neigh_msg(ifindex, ip);
        m.header.state = NeighbourState::Permanent;
        m.header.kind = RouteType::Unicast;
        m.attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
        self.request(
            RouteNetlinkMessage::NewNeighbour(m),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
        .map(|_| ())
    }

    /// `ip neigh del <ip> dev <ifindex>`; already gone is success.
    pub fn del_neigh(&mut self, ifindex: u32, ip: IpAddr) -> io::Result<()> {
        let m = neigh_msg(ifindex, ip);
        ok_if_gone(self.request(RouteNetlinkMessage::DelNeighbour(m), 0))
    }

    /// FDB entries on `ifindex` (`bridge fdb show dev <ifindex>`).
    pub fn fdb(&mut self, ifindex: u32) -> io::Result<Vec<Fdb>> {
        Ok(self
            .neigh_dump(AddressFamily::Bridge, ifindex)?
            .into_iter()
            .map(|e| Fdb {
                mac: e.mac,
                dst: e.ip,
                permanent: e.permanent,
                is_self: e.is_self,
            })
            .collect())
    }

    /// `bridge fdb replace <mac> dev <ifindex> dst <dst> self permanent`.
    pub fn set_fdb(&mut self, ifindex: u32, mac: &[u8], dst: IpAddr) -> io::Result<()> {
        self.request(
            RouteNetlinkMessage::NewNeighbour(fdb_msg(ifindex, mac, dst)),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
        .map(|_| ())
    }

    /// `bridge fdb del <mac> dev <ifindex> dst <dst> self`; already gone is success.
    pub fn del_fdb(&mut self, ifindex: u32, mac: &[u8], dst: IpAddr) -> io::Result<()> {
        ok_if_gone(self.request(
            RouteNetlinkMessage::DelNeighbour(fdb_msg(ifindex, mac, dst)),
            0,
        ))
    }
}
