//! `/run/flannel/subnet.env`: the overlay agent (nestbox-overlayd) writes it, the plugin
//! reads it. One implementation of flannel's format for both sides; written atomically so
//! a plugin never sees half of it.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::Path;

use ipnetwork::Ipv4Network;

pub const DEFAULT_SUBNET_FILE: &str = "/run/flannel/subnet.env";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetEnv {
    pub network: Ipv4Network,
    /// The lease with its first usable address (`10.244.1.1/24`).
    pub subnet: Ipv4Network,
    pub mtu: u32,
    pub ipmasq: bool,
}

impl SubnetEnv {
    pub fn new(network: Ipv4Network, lease: Ipv4Network, mtu: u32, ipmasq: bool) -> SubnetEnv {
        let first = Ipv4Addr::from(u32::from(lease.network()).wrapping_add(1));
        let subnet = Ipv4Network::new(first, lease.prefix()).unwrap_or(lease);
        SubnetEnv {
            network,
            subnet,
            mtu,
            ipmasq,
        }
    }

    pub fn render(&self) -> String {
        format!(
            "FLANNEL_NETWORK={}\nFLANNEL_SUBNET={}\nFLANNEL_MTU={}\nFLANNEL_IPMASQ={}\n",
            self.network, self.subnet, self.mtu, self.ipmasq
        )
    }

    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        super::write_atomic(path, self.render().as_bytes())
    }

    pub fn parse(text: &str) -> Option<SubnetEnv> {
        let kv: HashMap<&str, &str> = text
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.trim(), v.trim()))
            .collect();
        Some(SubnetEnv {
            network: kv.get("FLANNEL_NETWORK")?.parse().ok()?,
            subnet: kv.get("FLANNEL_SUBNET")?.parse().ok()?,
            mtu: kv.get("FLANNEL_MTU")?.parse().ok()?,
            ipmasq: kv
                .get("FLANNEL_IPMASQ")
                .map(|v| *v == "true")
                .unwrap_or(false),
        })
    }

    pub fn read(path: &Path) -> std::io::Result<Option<SubnetEnv>> {
        match std::fs::read_to_string(path) {
            Ok(t) => Ok(SubnetEnv::parse(&t)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The leased subnet itself (`10.244.1.0/24`).
    pub fn lease(&self) -> Ipv4Network {
        Ipv4Network::new(self.subnet.network(), self.subnet.prefix()).unwrap_or(self.subnet)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_flannels_keys_with_the_first_usable_address() {
        let e = SubnetEnv::new(
            "10.244.0.0/16".parse().unwrap(),
            "10.244.1.0/24".parse().unwrap(),
            1450,
            true,
        );
        assert_eq!(
            e.render(),
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
        );
        assert_eq!(SubnetEnv::parse(&e.render()), Some(e.clone()));
        assert_eq!(e.lease().to_string(), "10.244.1.0/24");
    }
}
