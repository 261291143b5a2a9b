//! SIGKILL the bridge plugin at random points of ADD: a later DEL for the same
//! container always restores a clean node (no veth, reservation or masquerade rule).

mod cni_common;

use std::time::Duration;

use cni_common::*;
use nestbox_tests::{NetNs, TempDir};

const RUNS: u64 = 50;

#[test]
fn del_after_a_killed_add_always_restores_a_clean_state() {
    require_cni_tools();
    let node = NetNs::new("fln");
    let data = TempDir::new("cnifault");
    let pd = PluginDir::new(Impl::Ours, Impl::Ours);
    let exe = pd.path().join("bridge");
    let conf = bridge_conf("1.1.0", "fault", "flbr0", "10.64.0.0/24", data.path());
    // Warm the bridge so the kills land in the per-pod part of ADD.
    let warm = NetNs::new("flw");
    let w = warm.path().display().to_string();
    Call::new("ADD", "warm", &w, "eth0", pd.path())
        .run(Some(&node), &exe, &conf)
        .ok();
    Call::new("DEL", "warm", &w, "eth0", pd.path())
        .run(Some(&node), &exe, &conf)
        .ok();

    let wrapper_dir = TempDir::new("cnifaultw");
    let wrapper = exe_in(&node, &exe, &wrapper_dir);
    let mut seed: u64 = std::process::id() as u64 ^ 0x9E37_79B9_7F4A_7C15;
    let mut killed_mid_way = 0;
    for run in 0..RUNS {
        let pod = NetNs::new("flp");
        let netns = pod.path().display().to_string();
        let id = format!("fault{run}");
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        // 0..8 ms: our ADD takes a few ms, so this spans "before anything" to "done".
        let delay = Duration::from_micros(seed % 8000);
        let mut child =
            Call::new("ADD", &id, &netns, "eth0", pd.path()).spawn(None, &wrapper, &conf);
        std::thread::sleep(delay);
        let _ = child.kill();
        let status = child.wait().expect("wait");
        if !status.success() {
            killed_mid_way += 1;
        }
        Call::new("DEL", &id, &netns, "eth0", pd.path())
            .run(Some(&node), &exe, &conf)
            .ok();
        assert!(
            veths(&node).is_empty(),
            "run {run} ({delay:?}): veth left: {:?}",
            veths(&node)
        );
        assert!(
            store_files(data.path(), "fault").is_empty(),
            "run {run} ({delay:?}): reservation left: {:?}",
            store_files(data.path(), "fault")
        );
        assert_eq!(
            masq_rules(&node),
            0,
            "run {run} ({delay:?}): masquerade rule left"
        );
        let links = pod.exec_ok(&["ip", "-o", "link"]);
        assert!(!links.contains("eth0"), "run {run}: eth0 left in the pod");
    }
    assert!(killed_mid_way > 0, "no ADD was ever interrupted");
}

/// A wrapper that enters the node netns with `nsenter` and then execs the plugin, so the
/// kill hits the plugin process itself (not an `ip netns exec` parent).
fn exe_in(node: &NetNs, exe: &std::path::Path, dir: &TempDir) -> std::path::PathBuf {
    let w = dir.path().join("bridge");
    std::fs::write(
        &w,
        format!(
            "#!/bin/sh\nexec nsenter --net={} -- {} \"$@\"\n",
            node.path().display(),
            exe.display()
        ),
    )
    .expect("write wrapper");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&w, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    w
}
