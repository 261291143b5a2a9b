//! scripts/install.sh: installs nestbox-cni under its own plugin names, and takes the
//! reference names (bridge, host-local, loopback) only with --drop-in.

use std::path::Path;

use nestbox_tests::{bin, workspace_root, TempDir};

fn install(dir: &Path, drop_in: bool) {
    let mut c = std::process::Command::new(workspace_root().join("scripts/install.sh"));
    c.arg("--cni-bin-dir")
        .arg(dir)
        .env("NESTBOX_CNI_BIN", bin("nestbox-cni"));
    if drop_in {
        c.arg("--drop-in");
    }
    let out = c.output().expect("run install.sh");
    assert!(
        out.status.success(),
        "install.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn version_of(exe: &Path) -> String {
    let out = std::process::Command::new(exe)
        .env("CNI_COMMAND", "VERSION")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run plugin");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn install_links_our_names_and_takes_reference_names_only_with_drop_in() {
    let dir = TempDir::new("cniinst");
    std::fs::write(dir.path().join("bridge"), "#!/bin/sh\necho reference\n")
        .expect("fake reference");
    install(dir.path(), false);
    for name in ["nestbox-bridge", "nestbox-host-local", "nestbox-loopback"] {
        assert!(
            version_of(&dir.path().join(name)).contains("1.1.0"),
            "{name} does not answer VERSION"
        );
    }
    assert_eq!(
        std::fs::read_to_string(dir.path().join("bridge")).expect("read"),
        "#!/bin/sh\necho reference\n"
    );
    assert!(!dir.path().join("host-local").exists());

    install(dir.path(), true);
    for name in ["bridge", "host-local", "loopback"] {
        assert!(
            version_of(&dir.path().join(name)).contains("1.1.0"),
            "{name} is not ours after --drop-in"
        );
    }
}
