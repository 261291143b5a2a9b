//! VXLAN in flannel's layout: device `flannel.<VNI>` (learning off, `local` = our underlay
//! address, `dstport`, MTU = underlay MTU − 50, address = lease network /32, a stable
//! MAC published in the lease) and for each peer (subnet S, public IP P, VTEP MAC M):
//! neighbour `S.0 lladdr M permanent`, FDB `M dst P self permanent`, route
//! `S via S.0 dev flannel.<VNI> onlink` — added in that order and rolled back when a
//! later step fails. With DirectRouting a peer on a directly connected network gets a
//! host-gw route instead.

use std::net::{IpAddr, Ipv4Addr};

use ipnetwork::{IpNetwork, Ipv4Network};
use nestbox_cni::net::netlink::{mac_string, parse_mac, Fdb, Link, Neigh, Netlink, VxlanSpec};
use serde_json::Value;

use super::{directly_reachable, sync_routes, Backend, WantRoute};
use crate::config::{Lease, VxlanData};
use crate::iface::Underlay;
use crate::{random_mac, Error, NlContext};

/// IPv4 + UDP + VXLAN + inner Ethernet headers.
pub const VXLAN_OVERHEAD: u32 = 50;

/// flannel creates its VTEP with txqueuelen 0 (the device has no queue anyway).
pub const VTEP_TXQLEN: u32 = 0;

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
            txqlen: VTEP_TXQLEN,
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
        if l.txqlen != spec.txqlen {
            self.nl
                .set_txqlen(l.index, spec.txqlen)
                .ctx(|| "setting VTEP txqueuelen".into())?;
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

    /// FDB entry, neighbour, route for one peer; a failed step undoes the earlier ones it
    /// added. The FDB entry goes first: on its own it steers nothing, so when a peer's
    /// VTEP MAC changes, the entry for the new MAC is in place before the neighbour is
    /// switched to it (one NLM_F_REPLACE) and no packet meets a MAC with no FDB entry.
    /// (flannel adds the neighbour first; with the route last, a new peer sees no
    /// difference.)
    fn program_peer(&mut self, dev: u32, p: &WantPeer, had: Had) -> Result<(), Error> {
        let (gw, mac, peer) = (p.route.gw, &p.mac[..], p.public_ip);
        self.nl
            .set_fdb(dev, mac, peer.into())
            .ctx(|| format!("fdb {} dst {peer}", mac_string(mac)))?;
        if let Err(e) = self.nl.set_neigh(dev, gw.into(), mac) {
            if !had.fdb {
                let _ = self.nl.del_fdb(dev, mac, peer.into());
            }
            return Err(e).ctx(|| format!("neighbour {gw} lladdr {}", mac_string(mac)));
        }
        if let Err(e) = self
            .nl
            .replace_route(p.route.dst.into(), gw.into(), dev, true)
        {
            if !had.neigh {
                let _ = self.nl.del_neigh(dev, gw.into());
            }
            if !had.fdb {
                let _ = self.nl.del_fdb(dev, mac, peer.into());
            }
            return Err(e).ctx(|| format!("route {} via {gw} onlink", p.route.dst));
        }
        Ok(())
    }
}

/// One peer behind the VTEP, as this node wants it programmed.
struct WantPeer {
    subnet: Ipv4Network,
    public_ip: Ipv4Addr,
    mac: Vec<u8>,
    route: WantRoute,
}

/// Which of a peer's entries existed (in any form) before programming it: rollback
/// removes only what it added.
#[derive(Clone, Copy)]
struct Had {
    neigh: bool,
    fdb: bool,
}

/// Neighbours to delete: permanent entries whose IP no wanted peer uses. An entry for a
/// wanted IP with another MAC is not stale: programming that peer replaced it in place
/// (or, if that failed, the old entry is still better than none).
fn stale_neighbours<'a>(neighs: &'a [Neigh], want: &[WantPeer]) -> Vec<&'a Neigh> {
    neighs
        .iter()
        .filter(|n| n.permanent && !want.iter().any(|w| IpAddr::V4(w.route.gw) == n.ip))
        .collect()
}

/// FDB entries to delete: remote entries (with a `dst`) that are not a wanted (MAC, dst)
/// pair — a peer that left, or a peer's MAC from before it changed.
fn stale_fdb<'a>(fdb: &'a [Fdb], want: &[WantPeer]) -> Vec<&'a Fdb> {
    fdb.iter()
        .filter(|f| {
            f.dst.is_some_and(|dst| {
                !want
                    .iter()
                    .any(|w| w.mac == f.mac && IpAddr::V4(w.public_ip) == dst)
            })
        })
        .collect()
}

impl Backend for Vxlan {
    fn kind(&self) -> &'static str {
        "vxlan"
    }

    fn mtu(&self) -> u32 {
        self.underlay.mtu.saturating_sub(VXLAN_OVERHEAD)
    }

    fn device(&self) -> Option<String> {
        Some(Self::device_name(self.vni))
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

        // 1. The wanted state, whole, before anything is touched.
        let mut want_routes = Vec::new();
        let mut want: Vec<WantPeer> = Vec::new();
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
            let route = WantRoute {
                dst: p.subnet,
                gw: p.subnet.network(),
                oif: dev,
                onlink: true,
            };
            want_routes.push(route.clone());
            want.push(WantPeer {
                subnet: p.subnet,
                public_ip: peer_ip,
                mac,
                route,
            });
        }

        // 2. Add and replace what differs.
        let mut errors = Vec::new();
        for w in &want {
            let gw = IpAddr::V4(w.route.gw);
            let dst = IpAddr::V4(w.public_ip);
            let has_neigh = neighs
                .iter()
                .any(|n| n.ip == gw && n.mac == w.mac && n.permanent);
            let has_fdb = fdb
                .iter()
                .any(|f| f.mac == w.mac && f.dst == Some(dst) && f.permanent && f.is_self);
            if has_neigh && has_fdb && w.route.present_in(&routes) {
                continue;
            }
            let had = Had {
                neigh: neighs.iter().any(|n| n.ip == gw),
                fdb: fdb.iter().any(|f| f.mac == w.mac),
            };
            match self.program_peer(dev, w, had) {
                Ok(()) => {
                    tracing::info!(subnet = %w.subnet, peer = %w.public_ip,
                        mac = %mac_string(&w.mac), "peer programmed");
                    changes += 1;
                }
                Err(e) => {
                    tracing::error!(subnet = %w.subnet, error = %e, "programming peer failed");
                    errors.push(e);
                }
            }
        }

        // 3. Remove what nobody wants: peers that left, MACs that changed.
        for n in stale_neighbours(&neighs, &want) {
            self.nl
                .del_neigh(dev, n.ip)
                .ctx(|| format!("deleting neighbour {}", n.ip))?;
            tracing::info!(ip = %n.ip, "stale neighbour removed");
            changes += 1;
        }
        for f in stale_fdb(&fdb, &want) {
            let Some(dst) = f.dst else { continue };
            self.nl
                .del_fdb(dev, &f.mac, dst)
                .ctx(|| format!("deleting fdb {}", mac_string(&f.mac)))?;
            tracing::info!(mac = %mac_string(&f.mac), %dst, "stale fdb entry removed");
            changes += 1;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(subnet: &str, ip: &str, mac: [u8; 6]) -> WantPeer {
        let subnet: Ipv4Network = subnet.parse().unwrap();
        WantPeer {
            subnet,
            public_ip: ip.parse().unwrap(),
            mac: mac.to_vec(),
            route: WantRoute {
                dst: subnet,
                gw: subnet.network(),
                oif: 7,
                onlink: true,
            },
        }
    }

    const OLD: [u8; 6] = [0x0e, 0, 0, 0, 0, 1];
    const NEW: [u8; 6] = [0x0e, 0, 0, 0, 0, 2];

    #[test]
    fn a_peers_new_mac_keeps_its_neighbour_and_drops_only_the_old_fdb_entry() {
        // As read before programming: the peer's entries with its old MAC.
        let neighs = vec![Neigh {
            ip: "10.244.2.0".parse().unwrap(),
            mac: OLD.to_vec(),
            permanent: true,
        }];
        let fdb = vec![Fdb {
            mac: OLD.to_vec(),
            dst: Some("192.168.77.12".parse().unwrap()),
            permanent: true,
            is_self: true,
        }];
        let want = vec![peer("10.244.2.0/24", "192.168.77.12", NEW)];
        assert!(
            stale_neighbours(&neighs, &want).is_empty(),
            "the neighbour was replaced in place, not stale"
        );
        let stale = stale_fdb(&fdb, &want);
        assert_eq!(stale.len(), 1);
        assert_eq!(stale[0].mac, OLD.to_vec());
    }

    #[test]
    fn a_peer_that_left_loses_its_neighbour_and_fdb_entry() {
        let neighs = vec![
            Neigh {
                ip: "10.244.2.0".parse().unwrap(),
                mac: OLD.to_vec(),
                permanent: true,
            },
            Neigh {
                ip: "10.244.3.0".parse().unwrap(),
                mac: NEW.to_vec(),
                permanent: true,
            },
        ];
        let fdb = vec![
            Fdb {
                mac: OLD.to_vec(),
                dst: Some("192.168.77.12".parse().unwrap()),
                permanent: true,
                is_self: true,
            },
            // The device's own entries (no dst) are never touched.
            Fdb {
                mac: [0, 0, 0, 0, 0, 0].to_vec(),
                dst: None,
                permanent: true,
                is_self: true,
            },
        ];
        let want = vec![peer("10.244.3.0/24", "192.168.77.13", NEW)];
        let n = stale_neighbours(&neighs, &want);
        assert_eq!(n.len(), 1);
        assert_eq!(n[0].ip.to_string(), "10.244.2.0");
        let f = stale_fdb(&fdb, &want);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].mac, OLD.to_vec());
    }
}
