//! Statistics shaped like the `data` of runc's `events --stats` (runc's types/events.go), so
//! the JSON nestbox prints matches what containerd and podman parse.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{fs, Cgroup, Error};

fn is_zero(v: &u64) -> bool {
    *v == 0
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    pub cpu: CpuStats,
    pub memory: MemoryStats,
    pub pids: PidsStats,
    pub blkio: BlkioStats,
    pub hugetlb: BTreeMap<String, HugetlbStats>,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuStats {
    pub usage: CpuUsage,
    pub throttling: Throttling,
}

/// Nanoseconds.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuUsage {
    #[serde(default, skip_serializing_if = "is_zero")]
    pub total: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub percpu: Vec<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub percpu_kernel: Vec<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub percpu_user: Vec<u64>,
    pub kernel: u64,
    pub user: u64,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Throttling {
    #[serde(default, skip_serializing_if = "is_zero")]
    pub periods: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub throttled_periods: u64,
    /// Nanoseconds.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub throttled_time: u64,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryEntry {
    pub limit: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub usage: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub max: u64,
    pub failcnt: u64,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryStats {
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cache: u64,
    pub usage: MemoryEntry,
    pub swap: MemoryEntry,
    pub kernel: MemoryEntry,
    #[serde(rename = "kernelTCP")]
    pub kernel_tcp: MemoryEntry,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub raw: BTreeMap<String, u64>,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PidsStats {
    #[serde(default, skip_serializing_if = "is_zero")]
    pub current: u64,
    /// 0 when unlimited, as runc reports it.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub limit: u64,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlkioEntry {
    #[serde(default, skip_serializing_if = "is_zero")]
    pub major: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub minor: u64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub op: String,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub value: u64,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BlkioStats {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub io_service_bytes_recursive: Vec<BlkioEntry>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub io_serviced_recursive: Vec<BlkioEntry>,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HugetlbStats {
    #[serde(default, skip_serializing_if = "is_zero")]
    pub usage: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub max: u64,
    pub failcnt: u64,
}

/// "max" (u64::MAX) stays u64::MAX for memory limits, as runc reports them.
pub(crate) fn collect(cg: &Cgroup) -> Result<Stats, Error> {
    let mut s = Stats::default();
    // CPU
    if let Some(h) = cg.hierarchy_of("cpuacct").filter(|h| !h.v2) {
        let d = &h.dir;
        s.cpu.usage.total = fs::read_u64_or_zero(d, "cpuacct.usage")?;
        let list = |f: &str| -> Result<Vec<u64>, Error> {
            Ok(fs::read_opt(d, f)?
                .map(|t| fs::parse_list(&t))
                .unwrap_or_default())
        };
        s.cpu.usage.percpu = list("cpuacct.usage_percpu")?;
        s.cpu.usage.percpu_kernel = list("cpuacct.usage_percpu_sys")?;
        s.cpu.usage.percpu_user = list("cpuacct.usage_percpu_user")?;
        let ticks = fs::read_kv_opt(d, "cpuacct.stat")?;
        let hz = clock_ticks();
        let ns = |t: u64| t.saturating_mul(1_000_000_000) / hz;
        s.cpu.usage.user = ns(ticks.get("user").copied().unwrap_or(0));
        s.cpu.usage.kernel = ns(ticks.get("system").copied().unwrap_or(0));
    }
    if let Some(h) = cg.hierarchy_of("cpu").filter(|h| !h.v2) {
        let st = fs::read_kv_opt(&h.dir, "cpu.stat")?;
        s.cpu.throttling = Throttling {
            periods: st.get("nr_periods").copied().unwrap_or(0),
            throttled_periods: st.get("nr_throttled").copied().unwrap_or(0),
            throttled_time: st.get("throttled_time").copied().unwrap_or(0),
        };
    } else if let Some(h) = cg.unified().filter(|_| cg.layout == crate::Layout::V2) {
        let st = fs::read_kv_opt(&h.dir, "cpu.stat")?;
        let get = |k: &str| st.get(k).copied().unwrap_or(0);
        s.cpu.usage.total = get("usage_usec") * 1000;
        s.cpu.usage.user = get("user_usec") * 1000;
        s.cpu.usage.kernel = get("system_usec") * 1000;
        s.cpu.throttling = Throttling {
            periods: get("nr_periods"),
            throttled_periods: get("nr_throttled"),
            throttled_time: get("throttled_usec") * 1000,
        };
    }
    // Memory
    match cg.hierarchy_of("memory") {
        Some(h) if !h.v2 => {
            let d = &h.dir;
            let entry = |prefix: &str| -> Result<MemoryEntry, Error> {
                Ok(MemoryEntry {
                    limit: fs::read_u64_or_zero(d, &format!("{prefix}limit_in_bytes"))?,
                    usage: fs::read_u64_or_zero(d, &format!("{prefix}usage_in_bytes"))?,
                    max: fs::read_u64_or_zero(d, &format!("{prefix}max_usage_in_bytes"))?,
                    failcnt: fs::read_u64_or_zero(d, &format!("{prefix}failcnt"))?,
                })
            };
            s.memory.usage = entry("memory.")?;
            s.memory.swap = entry("memory.memsw.")?;
            s.memory.kernel = entry("memory.kmem.")?;
            s.memory.kernel_tcp = entry("memory.kmem.tcp.")?;
            s.memory.raw = fs::read_kv_opt(d, "memory.stat")?;
            s.memory.cache = s.memory.raw.get("cache").copied().unwrap_or(0);
        }
        Some(h) => {
            let d = &h.dir;
            let events = fs::read_kv_opt(d, "memory.events")?;
            s.memory.usage = MemoryEntry {
                limit: fs::read_u64_or_zero(d, "memory.max")?,
                usage: fs::read_u64_or_zero(d, "memory.current")?,
                max: fs::read_u64_or_zero(d, "memory.peak")?,
                failcnt: events.get("max").copied().unwrap_or(0),
            };
            // runc reports v2 swap as memory+swap, like v1's memsw.
            let swap_usage = fs::read_u64_or_zero(d, "memory.swap.current")?;
            let swap_limit = fs::read_u64_or_zero(d, "memory.swap.max")?;
            s.memory.swap = MemoryEntry {
                limit: s.memory.usage.limit.saturating_add(swap_limit),
                usage: s.memory.usage.usage.saturating_add(swap_usage),
                max: 0,
                failcnt: 0,
            };
            s.memory.raw = fs::read_kv_opt(d, "memory.stat")?;
            s.memory.cache = s.memory.raw.get("file").copied().unwrap_or(0);
        }
        None => {}
    }
    // Pids
    if let Some(h) = cg.hierarchy_of("pids") {
        s.pids.current = fs::read_u64_or_zero(&h.dir, "pids.current")?;
        let limit = fs::read_u64_or_zero(&h.dir, "pids.max")?;
        s.pids.limit = if limit == u64::MAX { 0 } else { limit };
    }
    // Block I/O
    match cg.hierarchy_of("blkio").or_else(|| cg.hierarchy_of("io")) {
        Some(h) if !h.v2 => {
            let pick = |files: &[&str]| -> Result<Vec<BlkioEntry>, Error> {
                for f in files {
                    if let Some(t) = fs::read_opt(&h.dir, f)? {
                        let entries = parse_blkio_v1(&t);
                        if !entries.is_empty() {
                            return Ok(entries);
                        }
                    }
                }
                Ok(Vec::new())
            };
            s.blkio.io_service_bytes_recursive = pick(&[
                "blkio.io_service_bytes_recursive",
                "blkio.bfq.io_service_bytes_recursive",
                "blkio.throttle.io_service_bytes_recursive",
                "blkio.throttle.io_service_bytes",
            ])?;
            s.blkio.io_serviced_recursive = pick(&[
                "blkio.io_serviced_recursive",
                "blkio.bfq.io_serviced_recursive",
                "blkio.throttle.io_serviced_recursive",
                "blkio.throttle.io_serviced",
            ])?;
        }
        Some(h) => {
            if let Some(t) = fs::read_opt(&h.dir, "io.stat")? {
                let (bytes, ios) = parse_io_stat(&t);
                s.blkio.io_service_bytes_recursive = bytes;
                s.blkio.io_serviced_recursive = ios;
            }
        }
        None => {}
    }
    // Hugetlb
    if let Some(h) = cg.hierarchy_of("hugetlb") {
        for size in hugepage_sizes() {
            let st = if h.v2 {
                let events = fs::read_kv_opt(&h.dir, &format!("hugetlb.{size}.events"))?;
                HugetlbStats {
                    usage: fs::read_u64_or_zero(&h.dir, &format!("hugetlb.{size}.current"))?,
                    max: 0,
                    failcnt: events.get("max").copied().unwrap_or(0),
                }
            } else {
                HugetlbStats {
                    usage: fs::read_u64_or_zero(&h.dir, &format!("hugetlb.{size}.usage_in_bytes"))?,
                    max: fs::read_u64_or_zero(
                        &h.dir,
                        &format!("hugetlb.{size}.max_usage_in_bytes"),
                    )?,
                    failcnt: fs::read_u64_or_zero(&h.dir, &format!("hugetlb.{size}.failcnt"))?,
                }
            };
            s.hugetlb.insert(size, st);
        }
    }
    Ok(s)
}

fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 {
        hz as u64
    } else {
        100
    }
}

/// "8:0 Read 4096" lines; "Total N" lines are skipped.
pub(crate) fn parse_blkio_v1(text: &str) -> Vec<BlkioEntry> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let [dev, op, value] = f.as_slice() else {
                return None;
            };
            let (maj, min) = dev.split_once(':')?;
            Some(BlkioEntry {
                major: maj.parse().ok()?,
                minor: min.parse().ok()?,
                op: (*op).to_owned(),
                value: value.parse().ok()?,
            })
        })
        .collect()
}

/// io.stat "8:0 rbytes=1 wbytes=2 rios=3 wios=4 …" → (bytes, ios) as Read/Write entries.
pub(crate) fn parse_io_stat(text: &str) -> (Vec<BlkioEntry>, Vec<BlkioEntry>) {
    let mut bytes = Vec::new();
    let mut ios = Vec::new();
    for line in text.lines() {
        let mut it = line.split_whitespace();
        let Some((maj, min)) = it.next().and_then(|d| d.split_once(':')) else {
            continue;
        };
        let (Ok(major), Ok(minor)) = (maj.parse::<u64>(), min.parse::<u64>()) else {
            continue;
        };
        for kv in it {
            let Some((k, v)) = kv.split_once('=') else {
                continue;
            };
            let Ok(value) = v.parse::<u64>() else {
                continue;
            };
            let (list, op) = match k {
                "rbytes" => (&mut bytes, "Read"),
                "wbytes" => (&mut bytes, "Write"),
                "rios" => (&mut ios, "Read"),
                "wios" => (&mut ios, "Write"),
                _ => continue,
            };
            list.push(BlkioEntry {
                major,
                minor,
                op: op.to_owned(),
                value,
            });
        }
    }
    (bytes, ios)
}

/// Page sizes the kernel offers, named as hugetlb files name them ("2MB", "1GB").
pub(crate) fn hugepage_sizes() -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(Path::new("/sys/kernel/mm/hugepages")) else {
        return Vec::new();
    };
    let mut out: Vec<String> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let kb: u64 = name
                .strip_prefix("hugepages-")?
                .strip_suffix("kB")?
                .parse()
                .ok()?;
            Some(page_size_name(kb))
        })
        .collect();
    out.sort();
    out
}

pub(crate) fn page_size_name(kb: u64) -> String {
    if kb >= 1 << 20 && kb.is_multiple_of(1 << 20) {
        format!("{}GB", kb >> 20)
    } else if kb >= 1 << 10 && kb.is_multiple_of(1 << 10) {
        format!("{}MB", kb >> 10)
    } else {
        format!("{kb}KB")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blkio_lines() {
        let e = parse_blkio_v1("8:0 Read 4096\n8:0 Write 0\nTotal 4096\n");
        assert_eq!(e.len(), 2);
        assert_eq!(
            (e[0].major, e[0].minor, e[0].op.as_str(), e[0].value),
            (8, 0, "Read", 4096)
        );
        let (b, i) = parse_io_stat("254:0 rbytes=10 wbytes=20 rios=1 wios=2 dbytes=0 dios=0\n");
        assert_eq!(b.len(), 2);
        assert_eq!(i[1].value, 2);
        assert_eq!(i[1].op, "Write");
    }

    #[test]
    fn page_size_names() {
        assert_eq!(page_size_name(2048), "2MB");
        assert_eq!(page_size_name(1048576), "1GB");
        assert_eq!(page_size_name(64), "64KB");
    }

    #[test]
    fn stats_json_uses_runc_names() {
        let mut s = Stats::default();
        s.memory.kernel_tcp.limit = 1;
        s.cpu.throttling.throttled_periods = 2;
        let j = serde_json::to_value(&s).unwrap_or_default();
        assert_eq!(j["memory"]["kernelTCP"]["limit"], 1);
        assert_eq!(j["cpu"]["throttling"]["throttledPeriods"], 2);
    }
}
