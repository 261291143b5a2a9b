//! nestbox CNI library: the CNI types and plugin skeleton (`cni`), kernel mechanisms
//! (`net`: netns entry, netlink, sysctl, masquerade), the host-local allocator (`ipam`),
//! and the plugins built on them (`plugins`), one file per plugin — bridge, host-local,
//! loopback, and the overlay's flannel-style plugin that delegates to bridge.

pub mod cni;
pub mod ipam;
pub mod net;
pub mod plugins;
