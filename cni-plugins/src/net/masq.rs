//! Masquerade for a pod's addresses: traffic from the pod to anything outside its own
//! subnet (and not multicast) leaves with the node's address.
//!
//! nftables (default when `nft` is on PATH; spoken over netlink, no `nft` exec): table `inet cni_plugins_masquerade`, one
//! base chain `postrouting` (nat, srcnat), one self-contained rule per pod address
//! tagged with a comment derived from (network, container, ifname) so DEL and GC find
//! them without knowing the address.
//! iptables: the reference plugins' layout (`CNI-<hash>` chain per container in `nat`,
//! jumped to from POSTROUTING), so a node can switch between the two.

use ipnetwork::IpNetwork;
use sha2::{Digest, Sha256, Sha512};

use super::detach::Detached;
use super::nft::{transact_detached, transact_start};
use super::tool::{run, which};
use crate::cni::{Error, Result};

pub const NFT_TABLE: &str = "cni_plugins_masquerade";
const NFT_CHAIN: &str = "postrouting";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Nftables,
    Iptables,
}

impl Backend {
    /// The configured backend, else nftables when `nft` exists, else iptables.
    pub fn choose(configured: Option<&str>) -> Result<Backend> {
        match configured {
            Some("nftables") => Ok(Backend::Nftables),
            Some("iptables") => Ok(Backend::Iptables),
            Some(other) => Err(Error::config(format!(
                "unknown ipMasqBackend {other:?} (expected \"iptables\" or \"nftables\")"
            ))),
            None if which("nft") => Ok(Backend::Nftables),
            None => Ok(Backend::Iptables),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Who a rule belongs to.
#[derive(Debug, Clone)]
pub struct Owner<'a> {
    pub network: &'a str,
    pub container_id: &'a str,
    pub ifname: &'a str,
}

impl Owner<'_> {
    fn network_tag(network: &str) -> String {
        hex(&Sha256::digest(network.as_bytes()))[..8].to_string()
    }
    fn nft_comment(&self) -> String {
        let h = Sha256::digest(format!(
            "{}\0{}\0{}",
            self.network, self.container_id, self.ifname
        ));
        format!("cni:{}:{}", Self::network_tag(self.network), &hex(&h)[..16])
    }
    /// The reference's chain name: `CNI-` + sha512(name + id), 28 chars in all.
    pub fn iptables_chain(&self) -> String {
        let h = Sha512::digest(format!("{}{}", self.network, self.container_id));
        format!("CNI-{}", &hex(&h)[..24])
    }
    fn iptables_comment(&self) -> String {
        format!("name: {:?} id: {:?}", self.network, self.container_id)
    }
}

/// Masquerade `addrs` (pod address with its subnet prefix) for `owner`.
pub fn setup(backend: Backend, addrs: &[IpNetwork], owner: &Owner) -> Result<()> {
    setup_start(backend, addrs, owner)?.finish()
}

/// A masquerade setup that may still be in flight (nftables runs in a helper child).
pub enum Pending {
    Done,
    Nft(Detached),
}

impl Pending {
    /// Wait for the outcome.
    pub fn finish(self) -> Result<()> {
        match self {
            Pending::Done => Ok(()),
            Pending::Nft(d) => d
                .wait()
                .map_err(|e| Error::internal(format!("nftables masquerade: {e}"))),
        }
    }
}

/// Start [`setup`]; nftables changes proceed while the caller does other work.
pub fn setup_start(backend: Backend, addrs: &[IpNetwork], owner: &Owner) -> Result<Pending> {
    match backend {
        Backend::Nftables => {
            let comment = owner.nft_comment();
            transact_start(|nft| nft.add_masquerade(NFT_TABLE, NFT_CHAIN, addrs, &comment))
                .map(Pending::Nft)
                .map_err(|e| Error::internal(format!("nftables masquerade: {e}")))
        }
        Backend::Iptables => {
            let chain = owner.iptables_chain();
            let comment = owner.iptables_comment();
            for a in addrs {
                let ipt = if a.is_ipv4() { "iptables" } else { "ip6tables" };
                let mcast = if a.is_ipv4() {
                    "224.0.0.0/4"
                } else {
                    "ff00::/8"
                };
                let net = IpNetwork::new(a.network(), a.prefix())
                    .map_err(|e| Error::internal(e.to_string()))?
                    .to_string();
                let _ = run(ipt, &["-w", "-t", "nat", "-N", &chain], None);
                let src = a.ip().to_string();
                let rules: [(&str, Vec<&str>); 3] = [
                    (
                        &chain,
                        vec![
                            "-d",
                            &net,
                            "-j",
                            "ACCEPT",
                            "-m",
                            "comment",
                            "--comment",
                            &comment,
                        ],
                    ),
                    (
                        &chain,
                        vec![
                            "!",
                            "-d",
                            mcast,
                            "-j",
                            "MASQUERADE",
                            "-m",
                            "comment",
                            "--comment",
                            &comment,
                        ],
                    ),
                    (
                        "POSTROUTING",
                        vec![
                            "-s",
                            &src,
                            "-j",
                            &chain,
                            "-m",
                            "comment",
                            "--comment",
                            &comment,
                        ],
                    ),
                ];
                for (ch, spec) in rules {
                    let mut check = vec!["-w", "-t", "nat", "-C", ch];
                    check.extend(&spec);
                    if run(ipt, &check, None).is_ok() {
                        continue;
                    }
                    let mut add = vec!["-w", "-t", "nat", "-A", ch];
                    add.extend(&spec);
                    run(ipt, &add, None).map_err(|e| Error::internal(e.to_string()))?;
                }
            }
            Ok(Pending::Done)
        }
    }
}

/// Delete the rules of our chain whose comment satisfies `pred`.
fn nft_delete_where(pred: impl Fn(&str) -> bool) -> Result<()> {
    transact_detached(|nft| {
        let handles: Vec<u64> = nft
            .rules(NFT_TABLE, NFT_CHAIN)?
            .into_iter()
            .filter(|r| pred(&r.comment))
            .map(|r| r.handle)
            .collect();
        nft.delete_rules(NFT_TABLE, NFT_CHAIN, &handles)
    })
    .map_err(|e| Error::internal(format!("nftables: {e}")))
}

/// Remove `owner`'s masquerade rules (idempotent; needs no addresses).
pub fn teardown(backend: Backend, owner: &Owner) -> Result<()> {
    match backend {
        Backend::Nftables => {
            let comment = owner.nft_comment();
            nft_delete_where(|c| c == comment)
        }
        Backend::Iptables => {
            let chain = owner.iptables_chain();
            for ipt in ["iptables", "ip6tables"] {
                if !which(ipt) {
                    continue;
                }
                if let Ok(rules) = run(ipt, &["-w", "-t", "nat", "-S", "POSTROUTING"], None) {
                    for line in rules
                        .lines()
                        .filter(|l| l.ends_with(&format!("-j {chain}")))
                    {
                        let mut args =
                            vec!["-w".to_string(), "-t".into(), "nat".into(), "-D".into()];
                        args.extend(split_quoted(line.trim_start_matches("-A ")));
                        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
                        let _ = run(ipt, &refs, None);
                    }
                }
                let _ = run(ipt, &["-w", "-t", "nat", "-F", &chain], None);
                let _ = run(ipt, &["-w", "-t", "nat", "-X", &chain], None);
            }
            Ok(())
        }
    }
}

/// Remove masquerade rules of `network` whose attachment is not in `valid`.
pub fn gc(backend: Backend, network: &str, valid: &[(String, String)]) -> Result<()> {
    if backend == Backend::Iptables {
        return gc_iptables(network, valid);
    }
    let keep: Vec<String> = valid
        .iter()
        .map(|(cid, ifname)| {
            Owner {
                network,
                container_id: cid,
                ifname,
            }
            .nft_comment()
        })
        .collect();
    let prefix = format!("cni:{}:", Owner::network_tag(network));
    nft_delete_where(|c| c.starts_with(&prefix) && !keep.iter().any(|k| k == c))
}

/// iptables: the reference's comment `name: "<net>" id: "<cid>"` names the owner (its
/// chains are per container, not per interface, so a listed container keeps them all).
fn gc_iptables(network: &str, valid: &[(String, String)]) -> Result<()> {
    let mut stale = std::collections::BTreeSet::new();
    for ipt in ["iptables", "ip6tables"] {
        if !which(ipt) {
            continue;
        }
        let Ok(rules) = run(ipt, &["-w", "-t", "nat", "-S", "POSTROUTING"], None) else {
            continue;
        };
        for line in rules.lines().filter(|l| l.contains("-j CNI-")) {
            let args = split_quoted(line);
            let Some(comment) = args
                .iter()
                .position(|a| a == "--comment")
                .and_then(|i| args.get(i + 1))
            else {
                continue;
            };
            let Some((name, id)) = parse_iptables_comment(comment) else {
                continue;
            };
            if name == network && !valid.iter().any(|(cid, _)| *cid == id) {
                stale.insert(id);
            }
        }
    }
    for id in stale {
        teardown(
            Backend::Iptables,
            &Owner {
                network,
                container_id: &id,
                ifname: "",
            },
        )?;
    }
    Ok(())
}

/// `name: "net" id: "cid"` → (net, cid).
fn parse_iptables_comment(c: &str) -> Option<(String, String)> {
    let rest = c.strip_prefix("name: \"")?;
    let (name, rest) = rest.split_once("\" id: \"")?;
    let id = rest.strip_suffix('"')?;
    Some((name.to_string(), id.to_string()))
}

fn split_quoted(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_q = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' if in_q => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            '"' => in_q = !in_q,
            ' ' if !in_q => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iptables_chain_name_matches_the_reference_format() {
        let o = Owner {
            network: "net",
            container_id: "abc",
            ifname: "eth0",
        };
        assert_eq!(o.iptables_chain().len(), 28);
        assert!(o.iptables_chain().starts_with("CNI-"));
    }

    #[test]
    fn iptables_comments_name_network_and_container() {
        assert_eq!(
            parse_iptables_comment(r#"name: "net" id: "abc""#),
            Some(("net".to_string(), "abc".to_string()))
        );
    }

    #[test]
    fn quoted_iptables_rules_split_like_a_shell() {
        assert_eq!(
            split_quoted(
                r#"POSTROUTING -s 10.0.0.2/32 -m comment --comment "name: \"n\" id: \"x\"" -j CNI-1"#
            ),
            vec![
                "POSTROUTING",
                "-s",
                "10.0.0.2/32",
                "-m",
                "comment",
                "--comment",
                r#"name: "n" id: "x""#,
                "-j",
                "CNI-1"
            ]
        );
    }
}
