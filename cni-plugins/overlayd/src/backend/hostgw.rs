//! host-gw: each peer's subnet routed via the peer's underlay address
//! (`S via P dev <iface>`). Needs L2 adjacency: a peer whose address is not on a directly
//! connected network is refused with a clear log line (once) and skipped.

use std::collections::HashSet;

use ipnetwork::Ipv4Network;
use nestbox_cni::net::netlink::Netlink;
use serde_json::Value;

use super::{directly_reachable, sync_routes, Backend, WantRoute};
use crate::config::Lease;
use crate::iface::Underlay;
use crate::{Error, NlContext};

pub struct HostGw {
    underlay: Underlay,
    nl: Netlink,
    refused: HashSet<Ipv4Network>,
}

impl HostGw {
    pub fn new(underlay: Underlay) -> Result<HostGw, Error> {
        Ok(HostGw {
            underlay,
            nl: Netlink::new().ctx(|| "opening rtnetlink".into())?,
            refused: HashSet::new(),
        })
    }
}

impl Backend for HostGw {
    fn kind(&self) -> &'static str {
        "host-gw"
    }

    fn mtu(&self) -> u32 {
        self.underlay.mtu
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
        let mut want = Vec::new();
        for p in peers {
            if p.attrs.backend_type != "host-gw" {
                tracing::warn!(subnet = %p.subnet, backend = %p.attrs.backend_type,
                    "peer uses another backend; skipped");
                continue;
            }
            let ip = p.attrs.public_ip;
            if !directly_reachable(&mut self.nl, self.underlay.index, ip) {
                if self.refused.insert(p.subnet) {
                    tracing::error!(subnet = %p.subnet, peer = %ip, iface = %self.underlay.name,
                        "host-gw refuses this peer: {ip} is not on a network directly connected to {} (host-gw needs L2 adjacency; use vxlan)",
                        self.underlay.name);
                }
                continue;
            }
            self.refused.remove(&p.subnet);
            want.push(WantRoute {
                dst: p.subnet,
                gw: ip,
                oif: self.underlay.index,
                onlink: false,
            });
        }
        sync_routes(
            &mut self.nl,
            network,
            own.subnet,
            &want,
            &[self.underlay.index],
        )
    }

    fn cleanup(&mut self, network: Option<Ipv4Network>) -> Result<(), Error> {
        if let Some(network) = network {
            let own = Ipv4Network::new(network.network(), 32).unwrap_or(network);
            sync_routes(&mut self.nl, network, own, &[], &[self.underlay.index])?;
        }
        Ok(())
    }
}
