//! host-local IPAM: its config (ranges, legacy subnet, routes, resolvConf), the on-disk
//! store shared with the reference plugin, and the round-robin allocator.

pub mod allocator;
pub mod config;
pub mod store;

pub use allocator::Allocator;
pub use config::{IpamConfig, Range, RangeSet};
pub use store::Store;
