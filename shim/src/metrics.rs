//! Task statistics in containerd's types: `io.containerd.cgroups.v1.Metrics` when the memory
//! controller is on a v1 hierarchy (v1 hosts and hybrid ones like this VM's),
//! `io.containerd.cgroups.v2.Metrics` on a unified host — what `ctr task metrics` and the CRI
//! plugin decode. The numbers come from nestbox-cgroups, which reads either layout.

use containerd_shim::protos::cgroups::metrics as v1;
use containerd_shim::protos::cgroups_v2::metrics as v2;
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::Message;
use nestbox_cgroups::{Cgroup, Layout, Stats};

use crate::error::{Error, Result};

/// The container's statistics, packed as the Any containerd expects.
pub fn collect(cgroup: &Cgroup) -> Result<Any> {
    let stats = cgroup
        .stats()
        .map_err(|e| Error::Other(format!("reading cgroup statistics: {e}")))?;
    if cgroup.layout() == Layout::V2 {
        let events = cgroup
            .path("memory")
            .and_then(|d| std::fs::read_to_string(d.join("memory.events")).ok())
            .unwrap_or_default();
        pack(V2_METRICS, &to_v2(&stats, &events))
    } else {
        let oom_kills = cgroup.oom_kill_count().unwrap_or(0);
        pack(V1_METRICS, &to_v1(&stats, oom_kills))
    }
}

/// containerd's type names for the two metrics messages (their proto full names).
const V1_METRICS: &str = "io.containerd.cgroups.v1.Metrics";
const V2_METRICS: &str = "io.containerd.cgroups.v2.Metrics";

fn pack<M: Message>(type_url: &str, m: &M) -> Result<Any> {
    let mut any = Any::new();
    any.type_url = type_url.to_owned();
    any.value = m
        .write_to_bytes()
        .map_err(|e| Error::Other(format!("encoding metrics: {e}")))?;
    Ok(any)
}

fn raw(s: &Stats, key: &str) -> u64 {
    s.memory.raw.get(key).copied().unwrap_or(0)
}

pub fn to_v1(s: &Stats, oom_kills: u64) -> v1::Metrics {
    let mut m = v1::Metrics::new();
    let mut pids = v1::PidsStat::new();
    pids.current = s.pids.current;
    pids.limit = s.pids.limit;
    m.pids = Some(pids).into();

    let mut usage = v1::CPUUsage::new();
    usage.total = s.cpu.usage.total;
    usage.kernel = s.cpu.usage.kernel;
    usage.user = s.cpu.usage.user;
    usage.per_cpu = s.cpu.usage.percpu.clone();
    let mut throttle = v1::Throttle::new();
    throttle.periods = s.cpu.throttling.periods;
    throttle.throttled_periods = s.cpu.throttling.throttled_periods;
    throttle.throttled_time = s.cpu.throttling.throttled_time;
    let mut cpu = v1::CPUStat::new();
    cpu.usage = Some(usage).into();
    cpu.throttling = Some(throttle).into();
    m.cpu = Some(cpu).into();

    let entry = |e: &nestbox_cgroups::MemoryEntry| {
        let mut o = v1::MemoryEntry::new();
        o.limit = e.limit;
        o.usage = e.usage;
        o.max = e.max;
        o.failcnt = e.failcnt;
        o
    };
    let mut mem = v1::MemoryStat::new();
    mem.cache = raw(s, "cache");
    mem.rss = raw(s, "rss");
    mem.rss_huge = raw(s, "rss_huge");
    mem.mapped_file = raw(s, "mapped_file");
    mem.dirty = raw(s, "dirty");
    mem.writeback = raw(s, "writeback");
    mem.pg_pg_in = raw(s, "pgpgin");
    mem.pg_pg_out = raw(s, "pgpgout");
    mem.pg_fault = raw(s, "pgfault");
    mem.pg_maj_fault = raw(s, "pgmajfault");
    mem.inactive_anon = raw(s, "inactive_anon");
    mem.active_anon = raw(s, "active_anon");
    mem.inactive_file = raw(s, "inactive_file");
    mem.active_file = raw(s, "active_file");
    mem.unevictable = raw(s, "unevictable");
    mem.hierarchical_memory_limit = raw(s, "hierarchical_memory_limit");
    mem.hierarchical_swap_limit = raw(s, "hierarchical_memsw_limit");
    mem.total_cache = raw(s, "total_cache");
    mem.total_rss = raw(s, "total_rss");
    mem.total_rss_huge = raw(s, "total_rss_huge");
    mem.total_mapped_file = raw(s, "total_mapped_file");
    mem.total_dirty = raw(s, "total_dirty");
    mem.total_writeback = raw(s, "total_writeback");
    mem.total_pg_pg_in = raw(s, "total_pgpgin");
    mem.total_pg_pg_out = raw(s, "total_pgpgout");
    mem.total_pg_fault = raw(s, "total_pgfault");
    mem.total_pg_maj_fault = raw(s, "total_pgmajfault");
    mem.total_inactive_anon = raw(s, "total_inactive_anon");
    mem.total_active_anon = raw(s, "total_active_anon");
    mem.total_inactive_file = raw(s, "total_inactive_file");
    mem.total_active_file = raw(s, "total_active_file");
    mem.total_unevictable = raw(s, "total_unevictable");
    mem.usage = Some(entry(&s.memory.usage)).into();
    mem.swap = Some(entry(&s.memory.swap)).into();
    mem.kernel = Some(entry(&s.memory.kernel)).into();
    mem.kernel_tcp = Some(entry(&s.memory.kernel_tcp)).into();
    m.memory = Some(mem).into();
    let mut oom = v1::MemoryOomControl::new();
    oom.oom_kill = oom_kills;
    m.memory_oom_control = Some(oom).into();

    let blk = |list: &[nestbox_cgroups::BlkioEntry]| {
        list.iter()
            .map(|e| {
                let mut o = v1::BlkIOEntry::new();
                o.op = e.op.clone();
                o.major = e.major;
                o.minor = e.minor;
                o.value = e.value;
                o
            })
            .collect()
    };
    let mut blkio = v1::BlkIOStat::new();
    blkio.io_service_bytes_recursive = blk(&s.blkio.io_service_bytes_recursive);
    blkio.io_serviced_recursive = blk(&s.blkio.io_serviced_recursive);
    m.blkio = Some(blkio).into();

    m.hugetlb = s
        .hugetlb
        .iter()
        .map(|(size, h)| {
            let mut o = v1::HugetlbStat::new();
            o.pagesize = size.clone();
            o.usage = h.usage;
            o.max = h.max;
            o.failcnt = h.failcnt;
            o
        })
        .collect();
    m
}

pub fn to_v2(s: &Stats, memory_events: &str) -> v2::Metrics {
    let mut m = v2::Metrics::new();
    let mut pids = v2::PidsStat::new();
    pids.current = s.pids.current;
    pids.limit = s.pids.limit;
    m.pids = Some(pids).into();

    let mut cpu = v2::CPUStat::new();
    cpu.usage_usec = s.cpu.usage.total / 1000;
    cpu.user_usec = s.cpu.usage.user / 1000;
    cpu.system_usec = s.cpu.usage.kernel / 1000;
    cpu.nr_periods = s.cpu.throttling.periods;
    cpu.nr_throttled = s.cpu.throttling.throttled_periods;
    cpu.throttled_usec = s.cpu.throttling.throttled_time / 1000;
    m.cpu = Some(cpu).into();

    let mut mem = v2::MemoryStat::new();
    mem.anon = raw(s, "anon");
    mem.file = raw(s, "file");
    mem.kernel_stack = raw(s, "kernel_stack");
    mem.slab = raw(s, "slab");
    mem.sock = raw(s, "sock");
    mem.shmem = raw(s, "shmem");
    mem.file_mapped = raw(s, "file_mapped");
    mem.file_dirty = raw(s, "file_dirty");
    mem.file_writeback = raw(s, "file_writeback");
    mem.anon_thp = raw(s, "anon_thp");
    mem.inactive_anon = raw(s, "inactive_anon");
    mem.active_anon = raw(s, "active_anon");
    mem.inactive_file = raw(s, "inactive_file");
    mem.active_file = raw(s, "active_file");
    mem.unevictable = raw(s, "unevictable");
    mem.slab_reclaimable = raw(s, "slab_reclaimable");
    mem.slab_unreclaimable = raw(s, "slab_unreclaimable");
    mem.pgfault = raw(s, "pgfault");
    mem.pgmajfault = raw(s, "pgmajfault");
    mem.workingset_refault = raw(s, "workingset_refault");
    mem.workingset_activate = raw(s, "workingset_activate");
    mem.workingset_nodereclaim = raw(s, "workingset_nodereclaim");
    mem.pgrefill = raw(s, "pgrefill");
    mem.pgscan = raw(s, "pgscan");
    mem.pgsteal = raw(s, "pgsteal");
    mem.pgactivate = raw(s, "pgactivate");
    mem.pgdeactivate = raw(s, "pgdeactivate");
    mem.pglazyfree = raw(s, "pglazyfree");
    mem.pglazyfreed = raw(s, "pglazyfreed");
    mem.thp_fault_alloc = raw(s, "thp_fault_alloc");
    mem.thp_collapse_alloc = raw(s, "thp_collapse_alloc");
    mem.usage = s.memory.usage.usage;
    mem.usage_limit = s.memory.usage.limit;
    mem.max_usage = s.memory.usage.max;
    // nestbox-cgroups reports v2 swap as memory+swap (as runc does); containerd wants swap alone.
    mem.swap_usage = s.memory.swap.usage.saturating_sub(s.memory.usage.usage);
    mem.swap_limit = s.memory.swap.limit.saturating_sub(s.memory.usage.limit);
    m.memory = Some(mem).into();

    let mut events = v2::MemoryEvents::new();
    for line in memory_events.lines() {
        let mut kv = line.split_whitespace();
        let (Some(k), Some(Ok(v))) = (kv.next(), kv.next().map(str::parse::<u64>)) else {
            continue;
        };
        match k {
            "low" => events.low = v,
            "high" => events.high = v,
            "max" => events.max = v,
            "oom" => events.oom = v,
            "oom_kill" => events.oom_kill = v,
            "oom_group_kill" => events.oom_group_kill = v,
            _ => {}
        }
    }
    m.memory_events = Some(events).into();

    // Merge the Read/Write byte and op entries per device into io.stat's shape.
    let mut io: Vec<v2::IOEntry> = Vec::new();
    let mut add = |e: &nestbox_cgroups::BlkioEntry, bytes: bool| {
        let pos = io
            .iter()
            .position(|x| x.major == e.major && x.minor == e.minor)
            .unwrap_or_else(|| {
                let mut n = v2::IOEntry::new();
                n.major = e.major;
                n.minor = e.minor;
                io.push(n);
                io.len() - 1
            });
        let x = &mut io[pos];
        match (bytes, e.op.as_str()) {
            (true, "Read") => x.rbytes = e.value,
            (true, "Write") => x.wbytes = e.value,
            (false, "Read") => x.rios = e.value,
            (false, "Write") => x.wios = e.value,
            _ => {}
        }
    };
    s.blkio
        .io_service_bytes_recursive
        .iter()
        .for_each(|e| add(e, true));
    s.blkio
        .io_serviced_recursive
        .iter()
        .for_each(|e| add(e, false));
    let mut iostat = v2::IOStat::new();
    iostat.usage = io;
    m.io = Some(iostat).into();

    m.hugetlb = s
        .hugetlb
        .iter()
        .map(|(size, h)| {
            let mut o = v2::HugeTlbStat::new();
            o.pagesize = size.clone();
            o.current = h.usage;
            o.max = h.max;
            o.failcnt = h.failcnt;
            o
        })
        .collect();
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use nestbox_cgroups::{BlkioEntry, MemoryEntry};

    fn sample() -> Stats {
        let mut s = Stats::default();
        s.pids.current = 3;
        s.pids.limit = 100;
        s.cpu.usage.total = 5_000_000;
        s.cpu.usage.user = 3_000_000;
        s.cpu.usage.kernel = 2_000_000;
        s.memory.usage = MemoryEntry {
            limit: 64 << 20,
            usage: 10 << 20,
            max: 12 << 20,
            failcnt: 1,
        };
        s.memory.swap = MemoryEntry {
            limit: 128 << 20,
            usage: 11 << 20,
            max: 0,
            failcnt: 0,
        };
        s.memory.raw.insert("rss".into(), 7);
        s.memory.raw.insert("anon".into(), 9);
        s.memory.raw.insert("total_inactive_file".into(), 4);
        s.blkio.io_service_bytes_recursive = vec![
            BlkioEntry {
                major: 8,
                minor: 0,
                op: "Read".into(),
                value: 100,
            },
            BlkioEntry {
                major: 8,
                minor: 0,
                op: "Write".into(),
                value: 200,
            },
        ];
        s.blkio.io_serviced_recursive = vec![BlkioEntry {
            major: 8,
            minor: 0,
            op: "Read".into(),
            value: 2,
        }];
        s
    }

    #[test]
    fn v1_metrics_carry_usage_limits_and_oom_kills() {
        let m = to_v1(&sample(), 2);
        assert_eq!(m.pids.current, 3);
        assert_eq!(m.cpu.usage.total, 5_000_000);
        assert_eq!(m.memory.usage.limit, 64 << 20);
        assert_eq!(m.memory.usage.usage, 10 << 20);
        assert_eq!(m.memory.rss, 7);
        assert_eq!(m.memory.total_inactive_file, 4);
        assert_eq!(m.memory_oom_control.oom_kill, 2);
        assert_eq!(m.blkio.io_service_bytes_recursive.len(), 2);
        let any = pack(V1_METRICS, &m).expect("pack");
        assert_eq!(any.type_url, "io.containerd.cgroups.v1.Metrics");
        use containerd_shim::protos::protobuf::MessageFull;
        assert_eq!(v1::Metrics::descriptor().full_name(), V1_METRICS);
    }

    #[test]
    fn v2_metrics_use_microseconds_and_swap_alone() {
        let m = to_v2(&sample(), "low 0\nhigh 0\nmax 4\noom 1\noom_kill 1\n");
        assert_eq!(m.cpu.usage_usec, 5000);
        assert_eq!(m.cpu.system_usec, 2000);
        assert_eq!(m.memory.usage, 10 << 20);
        assert_eq!(m.memory.swap_usage, 1 << 20);
        assert_eq!(m.memory.swap_limit, 64 << 20);
        assert_eq!(m.memory.anon, 9);
        assert_eq!(m.memory_events.oom_kill, 1);
        assert_eq!(m.io.usage.len(), 1);
        assert_eq!(
            (
                m.io.usage[0].rbytes,
                m.io.usage[0].wbytes,
                m.io.usage[0].rios
            ),
            (100, 200, 2)
        );
        let any = pack(V2_METRICS, &m).expect("pack");
        assert_eq!(any.type_url, "io.containerd.cgroups.v2.Metrics");
        use containerd_shim::protos::protobuf::MessageFull;
        assert_eq!(v2::Metrics::descriptor().full_name(), V2_METRICS);
    }
}
