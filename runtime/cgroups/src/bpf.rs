//! The cgroup v2 device controller: a BPF_PROG_TYPE_CGROUP_DEVICE program generated from a
//! [`DevicePolicy`], loaded with bpf(2) and attached to the container's cgroup directory.
//! Programs attached before by us are detached after the new one is in place (update).
//!
//! The program sees `struct bpf_cgroup_dev_ctx { u32 access_type; u32 major; u32 minor; }`
//! where access_type = access << 16 | type, and returns 1 to allow, 0 to deny.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use crate::devices::{DevicePolicy, ACC_MKNOD, ACC_READ, ACC_WRITE};
use crate::{Error, Layout};

// bpf(2) commands, program and attach types, flags (include/uapi/linux/bpf.h).
const BPF_PROG_LOAD: libc::c_int = 5;
const BPF_PROG_ATTACH: libc::c_int = 8;
const BPF_PROG_DETACH: libc::c_int = 9;
const BPF_PROG_GET_FD_BY_ID: libc::c_int = 13;
const BPF_PROG_QUERY: libc::c_int = 16;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
const BPF_F_ALLOW_MULTI: u32 = 2;
const DEVCG_DEV_BLOCK: i32 = 1;
const DEVCG_DEV_CHAR: i32 = 2;

/// One eBPF instruction.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

const R0: u8 = 0;
const R1: u8 = 1;
const R2: u8 = 2;
const R3: u8 = 3;
const R4: u8 = 4;
const R5: u8 = 5;

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: (src << 4) | (dst & 0x0f),
        off,
        imm,
    }
}
/// dst = *(u32 *)(src + off)
fn ldx_w(dst: u8, src: u8, off: i16) -> Insn {
    insn(0x61, dst, src, off, 0)
}
/// dst32 &= imm
fn and32(dst: u8, imm: i32) -> Insn {
    insn(0x54, dst, 0, 0, imm)
}
/// dst32 >>= imm
fn rsh32(dst: u8, imm: i32) -> Insn {
    insn(0x74, dst, 0, 0, imm)
}
/// dst32 = src32
fn mov32_reg(dst: u8, src: u8) -> Insn {
    insn(0xbc, dst, src, 0, 0)
}
/// dst32 = imm
fn mov32(dst: u8, imm: i32) -> Insn {
    insn(0xb4, dst, 0, 0, imm)
}
/// if dst != imm goto +off
fn jne(dst: u8, imm: i32, off: i16) -> Insn {
    insn(0x55, dst, 0, off, imm)
}
/// if dst == imm goto +off
fn jeq(dst: u8, imm: i32, off: i16) -> Insn {
    insn(0x15, dst, 0, off, imm)
}
/// if dst != src goto +off
fn jne_reg(dst: u8, src: u8, off: i16) -> Insn {
    insn(0x5d, dst, src, off, 0)
}
fn exit() -> Insn {
    insn(0x95, 0, 0, 0, 0)
}

/// The program for a policy: each exception, in the policy's order (the spec's rules, then
/// the defaults), is a block that returns the opposite of the default when the device and
/// access match, and falls through otherwise.
pub(crate) fn program(policy: &DevicePolicy) -> Vec<Insn> {
    let default = i32::from(policy.default_allow);
    let mut p = vec![
        ldx_w(R2, R1, 0),
        and32(R2, 0xffff), // type
        ldx_w(R3, R1, 0),
        rsh32(R3, 16),    // access
        ldx_w(R4, R1, 4), // major
        ldx_w(R5, R1, 8), // minor
    ];
    for &((typ, major, minor), bits) in &policy.exceptions {
        let mut block = Vec::new();
        let dev_type = if typ == 'b' {
            DEVCG_DEV_BLOCK
        } else {
            DEVCG_DEV_CHAR
        };
        // Jump targets are patched below to the end of the block (-1 placeholder).
        block.push(jne(R2, dev_type, -1));
        let all = ACC_MKNOD | ACC_READ | ACC_WRITE;
        if bits & all != all {
            block.push(mov32_reg(R1, R3));
            block.push(and32(R1, i32::from(bits)));
            if policy.default_allow {
                // A deny exception matches when any requested bit is denied (v1's partial
                // match on deny lists).
                block.push(jeq(R1, 0, -1));
            } else {
                // An allow exception must cover every requested bit.
                block.push(jne_reg(R1, R3, -1));
            }
        }
        if let Some(m) = major {
            block.push(jne(R4, m as i32, -1));
        }
        if let Some(m) = minor {
            block.push(jne(R5, m as i32, -1));
        }
        block.push(mov32(R0, 1 - default));
        block.push(exit());
        let len = block.len();
        for (i, ins) in block.iter_mut().enumerate() {
            if ins.off == -1 {
                ins.off = (len - i - 1) as i16;
            }
        }
        p.extend(block);
    }
    p.push(mov32(R0, default));
    p.push(exit());
    p
}

fn sys_bpf(cmd: libc::c_int, attr: &mut [u64; 16]) -> std::io::Result<libc::c_long> {
    // SAFETY: attr is a zero-initialised, 128-byte union bpf_attr image valid for this command;
    // pointers inside it reference buffers that outlive the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.as_mut_ptr(),
            std::mem::size_of_val(attr) as libc::c_uint,
        )
    };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn bpf_err(what: &str, dir: &Path, e: std::io::Error) -> Error {
    Error::Write {
        field: "devices".to_owned(),
        path: dir.to_owned(),
        value: what.to_owned(),
        source: e,
    }
}

/// Load the program; returns its fd.
fn load(insns: &[Insn], dir: &Path) -> Result<OwnedFd, Error> {
    let license = c"Apache";
    let mut log = vec![0u8; 64 * 1024];
    let mut attr = [0u64; 16];
    // union bpf_attr, BPF_PROG_LOAD: u32 prog_type, u32 insn_cnt, u64 insns, u64 license,
    // u32 log_level, u32 log_size, u64 log_buf.
    attr[0] = u64::from(BPF_PROG_TYPE_CGROUP_DEVICE) | ((insns.len() as u64) << 32);
    attr[1] = insns.as_ptr() as u64;
    attr[2] = license.as_ptr() as u64;
    attr[3] = 1 | ((log.len() as u64) << 32);
    attr[4] = log.as_mut_ptr() as u64;
    match sys_bpf(BPF_PROG_LOAD, &mut attr) {
        // SAFETY: BPF_PROG_LOAD returned a new fd that we now own.
        Ok(fd) => Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) }),
        Err(e) => {
            let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
            let verifier = String::from_utf8_lossy(&log[..end]).into_owned();
            if e.raw_os_error() == Some(libc::EPERM) || e.raw_os_error() == Some(libc::ENOSYS) {
                return Err(Error::Unsupported {
                    field: "devices".to_owned(),
                    layout: Layout::V2,
                    reason: format!("cannot load a BPF device program: {e}"),
                });
            }
            Err(bpf_err(
                &format!("BPF_PROG_LOAD (verifier: {})", verifier.trim()),
                dir,
                e,
            ))
        }
    }
}

/// Ids of the device programs attached to the cgroup itself.
fn query(cgroup: RawFd, dir: &Path) -> Result<Vec<u32>, Error> {
    let mut ids = vec![0u32; 64];
    let mut attr = [0u64; 16];
    // query: u32 target_fd, u32 attach_type, u32 query_flags, u32 attach_flags,
    // u64 prog_ids, u32 prog_cnt.
    attr[0] = (cgroup as u32 as u64) | (u64::from(BPF_CGROUP_DEVICE) << 32);
    attr[2] = ids.as_mut_ptr() as u64;
    attr[3] = ids.len() as u64;
    sys_bpf(BPF_PROG_QUERY, &mut attr).map_err(|e| bpf_err("BPF_PROG_QUERY", dir, e))?;
    let count = (attr[3] & 0xffff_ffff) as usize;
    ids.truncate(count.min(64));
    Ok(ids)
}

fn prog_fd_by_id(id: u32, dir: &Path) -> Result<OwnedFd, Error> {
    let mut attr = [0u64; 16];
    attr[0] = u64::from(id);
    let fd = sys_bpf(BPF_PROG_GET_FD_BY_ID, &mut attr)
        .map_err(|e| bpf_err("BPF_PROG_GET_FD_BY_ID", dir, e))?;
    // SAFETY: a new fd owned by us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

fn attach_cmd(cmd: libc::c_int, cgroup: RawFd, prog: RawFd, flags: u32) -> std::io::Result<()> {
    let mut attr = [0u64; 16];
    // u32 target_fd, u32 attach_bpf_fd, u32 attach_type, u32 attach_flags.
    attr[0] = (cgroup as u32 as u64) | ((prog as u32 as u64) << 32);
    attr[1] = u64::from(BPF_CGROUP_DEVICE) | (u64::from(flags) << 32);
    sys_bpf(cmd, &mut attr).map(|_| ())
}

/// Load the policy's program and attach it to `dir`, then detach the device programs that
/// were attached there before.
pub(crate) fn attach_device_filter(dir: &Path, policy: &DevicePolicy) -> Result<(), Error> {
    let insns = program(policy);
    let prog = load(&insns, dir)?;
    let cgroup = std::fs::File::open(dir).map_err(|source| Error::Read {
        path: dir.to_owned(),
        source,
    })?;
    let old = query(cgroup.as_raw_fd(), dir)?;
    attach_cmd(
        BPF_PROG_ATTACH,
        cgroup.as_raw_fd(),
        prog.as_raw_fd(),
        BPF_F_ALLOW_MULTI,
    )
    .map_err(|e| bpf_err("BPF_PROG_ATTACH", dir, e))?;
    for id in old {
        let old_fd = prog_fd_by_id(id, dir)?;
        attach_cmd(BPF_PROG_DETACH, cgroup.as_raw_fd(), old_fd.as_raw_fd(), 0)
            .map_err(|e| bpf_err("BPF_PROG_DETACH", dir, e))?;
    }
    Ok(())
}

/// Attach a device program built from OCI rules (deny everything, the rules in order, then
/// runc's default devices) to a cgroup2 directory. [`crate::Cgroup::apply`] does this on v2
/// hosts; on a hybrid host it can also be used on the unified directory.
pub fn attach_device_rules(
    dir: &Path,
    rules: &[oci_spec::runtime::LinuxDeviceCgroup],
) -> Result<(), Error> {
    attach_device_filter(dir, &DevicePolicy::from_spec(rules)?)
}

/// How many device programs are attached to `dir` (for tests and diagnostics).
pub fn attached_device_programs(dir: &Path) -> Result<usize, Error> {
    let cgroup = std::fs::File::open(dir).map_err(|source| Error::Read {
        path: dir.to_owned(),
        source,
    })?;
    Ok(query(cgroup.as_raw_fd(), dir)?.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_list_program_shape() {
        let exceptions = vec![
            (('c', Some(1), Some(3)), ACC_READ | ACC_WRITE | ACC_MKNOD),
            (('c', Some(136), None), ACC_READ | ACC_WRITE),
        ];
        let p = program(&DevicePolicy {
            default_allow: false,
            exceptions,
        });
        // prologue 6, block 1:3 = type, major, minor, r0, exit = 5,
        // block 136:* = type, mov, and, jne, major, r0, exit = 7, epilogue 2.
        assert_eq!(p.len(), 6 + 5 + 7 + 2);
        // First block: jumps land right after its exit.
        assert_eq!(p[6], jne(R2, DEVCG_DEV_CHAR, 4));
        assert_eq!(p[9], mov32(R0, 1));
        assert_eq!(p[p.len() - 2], mov32(R0, 0));
        assert_eq!(std::mem::size_of::<Insn>(), 8);
    }

    #[test]
    fn blocks_follow_the_spec_order_then_the_defaults() -> Result<(), Error> {
        let rule = |json: &str| -> oci_spec::runtime::LinuxDeviceCgroup {
            serde_json::from_str(json).expect("rule JSON")
        };
        let policy = DevicePolicy::from_spec(&[
            rule(r#"{"allow": false, "access": "rwm"}"#),
            rule(r#"{"allow": true, "type": "c", "major": 10, "minor": 229, "access": "rwm"}"#),
        ])?;
        let p = program(&policy);
        // The first block (after the 6-instruction prologue) is c 10:229 rwm: type, major,
        // minor, return 1.
        assert_eq!(p[6], jne(R2, DEVCG_DEV_CHAR, 4));
        assert_eq!(p[7], jne(R4, 10, 3));
        assert_eq!(p[8], jne(R5, 229, 2));
        // The second is the first default, c *:* m: type, access, major/minor any.
        assert_eq!(p[11], jne(R2, DEVCG_DEV_CHAR, 5));
        assert_eq!(p[13], and32(R1, i32::from(ACC_MKNOD)));
        Ok(())
    }
}
