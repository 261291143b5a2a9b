//! What a TUN read with a virtio-net header means, and TCP segmentation without copying:
//! a TSO read (one TCP/IPv4 packet of up to 64 KiB and the MSS to cut it at) becomes
//! MTU-sized packets, each described as its own headers (built here: lengths, IP ID,
//! sequence number, flags, both checksums) plus a slice of the read's payload. The
//! sender hands both parts to the kernel in one iovec list: the payload is never copied
//! in user space, only read once for its checksum.

use std::ops::Range;

/// `struct virtio_net_hdr`: what precedes each packet read from the TUN.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VnetHdr {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
}

pub const VNET_HDR_LEN: usize = 10;
pub const F_NEEDS_CSUM: u8 = 1;
pub const GSO_NONE: u8 = 0;
pub const GSO_TCPV4: u8 = 1;
const TCP_FIN: u8 = 0x01;
const TCP_PSH: u8 = 0x08;
const TCP_CWR: u8 = 0x80;

impl VnetHdr {
    pub fn decode(b: &[u8]) -> Option<VnetHdr> {
        let b: &[u8; VNET_HDR_LEN] = b.get(..VNET_HDR_LEN)?.try_into().ok()?;
        let u = |i: usize| u16::from_ne_bytes([b[i], b[i + 1]]);
        Some(VnetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u(2),
            gso_size: u(4),
            csum_start: u(6),
            csum_offset: u(8),
        })
    }
}

/// The ones' complement sum of `data` as 16-bit big-endian words (an odd last byte
/// padded), folded to 16 bits but returned wide: add sums of pieces, then [`fold`].
pub fn sum(data: &[u8]) -> u64 {
    // 32-bit words in native order added into 64 bits: no carry to handle (a 64 KiB
    // packet cannot overflow it) and a loop the compiler vectorises. The order is fixed
    // up once at the end (a ones' complement sum is byte-order symmetric).
    let mut chunks = data.chunks_exact(4);
    let mut acc: u64 = (&mut chunks)
        .map(|c| u32::from_ne_bytes([c[0], c[1], c[2], c[3]]) as u64)
        .sum();
    let mut tail = [0u8; 4];
    let rest = chunks.remainder();
    tail[..rest.len()].copy_from_slice(rest);
    acc += u32::from_ne_bytes(tail) as u64;
    let mut s = (acc >> 32) + (acc & 0xffff_ffff);
    s = (s >> 16) + (s & 0xffff);
    s = (s >> 16) + (s & 0xffff);
    s = (s >> 16) + (s & 0xffff);
    let folded = s as u16;
    u16::from_be_bytes(folded.to_ne_bytes()) as u64
}

/// Fold a sum to 16 bits (not complemented).
pub fn fold(mut s: u64) -> u16 {
    while s >> 16 != 0 {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

/// Finish a CHECKSUM_PARTIAL packet (`NEEDS_CSUM` without GSO): the field at
/// `start + offset` holds the pseudo-header sum; the rest is summed from `start`.
pub fn complete_csum(pkt: &mut [u8], start: usize, offset: usize) -> bool {
    let at = start + offset;
    if at + 2 > pkt.len() || start > pkt.len() {
        return false;
    }
    let c = !fold(sum(&pkt[start..]));
    // UDP sends 0xffff for a computed 0 (0 means "no checksum").
    let c = if c == 0 && offset == 6 { 0xffff } else { c };
    pkt[at..at + 2].copy_from_slice(&c.to_be_bytes());
    true
}

/// One segment of a split: its headers in the header arena, its payload in the packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub head: Range<usize>,
    pub body: Range<usize>,
}

/// Split the TCP/IPv4 TSO packet `pkt` at `mss` bytes of payload: each segment's
/// headers are appended to `arena`, `out` gets the segments. None when `pkt` is not a
/// TCP/IPv4 packet this can split (the caller drops it).
pub fn split_tcp4(
    pkt: &[u8],
    mss: usize,
    arena: &mut Vec<u8>,
    out: &mut Vec<Segment>,
) -> Option<()> {
    if pkt.len() < 40 || pkt[0] >> 4 != 4 || pkt[9] != 6 || mss == 0 {
        return None;
    }
    let ihl = ((pkt[0] & 0x0f) as usize) * 4;
    let thl = ((*pkt.get(ihl + 12)? >> 4) as usize) * 4;
    let hl = ihl + thl;
    if ihl < 20 || thl < 20 || pkt.len() < hl {
        return None;
    }
    let payload = pkt.len() - hl;
    let id = u16::from_be_bytes([pkt[4], pkt[5]]);
    let seq = u32::from_be_bytes([pkt[ihl + 4], pkt[ihl + 5], pkt[ihl + 6], pkt[ihl + 7]]);
    let flags = pkt[ihl + 13];
    // The pseudo header minus the length: addresses and protocol.
    let pseudo = sum(&pkt[12..20]) + 6;
    let n = payload.div_ceil(mss).max(1);
    for k in 0..n {
        let start = hl + k * mss;
        let end = (start + mss).min(pkt.len());
        let len = end - start;
        let h = arena.len();
        arena.extend_from_slice(&pkt[..hl]);
        let hd = &mut arena[h..h + hl];
        // IP: length, ID, checksum.
        hd[2..4].copy_from_slice(&((hl + len) as u16).to_be_bytes());
        hd[4..6].copy_from_slice(&id.wrapping_add(k as u16).to_be_bytes());
        hd[10..12].copy_from_slice(&[0, 0]);
        let c = !fold(sum(&hd[..ihl]));
        hd[10..12].copy_from_slice(&c.to_be_bytes());
        // TCP: sequence number, flags (FIN and PSH only on the last, CWR only on the
        // first), checksum over the pseudo header, the header and this payload.
        let t = ihl;
        hd[t + 4..t + 8].copy_from_slice(&seq.wrapping_add((k * mss) as u32).to_be_bytes());
        let mut f = flags;
        if k + 1 < n {
            f &= !(TCP_FIN | TCP_PSH);
        }
        if k > 0 {
            f &= !TCP_CWR;
        }
        hd[t + 13] = f;
        hd[t + 16..t + 18].copy_from_slice(&[0, 0]);
        let s = pseudo + (thl + len) as u64 + sum(&hd[t..hl]) + sum(&pkt[start..end]);
        let c = !fold(s);
        hd[t + 16..t + 18].copy_from_slice(&c.to_be_bytes());
        out.push(Segment {
            head: h..h + hl,
            body: start..end,
        });
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slow_sum(d: &[u8]) -> u64 {
        d.chunks(2)
            .map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u64)
            .sum()
    }

    #[test]
    fn fast_sum_matches_the_definition_at_every_length_and_alignment() {
        let data: Vec<u8> = (0..300u32).map(|i| (i * 151 + 7) as u8).collect();
        for start in 0..4 {
            for len in 0..200 {
                let d = &data[start..start + len];
                assert_eq!(fold(sum(d)), fold(slow_sum(d)), "start {start} len {len}");
            }
        }
        // All ones everywhere: carries at every step.
        let ff = vec![0xffu8; 1001];
        assert_eq!(fold(sum(&ff)), fold(slow_sum(&ff)));
    }

    fn tso_packet(payload: usize, flags: u8) -> Vec<u8> {
        let total = 20 + 20 + payload;
        let mut p = vec![0u8; total];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p[4..6].copy_from_slice(&0xfffeu16.to_be_bytes());
        p[6] = 0x40;
        p[8] = 64;
        p[9] = 6;
        p[12..16].copy_from_slice(&[10, 244, 1, 2]);
        p[16..20].copy_from_slice(&[10, 244, 2, 2]);
        p[24..28].copy_from_slice(&0xffff_fff0u32.to_be_bytes());
        p[32] = 5 << 4;
        p[33] = flags;
        for (i, b) in p[40..].iter_mut().enumerate() {
            *b = (i * 31 + 3) as u8;
        }
        p
    }

    #[test]
    fn a_tso_read_becomes_valid_packets_that_reassemble_the_stream() {
        let pkt = tso_packet(3000, 0x10 | TCP_PSH | TCP_FIN | TCP_CWR);
        let mut arena = Vec::new();
        let mut segs = Vec::new();
        split_tcp4(&pkt, 1400, &mut arena, &mut segs).unwrap();
        assert_eq!(segs.len(), 3);
        let mut stream = Vec::new();
        for (k, s) in segs.iter().enumerate() {
            let mut p = arena[s.head.clone()].to_vec();
            p.extend_from_slice(&pkt[s.body.clone()]);
            let len = [1400, 1400, 200][k];
            assert_eq!(u16::from_be_bytes([p[2], p[3]]) as usize, 40 + len);
            assert_eq!(fold(slow_sum(&p[..20])), 0xffff, "IP checksum of {k}");
            let pseudo = slow_sum(&p[12..20]) + 6 + (p.len() - 20) as u64;
            assert_eq!(
                fold(pseudo + slow_sum(&p[20..])),
                0xffff,
                "TCP checksum of {k}"
            );
            assert_eq!(
                u16::from_be_bytes([p[4], p[5]]),
                0xfffeu16.wrapping_add(k as u16)
            );
            let seq = u32::from_be_bytes([p[24], p[25], p[26], p[27]]);
            assert_eq!(seq, 0xffff_fff0u32.wrapping_add((k * 1400) as u32));
            let f = p[33];
            assert_eq!(
                f & (TCP_PSH | TCP_FIN) != 0,
                k == 2,
                "PSH/FIN only on the last"
            );
            assert_eq!(f & TCP_CWR != 0, k == 0, "CWR only on the first");
            stream.extend_from_slice(&p[40..]);
        }
        assert_eq!(stream, pkt[40..]);
    }

    #[test]
    fn partial_checksums_are_completed() {
        let mut p = tso_packet(333, 0x18);
        // CHECKSUM_PARTIAL: the field holds the folded pseudo-header sum.
        let pseudo = fold(slow_sum(&p[12..20]) + 6 + (p.len() - 20) as u64);
        p[36..38].copy_from_slice(&pseudo.to_be_bytes());
        assert!(complete_csum(&mut p, 20, 16));
        let all = slow_sum(&p[12..20]) + 6 + (p.len() - 20) as u64 + slow_sum(&p[20..]);
        assert_eq!(fold(all), 0xffff);
    }
}
