//! Batched UDP I/O for the forwarder: `recvmmsg` with UDP GRO (the kernel hands over a
//! train of same-size datagrams from one peer as one buffer) and `sendmmsg` with UDP GSO
//! (a train of datagrams to one peer leaves as one buffer, segmented by the kernel or the
//! NIC). On the wire these are ordinary datagrams, one packet each: flannel's format.
//!
//! Hand-written over libc because each message needs its own control message (its own
//! GSO segment size, its own GRO answer): nix's `sendmmsg` takes one set for the batch.

use std::io;
use std::mem;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::RawFd;

const SOL_UDP: libc::c_int = 17;
const UDP_SEGMENT: libc::c_int = 103;
const UDP_GRO: libc::c_int = 104;
/// The kernel's UDP_MAX_SEGMENTS.
const MAX_SEGMENTS: usize = 64;
/// Payload bytes of one GSO send (an IPv4 datagram's limit, with room for headers).
const MAX_GSO_BYTES: usize = 65_000;
/// Control buffer per message: room for one `int` control message, 8-aligned.
type Cmsg = [u64; 8];

fn sockaddr(a: &SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(a.ip().octets()),
        },
        sin_zero: [0; 8],
    }
}

/// Datagrams read by one `recvmmsg`.
pub struct Receiver {
    bufs: Vec<Vec<u8>>,
    lens: Vec<usize>,
    srcs: Vec<Ipv4Addr>,
    segs: Vec<Option<u16>>,
    names: Vec<libc::sockaddr_in>,
    iovs: Vec<libc::iovec>,
    cmsgs: Vec<Cmsg>,
    hdrs: Vec<libc::mmsghdr>,
}

impl Receiver {
    /// `n` buffers of `size` bytes (64 KiB holds whatever GRO coalesces).
    pub fn new(n: usize, size: usize) -> Receiver {
        Receiver {
            bufs: (0..n).map(|_| vec![0u8; size]).collect(),
            lens: vec![0; n],
            srcs: vec![Ipv4Addr::UNSPECIFIED; n],
            segs: vec![None; n],
            // SAFETY: all-zero is a valid value of these plain C structs.
            names: vec![unsafe { mem::zeroed() }; n],
            iovs: Vec::with_capacity(n),
            cmsgs: vec![[0; 8]; n],
            hdrs: Vec::with_capacity(n),
        }
    }

    /// Read what is queued, without blocking; returns how many datagrams (0: none).
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        let n = self.bufs.len();
        self.iovs.clear();
        self.hdrs.clear();
        for i in 0..n {
            self.iovs.push(libc::iovec {
                iov_base: self.bufs[i].as_mut_ptr().cast(),
                iov_len: self.bufs[i].len(),
            });
        }
        for i in 0..n {
            // SAFETY: all-zero is a valid mmsghdr; the pointers set below stay valid for
            // the call (the vectors are not touched until it returns).
            let mut h: libc::mmsghdr = unsafe { mem::zeroed() };
            h.msg_hdr.msg_name = (&mut self.names[i] as *mut libc::sockaddr_in).cast();
            h.msg_hdr.msg_namelen = mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            h.msg_hdr.msg_iov = &mut self.iovs[i];
            h.msg_hdr.msg_iovlen = 1;
            h.msg_hdr.msg_control = self.cmsgs[i].as_mut_ptr().cast();
            h.msg_hdr.msg_controllen = mem::size_of::<Cmsg>();
            self.hdrs.push(h);
        }
        // SAFETY: hdrs holds n initialised mmsghdr whose buffers outlive the call.
        let r = unsafe {
            libc::recvmmsg(
                fd,
                self.hdrs.as_mut_ptr(),
                n as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(0),
                _ => Err(e),
            };
        }
        let got = r as usize;
        for i in 0..got {
            let h = &self.hdrs[i];
            self.lens[i] = if h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
                0 // cut short: not a whole packet
            } else {
                h.msg_len as usize
            };
            self.srcs[i] = Ipv4Addr::from(u32::from_be(self.names[i].sin_addr.s_addr));
            self.segs[i] = None;
            // SAFETY: the kernel filled msg_control up to msg_controllen; the CMSG_*
            // helpers walk only within it.
            unsafe {
                let mut c = libc::CMSG_FIRSTHDR(&h.msg_hdr);
                while !c.is_null() {
                    if (*c).cmsg_level == SOL_UDP && (*c).cmsg_type == UDP_GRO {
                        let v = std::ptr::read_unaligned(libc::CMSG_DATA(c) as *const libc::c_int);
                        self.segs[i] = u16::try_from(v).ok();
                    }
                    c = libc::CMSG_NXTHDR(&h.msg_hdr, c);
                }
            }
        }
        Ok(got)
    }

    /// Datagram `i` of the last `recv`: (source, bytes, GRO segment size).
    pub fn get(&self, i: usize) -> (Ipv4Addr, &[u8], Option<u16>) {
        (self.srcs[i], &self.bufs[i][..self.lens[i]], self.segs[i])
    }
}

/// A packet to send: its destination and its bytes in two parts (a segment's own
/// headers and its payload inside the TUN read; or a whole packet and nothing).
pub type Out<'a> = (SocketAddrV4, &'a [u8], &'a [u8]);

/// One message of a batch: packets `first..first+count` to `dst`, a train of `seg`-byte
/// datagrams (the last may be shorter).
struct Msg {
    dst: SocketAddrV4,
    first: usize,
    count: usize,
    seg: usize,
    bytes: usize,
    last: usize,
}

/// Datagrams sent by `sendmmsg`, trains of them as one GSO message each.
pub struct Sender {
    /// Off after the kernel refused a GSO send (a route whose device cannot checksum).
    pub gso: bool,
    msgs: Vec<Msg>,
    names: Vec<libc::sockaddr_in>,
    iovs: Vec<libc::iovec>,
    cmsgs: Vec<Cmsg>,
    hdrs: Vec<libc::mmsghdr>,
}

impl Default for Sender {
    fn default() -> Self {
        Sender::new()
    }
}

impl Sender {
    pub fn new() -> Sender {
        Sender {
            gso: true,
            msgs: Vec::new(),
            names: Vec::new(),
            iovs: Vec::new(),
            cmsgs: Vec::new(),
            hdrs: Vec::new(),
        }
    }

    /// Group `pkts` into messages: consecutive packets to one peer of one size (the last
    /// may be shorter) form a GSO train.
    fn group(&mut self, pkts: &[Out]) {
        self.msgs.clear();
        for (i, (dst, head, body)) in pkts.iter().enumerate() {
            let len = head.len() + body.len();
            if let Some(m) = self.msgs.last_mut() {
                if self.gso
                    && m.dst == *dst
                    && m.count < MAX_SEGMENTS
                    && m.bytes + len <= MAX_GSO_BYTES
                    && m.last == m.seg
                    && len <= m.seg
                {
                    m.count += 1;
                    m.bytes += len;
                    m.last = len;
                    continue;
                }
            }
            self.msgs.push(Msg {
                dst: *dst,
                first: i,
                count: 1,
                seg: len,
                bytes: len,
                last: len,
            });
        }
    }

    /// Send every packet. Errors for single messages (an unreachable peer) drop those
    /// messages; returns how many packets were dropped so.
    pub fn send(&mut self, fd: RawFd, pkts: &[Out]) -> io::Result<usize> {
        if pkts.is_empty() {
            return Ok(0);
        }
        self.group(pkts);
        let n = self.msgs.len();
        self.names.clear();
        self.iovs.clear();
        self.hdrs.clear();
        self.cmsgs.clear();
        self.cmsgs.resize(n, [0; 8]);
        // Each packet's parts, in order; a message's iovecs are contiguous.
        let mut first_iov = Vec::with_capacity(n);
        for m in &self.msgs {
            first_iov.push(self.iovs.len());
            for (_, head, body) in &pkts[m.first..m.first + m.count] {
                for part in [head, body] {
                    if !part.is_empty() {
                        self.iovs.push(libc::iovec {
                            iov_base: part.as_ptr() as *mut libc::c_void,
                            iov_len: part.len(),
                        });
                    }
                }
            }
            self.names.push(sockaddr(&m.dst));
        }
        first_iov.push(self.iovs.len());
        for (i, m) in self.msgs.iter().enumerate() {
            // SAFETY: all-zero is a valid mmsghdr; every pointer set here points into
            // vectors that are not resized until sendmmsg has returned.
            let mut h: libc::mmsghdr = unsafe { mem::zeroed() };
            h.msg_hdr.msg_name = (&mut self.names[i] as *mut libc::sockaddr_in).cast();
            h.msg_hdr.msg_namelen = mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            h.msg_hdr.msg_iov = self.iovs[first_iov[i]..].as_mut_ptr();
            h.msg_hdr.msg_iovlen = first_iov[i + 1] - first_iov[i];
            if m.count > 1 {
                h.msg_hdr.msg_control = self.cmsgs[i].as_mut_ptr().cast();
                h.msg_hdr.msg_controllen = mem::size_of::<Cmsg>();
                // SAFETY: the control buffer is 64 bytes, 8-aligned: room for one header
                // and a u16 (CMSG_SPACE(2) = 24).
                unsafe {
                    let c = libc::CMSG_FIRSTHDR(&h.msg_hdr);
                    (*c).cmsg_level = SOL_UDP;
                    (*c).cmsg_type = UDP_SEGMENT;
                    (*c).cmsg_len = libc::CMSG_LEN(2) as usize;
                    std::ptr::write_unaligned(libc::CMSG_DATA(c) as *mut u16, m.seg as u16);
                    h.msg_hdr.msg_controllen = libc::CMSG_SPACE(2) as usize;
                }
            }
            self.hdrs.push(h);
        }
        let mut off = 0;
        let mut dropped = 0;
        while off < n {
            // SAFETY: hdrs[off..n] are initialised messages whose buffers (pkts, iovs,
            // names, cmsgs) outlive the call.
            let r = unsafe {
                libc::sendmmsg(
                    fd,
                    self.hdrs[off..].as_mut_ptr(),
                    (n - off) as libc::c_uint,
                    0,
                )
            };
            if r > 0 {
                off += r as usize;
                continue;
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => {}
                Some(libc::EAGAIN) => wait_writable(fd),
                // A GSO train the route cannot take (no checksum offload on the way out,
                // a path MTU below a segment): send the rest one datagram each.
                Some(libc::EIO) | Some(libc::EINVAL) if self.msgs[off].count > 1 => {
                    if self.gso {
                        tracing::warn!(error = %e, "UDP GSO refused; sending single datagrams");
                    }
                    self.gso = false;
                    let first = self.msgs[off].first;
                    let rest: Vec<Out> = pkts[first..].to_vec();
                    return self.send(fd, &rest).map(|d| d + dropped);
                }
                _ => {
                    tracing::debug!(error = %e, dst = %self.msgs[off].dst, "send failed");
                    dropped += self.msgs[off].count;
                    off += 1;
                }
            }
        }
        Ok(dropped)
    }
}

fn wait_writable(fd: RawFd) {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: one pollfd we own; a failure only means we retry sooner.
    unsafe { libc::poll(&mut p, 1, 100) };
}

/// A UDP socket bound to `local` (SO_REUSEPORT: one per worker), non-blocking, with
/// GRO on receive when the kernel has it and large buffers.
pub fn socket(local: SocketAddrV4) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: socket(2) with constant arguments; the fd is owned right away.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by socket(2) and nothing else owns it.
    let owned = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    let set = |level, name, v: libc::c_int| -> io::Result<()> {
        // SAFETY: setsockopt with a pointer to an int that lives for the call.
        let r = unsafe {
            libc::setsockopt(
                fd,
                level,
                name,
                (&v as *const libc::c_int).cast(),
                mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    };
    set(libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)?;
    // Bursts of 64 KiB trains: buffers well above the defaults (FORCE: root ignores
    // the rmem_max/wmem_max caps).
    let _ = set(libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, 8 << 20);
    let _ = set(libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, 8 << 20);
    if let Err(e) = set(SOL_UDP, UDP_GRO, 1) {
        tracing::info!(error = %e, "UDP GRO not available; datagrams are read one by one");
    }
    let sa = sockaddr(&local);
    // SAFETY: bind with a sockaddr_in that lives for the call.
    let r = unsafe {
        libc::bind(
            fd,
            (&sa as *const libc::sockaddr_in).cast(),
            mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trains_group_one_peer_one_size_with_a_shorter_last() {
        let a: SocketAddrV4 = "10.0.0.1:8285".parse().unwrap();
        let b: SocketAddrV4 = "10.0.0.2:8285".parse().unwrap();
        let big = [0u8; 1400];
        let small = [0u8; 60];
        let e: &[u8] = &[];
        let pkts: Vec<Out> = vec![
            (a, &big, e),
            (a, &big[..1000], &big[..400]), // in two parts: the same size
            (a, &small, e),                 // ends the train
            (a, &big, e),                   // a new one: nothing may follow a shorter last
            (b, &big, e),
            (b, &small, e),
            (b, &small, e), // two small ones after a train end: own message
        ];
        let mut s = Sender::new();
        s.group(&pkts);
        let shape: Vec<(usize, usize, usize)> =
            s.msgs.iter().map(|m| (m.first, m.count, m.seg)).collect();
        assert_eq!(
            shape,
            vec![(0, 3, 1400), (3, 1, 1400), (4, 2, 1400), (6, 1, 60)]
        );
        // Without GSO every packet is its own message.
        s.gso = false;
        s.group(&pkts);
        assert_eq!(s.msgs.len(), pkts.len());
    }

    #[test]
    fn trains_stop_at_64_segments_and_64k() {
        let a: SocketAddrV4 = "10.0.0.1:8285".parse().unwrap();
        let p = [0u8; 100];
        let pkts: Vec<Out> = (0..100).map(|_| (a, &p[..], &[][..])).collect();
        let mut s = Sender::new();
        s.group(&pkts);
        assert_eq!(s.msgs[0].count, 64);
        let big = [0u8; 1472];
        let pkts: Vec<Out> = (0..60).map(|_| (a, &big[..], &[][..])).collect();
        s.group(&pkts);
        assert!(s.msgs[0].bytes <= MAX_GSO_BYTES);
        assert_eq!(s.msgs[0].count, MAX_GSO_BYTES / 1472);
    }
}
