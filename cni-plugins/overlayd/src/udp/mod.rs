//! The UDP backend's user-space forwarder: a multi-queue TUN device (`flannel0`) and one
//! worker thread per queue, each with its own UDP socket (SO_REUSEPORT) on the node's
//! public address.
//!
//! Why it is not slow like flannel's proxy (one packet per `read`, one per `sendto`, one
//! per `write`, three copies each): the TUN carries virtio-net headers with TSO, so one
//! `read` brings up to 64 KiB of a TCP stream, split here into MTU-sized packets
//! (tun-rs's `gso_split`, checksums filled in); a train of those packets to one peer
//! leaves in one `sendmmsg` message with UDP GSO. On the way in, `recvmmsg` with UDP GRO
//! brings trains back, and the packets of one TCP flow are coalesced again into one TSO
//! write to the TUN (a `writev` straight from the receive buffers, [`coalesce`]). On the wire each datagram still holds exactly
//! one IP packet: flannel's UDP nodes and ours talk to each other.

pub mod coalesce;
pub mod mmsg;
pub mod wire;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;

use tun_rs::{DeviceBuilder, SyncDevice, IDEAL_BATCH_SIZE, VIRTIO_NET_HDR_LEN};

use self::coalesce::Coalescer;
use self::mmsg::{Receiver, Sender};
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
    /// errors the forwarder answers with.
    pub fn start(
        name: &str,
        queues: usize,
        local: SocketAddrV4,
        tun_addr: Ipv4Addr,
        mtu: u32,
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
                mtu: mtu as usize,
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

struct Worker {
    dev: SyncDevice,
    sock: OwnedFd,
    peers: Arc<RwLock<Arc<PeerTable>>>,
    stop: Arc<AtomicBool>,
    stats: Arc<Stats>,
    tun_addr: Ipv4Addr,
    mtu: usize,
}

/// Packets split from TUN reads before they are sent (a 64 KiB TSO read at the
/// smallest MSS the kernel uses for a 1472-byte MTU is ~48 packets).
const SPLIT_BUFS: usize = IDEAL_BATCH_SIZE;
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
        let mut tun_in = vec![0u8; VIRTIO_NET_HDR_LEN + 65_535];
        let seg_len = (self.mtu + 64).max(2048);
        let mut split: Vec<Vec<u8>> = (0..SPLIT_BUFS).map(|_| vec![0u8; seg_len]).collect();
        let mut sizes = vec![0usize; SPLIT_BUFS];
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
                self.tun_to_peers(
                    &mut tun_in,
                    &mut split,
                    &mut sizes,
                    &mut sender,
                    &mut logged_tun_error,
                );
            }
            if fds[1].revents & libc::POLLIN != 0 {
                self.peers_to_tun(&mut receiver, &mut coalescer);
            }
        }
    }

    /// Read the TUN until it is empty (or a batch is full), send what was read.
    fn tun_to_peers(
        &self,
        tun_in: &mut [u8],
        split: &mut [Vec<u8>],
        sizes: &mut [usize],
        sender: &mut Sender,
        logged: &mut bool,
    ) {
        let sock_fd = self.sock.as_raw_fd();
        for _round in 0..16 {
            let table = self.table();
            let mut used = 0;
            let mut drained = false;
            // Fill the split buffers with as many reads as fit a worst-case TSO read.
            while SPLIT_BUFS - used >= 64 {
                match self
                    .dev
                    .recv_multiple(tun_in, &mut split[used..], &mut sizes[used..], 0)
                {
                    Ok(n) => used += n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        drained = true;
                        break;
                    }
                    Err(e) => {
                        // A packet tun-rs cannot split (malformed GSO): dropped.
                        if !*logged {
                            tracing::warn!(error = %e, "TUN read failed; packet dropped");
                            *logged = true;
                        }
                    }
                }
            }
            let mut out: Vec<(SocketAddrV4, &[u8])> = Vec::with_capacity(used);
            for (buf, &len) in split.iter().zip(sizes.iter()).take(used) {
                let pkt = &buf[..len];
                let Some(dst) = ipv4_dst(pkt) else { continue };
                match table.lookup(dst) {
                    Some(peer) => out.push((peer, pkt)),
                    None => {
                        self.stats.no_route.fetch_add(1, Ordering::Relaxed);
                        if let Some(icmp) = net_unreachable(self.tun_addr, pkt) {
                            let mut b = vec![0u8; VIRTIO_NET_HDR_LEN];
                            b.extend_from_slice(&icmp);
                            let _ = self.dev.send(&b);
                        }
                    }
                }
            }
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
