//! Real callers drive the runtime: Debian's containerd 1.6 (through its runc-v2 shim with
//! `--runc-binary`) and podman 4.3 (`--runtime`). Each case runs with runc (the reference the
//! callers were built for) and with nestbox, expecting the same outcome.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use nestbox_tests::{
    bin, busybox_rootfs, require_cmd, require_root, run, unique, wait_until, TempDir,
};

/// A private containerd: its own root, state, sockets and config under a temp dir; killed and
/// cleaned up on drop.
struct Containerd {
    dir: TempDir,
    child: Child,
}

impl Containerd {
    fn start() -> Containerd {
        require_root();
        let containerd = require_cmd("containerd");
        require_cmd("ctr");
        require_cmd("containerd-shim-runc-v2");
        let dir = TempDir::new("ctrd");
        let d = dir.path();
        let config = format!(
            r#"version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "{d}/containerd.sock"
[ttrpc]
  address = "{d}/containerd.sock.ttrpc"
[debug]
  level = "info"
"#,
            d = d.display()
        );
        fs::write(d.join("config.toml"), config).expect("write containerd config");
        let log = fs::File::create(d.join("containerd.log")).expect("log file");
        let child = Command::new(containerd)
            .arg("--config")
            .arg(d.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("start containerd");
        let c = Containerd { dir, child };
        let up = wait_until(30, || {
            c.ctr()
                .arg("version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        });
        assert!(up, "containerd did not come up: {}", c.log());
        c
    }

    fn ctr(&self) -> Command {
        let mut c = Command::new("ctr");
        c.arg("--address")
            .arg(self.dir.path().join("containerd.sock"))
            .arg("--namespace")
            .arg("nestbox-test");
        c
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A writable copy of the busybox rootfs (ctr and podman mount or use it in place).
fn rootfs_copy(dir: &Path) -> PathBuf {
    let dest = dir.join("rootfs");
    let out = Command::new("cp")
        .arg("-a")
        .arg(busybox_rootfs())
        .arg(&dest)
        .output()
        .expect("cp");
    assert!(
        out.status.success(),
        "copy rootfs: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    dest
}

fn containerd_runs(runtime: &Path) {
    let ctrd = Containerd::start();
    let work = TempDir::new("ctrrun");
    let rootfs = rootfs_copy(work.path());
    let fifo_dir = work.path().join("fifo");
    let id = unique("ctr");
    let (code, out, err) = run(ctrd
        .ctr()
        .arg("run")
        .arg("--rm")
        .arg("--fifo-dir")
        .arg(&fifo_dir)
        .arg("--env")
        .arg("PATH=/bin")
        .arg("--runc-binary")
        .arg(runtime)
        .arg("--rootfs")
        .arg(&rootfs)
        .arg(&id)
        .args(["sh", "-c", "echo hello from $(hostname); exit 7"]));
    assert_eq!(
        code,
        7,
        "ctr run exit code (stdout {out:?}, stderr {err:?}); containerd log:\n{}",
        ctrd.log()
    );
    assert!(
        out.contains("hello from"),
        "container output missing: {out:?} {err:?}"
    );

    // A container killed by a signal from outside: ctr reports 128+9.
    let id = unique("ctr");
    let mut child = ctrd
        .ctr()
        .arg("run")
        .arg("--rm")
        .arg("--fifo-dir")
        .arg(&fifo_dir)
        .arg("--env")
        .arg("PATH=/bin")
        .arg("--runc-binary")
        .arg(runtime)
        .arg("--rootfs")
        .arg(&rootfs)
        .arg(&id)
        .args(["sleep", "100"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn ctr run");
    let running = wait_until(30, || {
        let (_, out, _) = run(ctrd.ctr().args(["task", "ls"]));
        out.lines()
            .any(|l| l.starts_with(&id) && l.contains("RUNNING"))
    });
    if !running {
        let _ = child.kill();
    }
    assert!(
        running,
        "task {id} never RUNNING; containerd log:\n{}",
        ctrd.log()
    );
    let (code, out, err) = run(ctrd
        .ctr()
        .args(["task", "kill", "--signal", "SIGKILL", &id]));
    assert_eq!(code, 0, "ctr task kill: {out} {err}");
    let status = child.wait().expect("wait ctr run");
    assert_eq!(status.code(), Some(137), "signal exit via ctr run");
}

#[test]
fn containerd_runs_containers_with_runc() {
    containerd_runs(&require_cmd("runc"));
}

#[test]
fn containerd_runs_containers_with_nestbox() {
    containerd_runs(&bin("nestbox"));
}

/// podman with private storage, cgroupfs, file events, and the containers.conf ulimits fix
/// (root lacks CAP_SYS_RESOURCE here, so podman's default nofile would fail).
fn podman(work: &Path) -> Command {
    let conf = work.join("containers.conf");
    if !conf.exists() {
        fs::write(
            &conf,
            "[containers]\ndefault_ulimits = [\"nofile=1024:1024\", \"nproc=32768:32768\"]\n",
        )
        .expect("containers.conf");
    }
    let mut c = Command::new("podman");
    c.env("CONTAINERS_CONF", &conf)
        .arg("--root")
        .arg(work.join("storage"))
        .arg("--runroot")
        .arg(work.join("runroot"))
        .args([
            "--storage-driver",
            "vfs",
            "--cgroup-manager",
            "cgroupfs",
            "--events-backend",
            "file",
        ]);
    c
}

fn podman_runs(runtime: &Path) {
    require_root();
    require_cmd("podman");
    let work = TempDir::new("podman");
    let rootfs = rootfs_copy(work.path());
    let (code, out, err) = run(podman(work.path())
        .args(["run", "--rm", "--network", "none", "--runtime"])
        .arg(runtime)
        .arg("--rootfs")
        .arg(&rootfs)
        .args([
            "sh",
            "-c",
            "echo uid=$(id -u); cat /proc/self/status | grep NoNewPrivs; exit 5",
        ]));
    assert_eq!(code, 5, "podman run exit code: {out} {err}");
    assert!(out.contains("uid=0"), "podman output: {out} {err}");

    let (code, out, err) = run(podman(work.path())
        .args([
            "run",
            "--rm",
            "--network",
            "none",
            "--hostname",
            "podbox",
            "--runtime",
        ])
        .arg(runtime)
        .arg("--rootfs")
        .arg(&rootfs)
        .arg("hostname"));
    assert_eq!(code, 0, "podman run hostname: {out} {err}");
    assert_eq!(out.trim(), "podbox");
    // Leave nothing in podman's state for this runtime.
    let _ = run(podman(work.path()).args(["rm", "--all", "--force"]));
}

#[test]
fn podman_runs_containers_with_runc() {
    podman_runs(&require_cmd("runc"));
}

#[test]
fn podman_runs_containers_with_nestbox() {
    podman_runs(&bin("nestbox"));
}
