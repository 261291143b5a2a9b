//! Interop with a real runtime: podman 4.3 (CNI backend, runc) uses our bridge and
//! host-local with the reference portmap and bandwidth chained after them; a published
//! port is reachable from a client netns, and removing the container cleans up.

mod cni_common;

use std::path::{Path, PathBuf};
use std::process::Command;

use cni_common::*;
use nestbox_tests::{
    busybox_rootfs, cni_bin, require_cmd, sh_ok, veth_between, wait_until, NetNs, TempDir,
};

struct Podman {
    work: PathBuf,
    node: String,
}

impl Podman {
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.node))
            .arg("--")
            .arg("podman")
            .args(["--root", &self.work.join("root").display().to_string()])
            .args([
                "--runroot",
                &self.work.join("runroot").display().to_string(),
            ])
            .args(["--storage-driver", "vfs"])
            .args(args)
            .env("CONTAINERS_CONF", self.work.join("containers.conf"));
        c
    }
    fn ok(&self, args: &[&str]) -> String {
        let out = self.cmd(args).output().expect("spawn podman");
        assert!(
            out.status.success(),
            "podman {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.cmd(&["rm", "-af", "-t", "0"]).output();
        let _ = self.cmd(&["system", "reset", "-f"]).output();
    }
}

fn write_configs(work: &Path) {
    let bins = work.join("bin");
    std::fs::create_dir_all(&bins).expect("mkdir");
    for p in ["nestbox-bridge", "nestbox-host-local", "nestbox-loopback"] {
        std::os::unix::fs::symlink(cni_bin(), bins.join(p)).expect("symlink");
    }
    for p in ["portmap", "bandwidth", "loopback", "firewall", "tuning"] {
        std::os::unix::fs::symlink(Path::new(REFERENCE_DIR).join(p), bins.join(p))
            .expect("symlink");
    }
    let net = work.join("net");
    std::fs::create_dir_all(&net).expect("mkdir");
    let conflist = serde_json::json!({
        "cniVersion": "1.0.0", "name": "nbnet",
        "plugins": [
            {"type": "nestbox-bridge", "bridge": "nbpm0", "isGateway": true, "ipMasq": true, "hairpinMode": true,
             "ipam": {"type": "nestbox-host-local", "dataDir": work.join("data").display().to_string(),
                      "ranges": [[{"subnet": "10.81.0.0/24"}]], "routes": [{"dst": "0.0.0.0/0"}]}},
            {"type": "portmap", "capabilities": {"portMappings": true}},
            {"type": "bandwidth", "capabilities": {"bandwidth": true}}
        ]
    });
    std::fs::write(net.join("nbnet.conflist"), conflist.to_string()).expect("conflist");
    std::fs::write(
        work.join("containers.conf"),
        format!(
            "[containers]\ndefault_ulimits = [\"nofile=1024:1024\",\"nproc=32768:32768\"]\n\
             [network]\nnetwork_backend = \"cni\"\ncni_plugin_dirs = [\"{}\"]\nnetwork_config_dir = \"{}\"\ndefault_network = \"nbnet\"\n\
             [engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n",
            bins.display(),
            net.display()
        ),
    )
    .expect("containers.conf");
}

#[test]
fn podman_publishes_a_port_through_our_bridge_and_the_reference_portmap() {
    require_cni_tools();
    require_cmd("podman");
    require_cmd("busybox");
    require_cmd("wget");
    require_cmd("runc");
    require_cmd("nsenter");
    let node = NetNs::new("pmn");
    let client = NetNs::new("pmc");
    veth_between(&node, "up0", &client, "up1");
    node.exec_ok(&["ip", "addr", "add", "10.80.1.1/24", "dev", "up0"]);
    client.exec_ok(&["ip", "addr", "add", "10.80.1.2/24", "dev", "up1"]);
    client.exec_ok(&["ip", "route", "add", "default", "via", "10.80.1.1"]);

    let work = TempDir::new("podman");
    write_configs(work.path());
    let rootfs = work.path().join("rootfs");
    sh_ok(&format!(
        "cp -a {} {}",
        busybox_rootfs().display(),
        rootfs.display()
    ));
    std::fs::create_dir_all(rootfs.join("www")).expect("mkdir www");
    std::fs::write(rootfs.join("www/index.html"), "hello-from-pod\n").expect("index");

    let podman = Podman {
        work: work.path().to_path_buf(),
        node: node.name().to_string(),
    };
    podman.ok(&[
        "run",
        "-d",
        "--name",
        "web",
        "-p",
        "8080:80",
        "--rootfs",
        &rootfs.display().to_string(),
        "/bin/httpd",
        "-f",
        "-p",
        "80",
        "-h",
        "/www",
    ]);
    let mut body = String::new();
    let reached = wait_until(10, || {
        let out = client.exec(&["wget", "-qO-", "-T", "2", "http://10.80.1.1:8080/"]);
        body = String::from_utf8_lossy(&out.stdout).into_owned();
        out.status.success()
    });
    assert!(
        reached && body.contains("hello-from-pod"),
        "published port not reachable from the client: {body:?}"
    );
    assert_eq!(
        veths(&node)
            .iter()
            .filter(|v| v.starts_with("veth"))
            .count(),
        1
    );
    assert_eq!(masq_rules(&node), 1);

    podman.ok(&["rm", "-f", "-t", "0", "web"]);
    assert!(
        veths(&node).iter().all(|v| !v.starts_with("veth")),
        "veth left after podman rm"
    );
    assert!(
        store_files(&work.path().join("data"), "nbnet").is_empty(),
        "IP left after podman rm"
    );
    assert_eq!(masq_rules(&node), 0, "masquerade rule left after podman rm");
}
