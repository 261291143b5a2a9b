//! Kernel mechanisms shared by the plugins: entering a netns, rtnetlink, sysctls,
//! masquerade rules (nftables and iptables side by side), and running the firewall tools.

pub mod detach;
pub mod masq;
pub mod netlink;
pub mod netns;
pub mod nft;
pub mod sysctl;
pub mod tool;
