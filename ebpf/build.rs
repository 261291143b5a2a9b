//! Compiles the BPF programs in `bpf/` with clang (`-O2 -g -target bpf`): `-g` keeps the
//! BTF that CO-RE relocations and aya's map definitions need. The objects land in
//! OUT_DIR and are embedded in the binary (`src/bpf.rs`).

use std::env;
use std::path::PathBuf;
use std::process::Command;

const PROGRAMS: &[&str] = &["trace", "drops"];

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let clang = env::var("CLANG").unwrap_or_else(|_| "clang".to_string());
    println!("cargo:rerun-if-env-changed=CLANG");
    for f in ["bpf/vmlinux_min.h", "bpf/netdiag.h"] {
        println!("cargo:rerun-if-changed={f}");
    }
    // The multiarch include dir (asm/types.h …): `gcc -dumpmachine`, as DESIGN §7 says.
    let triple = Command::new("gcc")
        .arg("-dumpmachine")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| format!("{}-linux-gnu", env::consts::ARCH));
    // The programs include libbpf's helper headers (bpf_helpers.h, bpf_core_read.h).
    let libbpf = std::path::Path::new("/usr/include/bpf/bpf_helpers.h");
    if !libbpf.exists() {
        panic!(
            "nestbox-netdiag's BPF programs need libbpf's headers ({}), which are missing: \
             `apt-get install libbpf-dev` (scripts/deps.sh installs it)",
            libbpf.display()
        );
    }
    for p in PROGRAMS {
        let src = format!("bpf/{p}.bpf.c");
        println!("cargo:rerun-if-changed={src}");
        let obj = out.join(format!("{p}.bpf.o"));
        let status = Command::new(&clang)
            .args(["-O2", "-g", "-target", "bpf", "-Wall", "-Werror"])
            .arg(format!("-I/usr/include/{triple}"))
            .arg("-Ibpf")
            .arg("-c")
            .arg(&src)
            .arg("-o")
            .arg(&obj)
            .status();
        match status {
            Ok(s) if s.success() => {}
            Ok(s) => panic!("clang failed to compile {src} ({s}); see the errors above"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
                "nestbox-netdiag needs clang to compile its BPF programs ({src}), and `{clang}` \
                 was not found: install it (`apt-get install clang libbpf-dev`, or run \
                 scripts/deps.sh) or point CLANG at one"
            ),
            Err(e) => panic!("cannot run {clang} for {src}: {e}"),
        }
    }
}
