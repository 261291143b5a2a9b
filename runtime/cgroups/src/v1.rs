//! cgroup v1 controllers (also used on hybrid hosts): memory, cpu, cpuset, blkio, hugetlb and
//! freezer, written the way runc 1.1's fs driver writes them.

use std::path::Path;
use std::time::{Duration, Instant};

use oci_spec::runtime::{LinuxBlockIo, LinuxCpu, LinuxHugepageLimit, LinuxMemory};

use crate::{fs, Error, Layout};

const MEMSW_LIMIT: &str = "memory.memsw.limit_in_bytes";
const MEM_LIMIT: &str = "memory.limit_in_bytes";
/// v1 reports "no limit" as a huge page-aligned number (PAGE_COUNTER_MAX pages).
const UNLIMITED_V1: u64 = 1 << 62;

pub(crate) fn memory_is_empty(m: &LinuxMemory) -> bool {
    m.limit().is_none()
        && m.reservation().is_none()
        && m.swap().is_none()
        && m.kernel().is_none()
        && m.kernel_tcp().is_none()
        && m.swappiness().is_none()
        && m.disable_oom_killer().is_none()
}

pub(crate) fn cpu_is_empty(c: &LinuxCpu) -> bool {
    c.shares().is_none()
        && c.quota().is_none()
        && c.period().is_none()
        && c.burst().is_none()
        && c.idle().is_none()
        && c.realtime_period().is_none()
        && c.realtime_runtime().is_none()
}

pub(crate) fn blkio_is_empty(b: &LinuxBlockIo) -> bool {
    b.weight().is_none()
        && b.leaf_weight().is_none()
        && b.weight_device().as_ref().is_none_or(|v| v.is_empty())
        && b.throttle_read_bps_device()
            .as_ref()
            .is_none_or(|v| v.is_empty())
        && b.throttle_write_bps_device()
            .as_ref()
            .is_none_or(|v| v.is_empty())
        && b.throttle_read_iops_device()
            .as_ref()
            .is_none_or(|v| v.is_empty())
        && b.throttle_write_iops_device()
            .as_ref()
            .is_none_or(|v| v.is_empty())
}

/// memory.limit / memory.swap with runc's ordering: memsw (limit+swap) must never be below the
/// memory limit, so when growing write swap first, when shrinking write the limit first.
pub(crate) fn set_memory(dir: &Path, m: &LinuxMemory) -> Result<(), Error> {
    let limit = m.limit().filter(|v| *v != 0);
    let memsw_present = fs::exists(dir, MEMSW_LIMIT);
    let mut swap = m.swap().filter(|v| *v != 0);
    if let Some(s) = swap {
        if !memsw_present {
            // Swap accounting is off (no memsw files). "No extra swap" (swap == limit) and
            // "unlimited" are meaningless then; anything else cannot be honoured.
            if Some(s) == limit || s == -1 {
                tracing::warn!(
                    swap = s,
                    "memory.swap: swap accounting is disabled ({MEMSW_LIMIT} missing); ignoring"
                );
                swap = None;
            } else {
                return Err(Error::Unsupported {
                    field: "memory.swap".to_owned(),
                    layout: Layout::V1,
                    reason: format!(
                        "swap accounting is disabled in this kernel ({} does not exist)",
                        dir.join(MEMSW_LIMIT).display()
                    ),
                });
            }
        }
    } else if limit == Some(-1) && memsw_present {
        // An unlimited memory limit with no swap given means unlimited swap too.
        swap = Some(-1);
    } else if let (Some(l), true) = (limit.filter(|l| *l > 0), memsw_present) {
        // An update of the limit alone keeps the swap allowance (memsw - limit) as it was,
        // instead of failing when the new limit exceeds the old memsw.
        let cur_limit = fs::read_u64(dir, MEM_LIMIT)?;
        let cur_memsw = fs::read_u64(dir, MEMSW_LIMIT)?;
        if cur_memsw < UNLIMITED_V1 && cur_limit < UNLIMITED_V1 {
            let allowance = cur_memsw.saturating_sub(cur_limit);
            swap = Some(l.saturating_add(allowance as i64));
        }
    }

    let write_limit = |v: i64| fs::write("memory.limit", dir, MEM_LIMIT, &v.to_string());
    let write_swap = |v: i64| fs::write("memory.swap", dir, MEMSW_LIMIT, &v.to_string());
    match (limit, swap) {
        (Some(l), Some(s)) => {
            let current = fs::read_u64(dir, MEM_LIMIT)?;
            if s == -1 || current < s as u64 {
                write_swap(s)?;
                write_limit(l)?;
            } else {
                write_limit(l)?;
                write_swap(s)?;
            }
        }
        (Some(l), None) => write_limit(l)?,
        (None, Some(s)) => write_swap(s)?,
        (None, None) => {}
    }

    if let Some(r) = m.reservation().filter(|v| *v != 0) {
        fs::write(
            "memory.reservation",
            dir,
            "memory.soft_limit_in_bytes",
            &r.to_string(),
        )?;
    }
    if m.kernel().is_some_and(|k| k != 0) {
        tracing::warn!("memory.kernel: kernel memory limits are deprecated and ignored");
    }
    if let Some(k) = m.kernel_tcp().filter(|v| *v != 0) {
        fs::write(
            "memory.kernelTCP",
            dir,
            "memory.kmem.tcp.limit_in_bytes",
            &k.to_string(),
        )?;
    }
    if let Some(s) = m.swappiness() {
        if s > 100 {
            return Err(Error::InvalidValue {
                field: "memory.swappiness".to_owned(),
                reason: format!("{s} is not in 0..=100"),
            });
        }
        fs::write(
            "memory.swappiness",
            dir,
            "memory.swappiness",
            &s.to_string(),
        )?;
    }
    if let Some(disable) = m.disable_oom_killer() {
        let v = if disable { "1" } else { "0" };
        fs::write("memory.disableOOMKiller", dir, "memory.oom_control", v)?;
    }
    Ok(())
}

pub(crate) fn set_cpu(dir: &Path, c: &LinuxCpu) -> Result<(), Error> {
    if let Some(shares) = c.shares().filter(|v| *v != 0) {
        fs::write("cpu.shares", dir, "cpu.shares", &shares.to_string())?;
        let got = fs::read_u64(dir, "cpu.shares")?;
        if shares > got {
            return Err(Error::InvalidValue {
                field: "cpu.shares".to_owned(),
                reason: format!("the maximum allowed cpu-shares is {got}"),
            });
        } else if shares < got {
            return Err(Error::InvalidValue {
                field: "cpu.shares".to_owned(),
                reason: format!("the minimum allowed cpu-shares is {got}"),
            });
        }
    }
    let quota = c.quota().filter(|v| *v != 0);
    let mut period_pending = None;
    if let Some(period) = c.period().filter(|v| *v != 0) {
        let p = period.to_string();
        match fs::write("cpu.period", dir, "cpu.cfs_period_us", &p) {
            Ok(()) => {}
            // A smaller period can be refused while the old quota/new period exceeds the
            // parent's; retry after the quota when one is coming.
            Err(Error::Write { ref source, .. })
                if source.raw_os_error() == Some(libc::EINVAL) && quota.is_some() =>
            {
                period_pending = Some(p)
            }
            Err(e) => return Err(e),
        }
    }
    if let Some(q) = quota {
        fs::write("cpu.quota", dir, "cpu.cfs_quota_us", &q.to_string())?;
        if let Some(p) = period_pending {
            fs::write("cpu.period", dir, "cpu.cfs_period_us", &p)?;
        }
    }
    if let Some(b) = c.burst() {
        fs::write("cpu.burst", dir, "cpu.cfs_burst_us", &b.to_string())?;
    }
    if let Some(i) = c.idle() {
        fs::write("cpu.idle", dir, "cpu.idle", &i.to_string())?;
    }
    let rt =
        c.realtime_period().is_some_and(|v| v != 0) || c.realtime_runtime().is_some_and(|v| v != 0);
    if rt && !fs::exists(dir, "cpu.rt_runtime_us") {
        return Err(Error::Unsupported {
            field: "cpu.realtimeRuntime".to_owned(),
            layout: Layout::V1,
            reason: format!(
                "{} does not exist (kernel without CONFIG_RT_GROUP_SCHED)",
                dir.join("cpu.rt_runtime_us").display()
            ),
        });
    }
    if let Some(p) = c.realtime_period().filter(|v| *v != 0) {
        fs::write(
            "cpu.realtimePeriod",
            dir,
            "cpu.rt_period_us",
            &p.to_string(),
        )?;
    }
    if let Some(r) = c.realtime_runtime().filter(|v| *v != 0) {
        fs::write(
            "cpu.realtimeRuntime",
            dir,
            "cpu.rt_runtime_us",
            &r.to_string(),
        )?;
    }
    Ok(())
}

/// cpuset.cpus/mems (same file names on v1 and v2).
pub(crate) fn set_cpuset(dir: &Path, c: &LinuxCpu) -> Result<(), Error> {
    if let Some(cpus) = c.cpus().as_deref().filter(|s| !s.is_empty()) {
        fs::write("cpu.cpus", dir, "cpuset.cpus", cpus)?;
    }
    if let Some(mems) = c.mems().as_deref().filter(|s| !s.is_empty()) {
        fs::write("cpu.mems", dir, "cpuset.mems", mems)?;
    }
    Ok(())
}

/// A new v1 cpuset directory starts with empty cpus/mems, and tasks cannot join it until they
/// are set: copy the parent's values down every directory from the mount point to `dir`.
pub(crate) fn copy_cpuset_down(mount_point: &Path, dir: &Path) -> Result<(), Error> {
    let Ok(rel) = dir.strip_prefix(mount_point) else {
        return Ok(());
    };
    let mut parent = mount_point.to_path_buf();
    for comp in rel.components() {
        let child = parent.join(comp);
        for file in ["cpuset.cpus", "cpuset.mems"] {
            if fs::read(&child, file)?.trim().is_empty() {
                let value = fs::read(&parent, file)?;
                fs::write(file, &child, file, value.trim())?;
            }
        }
        parent = child;
    }
    Ok(())
}

pub(crate) fn set_blkio(dir: &Path, b: &LinuxBlockIo) -> Result<(), Error> {
    // runc prefers the BFQ files; blkio.weight only exists with CFQ (gone since Linux 5.0).
    let (weight_file, weight_device_file) = if fs::exists(dir, "blkio.bfq.weight") {
        ("blkio.bfq.weight", "blkio.bfq.weight_device")
    } else {
        ("blkio.weight", "blkio.weight_device")
    };
    if let Some(w) = b.weight().filter(|v| *v != 0) {
        fs::write("blockIO.weight", dir, weight_file, &w.to_string())?;
    }
    if let Some(w) = b.leaf_weight().filter(|v| *v != 0) {
        if fs::exists(dir, "blkio.leaf_weight") {
            fs::write(
                "blockIO.leafWeight",
                dir,
                "blkio.leaf_weight",
                &w.to_string(),
            )?;
        } else {
            tracing::warn!(
                "blockIO.leafWeight: blkio.leaf_weight does not exist (no CFQ); ignoring"
            );
        }
    }
    for d in b.weight_device().iter().flatten() {
        if let Some(w) = d.weight() {
            let v = format!("{}:{} {}", d.major(), d.minor(), w);
            fs::write("blockIO.weightDevice", dir, weight_device_file, &v)?;
        }
        if let Some(w) = d.leaf_weight() {
            let v = format!("{}:{} {}", d.major(), d.minor(), w);
            fs::write("blockIO.weightDevice", dir, "blkio.leaf_weight_device", &v)?;
        }
    }
    let throttles = [
        (
            "blockIO.throttleReadBpsDevice",
            "blkio.throttle.read_bps_device",
            b.throttle_read_bps_device(),
        ),
        (
            "blockIO.throttleWriteBpsDevice",
            "blkio.throttle.write_bps_device",
            b.throttle_write_bps_device(),
        ),
        (
            "blockIO.throttleReadIOPSDevice",
            "blkio.throttle.read_iops_device",
            b.throttle_read_iops_device(),
        ),
        (
            "blockIO.throttleWriteIOPSDevice",
            "blkio.throttle.write_iops_device",
            b.throttle_write_iops_device(),
        ),
    ];
    for (field, file, devices) in throttles {
        for d in devices.iter().flatten() {
            let v = format!("{}:{} {}", d.major(), d.minor(), d.rate());
            fs::write(field, dir, file, &v)?;
        }
    }
    Ok(())
}

/// "2MB", "1GB", "64KB": the form hugetlb file names use.
pub(crate) fn check_page_size(page_size: &str) -> Result<(), Error> {
    let ok = page_size
        .strip_suffix("B")
        .and_then(|s| s.strip_suffix(['K', 'M', 'G']))
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidValue {
            field: "hugepageLimits.pageSize".to_owned(),
            reason: format!("{page_size:?} is not of the form <n>KB|MB|GB"),
        })
    }
}

pub(crate) fn set_hugetlb(dir: &Path, l: &LinuxHugepageLimit) -> Result<(), Error> {
    check_page_size(l.page_size())?;
    let file = format!("hugetlb.{}.limit_in_bytes", l.page_size());
    if !fs::exists(dir, &file) {
        return Err(Error::InvalidValue {
            field: "hugepageLimits.pageSize".to_owned(),
            reason: format!(
                "hugepage size {} is not supported ({} does not exist)",
                l.page_size(),
                dir.join(&file).display()
            ),
        });
    }
    fs::write("hugepageLimits.limit", dir, &file, &l.limit().to_string())
}

/// How long freeze/thaw wait for the kernel before giving up.
pub(crate) const FREEZE_TIMEOUT: Duration = Duration::from_secs(10);

/// v1 freezer: write FROZEN/THAWED and poll freezer.state until it settles. The write is
/// repeated now and then: a cgroup can stay FREEZING while its tasks keep forking.
pub(crate) fn freeze(dir: &Path, frozen: bool) -> Result<(), Error> {
    let want = if frozen { "FROZEN" } else { "THAWED" };
    let deadline = Instant::now() + FREEZE_TIMEOUT;
    let mut i: u32 = 0;
    loop {
        if i.is_multiple_of(50) {
            fs::write("freezer", dir, "freezer.state", want)?;
        }
        if fs::read(dir, "freezer.state")?.trim() == want {
            return Ok(());
        }
        if Instant::now() >= deadline {
            if frozen {
                // Do not leave the container half frozen.
                let _ = fs::write("freezer", dir, "freezer.state", "THAWED");
            }
            return Err(Error::FreezeTimeout {
                path: dir.join("freezer.state"),
                state: want,
                timeout: FREEZE_TIMEOUT,
            });
        }
        std::thread::sleep(Duration::from_millis(if i < 10 { 1 } else { 10 }));
        i += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_sizes() {
        assert!(check_page_size("2MB").is_ok());
        assert!(check_page_size("1GB").is_ok());
        assert!(check_page_size("64KB").is_ok());
        assert!(check_page_size("2M").is_err());
        assert!(check_page_size("MB").is_err());
        assert!(check_page_size("../x/2MB").is_err());
    }
}
