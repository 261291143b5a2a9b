//! `containerd-shim-nestbox-v2` under Debian's containerd 1.6 through `ctr`, with containerd
//! started inside a test node netns: what a shim owes containerd beyond the task operations
//! that tests/tests/callers.rs already runs under both shims — nothing left after delete, a
//! shim SIGKILLed and cleaned up by containerd, containerd itself SIGKILLed and restarted while
//! a task runs, and the `file://` and `binary://` log URIs.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nestbox_tests::containerd::{
    bounded, ctr_detached, ctr_run, rootfs_copy, task_pid, task_status, Containerd, Shim,
};
use nestbox_tests::{bin, run, unique, wait_until, NetNs, TempDir};

const NS: &str = "nestbox-test";

fn alive(pid: i32) -> bool {
    // A zombie still answers kill(0); look at its state instead.
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next().map(|st| st != "Z"))
                .unwrap_or(false)
        })
        .unwrap_or(false)
}

fn bundle_of(ctrd: &Containerd, id: &str) -> PathBuf {
    ctrd.dir()
        .join("state/io.containerd.runtime.v2.task")
        .join(NS)
        .join(id)
}

/// The shim socket a task's bundle names.
fn shim_socket(ctrd: &Containerd, id: &str) -> PathBuf {
    let address = fs::read_to_string(bundle_of(ctrd, id).join("address"))
        .expect("the shim writes the address file containerd reloads after a restart");
    PathBuf::from(address.trim().trim_start_matches("unix://"))
}

/// Whether the runtime still has state for the container (our shim's default root).
fn runtime_knows(id: &str) -> bool {
    let root = format!("/run/containerd/nestbox/{NS}");
    let (_, out, _) = run(std::process::Command::new(bin("nestbox"))
        .args(["--root", &root, "list", "--format", "json"]));
    out.contains(&format!("\"{id}\""))
}

fn kill_and_remove(ctrd: &Containerd, id: &str) {
    let (code, out, err) = run(ctrd.ctr().args(["task", "kill", "--signal", "SIGKILL", id]));
    assert_eq!(code, 0, "ctr task kill: {out} {err}");
    assert!(
        wait_until(30, || task_status(ctrd, id).as_deref() == Some("STOPPED")),
        "task {id} not STOPPED after SIGKILL"
    );
    let (code, out, err) = run(ctrd.ctr().args(["task", "rm", id]));
    assert_eq!(code, 0, "ctr task rm: {out} {err}");
    let (code, out, err) = run(ctrd.ctr().args(["container", "rm", id]));
    assert_eq!(code, 0, "ctr container rm: {out} {err}");
}

#[test]
fn delete_leaves_no_shim_process_socket_or_container() {
    let node = NetNs::new("shd");
    let ctrd = Containerd::with_config(Some(&node), "");
    let work = TempDir::new("shimdel");
    let rootfs = rootfs_copy(work.path());
    let id = ctr_detached(&ctrd, work.path(), Shim::Nestbox, &rootfs);
    let pid = task_pid(&ctrd, &id).expect("task pid");
    let socket = shim_socket(&ctrd, &id);
    assert_eq!(ctrd.nestbox_shims().len(), 1, "one shim serves the task");
    assert!(socket.exists(), "shim socket {} exists", socket.display());
    assert!(runtime_knows(&id), "nestbox holds the container's state");

    kill_and_remove(&ctrd, &id);
    assert!(
        wait_until(10, || ctrd.nestbox_shims().is_empty()),
        "the shim exits after its last task is deleted: {:?}",
        ctrd.nestbox_shims()
    );
    assert!(!socket.exists(), "shim socket {} removed", socket.display());
    assert!(!alive(pid), "container process {pid} is gone");
    assert!(!runtime_knows(&id), "runtime state of {id} is gone");
    assert!(
        !bundle_of(&ctrd, &id).exists(),
        "containerd removed the bundle"
    );
}

#[test]
fn shim_killed_then_task_delete_recovers() {
    let node = NetNs::new("shk");
    let ctrd = Containerd::with_config(Some(&node), "");
    let work = TempDir::new("shimkill");
    let rootfs = rootfs_copy(work.path());
    let id = ctr_detached(&ctrd, work.path(), Shim::Nestbox, &rootfs);
    let pid = task_pid(&ctrd, &id).expect("task pid");
    let socket = shim_socket(&ctrd, &id);
    let shims = ctrd.nestbox_shims();
    assert_eq!(shims.len(), 1, "one shim: {shims:?}");
    // SAFETY: kill(2) of the shim process found in /proc.
    unsafe { libc::kill(shims[0], libc::SIGKILL) };

    // containerd sees the shim go, runs `containerd-shim-nestbox-v2 delete` (which deletes the
    // container with the runtime) and drops the task; `ctr task delete` finds nothing left or
    // finishes the job.
    assert!(
        wait_until(30, || task_status(&ctrd, &id).is_none()
            || task_status(&ctrd, &id).as_deref() == Some("STOPPED")),
        "task still listed as running after its shim died: {:?}\n{}",
        task_status(&ctrd, &id),
        ctrd.log()
    );
    let (code, out, err) = run(ctrd.ctr().args(["task", "delete", &id]));
    assert!(
        code == 0 || format!("{out}{err}").contains("not found"),
        "ctr task delete after a dead shim: {code} {out} {err}"
    );
    let (code, out, err) = run(ctrd.ctr().args(["container", "rm", &id]));
    assert_eq!(code, 0, "ctr container rm: {out} {err}");
    assert!(
        wait_until(10, || !alive(pid)),
        "container process {pid} killed by the cleanup"
    );
    assert!(!runtime_knows(&id), "runtime state of {id} is gone");
    assert!(!socket.exists(), "the dead shim's socket is removed");
    assert!(ctrd.nestbox_shims().is_empty(), "no shim left");
    assert!(
        ctrd.log().contains("cleaning up dead shim"),
        "containerd ran the shim's delete"
    );
}

#[test]
fn containerd_killed_and_restarted_keeps_the_task_manageable() {
    let node = NetNs::new("shr");
    let mut ctrd = Containerd::with_config(Some(&node), "");
    let work = TempDir::new("shimrst");
    let rootfs = rootfs_copy(work.path());
    let id = ctr_detached(&ctrd, work.path(), Shim::Nestbox, &rootfs);
    let pid = task_pid(&ctrd, &id).expect("task pid");
    let shims = ctrd.nestbox_shims();

    ctrd.kill_and_restart();
    assert!(alive(pid), "the container survived containerd's death");
    assert_eq!(ctrd.nestbox_shims(), shims, "the same shim still serves it");
    assert_eq!(task_status(&ctrd, &id).as_deref(), Some("RUNNING"));
    assert_eq!(
        task_pid(&ctrd, &id),
        Some(pid),
        "reconnected to the same task"
    );

    let (code, out, err) = run(&mut bounded(
        {
            let mut c = ctrd.ctr();
            c.args(["task", "exec", "--fifo-dir"])
                .arg(work.path().join("fifo"))
                .args([
                    "--exec-id",
                    "after",
                    &id,
                    "sh",
                    "-c",
                    "echo exec-after-restart; exit 6",
                ]);
            c
        },
        60,
    ));
    assert_eq!(code, 6, "exec after restart: {out} {err}\n{}", ctrd.log());
    assert!(out.contains("exec-after-restart"), "{out}");

    // The exit event reaches the new containerd (the shim reconnects its publisher).
    kill_and_remove(&ctrd, &id);
    assert!(
        wait_until(10, || ctrd.nestbox_shims().is_empty()),
        "shim gone after delete"
    );
    assert!(!alive(pid));
}

/// A `binary://` logger in the containerd protocol: fd 3 stdout, fd 4 stderr, closing fd 5
/// says it is ready.
fn logger_script(dir: &Path) -> PathBuf {
    let script = dir.join("logger.sh");
    fs::write(
        &script,
        format!(
            "#!/bin/sh\nexec 5>&-\necho \"$CONTAINER_NAMESPACE/$CONTAINER_ID $*\" > {d}/logger.args\ncat <&3 > {d}/logger.out &\ncat <&4 > {d}/logger.err &\nwait\n",
            d = dir.display()
        ),
    )
    .expect("write logger");
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).expect("chmod");
    script
}

#[test]
fn file_and_binary_log_uris_receive_the_output() {
    let node = NetNs::new("shl");
    let ctrd = Containerd::with_config(Some(&node), "");
    let work = TempDir::new("shimlog");
    let rootfs = rootfs_copy(work.path());

    let log = work.path().join("logs/out.log");
    let id = unique("shf");
    let (code, out, err) = run(&mut bounded(
        {
            let uri = format!("file://{}", log.display());
            let mut c = ctr_run(
                &ctrd,
                work.path(),
                Shim::Nestbox,
                &rootfs,
                &["--rm", "--log-uri", &uri],
            );
            c.arg(&id)
                .args(["sh", "-c", "echo to-stdout; echo to-stderr >&2; exit 2"]);
            c
        },
        60,
    ));
    assert_eq!(code, 2, "ctr run with a file log: {out} {err}");
    let text = fs::read_to_string(&log).unwrap_or_default();
    assert!(
        text.contains("to-stdout") && text.contains("to-stderr"),
        "file log holds both streams: {text:?}"
    );

    let script = logger_script(work.path());
    let id = unique("shb");
    let (code, out, err) = run(&mut bounded(
        {
            let uri = format!("binary://{}?level=debug", script.display());
            let mut c = ctr_run(
                &ctrd,
                work.path(),
                Shim::Nestbox,
                &rootfs,
                &["--rm", "--log-uri", &uri],
            );
            c.arg(&id)
                .args(["sh", "-c", "echo bin-out; echo bin-err >&2"]);
            c
        },
        60,
    ));
    assert_eq!(code, 0, "ctr run with a binary logger: {out} {err}");
    let read = |f: &str| fs::read_to_string(work.path().join(f)).unwrap_or_default();
    assert!(
        wait_until(10, || read("logger.out").contains("bin-out")
            && read("logger.err").contains("bin-err")),
        "logger got stdout {:?} and stderr {:?}",
        read("logger.out"),
        read("logger.err")
    );
    assert_eq!(
        read("logger.args").trim(),
        format!("{NS}/{id} level debug"),
        "logger environment and arguments"
    );
}

#[test]
fn install_sh_puts_the_shim_beside_the_runtime_it_runs() {
    let cni_dir = TempDir::new("instcni");
    let bin_dir = TempDir::new("instbin");
    let out =
        std::process::Command::new(nestbox_tests::workspace_root().join("scripts/install.sh"))
            .arg("--cni-bin-dir")
            .arg(cni_dir.path())
            .arg("--bin-dir")
            .arg(bin_dir.path())
            .env("NESTBOX_CNI_BIN", nestbox_tests::cni_bin())
            .env("NESTBOX_OVERLAYD_BIN", bin("nestbox-overlayd"))
            .env("NESTBOX_SHIM_BIN", nestbox_tests::shim_bin())
            .env("NESTBOX_BIN_DIR", bin("nestbox").parent().expect("bin dir"))
            .output()
            .expect("run install.sh");
    assert!(
        out.status.success(),
        "install.sh --bin-dir: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for name in ["nestbox", "nestbox-pause", "containerd-shim-nestbox-v2"] {
        let meta = fs::metadata(bin_dir.path().join(name)).expect("installed");
        assert!(
            meta.permissions().mode() & 0o111 != 0,
            "{name} is executable"
        );
    }
    // The installed shim's cleanup path runs the runtime beside it, with no nestbox on PATH:
    // deleting a container that does not exist succeeds (it is gone either way).
    let bundle = TempDir::new("instbundle");
    let (code, _, err) = run(std::process::Command::new(
        bin_dir.path().join("containerd-shim-nestbox-v2"),
    )
    .args([
        "-namespace",
        "inst",
        "-id",
        &unique("gone"),
        "-address",
        "/tmp/no.sock",
    ])
    .arg("-bundle")
    .arg(bundle.path())
    .arg("delete")
    .current_dir(bundle.path())
    .env("PATH", "/usr/bin:/bin")
    .env("TTRPC_ADDRESS", "/tmp/no.sock.ttrpc"));
    assert_eq!(code, 0, "shim delete from the installed dir: {err}");
    let options = fs::read_to_string(bundle.path().join("options.json")).unwrap_or_default();
    assert!(options.is_empty(), "delete writes no options: {options}");
}
