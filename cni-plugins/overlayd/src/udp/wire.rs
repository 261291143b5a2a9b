//! flannel's UDP wire format and the per-packet decisions around it. A datagram's
//! payload is one whole IPv4 packet, nothing before it; datagrams go from the node's
//! public IP, port 8285 by default, to the peer's on the same port. Which peer: the one
//! whose lease holds the packet's destination. No peer: an ICMP "network unreachable"
//! goes back into the TUN, as flannel's proxy does.

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddrV4};

use ipnetwork::Ipv4Network;

/// IPv4 + UDP headers around each packet (the TUN's MTU is the underlay's minus this).
pub const UDP_OVERHEAD: u32 = 28;

/// The peers' subnets → their public address and port. All leases of a network have
/// the same length, so a lookup is one hash of the masked destination.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct PeerTable {
    prefix: u8,
    by_subnet: HashMap<u32, SocketAddrV4>,
    sources: HashSet<Ipv4Addr>,
}

impl PeerTable {
    pub fn new(peers: &[(Ipv4Network, SocketAddrV4)]) -> PeerTable {
        let prefix = peers.first().map(|(n, _)| n.prefix()).unwrap_or(32);
        let mut t = PeerTable {
            prefix,
            ..Default::default()
        };
        for (n, a) in peers {
            if n.prefix() != prefix {
                // Not flannel's layout (one SubnetLen per network); kept out rather than
                // matched wrongly.
                tracing::warn!(subnet = %n, "lease length differs from the others; skipped");
                continue;
            }
            t.by_subnet.insert(u32::from(n.network()), *a);
            t.sources.insert(*a.ip());
        }
        t
    }

    pub fn len(&self) -> usize {
        self.by_subnet.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_subnet.is_empty()
    }

    /// The peer whose lease holds `dst`.
    pub fn lookup(&self, dst: Ipv4Addr) -> Option<SocketAddrV4> {
        let mask = u32::MAX.checked_shl(32 - self.prefix as u32).unwrap_or(0);
        self.by_subnet.get(&(u32::from(dst) & mask)).copied()
    }

    /// Whether datagrams from `src` are a peer's (others are dropped: anyone on the
    /// underlay could otherwise inject packets into the pod network).
    pub fn is_peer(&self, src: Ipv4Addr) -> bool {
        self.sources.contains(&src)
    }
}

/// The destination of an IPv4 packet, if it is one.
pub fn ipv4_dst(pkt: &[u8]) -> Option<Ipv4Addr> {
    if pkt.len() < 20 || pkt[0] >> 4 != 4 {
        return None;
    }
    Some(Ipv4Addr::new(pkt[16], pkt[17], pkt[18], pkt[19]))
}

/// The Internet checksum (RFC 1071) of `data`.
pub fn checksum(data: &[u8]) -> u16 {
    !super::tso::fold(super::tso::sum(data))
}

/// ICMP "destination unreachable / network unreachable" from `from` about `offender`
/// (its IP header and first 8 payload bytes), as flannel's proxy sends when no lease
/// holds the destination. None when RFC 792 says not to answer: ICMP about ICMP, a
/// non-first fragment, or a malformed packet.
pub fn net_unreachable(from: Ipv4Addr, offender: &[u8]) -> Option<Vec<u8>> {
    if offender.len() < 20 || offender[0] >> 4 != 4 {
        return None;
    }
    let ihl = ((offender[0] & 0x0f) as usize) * 4;
    if ihl < 20 || offender.len() < ihl {
        return None;
    }
    if offender[9] == 1 {
        return None;
    }
    let frag_off = u16::from_be_bytes([offender[6], offender[7]]) & 0x1fff;
    if frag_off != 0 {
        return None;
    }
    let quoted = &offender[..(ihl + 8).min(offender.len())];
    let total = 20 + 8 + quoted.len();
    let mut p = vec![0u8; total];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[8] = 64; // TTL
    p[9] = 1; // ICMP
    p[12..16].copy_from_slice(&from.octets());
    p[16..20].copy_from_slice(&offender[12..16]);
    let c = checksum(&p[..20]);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    p[20] = 3; // destination unreachable
    p[21] = 0; // network unreachable
    p[28..].copy_from_slice(quoted);
    let c = checksum(&p[20..]);
    p[22..24].copy_from_slice(&c.to_be_bytes());
    Some(p)
}

/// Split a datagram that UDP GRO coalesced (`seg`: each datagram's size but the last's)
/// back into the datagrams, i.e. the packets.
pub fn gro_segments(data: &[u8], seg: Option<u16>) -> impl Iterator<Item = &[u8]> {
    let seg = match seg {
        Some(s) if s > 0 => s as usize,
        _ => data.len().max(1),
    };
    data.chunks(seg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Network {
        s.parse().unwrap()
    }

    #[test]
    fn lookup_finds_the_lease_that_holds_the_destination() {
        let a: SocketAddrV4 = "192.168.77.12:8285".parse().unwrap();
        let b: SocketAddrV4 = "192.168.77.13:8285".parse().unwrap();
        let t = PeerTable::new(&[(net("10.244.2.0/24"), a), (net("10.244.3.0/24"), b)]);
        assert_eq!(t.lookup("10.244.2.9".parse().unwrap()), Some(a));
        assert_eq!(t.lookup("10.244.3.255".parse().unwrap()), Some(b));
        assert_eq!(t.lookup("10.244.4.1".parse().unwrap()), None);
        assert!(t.is_peer("192.168.77.13".parse().unwrap()));
        assert!(!t.is_peer("192.168.77.50".parse().unwrap()));
        assert_eq!(
            PeerTable::new(&[]).lookup("10.0.0.1".parse().unwrap()),
            None
        );
    }

    #[test]
    fn checksum_of_a_known_ipv4_header() {
        // The classic example header (checksum field zeroed) → 0xb861.
        let h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(checksum(&h), 0xb861);
    }

    fn udp_packet(src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
        let mut p = vec![0u8; 40];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&40u16.to_be_bytes());
        p[8] = 64;
        p[9] = 17;
        p[12..16].copy_from_slice(&src);
        p[16..20].copy_from_slice(&dst);
        p[20..22].copy_from_slice(&5353u16.to_be_bytes());
        p
    }

    #[test]
    fn net_unreachable_quotes_the_offender_and_checks_out() {
        let off = udp_packet([10, 244, 1, 2], [10, 244, 9, 9]);
        let r = net_unreachable("10.244.1.0".parse().unwrap(), &off).unwrap();
        assert_eq!(r.len(), 20 + 8 + 28);
        assert_eq!(checksum(&r[..20]), 0, "IP header checksum");
        assert_eq!(checksum(&r[20..]), 0, "ICMP checksum");
        assert_eq!(&r[16..20], &[10, 244, 1, 2], "back to the sender");
        assert_eq!((r[20], r[21]), (3, 0));
        assert_eq!(&r[28..], &off[..28]);
        // Never about ICMP, never about a later fragment.
        let mut icmp = off.clone();
        icmp[9] = 1;
        assert!(net_unreachable("10.244.1.0".parse().unwrap(), &icmp).is_none());
        let mut frag = off;
        frag[7] = 8;
        assert!(net_unreachable("10.244.1.0".parse().unwrap(), &frag).is_none());
    }

    #[test]
    fn gro_segments_split_at_the_segment_size() {
        let d: Vec<u8> = (0..10).collect();
        let parts: Vec<&[u8]> = gro_segments(&d, Some(4)).collect();
        assert_eq!(parts, vec![&d[0..4], &d[4..8], &d[8..10]]);
        assert_eq!(gro_segments(&d, None).count(), 1);
    }
}
