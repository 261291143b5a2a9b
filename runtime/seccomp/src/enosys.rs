//! runc's ENOSYS stub: syscalls newer than anything the profile names get ENOSYS instead of
//! the default action, so programs built against a newer kernel fall back (glibc's clone3 →
//! clone, faccessat2 → faccessat) instead of failing on EPERM. The stub is classic BPF placed
//! in front of libseccomp's program; the result is loaded with seccomp(2) directly.

use libseccomp::{ScmpArch, ScmpFilterContext, ScmpSyscall};

/// struct sock_filter.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SockFilter {
    pub code: u16,
    pub jt: u8,
    pub jf: u8,
    pub k: u32,
}

const LD_W_ABS: u16 = 0x20;
const JMP_JA: u16 = 0x05;
const JMP_JEQ_K: u16 = 0x15;
const JMP_JGT_K: u16 = 0x25;
const JMP_JSET_K: u16 = 0x45;
const RET_K: u16 = 0x06;
const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
const OFFSET_NR: u32 = 0;
const OFFSET_ARCH: u32 = 4;
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;
const AUDIT_ARCH_I386: u32 = 0x4000_0003;
const AUDIT_ARCH_AARCH64: u32 = 0xC000_00B7;
const AUDIT_ARCH_ARM: u32 = 0x4000_0028;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Label {
    Next,
    Enosys,
    Main,
    NextArch(usize),
    X32(usize),
}

enum Item {
    Insn {
        code: u16,
        k: u32,
        jt: Label,
        jf: Label,
    },
    /// Unconditional jump (k is the offset).
    Ja(Label),
    Mark(Label),
}

fn largest(names: &[String], arch: ScmpArch) -> Option<u32> {
    names
        .iter()
        .filter_map(|n| ScmpSyscall::from_name_by_arch(n, arch).ok())
        .map(i32::from)
        .filter(|nr| *nr >= 0)
        .map(|nr| nr as u32)
        .max()
}

/// The stub for the architectures in the filter, given every syscall name the profile
/// uses. None when no architecture we know gets a limit.
pub(crate) fn stub(ctx: &ScmpFilterContext, names: &[String]) -> Option<Vec<SockFilter>> {
    let present = |a: ScmpArch| ctx.is_arch_present(a).unwrap_or(false);
    let mut items = vec![Item::Insn {
        code: LD_W_ABS,
        k: OFFSET_ARCH,
        jt: Label::Next,
        jf: Label::Next,
    }];
    let mut any = false;
    let x86_64 = present(ScmpArch::X8664)
        .then(|| largest(names, ScmpArch::X8664))
        .flatten();
    let x32 = present(ScmpArch::X32)
        .then(|| largest(names, ScmpArch::X32))
        .flatten();
    let others = [
        (ScmpArch::X86, AUDIT_ARCH_I386),
        (ScmpArch::Aarch64, AUDIT_ARCH_AARCH64),
        (ScmpArch::Arm, AUDIT_ARCH_ARM),
    ];
    let limit_or_main = |items: &mut Vec<Item>, max: Option<u32>| match max {
        Some(m) => items.push(Item::Insn {
            code: JMP_JGT_K,
            k: m,
            jt: Label::Enosys,
            jf: Label::Main,
        }),
        None => items.push(Item::Ja(Label::Main)),
    };
    let mut block = 0;
    if x86_64.is_some() || x32.is_some() {
        // x86_64 and x32 share AUDIT_ARCH_X86_64; x32 numbers carry bit 30.
        any = true;
        items.push(Item::Insn {
            code: JMP_JEQ_K,
            k: AUDIT_ARCH_X86_64,
            jt: Label::Next,
            jf: Label::NextArch(block),
        });
        items.push(Item::Insn {
            code: LD_W_ABS,
            k: OFFSET_NR,
            jt: Label::Next,
            jf: Label::Next,
        });
        items.push(Item::Insn {
            code: JMP_JSET_K,
            k: X32_SYSCALL_BIT,
            jt: Label::X32(block),
            jf: Label::Next,
        });
        limit_or_main(&mut items, x86_64);
        items.push(Item::Mark(Label::X32(block)));
        limit_or_main(&mut items, x32);
        items.push(Item::Mark(Label::NextArch(block)));
        block += 1;
    }
    for (arch, audit) in others {
        let Some(max) = present(arch).then(|| largest(names, arch)).flatten() else {
            continue;
        };
        any = true;
        items.push(Item::Insn {
            code: JMP_JEQ_K,
            k: audit,
            jt: Label::Next,
            jf: Label::NextArch(block),
        });
        items.push(Item::Insn {
            code: LD_W_ABS,
            k: OFFSET_NR,
            jt: Label::Next,
            jf: Label::Next,
        });
        limit_or_main(&mut items, Some(max));
        items.push(Item::Mark(Label::NextArch(block)));
        block += 1;
    }
    if !any {
        return None;
    }
    items.push(Item::Ja(Label::Main));
    items.push(Item::Mark(Label::Enosys));
    items.push(Item::Insn {
        code: RET_K,
        k: SECCOMP_RET_ERRNO | libc::ENOSYS as u32,
        jt: Label::Next,
        jf: Label::Next,
    });
    items.push(Item::Mark(Label::Main));
    assemble(&items)
}

fn assemble(items: &[Item]) -> Option<Vec<SockFilter>> {
    let mut positions: Vec<(Label, usize)> = Vec::new();
    let mut pc = 0;
    for item in items {
        match item {
            Item::Mark(l) => positions.push((*l, pc)),
            _ => pc += 1,
        }
    }
    let pos = |l: Label| positions.iter().find(|(x, _)| *x == l).map(|(_, p)| *p);
    let rel = |l: Label, at: usize| -> Option<usize> {
        match l {
            Label::Next => Some(0),
            other => pos(other)?.checked_sub(at + 1),
        }
    };
    let mut out = Vec::new();
    for item in items {
        let at = out.len();
        match item {
            Item::Mark(_) => {}
            Item::Ja(l) => out.push(SockFilter {
                code: JMP_JA,
                jt: 0,
                jf: 0,
                k: rel(*l, at)? as u32,
            }),
            Item::Insn { code, k, jt, jf } => out.push(SockFilter {
                code: *code,
                jt: u8::try_from(rel(*jt, at)?).ok()?,
                jf: u8::try_from(rel(*jf, at)?).ok()?,
                k: *k,
            }),
        }
    }
    Some(out)
}

/// Parse libseccomp's exported program (an array of struct sock_filter).
pub(crate) fn parse_program(bytes: &[u8]) -> Vec<SockFilter> {
    bytes
        .chunks_exact(8)
        .map(|c| SockFilter {
            code: u16::from_ne_bytes([c[0], c[1]]),
            jt: c[2],
            jf: c[3],
            k: u32::from_ne_bytes([c[4], c[5], c[6], c[7]]),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use libseccomp::ScmpAction;

    #[test]
    fn x86_64_with_x32_and_i386() {
        let mut ctx = ScmpFilterContext::new(ScmpAction::Errno(1)).expect("ctx");
        ctx.add_arch(ScmpArch::X86).expect("x86");
        ctx.add_arch(ScmpArch::X32).expect("x32");
        let names = vec!["read".to_owned(), "openat2".to_owned()];
        let s = stub(&ctx, &names).expect("stub");
        // ld arch; jeq x86_64; ld nr; jset x32; jgt 437; jgt x32(437); jeq i386; ld nr;
        // jgt 437; ja main; ret ENOSYS.
        assert_eq!(s.len(), 11);
        assert_eq!(
            s[4],
            SockFilter {
                code: JMP_JGT_K,
                jt: 5,
                jf: 6,
                k: 437
            }
        );
        assert_eq!(s[5].k, X32_SYSCALL_BIT + 437);
        assert_eq!(s[1].jf, 4, "non-x86_64 goes to the i386 check");
        assert_eq!(
            s[9],
            SockFilter {
                code: JMP_JA,
                jt: 0,
                jf: 0,
                k: 1
            }
        );
        assert_eq!(s[10].k, SECCOMP_RET_ERRNO | 38);
    }

    #[test]
    fn no_names_no_stub() {
        let ctx = ScmpFilterContext::new(ScmpAction::Errno(1)).expect("ctx");
        assert!(stub(&ctx, &[]).is_none());
    }
}
