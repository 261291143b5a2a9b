//! UDP in flannel's layout (`{"Backend":{"Type":"udp","Port":8285}}`): a TUN device
//! `flannel0` holding the lease's network address as /32, a route for the whole cluster
//! network through it (the node's own subnet stays on the bridge: its route is more
//! specific), MTU = underlay MTU − 28, and a user-space forwarder that carries each IP
//! packet in one UDP datagram to the peer node whose lease holds its destination
//! ([`crate::udp`]). The lease has no BackendData. The device lives as long as the agent
//! (a TUN goes with its last file descriptor), like flannel's.

use std::net::SocketAddrV4;

use ipnetwork::{IpNetwork, Ipv4Network};
use nestbox_cni::net::netlink::Netlink;
use serde_json::Value;

use super::Backend;
use crate::config::Lease;
use crate::iface::Underlay;
use crate::udp::wire::{PeerTable, UDP_OVERHEAD};
use crate::udp::Forwarder;
use crate::{Error, NlContext};

pub const DEVICE: &str = "flannel0";
pub const DEFAULT_PORT: u16 = 8285;
/// Segments per TSO packet the kernel may hand the forwarder (UDP GSO's own limit).
pub const MAX_GSO_SEGS: u32 = 64;

pub struct Udp {
    underlay: Underlay,
    port: u16,
    queues: usize,
    nl: Netlink,
    fwd: Option<Forwarder>,
    /// The table last given to the forwarder (to log changes only).
    table: Option<PeerTable>,
}

impl Udp {
    pub fn new(underlay: Underlay, port: u16, queues: usize) -> Result<Udp, Error> {
        Ok(Udp {
            underlay,
            port,
            queues,
            nl: Netlink::new().ctx(|| "opening rtnetlink".into())?,
            fwd: None,
            table: None,
        })
    }

    /// The forwarder running over an existing `flannel0`; (re)started when the device was
    /// deleted or a worker died. Returns its ifindex and whether it was (re)started.
    fn ensure_forwarder(&mut self, own: &Lease) -> Result<(u32, bool), Error> {
        let link = self
            .nl
            .link_by_name(DEVICE)
            .ctx(|| format!("reading {DEVICE}"))?;
        let healthy = self.fwd.as_ref().is_some_and(|f| f.alive());
        if let (Some(l), true) = (&link, healthy) {
            return Ok((l.index, false));
        }
        if self.fwd.take().is_some() {
            tracing::warn!(
                device = DEVICE,
                "TUN device or forwarder lost; starting again"
            );
            self.table = None;
        }
        if let Some(l) = link {
            // Someone else's flannel0 (a flannel that was killed with a persistent TUN,
            // or another program): ours must be the one with the queues.
            tracing::warn!(
                device = DEVICE,
                "removing an existing {DEVICE} to create ours"
            );
            self.nl
                .delete_link(l.index)
                .ctx(|| format!("deleting {DEVICE}"))?;
        }
        let fwd = Forwarder::start(
            DEVICE,
            self.queues,
            SocketAddrV4::new(self.underlay.ip, self.port),
            own.subnet.network(),
        )?;
        self.fwd = Some(fwd);
        let l = self
            .nl
            .link_by_name(DEVICE)
            .ctx(|| format!("reading {DEVICE}"))?
            .ok_or_else(|| Error::Interface(format!("{DEVICE} vanished after creation")))?;
        Ok((l.index, true))
    }
}

impl Backend for Udp {
    fn kind(&self) -> &'static str {
        "udp"
    }

    fn mtu(&self) -> u32 {
        self.underlay.mtu.saturating_sub(UDP_OVERHEAD)
    }

    fn device(&self) -> Option<String> {
        Some(DEVICE.to_string())
    }

    fn backend_data(&mut self, _previous: Option<&Lease>) -> Result<Value, Error> {
        Ok(Value::Null)
    }

    fn reconcile(
        &mut self,
        network: Ipv4Network,
        own: &Lease,
        peers: &[Lease],
    ) -> Result<usize, Error> {
        let (dev, started) = self.ensure_forwarder(own)?;
        let mut changes = usize::from(started);
        let Some(l) = self
            .nl
            .link_by_name(DEVICE)
            .ctx(|| format!("reading {DEVICE}"))?
        else {
            return Err(Error::Interface(format!("{DEVICE} vanished")));
        };
        if l.gso_max_segs != MAX_GSO_SEGS {
            // A TSO read is split into at most this many packets (the forwarder's buffers).
            self.nl
                .set_gso_max_segs(dev, MAX_GSO_SEGS)
                .ctx(|| "setting the TUN's gso_max_segs".into())?;
            changes += 1;
        }
        if l.mtu != self.mtu() {
            self.nl
                .set_mtu(dev, self.mtu())
                .ctx(|| "setting the TUN MTU".into())?;
            changes += 1;
        }
        // Address: the lease's network address /32 (flannel's; no broadcast routes).
        let want = IpNetwork::V4(
            Ipv4Network::new(own.subnet.network(), 32).map_err(|e| Error::Config(e.to_string()))?,
        );
        let addrs = self.nl.addrs(dev).ctx(|| "reading TUN addresses".into())?;
        for a in addrs.iter().filter(|a| a.is_ipv4() && **a != want) {
            self.nl
                .del_addr(dev, *a)
                .ctx(|| format!("removing {a} from {DEVICE}"))?;
            changes += 1;
        }
        if !addrs.contains(&want) {
            self.nl
                .add_addr(dev, want, false)
                .ctx(|| format!("adding {want} to {DEVICE}"))?;
            changes += 1;
        }
        if !l.up {
            self.nl
                .set_up(dev, true)
                .ctx(|| format!("bringing {DEVICE} up"))?;
            changes += 1;
        }
        // The cluster network through the TUN.
        let routes = self.nl.routes().ctx(|| "listing routes".into())?;
        let has_route = routes
            .iter()
            .any(|r| r.dst == IpNetwork::V4(network) && r.oif == Some(dev) && r.gw.is_none());
        if !has_route {
            self.nl
                .replace_dev_route(network.into(), dev)
                .ctx(|| format!("route {network} dev {DEVICE}"))?;
            tracing::info!(%network, device = DEVICE, "route programmed");
            changes += 1;
        }
        // Peers: the forwarder's table.
        let mut entries = Vec::new();
        for p in peers {
            if p.attrs.backend_type != "udp" {
                tracing::warn!(subnet = %p.subnet, backend = %p.attrs.backend_type,
                    "peer uses another backend; skipped");
                continue;
            }
            entries.push((p.subnet, SocketAddrV4::new(p.attrs.public_ip, self.port)));
        }
        let table = PeerTable::new(&entries);
        if self.table.as_ref() != Some(&table) {
            if let Some(f) = &self.fwd {
                f.set_peers(table.clone());
                let s = &f.stats;
                tracing::info!(
                    peers = table.len(),
                    sent = s.to_peers.load(std::sync::atomic::Ordering::Relaxed),
                    received = s.from_peers.load(std::sync::atomic::Ordering::Relaxed),
                    "UDP peers programmed"
                );
            }
            self.table = Some(table);
            changes += 1;
        }
        Ok(changes)
    }

    fn cleanup(&mut self, network: Option<Ipv4Network>) -> Result<(), Error> {
        self.fwd = None;
        if let Some(l) = self
            .nl
            .link_by_name(DEVICE)
            .ctx(|| format!("reading {DEVICE}"))?
        {
            self.nl
                .delete_link(l.index)
                .ctx(|| format!("deleting {DEVICE}"))?;
            tracing::info!(device = DEVICE, "TUN device removed");
        }
        // The route through flannel0 went with the device.
        let _ = network;
        Ok(())
    }
}
