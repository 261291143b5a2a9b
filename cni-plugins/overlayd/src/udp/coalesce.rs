//! Receive-side coalescing for the TUN: consecutive packets of one TCP stream (as they
//! arrive, one UDP GRO train after another) become one TSO packet — one `writev` of a
//! virtio-net header, the first packet's headers (lengths and checksums fixed up) and
//! every packet's payload, straight from the receive buffers: no copy in user space.
//! What cannot be merged is written as it is, one packet per `writev`.
//!
//! The rules are the kernel's GRO rules for TCP (`tcp_gro_receive`): IPv4 without
//! options and not fragmented, same addresses, ports, TOS, TTL, ACK number and TCP
//! options; flags ACK only (PSH allowed on the last packet, which ends the run);
//! sequence numbers contiguous; every payload but the last of the same size. Inner
//! checksums are not verified here: the outer UDP checksum, which the kernel checked,
//! covers the whole inner packet.

use std::io;
use std::os::fd::RawFd;

use super::tso::{fold, sum, F_NEEDS_CSUM, GSO_TCPV4, VNET_HDR_LEN};

const TCP_ACK: u8 = 0x10;
const TCP_PSH: u8 = 0x08;
/// Packets per TSO write (the kernel's GSO limit is 64 KiB anyway).
const MAX_RUN: usize = 64;

/// The parts of a TCP/IPv4 packet the merge rules look at.
#[derive(Debug, Clone, Copy)]
struct Tcp4<'a> {
    pkt: &'a [u8],
    thl: usize,
    seq: u32,
    flags: u8,
    payload: usize,
}

fn parse(pkt: &[u8]) -> Option<Tcp4<'_>> {
    if pkt.len() < 40 || pkt[0] != 0x45 || pkt[9] != 6 {
        return None;
    }
    if u16::from_be_bytes([pkt[2], pkt[3]]) as usize != pkt.len() {
        return None;
    }
    // MF set or a fragment offset: not a whole segment.
    if pkt[6] & 0x20 != 0 || (u16::from_be_bytes([pkt[6], pkt[7]]) & 0x1fff) != 0 {
        return None;
    }
    let thl = ((pkt[32] >> 4) as usize) * 4;
    if !(20..=60).contains(&thl) || pkt.len() < 20 + thl {
        return None;
    }
    Some(Tcp4 {
        pkt,
        thl,
        seq: u32::from_be_bytes([pkt[24], pkt[25], pkt[26], pkt[27]]),
        flags: pkt[33],
        payload: pkt.len() - 20 - thl,
    })
}

/// Whether `next` continues the run that `first` opened and `prev` last extended.
fn continues(first: &Tcp4, prev: &Tcp4, next: &Tcp4) -> bool {
    let (a, b) = (first.pkt, next.pkt);
    next.thl == first.thl
        && next.payload > 0
        && next.payload <= first.payload
        && prev.payload == first.payload
        && prev.flags == TCP_ACK
        && (next.flags == TCP_ACK || next.flags == TCP_ACK | TCP_PSH)
        && next.seq == prev.seq.wrapping_add(prev.payload as u32)
        // TOS, DF bit, TTL.
        && a[1] == b[1]
        && (a[6] & 0x40) == (b[6] & 0x40)
        && a[8] == b[8]
        // Addresses and ports.
        && a[12..24] == b[12..24]
        // ACK number.
        && a[28..32] == b[28..32]
        // TCP options.
        && a[40..20 + first.thl] == b[40..20 + first.thl]
}

/// Reused buffers for building the writes.
#[derive(Default)]
pub struct Coalescer {
    plan: Vec<(usize, usize, usize)>,
    head: Vec<u8>,
    iov: Vec<libc::iovec>,
    /// Counters: TSO writes, packets in them, single writes.
    pub merged_writes: u64,
    pub merged_packets: u64,
    pub single_writes: u64,
}

/// Split `pkts` into writes: (first index, packets, total IP length of the merged
/// packet); runs of one packet are written as they are.
fn plan(pkts: &[&[u8]], out: &mut Vec<(usize, usize, usize)>) {
    out.clear();
    let mut i = 0;
    while i < pkts.len() {
        let mut n = 1;
        let mut total = pkts[i].len();
        if let Some(first) = parse(pkts[i]).filter(|f| f.flags == TCP_ACK && f.payload > 0) {
            let mut prev = first;
            while i + n < pkts.len() && n < MAX_RUN {
                let Some(next) = parse(pkts[i + n]) else {
                    break;
                };
                if total + next.payload > 65_535 || !continues(&first, &prev, &next) {
                    break;
                }
                total += next.payload;
                n += 1;
                prev = next;
                if next.flags != TCP_ACK || next.payload < first.payload {
                    break; // PSH or a short segment ends a run
                }
            }
        }
        out.push((i, n, total));
        i += n;
    }
}

impl Coalescer {
    /// Write `pkts` (IPv4 packets, in arrival order) to the TUN `fd`.
    pub fn write_all(&mut self, fd: RawFd, pkts: &[&[u8]]) {
        let mut plan_ = std::mem::take(&mut self.plan);
        plan(pkts, &mut plan_);
        for &(i, n, total) in &plan_ {
            if n == 1 {
                self.single(fd, pkts[i]);
            } else {
                let run: Vec<Tcp4> = pkts[i..i + n].iter().filter_map(|p| parse(p)).collect();
                self.merged(fd, &run, total);
            }
        }
        self.plan = plan_;
    }

    fn single(&mut self, fd: RawFd, pkt: &[u8]) {
        let hdr = [0u8; VNET_HDR_LEN];
        self.iov.clear();
        self.iov.push(libc::iovec {
            iov_base: hdr.as_ptr() as *mut libc::c_void,
            iov_len: hdr.len(),
        });
        self.iov.push(libc::iovec {
            iov_base: pkt.as_ptr() as *mut libc::c_void,
            iov_len: pkt.len(),
        });
        self.single_writes += 1;
        self.writev(fd);
    }

    fn merged(&mut self, fd: RawFd, run: &[Tcp4], total: usize) {
        let first = &run[0];
        let last = &run[run.len() - 1];
        let hl = 20 + first.thl;
        let tcp_len = total - 20;
        // virtio_net_hdr, then the first packet's IP and TCP headers.
        self.head.clear();
        self.head.push(F_NEEDS_CSUM);
        self.head.push(GSO_TCPV4);
        self.head.extend_from_slice(&(hl as u16).to_ne_bytes());
        self.head
            .extend_from_slice(&(first.payload as u16).to_ne_bytes());
        self.head.extend_from_slice(&20u16.to_ne_bytes());
        self.head.extend_from_slice(&16u16.to_ne_bytes());
        self.head.extend_from_slice(&first.pkt[..hl]);
        let ip = VNET_HDR_LEN;
        let tcp = VNET_HDR_LEN + 20;
        self.head[ip + 2..ip + 4].copy_from_slice(&(total as u16).to_be_bytes());
        self.head[ip + 10..ip + 12].copy_from_slice(&[0, 0]);
        let c = !fold(sum(&self.head[ip..ip + 20]));
        self.head[ip + 10..ip + 12].copy_from_slice(&c.to_be_bytes());
        // PSH of the last packet carries over.
        self.head[tcp + 13] |= last.flags & TCP_PSH;
        // CHECKSUM_PARTIAL: the field holds the pseudo-header sum, not complemented.
        let pseudo = sum(&first.pkt[12..20]) + 6 + tcp_len as u64;
        self.head[tcp + 16..tcp + 18].copy_from_slice(&fold(pseudo).to_be_bytes());

        self.iov.clear();
        self.iov.push(libc::iovec {
            iov_base: self.head.as_ptr() as *mut libc::c_void,
            iov_len: self.head.len(),
        });
        self.iov.push(libc::iovec {
            iov_base: first.pkt[hl..].as_ptr() as *mut libc::c_void,
            iov_len: first.payload,
        });
        for p in &run[1..] {
            let h = 20 + p.thl;
            self.iov.push(libc::iovec {
                iov_base: p.pkt[h..].as_ptr() as *mut libc::c_void,
                iov_len: p.payload,
            });
        }
        self.merged_writes += 1;
        self.merged_packets += run.len() as u64;
        self.writev(fd);
    }

    fn writev(&mut self, fd: RawFd) {
        // SAFETY: every iovec points into a slice or buffer borrowed for this call.
        let r = unsafe { libc::writev(fd, self.iov.as_ptr(), self.iov.len() as libc::c_int) };
        if r < 0 {
            let e = io::Error::last_os_error();
            tracing::debug!(error = %e, "TUN write");
        }
    }

    /// The headers a merged write would start with (tests).
    #[cfg(test)]
    fn build(&mut self, run: &[&[u8]]) -> Vec<u8> {
        let parsed: Vec<Tcp4> = run.iter().filter_map(|p| parse(p)).collect();
        let total = 20 + parsed[0].thl + parsed.iter().map(|p| p.payload).sum::<usize>();
        // Same code path as merged(), minus the write.
        let fd = -1;
        self.merged(fd, &parsed, total);
        let mut out = self.head.clone();
        for v in &self.iov[1..] {
            // SAFETY: the iovecs point into `run`, alive here.
            out.extend_from_slice(unsafe {
                std::slice::from_raw_parts(v.iov_base as *const u8, v.iov_len)
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(seq: u32, payload: usize, flags: u8) -> Vec<u8> {
        let total = 20 + 32 + payload;
        let mut p = vec![0u8; total];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p[6] = 0x40;
        p[8] = 63;
        p[9] = 6;
        p[12..16].copy_from_slice(&[10, 244, 1, 2]);
        p[16..20].copy_from_slice(&[10, 244, 2, 2]);
        p[20..22].copy_from_slice(&40000u16.to_be_bytes());
        p[22..24].copy_from_slice(&5201u16.to_be_bytes());
        p[24..28].copy_from_slice(&seq.to_be_bytes());
        p[28..32].copy_from_slice(&7u32.to_be_bytes());
        p[32] = 8 << 4; // 32-byte header: timestamps
        p[33] = flags;
        p[40..52].copy_from_slice(&[1, 1, 8, 10, 0, 0, 0, 9, 0, 0, 0, 3]);
        for (i, b) in p[52..].iter_mut().enumerate() {
            *b = (seq as usize + i) as u8;
        }
        p
    }

    /// How `write_all` splits `pkts` into writes (packets per write).
    fn runs(pkts: &[Vec<u8>]) -> Vec<usize> {
        let refs: Vec<&[u8]> = pkts.iter().map(|p| p.as_slice()).collect();
        let mut out = Vec::new();
        plan(&refs, &mut out);
        out.iter().map(|&(_, n, _)| n).collect()
    }

    #[test]
    fn contiguous_segments_merge_and_gaps_flags_or_short_ones_end_a_run() {
        let a = TCP_ACK;
        let pkts = vec![
            seg(1000, 100, a),
            seg(1100, 100, a),
            seg(1200, 100, a | TCP_PSH), // PSH ends the run (and is in it)
            seg(1300, 100, a),
            seg(1400, 60, a), // short: ends it
            seg(1460, 100, a),
            seg(9999, 100, a), // a gap
            seg(10099, 100, a),
        ];
        assert_eq!(runs(&pkts), vec![3, 2, 1, 2]);
        // A different ACK number or options: no merge.
        let mut other_ack = seg(1100, 100, a);
        other_ack[31] = 8;
        assert_eq!(runs(&[seg(1000, 100, a), other_ack]), vec![1, 1]);
        let mut other_ts = seg(1100, 100, a);
        other_ts[47] = 10;
        assert_eq!(runs(&[seg(1000, 100, a), other_ts]), vec![1, 1]);
    }

    #[test]
    fn a_merged_write_is_one_valid_tso_packet() {
        let pkts = [
            seg(1000, 100, TCP_ACK),
            seg(1100, 100, TCP_ACK),
            seg(1200, 40, TCP_ACK | TCP_PSH),
        ];
        let refs: Vec<&[u8]> = pkts.iter().map(|p| p.as_slice()).collect();
        let mut c = Coalescer::default();
        let w = c.build(&refs);
        let (vh, p) = w.split_at(VNET_HDR_LEN);
        assert_eq!(vh[0], F_NEEDS_CSUM);
        assert_eq!(vh[1], GSO_TCPV4);
        assert_eq!(u16::from_ne_bytes([vh[2], vh[3]]), 52, "hdr_len");
        assert_eq!(u16::from_ne_bytes([vh[4], vh[5]]), 100, "gso_size");
        assert_eq!(u16::from_ne_bytes([vh[6], vh[7]]), 20, "csum_start");
        assert_eq!(u16::from_ne_bytes([vh[8], vh[9]]), 16, "csum_offset");
        assert_eq!(p.len(), 52 + 240);
        assert_eq!(u16::from_be_bytes([p[2], p[3]]) as usize, p.len());
        assert_eq!(!fold(sum(&p[..20])), 0, "IP header checksum");
        assert_eq!(p[33], TCP_ACK | TCP_PSH);
        // The payload is the three payloads in order.
        assert_eq!(&p[52..152], &pkts[0][52..]);
        assert_eq!(&p[152..252], &pkts[1][52..]);
        assert_eq!(&p[252..], &pkts[2][52..]);
        // Completing the partial checksum as a NIC would gives a valid TCP checksum.
        let mut q = p.to_vec();
        let partial = u16::from_be_bytes([q[36], q[37]]);
        q[36] = 0;
        q[37] = 0;
        let full = !fold(sum(&q[20..]) + partial as u64);
        q[36..38].copy_from_slice(&full.to_be_bytes());
        let pseudo = sum(&q[12..20]) + 6 + (q.len() - 20) as u64;
        assert_eq!(!fold(pseudo + sum(&q[20..])), 0, "TCP checksum");
    }
}
