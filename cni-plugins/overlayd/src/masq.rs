//! `--ip-masq`: flannel's masquerade and forward rules, in nftables table
//! `ip nestbox-overlay` (through `nft -f -`, one atomic transaction), or in iptables
//! chains `NESTBOX-OVL-POSTRTG` (nat) / `NESTBOX-OVL-FWD` (filter), each chain rewritten
//! whole by one `iptables-restore --noflush` transaction.
//!
//! postrouting: packets kube-proxy marked for masquerade (0x4000): left to kube-proxy;
//! cluster → cluster: no NAT; cluster → outside (not multicast): masquerade; outside →
//! our subnet: no NAT; outside → cluster: masquerade. forward: accept to and from the
//! cluster network. Every rule carries a comment naming its owner, like flannel's
//! (`flanneld masq`) but with our name: an operator reading the ruleset should not
//! believe flannel is running.
//!
//! Only one backend's rules may exist: [`remove`] clears the other one (a switch of
//! `--ip-masq-backend` would otherwise leave both, and NAT would apply twice).

use ipnetwork::Ipv4Network;
use nestbox_cni::net::tool::{run, which};

use crate::Error;

pub const NFT_TABLE: &str = "nestbox-overlay";
pub const IPT_NAT_CHAIN: &str = "NESTBOX-OVL-POSTRTG";
pub const IPT_FWD_CHAIN: &str = "NESTBOX-OVL-FWD";
const MASQ_COMMENT: &str = "nestbox-overlayd masq";
const FWD_COMMENT: &str = "nestbox-overlayd forward";
/// kube-proxy's masquerade mark (`--masquerade-bit` 14).
pub const KUBE_PROXY_MARK: &str = "0x4000/0x4000";

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

    pub fn other(self) -> MasqBackend {
        match self {
            MasqBackend::Nftables => MasqBackend::Iptables,
            MasqBackend::Iptables => MasqBackend::Nftables,
        }
    }
}

pub fn nft_ruleset(network: Ipv4Network, lease: Ipv4Network) -> String {
    format!(
        "table ip {t}\ndelete table ip {t}\ntable ip {t} {{\n\
         \tchain postrouting {{\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         \t\tmeta mark & 0x4000 == 0x4000 return comment \"{c}\"\n\
         \t\tip saddr {n} ip daddr {n} return comment \"{c}\"\n\
         \t\tip saddr {n} ip daddr != 224.0.0.0/4 masquerade fully-random comment \"{c}\"\n\
         \t\tip saddr != {n} ip daddr {l} return comment \"{c}\"\n\
         \t\tip saddr != {n} ip daddr {n} masquerade fully-random comment \"{c}\"\n\t}}\n\
         \tchain forward {{\n\t\ttype filter hook forward priority filter; policy accept;\n\
         \t\tip saddr {n} accept comment \"{f}\"\n\t\tip daddr {n} accept comment \"{f}\"\n\t}}\n}}\n",
        t = NFT_TABLE,
        n = network,
        l = lease,
        c = MASQ_COMMENT,
        f = FWD_COMMENT,
    )
}

/// The two chains as `iptables-restore` input: (table, chain, hook, comment, rules).
fn ipt_chains(
    network: Ipv4Network,
    lease: Ipv4Network,
) -> [(
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    Vec<String>,
); 2] {
    let (n, l) = (network, lease);
    let m = |rule: String| format!("{rule} -m comment --comment \"{MASQ_COMMENT}\"");
    let f = |rule: String| format!("{rule} -m comment --comment \"{FWD_COMMENT}\"");
    [
        (
            "nat",
            IPT_NAT_CHAIN,
            "POSTROUTING",
            MASQ_COMMENT,
            vec![
                format!(
                    "{} -j RETURN",
                    m(format!("-m mark --mark {KUBE_PROXY_MARK}"))
                ),
                format!("{} -j RETURN", m(format!("-s {n} -d {n}"))),
                format!(
                    "{} -j MASQUERADE --random-fully",
                    m(format!("-s {n} ! -d 224.0.0.0/4"))
                ),
                format!("{} -j RETURN", m(format!("! -s {n} -d {l}"))),
                format!(
                    "{} -j MASQUERADE --random-fully",
                    m(format!("! -s {n} -d {n}"))
                ),
            ],
        ),
        (
            "filter",
            IPT_FWD_CHAIN,
            "FORWARD",
            FWD_COMMENT,
            vec![
                format!("{} -j ACCEPT", f(format!("-s {n}"))),
                format!("{} -j ACCEPT", f(format!("-d {n}"))),
            ],
        ),
    ]
}

/// What `iptables -t <table> -S <chain>` prints for `rules` (to compare with the chain).
fn ipt_listing(chain: &str, rules: &[String]) -> String {
    let mut s = format!("-N {chain}\n");
    for r in rules {
        // iptables prints host addresses of the rule spec with their prefix.
        s.push_str(&format!("-A {chain} {r}\n"));
    }
    s
}

fn ipt_normalise(s: &str) -> Vec<String> {
    s.lines().map(|l| l.trim().to_string()).collect()
}

/// Install the rules if they are missing or differ; returns whether it changed anything.
pub fn ensure(b: MasqBackend, network: Ipv4Network, lease: Ipv4Network) -> Result<bool, Error> {
    match b {
        MasqBackend::Nftables => {
            let have = run("nft", &["list", "table", "ip", NFT_TABLE], None).unwrap_or_default();
            let current = have.contains(&format!("ip saddr != {network} ip daddr {lease} return"))
                && have.contains("meta mark & 0x00004000 == 0x00004000 return")
                && have.contains(MASQ_COMMENT)
                && have.contains("chain forward");
            if current {
                return Ok(false);
            }
            run("nft", &["-f", "-"], Some(&nft_ruleset(network, lease)))?;
            Ok(true)
        }
        MasqBackend::Iptables => {
            let mut changed = false;
            for (table, chain, hook, comment, rules) in ipt_chains(network, lease) {
                let have = run("iptables", &["-t", table, "-S", chain], None).unwrap_or_default();
                if ipt_normalise(&have) != ipt_normalise(&ipt_listing(chain, &rules)) {
                    // Declaring the chain flushes it: the chain is replaced whole, in one
                    // transaction, so there is no moment without masquerade.
                    let mut script = format!("*{table}\n:{chain} - [0:0]\n");
                    for r in &rules {
                        script.push_str(&format!("-A {chain} {r}\n"));
                    }
                    script.push_str("COMMIT\n");
                    run("iptables-restore", &["--noflush"], Some(&script))?;
                    changed = true;
                }
                let jump = ["-m", "comment", "--comment", comment, "-j", chain];
                let mut check = vec!["-t", table, "-C", hook];
                check.extend(jump);
                if run("iptables", &check, None).is_err() {
                    let mut add = vec!["-t", table, "-A", hook];
                    add.extend(jump);
                    run("iptables", &add, None)?;
                    changed = true;
                }
                // Jumps of an older form (without the comment) would run the chain twice.
                let hooks = run("iptables", &["-t", table, "-S", hook], None).unwrap_or_default();
                let stale: Vec<String> = hooks
                    .lines()
                    .filter(|l| l.ends_with(&format!("-j {chain}")) && !l.contains(comment))
                    .map(|l| l.replacen("-A ", "-D ", 1))
                    .collect();
                if !stale.is_empty() {
                    let script = format!("*{table}\n{}\nCOMMIT\n", stale.join("\n"));
                    run("iptables-restore", &["--noflush"], Some(&script))?;
                    changed = true;
                }
            }
            Ok(changed)
        }
    }
}

/// Remove every jump to `chain` from `hook`, then the chain, in one transaction of
/// `restore` (`iptables-restore` or `ip6tables-restore`); returns whether the chain
/// existed. Missing chains and tools are fine.
pub fn remove_ipt_chain(tool: &str, restore: &str, table: &str, hook: &str, chain: &str) -> bool {
    if !which(tool) || run(tool, &["-t", table, "-S", chain], None).is_err() {
        return false;
    }
    let hooks = run(tool, &["-t", table, "-S", hook], None).unwrap_or_default();
    let mut script = format!("*{table}\n");
    for l in hooks
        .lines()
        .filter(|l| l.ends_with(&format!("-j {chain}")))
    {
        script.push_str(&l.replacen("-A ", "-D ", 1));
        script.push('\n');
    }
    script.push_str(&format!("-F {chain}\n-X {chain}\nCOMMIT\n"));
    if let Err(e) = run(restore, &["--noflush"], Some(&script)) {
        tracing::warn!(%table, %chain, error = %e, "removing iptables chain failed");
    }
    true
}

/// Remove one backend's rules; returns whether there were any. Missing rules are fine.
pub fn remove(b: MasqBackend) -> bool {
    match b {
        MasqBackend::Nftables => {
            which("nft") && run("nft", &["delete", "table", "ip", NFT_TABLE], None).is_ok()
        }
        MasqBackend::Iptables => {
            let nat = remove_ipt_chain(
                "iptables",
                "iptables-restore",
                "nat",
                "POSTROUTING",
                IPT_NAT_CHAIN,
            );
            let fwd = remove_ipt_chain(
                "iptables",
                "iptables-restore",
                "filter",
                "FORWARD",
                IPT_FWD_CHAIN,
            );
            nat || fwd
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nft_ruleset_has_the_mark_guard_and_flannels_four_nat_rules() {
        let r = nft_ruleset(
            "10.244.0.0/16".parse().unwrap(),
            "10.244.1.0/24".parse().unwrap(),
        );
        let guard = r.find("meta mark & 0x4000 == 0x4000 return").unwrap();
        let first = r
            .find("ip saddr 10.244.0.0/16 ip daddr 10.244.0.0/16 return")
            .unwrap();
        assert!(guard < first, "the guard comes first");
        assert!(
            r.contains("ip saddr 10.244.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random")
        );
        assert!(r.contains("ip saddr != 10.244.0.0/16 ip daddr 10.244.1.0/24 return"));
        assert!(
            r.contains("ip saddr != 10.244.0.0/16 ip daddr 10.244.0.0/16 masquerade fully-random")
        );
        assert_eq!(r.matches("comment \"nestbox-overlayd").count(), 7);
    }

    #[test]
    fn iptables_rules_carry_the_guard_first_and_a_comment_each() {
        let [(_, nat, hook, _, rules), (_, fwd, fhook, _, frules)] = ipt_chains(
            "10.244.0.0/16".parse().unwrap(),
            "10.244.1.0/24".parse().unwrap(),
        );
        assert_eq!(
            (nat, hook, fwd, fhook),
            (IPT_NAT_CHAIN, "POSTROUTING", IPT_FWD_CHAIN, "FORWARD")
        );
        assert_eq!(
            rules[0],
            "-m mark --mark 0x4000/0x4000 -m comment --comment \"nestbox-overlayd masq\" -j RETURN"
        );
        assert_eq!(rules.len(), 5);
        assert!(rules
            .iter()
            .all(|r| r.contains("--comment \"nestbox-overlayd masq\"")));
        assert!(frules
            .iter()
            .all(|r| r.contains("--comment \"nestbox-overlayd forward\"")));
    }
}
