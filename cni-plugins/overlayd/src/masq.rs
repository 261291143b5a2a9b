//! `--ip-masq`: flannel's masquerade and forward rules, in nftables table
//! `ip nestbox-overlay` (through `nft -f -`, one atomic transaction), or in iptables
//! chains `NESTBOX-OVL-POSTRTG` (nat) / `NESTBOX-OVL-FWD` (filter) when `nft` is missing.
//!
//! postrouting: cluster → cluster: no NAT; cluster → outside (not multicast): masquerade;
//! outside → our subnet: no NAT; outside → cluster: masquerade. forward: accept to and
//! from the cluster network.

use ipnetwork::Ipv4Network;
use nestbox_cni::net::tool::{run, which};

use crate::Error;

pub const NFT_TABLE: &str = "nestbox-overlay";
const IPT_NAT_CHAIN: &str = "NESTBOX-OVL-POSTRTG";
const IPT_FWD_CHAIN: &str = "NESTBOX-OVL-FWD";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MasqBackend {
    Nftables,
    Iptables,
}

impl MasqBackend {
    pub fn detect() -> MasqBackend {
        if which("nft") {
            MasqBackend::Nftables
        } else {
            MasqBackend::Iptables
        }
    }
}

pub fn nft_ruleset(network: Ipv4Network, lease: Ipv4Network) -> String {
    format!(
        "table ip {t}\ndelete table ip {t}\ntable ip {t} {{\n\
         \tchain postrouting {{\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         \t\tip saddr {n} ip daddr {n} return\n\
         \t\tip saddr {n} ip daddr != 224.0.0.0/4 masquerade fully-random\n\
         \t\tip saddr != {n} ip daddr {l} return\n\
         \t\tip saddr != {n} ip daddr {n} masquerade fully-random\n\t}}\n\
         \tchain forward {{\n\t\ttype filter hook forward priority filter; policy accept;\n\
         \t\tip saddr {n} accept\n\t\tip daddr {n} accept\n\t}}\n}}\n",
        t = NFT_TABLE,
        n = network,
        l = lease
    )
}

fn ipt_rules(
    network: Ipv4Network,
    lease: Ipv4Network,
) -> Vec<(&'static str, &'static str, Vec<String>)> {
    let n = network.to_string();
    let l = lease.to_string();
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    vec![
        (
            "nat",
            IPT_NAT_CHAIN,
            s(&["-s", &n, "-d", &n, "-j", "RETURN"]),
        ),
        (
            "nat",
            IPT_NAT_CHAIN,
            s(&[
                "-s",
                &n,
                "!",
                "-d",
                "224.0.0.0/4",
                "-j",
                "MASQUERADE",
                "--random-fully",
            ]),
        ),
        (
            "nat",
            IPT_NAT_CHAIN,
            s(&["!", "-s", &n, "-d", &l, "-j", "RETURN"]),
        ),
        (
            "nat",
            IPT_NAT_CHAIN,
            s(&[
                "!",
                "-s",
                &n,
                "-d",
                &n,
                "-j",
                "MASQUERADE",
                "--random-fully",
            ]),
        ),
        ("filter", IPT_FWD_CHAIN, s(&["-s", &n, "-j", "ACCEPT"])),
        ("filter", IPT_FWD_CHAIN, s(&["-d", &n, "-j", "ACCEPT"])),
    ]
}

/// Install the rules if they are missing or differ; returns whether it changed anything.
pub fn ensure(b: MasqBackend, network: Ipv4Network, lease: Ipv4Network) -> Result<bool, Error> {
    match b {
        MasqBackend::Nftables => {
            let have = run("nft", &["list", "table", "ip", NFT_TABLE], None).unwrap_or_default();
            let current = have.contains(&format!("ip saddr != {network} ip daddr {lease} return"))
                && have.contains("masquerade")
                && have.contains("chain forward");
            if current {
                return Ok(false);
            }
            run("nft", &["-f", "-"], Some(&nft_ruleset(network, lease)))?;
            Ok(true)
        }
        MasqBackend::Iptables => {
            let mut changed = false;
            for (table, chain, hook) in [
                ("nat", IPT_NAT_CHAIN, "POSTROUTING"),
                ("filter", IPT_FWD_CHAIN, "FORWARD"),
            ] {
                if run("iptables", &["-t", table, "-S", chain], None).is_err() {
                    run("iptables", &["-t", table, "-N", chain], None)?;
                    changed = true;
                }
                if run("iptables", &["-t", table, "-C", hook, "-j", chain], None).is_err() {
                    run("iptables", &["-t", table, "-A", hook, "-j", chain], None)?;
                    changed = true;
                }
            }
            for (table, chain, rule) in ipt_rules(network, lease) {
                let mut check = vec!["-t", table, "-C", chain];
                check.extend(rule.iter().map(|s| s.as_str()));
                if run("iptables", &check, None).is_err() {
                    let mut add = vec!["-t", table, "-A", chain];
                    add.extend(rule.iter().map(|s| s.as_str()));
                    run("iptables", &add, None)?;
                    changed = true;
                }
            }
            Ok(changed)
        }
    }
}

/// Remove the rules (`--cleanup`); missing rules are fine.
pub fn remove(b: MasqBackend) {
    match b {
        MasqBackend::Nftables => {
            let _ = run("nft", &["delete", "table", "ip", NFT_TABLE], None);
        }
        MasqBackend::Iptables => {
            for (table, chain, hook) in [
                ("nat", IPT_NAT_CHAIN, "POSTROUTING"),
                ("filter", IPT_FWD_CHAIN, "FORWARD"),
            ] {
                let _ = run("iptables", &["-t", table, "-D", hook, "-j", chain], None);
                let _ = run("iptables", &["-t", table, "-F", chain], None);
                let _ = run("iptables", &["-t", table, "-X", chain], None);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nft_ruleset_has_flannels_four_nat_rules() {
        let r = nft_ruleset(
            "10.244.0.0/16".parse().unwrap(),
            "10.244.1.0/24".parse().unwrap(),
        );
        assert!(r.contains("ip saddr 10.244.0.0/16 ip daddr 10.244.0.0/16 return"));
        assert!(
            r.contains("ip saddr 10.244.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random")
        );
        assert!(r.contains("ip saddr != 10.244.0.0/16 ip daddr 10.244.1.0/24 return"));
        assert!(
            r.contains("ip saddr != 10.244.0.0/16 ip daddr 10.244.0.0/16 masquerade fully-random")
        );
    }
}
