//! Kernel mechanisms shared by the plugins: entering a netns, rtnetlink, sysctls,
//! and masquerade rules (nftables and iptables side by side).

pub mod detach;
pub mod masq;
pub mod netlink;
pub mod netns;
pub mod nft;
pub mod sysctl;
