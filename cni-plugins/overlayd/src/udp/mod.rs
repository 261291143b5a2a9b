//! The UDP backend's user-space forwarder: a multi-queue TUN device (`flannel0`) and one
//! worker thread per queue, each with its own UDP socket (SO_REUSEPORT) on the node's
//! public address.
//!
//! Why it is not slow like flannel's proxy (one packet per `read`, one per `sendto`, one
//! per `write`, three copies each): the TUN carries virtio-net headers with TSO, so one
//! `read` brings up to 64 KiB of a TCP stream, split here into MTU-sized packets without
//! copying the payload ([`tso`]: per-segment headers and checksums, payload slices); a
//! train of those packets to one peer leaves in one `sendmmsg` message with UDP GSO. On the way in, `recvmmsg` with UDP GRO
//! brings trains back, and the packets of one TCP flow are coalesced again into one TSO
//! write to the TUN (a `writev` straight from the receive buffers, [`coalesce`]). On the wire each datagram still holds exactly
//! one IP packet: flannel's UDP nodes and ours talk to each other.

pub mod coalesce;
pub mod mmsg;
pub mod tso;
pub mod wire;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;

use tun_rs::{DeviceBuilder, SyncDevice};

use self::coalesce::Coalescer;
use self::mmsg::{Out, Receiver, Sender};
use self::tso::{
    complete_csum, split_tcp4, Segment, VnetHdr, F_NEEDS_CSUM, GSO_NONE, GSO_TCPV4, VNET_HDR_LEN,
};
use self::wire::{gro_segments, ipv4_dst, net_unreachable, PeerTable};
use crate::Error;

/// Counters over all workers (logged by the backend now and then).
#[derive(Debug, Default)]
pub struct Stats {
    pub to_peers: AtomicU64,
    pub from_peers: AtomicU64,
    pub no_route: AtomicU64,
    pub foreign: AtomicU64,
    pub send_errors: AtomicU64,
}

/// The running forwarder; stopping it (drop) closes the TUN, which removes the device.
pub struct Forwarder {
    pub name: String,
    pub queues: usize,
    peers: Arc<RwLock<Arc<PeerTable>>>,
    stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<()>>,
    pub stats: Arc<Stats>,
}

impl Forwarder {
    /// Create the TUN `name` with `queues` queues and start one worker per queue,
    /// sending from and listening on `local`. `tun_addr` is the source of the ICMP
    /// errors the forwarder answers with. (The MTU is the backend's to set.)
    pub fn start(
        name: &str,
        queues: usize,
        local: SocketAddrV4,
        tun_addr: Ipv4Addr,
    ) -> Result<Forwarder, Error> {
        let queues = queues.max(1);
        let first = DeviceBuilder::new()
            .name(name)
            .offload(true)
            .multi_queue(queues > 1)
            .build_sync()
            .map_err(|e| Error::Interface(format!("creating TUN {name}: {e}")))?;
        let mut devs = vec![first];
        for _ in 1..queues {
            let q = devs[0]
                .try_clone()
                .map_err(|e| Error::Interface(format!("opening a queue of {name}: {e}")))?;
            devs.push(q);
        }
        // Offloads the forwarder handles: checksum and TCP/IPv4 segmentation. (tun-rs
        // turns on IPv6 TSO and UDP segmentation too; nothing here would split those.)
        // Device-wide, so after every queue is open.
        set_offload(devs[0].as_raw_fd(), TUN_F_CSUM | TUN_F_TSO4)
            .map_err(|e| Error::Interface(format!("TUNSETOFFLOAD on {name}: {e}")))?;
        let mut socks = Vec::new();
        for _ in 0..queues {
            socks.push(mmsg::socket(local).map_err(|e| {
                Error::Interface(format!(
                    "UDP socket on {local}: {e} (is another agent running?)"
                ))
            })?);
        }
        let peers = Arc::new(RwLock::new(Arc::new(PeerTable::default())));
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(Stats::default());
        let mut workers = Vec::new();
        for (i, (dev, sock)) in devs.into_iter().zip(socks).enumerate() {
            dev.set_nonblocking(true)
                .map_err(|e| Error::Interface(format!("TUN queue {i}: {e}")))?;
            let w = Worker {
                dev,
                sock,
                peers: Arc::clone(&peers),
                stop: Arc::clone(&stop),
                stats: Arc::clone(&stats),
                tun_addr,
            };
            workers.push(
                std::thread::Builder::new()
                    .name(format!("udp-fwd-{i}"))
                    .spawn(move || w.run())?,
            );
        }
        tracing::info!(device = name, queues, %local, "UDP forwarder started");
        Ok(Forwarder {
            name: name.to_string(),
            queues,
            peers,
            stop,
            workers,
            stats,
        })
    }

    /// Replace the peer table the workers route by.
    pub fn set_peers(&self, table: PeerTable) {
        if let Ok(mut p) = self.peers.write() {
            *p = Arc::new(table);
        }
    }

    pub fn peers(&self) -> Arc<PeerTable> {
        self.peers
            .read()
            .map(|p| Arc::clone(&p))
            .unwrap_or_default()
    }

    /// Whether every worker is still running.
    pub fn alive(&self) -> bool {
        self.workers.iter().all(|w| !w.is_finished())
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

const TUN_F_CSUM: libc::c_uint = 0x01;
const TUN_F_TSO4: libc::c_uint = 0x02;

fn set_offload(fd: std::os::fd::RawFd, flags: libc::c_uint) -> std::io::Result<()> {
    const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0; // _IOW('T', 208, unsigned int)
                                                      // SAFETY: TUNSETOFFLOAD takes its argument by value; fd is a TUN queue we own.
    let r = unsafe { libc::ioctl(fd, TUNSETOFFLOAD, flags as libc::c_ulong) };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

struct Worker {
    dev: SyncDevice,
    sock: OwnedFd,
    peers: Arc<RwLock<Arc<PeerTable>>>,
    stop: Arc<AtomicBool>,
    stats: Arc<Stats>,
    tun_addr: Ipv4Addr,
}

/// TUN reads batched before one sendmmsg: an arena of this many 64 KiB reads.
const READ_BATCH: usize = 4;
/// The most packets taken from the TUN before they are sent.
const MAX_OUT: usize = 256;
/// Datagrams per recvmmsg (each up to 64 KiB with GRO).
const RECV_BATCH: usize = 8;

impl Worker {
    fn table(&self) -> Arc<PeerTable> {
        self.peers
            .read()
            .map(|p| Arc::clone(&p))
            .unwrap_or_default()
    }

    fn run(self) {
        let tun_fd = self.dev.as_raw_fd();
        let sock_fd = self.sock.as_raw_fd();
        let mut reads = ReadArena::new();
        let mut sender = Sender::new();
        let mut receiver = Receiver::new(RECV_BATCH, 65_536);
        let mut coalescer = Coalescer::default();
        let mut logged_tun_error = false;

        while !self.stop.load(Ordering::Relaxed) {
            let mut fds = [
                libc::pollfd {
                    fd: tun_fd,
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: sock_fd,
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            // SAFETY: two pollfds we own, for the duration of the call.
            let r = unsafe { libc::poll(fds.as_mut_ptr(), 2, 200) };
            if r <= 0 {
                continue;
            }
            if fds[0].revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0 {
                // The device is gone (deleted by hand): the backend starts a new one.
                tracing::warn!("TUN queue closed; worker stops");
                return;
            }
            if fds[0].revents & libc::POLLIN != 0 {
                self.tun_to_peers(&mut reads, &mut sender, &mut logged_tun_error);
            }
            if fds[1].revents & libc::POLLIN != 0 {
                self.peers_to_tun(&mut receiver, &mut coalescer);
            }
        }
    }

    /// Read the TUN until it is empty (bounded), send what was read: TSO reads split
    /// into segments whose payload stays where it was read.
    fn tun_to_peers(&self, r: &mut ReadArena, sender: &mut Sender, logged: &mut bool) {
        let sock_fd = self.sock.as_raw_fd();
        let tun_fd = self.dev.as_raw_fd();
        for _round in 0..16 {
            let table = self.table();
            r.clear();
            let mut drained = false;
            while r.reads.len() < READ_BATCH && r.out.len() + 64 <= MAX_OUT {
                let off = r.reads.len() * READ_SIZE;
                let buf = &mut r.buf[off..off + READ_SIZE];
                // SAFETY: read(2) into a buffer we own, at most its length.
                let n = unsafe { libc::read(tun_fd, buf.as_mut_ptr().cast(), buf.len()) };
                if n < 0 {
                    let e = std::io::Error::last_os_error();
                    if e.kind() != std::io::ErrorKind::Interrupted {
                        drained = true;
                        break;
                    }
                    continue;
                }
                let n = n as usize;
                r.reads.push(off..off + n);
                let Some(hdr) = VnetHdr::decode(&buf[..n]) else {
                    continue;
                };
                let pkt = &mut buf[VNET_HDR_LEN..n];
                let Some(dst) = ipv4_dst(pkt) else { continue };
                let Some(peer) = table.lookup(dst) else {
                    self.stats.no_route.fetch_add(1, Ordering::Relaxed);
                    if let Some(icmp) = net_unreachable(self.tun_addr, pkt) {
                        let mut b = vec![0u8; VNET_HDR_LEN];
                        b.extend_from_slice(&icmp);
                        let _ = self.dev.send(&b);
                    }
                    continue;
                };
                let base = off + VNET_HDR_LEN;
                match hdr.gso_type {
                    GSO_NONE => {
                        if hdr.flags & F_NEEDS_CSUM != 0 {
                            complete_csum(pkt, hdr.csum_start as usize, hdr.csum_offset as usize);
                        }
                        r.out.push((peer, None, base..base + pkt.len()));
                    }
                    GSO_TCPV4 => {
                        r.segs.clear();
                        if split_tcp4(pkt, hdr.gso_size as usize, &mut r.heads, &mut r.segs)
                            .is_some()
                        {
                            for Segment { head, body } in r.segs.drain(..) {
                                r.out
                                    .push((peer, Some(head), base + body.start..base + body.end));
                            }
                        }
                    }
                    other => {
                        if !*logged {
                            tracing::warn!(
                                gso_type = other,
                                "TUN handed over a GSO type not enabled; dropped"
                            );
                            *logged = true;
                        }
                    }
                }
            }
            let out: Vec<Out> = r
                .out
                .iter()
                .map(|(peer, head, body)| match head {
                    Some(h) => (*peer, &r.heads[h.clone()], &r.buf[body.clone()]),
                    None => (*peer, &r.buf[body.clone()], &[][..]),
                })
                .collect();
            self.stats
                .to_peers
                .fetch_add(out.len() as u64, Ordering::Relaxed);
            match sender.send(sock_fd, &out) {
                Ok(0) => {}
                Ok(d) => {
                    self.stats
                        .send_errors
                        .fetch_add(d as u64, Ordering::Relaxed);
                }
                Err(e) => tracing::debug!(error = %e, "sendmmsg"),
            }
            if drained {
                return;
            }
        }
    }

    /// Read the socket until it is empty (bounded); write each batch's packets to the
    /// TUN, the packets of each TCP stream coalesced.
    fn peers_to_tun(&self, rx: &mut Receiver, coalescer: &mut Coalescer) {
        let sock_fd = self.sock.as_raw_fd();
        let tun_fd = self.dev.as_raw_fd();
        let table = self.table();
        for _round in 0..16 {
            let n = match rx.recv(sock_fd) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) => {
                    tracing::debug!(error = %e, "recvmmsg");
                    break;
                }
            };
            let mut pkts: Vec<&[u8]> = Vec::with_capacity(n * 64);
            for i in 0..n {
                let (src, data, seg) = rx.get(i);
                if data.is_empty() {
                    continue;
                }
                if !table.is_peer(src) {
                    self.stats.foreign.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                pkts.extend(gro_segments(data, seg).filter(|p| ipv4_dst(p).is_some()));
            }
            self.stats
                .from_peers
                .fetch_add(pkts.len() as u64, Ordering::Relaxed);
            coalescer.write_all(tun_fd, &pkts);
        }
    }
}

/// One TUN read's room (a virtio-net header and a 64 KiB packet).
const READ_SIZE: usize = VNET_HDR_LEN + 65_535 + 1;

/// TUN reads awaiting their send: the reads themselves, the headers built for their
/// segments, and what to send (peer, headers in `heads` or none, bytes in `buf`).
struct ReadArena {
    buf: Vec<u8>,
    reads: Vec<std::ops::Range<usize>>,
    heads: Vec<u8>,
    segs: Vec<Segment>,
    out: Vec<(
        SocketAddrV4,
        Option<std::ops::Range<usize>>,
        std::ops::Range<usize>,
    )>,
}

impl ReadArena {
    fn new() -> ReadArena {
        ReadArena {
            buf: vec![0u8; READ_BATCH * READ_SIZE],
            reads: Vec::with_capacity(READ_BATCH),
            heads: Vec::with_capacity(MAX_OUT * 64),
            segs: Vec::with_capacity(64),
            out: Vec::with_capacity(MAX_OUT),
        }
    }

    fn clear(&mut self) {
        self.reads.clear();
        self.heads.clear();
        self.out.clear();
    }
}
