//! Per-process kernel attributes from the spec: personality, I/O priority and scheduler.
//! Applied by init and by exec right before the user switch.

use oci_spec::runtime::{Process, Spec};

use crate::error::{Error, Result};

/// The serde name of an oci-spec enum value (e.g. "IOPRIO_CLASS_RT", "SCHED_FIFO").
fn name_of<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn os_err(what: &str) -> Error {
    Error::Other(format!("{what}: {}", std::io::Error::last_os_error()))
}

pub fn apply(spec: &Spec, process: &Process) -> Result<()> {
    if let Some(p) = spec.linux().as_ref().and_then(|l| l.personality().as_ref()) {
        let domain = match name_of(&p.domain()).as_str() {
            "LINUX" => 0x0000,
            "LINUX32" => 0x0008,
            other => {
                return Err(Error::Spec(format!(
                    "linux.personality: unknown domain {other:?}"
                )))
            }
        };
        // SAFETY: personality only changes the execution domain flag word.
        if unsafe { libc::personality(domain) } == -1 {
            return Err(os_err("personality"));
        }
    }
    if let Some(io) = process.io_priority() {
        let class: i64 = match name_of(&io.class()).as_str() {
            "IOPRIO_CLASS_RT" => 1,
            "IOPRIO_CLASS_BE" => 2,
            "IOPRIO_CLASS_IDLE" => 3,
            other => {
                return Err(Error::Spec(format!(
                    "process.ioPriority: unknown class {other:?}"
                )))
            }
        };
        let value = (class << 13) | (io.priority() & 0x1fff);
        // SAFETY: ioprio_set(IOPRIO_WHO_PROCESS, self, value) takes integers only.
        if unsafe { libc::syscall(libc::SYS_ioprio_set, 1, 0, value) } != 0 {
            return Err(os_err("ioprio_set"));
        }
    }
    if let Some(s) = process.scheduler() {
        let policy: u32 = match name_of(&s.policy()).as_str() {
            "SCHED_OTHER" => 0,
            "SCHED_FIFO" => 1,
            "SCHED_RR" => 2,
            "SCHED_BATCH" => 3,
            "SCHED_ISO" => 4,
            "SCHED_IDLE" => 5,
            "SCHED_DEADLINE" => 6,
            other => {
                return Err(Error::Spec(format!(
                    "process.scheduler: unknown policy {other:?}"
                )))
            }
        };
        let mut flags = 0u64;
        for f in s.flags().as_deref().unwrap_or_default() {
            flags |= match name_of(f).as_str() {
                "SCHED_FLAG_RESET_ON_FORK" => 0x01,
                "SCHED_FLAG_RECLAIM" => 0x02,
                "SCHED_FLAG_DL_OVERRUN" => 0x04,
                "SCHED_FLAG_KEEP_POLICY" => 0x08,
                "SCHED_FLAG_KEEP_PARAMS" => 0x10,
                "SCHED_FLAG_UTIL_CLAMP_MIN" => 0x20,
                "SCHED_FLAG_UTIL_CLAMP_MAX" => 0x40,
                other => {
                    return Err(Error::Spec(format!(
                        "process.scheduler: unknown flag {other:?}"
                    )))
                }
            };
        }
        #[repr(C)]
        struct SchedAttr {
            size: u32,
            policy: u32,
            flags: u64,
            nice: i32,
            priority: u32,
            runtime: u64,
            deadline: u64,
            period: u64,
        }
        let attr = SchedAttr {
            size: std::mem::size_of::<SchedAttr>() as u32,
            policy,
            flags,
            nice: s.nice().unwrap_or(0),
            priority: s.priority().unwrap_or(0) as u32,
            runtime: s.runtime().unwrap_or(0),
            deadline: s.deadline().unwrap_or(0),
            period: s.period().unwrap_or(0),
        };
        // SAFETY: sched_setattr(self, &attr, 0) reads `size` bytes of a valid struct.
        if unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &attr, 0) } != 0 {
            return Err(os_err("sched_setattr"));
        }
    }
    Ok(())
}
