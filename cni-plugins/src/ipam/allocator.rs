//! Round-robin allocation within one range set, as the reference: continue after the
//! last reserved address, wrap through every range of the set, skip gateways; a
//! container that already holds an address in the set gets it back.

use std::net::IpAddr;

use ipnetwork::IpNetwork;

use super::config::{from_u128, set_string, to_u128, RangeSet};
use super::store::{Entry, Store};
use crate::cni::{Error, IpConfig, Result};

pub struct Allocator<'a> {
    pub set: &'a RangeSet,
    pub index: usize,
    pub store: &'a Store,
    /// What the container already holds (read once per ADD, under the lock).
    pub existing: &'a [Entry],
}

impl Allocator<'_> {
    fn config_for(&self, ip: IpAddr) -> Option<IpConfig> {
        let r = self.set.iter().find(|r| r.subnet.contains(ip))?;
        Some(IpConfig {
            interface: None,
            address: IpNetwork::new(ip, r.subnet.prefix()).ok()?,
            gateway: r.gateway,
        })
    }

    /// The candidate order: after the last reserved address, wrapping once.
    fn candidates(&self) -> impl Iterator<Item = IpAddr> + '_ {
        let mut segs: Vec<(usize, u128, u128)> = Vec::new();
        let last = self.store.last_reserved(self.index);
        match last.and_then(|l| {
            self.set
                .iter()
                .position(|r| r.contains(l))
                .map(|i| (i, to_u128(l)))
        }) {
            Some((i, l)) => {
                let r = &self.set[i];
                if l < to_u128(r.end) {
                    segs.push((i, l + 1, to_u128(r.end)));
                }
                for j in (i + 1..self.set.len()).chain(0..i) {
                    segs.push((j, to_u128(self.set[j].start), to_u128(self.set[j].end)));
                }
                segs.push((i, to_u128(r.start), l));
            }
            None => {
                for (j, r) in self.set.iter().enumerate() {
                    segs.push((j, to_u128(r.start), to_u128(r.end)));
                }
            }
        }
        segs.into_iter().flat_map(move |(j, lo, hi)| {
            let r = &self.set[j];
            (lo..=hi)
                .map(move |v| from_u128(v, &r.start))
                .filter(move |ip| Some(*ip) != r.gateway)
        })
    }

    pub fn get(&self, id: &str, ifname: &str, requested: Option<IpAddr>) -> Result<IpConfig> {
        if let Some(ip) = requested {
            let cfg = self
                .set
                .iter()
                .find(|r| r.contains(ip))
                .and_then(|_| self.config_for(ip))
                .ok_or_else(|| {
                    Error::config(format!("{ip} not in range set {}", set_string(self.set)))
                })?;
            if Some(ip)
                == self
                    .set
                    .iter()
                    .find(|r| r.contains(ip))
                    .and_then(|r| r.gateway)
            {
                return Err(Error::config(format!(
                    "requested ip {ip} is subnet's gateway"
                )));
            }
            if !self.store.reserve(id, ifname, ip, self.index)? {
                // Our own earlier reservation of it counts as success (ADD is retried).
                let mine = self.existing.iter().any(|e| e.ip == Some(ip));
                if !mine {
                    return Err(Error::internal(format!(
                        "requested IP address {ip} is not available in range set {}",
                        set_string(self.set)
                    )));
                }
            }
            return Ok(cfg);
        }
        for e in self.existing {
            if let Some(ip) = e.ip.filter(|ip| self.set.iter().any(|r| r.contains(*ip))) {
                if let Some(cfg) = self.config_for(ip) {
                    return Ok(cfg);
                }
            }
        }
        for ip in self.candidates() {
            if self.store.reserve(id, ifname, ip, self.index)? {
                return self
                    .config_for(ip)
                    .ok_or_else(|| Error::internal(format!("{ip} outside its range")));
            }
        }
        Err(Error::internal(format!(
            "no IP addresses available in range set: {}",
            set_string(self.set)
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipam::config::Range;

    fn set(subnet: &str, start: &str, end: &str, gateway: &str) -> RangeSet {
        vec![Range {
            subnet: subnet.parse().unwrap(),
            start: start.parse().unwrap(),
            end: end.parse().unwrap(),
            gateway: Some(gateway.parse().unwrap()),
        }]
    }

    fn store(tag: &str) -> (std::path::PathBuf, Store) {
        let d = std::env::temp_dir().join(format!("nestbox-alloc-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        let s = Store::open(&d).unwrap();
        (d, s)
    }

    #[test]
    fn allocation_is_round_robin_skips_the_gateway_and_wraps() {
        let (d, st) = store("rr");
        let set = set("10.9.0.0/29", "10.9.0.1", "10.9.0.6", "10.9.0.1");
        let get = |id: &str| {
            Allocator {
                set: &set,
                index: 0,
                store: &st,
                existing: &[],
            }
            .get(id, "eth0", None)
            .map(|c| c.address.ip().to_string())
        };
        assert_eq!(get("a").unwrap(), "10.9.0.2");
        assert_eq!(get("b").unwrap(), "10.9.0.3");
        st.release("a", "eth0").unwrap();
        // Round robin: continues after the last reserved address, not at the freed one.
        assert_eq!(get("c").unwrap(), "10.9.0.4");
        assert_eq!(get("d").unwrap(), "10.9.0.5");
        assert_eq!(get("e").unwrap(), "10.9.0.6");
        // Wraps to the freed address; then the set is full.
        assert_eq!(get("f").unwrap(), "10.9.0.2");
        assert!(get("g").is_err());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_requested_address_must_be_free_and_in_range() {
        let (d, st) = store("req");
        let set = set("10.9.1.0/24", "10.9.1.1", "10.9.1.254", "10.9.1.1");
        let alloc = Allocator {
            set: &set,
            index: 0,
            store: &st,
            existing: &[],
        };
        let want = |ip: &str| Some(ip.parse().unwrap());
        assert!(alloc.get("a", "eth0", want("10.9.1.77")).is_ok());
        assert!(alloc.get("b", "eth0", want("10.9.1.77")).is_err());
        assert_eq!(
            alloc.get("b", "eth0", want("10.9.2.5")).unwrap_err().code,
            7
        );
        assert_eq!(
            alloc.get("b", "eth0", want("10.9.1.1")).unwrap_err().code,
            7
        );
        let _ = std::fs::remove_dir_all(&d);
    }
}
