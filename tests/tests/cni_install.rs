//! scripts/install.sh: installs nestbox-cni under its own plugin names (the overlay's
//! nestbox-vxlan / nestbox-host-gw included) next to a copy of nestbox-overlayd, and takes
//! the reference names (bridge, host-local, loopback) and flannel's only with --drop-in.

mod cni_common;

use std::path::Path;

use cni_common::install;
use nestbox_tests::TempDir;

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
    for name in [
        "nestbox-bridge",
        "nestbox-host-local",
        "nestbox-loopback",
        "nestbox-vxlan",
        "nestbox-host-gw",
    ] {
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
    assert!(!dir.path().join("flannel").exists());

    install(dir.path(), true);
    for name in ["bridge", "host-local", "loopback", "flannel"] {
        assert!(
            version_of(&dir.path().join(name)).contains("1.1.0"),
            "{name} is not ours after --drop-in"
        );
    }
}

#[test]
fn install_copies_the_overlay_agent_next_to_the_plugins() {
    let dir = TempDir::new("cniinst");
    install(dir.path(), false);
    let agent = dir.path().join("nestbox-overlayd");
    let meta = std::fs::symlink_metadata(&agent).expect("nestbox-overlayd installed");
    assert!(
        meta.file_type().is_file(),
        "nestbox-overlayd is a copy, not a link"
    );
    let out = std::process::Command::new(&agent)
        .arg("--help")
        .output()
        .expect("run the installed nestbox-overlayd");
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("--subnet-mgr"),
        "installed nestbox-overlayd does not run: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
