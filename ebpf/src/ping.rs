//! One ICMP echo to each of a few addresses over a raw socket, answers collected
//! together (a peer check must not cost a second per peer).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

fn checksum(b: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for c in b.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from_be_bytes([c[0], 0])
        };
        sum += w as u32;
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Address → whether it answered within `timeout`. Empty (nothing pinged) when a raw
/// socket cannot be had.
pub fn echo_all(targets: &[Ipv4Addr], timeout: Duration) -> BTreeMap<Ipv4Addr, bool> {
    let mut out: BTreeMap<Ipv4Addr, bool> = BTreeMap::new();
    if targets.is_empty() {
        return out;
    }
    // SAFETY: socket(2) with constant arguments; the result is checked before use.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            libc::IPPROTO_ICMP,
        )
    };
    if fd < 0 {
        return out;
    }
    // SAFETY: fd is a fresh descriptor nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let id = (std::process::id() & 0xffff) as u16;
    for (seq, t) in targets.iter().enumerate() {
        out.insert(*t, false);
        let mut pkt = [0u8; 16];
        pkt[0] = 8;
        pkt[4..6].copy_from_slice(&id.to_be_bytes());
        pkt[6..8].copy_from_slice(&(seq as u16).to_be_bytes());
        pkt[8..16].copy_from_slice(b"netdiag!");
        let c = checksum(&pkt);
        pkt[2..4].copy_from_slice(&c.to_be_bytes());
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as u16,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(t.octets()),
            },
            sin_zero: [0; 8],
        };
        // SAFETY: sendto on our socket with a valid buffer and a sockaddr_in of the right size.
        unsafe {
            libc::sendto(
                sock.as_raw_fd(),
                pkt.as_ptr().cast(),
                pkt.len(),
                0,
                (&addr as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as u32,
            );
        }
    }
    let end = Instant::now() + timeout;
    let mut buf = [0u8; 1500];
    while out.values().any(|v| !v) {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let mut pfd = libc::pollfd {
            fd: sock.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll on one pollfd we own.
        let n = unsafe { libc::poll(&mut pfd, 1, left.as_millis().max(1) as i32) };
        if n <= 0 {
            continue;
        }
        loop {
            // SAFETY: recv into our stack buffer with its length.
            let r = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if r <= 0 {
                break;
            }
            let b = &buf[..r as usize];
            let ihl = ((b.first().copied().unwrap_or(0) & 0x0f) as usize) * 4;
            if b.len() < ihl + 8
                || b[ihl] != 0
                || u16::from_be_bytes([b[ihl + 4], b[ihl + 5]]) != id
            {
                continue;
            }
            let src = Ipv4Addr::new(b[12], b[13], b[14], b[15]);
            if let Some(v) = out.get_mut(&src) {
                *v = true;
            }
        }
    }
    out
}
