//! host-local configuration, canonicalised as the reference does: gateway defaults to
//! network+1, the range to [network+1, broadcast-1] (v4) or [network+1, last] (v6),
//! /31 and /32 (/127, /128) are too small, range sets must not overlap.

use std::net::IpAddr;
use std::path::PathBuf;

use ipnetwork::IpNetwork;
use serde::Deserialize;
use serde_json::Value;

use crate::cni::skel::CmdArgs;
use crate::cni::{Code, Dns, Error, Result, Route};

pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/networks";

#[derive(Debug, Clone, Deserialize)]
struct RawRange {
    subnet: String,
    #[serde(default, rename = "rangeStart")]
    range_start: Option<IpAddr>,
    #[serde(default, rename = "rangeEnd")]
    range_end: Option<IpAddr>,
    #[serde(default)]
    gateway: Option<IpAddr>,
}

#[derive(Debug, Clone, Default, Deserialize)]
struct RawIpam {
    #[serde(default)]
    ranges: Vec<Vec<RawRange>>,
    #[serde(default)]
    subnet: Option<String>,
    #[serde(default, rename = "rangeStart")]
    range_start: Option<IpAddr>,
    #[serde(default, rename = "rangeEnd")]
    range_end: Option<IpAddr>,
    #[serde(default)]
    gateway: Option<IpAddr>,
    #[serde(default)]
    routes: Vec<Route>,
    #[serde(default, rename = "dataDir")]
    data_dir: Option<String>,
    #[serde(default, rename = "resolvConf")]
    resolv_conf: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Range {
    pub subnet: IpNetwork,
    pub start: IpAddr,
    pub end: IpAddr,
    pub gateway: Option<IpAddr>,
}

pub type RangeSet = Vec<Range>;

#[derive(Debug, Clone)]
pub struct IpamConfig {
    pub name: String,
    pub range_sets: Vec<RangeSet>,
    pub routes: Vec<Route>,
    pub data_dir: PathBuf,
    pub resolv_conf: Option<String>,
    pub requested: Vec<IpAddr>,
}

pub fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u32::from(a) as u128,
        IpAddr::V6(a) => u128::from(a),
    }
}

pub fn from_u128(v: u128, like: &IpAddr) -> IpAddr {
    match like {
        IpAddr::V4(_) => IpAddr::V4((v as u32).into()),
        IpAddr::V6(_) => IpAddr::V6(v.into()),
    }
}

impl Range {
    fn canonical(raw: &RawRange) -> Result<Range> {
        let subnet: IpNetwork = raw
            .subnet
            .parse()
            .map_err(|e| Error::config(format!("invalid subnet {:?}: {e}", raw.subnet)))?;
        let bits = if subnet.is_ipv4() { 32 } else { 128 };
        if subnet.prefix() > bits - 2 {
            return Err(Error::config(format!(
                "Network {subnet} too small to allocate from"
            )));
        }
        if subnet.ip() != subnet.network() {
            return Err(Error::config(format!(
                "Network has host bits set. For a subnet mask of length {} the network address is {}",
                subnet.prefix(),
                subnet.network()
            )));
        }
        let net = to_u128(subnet.network());
        let last = to_u128(match subnet {
            IpNetwork::V4(n) => IpAddr::V4(n.broadcast()),
            IpNetwork::V6(n) => IpAddr::V6(n.broadcast()),
        });
        let last_usable = if subnet.is_ipv4() { last - 1 } else { last };
        let like = subnet.ip();
        let check = |ip: IpAddr, what: &str| -> Result<IpAddr> {
            if ip.is_ipv4() != subnet.is_ipv4() || !subnet.contains(ip) {
                return Err(Error::config(format!(
                    "{what} {ip} not in network {subnet}"
                )));
            }
            Ok(ip)
        };
        let gateway = match raw.gateway {
            Some(g) => Some(check(g, "gateway")?),
            None => Some(from_u128(net + 1, &like)),
        };
        let start = match raw.range_start {
            Some(s) => check(s, "RangeStart")?,
            None => from_u128(net + 1, &like),
        };
        let end = match raw.range_end {
            Some(e) => check(e, "RangeEnd")?,
            None => from_u128(last_usable, &like),
        };
        if to_u128(start) > to_u128(end) {
            return Err(Error::config(format!(
                "RangeStart {start} is after RangeEnd {end}"
            )));
        }
        Ok(Range {
            subnet,
            start,
            end,
            gateway,
        })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.start.is_ipv4()
            && to_u128(ip) >= to_u128(self.start)
            && to_u128(ip) <= to_u128(self.end)
    }

    fn overlaps(&self, o: &Range) -> bool {
        self.start.is_ipv4() == o.start.is_ipv4()
            && to_u128(self.start) <= to_u128(o.end)
            && to_u128(o.start) <= to_u128(self.end)
    }
}

pub fn set_string(set: &RangeSet) -> String {
    set.iter()
        .map(|r| format!("{}-{}", r.start, r.end))
        .collect::<Vec<_>>()
        .join(",")
}

fn parse_ip_or_cidr(s: &str) -> Option<IpAddr> {
    s.parse::<IpAddr>()
        .ok()
        .or_else(|| s.parse::<IpNetwork>().ok().map(|n| n.ip()))
}

impl IpamConfig {
    /// Load from the whole network config (host-local reads `ipam`, `name`, `args`,
    /// `runtimeConfig` and `CNI_ARGS`).
    pub fn load(args: &CmdArgs) -> Result<IpamConfig> {
        let ipam_v = args
            .raw
            .get("ipam")
            .ok_or_else(|| Error::config("IPAM config missing 'ipam' key"))?;
        let raw = RawIpam::deserialize(ipam_v)
            .map_err(|e| Error::new(Code::Decode, format!("failed to load IPAM config: {e}")))?;
        if args.conf.name.is_empty() {
            return Err(Error::config("missing network name"));
        }
        let mut raw_sets = raw.ranges.clone();
        if let Some(subnet) = &raw.subnet {
            raw_sets.insert(
                0,
                vec![RawRange {
                    subnet: subnet.clone(),
                    range_start: raw.range_start,
                    range_end: raw.range_end,
                    gateway: raw.gateway,
                }],
            );
        }
        if raw_sets.is_empty() {
            return Err(Error::config("no IP ranges specified"));
        }
        let mut sets: Vec<RangeSet> = Vec::new();
        for (i, rs) in raw_sets.iter().enumerate() {
            if rs.is_empty() {
                return Err(Error::config(format!(
                    "invalid range set {i}: empty range set"
                )));
            }
            let mut set = Vec::new();
            for r in rs {
                let r =
                    Range::canonical(r).map_err(|e| e.context(format!("invalid range set {i}")))?;
                if let Some(first) = set.first() {
                    let first: &Range = first;
                    if first.start.is_ipv4() != r.start.is_ipv4() {
                        return Err(Error::config(format!(
                            "invalid range set {i}: mixed address families"
                        )));
                    }
                }
                if let Some(o) = set.iter().find(|o: &&Range| o.overlaps(&r)) {
                    return Err(Error::config(format!(
                        "invalid range set {i}: subnets {} and {} overlap",
                        o.subnet, r.subnet
                    )));
                }
                set.push(r);
            }
            sets.push(set);
        }
        for i in 0..sets.len() {
            for j in i + 1..sets.len() {
                if sets[i]
                    .iter()
                    .any(|a| sets[j].iter().any(|b| a.overlaps(b)))
                {
                    return Err(Error::config(format!("range set {i} overlaps with {j}")));
                }
            }
        }

        let mut requested = Vec::new();
        for (k, v) in args.cni_args() {
            if k == "IP" {
                for s in v.split(',').filter(|s| !s.is_empty()) {
                    requested.push(
                        parse_ip_or_cidr(s).ok_or_else(|| {
                            Error::config(format!("invalid IP {s:?} in CNI_ARGS"))
                        })?,
                    );
                }
            }
        }
        for src in [
            args.raw.pointer("/args/cni/ips"),
            args.raw.pointer("/runtimeConfig/ips"),
        ]
        .into_iter()
        .flatten()
        {
            if let Value::Array(ips) = src {
                for v in ips {
                    let s = v.as_str().unwrap_or_default();
                    requested.push(
                        parse_ip_or_cidr(s)
                            .ok_or_else(|| Error::config(format!("invalid IP {s:?}")))?,
                    );
                }
            }
        }
        requested.dedup();

        Ok(IpamConfig {
            name: args.conf.name.clone(),
            range_sets: sets,
            routes: raw.routes,
            data_dir: PathBuf::from(raw.data_dir.unwrap_or_else(|| DEFAULT_DATA_DIR.into())),
            resolv_conf: raw.resolv_conf,
            requested,
        })
    }

    pub fn network_dir(&self) -> PathBuf {
        self.data_dir.join(&self.name)
    }
}

/// Parse a resolv.conf into the result's DNS (nameserver, domain, search, options).
pub fn parse_resolv_conf(path: &str) -> Result<Dns> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::io(format!("failed to read resolvConf {path}"), e))?;
    let mut dns = Dns::default();
    for line in text.lines() {
        let mut f = line.split_whitespace();
        match f.next() {
            Some("nameserver") => dns.nameservers.extend(f.map(String::from)),
            Some("domain") => dns.domain = f.next().unwrap_or_default().to_string(),
            Some("search") => dns.search.extend(f.map(String::from)),
            Some("options") => dns.options.extend(f.map(String::from)),
            _ => {}
        }
    }
    Ok(dns)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(subnet: &str) -> RawRange {
        RawRange {
            subnet: subnet.into(),
            range_start: None,
            range_end: None,
            gateway: None,
        }
    }

    #[test]
    fn v4_range_defaults_skip_network_and_broadcast() {
        let r = Range::canonical(&raw("10.1.0.0/24")).unwrap();
        assert_eq!(r.start.to_string(), "10.1.0.1");
        assert_eq!(r.end.to_string(), "10.1.0.254");
        assert_eq!(r.gateway.unwrap().to_string(), "10.1.0.1");
    }

    #[test]
    fn tiny_and_host_bit_subnets_are_invalid_config() {
        assert_eq!(Range::canonical(&raw("10.1.0.0/31")).unwrap_err().code, 7);
        assert_eq!(Range::canonical(&raw("10.1.0.0/32")).unwrap_err().code, 7);
        assert_eq!(Range::canonical(&raw("10.1.0.1/24")).unwrap_err().code, 7);
    }

    #[test]
    fn v6_range_ends_at_the_last_address() {
        let r = Range::canonical(&raw("fd00::/120")).unwrap();
        assert_eq!(r.end.to_string(), "fd00::ff");
    }
}
