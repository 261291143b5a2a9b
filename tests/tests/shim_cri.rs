//! containerd's CRI plugin (as the kubelet drives it) with our shim as the runtime handler
//! `nestbox` (runtime_type io.containerd.nestbox.v2), and for comparison the Go runc-v2 shim
//! with `BinaryName` nestbox as the handler `runc`. containerd runs inside a test node netns
//! with our bridge + host-local + loopback plugins; images are imported from OCI archives
//! made here (no registry): a pause image holding `nestbox-pause` and a busybox image.

mod cni_common;

use std::fs;
use std::path::Path;

use cni_common::{Impl, PluginDir};
use nestbox_tests::containerd::{cri_config, import_cri_images, Containerd, BUSYBOX_IMAGE};
use nestbox_tests::cri::{ContainerState, Cri};
use nestbox_tests::{bin, unique, wait_until, NetNs, TempDir};
use serde_json::json;

const NETWORK: &str = "crinet";
const SUBNET: &str = "10.88.7.0/24";

/// A node: containerd with CRI in a netns, our CNI plugins, both images imported.
struct CriNode {
    ctrd: Containerd,
    ipam: TempDir,
    _plugins: PluginDir,
    _conf: TempDir,
    _node: NetNs,
}

fn cri_node() -> CriNode {
    let node = NetNs::new("cri");
    let plugins = PluginDir::new(Impl::Ours, Impl::Ours);
    let conf = TempDir::new("cricni");
    let ipam = TempDir::new("criipam");
    let conflist = json!({
        "cniVersion": "1.0.0",
        "name": NETWORK,
        "plugins": [{
            "type": "nestbox-bridge",
            "bridge": "cni-cri0",
            "isGateway": true,
            "ipam": {
                "type": "nestbox-host-local",
                "ranges": [[{"subnet": SUBNET}]],
                "routes": [{"dst": "0.0.0.0/0"}],
                "dataDir": ipam.path(),
            }
        }]
    });
    fs::write(conf.path().join("10-crinet.conflist"), conflist.to_string()).expect("conflist");
    let extra = cri_config(&bin("nestbox"), Some((plugins.path(), conf.path())));
    let ctrd = Containerd::with_config(Some(&node), &extra);
    import_cri_images(&ctrd);
    CriNode {
        ctrd,
        ipam,
        _plugins: plugins,
        _conf: conf,
        _node: node,
    }
}

/// The IP reservations host-local holds for the network.
fn reservations(ipam: &Path) -> Vec<String> {
    fs::read_dir(ipam.join(NETWORK))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
                .collect()
        })
        .unwrap_or_default()
}

fn pod_lifecycle(handler: &str) {
    let n = cri_node();
    let mut cri = Cri::connect(&n.ctrd.socket());
    assert!(cri.has_image(BUSYBOX_IMAGE), "busybox imported for CRI");
    let logs = TempDir::new("crilogs");
    let cfg = Cri::pod_config(&unique("pod"), logs.path());
    let pod = cri
        .run_pod(&cfg, handler)
        .unwrap_or_else(|e| panic!("RunPodSandbox: {e}\n{}", n.ctrd.log()));
    let ip = cri.pod_ip(&pod).expect("PodSandboxStatus");
    assert!(
        ip.starts_with("10.88.7."),
        "pod IP from our host-local: {ip:?}"
    );

    let cmd = ["sh", "-c", "echo started-$NAME; exec sleep 300"];
    let mut ids = Vec::new();
    for name in ["c1", "c2"] {
        let id = cri
            .create_container(&pod, &cfg, name, BUSYBOX_IMAGE, &cmd, None)
            .unwrap_or_else(|e| panic!("CreateContainer {name}: {e}\n{}", n.ctrd.log()));
        cri.start_container(&id)
            .unwrap_or_else(|e| panic!("StartContainer {name}: {e}\n{}", n.ctrd.log()));
        ids.push(id);
    }
    let (code, out, err) = cri
        .exec_sync(&ids[0], &["ip", "-4", "-o", "addr", "show", "eth0"])
        .expect("ExecSync");
    assert_eq!(code, 0, "{out} {err}");
    assert!(
        out.contains(&format!("inet {ip}/24")),
        "eth0 holds the pod IP {ip}: {out}"
    );
    let netns = |cri: &mut Cri, id: &str| {
        let (code, out, err) = cri
            .exec_sync(id, &["readlink", "/proc/self/ns/net"])
            .expect("ExecSync");
        assert_eq!(code, 0, "{err}");
        out.trim().to_owned()
    };
    let (n1, n2) = (netns(&mut cri, &ids[0]), netns(&mut cri, &ids[1]));
    assert!(n1.starts_with("net:["), "{n1}");
    assert_eq!(n1, n2, "both containers share the pod's network namespace");
    let (code, _, _) = cri
        .exec_sync(&ids[1], &["sh", "-c", "exit 3"])
        .expect("ExecSync");
    assert_eq!(code, 3, "ExecSync returns the command's exit code");

    let st = cri.container_status(&ids[0]).expect("ContainerStatus");
    assert_eq!(st.state, ContainerState::ContainerRunning as i32, "{st:?}");
    assert!(st.started_at > 0);

    // CRI-format log lines: "<RFC3339Nano> stdout F <text>".
    let log = logs.path().join("c1.log");
    assert!(
        wait_until(10, || fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("started-c1")),
        "container log at {}: {:?}",
        log.display(),
        fs::read_to_string(&log)
    );
    let text = fs::read_to_string(&log).unwrap_or_default();
    let line = text
        .lines()
        .find(|l| l.ends_with("started-c1"))
        .expect("log line");
    let fields: Vec<&str> = line.splitn(4, ' ').collect();
    assert_eq!(fields.len(), 4, "{line}");
    assert!(
        fields[0].contains('T') && fields[0].ends_with('Z'),
        "timestamp {line}"
    );
    assert_eq!((fields[1], fields[2]), ("stdout", "F"), "{line}");

    if handler == "nestbox" {
        assert_eq!(
            n.ctrd.nestbox_shims().len(),
            1,
            "one shim serves the whole pod (sandbox + 2 containers)"
        );
    }
    assert_eq!(reservations(n.ipam.path()).len(), 1, "one IP reserved");

    cri.stop_pod(&pod)
        .unwrap_or_else(|e| panic!("StopPodSandbox: {e}\n{}", n.ctrd.log()));
    cri.remove_pod(&pod)
        .unwrap_or_else(|e| panic!("RemovePodSandbox: {e}\n{}", n.ctrd.log()));
    assert!(
        wait_until(10, || n.ctrd.nestbox_shims().is_empty()),
        "no shim left after RemovePodSandbox"
    );
    assert!(
        reservations(n.ipam.path()).is_empty(),
        "the pod IP was released"
    );
}

#[test]
fn cri_pod_lifecycle_under_the_nestbox_shim() {
    pod_lifecycle("nestbox");
}

#[test]
fn cri_pod_lifecycle_under_the_go_runc_shim_with_nestbox() {
    pod_lifecycle("runc");
}

fn oom_killed(handler: &str) {
    let n = cri_node();
    let mut cri = Cri::connect(&n.ctrd.socket());
    let logs = TempDir::new("crioom");
    let cfg = Cri::pod_config(&unique("oom"), logs.path());
    let pod = cri
        .run_pod(&cfg, handler)
        .unwrap_or_else(|e| panic!("RunPodSandbox: {e}\n{}", n.ctrd.log()));
    let id = cri
        .create_container(
            &pod,
            &cfg,
            "hog",
            BUSYBOX_IMAGE,
            &["sh", "-c", "tail /dev/zero"],
            Some(32 << 20),
        )
        .expect("CreateContainer");
    cri.start_container(&id).expect("StartContainer");
    let st = cri
        .wait_status(&id, 60, |s| {
            s.state == ContainerState::ContainerExited as i32
        })
        .expect("ContainerStatus");
    assert_eq!(st.state, ContainerState::ContainerExited as i32, "{st:?}");
    assert_eq!(st.reason, "OOMKilled", "{st:?}");
    assert_eq!(st.exit_code, 137, "{st:?}");
    cri.stop_pod(&pod).expect("StopPodSandbox");
    cri.remove_pod(&pod).expect("RemovePodSandbox");
}

#[test]
fn cri_reports_oomkilled_under_the_nestbox_shim() {
    oom_killed("nestbox");
}

#[test]
fn cri_reports_oomkilled_under_the_go_runc_shim_with_nestbox() {
    oom_killed("runc");
}
