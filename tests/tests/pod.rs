//! The pod pattern (DESIGN §1): a pause container owns new net, ipc and uts namespaces; an app
//! container joins them by `/proc/<pid>/ns/*` path. Run against runc (the reference) and nestbox
//! with identical expectations.

use std::fs;
use std::path::Path;

use nestbox_tests::{bin, require_cmd, require_root, sh_ok, unique, Bundle, NetNs, Runtime};
use serde_json::json;

/// A bundle whose rootfs holds only the static pause binary.
fn pause_bundle() -> Bundle {
    let mut b = Bundle::new();
    let pause = bin("nestbox-pause");
    fs::copy(&pause, b.rootfs().join("pause")).expect("copy pause");
    b.set_args(&["/pause"]);
    b.config["hostname"] = json!("podhost");
    b.config["linux"]["namespaces"] = json!([{"type": "pid"}, {"type": "network"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}]);
    b.write();
    b
}

fn ns_inode(pid: i32, ns: &str) -> String {
    fs::read_link(format!("/proc/{pid}/ns/{ns}"))
        .expect("read ns link")
        .display()
        .to_string()
}

fn pod_pattern(runtime: &Path) {
    require_root();
    require_cmd("ip");
    let rt = Runtime::new("runtime", runtime.to_path_buf());
    let node = NetNs::new("pod");

    let pause = pause_bundle();
    let pause_id = unique("pause");
    let (code, err) = rt.create(&pause, &pause_id);
    assert_eq!(code, 0, "create pause: {err}");
    rt.ok(&["start", &pause_id]);
    let pause_pid = rt.pid(&pause_id);
    assert!(pause_pid > 0);

    // An interface made in the test node, moved into the pod's network namespace.
    let ifname = unique("pe");
    sh_ok(&format!(
        "ip -n {n} link add {ifname} type veth peer name {ifname}p && ip -n {n} link set {ifname} netns {pause_pid}",
        n = node.name()
    ));

    let mut app = Bundle::new();
    app.set_args(&[
        "sh",
        "-c",
        &format!("readlink /proc/self/ns/net; readlink /proc/self/ns/ipc; hostname; ip -o link show {ifname}"),
    ]);
    app.config
        .as_object_mut()
        .expect("spec object")
        .remove("hostname");
    app.config["linux"]["namespaces"] = json!([
        {"type": "pid"},
        {"type": "mount"},
        {"type": "network", "path": format!("/proc/{pause_pid}/ns/net")},
        {"type": "ipc", "path": format!("/proc/{pause_pid}/ns/ipc")},
        {"type": "uts", "path": format!("/proc/{pause_pid}/ns/uts")},
    ]);
    app.write();
    let app_id = unique("app");
    let out = rt.ok(&[
        "run",
        "--bundle",
        &app.path().display().to_string(),
        &app_id,
    ]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "app output: {out}");
    assert_eq!(
        lines[0],
        ns_inode(pause_pid, "net"),
        "app shares the pause netns"
    );
    assert_eq!(
        lines[1],
        ns_inode(pause_pid, "ipc"),
        "app shares the pause ipc ns"
    );
    assert_eq!(lines[2], "podhost", "app sees the pod hostname");
    assert!(
        lines[3].contains(&ifname),
        "app sees the interface moved into the pod: {out}"
    );
    // The pod's netns is not the node's nor the host's.
    assert_ne!(lines[0], ns_inode(std::process::id() as i32, "net"));

    // Pause exits 0 on SIGTERM.
    rt.ok(&["kill", &pause_id, "TERM"]);
    assert!(
        nestbox_tests::wait_until(10, || { rt.status(&pause_id) == "stopped" }),
        "pause did not stop on SIGTERM"
    );
}

#[test]
fn pod_pattern_with_runc() {
    pod_pattern(&require_cmd("runc"));
}

#[test]
fn pod_pattern_with_nestbox() {
    pod_pattern(&bin("nestbox"));
}
