//! nestbox-netdiag: why can't pod A reach pod B, and where is the packet dropped.
//! `doctor` walks a pod's packet path through the kernel state (netlink, sysctls,
//! nftables, the overlay's leases) and checks every hop; `trace` counts a pod's flows at
//! each hop with tc programs; `drops` reports the kernel's drop reasons for a pod's
//! packets from the `kfree_skb` tracepoint. The BPF programs are C in `bpf/`, built by
//! clang from build.rs and loaded with aya (DESIGN §7).

pub mod bpf;
pub mod btf;
pub mod doctor;
pub mod drops;
pub mod events;
pub mod kallsyms;
pub mod nft;
pub mod nl;
pub mod ping;
pub mod report;
pub mod target;
pub mod trace;
