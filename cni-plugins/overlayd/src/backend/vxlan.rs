//! VXLAN in flannel's layout: device `flannel.<VNI>` (learning off, `local` = our underlay
//! address, `dstport`, MTU = underlay MTU − 50, address = lease network /32, a stable
//! MAC published in the lease) and for each peer (subnet S, public IP P, VTEP MAC M):
//! neighbour `S.0 lladdr M permanent`, FDB `M dst P self permanent`, route
//! `S via S.0 dev flannel.<VNI> onlink` — added in that order and rolled back when a
//! later step fails. With DirectRouting a peer on a directly connected network gets a
//! host-gw route instead.

use std::net::{IpAddr, Ipv4Addr};

use ipnetwork::{IpNetwork, Ipv4Network};
use nestbox_cni::net::netlink::{mac_string, parse_mac, Link, Netlink, VxlanSpec};
use serde_json::Value;

use super::{directly_reachable, sync_routes, Backend, WantRoute};
use crate::config::{Lease, VxlanData};
use crate::iface::Underlay;
use crate::{random_mac, Error, NlContext};

/// IPv4 + UDP + VXLAN + inner Ethernet headers.
pub const VXLAN_OVERHEAD: u32 = 50;

pub struct Vxlan {
    underlay: Underlay,
    vni: u32,
    port: u16,
    direct_routing: bool,
    mac: Option<[u8; 6]>,
    nl: Netlink,
}

impl Vxlan {
    pub fn new(
        underlay: Underlay,
        vni: u32,
        port: u16,
        direct_routing: bool,
    ) -> Result<Vxlan, Error> {
        Ok(Vxlan {
            underlay,
            vni,
            port,
            direct_routing,
            mac: None,
            nl: Netlink::new().ctx(|| "opening rtnetlink".into())?,
        })
    }

    pub fn device_name(vni: u32) -> String {
        format!("flannel.{vni}")
    }

    fn spec(&self) -> VxlanSpec {
        VxlanSpec {
            name: Self::device_name(self.vni),
            vni: self.vni,
            local: self.underlay.ip,
            port: self.port,
            underlay: self.underlay.index,
            mtu: self.mtu(),
            mac: self.mac.unwrap_or_else(random_mac),
        }
    }

    /// Why an existing device cannot be kept (then it is recreated with the same MAC).
    fn conflict(l: &Link, s: &VxlanSpec) -> Option<String> {
        let Some(l) = &l.vxlan else {
            return Some("not a vxlan device".into());
        };
        if l.vni != Some(s.vni) {
            return Some(format!("VNI {:?} != {}", l.vni, s.vni));
        }
        if l.local != Some(s.local) {
            return Some(format!("local {:?} != {}", l.local, s.local));
        }
        if l.port != Some(s.port) {
            return Some(format!("dstport {:?} != {}", l.port, s.port));
        }
        if l.learning == Some(true) {
            return Some("learning is on".into());
        }
        if l.underlay.is_some_and(|u| u != s.underlay) {
            return Some(format!("underlay #{:?} != #{}", l.underlay, s.underlay));
        }
        None
    }

    /// The device as it should be; returns (ifindex, changes made).
    fn ensure_device(&mut self, own: &Lease) -> Result<(u32, usize), Error> {
        let spec = self.spec();
        self.mac = Some(spec.mac);
        let mut changes = 0;
        let mut link = self
            .nl
            .link_by_name(&spec.name)
            .ctx(|| format!("reading {}", spec.name))?;
        if let Some(l) = &link {
            if let Some(why) = Self::conflict(l, &spec) {
                tracing::warn!(device = %spec.name, %why, "device settings conflict; recreating it");
                self.nl
                    .delete_link(l.index)
                    .ctx(|| format!("deleting {}", spec.name))?;
                link = None;
            }
        }
        let l = match link {
            Some(l) => l,
            None => {
                self.nl
                    .create_vxlan(&spec)
                    .ctx(|| format!("creating {}", spec.name))?;
                tracing::info!(device = %spec.name, vni = spec.vni, local = %spec.local,
                    port = spec.port, mtu = spec.mtu, mac = %mac_string(&spec.mac), "VXLAN device created");
                changes += 1;
                self.nl
                    .link_by_name(&spec.name)
                    .ctx(|| format!("reading {}", spec.name))?
                    .ok_or_else(|| {
                        Error::Config(format!("{} vanished after creation", spec.name))
                    })?
            }
        };
        if l.mac != mac_string(&spec.mac) {
            self.nl
                .set_mac(l.index, &spec.mac)
                .ctx(|| "setting VTEP MAC".into())?;
            changes += 1;
        }
        if l.mtu != spec.mtu {
            self.nl
                .set_mtu(l.index, spec.mtu)
                .ctx(|| "setting VTEP MTU".into())?;
            changes += 1;
        }
        // Address: exactly the lease's network address /32.
        let want = IpNetwork::V4(
            Ipv4Network::new(own.subnet.network(), 32).map_err(|e| Error::Config(e.to_string()))?,
        );
        let addrs = self
            .nl
            .addrs(l.index)
            .ctx(|| "reading VTEP addresses".into())?;
        for a in addrs.iter().filter(|a| a.is_ipv4() && **a != want) {
            self.nl
                .del_addr(l.index, *a)
                .ctx(|| format!("removing {a} from the VTEP"))?;
            changes += 1;
        }
        if !addrs.contains(&want) {
            self.nl
                .add_addr(l.index, want, false)
                .ctx(|| format!("adding {want} to the VTEP"))?;
            changes += 1;
        }
        if !l.up {
            self.nl
                .set_up(l.index, true)
                .ctx(|| "bringing the VTEP up".into())?;
            changes += 1;
        }
        Ok((l.index, changes))
    }

    /// Neighbour, FDB, route for one peer; a failed step undoes the earlier ones it added.
    fn program_peer(
        &mut self,
        dev: u32,
        gw: Ipv4Addr,
        mac: &[u8],
        peer: Ipv4Addr,
        route: &WantRoute,
        had: (bool, bool),
    ) -> Result<(), Error> {
        self.nl
            .set_neigh(dev, gw.into(), mac)
            .ctx(|| format!("neighbour {gw} lladdr {}", mac_string(mac)))?;
        if let Err(e) = self.nl.set_fdb(dev, mac, peer.into()) {
            if !had.0 {
                let _ = self.nl.del_neigh(dev, gw.into());
            }
            return Err(e).ctx(|| format!("fdb {} dst {peer}", mac_string(mac)));
        }
        if let Err(e) = self
            .nl
            .replace_route(route.dst.into(), gw.into(), dev, true)
        {
            if !had.1 {
                let _ = self.nl.del_fdb(dev, mac, peer.into());
            }
            if !had.0 {
                let _ = self.nl.del_neigh(dev, gw.into());
            }
            return Err(e).ctx(|| format!("route {} via {gw} onlink", route.dst));
        }
        Ok(())
    }
}

impl Backend for Vxlan {
    fn kind(&self) -> &'static str {
        "vxlan"
    }

    fn mtu(&self) -> u32 {
        self.underlay.mtu.saturating_sub(VXLAN_OVERHEAD)
    }

    fn backend_data(&mut self, previous: Option<&Lease>) -> Result<Value, Error> {
        let from_lease = previous
            .and_then(|l| l.vxlan_data())
            .and_then(|d| parse_mac(&d.vtep_mac).ok());
        let name = Self::device_name(self.vni);
        let from_device = self
            .nl
            .link_by_name(&name)
            .ctx(|| format!("reading {name}"))?
            .filter(|l| l.vxlan.is_some())
            .and_then(|l| parse_mac(&l.mac).ok());
        let (mac, source) = match (from_lease, from_device) {
            (Some(m), _) => (m, "previous lease"),
            (None, Some(m)) => (m, "existing device"),
            (None, None) => (random_mac().to_vec(), "generated"),
        };
        let mut m = [0u8; 6];
        m.copy_from_slice(&mac[..6]);
        self.mac = Some(m);
        tracing::info!(mac = %mac_string(&m), source, "VTEP MAC");
        serde_json::to_value(VxlanData {
            vni: self.vni,
            vtep_mac: mac_string(&m),
        })
        .map_err(|e| Error::Config(e.to_string()))
    }

    fn reconcile(
        &mut self,
        network: Ipv4Network,
        own: &Lease,
        peers: &[Lease],
    ) -> Result<usize, Error> {
        let (dev, mut changes) = self.ensure_device(own)?;
        let neighs = self
            .nl
            .neighbours(dev)
            .ctx(|| "listing neighbours".into())?;
        let fdb = self.nl.fdb(dev).ctx(|| "listing fdb".into())?;
        let routes = self.nl.routes().ctx(|| "listing routes".into())?;

        let mut want_routes = Vec::new();
        let mut want_neigh: Vec<(IpAddr, Vec<u8>)> = Vec::new();
        let mut want_fdb: Vec<(Vec<u8>, IpAddr)> = Vec::new();
        let mut errors = Vec::new();
        for p in peers {
            let peer_ip = p.attrs.public_ip;
            if p.attrs.backend_type != "vxlan" {
                tracing::warn!(subnet = %p.subnet, backend = %p.attrs.backend_type,
                    "peer uses another backend; skipped");
                continue;
            }
            let Some(mac) = p.vxlan_data().and_then(|d| parse_mac(&d.vtep_mac).ok()) else {
                tracing::warn!(subnet = %p.subnet, "peer lease has no valid VtepMAC; skipped");
                continue;
            };
            if self.direct_routing && directly_reachable(&mut self.nl, self.underlay.index, peer_ip)
            {
                want_routes.push(WantRoute {
                    dst: p.subnet,
                    gw: peer_ip,
                    oif: self.underlay.index,
                    onlink: false,
                });
                continue;
            }
            let gw = p.subnet.network();
            let route = WantRoute {
                dst: p.subnet,
                gw,
                oif: dev,
                onlink: true,
            };
            let has_neigh = neighs
                .iter()
                .any(|n| n.ip == IpAddr::V4(gw) && n.mac == mac && n.permanent);
            let has_fdb = fdb.iter().any(|f| {
                f.mac == mac && f.dst == Some(IpAddr::V4(peer_ip)) && f.permanent && f.is_self
            });
            let has_route = route.present_in(&routes);
            if !(has_neigh && has_fdb && has_route) {
                let had_neigh = neighs.iter().any(|n| n.ip == IpAddr::V4(gw));
                let had_fdb = fdb.iter().any(|f| f.mac == mac);
                match self.program_peer(dev, gw, &mac, peer_ip, &route, (had_neigh, had_fdb)) {
                    Ok(()) => {
                        tracing::info!(subnet = %p.subnet, peer = %peer_ip, mac = %mac_string(&mac),
                            "peer programmed");
                        changes += 1;
                    }
                    Err(e) => {
                        tracing::error!(subnet = %p.subnet, error = %e, "programming peer failed");
                        errors.push(e);
                    }
                }
            }
            want_neigh.push((gw.into(), mac.clone()));
            want_fdb.push((mac, peer_ip.into()));
            want_routes.push(route);
        }

        // Stale entries: peers that left, MACs that changed.
        for n in neighs.iter().filter(|n| n.permanent) {
            if !want_neigh
                .iter()
                .any(|(ip, mac)| *ip == n.ip && *mac == n.mac)
            {
                self.nl
                    .del_neigh(dev, n.ip)
                    .ctx(|| format!("deleting neighbour {}", n.ip))?;
                tracing::info!(ip = %n.ip, "stale neighbour removed");
                changes += 1;
            }
        }
        for f in fdb.iter() {
            let Some(dst) = f.dst else { continue };
            if !want_fdb.iter().any(|(mac, ip)| *mac == f.mac && *ip == dst) {
                self.nl
                    .del_fdb(dev, &f.mac, dst)
                    .ctx(|| format!("deleting fdb {}", mac_string(&f.mac)))?;
                tracing::info!(mac = %mac_string(&f.mac), %dst, "stale fdb entry removed");
                changes += 1;
            }
        }
        changes += sync_routes(
            &mut self.nl,
            network,
            own.subnet,
            &want_routes,
            &[dev, self.underlay.index],
        )?;
        match errors.into_iter().next() {
            Some(e) => Err(e),
            None => Ok(changes),
        }
    }

    fn cleanup(&mut self, network: Option<Ipv4Network>) -> Result<(), Error> {
        let name = Self::device_name(self.vni);
        if let Some(l) = self
            .nl
            .link_by_name(&name)
            .ctx(|| format!("reading {name}"))?
        {
            self.nl
                .delete_link(l.index)
                .ctx(|| format!("deleting {name}"))?;
            tracing::info!(device = %name, "VXLAN device removed");
        }
        if let Some(network) = network {
            let own = Ipv4Network::new(network.network(), 32).unwrap_or(network);
            sync_routes(&mut self.nl, network, own, &[], &[self.underlay.index])?;
        }
        Ok(())
    }
}
