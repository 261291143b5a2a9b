//! nestbox-overlayd: a flannel-compatible overlay agent. A node leases a pod subnet from a
//! [`subnet::SubnetManager`] (etcd), publishes its VTEP, and a [`backend::Backend`]
//! (VXLAN or host-gw) keeps the kernel's routes, neighbours and FDB entries equal to the
//! peers' leases ([`agent`] runs the reconcile loop). The CNI side (flannel's plugin:
//! subnet.env → bridge delegate) and the subnet.env format live in nestbox-cni
//! (`plugins::overlay`); kernel operations go through nestbox-cni's `net::netlink`.

pub mod agent;
pub mod backend;
pub mod config;
pub mod iface;
pub mod masq;
pub mod subnet;
pub mod takeover;
pub mod udp;

use std::io;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("netlink: {context}: {source}")]
    Netlink {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("config: {0}")]
    Config(String),
    #[error("subnet store: {0}")]
    Store(String),
    #[error("no free subnet left in {0}")]
    Exhausted(String),
    #[error("interface: {0}")]
    Interface(String),
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// Attach context to a netlink error.
pub(crate) trait NlContext<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T, Error>;
}

impl<T> NlContext<T> for io::Result<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T, Error> {
        self.map_err(|source| Error::Netlink {
            context: what(),
            source,
        })
    }
}

/// 64 random bits from the kernel.
pub fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    // SAFETY: getrandom writes at most b.len() bytes into the buffer we own.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n != b.len() as isize {
        // Not fatal: only used for spreading choices and MACs; fall back to the clock.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        return t ^ ((std::process::id() as u64) << 32);
    }
    u64::from_ne_bytes(b)
}

/// A random locally administered unicast MAC (what flannel's VTEPs use).
pub fn random_mac() -> [u8; 6] {
    let r = random_u64().to_ne_bytes();
    let mut m = [r[0], r[1], r[2], r[3], r[4], r[5]];
    m[0] = (m[0] | 0x02) & !0x01;
    m
}

#[cfg(test)]
mod tests {
    #[test]
    fn generated_macs_are_local_unicast() {
        for _ in 0..32 {
            let m = super::random_mac();
            assert_eq!(m[0] & 0x03, 0x02);
        }
    }
}
