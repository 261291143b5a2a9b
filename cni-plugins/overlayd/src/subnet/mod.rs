//! Subnet managers: where the network config lives and how a node leases its subnet and
//! learns its peers' leases: `etcd` (v3, leases with TTLs) and `kube` (node podCIDRs).

pub mod etcd;
pub mod kube;

use ipnetwork::Ipv4Network;

use crate::config::{Lease, LeaseAttrs, NetworkConfig};
use crate::Error;

pub trait SubnetManager {
    /// The cluster network config.
    fn network_config(&mut self) -> Result<NetworkConfig, Error>;
    /// All current leases (ours included).
    fn leases(&mut self) -> Result<Vec<Lease>, Error>;
    /// Lease a subnet for `attrs`: reuse `previous` (our own lease from before a restart)
    /// or `prefer` when free, else any free subnet. Never two nodes on one subnet.
    fn acquire(
        &mut self,
        config: &NetworkConfig,
        attrs: &LeaseAttrs,
        previous: Option<&Lease>,
        prefer: Option<Ipv4Network>,
    ) -> Result<Lease, Error>;
    /// Keep our lease alive; `Ok(false)` when it is gone and must be acquired again.
    fn renew(&mut self, lease: &Lease) -> Result<bool, Error>;
    /// Start watching the leases in the background: `changed` is sent to whenever they
    /// may have changed. The agent polls anyway; this only makes it react sooner.
    fn watch(&mut self, changed: std::sync::mpsc::Sender<()>) -> Result<(), Error>;
}
