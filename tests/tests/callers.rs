//! Real callers drive the runtime: Debian's containerd 1.6 (through its runc-v2 shim with
//! `--runc-binary`, and through our shim, `--runtime io.containerd.nestbox.v2`) and podman 4.3
//! (`--runtime`). Each case runs with runc (the reference the callers were built for) and with
//! nestbox, expecting the same outcome.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};

use nestbox_tests::containerd::{
    bounded, ctr_detached, ctr_run, rootfs_copy, task_status, Containerd, Shim,
};
use nestbox_tests::{bin, require_cmd, require_root, run, unique, wait_until, TempDir};

fn containerd_runs(shim: Shim) {
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
        .args(shim.flags())
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
        .args(shim.flags())
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
fn containerd_task_operations(shim: Shim) {
    let ctrd = Containerd::start();
    let work = TempDir::new("ctrops");
    let rootfs = rootfs_copy(work.path());
    let id = ctr_detached(&ctrd, work.path(), shim, &rootfs);

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
fn containerd_tty(shim: Shim) {
    require_cmd("script");
    let ctrd = Containerd::start();
    let work = TempDir::new("ctrtty");
    let rootfs = rootfs_copy(work.path());
    let id = unique("ctt");
    let ctr_line = |extra: &str| {
        format!(
            "ctr --address {sock} --namespace nestbox-test {extra}",
            sock = ctrd.socket().display()
        )
    };
    let run_line = ctr_line(&format!(
        "run --rm -t --fifo-dir {fifo} --env PATH=/bin {shim} --rootfs {rootfs} {id} sh -c 'tty; test -t 0 && echo stdin-is-tty; exit 4'",
        fifo = work.path().join("fifo").display(),
        shim = shim
            .flags()
            .iter()
            .map(|f| f.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" "),
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

    let id = ctr_detached(&ctrd, work.path(), shim, &rootfs);
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
fn containerd_seccomp_and_oom(shim: Shim) {
    let ctrd = Containerd::start();
    let work = TempDir::new("ctrsec");
    let rootfs = rootfs_copy(work.path());
    let script = "ls / >/dev/null && echo ls-ok; unshare -U true 2>&1; echo unshare=$?; mount -t tmpfs none /tmp 2>&1; echo mount=$?";
    let (code, out, err) = run(&mut bounded(
        {
            let mut c = ctr_run(&ctrd, work.path(), shim, &rootfs, &["--rm", "--seccomp"]);
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
                shim,
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
    containerd_task_operations(Shim::RuncV2(&require_cmd("runc")));
}

#[test]
fn containerd_task_operations_with_nestbox() {
    containerd_task_operations(Shim::RuncV2(&bin("nestbox")));
}

#[test]
fn containerd_tty_with_runc() {
    containerd_tty(Shim::RuncV2(&require_cmd("runc")));
}

#[test]
fn containerd_tty_with_nestbox() {
    containerd_tty(Shim::RuncV2(&bin("nestbox")));
}

#[test]
fn containerd_seccomp_and_oom_with_runc() {
    containerd_seccomp_and_oom(Shim::RuncV2(&require_cmd("runc")));
}

#[test]
fn containerd_seccomp_and_oom_with_nestbox() {
    containerd_seccomp_and_oom(Shim::RuncV2(&bin("nestbox")));
}

#[test]
fn containerd_runs_containers_with_runc() {
    containerd_runs(Shim::RuncV2(&require_cmd("runc")));
}

#[test]
fn containerd_runs_containers_with_nestbox() {
    containerd_runs(Shim::RuncV2(&bin("nestbox")));
}

#[test]
fn containerd_task_operations_with_nestbox_shim() {
    containerd_task_operations(Shim::Nestbox);
}

#[test]
fn containerd_tty_with_nestbox_shim() {
    containerd_tty(Shim::Nestbox);
}

#[test]
fn containerd_seccomp_and_oom_with_nestbox_shim() {
    containerd_seccomp_and_oom(Shim::Nestbox);
}

#[test]
fn containerd_runs_containers_with_nestbox_shim() {
    containerd_runs(Shim::Nestbox);
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
