//! Backends: what a node programs into the kernel for its peers' leases. `vxlan` builds
//! flannel's VXLAN layout (device, neighbour, FDB, onlink route per peer); `hostgw`
//! routes each peer's subnet via the peer's underlay address. Both reconcile: every call
//! compares the desired state with the kernel and fixes only the difference.

pub mod hostgw;
pub mod udp;
pub mod vxlan;

use std::net::{IpAddr, Ipv4Addr};

use ipnetwork::{IpNetwork, Ipv4Network};
use nestbox_cni::net::netlink::{Netlink, RouteEntry};
use serde_json::Value;

use crate::config::Lease;
use crate::{Error, NlContext};

pub trait Backend {
    /// The lease's `BackendType` (`vxlan`, `host-gw`).
    fn kind(&self) -> &'static str;
    /// The pod MTU (subnet.env's FLANNEL_MTU).
    fn mtu(&self) -> u32;
    /// The lease's `BackendData` to publish. VXLAN keeps its MAC across restarts: taken
    /// from `previous` (our lease from before), else from the existing device.
    fn backend_data(&mut self, previous: Option<&Lease>) -> Result<Value, Error>;
    /// Make the kernel match `own` and `peers`; returns how many changes were made.
    fn reconcile(
        &mut self,
        network: Ipv4Network,
        own: &Lease,
        peers: &[Lease],
    ) -> Result<usize, Error>;
    /// The overlay device this backend owns (`flannel.1`, `flannel0`), if any.
    fn device(&self) -> Option<String> {
        None
    }
    /// Remove everything this backend programs (`--cleanup`).
    fn cleanup(&mut self, network: Option<Ipv4Network>) -> Result<(), Error>;
}

/// Whether `ip` is on a network directly connected to `underlay` (no gateway between).
pub fn directly_reachable(nl: &mut Netlink, underlay: u32, ip: Ipv4Addr) -> bool {
    matches!(nl.route_get(ip.into()), Ok(Some(r)) if r.oif == Some(underlay) && r.gw.is_none())
}

/// A route this node wants: `dst via gw dev oif [onlink]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WantRoute {
    pub dst: Ipv4Network,
    pub gw: Ipv4Addr,
    pub oif: u32,
    pub onlink: bool,
}

impl WantRoute {
    pub fn present_in(&self, actual: &[RouteEntry]) -> bool {
        actual.iter().any(|r| {
            r.dst == IpNetwork::V4(self.dst)
                && r.gw == Some(IpAddr::V4(self.gw))
                && r.oif == Some(self.oif)
                && r.onlink == self.onlink
        })
    }
}

/// Add the missing `want` routes and delete routes into the cluster network through
/// `managed` devices that nobody wants (stale peers). Returns the number of changes.
pub fn sync_routes(
    nl: &mut Netlink,
    network: Ipv4Network,
    own: Ipv4Network,
    want: &[WantRoute],
    managed: &[u32],
) -> Result<usize, Error> {
    let actual = nl.routes().ctx(|| "listing routes".into())?;
    let mut changes = 0;
    for w in want {
        if !w.present_in(&actual) {
            nl.replace_route(w.dst.into(), w.gw.into(), w.oif, w.onlink)
                .ctx(|| format!("route {} via {} dev #{}", w.dst, w.gw, w.oif))?;
            tracing::info!(dst = %w.dst, gw = %w.gw, onlink = w.onlink, "route programmed");
            changes += 1;
        }
    }
    for r in &actual {
        let (IpNetwork::V4(dst), Some(IpAddr::V4(gw)), Some(oif)) = (r.dst, r.gw, r.oif) else {
            continue;
        };
        if !managed.contains(&oif)
            || dst == own
            || dst.prefix() < network.prefix()
            || !network.contains(dst.network())
        {
            continue;
        }
        let wanted = want
            .iter()
            .any(|w| w.dst == dst && w.gw == gw && w.oif == oif);
        if !wanted {
            nl.del_route(r.dst, r.gw, Some(oif))
                .ctx(|| format!("deleting stale route {dst}"))?;
            tracing::info!(%dst, %gw, "stale route removed");
            changes += 1;
        }
    }
    Ok(changes)
}

/// Peers: every lease but ours — and but stale ones of ours (same public IP, another
/// subnet), which would otherwise route a subnet back to this very node.
pub fn peers_of<'a>(own: &'a Lease, leases: &'a [Lease]) -> impl Iterator<Item = &'a Lease> {
    leases
        .iter()
        .filter(move |l| l.subnet != own.subnet && l.attrs.public_ip != own.attrs.public_ip)
}
