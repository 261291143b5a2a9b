//! The BPF side: the objects clang built from `bpf/*.bpf.c` (embedded), the event and
//! key layouts they share with `bpf/netdiag.h`, and loading them with aya.

use std::net::Ipv4Addr;

use aya::{Ebpf, EbpfLoader};

/// `bpf/trace.bpf.c` compiled by build.rs.
pub static TRACE_OBJ: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/trace.bpf.o"));
/// `bpf/drops.bpf.c` compiled by build.rs.
pub static DROPS_OBJ: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/drops.bpf.o"));

/// What a packet was (`PKT_*` in netdiag.h).
pub const PKT_IPV4: u8 = 0;
pub const PKT_ARP: u8 = 1;

/// `struct flow_key`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKey {
    pub netns_ino: u32,
    pub ifindex: u32,
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub kind: u8,
    pub dir: u8,
    pub encap: u8,
    pub pad: u32,
    pub pad2: u32,
}

/// `struct flow_stats`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct FlowStats {
    pub packets: u64,
    pub bytes: u64,
    pub first_ns: u64,
    pub last_ns: u64,
}

/// `struct flow_event`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct FlowEvent {
    pub key: FlowKey,
    pub ts: u64,
    pub len: u32,
    pub pad: u32,
}

/// `struct drop_event`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct DropEvent {
    pub ts: u64,
    pub location: u64,
    pub reason: u32,
    pub netns_ino: u32,
    pub ifindex: u32,
    pub len: u32,
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub kind: u8,
    pub encap: u8,
    pub matched_by: u8,
    pub pod: u32,
    pub l3proto: u16,
    pub pad: u16,
    pub ifname: [u8; 16],
}

// SAFETY: plain #[repr(C)] integer structs with explicit padding fields: every bit
// pattern is valid and no implicit padding is left uninitialised.
unsafe impl aya::Pod for FlowKey {}
// SAFETY: as above.
unsafe impl aya::Pod for FlowStats {}

/// Read a `T` from the start of a ring-buffer record (records are 8-byte aligned, but
/// read unaligned anyway: the cost is nil and it needs no argument about alignment).
pub fn read_record<T: Copy + Default>(b: &[u8]) -> Option<T> {
    if b.len() < std::mem::size_of::<T>() {
        return None;
    }
    // SAFETY: the slice holds at least size_of::<T>() bytes, and T is a repr(C) struct
    // of integers (FlowEvent, DropEvent) for which every bit pattern is valid.
    Some(unsafe { std::ptr::read_unaligned(b.as_ptr().cast::<T>()) })
}

/// An IPv4 address as the programs store it (network order in a u32's memory).
pub fn ip(v: u32) -> Ipv4Addr {
    Ipv4Addr::from(v.to_ne_bytes())
}

/// The inverse of [`ip`].
pub fn ip_key(a: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(a.octets())
}

#[derive(Debug, thiserror::Error)]
pub enum BpfError {
    #[error("loading the BPF programs: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("BPF program {name}: {source}")]
    Program {
        name: String,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("BPF map {name}: {source}")]
    Map {
        name: String,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("BPF object has no {0}")]
    Missing(String),
}

/// Load the trace object with its settings.
pub fn load_trace(vxlan_port: u16, filter_addrs: bool) -> Result<Ebpf, BpfError> {
    let filter = u8::from(filter_addrs);
    Ok(EbpfLoader::new()
        .override_global("vxlan_port", &vxlan_port, true)
        .override_global("filter_addrs", &filter, true)
        .load(TRACE_OBJ)?)
}

/// Load the drops object with this kernel's reason numbers.
pub fn load_drops(not_dropped: u32, consumed: u32, vxlan_port: u16) -> Result<Ebpf, BpfError> {
    Ok(EbpfLoader::new()
        .override_global("reason_not_dropped", &not_dropped, true)
        .override_global("reason_consumed", &consumed, true)
        .override_global("vxlan_port", &vxlan_port, true)
        .load(DROPS_OBJ)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_match_netdiag_h() {
        assert_eq!(std::mem::size_of::<FlowKey>(), 32);
        assert_eq!(std::mem::size_of::<FlowStats>(), 32);
        assert_eq!(std::mem::size_of::<FlowEvent>(), 48);
        assert_eq!(std::mem::size_of::<DropEvent>(), 72);
    }

    #[test]
    fn addresses_round_trip_in_network_order() {
        let a: Ipv4Addr = "10.244.1.2".parse().unwrap();
        assert_eq!(ip(ip_key(a)), a);
        assert_eq!(ip_key(a).to_ne_bytes(), [10, 244, 1, 2]);
    }
}
