//! rtnetlink operations the overlay needs and `nestbox_cni::net::netlink` lacks: VXLAN
//! links (create, read back their settings), neighbours (ARP entries), bridge FDB
//! entries on a VXLAN device, and routes with the `onlink` flag and their read-back.
//! Same model as nestbox-cni's client: one synchronous socket bound to the netns it was
//! opened in. Candidates to move into nestbox-cni.

use std::io;
use std::net::{IpAddr, Ipv4Addr};

use ipnetwork::{IpNetwork, Ipv4Network};
use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL,
    NLM_F_REPLACE, NLM_F_REQUEST,
};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
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

pub use nestbox_cni::net::netlink::{is_exists, is_not_found, parse_mac};

pub fn mac_string(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// What a VXLAN device is asked to be (flannel's layout).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanSpec {
    pub name: String,
    pub vni: u32,
    pub local: Ipv4Addr,
    pub port: u16,
    /// The underlay device (`dev <iface>` in `ip -d link`).
    pub underlay: u32,
    pub mtu: u32,
    pub mac: [u8; 6],
}

/// A VXLAN device as the kernel reports it.
#[derive(Debug, Clone, Default)]
pub struct VxlanLink {
    pub index: u32,
    pub name: String,
    pub mac: Vec<u8>,
    pub mtu: u32,
    pub up: bool,
    pub is_vxlan: bool,
    pub vni: Option<u32>,
    pub local: Option<Ipv4Addr>,
    pub port: Option<u16>,
    pub learning: Option<bool>,
    pub underlay: Option<u32>,
}

/// A neighbour (ARP) entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Neigh {
    pub ip: Ipv4Addr,
    pub mac: Vec<u8>,
    pub permanent: bool,
}

/// A bridge FDB entry on a VXLAN device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fdb {
    pub mac: Vec<u8>,
    pub dst: Option<Ipv4Addr>,
    pub permanent: bool,
    pub is_self: bool,
}

/// An IPv4 route of the main table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route4 {
    pub dst: Ipv4Network,
    pub gw: Option<Ipv4Addr>,
    pub oif: Option<u32>,
    pub onlink: bool,
    pub protocol: u8,
}

pub struct Rtnl {
    sock: Socket,
    seq: u32,
    buf: Vec<u8>,
}

fn v4_of(a: &RouteAddress) -> Option<Ipv4Addr> {
    match a {
        RouteAddress::Inet(a) => Some(*a),
        _ => None,
    }
}

impl Rtnl {
    /// A socket in the calling thread's current network namespace.
    pub fn new() -> io::Result<Rtnl> {
        let mut sock = Socket::new(NETLINK_ROUTE)?;
        sock.bind_auto()?;
        sock.connect(&SocketAddr::new(0, 0))?;
        let _ = sock.set_ext_ack(true);
        Ok(Rtnl {
            sock,
            seq: 0,
            buf: vec![0; 1 << 16],
        })
    }

    fn request(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
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
        loop {
            let n = self.sock.recv(&mut &mut self.buf[..], 0)?;
            let mut off = 0;
            while off + 16 <= n {
                let b = &self.buf;
                let len = u32::from_ne_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]]) as usize;
                if len < 16 || off + len > n {
                    break;
                }
                let bytes = &self.buf[off..off + len];
                off += (len + 3) & !3;
                let m = NetlinkMessage::<RouteNetlinkMessage>::deserialize(bytes)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                if m.header.sequence_number != seq {
                    continue;
                }
                match m.payload {
                    NetlinkPayload::Error(e) => {
                        if e.code.is_some() {
                            return Err(e.to_io());
                        }
                        return Ok(replies);
                    }
                    NetlinkPayload::Done(_) => return Ok(replies),
                    NetlinkPayload::InnerMessage(inner) => replies.push(inner),
                    _ => {}
                }
            }
        }
    }

    // ---- VXLAN links ----

    /// `ip link add <name> address <mac> mtu <mtu> type vxlan id <vni> local <local>
    /// dev <underlay> dstport <port> nolearning`, then up.
    pub fn create_vxlan(&mut self, s: &VxlanSpec) -> io::Result<()> {
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(s.name.clone()));
        m.attributes.push(LinkAttribute::Address(s.mac.to_vec()));
        m.attributes.push(LinkAttribute::Mtu(s.mtu));
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
        self.request(RouteNetlinkMessage::NewLink(m), NLM_F_CREATE | NLM_F_EXCL)?;
        Ok(())
    }

    pub fn link(&mut self, name: &str) -> io::Result<Option<VxlanLink>> {
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.to_string()));
        match self.request(RouteNetlinkMessage::GetLink(m), 0) {
            Ok(r) => Ok(r.iter().find_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(parse_link(l)),
                _ => None,
            })),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn set_link(&mut self, index: u32, f: impl FnOnce(&mut LinkMessage)) -> io::Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        f(&mut m);
        self.request(RouteNetlinkMessage::SetLink(m), 0).map(|_| ())
    }

    pub fn set_up(&mut self, index: u32) -> io::Result<()> {
        self.set_link(index, |m| {
            m.header.flags = LinkFlags::Up;
            m.header.change_mask = LinkFlags::Up;
        })
    }

    pub fn set_mtu(&mut self, index: u32, mtu: u32) -> io::Result<()> {
        self.set_link(index, |m| m.attributes.push(LinkAttribute::Mtu(mtu)))
    }

    pub fn set_mac(&mut self, index: u32, mac: &[u8]) -> io::Result<()> {
        self.set_link(index, |m| {
            m.attributes.push(LinkAttribute::Address(mac.to_vec()))
        })
    }

    pub fn delete_link(&mut self, index: u32) -> io::Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        self.request(RouteNetlinkMessage::DelLink(m), 0).map(|_| ())
    }

    // ---- neighbours ----

    /// IPv4 neighbours on `ifindex`.
    pub fn neighbours(&mut self, ifindex: u32) -> io::Result<Vec<Neigh>> {
        let mut q = NeighbourMessage::default();
        q.header.family = AddressFamily::Inet;
        let r = self.request(RouteNetlinkMessage::GetNeighbour(q), NLM_F_DUMP)?;
        let mut out = Vec::new();
        for m in r {
            let RouteNetlinkMessage::NewNeighbour(n) = m else {
                continue;
            };
            if n.header.ifindex != ifindex || n.header.family != AddressFamily::Inet {
                continue;
            }
            let mut ip = None;
            let mut mac = Vec::new();
            for a in &n.attributes {
                match a {
                    NeighbourAttribute::Destination(NeighbourAddress::Inet(i)) => ip = Some(*i),
                    NeighbourAttribute::LinkLayerAddress(b) => mac = b.clone(),
                    _ => {}
                }
            }
            if let Some(ip) = ip {
                out.push(Neigh {
                    ip,
                    mac,
                    permanent: n.header.state == NeighbourState::Permanent,
                });
            }
        }
        Ok(out)
    }

    /// `ip neigh replace <ip> lladdr <mac> dev <ifindex> nud permanent`.
    pub fn neigh_set(&mut self, ifindex: u32, ip: Ipv4Addr, mac: &[u8]) -> io::Result<()> {
        let mut m = NeighbourMessage::default();
        m.header.family = AddressFamily::Inet;
        m.header.ifindex = ifindex;
        m.header.state = NeighbourState::Permanent;
        m.header.kind = RouteType::Unicast;
        m.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)));
        m.attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
        self.request(
            RouteNetlinkMessage::NewNeighbour(m),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
        .map(|_| ())
    }

    pub fn neigh_del(&mut self, ifindex: u32, ip: Ipv4Addr) -> io::Result<()> {
        let mut m = NeighbourMessage::default();
        m.header.family = AddressFamily::Inet;
        m.header.ifindex = ifindex;
        m.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)));
        ok_if_gone(self.request(RouteNetlinkMessage::DelNeighbour(m), 0))
    }

    // ---- FDB ----

    /// FDB entries on `ifindex` (`bridge fdb show dev <ifindex>`).
    pub fn fdb(&mut self, ifindex: u32) -> io::Result<Vec<Fdb>> {
        let mut q = NeighbourMessage::default();
        q.header.family = AddressFamily::Bridge;
        let r = self.request(RouteNetlinkMessage::GetNeighbour(q), NLM_F_DUMP)?;
        let mut out = Vec::new();
        for m in r {
            let RouteNetlinkMessage::NewNeighbour(n) = m else {
                continue;
            };
            if n.header.ifindex != ifindex || n.header.family != AddressFamily::Bridge {
                continue;
            }
            let mut dst = None;
            let mut mac = Vec::new();
            for a in &n.attributes {
                match a {
                    NeighbourAttribute::Destination(NeighbourAddress::Inet(i)) => dst = Some(*i),
                    NeighbourAttribute::Destination(NeighbourAddress::Other(b)) if b.len() == 4 => {
                        dst = Some(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
                    }
                    NeighbourAttribute::LinkLayerAddress(b) => mac = b.clone(),
                    _ => {}
                }
            }
            out.push(Fdb {
                mac,
                dst,
                permanent: n.header.state == NeighbourState::Permanent,
                is_self: n.header.flags.contains(NeighbourFlags::Own),
            });
        }
        Ok(out)
    }

    /// `bridge fdb replace <mac> dev <ifindex> dst <dst> self permanent`.
    pub fn fdb_set(&mut self, ifindex: u32, mac: &[u8], dst: Ipv4Addr) -> io::Result<()> {
        let m = fdb_msg(ifindex, mac, dst);
        self.request(
            RouteNetlinkMessage::NewNeighbour(m),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
        .map(|_| ())
    }

    pub fn fdb_del(&mut self, ifindex: u32, mac: &[u8], dst: Ipv4Addr) -> io::Result<()> {
        let m = fdb_msg(ifindex, mac, dst);
        ok_if_gone(self.request(RouteNetlinkMessage::DelNeighbour(m), 0))
    }

    // ---- routes ----

    /// IPv4 routes of the main table.
    pub fn routes4(&mut self) -> io::Result<Vec<Route4>> {
        let mut q = RouteMessage::default();
        q.header.address_family = AddressFamily::Inet;
        let mut out = Vec::new();
        for m in self.request(RouteNetlinkMessage::GetRoute(q), NLM_F_DUMP)? {
            let RouteNetlinkMessage::NewRoute(r) = m else {
                continue;
            };
            if r.header.kind != RouteType::Unicast {
                continue;
            }
            let mut table = r.header.table as u32;
            let mut dst = Ipv4Addr::UNSPECIFIED;
            let mut gw = None;
            let mut oif = None;
            for a in &r.attributes {
                match a {
                    RouteAttribute::Destination(d) => dst = v4_of(d).unwrap_or(dst),
                    RouteAttribute::Gateway(g) => gw = v4_of(g),
                    RouteAttribute::Oif(i) => oif = Some(*i),
                    RouteAttribute::Table(t) => table = *t,
                    _ => {}
                }
            }
            if table != RouteHeader::RT_TABLE_MAIN as u32 {
                continue;
            }
            if let Ok(dst) = Ipv4Network::new(dst, r.header.destination_prefix_length) {
                out.push(Route4 {
                    dst,
                    gw,
                    oif,
                    onlink: r.header.flags.contains(RouteFlags::Onlink),
                    protocol: u8::from(r.header.protocol),
                });
            }
        }
        Ok(out)
    }

    /// `ip route replace <dst> via <gw> dev <oif> [onlink]`.
    pub fn route_set(
        &mut self,
        dst: Ipv4Network,
        gw: Ipv4Addr,
        oif: u32,
        onlink: bool,
    ) -> io::Result<()> {
        let mut m = route_msg(dst);
        m.header.protocol = RouteProtocol::Boot;
        m.header.scope = RouteScope::Universe;
        if onlink {
            m.header.flags = RouteFlags::Onlink;
        }
        m.attributes
            .push(RouteAttribute::Gateway(RouteAddress::Inet(gw)));
        m.attributes.push(RouteAttribute::Oif(oif));
        self.request(
            RouteNetlinkMessage::NewRoute(m),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
        .map(|_| ())
    }

    /// Delete the route to `dst` (matching gateway and device when given).
    pub fn route_del(
        &mut self,
        dst: Ipv4Network,
        gw: Option<Ipv4Addr>,
        oif: Option<u32>,
    ) -> io::Result<()> {
        let mut m = route_msg(dst);
        m.header.scope = RouteScope::NoWhere;
        if let Some(gw) = gw {
            m.attributes
                .push(RouteAttribute::Gateway(RouteAddress::Inet(gw)));
        }
        if let Some(oif) = oif {
            m.attributes.push(RouteAttribute::Oif(oif));
        }
        ok_if_gone(self.request(RouteNetlinkMessage::DelRoute(m), 0))
    }

    /// The source address the kernel would use to reach `dst`, and via which device
    /// and gateway (`ip route get`).
    pub fn route_get(&mut self, dst: Ipv4Addr) -> io::Result<Option<(u32, Option<Ipv4Addr>)>> {
        let mut m = RouteMessage::default();
        m.header.address_family = AddressFamily::Inet;
        m.header.destination_prefix_length = 32;
        m.attributes
            .push(RouteAttribute::Destination(RouteAddress::Inet(dst)));
        let r = match self.request(RouteNetlinkMessage::GetRoute(m), 0) {
            Ok(r) => r,
            Err(e) if e.raw_os_error() == Some(libc::ENETUNREACH) => return Ok(None),
            Err(e) => return Err(e),
        };
        for m in r {
            if let RouteNetlinkMessage::NewRoute(r) = m {
                let oif = r.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Oif(i) => Some(*i),
                    _ => None,
                });
                let gw = r.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Gateway(g) => v4_of(g),
                    _ => None,
                });
                if let Some(oif) = oif {
                    return Ok(Some((oif, gw)));
                }
            }
        }
        Ok(None)
    }
}

fn route_msg(dst: Ipv4Network) -> RouteMessage {
    let mut m = RouteMessage::default();
    m.header.address_family = AddressFamily::Inet;
    m.header.destination_prefix_length = dst.prefix();
    m.header.table = RouteHeader::RT_TABLE_MAIN;
    m.header.kind = RouteType::Unicast;
    if dst.prefix() > 0 {
        m.attributes
            .push(RouteAttribute::Destination(RouteAddress::Inet(
                dst.network(),
            )));
    }
    m
}

fn fdb_msg(ifindex: u32, mac: &[u8], dst: Ipv4Addr) -> NeighbourMessage {
    let mut m = NeighbourMessage::default();
    m.header.family = AddressFamily::Bridge;
    m.header.ifindex = ifindex;
    m.header.state = NeighbourState::Permanent;
    m.header.flags = NeighbourFlags::Own;
    m.header.kind = RouteType::Unspec;
    m.attributes
        .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
    m.attributes
        .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(dst)));
    m
}

fn ok_if_gone(r: io::Result<Vec<RouteNetlinkMessage>>) -> io::Result<()> {
    match r {
        Ok(_) => Ok(()),
        Err(e) if is_not_found(&e) => Ok(()),
        Err(e) => Err(e),
    }
}

fn parse_link(m: &LinkMessage) -> VxlanLink {
    let mut l = VxlanLink {
        index: m.header.index,
        up: m.header.flags.contains(LinkFlags::Up),
        ..Default::default()
    };
    for a in &m.attributes {
        match a {
            LinkAttribute::IfName(n) => l.name = n.clone(),
            LinkAttribute::Address(b) => l.mac = b.clone(),
            LinkAttribute::Mtu(x) => l.mtu = *x,
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    match i {
                        LinkInfo::Kind(InfoKind::Vxlan) => l.is_vxlan = true,
                        LinkInfo::Data(InfoData::Vxlan(v)) => {
                            for x in v {
                                match x {
                                    InfoVxlan::Id(i) => l.vni = Some(*i),
                                    InfoVxlan::Local(a) => l.local = Some(*a),
                                    InfoVxlan::Port(p) => l.port = Some(*p),
                                    InfoVxlan::Learning(b) => l.learning = Some(*b),
                                    InfoVxlan::Link(i) => l.underlay = Some(*i),
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
    l
}

/// The IPv4 address of `ip` as a network, for callers holding `IpNetwork`s.
pub fn v4net(n: IpNetwork) -> Option<Ipv4Network> {
    match n {
        IpNetwork::V4(v) => Some(v),
        IpNetwork::V6(_) => None,
    }
}

pub fn v4(ip: IpAddr) -> Option<Ipv4Addr> {
    match ip {
        IpAddr::V4(v) => Some(v),
        IpAddr::V6(_) => None,
    }
}
