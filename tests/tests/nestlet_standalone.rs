//! nestlet in standalone mode (static pods from a manifest directory, no apiserver), through
//! the real shim, runtime and CNI plugins inside a test node netns: two pods get addresses
//! and one answers the other over HTTP (the README demo); logs are in CRI format; a
//! restarted nestlet adopts its running pods; removing the manifests removes everything.

mod nestlet_common;

use std::fs;
use std::process::Command;

use nestbox_tests::{bin, wait_until};
use nestlet_common::{busybox_layout, node_ns, Nestlet, Opts};
use serde_json::{json, Value};

const IMAGE: &str = "example.com/busybox:1.36";

fn import_image(n: &Nestlet) {
    let out = Command::new(bin("nestlet"))
        .args(["image", "import"])
        .arg(busybox_layout())
        .args(["--name", IMAGE, "--root"])
        .arg(&n.root)
        .output()
        .expect("nestlet image import");
    assert!(
        out.status.success(),
        "import: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn write_pod(n: &Nestlet, file: &str, pod: &Value) {
    let tmp = n.manifests.join(format!(".{file}.tmp"));
    fs::write(&tmp, serde_json::to_vec_pretty(pod).unwrap()).unwrap();
    fs::rename(&tmp, n.manifests.join(file)).unwrap();
}

fn phase(n: &Nestlet, name: &str) -> String {
    n.status(name)
        .and_then(|s| s["phase"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn wait_phase(n: &Nestlet, name: &str, want: &str, secs: u64) -> Value {
    let ok = wait_until(secs, || phase(n, name) == want);
    let st = n.status(name).unwrap_or(Value::Null);
    assert!(
        ok,
        "pod {name} not {want} within {secs} s: {st}\n--- nestlet log ---\n{}",
        n.log()
    );
    st
}

fn server_pod() -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web", "labels": {"app": "web"}},
        "spec": {
            "terminationGracePeriodSeconds": 3,
            "containers": [{
                "name": "httpd", "image": IMAGE,
                "command": ["sh", "-c", "mkdir -p /www && echo \"hello from $(hostname)\" > /www/index.html && exec httpd -f -v -p 8080 -h /www"],
                "ports": [{"containerPort": 8080}]
            }]
        }
    })
}

fn client_pod(ip: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "client"},
        "spec": {
            "restartPolicy": "Never",
            "containers": [{
                "name": "wget", "image": IMAGE,
                "command": ["sh", "-c", "wget -qO- http://$(SERVER):8080/ && echo client-done"],
                "env": [{"name": "SERVER", "value": ip}]
            }]
        }
    })
}

#[test]
fn two_static_pods_reach_each_other_and_leave_nothing_when_removed() {
    let ns = node_ns("nlsa", "192.168.77.1");
    let mut n = Nestlet::new(
        &ns,
        Opts {
            kubeconfig: None,
            node_name: "standalone".into(),
            node_ip: "192.168.77.1".into(),
            manifests: true,
            extra: vec![],
        },
    );
    import_image(&n);
    n.write_cni_config("10.77.0.0/24", "nlbr0");
    n.start();
    write_pod(&n, "web.json", &server_pod());
    let st = wait_phase(&n, "web-standalone", "Running", 60);
    let ip = st["podIP"].as_str().expect("podIP").to_string();
    assert!(ip.starts_with("10.77.0."), "{st}");
    let cs = &st["containerStatuses"][0];
    assert_eq!(cs["ready"], true, "{st}");
    assert!(
        cs["containerID"]
            .as_str()
            .unwrap_or("")
            .starts_with("nestbox://"),
        "{cs}"
    );
    assert!(
        cs["imageID"].as_str().unwrap_or("").contains("@sha256:"),
        "{cs}"
    );

    write_pod(&n, "client.json", &client_pod(&ip));
    let st = wait_phase(&n, "client-standalone", "Succeeded", 60);
    let term = &st["containerStatuses"][0]["state"]["terminated"];
    assert_eq!(term["reason"], "Completed", "{st}");
    assert_eq!(term["exitCode"], 0, "{st}");

    // The client's log, in CRI format, holds the server's answer (its hostname is the pod's).
    let uid = fs::read_dir(&n.logs)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|d| d.starts_with("default_client-standalone_"))
        .expect("client log dir");
    let log = fs::read_to_string(n.logs.join(&uid).join("wget/0.log")).expect("client log");
    let lines: Vec<&str> = log.lines().collect();
    assert!(
        lines
            .iter()
            .any(|l| l.ends_with(" stdout F hello from web-standalone")),
        "{log}"
    );
    assert!(
        lines.iter().any(|l| l.ends_with(" stdout F client-done")),
        "{log}"
    );
    let ts = lines[0].split(' ').next().unwrap();
    assert!(
        ts.contains('T') && ts.ends_with('Z') && ts.len() >= 30,
        "not RFC3339Nano: {ts}"
    );

    let rows = n.pods();
    assert!(
        rows.iter()
            .any(|r| r[1] == "web-standalone" && r[3] == "Running" && r[5] == ip),
        "{rows:?}"
    );

    // Remove both manifests: the pods go, and with them every trace.
    fs::remove_file(n.manifests.join("web.json")).unwrap();
    fs::remove_file(n.manifests.join("client.json")).unwrap();
    let ok = wait_until(30, || {
        fs::read_dir(n.root.join("pods"))
            .map(|d| d.count())
            .unwrap_or(0)
            == 0
    });
    assert!(ok, "pods not removed within 30 s\n{}", n.log());
    assert!(
        n.cgroup_pids().is_empty(),
        "processes left: {:?}",
        n.cgroup_pids()
    );
    assert!(n.shim_pids().is_empty(), "shims left: {:?}", n.shim_pids());
    assert!(n.mounts().is_empty(), "mounts left: {:?}", n.mounts());
    let veths = ns.exec_ok(&["ip", "-o", "link", "show", "type", "veth"]);
    assert!(veths.trim().is_empty(), "veths left: {veths}");
    let reservations: Vec<String> = fs::read_dir(n.ipam_dir.join("nestlet-test"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|f| f.starts_with("10."))
                .collect()
        })
        .unwrap_or_default();
    assert!(
        reservations.is_empty(),
        "IPs left reserved: {reservations:?}"
    );
    assert!(
        fs::read_dir(n.root.join("containers"))
            .map(|d| d.count())
            .unwrap_or(0)
            == 0,
        "container dirs left"
    );
    assert!(
        !n.logs.join(&uid).exists(),
        "pod logs left after the pod was removed"
    );
}

#[test]
fn a_restarted_nestlet_adopts_running_pods_without_restarting_them() {
    let ns = node_ns("nlrs", "192.168.78.1");
    let mut n = Nestlet::new(
        &ns,
        Opts {
            kubeconfig: None,
            node_name: "restarts".into(),
            node_ip: "192.168.78.1".into(),
            manifests: true,
            extra: vec![],
        },
    );
    import_image(&n);
    n.write_cni_config("10.78.0.0/24", "nlbr1");
    n.start();
    write_pod(&n, "web.json", &server_pod());
    let before = wait_phase(&n, "web-restarts", "Running", 60);
    let pids = n.cgroup_pids();
    assert!(pids.len() >= 2, "pause + httpd expected: {pids:?}");

    n.stop();
    std::thread::sleep(std::time::Duration::from_secs(1));
    for p in &pids {
        assert!(
            std::path::Path::new(&format!("/proc/{p}")).exists(),
            "pid {p} died with nestlet"
        );
    }
    n.start();
    // Adopted: still running, same container, no restart, same IP.
    std::thread::sleep(std::time::Duration::from_secs(4));
    let after = wait_phase(&n, "web-restarts", "Running", 30);
    assert_eq!(after["podIP"], before["podIP"]);
    let (b, a) = (
        &before["containerStatuses"][0],
        &after["containerStatuses"][0],
    );
    assert_eq!(a["containerID"], b["containerID"], "container replaced");
    assert_eq!(a["restartCount"], 0);
    assert_eq!(
        n.cgroup_pids(),
        pids,
        "processes changed across the restart"
    );
    assert!(
        n.log().contains("adopting pod"),
        "no adoption logged\n{}",
        n.log()
    );
    // And it still manages the pod: removal after the restart tears it down.
    fs::remove_file(n.manifests.join("web.json")).unwrap();
    let ok = wait_until(30, || {
        n.cgroup_pids().is_empty() && n.shim_pids().is_empty()
    });
    assert!(ok, "pod not torn down after the restart\n{}", n.log());
}
