//! What trace and drops share: names for the netns and interfaces a program reports
//! (a netns inode and an ifindex mean nothing to a person), packet descriptions, the
//! stop conditions (SIGINT/SIGTERM, a duration) and waiting on a ring buffer.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::bpf::{ip, PKT_ARP, PKT_IPV4};

/// Stop on SIGINT/SIGTERM or after a duration.
pub struct Stop {
    flag: Arc<AtomicBool>,
    deadline: Option<Instant>,
}

impl Stop {
    pub fn new(duration: Option<Duration>) -> std::io::Result<Stop> {
        let flag = Arc::new(AtomicBool::new(false));
        signal_hook::flag::register(signal_hook::consts::SIGINT, flag.clone())?;
        signal_hook::flag::register(signal_hook::consts::SIGTERM, flag.clone())?;
        Ok(Stop {
            flag,
            deadline: duration.map(|d| Instant::now() + d),
        })
    }

    pub fn stopped(&self) -> bool {
        self.flag.load(Ordering::Relaxed) || self.deadline.is_some_and(|d| Instant::now() >= d)
    }

    /// Wait until `fd` is readable, at most 200 ms (so a signal or the deadline is seen).
    pub fn wait_readable(&self, fd: &impl AsRawFd) {
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll on one pollfd we own; EINTR (a signal) just returns early.
        unsafe { libc::poll(&mut pfd, 1, 200) };
    }
}

/// A packet's protocol and ports in words.
pub fn describe(kind: u8, proto: u8, saddr: u32, daddr: u32, sport: u16, dport: u16) -> String {
    let (s, d) = (ip(saddr), ip(daddr));
    let sp = u16::from_be(sport);
    let dp = u16::from_be(dport);
    match kind {
        PKT_ARP => match sp {
            1 => format!("arp who-has {d} tell {s}"),
            2 => format!("arp reply {s} is-at (to {d})"),
            op => format!("arp op {op} {s} > {d}"),
        },
        PKT_IPV4 => match proto {
            6 => format!("tcp {s}:{sp} > {d}:{dp}"),
            17 => format!("udp {s}:{sp} > {d}:{dp}"),
            1 => {
                let (t, c) = (sp >> 8, sp & 0xff);
                let what = match t {
                    8 => "echo-request".to_string(),
                    0 => "echo-reply".to_string(),
                    3 if c == 4 => "frag-needed".to_string(),
                    3 => format!("unreachable code {c}"),
                    11 => "time-exceeded".to_string(),
                    _ => format!("type {t} code {c}"),
                };
                format!("icmp {s} > {d} {what} id {dp}")
            }
            p => format!("ip proto {p} {s} > {d}"),
        },
        _ => "non-IPv4 packet".to_string(),
    }
}

/// Names of netns (by inode) and interfaces (by netns inode and ifindex).
#[derive(Default, Debug, Clone)]
pub struct Names {
    pub netns: BTreeMap<u32, String>,
    pub ifaces: BTreeMap<(u32, u32), String>,
    /// Pod address → pod name.
    pub pods: BTreeMap<Ipv4Addr, String>,
}

impl Names {
    pub fn netns(&self, ino: u32) -> String {
        self.netns
            .get(&ino)
            .cloned()
            .unwrap_or_else(|| format!("netns {ino}"))
    }

    pub fn iface(&self, ino: u32, ifindex: u32) -> String {
        self.ifaces
            .get(&(ino, ifindex))
            .cloned()
            .unwrap_or_else(|| format!("if{ifindex}"))
    }

    /// Record every link of the calling thread's netns under `ino`.
    pub fn read_links(&mut self, ino: u32) {
        if let Ok(mut nl) = nestbox_cni::net::netlink::Netlink::new() {
            for l in nl.links().unwrap_or_default() {
                self.ifaces.insert((ino, l.index), l.name);
            }
        }
    }
}

/// The inode of the calling thread's netns.
pub fn current_netns_ino() -> std::io::Result<u32> {
    crate::target::netns_inode(std::path::Path::new("/proc/thread-self/ns/net"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bpf::ip_key;

    #[test]
    fn packets_read_like_tcpdump() {
        let a = ip_key("10.244.1.2".parse().unwrap());
        let b = ip_key("10.244.2.3".parse().unwrap());
        assert_eq!(
            describe(PKT_IPV4, 1, a, b, (8u16 << 8).to_be(), 7u16.to_be()),
            "icmp 10.244.1.2 > 10.244.2.3 echo-request id 7"
        );
        assert_eq!(
            describe(PKT_IPV4, 6, a, b, 4000u16.to_be(), 80u16.to_be()),
            "tcp 10.244.1.2:4000 > 10.244.2.3:80"
        );
        assert_eq!(
            describe(PKT_ARP, 0, a, b, 1u16.to_be(), 0),
            "arp who-has 10.244.2.3 tell 10.244.1.2"
        );
    }
}
