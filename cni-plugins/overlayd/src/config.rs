//! The cluster network config (flannel's net-conf.json, also stored at `<prefix>/config`)
//! and the lease record each node publishes.

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnetwork::Ipv4Network;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::Error;

/// `{"Network":"10.244.0.0/16","SubnetLen":24,"Backend":{"Type":"vxlan"}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetworkConfig {
    #[serde(rename = "Network")]
    pub network: Ipv4Network,
    #[serde(rename = "SubnetLen", default = "default_subnet_len")]
    pub subnet_len: u8,
    #[serde(rename = "SubnetMin", default, skip_serializing_if = "Option::is_none")]
    pub subnet_min: Option<Ipv4Addr>,
    #[serde(rename = "SubnetMax", default, skip_serializing_if = "Option::is_none")]
    pub subnet_max: Option<Ipv4Addr>,
    #[serde(rename = "Backend", default)]
    pub backend: BackendConfig,
}

fn default_subnet_len() -> u8 {
    24
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BackendConfig {
    #[serde(rename = "Type", default)]
    pub kind: Option<String>,
    #[serde(rename = "VNI", default, skip_serializing_if = "Option::is_none")]
    pub vni: Option<u32>,
    #[serde(rename = "Port", default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(
        rename = "DirectRouting",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub direct_routing: Option<bool>,
}

impl NetworkConfig {
    pub fn parse(bytes: &[u8]) -> Result<NetworkConfig, Error> {
        let c: NetworkConfig = serde_json::from_slice(bytes)
            .map_err(|e| Error::Config(format!("invalid network config: {e}")))?;
        c.validate()?;
        Ok(c)
    }

    pub fn validate(&self) -> Result<(), Error> {
        if self.subnet_len < self.network.prefix() || self.subnet_len > 30 {
            return Err(Error::Config(format!(
                "SubnetLen {} does not fit Network {} (must be between /{} and /30)",
                self.subnet_len,
                self.network,
                self.network.prefix()
            )));
        }
        Ok(())
    }

    /// The subnets a node may lease, in order. Like flannel, the network's first subnet
    /// is skipped unless SubnetMin says otherwise.
    pub fn candidate_subnets(&self) -> Vec<Ipv4Network> {
        let step: u64 = 1u64 << (32 - self.subnet_len as u32);
        let first = u32::from(self.network.network()) as u64;
        let last = u32::from(self.network.broadcast()) as u64;
        let min = self.subnet_min.map(|a| u32::from(a) as u64).unwrap_or(
            if self.subnet_len > self.network.prefix() {
                first + step
            } else {
                first
            },
        );
        let max = self
            .subnet_max
            .map(|a| u32::from(a) as u64)
            .unwrap_or(last + 1 - step);
        let mut out = Vec::new();
        let mut a = first;
        while a <= last && out.len() < 1 << 16 {
            if a >= min && a <= max {
                if let Ok(n) = Ipv4Network::new(Ipv4Addr::from(a as u32), self.subnet_len) {
                    out.push(n);
                }
            }
            a += step;
        }
        out
    }
}

/// The value stored under `<prefix>/subnets/<a.b.c.d-len>`, field for field as flannel
/// writes it: `{"PublicIP":"…","PublicIPv6":null,"BackendType":"vxlan","BackendData":{…}}`
/// (flannel's `PublicIPv6` has no `omitempty`: an IPv4-only lease says `null`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeaseAttrs {
    #[serde(rename = "PublicIP")]
    pub public_ip: Ipv4Addr,
    #[serde(rename = "PublicIPv6", default)]
    pub public_ipv6: Option<Ipv6Addr>,
    #[serde(rename = "BackendType", default)]
    pub backend_type: String,
    #[serde(
        rename = "BackendData",
        default,
        skip_serializing_if = "Value::is_null"
    )]
    pub backend_data: Value,
}

/// VXLAN's backend data: `{"VNI":1,"VtepMAC":"…"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VxlanData {
    #[serde(rename = "VNI", default)]
    pub vni: u32,
    #[serde(rename = "VtepMAC")]
    pub vtep_mac: String,
}

/// A node's subnet lease.
#[derive(Debug, Clone, PartialEq)]
pub struct Lease {
    pub subnet: Ipv4Network,
    pub attrs: LeaseAttrs,
    /// Store-specific version used for compare-and-swap (etcd's mod_revision).
    pub revision: i64,
}

impl Lease {
    pub fn vxlan_data(&self) -> Option<VxlanData> {
        serde_json::from_value(self.attrs.backend_data.clone()).ok()
    }
}

/// `10.244.1.0/24` ↔ `10.244.1.0-24` (the etcd key's last component).
pub fn subnet_key(n: &Ipv4Network) -> String {
    format!("{}-{}", n.network(), n.prefix())
}

/// A dual-stack lease's key carries its IPv6 subnet after `&` (`10.244.1.0-24&fc00::-64`);
/// only the IPv4 part is used here.
pub fn parse_subnet_key(s: &str) -> Option<Ipv4Network> {
    let v4 = s.split('&').next()?;
    let (a, l) = v4.rsplit_once('-')?;
    Ipv4Network::new(a.parse().ok()?, l.parse().ok()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flannel_config_parses_and_skips_the_first_subnet() {
        let c = NetworkConfig::parse(
            br#"{"Network":"10.244.0.0/16","SubnetLen":24,"Backend":{"Type":"vxlan"}}"#,
        )
        .unwrap();
        let s = c.candidate_subnets();
        assert_eq!(s.len(), 255);
        assert_eq!(s[0].to_string(), "10.244.1.0/24");
        assert_eq!(s[254].to_string(), "10.244.255.0/24");
    }

    #[test]
    fn subnet_min_max_bound_the_candidates() {
        let c = NetworkConfig::parse(
            br#"{"Network":"10.250.0.0/22","SubnetMin":"10.250.1.0","SubnetMax":"10.250.2.0"}"#,
        )
        .unwrap();
        let s: Vec<String> = c
            .candidate_subnets()
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(s, ["10.250.1.0/24", "10.250.2.0/24"]);
    }

    #[test]
    fn subnet_keys_round_trip() {
        let n: Ipv4Network = "10.244.3.0/24".parse().unwrap();
        assert_eq!(subnet_key(&n), "10.244.3.0-24");
        assert_eq!(parse_subnet_key("10.244.3.0-24"), Some(n));
        assert_eq!(parse_subnet_key("10.244.3.0-24&fc00:0:0:3::-64"), Some(n));
    }

    #[test]
    fn lease_json_is_flannels_byte_for_byte() {
        let flannel = r#"{"PublicIP":"192.168.77.11","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0e:11:22:33:44:55"}}"#;
        let a: LeaseAttrs = serde_json::from_str(flannel).unwrap();
        assert_eq!(a.public_ipv6, None);
        assert_eq!(serde_json::to_string(&a).unwrap(), flannel);
        // Leases written before PublicIPv6 existed still read.
        let old: LeaseAttrs =
            serde_json::from_str(r#"{"PublicIP":"192.168.77.11","BackendType":"udp"}"#).unwrap();
        assert_eq!(
            serde_json::to_string(&old).unwrap(),
            r#"{"PublicIP":"192.168.77.11","PublicIPv6":null,"BackendType":"udp"}"#
        );
    }

    #[test]
    fn lease_attrs_use_flannels_field_names() {
        let a: LeaseAttrs = serde_json::from_str(
            r#"{"PublicIP":"192.168.77.2","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"ce:aa:bb:cc:dd:ee"}}"#,
        )
        .unwrap();
        assert_eq!(a.backend_type, "vxlan");
        let l = Lease {
            subnet: "10.244.1.0/24".parse().unwrap(),
            attrs: a,
            revision: 0,
        };
        assert_eq!(l.vxlan_data().unwrap().vtep_mac, "ce:aa:bb:cc:dd:ee");
    }
}
