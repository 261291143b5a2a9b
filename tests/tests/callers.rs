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

/// `ctr run` with the runtime as the runc-v2 shim's BinaryName, a plain rootfs and PATH set
/// (a rootfs without an image config has no environment).
fn ctr_run(
    ctrd: &Containerd,
    work: &Path,
    runtime: &Path,
    rootfs: &Path,
    flags: &[&str],
) -> Command {
    let mut c = ctrd.ctr();
    c.arg("run")
        .arg("--fifo-dir")
        .arg(work.join("fifo"))
        .args(["--env", "PATH=/bin"])
        .arg("--runc-binary")
        .arg(runtime)
        .args(flags)
        .arg("--rootfs")
        .arg(rootfs);
    c
}

/// Bound every peer command: a hang becomes a failure, not a stuck CI.
fn bounded(mut c: Command, secs: u32) -> Command {
    let mut t = Command::new("timeout");
    t.arg("-k")
        .arg("5")
        .arg(secs.to_string())
        .arg(c.get_program());
    t.args(c.get_args());
    for (k, v) in c.get_envs() {
        if let Some(v) = v {
            t.env(k, v);
        }
    }
    let _ = &mut c;
    t
}

/// The task's status column in `ctr task ls` (RUNNING, PAUSED, STOPPED), if listed.
fn task_status(ctrd: &Containerd, id: &str) -> Option<String> {
    let (_, out, _) = run(ctrd.ctr().args(["task", "ls"]));
    out.lines()
        .find(|l| l.split_whitespace().next() == Some(id))
        .and_then(|l| l.split_whitespace().nth(2).map(str::to_string))
}

/// A detached task running `sleep 300`; returns its id once RUNNING.
fn ctr_detached(ctrd: &Containerd, work: &Path, runtime: &Path, rootfs: &Path) -> String {
    let id = unique("ctd");
    let (code, out, err) = run(&mut bounded(
        {
            let mut c = ctr_run(ctrd, work, runtime, rootfs, &["-d"]);
            c.arg(&id).args(["sleep", "300"]);
            c
        },
        60,
    ));
    assert_eq!(
        code,
        0,
        "ctr run -d: {out} {err}; containerd log:\n{}",
        ctrd.log()
    );
    assert!(
        wait_until(30, || task_status(ctrd, &id).as_deref() == Some("RUNNING")),
        "task {id} not RUNNING"
    );
    id
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

/// exec (attached and detached), pause/resume, metrics, ps and kill through containerd.
fn containerd_task_operations(runtime: &Path) {
    let ctrd = Containerd::start();
    let work = TempDir::new("ctrops");
    let rootfs = rootfs_copy(work.path());
    let id = ctr_detached(&ctrd, work.path(), runtime, &rootfs);

    let (code, out, err) = run(&mut bounded(
        {
            let mut c = ctrd.ctr();
            c.args([
                "task",
                "exec",
                "--exec-id",
                "e1",
                &id,
                "sh",
                "-c",
                "echo exec-ok $(hostname); exit 3",
            ]);
            c
        },
        60,
    ));
    assert_eq!(code, 3, "ctr task exec exit code: {out} {err}");
    assert!(out.contains("exec-ok"), "exec output: {out} {err}");

    let (code, out, err) = run(&mut bounded(
        {
            let mut c = ctrd.ctr();
            c.args(["task", "exec", "-d", "--exec-id", "e2", &id, "sleep", "200"]);
            c
        },
        60,
    ));
    assert_eq!(code, 0, "ctr task exec -d: {out} {err}");

    let (code, out, err) = run(ctrd.ctr().args(["task", "ps", &id]));
    assert_eq!(code, 0, "ctr task ps: {out} {err}");
    let pids = out.lines().skip(1).filter(|l| !l.trim().is_empty()).count();
    assert!(pids >= 2, "task ps lists init and the detached exec: {out}");

    let (code, out, err) = run(ctrd.ctr().args(["task", "pause", &id]));
    assert_eq!(code, 0, "ctr task pause: {out} {err}");
    assert_eq!(task_status(&ctrd, &id).as_deref(), Some("PAUSED"));
    let (code, out, err) = run(ctrd.ctr().args(["task", "resume", &id]));
    assert_eq!(code, 0, "ctr task resume: {out} {err}");
    assert_eq!(task_status(&ctrd, &id).as_deref(), Some("RUNNING"));

    let (code, out, err) = run(ctrd
        .ctr()
        .args(["task", "metrics", "--format", "json", &id]));
    assert_eq!(code, 0, "ctr task metrics: {out} {err}");
    assert!(
        out.to_lowercase().contains("memory"),
        "metrics carry memory: {out}"
    );

    let (code, out, err) = run(ctrd
        .ctr()
        .args(["task", "kill", "--signal", "SIGKILL", &id]));
    assert_eq!(code, 0, "ctr task kill: {out} {err}");
    assert!(
        wait_until(30, || task_status(&ctrd, &id).as_deref() == Some("STOPPED")),
        "task not STOPPED after kill"
    );
    let (code, out, err) = run(ctrd.ctr().args(["task", "rm", &id]));
    assert_eq!(code, 0, "ctr task rm: {out} {err}");
    let (code, out, err) = run(ctrd.ctr().args(["container", "rm", &id]));
    assert_eq!(code, 0, "ctr container rm: {out} {err}");
}

/// `ctr run -t` and `ctr task exec -t` with a pty driven by `script`.
fn containerd_tty(runtime: &Path) {
    require_cmd("script");
    let ctrd = Containerd::start();
    let work = TempDir::new("ctrtty");
    let rootfs = rootfs_copy(work.path());
    let id = unique("ctt");
    let ctr_line = |extra: &str| {
        format!(
            "ctr --address {sock} --namespace nestbox-test {extra}",
            sock = ctrd.dir.path().join("containerd.sock").display()
        )
    };
    let run_line = ctr_line(&format!(
        "run --rm -t --fifo-dir {fifo} --env PATH=/bin --runc-binary {rt} --rootfs {rootfs} {id} sh -c 'tty; test -t 0 && echo stdin-is-tty; exit 4'",
        fifo = work.path().join("fifo").display(),
        rt = runtime.display(),
        rootfs = rootfs.display()
    ));
    let (code, out, err) = run(Command::new("timeout").args([
        "-k",
        "5",
        "60",
        "script",
        "-qec",
        &run_line,
        "/dev/null",
    ]));
    assert_eq!(code, 4, "ctr run -t exit code: {out} {err}");
    assert!(
        out.contains("/dev/pts/") || out.contains("/dev/console"),
        "tty inside: {out}"
    );
    assert!(out.contains("stdin-is-tty"), "stdin is the pty: {out}");

    let id = ctr_detached(&ctrd, work.path(), runtime, &rootfs);
    let exec_line = ctr_line(&format!(
        "task exec -t --exec-id t1 {id} sh -c 'tty; exit 5'"
    ));
    let (code, out, err) = run(Command::new("timeout").args([
        "-k",
        "5",
        "60",
        "script",
        "-qec",
        &exec_line,
        "/dev/null",
    ]));
    assert_eq!(code, 5, "ctr task exec -t exit code: {out} {err}");
    assert!(out.contains("/dev/pts/"), "exec tty inside: {out}");
    let _ = run(ctrd
        .ctr()
        .args(["task", "kill", "--signal", "SIGKILL", &id]));
    wait_until(30, || task_status(&ctrd, &id).as_deref() == Some("STOPPED"));
    let _ = run(ctrd.ctr().args(["task", "rm", &id]));
    let _ = run(ctrd.ctr().args(["container", "rm", &id]));
}

/// containerd's default seccomp profile: unshare and mount are refused, ls works; a memory limit
/// kills an allocating process (137).
fn containerd_seccomp_and_oom(runtime: &Path) {
    let ctrd = Containerd::start();
    let work = TempDir::new("ctrsec");
    let rootfs = rootfs_copy(work.path());
    let script = "ls / >/dev/null && echo ls-ok; unshare -U true 2>&1; echo unshare=$?; mount -t tmpfs none /tmp 2>&1; echo mount=$?";
    let (code, out, err) = run(&mut bounded(
        {
            let mut c = ctr_run(&ctrd, work.path(), runtime, &rootfs, &["--rm", "--seccomp"]);
            c.arg(unique("cts")).args(["sh", "-c", script]);
            c
        },
        60,
    ));
    assert_eq!(code, 0, "ctr run --seccomp: {out} {err}");
    assert!(out.contains("ls-ok"), "ls works under the profile: {out}");
    assert!(!out.contains("unshare=0"), "unshare -U must fail: {out}");
    assert!(!out.contains("mount=0"), "mount must fail: {out}");
    assert!(
        out.contains("Operation not permitted"),
        "EPERM reported: {out}"
    );

    let (code, out, err) = run(&mut bounded(
        {
            let mut c = ctr_run(
                &ctrd,
                work.path(),
                runtime,
                &rootfs,
                &["--rm", "--memory-limit", "16777216"],
            );
            c.arg(unique("cto")).args(["sh", "-c", "tail /dev/zero"]);
            c
        },
        120,
    ));
    assert_eq!(code, 137, "OOM kill under --memory-limit: {out} {err}");
}

#[test]
fn containerd_task_operations_with_runc() {
    containerd_task_operations(&require_cmd("runc"));
}

#[test]
fn containerd_task_operations_with_nestbox() {
    containerd_task_operations(&bin("nestbox"));
}

#[test]
fn containerd_tty_with_runc() {
    containerd_tty(&require_cmd("runc"));
}

#[test]
fn containerd_tty_with_nestbox() {
    containerd_tty(&bin("nestbox"));
}

#[test]
fn containerd_seccomp_and_oom_with_runc() {
    containerd_seccomp_and_oom(&require_cmd("runc"));
}

#[test]
fn containerd_seccomp_and_oom_with_nestbox() {
    containerd_seccomp_and_oom(&bin("nestbox"));
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

/// podman's run -d, exec, pause/unpause, stop (grace then kill), --cap-drop, --read-only and
/// --security-opt seccomp=<file>.
fn podman_operations(runtime: &Path) {
    require_root();
    require_cmd("podman");
    let work = TempDir::new("podops");
    let rootfs = rootfs_copy(work.path());
    let pm = |args: &[&str]| {
        let mut c = podman(work.path());
        c.args(args);
        run(&mut bounded(c, 90))
    };
    let rt = runtime.display().to_string();
    let rootfs_s = rootfs.display().to_string();
    let name = unique("pod");
    // sh ignores SIGTERM as PID 1 without a handler: stop must fall back to SIGKILL.
    let (code, out, err) = pm(&[
        "run",
        "-d",
        "--name",
        &name,
        "--network",
        "none",
        "--runtime",
        &rt,
        "--rootfs",
        &rootfs_s,
        "sleep",
        "300",
    ]);
    assert_eq!(code, 0, "podman run -d: {out} {err}");

    let (code, out, err) = pm(&["exec", &name, "sh", "-c", "echo exec-ok; exit 6"]);
    assert_eq!(code, 6, "podman exec exit code: {out} {err}");
    assert!(out.contains("exec-ok"), "podman exec output: {out} {err}");

    let (code, out, err) = pm(&["pause", &name]);
    assert_eq!(code, 0, "podman pause: {out} {err}");
    let (_, out, _) = pm(&["inspect", "--format", "{{.State.Status}}", &name]);
    assert_eq!(out.trim(), "paused");
    let (code, out, err) = pm(&["unpause", &name]);
    assert_eq!(code, 0, "podman unpause: {out} {err}");
    let (_, out, _) = pm(&["inspect", "--format", "{{.State.Status}}", &name]);
    assert_eq!(out.trim(), "running");

    let (code, out, err) = pm(&["stop", "--time", "1", &name]);
    assert_eq!(code, 0, "podman stop: {out} {err}");
    let (_, out, _) = pm(&[
        "inspect",
        "--format",
        "{{.State.Status}} {{.State.ExitCode}}",
        &name,
    ]);
    assert_eq!(
        out.trim(),
        "exited 137",
        "stopped by SIGKILL after the grace period"
    );
    let (code, out, err) = pm(&["rm", &name]);
    assert_eq!(code, 0, "podman rm: {out} {err}");

    // --cap-drop: CAP_CHOWN (bit 0) leaves the effective set.
    let (code, out, err) = pm(&[
        "run",
        "--rm",
        "--network",
        "none",
        "--cap-drop",
        "CHOWN",
        "--runtime",
        &rt,
        "--rootfs",
        &rootfs_s,
        "sh",
        "-c",
        "grep CapEff /proc/self/status; chown 1 /tmp && echo chown-ok || echo chown-refused",
    ]);
    assert_eq!(code, 0, "podman run --cap-drop: {out} {err}");
    assert!(
        out.contains("chown-refused"),
        "chown without CAP_CHOWN: {out}"
    );

    // --read-only: the root is read-only, /tmp stays writable (podman mounts a tmpfs there).
    let (code, out, err) = pm(&[
        "run",
        "--rm",
        "--network",
        "none",
        "--read-only",
        "--runtime",
        &rt,
        "--rootfs",
        &rootfs_s,
        "sh",
        "-c",
        "touch /ro 2>/dev/null && echo root-writable || echo root-ro; touch /tmp/x && echo tmp-ok",
    ]);
    assert_eq!(code, 0, "podman run --read-only: {out} {err}");
    assert!(
        out.contains("root-ro") && out.contains("tmp-ok"),
        "read-only root: {out}"
    );

    // --security-opt seccomp=<file>: a profile that makes mkdir fail with EACCES (13).
    let profile = work.path().join("seccomp.json");
    fs::write(
        &profile,
        r#"{"defaultAction":"SCMP_ACT_ALLOW","architectures":["SCMP_ARCH_X86_64","SCMP_ARCH_X86","SCMP_ARCH_X32"],
            "syscalls":[{"names":["mkdir","mkdirat"],"action":"SCMP_ACT_ERRNO","errnoRet":13}]}"#,
    )
    .expect("write profile");
    let opt = format!("seccomp={}", profile.display());
    let (code, out, err) = pm(&[
        "run",
        "--rm",
        "--network",
        "none",
        "--security-opt",
        &opt,
        "--runtime",
        &rt,
        "--rootfs",
        &rootfs_s,
        "sh",
        "-c",
        "mkdir /tmp/d 2>&1; echo mkdir=$?; ls / >/dev/null && echo ls-ok",
    ]);
    assert_eq!(code, 0, "podman run --security-opt seccomp: {out} {err}");
    assert!(
        out.contains("Permission denied") && out.contains("mkdir=1"),
        "mkdir gets EACCES: {out}"
    );
    assert!(out.contains("ls-ok"), "other syscalls allowed: {out}");
    let _ = pm(&["rm", "--all", "--force"]);
}

#[test]
fn podman_operations_with_runc() {
    podman_operations(&require_cmd("runc"));
}

#[test]
fn podman_operations_with_nestbox() {
    podman_operations(&bin("nestbox"));
}

#[test]
fn podman_runs_containers_with_runc() {
    podman_runs(&require_cmd("runc"));
}

#[test]
fn podman_runs_containers_with_nestbox() {
    podman_runs(&bin("nestbox"));
}
