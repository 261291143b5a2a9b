//! Taking over a node that ran flannel, in place: no pod is re-networked.
//!
//! Most of flannel's state is ours already, because the layout is the same: its lease
//! (etcd key or Node annotations) is found as "our previous lease" by public IP and
//! backend and reused, so the subnet is kept; `subnet.env` is the same file; the VTEP
//! `flannel.<VNI>` passes the device check and is kept with its MAC (taken from the lease);
//! the peers' neighbours, FDB entries and routes are exactly what reconcile wants. What
//! is flannel's alone are its traffic rules: iptables chains `FLANNEL-POSTRTG` (nat) and
//! `FLANNEL-FWD` (filter) with their jumps, for IPv4 and IPv6, or in its nftables mode
//! the tables `ip flannel-ipv4` / `ip6 flannel-ipv6`. [`Found::finish`] removes them once
//! ours are installed (never before: no window without masquerade), and says in one log
//! line what was taken over.

use nestbox_cni::net::netlink::Netlink;
use nestbox_cni::net::tool::{run, which};

use crate::config::Lease;
use crate::masq;

const CHAINS: [(&str, &str, &str); 2] = [
    ("nat", "POSTROUTING", "FLANNEL-POSTRTG"),
    ("filter", "FORWARD", "FLANNEL-FWD"),
];
const TOOLS: [(&str, &str); 2] = [
    ("iptables", "iptables-restore"),
    ("ip6tables", "ip6tables-restore"),
];
const NFT_TABLES: [(&str, &str); 2] = [("ip", "flannel-ipv4"), ("ip6", "flannel-ipv6")];

/// flannel's traffic rules found at start, and the device as it was.
#[derive(Debug, Default)]
pub struct Found {
    /// `iptables:nat/FLANNEL-POSTRTG`, …
    pub chains: Vec<(&'static str, &'static str, &'static str, &'static str)>,
    /// `ip flannel-ipv4`, …
    pub nft_tables: Vec<(&'static str, &'static str)>,
    /// The VTEP (or TUN) before we touched it: (name, ifindex, MAC).
    pub device: Option<(String, u32, String)>,
}

impl Found {
    /// Whether flannel's own traces are on this node.
    pub fn flannel_ran(&self) -> bool {
        !self.chains.is_empty() || !self.nft_tables.is_empty()
    }

    fn rule_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .chains
            .iter()
            .map(|(tool, table, _, chain)| format!("{tool} {table}/{chain}"))
            .collect();
        v.extend(self.nft_tables.iter().map(|(f, t)| format!("nft {f} {t}")));
        v
    }

    /// Remove flannel's rules (when ours replace them: `ip_masq`) and log what was taken
    /// over. `device` is the name of our device (after the first reconcile), `own` our
    /// lease.
    pub fn finish(
        &self,
        device: &str,
        own: &Lease,
        ip_masq: bool,
        masq_backend: masq::MasqBackend,
    ) {
        let mut nl = Netlink::new().ok();
        let now = nl
            .as_mut()
            .and_then(|nl| nl.link_by_name(device).ok().flatten());
        let dev = match (&self.device, &now) {
            (Some((name, idx, mac)), Some(l)) if *idx == l.index && *mac == l.mac => {
                format!("{name} adopted (ifindex {idx}, MAC {mac} kept)")
            }
            (Some((name, _, mac)), Some(l)) => {
                format!(
                    "{name} recreated (MAC {mac} → {}: its settings conflicted)",
                    l.mac
                )
            }
            (Some((name, _, _)), None) => format!("{name} gone"),
            (None, _) => format!("{device} created (flannel had none)"),
        };
        let rules = if ip_masq {
            for (tool, table, hook, chain) in &self.chains {
                let restore = TOOLS
                    .iter()
                    .find(|(t, _)| t == tool)
                    .map(|(_, r)| *r)
                    .unwrap_or("iptables-restore");
                masq::remove_ipt_chain(tool, restore, table, hook, chain);
            }
            for (family, table) in &self.nft_tables {
                if let Err(e) = run("nft", &["delete", "table", family, table], None) {
                    tracing::warn!(%table, error = %e, "removing flannel's nftables table failed");
                }
            }
            format!(
                "flannel's rules [{}] replaced by ours ({masq_backend:?})",
                self.rule_names().join(", ")
            )
        } else {
            format!(
                "flannel's rules [{}] left in place (run with --ip-masq to replace them)",
                self.rule_names().join(", ")
            )
        };
        tracing::info!(
            "took over from flannel: subnet {} kept (lease reused, pods keep their addresses), \
             device {dev}, peers' routes/neighbours/FDB entries kept, subnet.env kept, {rules}",
            own.subnet
        );
    }
}

/// Look for flannel's rules and note the device `device` as it is now.
pub fn detect(device: &str) -> Found {
    let mut f = Found::default();
    for (tool, _) in TOOLS {
        if !which(tool) {
            continue;
        }
        for (table, hook, chain) in CHAINS {
            if run(tool, &["-t", table, "-S", chain], None).is_ok() {
                f.chains.push((tool, table, hook, chain));
            }
        }
    }
    if which("nft") {
        for (family, table) in NFT_TABLES {
            if run("nft", &["list", "table", family, table], None).is_ok() {
                f.nft_tables.push((family, table));
            }
        }
    }
    f.device = Netlink::new()
        .ok()
        .and_then(|mut nl| nl.link_by_name(device).ok().flatten())
        .map(|l| (l.name, l.index, l.mac));
    f
}
