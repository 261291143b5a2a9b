//! Builds the static `nestbox-pause` binary.
//!
//! A Cargo `[[bin]]` cannot get `-C target-feature=+crt-static` on its own (that flag is global
//! to a build), and link arguments cannot undo the `-Bdynamic -lc` rustc emits. So the pause
//! program (src/pause/main.rs, std only) is compiled here by the same rustc with crt-static and
//! placed next to the other binaries of this profile: `cargo build --release` yields a truly
//! static `target/release/nestbox-pause`.
use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=src/pause/main.rs");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let target = std::env::var("TARGET").expect("TARGET");
    let built = out_dir.join("nestbox-pause");
    let status = Command::new(rustc)
        .args([
            "--edition",
            "2021",
            "--crate-type",
            "bin",
            "--crate-name",
            "nestbox_pause",
        ])
        .args(["--target", &target])
        .args([
            "-C",
            "opt-level=s",
            "-C",
            "panic=abort",
            "-C",
            "strip=symbols",
        ])
        .args([
            "-C",
            "target-feature=+crt-static",
            "-C",
            "relocation-model=static",
        ])
        .arg("-o")
        .arg(&built)
        .arg("src/pause/main.rs")
        .status()
        .expect("run rustc for nestbox-pause");
    assert!(status.success(), "compiling nestbox-pause failed");
    // OUT_DIR is <target>/<profile>/build/<pkg>-<hash>/out: the profile dir is 3 levels up.
    if let Some(profile_dir) = out_dir.ancestors().nth(3) {
        let dest = profile_dir.join("nestbox-pause");
        let tmp = profile_dir.join(".nestbox-pause.tmp");
        std::fs::copy(&built, &tmp).expect("copy nestbox-pause");
        std::fs::rename(&tmp, &dest).expect("install nestbox-pause");
    }
}
