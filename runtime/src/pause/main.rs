//! `nestbox-pause`: the pod sandbox's placeholder process.
//!
//! It holds the pod's namespaces open, reaps zombies (it is PID 1 when the pod shares its PID
//! namespace) and exits 0 on SIGINT or SIGTERM. build.rs compiles this file on its own with
//! `-C target-feature=+crt-static` (no crates, only libc symbols) so the binary is static and
//! runs in an otherwise empty rootfs.

use std::os::raw::c_int;

/// glibc's `sigset_t` on Linux: 1024 bits.
#[repr(C)]
struct SigSet([u64; 16]);

const SIG_BLOCK: c_int = 0;
const SIGINT: c_int = 2;
const SIGTERM: c_int = 15;
const SIGCHLD: c_int = 17;
const WNOHANG: c_int = 1;

extern "C" {
    fn sigemptyset(set: *mut SigSet) -> c_int;
    fn sigaddset(set: *mut SigSet, sig: c_int) -> c_int;
    fn sigprocmask(how: c_int, set: *const SigSet, old: *mut SigSet) -> c_int;
    fn sigwait(set: *const SigSet, sig: *mut c_int) -> c_int;
    fn waitpid(pid: c_int, status: *mut c_int, options: c_int) -> c_int;
}

fn main() {
    let mut set = SigSet([0; 16]);
    // SAFETY: `set` is a valid, writable sigset_t-sized buffer; the calls only touch it and the
    // calling thread's signal mask. Blocked signals stay pending until sigwait takes them.
    unsafe {
        sigemptyset(&mut set);
        for sig in [SIGINT, SIGTERM, SIGCHLD] {
            sigaddset(&mut set, sig);
        }
        if sigprocmask(SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            std::process::exit(1);
        }
    }
    loop {
        let mut sig: c_int = 0;
        // SAFETY: `set` was initialised above and `sig` is a valid out pointer.
        if unsafe { sigwait(&set, &mut sig) } != 0 {
            continue;
        }
        match sig {
            SIGINT | SIGTERM => std::process::exit(0),
            _ => reap(),
        }
    }
}

/// Reap every exited child without blocking.
fn reap() {
    let mut status: c_int = 0;
    // SAFETY: waitpid with a valid status pointer; -1 means any child.
    while unsafe { waitpid(-1, &mut status, WNOHANG) } > 0 {}
}
