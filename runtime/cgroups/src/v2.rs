//! The cgroup2 tree: the whole story on a v2 host, and the `unified` mount of a hybrid host
//! (where it holds the controllers no v1 hierarchy took, e.g. hugetlb). Values are converted
//! from the OCI (v1-shaped) fields the way runc 1.1's fs2 driver converts them.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use oci_spec::runtime::{LinuxBlockIo, LinuxCpu, LinuxHugepageLimit, LinuxMemory};

use crate::{fs, v1, Error, Hierarchy, Layout};

/// mkdir every level below the mount point, enabling in each ancestor's
/// cgroup.subtree_control the controllers it offers, so the leaf gets their files.
pub(crate) fn create(h: &Hierarchy) -> Result<(), Error> {
    let rel = h.dir.strip_prefix(&h.mount_point).unwrap_or(Path::new(""));
    let mut current = h.mount_point.clone();
    for comp in rel.components() {
        enable_controllers(&current);
        current.push(comp);
        match std::fs::create_dir(&current) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(source) => {
                return Err(Error::Create {
                    path: current,
                    source,
                })
            }
        }
    }
    Ok(())
}

/// Enable every available controller for the children of `dir`. Refusals (a non-root cgroup
/// with processes of its own, a controller in threaded mode) are logged, not fatal: the
/// container still gets a directory, only without those controllers.
fn enable_controllers(dir: &Path) {
    let available = fs::read_opt(dir, "cgroup.controllers")
        .ok()
        .flatten()
        .unwrap_or_default();
    let enabled = fs::read_opt(dir, "cgroup.subtree_control")
        .ok()
        .flatten()
        .unwrap_or_default();
    let enabled: Vec<&str> = enabled.split_whitespace().collect();
    for c in available.split_whitespace() {
        if enabled.contains(&c) {
            continue;
        }
        if let Err(e) = fs::write(
            "cgroup.subtree_control",
            dir,
            "cgroup.subtree_control",
            &format!("+{c}"),
        ) {
            tracing::warn!(error = %e, controller = c, "cannot enable cgroup2 controller");
        }
    }
}

/// 0 → not set, -1 → "max".
fn num(v: i64) -> Option<String> {
    match v {
        0 => None,
        -1 => Some("max".to_owned()),
        v => Some(v.to_string()),
    }
}

/// OCI memory.swap is memory+swap; memory.swap.max is swap alone.
pub(crate) fn swap_value(swap: i64, limit: i64) -> Result<i64, Error> {
    let bad = |reason: String| Error::InvalidValue {
        field: "memory.swap".to_owned(),
        reason,
    };
    if limit == -1 && swap == 0 {
        return Ok(-1);
    }
    if swap == -1 || swap == 0 {
        return Ok(swap);
    }
    if limit == 0 {
        return Err(bad("a swap limit needs a memory limit".to_owned()));
    }
    if limit < 0 {
        return Err(bad(format!("invalid memory limit {limit}")));
    }
    if swap < limit {
        return Err(bad(format!(
            "memory+swap ({swap}) must be >= the memory limit ({limit})"
        )));
    }
    Ok(swap - limit)
}

pub(crate) fn set_memory(dir: &Path, m: &LinuxMemory) -> Result<(), Error> {
    let limit = m.limit().unwrap_or(0);
    let swap_spec = m.swap().unwrap_or(0);
    let swap = swap_value(swap_spec, limit)?;
    let swap_str = match num(swap) {
        // memory and memory+swap equal: no swap at all.
        None if swap_spec > 0 => Some("0".to_owned()),
        other => other,
    };
    if let Some(s) = swap_str {
        match fs::write("memory.swap", dir, "memory.swap.max", &s) {
            Ok(()) => {}
            Err(Error::Write { ref source, .. })
                if source.kind() == std::io::ErrorKind::NotFound && (s == "max" || s == "0") =>
            {
                tracing::debug!("memory.swap.max missing (no swap accounting); ignoring {s}");
            }
            Err(e) => return Err(e),
        }
    }
    if let Some(l) = num(limit) {
        if m.check_before_update() == Some(true) && limit > 0 {
            let current = fs::read_u64(dir, "memory.current")?;
            if current > limit as u64 {
                return Err(Error::InvalidValue {
                    field: "memory.limit".to_owned(),
                    reason: format!("{limit} is below the current usage {current}"),
                });
            }
        }
        fs::write("memory.limit", dir, "memory.max", &l)?;
    }
    if let Some(r) = m.reservation().and_then(num) {
        fs::write("memory.reservation", dir, "memory.low", &r)?;
    }
    if m.kernel().is_some_and(|k| k != 0) || m.kernel_tcp().is_some_and(|k| k != 0) {
        tracing::warn!("memory.kernel/kernelTCP: not available on cgroup v2; ignoring");
    }
    if m.swappiness().is_some() {
        tracing::warn!("memory.swappiness: not available on cgroup v2; ignoring");
    }
    if m.disable_oom_killer() == Some(true) {
        tracing::warn!("memory.disableOOMKiller: not available on cgroup v2; ignoring");
    }
    Ok(())
}

/// runc 1.1's cpu.shares (2..262144) → cpu.weight (1..10000).
pub(crate) fn shares_to_weight(shares: u64) -> u64 {
    if shares == 0 {
        return 0;
    }
    1 + (shares.saturating_sub(2) * 9999) / 262142
}

pub(crate) fn set_cpu(dir: &Path, c: &LinuxCpu) -> Result<(), Error> {
    if let Some(shares) = c.shares().filter(|v| *v != 0) {
        let w = shares_to_weight(shares);
        fs::write("cpu.shares", dir, "cpu.weight", &w.to_string())?;
    }
    if let Some(i) = c.idle() {
        fs::write("cpu.idle", dir, "cpu.idle", &i.to_string())?;
    }
    let quota = c.quota().filter(|v| *v != 0);
    let period = c.period().filter(|v| *v != 0);
    if quota.is_some() || period.is_some() {
        let quota_str = match quota {
            Some(q) if q > 0 => q.to_string(),
            Some(_) => "max".to_owned(),
            // Only the period changes: keep the current quota.
            None => fs::read_opt(dir, "cpu.max")?
                .and_then(|s| s.split_whitespace().next().map(str::to_owned))
                .unwrap_or_else(|| "max".to_owned()),
        };
        let value = match period {
            Some(p) => format!("{quota_str} {p}"),
            None => quota_str,
        };
        fs::write("cpu.quota", dir, "cpu.max", &value)?;
    }
    if let Some(b) = c.burst() {
        fs::write("cpu.burst", dir, "cpu.max.burst", &b.to_string())?;
    }
    if c.realtime_period().is_some_and(|v| v != 0) || c.realtime_runtime().is_some_and(|v| v != 0) {
        return Err(Error::Unsupported {
            field: "cpu.realtimeRuntime".to_owned(),
            layout: Layout::V2,
            reason: "cgroup v2 has no realtime scheduling limits".to_owned(),
        });
    }
    Ok(())
}

/// blkio weight (10..1000) → io.weight (1..10000).
pub(crate) fn blkio_weight_to_io(w: u16) -> u64 {
    if w == 0 {
        return 0;
    }
    1 + (u64::from(w).saturating_sub(10)) * 9999 / 990
}

pub(crate) fn set_io(dir: &Path, b: &LinuxBlockIo) -> Result<(), Error> {
    let bfq = fs::exists(dir, "io.bfq.weight");
    if let Some(w) = b.weight().filter(|v| *v != 0) {
        if bfq {
            fs::write("blockIO.weight", dir, "io.bfq.weight", &w.to_string())?;
        } else {
            let v = format!("default {}", blkio_weight_to_io(w));
            fs::write("blockIO.weight", dir, "io.weight", &v)?;
        }
    }
    for d in b.weight_device().iter().flatten() {
        if let Some(w) = d.weight() {
            if bfq {
                let v = format!("{}:{} {}", d.major(), d.minor(), w);
                fs::write("blockIO.weightDevice", dir, "io.bfq.weight", &v)?;
            } else {
                let v = format!("{}:{} {}", d.major(), d.minor(), blkio_weight_to_io(w));
                fs::write("blockIO.weightDevice", dir, "io.weight", &v)?;
            }
        }
    }
    let throttles = [
        (
            "blockIO.throttleReadBpsDevice",
            "rbps",
            b.throttle_read_bps_device(),
        ),
        (
            "blockIO.throttleWriteBpsDevice",
            "wbps",
            b.throttle_write_bps_device(),
        ),
        (
            "blockIO.throttleReadIOPSDevice",
            "riops",
            b.throttle_read_iops_device(),
        ),
        (
            "blockIO.throttleWriteIOPSDevice",
            "wiops",
            b.throttle_write_iops_device(),
        ),
    ];
    for (field, key, devices) in throttles {
        for d in devices.iter().flatten() {
            let rate = if d.rate() == 0 {
                "max".to_owned()
            } else {
                d.rate().to_string()
            };
            let v = format!("{}:{} {key}={rate}", d.major(), d.minor());
            fs::write(field, dir, "io.max", &v)?;
        }
    }
    Ok(())
}

pub(crate) fn set_hugetlb(dir: &Path, l: &LinuxHugepageLimit) -> Result<(), Error> {
    v1::check_page_size(l.page_size())?;
    let file = format!("hugetlb.{}.max", l.page_size());
    if !fs::exists(dir, &file) {
        return Err(Error::InvalidValue {
            field: "hugepageLimits.pageSize".to_owned(),
            reason: format!(
                "hugepage size {} is not supported or hugetlb is not enabled ({} does not exist)",
                l.page_size(),
                dir.join(&file).display()
            ),
        });
    }
    let value = if l.limit() < 0 {
        "max".to_owned()
    } else {
        l.limit().to_string()
    };
    fs::write("hugepageLimits.limit", dir, &file, &value)?;
    // Limit reservations too where the kernel has them, so a mmap that would later fault
    // beyond the limit fails up front.
    let rsvd = format!("hugetlb.{}.rsvd.max", l.page_size());
    if fs::exists(dir, &rsvd) {
        fs::write("hugepageLimits.limit", dir, &rsvd, &value)?;
    }
    Ok(())
}

/// linux.resources.unified: file name → value, written as is into the cgroup2 directory.
pub(crate) fn set_unified(dir: &Path, unified: &HashMap<String, String>) -> Result<(), Error> {
    let mut keys: Vec<&String> = unified.keys().collect();
    keys.sort();
    for key in keys {
        let value = &unified[key];
        let field = format!("unified[{key:?}]");
        if key.is_empty() || key.contains('/') || key.starts_with('.') || !key.contains('.') {
            return Err(Error::InvalidValue {
                field,
                reason: "must be a cgroup file name such as \"memory.high\"".to_owned(),
            });
        }
        if !fs::exists(dir, key) {
            let controller = key.split('.').next().unwrap_or_default();
            return Err(Error::InvalidValue {
                field,
                reason: format!(
                    "{} does not exist (is the {controller} controller enabled in this cgroup2 tree?)",
                    dir.join(key).display()
                ),
            });
        }
        fs::write(&field, dir, key, value)?;
    }
    Ok(())
}

fn events_frozen(dir: &Path) -> Result<bool, Error> {
    Ok(fs::parse_kv(&fs::read(dir, "cgroup.events")?).get("frozen") == Some(&1))
}

pub(crate) fn is_frozen(dir: &Path) -> Result<bool, Error> {
    events_frozen(dir)
}

/// cgroup.freeze, then wait for cgroup.events to report the new state.
pub(crate) fn freeze(dir: &Path, frozen: bool) -> Result<(), Error> {
    fs::write(
        "freezer",
        dir,
        "cgroup.freeze",
        if frozen { "1" } else { "0" },
    )?;
    let deadline = Instant::now() + v1::FREEZE_TIMEOUT;
    let mut i: u32 = 0;
    loop {
        if events_frozen(dir)? == frozen {
            return Ok(());
        }
        if Instant::now() >= deadline {
            if frozen {
                let _ = fs::write("freezer", dir, "cgroup.freeze", "0");
            }
            return Err(Error::FreezeTimeout {
                path: dir.join("cgroup.events"),
                state: if frozen { "frozen 1" } else { "frozen 0" },
                timeout: v1::FREEZE_TIMEOUT,
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
    fn runc_conversions() {
        assert_eq!(shares_to_weight(1024), 39);
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(262144), 10000);
        assert_eq!(blkio_weight_to_io(10), 1);
        assert_eq!(blkio_weight_to_io(1000), 10000);
        assert_eq!(blkio_weight_to_io(500), 4950);
    }

    #[test]
    fn swap_is_converted_from_memory_plus_swap() {
        assert_eq!(swap_value(0, -1).ok(), Some(-1));
        assert_eq!(swap_value(-1, 100).ok(), Some(-1));
        assert_eq!(swap_value(0, 100).ok(), Some(0));
        assert_eq!(swap_value(300, 100).ok(), Some(200));
        assert_eq!(swap_value(100, 100).ok(), Some(0));
        assert!(swap_value(50, 100).is_err());
        assert!(swap_value(50, 0).is_err());
    }
}
