//! The link facts doctor needs that nestbox-cni's netlink client does not keep (it
//! decodes only what the plugins use): a bridge port's hairpin mode. One RTM_GETLINK
//! for one index, decoded whole.

use std::io;

use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_REQUEST};
use netlink_packet_route::link::{
    InfoBridgePort, InfoPortData, LinkAttribute, LinkInfo, LinkMessage,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

/// The bridge-port settings of link `index` in the calling thread's netns (None when
/// it is no bridge port).
pub fn hairpin(index: u32) -> io::Result<Option<bool>> {
    let mut sock = Socket::new(NETLINK_ROUTE)?;
    sock.bind_auto()?;
    sock.connect(&SocketAddr::new(0, 0))?;
    let mut m = LinkMessage::default();
    m.header.index = index;
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST;
    header.sequence_number = 1;
    let mut nl = NetlinkMessage::new(
        header,
        NetlinkPayload::from(RouteNetlinkMessage::GetLink(m)),
    );
    nl.finalize();
    let mut buf = vec![0u8; nl.buffer_len()];
    nl.serialize(&mut buf);
    sock.send(&buf, 0)?;
    let mut rx = Vec::with_capacity(1 << 16);
    let n = sock.recv(&mut rx, 0)?;
    let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&rx[..n])
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
    match msg.payload {
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(l)) => Ok(l
            .attributes
            .iter()
            .filter_map(|a| match a {
                LinkAttribute::LinkInfo(infos) => Some(infos),
                _ => None,
            })
            .flatten()
            .find_map(|i| match i {
                LinkInfo::PortData(InfoPortData::BridgePort(opts)) => {
                    opts.iter().find_map(|o| match o {
                        InfoBridgePort::HairpinMode(h) => Some(*h),
                        _ => None,
                    })
                }
                _ => None,
            })),
        NetlinkPayload::Error(e) => Err(e.to_io()),
        _ => Ok(None),
    }
}
