//! The runtime spec's MUSTs where nestbox once differed from it: each case runs the same
//! bundle under nestbox and under runc or crun (whichever follows the spec there) and compares,
//! besides asserting the expected value. crun refuses this VM's hybrid cgroups, so its cases
//! run in a private mount namespace without the cgroup2 mount ([`CgroupLayout::V1`]); cases
//! about cgroups run in each layout (host/hybrid, v1 only, v2 only).
//!
//! Run after `cargo build --release -p nestbox-runtime`:
//! `cargo test --release -p nestbox-tests --test runtime_conformance -- --test-threads=2`

use std::path::Path;

use nestbox_tests::{
    in_mount_namespace, unique, wait_until, Bundle, CgroupLayout, Runtime, TempDir,
};
use serde_json::json;

const LAYOUTS: [CgroupLayout; 3] = [CgroupLayout::Host, CgroupLayout::V1, CgroupLayout::V2];

fn bundle_with(args: &[&str]) -> Bundle {
    let mut b = Bundle::new();
    b.set_args(args);
    b.write();
    b
}

/// Drop the `typ` entries from the bundle's namespaces.
fn without_namespace(b: &mut Bundle, typ: &str) {
    b.config["linux"]["namespaces"]
        .as_array_mut()
        .expect("namespaces")
        .retain(|n| n["type"] != typ);
}

/// Bind `dir` read-write at `dest` in the container.
fn bind_rw(b: &mut Bundle, dir: &Path, dest: &str) {
    b.config["mounts"].as_array_mut().expect("mounts").push(
        json!({"destination": dest, "type": "bind", "source": dir, "options": ["rbind", "rw"]}),
    );
}

/// Alive and not a zombie.
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z ") && !s.contains(") X "))
        .unwrap_or(false)
}

fn read_pid(path: &Path) -> i32 {
    let mut text = String::new();
    assert!(
        wait_until(10, || {
            text = std::fs::read_to_string(path).unwrap_or_default();
            text.trim().parse::<i32>().is_ok()
        }),
        "no pid in {}",
        path.display()
    );
    text.trim().parse().expect("pid")
}

// ---------------------------------------------------------------------------------------------
// 1. kill --all on a stopped container
// ---------------------------------------------------------------------------------------------

/// What one runtime did with a container whose init exited leaving a process in its cgroup.
#[derive(Debug, PartialEq)]
struct KillAllOutcome {
    status_before: String,
    leftover_alive_before: bool,
    kill_all: i32,
    leftover_gone: bool,
    kill_all_empty: i32,
    kill_plain: (i32, bool),
    delete: i32,
}

/// Init (no PID namespace of its own, so its exit kills nothing) starts a `sleep` and exits;
/// the sleep stays in the cgroup, as a pod's processes do when they share a PID namespace.
fn kill_all_after_init_exit(rt: &Runtime) -> KillAllOutcome {
    let out = TempDir::new("ka-out");
    let mut b = bundle_with(&["sh", "-c", "sleep 1000 & echo $! > /out/pid"]);
    without_namespace(&mut b, "pid");
    bind_rw(&mut b, out.path(), "/out");
    b.write();
    let id = unique("ka");
    let (code, err) = rt.create(&b, &id);
    assert_eq!(code, 0, "{}: create: {err}", rt.name);
    rt.ok(&["start", &id]);
    let leftover = read_pid(&out.path().join("pid"));
    assert!(
        wait_until(10, || rt.status(&id) == "stopped"),
        "{}: init never exited",
        rt.name
    );
    let status_before = rt.status(&id);
    let leftover_alive_before = alive(leftover);
    let (kill_all, _, err) = rt.out(&["kill", "--all", &id, "SIGKILL"]);
    assert_eq!(
        kill_all, 0,
        "{}: kill --all with a leftover: {err}",
        rt.name
    );
    let leftover_gone = wait_until(10, || !alive(leftover));
    // The cgroup is empty now: containerd's shim still calls kill --all, and expects 0.
    let (kill_all_empty, _, err) = rt.out(&["kill", "--all", &id, "SIGKILL"]);
    assert_eq!(
        kill_all_empty, 0,
        "{}: kill --all, empty cgroup: {err}",
        rt.name
    );
    let (code, _, err) = rt.out(&["kill", &id, "SIGKILL"]);
    let kill_plain = (
        code,
        err.contains("not running") || err.contains("No such process"),
    );
    let (delete, _, _) = rt.out(&["delete", &id]);
    KillAllOutcome {
        status_before,
        leftover_alive_before,
        kill_all,
        leftover_gone,
        kill_all_empty,
        kill_plain,
        delete,
    }
}

#[test]
fn kill_all_on_a_stopped_container_kills_leftovers_and_exits_zero() {
    for layout in LAYOUTS {
        let [runc, nestbox] = in_mount_namespace(layout, || {
            [
                kill_all_after_init_exit(&Runtime::runc()),
                kill_all_after_init_exit(&Runtime::nestbox()),
            ]
        });
        assert_eq!(nestbox, runc, "{layout:?}: nestbox differs from runc");
        assert_eq!(
            nestbox,
            KillAllOutcome {
                status_before: "stopped".into(),
                leftover_alive_before: true,
                kill_all: 0,
                leftover_gone: true,
                kill_all_empty: 0,
                kill_plain: (1, true),
                delete: 0,
            },
            "{layout:?}"
        );
    }
}

/// `kill --all SIGKILL` on a paused container: the signal must land, so the runtime thaws the
/// cgroup after signalling (a frozen v1 task does not die of SIGKILL while frozen).
fn kill_all_paused(rt: &Runtime) -> (i32, bool) {
    let b = bundle_with(&["sh", "-c", "sleep 1000 & exec sleep 1000"]);
    let id = rt.start(&b);
    assert!(
        wait_until(10, || rt.pids(&id).len() == 2),
        "{}: two processes expected",
        rt.name
    );
    rt.ok(&["pause", &id]);
    assert_eq!(rt.status(&id), "paused", "{}", rt.name);
    let (code, _, err) = rt.out(&["kill", "--all", &id, "KILL"]);
    assert_eq!(code, 0, "{}: {err}", rt.name);
    let stopped = wait_until(10, || rt.status(&id) == "stopped");
    let _ = rt.out(&["delete", "--force", &id]);
    (code, stopped)
}

#[test]
fn kill_all_reaches_a_paused_container() {
    for layout in LAYOUTS {
        let [runc, nestbox] = in_mount_namespace(layout, || {
            [
                kill_all_paused(&Runtime::runc()),
                kill_all_paused(&Runtime::nestbox()),
            ]
        });
        assert_eq!(nestbox, runc, "{layout:?}");
        assert_eq!(nestbox, (0, true), "{layout:?}");
    }
}

/// cgroup v2 lets SIGKILL through the freezer, so a paused container's init can die and leave
/// frozen leftovers; `kill --all SIGTERM` must still reach them (thaw after signalling). The
/// leftover handles SIGTERM (and says so once its trap is set): a fatal default action would
/// kill it through the v2 freezer anyway. Returns (status after init died, kill --all exit
/// code, leftover gone).
fn kill_all_frozen_leftovers(rt: &Runtime) -> (String, i32, bool) {
    let out = TempDir::new("kf-out");
    let mut b = bundle_with(&[
        "sh",
        "-c",
        "sh -c 'trap \"exit 0\" TERM; echo $$ > /out/pid; while :; do sleep 1; done' & exec sleep 1000",
    ]);
    without_namespace(&mut b, "pid");
    bind_rw(&mut b, out.path(), "/out");
    b.write();
    let id = rt.start(&b);
    let leftover = read_pid(&out.path().join("pid"));
    rt.ok(&["pause", &id]);
    let init = rt.pid(&id);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(init),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill init");
    assert!(
        wait_until(10, || !alive(init)),
        "{}: init survived SIGKILL in a frozen v2 cgroup",
        rt.name
    );
    let status = rt.status(&id);
    let (code, _, err) = rt.out(&["kill", "--all", &id, "TERM"]);
    assert_eq!(code, 0, "{}: {err}", rt.name);
    let gone = wait_until(10, || !alive(leftover));
    let _ = rt.out(&["delete", "--force", &id]);
    (status, code, gone)
}

#[test]
fn kill_all_thaws_frozen_leftovers_on_v2() {
    let [runc, nestbox] = in_mount_namespace(CgroupLayout::V2, || {
        [
            kill_all_frozen_leftovers(&Runtime::runc()),
            kill_all_frozen_leftovers(&Runtime::nestbox()),
        ]
    });
    assert_eq!((nestbox.1, nestbox.2), (runc.1, runc.2));
    assert_eq!((nestbox.1, nestbox.2), (0, true));
    // runc 1.1 reports a frozen cgroup as "paused" before it looks at init; the spec's
    // "stopped: the container process has exited" is what nestbox reports.
    assert_eq!(nestbox.0, "stopped");
}

// ---------------------------------------------------------------------------------------------
// 2. Namespaces: absent means inherit, path means join (mount included)
// ---------------------------------------------------------------------------------------------

/// This thread's namespace of a type (`mnt`, `pid`, …), as `readlink /proc/self/ns/X` shows it.
fn own_ns(name: &str) -> String {
    std::fs::read_link(format!("/proc/thread-self/ns/{name}"))
        .expect("own namespace")
        .to_string_lossy()
        .into_owned()
}

/// Mount points at or below `dir` in this thread's mount namespace, deepest first.
fn mounts_under(dir: &Path) -> Vec<String> {
    let dir = dir.to_string_lossy().into_owned();
    let text = std::fs::read_to_string("/proc/thread-self/mountinfo").expect("mountinfo");
    let mut found: Vec<String> = text
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .filter(|m| *m == dir || m.starts_with(&format!("{dir}/")))
        .map(str::to_owned)
        .collect();
    found.reverse();
    found
}

/// An `unshare … sleep` holding namespaces to join by path; killed on drop (`--kill-child`
/// takes a `--fork`ed sleep with it).
struct Holder(std::process::Child);

impl Holder {
    fn new(args: &[&str]) -> Holder {
        let child = std::process::Command::new("unshare")
            .args(args)
            .args(["sleep", "1000"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("unshare");
        Holder(child)
    }

    /// The forked child of `unshare --fork`: the process in the new pid namespace.
    fn child_pid(&self) -> i32 {
        let children = format!("/proc/{0}/task/{0}/children", self.0.id());
        let mut pid = 0;
        assert!(
            wait_until(10, || {
                pid = std::fs::read_to_string(&children)
                    .ok()
                    .and_then(|c| c.split_whitespace().next()?.parse().ok())
                    .unwrap_or(0);
                pid > 0
            }),
            "unshare --fork never forked"
        );
        pid
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A process in a new mount namespace (a copy of this thread's), to join by path.
struct MountNsHolder(Holder);

impl MountNsHolder {
    fn new() -> MountNsHolder {
        let holder = MountNsHolder(Holder::new(&["-m", "--propagation", "private"]));
        let ns = holder.ns_path();
        assert!(
            wait_until(10, || std::fs::read_link(&ns)
                .map(|l| l.to_string_lossy() != own_ns("mnt"))
                .unwrap_or(false)),
            "the holder never got its own mount namespace"
        );
        holder
    }

    fn ns_path(&self) -> String {
        format!("/proc/{}/ns/mnt", self.0 .0.id())
    }
}

#[test]
fn no_mount_namespace_shares_the_runtimes_and_leaves_no_mount() {
    let [crun, nestbox] = in_mount_namespace(CgroupLayout::V1, || {
        [Runtime::crun(), Runtime::nestbox()].map(|rt| {
            let mut b = bundle_with(&["sh", "-c", "readlink /proc/self/ns/mnt; ls /"]);
            without_namespace(&mut b, "mount");
            b.write();
            let (code, out, err) = rt.run(&b);
            let left = mounts_under(&b.rootfs());
            // crun leaves the container's mounts in its own namespace: clear them away.
            for m in &left {
                let _ = nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH);
            }
            (code, out, err, left, own_ns("mnt"))
        })
    });
    assert_eq!(
        (nestbox.0, &nestbox.1),
        (crun.0, &crun.1),
        "nestbox differs from crun\nnestbox: {}\ncrun: {}",
        nestbox.2,
        crun.2
    );
    let lines: Vec<&str> = nestbox.1.lines().collect();
    assert_eq!(lines.first(), Some(&nestbox.4.as_str()), "{}", nestbox.1);
    assert!(
        lines.contains(&"bin") && lines.contains(&"proc"),
        "{}",
        nestbox.1
    );
    // The spec's delete: "MUST delete the resources that were created during the create
    // step" — crun leaves its mounts in the runtime's namespace, nestbox does not.
    assert!(nestbox.3.is_empty(), "left behind: {:?}", nestbox.3);
}

#[test]
fn no_mount_namespace_still_honours_a_read_only_root_and_exec() {
    in_mount_namespace(CgroupLayout::Host, || {
        let nb = Runtime::nestbox();
        let mut b = bundle_with(&["sleep", "100"]);
        without_namespace(&mut b, "mount");
        b.write();
        let host_mounts = mounts_under(Path::new("/")).len();
        let id = nb.start(&b);
        let (code, out, err) = nb.out(&[
            "exec",
            &id,
            "sh",
            "-c",
            "readlink /proc/self/ns/mnt; ls / | grep -c ^bin$; touch /x 2>/dev/null; echo ro=$?",
        ]);
        assert_eq!(code, 0, "{err}");
        assert_eq!(out, format!("{}\n1\nro=1\n", own_ns("mnt")));
        nb.ok(&["delete", "--force", &id]);
        assert!(mounts_under(&b.rootfs()).is_empty());
        assert_eq!(mounts_under(Path::new("/")).len(), host_mounts);
    });
}

#[test]
fn no_mount_namespace_failed_create_leaves_no_mount() {
    in_mount_namespace(CgroupLayout::Host, || {
        let nb = Runtime::nestbox();
        let before = mounts_under(Path::new("/")).len();
        // The /proc mount and more are made before the bad one fails.
        let mut b = bundle_with(&["true"]);
        without_namespace(&mut b, "mount");
        bind_rw(&mut b, Path::new("/nonexistent-nestbox-source"), "/data");
        b.write();
        let id = unique("nf");
        let (code, err) = nb.create(&b, &id);
        assert_eq!(code, 1, "create must fail");
        assert!(err.contains("nonexistent-nestbox-source"), "{err}");
        assert!(
            mounts_under(&b.rootfs()).is_empty(),
            "{:?}",
            mounts_under(&b.rootfs())
        );
        assert_eq!(mounts_under(Path::new("/")).len(), before);
        assert_eq!(nb.status(&id), "absent");
    });
}

#[test]
fn mount_namespace_joined_by_path() {
    let [crun, nestbox] = in_mount_namespace(CgroupLayout::V1, || {
        [Runtime::crun(), Runtime::nestbox()].map(|rt| {
            // runc and crun make the rootfs the joined namespace's root (pivot_root moves
            // every process whose root was the old one): one holder per runtime.
            let holder = MountNsHolder::new();
            let ns = std::fs::read_link(holder.ns_path()).expect("holder ns");
            let mut b = bundle_with(&["sh", "-c", "readlink /proc/self/ns/mnt; ls /"]);
            for n in b.config["linux"]["namespaces"].as_array_mut().unwrap() {
                if n["type"] == "mount" {
                    n["path"] = json!(holder.ns_path());
                }
            }
            b.write();
            let (code, out, err) = rt.run(&b);
            (code, out, err, ns.to_string_lossy().into_owned())
        })
    });
    assert_eq!(
        (nestbox.0, nestbox.1.lines().skip(1).collect::<Vec<_>>()),
        (crun.0, crun.1.lines().skip(1).collect::<Vec<_>>()),
        "nestbox: {}\ncrun: {}",
        nestbox.2,
        crun.2
    );
    assert_eq!(nestbox.1.lines().next(), Some(nestbox.3.as_str()));
    assert_eq!(crun.1.lines().next(), Some(crun.3.as_str()));
}

/// The namespaces (pid, net, ipc, uts, cgroup) a container's process is in, one per line.
const SHOW_NS: &str = "for n in pid net ipc uts cgroup; do readlink /proc/self/ns/$n; done";

#[test]
fn every_namespace_type_absent_inherits_and_path_joins() {
    // A holder with new pid, net, ipc, uts, cgroup and time namespaces (`--fork`: its child
    // is the one in the new pid namespace).
    let unshare = Holder::new(&["--fork", "--kill-child", "-p", "-n", "-i", "-u", "-C", "-T"]);
    let holder = unshare.child_pid();
    let ns = |n: &str| format!("/proc/{holder}/ns/{n}");
    let mut results = Vec::new();
    for rt in [Runtime::runc(), Runtime::nestbox()] {
        let mut absent = bundle_with(&["sh", "-c", SHOW_NS]);
        absent.config["linux"]["namespaces"] = json!([{"type": "mount"}]);
        absent.config.as_object_mut().unwrap().remove("hostname");
        absent.write();
        let mut joined = bundle_with(&["sh", "-c", SHOW_NS]);
        joined.config["linux"]["namespaces"] = json!([
            {"type": "mount"},
            {"type": "pid", "path": ns("pid")},
            {"type": "network", "path": ns("net")},
            {"type": "ipc", "path": ns("ipc")},
            {"type": "uts", "path": ns("uts")},
            {"type": "cgroup", "path": ns("cgroup")},
        ]);
        joined.config.as_object_mut().unwrap().remove("hostname");
        joined.write();
        results.push((rt.run(&absent), rt.run(&joined)));
    }
    let expect = |of: &dyn Fn(&str) -> String| -> String {
        ["pid", "net", "ipc", "uts", "cgroup"]
            .iter()
            .map(|n| of(n) + "\n")
            .collect()
    };
    let link = |p: String| {
        std::fs::read_link(p)
            .expect("ns link")
            .to_string_lossy()
            .into_owned()
    };
    let inherited = expect(&|n: &str| own_ns(n));
    let holders = expect(&|n: &str| link(ns(n)));
    let outputs = |r: &((i32, String, String), (i32, String, String))| {
        ((r.0 .0, r.0 .1.clone()), (r.1 .0, r.1 .1.clone()))
    };
    assert_eq!(
        outputs(&results[1]),
        outputs(&results[0]),
        "nestbox differs from runc: {results:?}"
    );
    assert_eq!(outputs(&results[1]), ((0, inherited), (0, holders)));

    // runc 1.1 predates time namespaces: nestbox only.
    let nb = Runtime::nestbox();
    let mut time = bundle_with(&["readlink", "/proc/self/ns/time"]);
    time.config["linux"]["namespaces"]
        .as_array_mut()
        .unwrap()
        .push(json!({"type": "time", "path": ns("time")}));
    time.write();
    let (code, out, err) = nb.run(&time);
    assert_eq!((code, out), (0, link(ns("time")) + "\n"), "{err}");
    drop(unshare);
}

// ---------------------------------------------------------------------------------------------
// 3. Seccomp is the last step before execve
// ---------------------------------------------------------------------------------------------

/// A profile denying `getcwd` (the runtime's own cwd check uses it) with EPERM.
fn deny_getcwd(b: &mut Bundle) {
    b.config["linux"]["seccomp"] = json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": [{"names": ["getcwd"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]
    });
}

#[test]
fn seccomp_denying_what_the_runtime_uses_does_not_break_start() {
    let results = in_mount_namespace(CgroupLayout::V1, || {
        [Runtime::crun(), Runtime::nestbox()].map(|rt| {
            let mut out = Vec::new();
            for (nnp, uid) in [(true, 0), (false, 0), (true, 1000), (false, 1000)] {
                // The filter applies to the container's process: its own getcwd fails.
                let mut b = bundle_with(&["sh", "-c", "cd /tmp && /bin/pwd -P; echo pwd=$?"]);
                deny_getcwd(&mut b);
                b.config["process"]["noNewPrivileges"] = json!(nnp);
                b.config["process"]["user"] = json!({"uid": uid, "gid": uid});
                b.config["process"]["cwd"] = json!("/home");
                b.write();
                let (code, stdout, err) = rt.run(&b);
                out.push(((nnp, uid), code, stdout, err));
            }
            out
        })
    });
    let [crun, nestbox] = results;
    for (c, n) in crun.iter().zip(&nestbox) {
        assert_eq!(
            (n.0, n.1, &n.2),
            (c.0, c.1, &c.2),
            "nestbox differs from crun\nnestbox: {}\ncrun: {}",
            n.3,
            c.3
        );
        assert_eq!((n.1, n.2.as_str()), (0, "pwd=1\n"), "{:?}: {}", n.0, n.3);
    }
}

#[test]
fn seccomp_notify_reaches_the_listener_for_an_unprivileged_process() {
    for (nnp, uid) in [(true, 1000), (false, 1000), (true, 0)] {
        let nb = Runtime::nestbox();
        let sock = nb.root.path().join("agent.sock");
        let listener = std::os::unix::net::UnixListener::bind(&sock).expect("bind agent socket");
        let agent = std::thread::spawn(move || {
            let (stream, _) = listener.accept().expect("accept");
            let (payload, fd) = nestbox_tests::recv_fd(&stream);
            drop(fd);
            payload
        });
        let mut b = bundle_with(&["sh", "-c", "mkdir /tmp/x 2>/dev/null; echo $?"]);
        b.config["root"]["readonly"] = json!(false);
        b.config["process"]["noNewPrivileges"] = json!(nnp);
        b.config["process"]["user"] = json!({"uid": uid, "gid": uid});
        b.config["linux"]["seccomp"] = json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "architectures": ["SCMP_ARCH_X86_64"],
            "listenerPath": sock,
            "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_NOTIFY"}]
        });
        b.write();
        let (code, out, err) = nb.run(&b);
        assert_eq!(
            (code, out.as_str()),
            (0, "1\n"),
            "nnp {nnp} uid {uid}: {err}"
        );
        let payload: serde_json::Value =
            serde_json::from_str(&agent.join().expect("agent")).expect("payload JSON");
        assert_eq!(payload["fds"], json!(["seccompFd"]), "{payload}");
        assert!(payload["pid"].as_i64().unwrap_or(0) > 0, "{payload}");
    }
}

// ---------------------------------------------------------------------------------------------
// 4. rootfsPropagation
// ---------------------------------------------------------------------------------------------

/// A directory bound onto itself and made shared in this thread's mount namespace (the test's
/// "host"); unmounted on drop.
struct SharedBind(std::path::PathBuf);

impl SharedBind {
    fn new(dir: &Path) -> SharedBind {
        use nix::mount::{mount, MsFlags};
        mount(Some(dir), dir, None::<&str>, MsFlags::MS_BIND, None::<&str>).expect("bind");
        let guard = SharedBind(dir.to_path_buf());
        mount(
            None::<&str>,
            dir,
            None::<&str>,
            MsFlags::MS_SHARED,
            None::<&str>,
        )
        .expect("make shared");
        guard
    }
}

impl Drop for SharedBind {
    fn drop(&mut self) {
        for m in mounts_under(&self.0) {
            let _ = nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// What a container with `rootfsPropagation: mode` sees and does, its rootfs and a bind
/// source being shared mounts of the host: (the propagation tags of its `/`, whether a mount
/// the host made under the rootfs after `create` shows inside, whether a mount it made under
/// the bind (`rshared`) shows on the host).
fn propagation_seen(rt: &Runtime, mode: &str) -> (Vec<String>, bool, bool) {
    let out = TempDir::new("pr-out");
    let source = TempDir::new("pr-src");
    std::fs::create_dir(source.path().join("sub")).expect("mkdir sub");
    let mut b = bundle_with(&[
        "sh",
        "-c",
        "awk '$5 == \"/\" { for (i = 7; $i != \"-\"; i++) print $i }' /proc/self/mountinfo > /out/tags; \
         cat /tmp/hello > /out/saw 2>/dev/null; \
         mount -t tmpfs inside /shared/sub; echo done > /out/done",
    ]);
    b.config["linux"]["rootfsPropagation"] = json!(mode);
    for set in ["bounding", "effective", "permitted"] {
        b.config["process"]["capabilities"][set]
            .as_array_mut()
            .expect("capability set")
            .push(json!("CAP_SYS_ADMIN"));
    }
    b.config["mounts"].as_array_mut().expect("mounts").push(
        json!({"destination": "/shared", "type": "bind", "source": source.path(), "options": ["rbind", "rshared"]}),
    );
    bind_rw(&mut b, out.path(), "/out");
    b.write();
    let rootfs_shared = SharedBind::new(&b.rootfs());
    let source_shared = SharedBind::new(source.path());
    let id = unique("pr");
    let (code, err) = rt.create(&b, &id);
    assert_eq!(code, 0, "{} {mode}: create: {err}", rt.name);
    // The container's mount namespace exists now: mount on the host, under its rootfs.
    let host_tmp = b.rootfs().join("tmp");
    nix::mount::mount(
        Some("tmpfs"),
        &host_tmp,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some("size=64k"),
    )
    .expect("host tmpfs under the rootfs");
    std::fs::write(host_tmp.join("hello"), "from the host\n").expect("write hello");
    rt.ok(&["start", &id]);
    assert!(
        wait_until(10, || out.path().join("done").exists()),
        "{} {mode}: the container did not finish",
        rt.name
    );
    let tags = std::fs::read_to_string(out.path().join("tags"))
        .unwrap_or_default()
        .lines()
        .map(|t| t.split(':').next().unwrap_or_default().to_owned())
        .collect();
    let saw = std::fs::read_to_string(out.path().join("saw")).unwrap_or_default() != "";
    let host_sees = !mounts_under(&source.path().join("sub")).is_empty();
    let _ = rt.out(&["delete", "--force", &id]);
    drop(source_shared);
    drop(rootfs_shared);
    (tags, saw, host_sees)
}

/// The propagation tags of `/` in a container with `rootfsPropagation: mode` and no bind
/// mounts (crun makes every mount unbindable for `unbindable`, then cannot bind anything).
fn root_tags(rt: &Runtime, mode: &str) -> (i32, String) {
    let mut b = bundle_with(&[
        "awk",
        "$5 == \"/\" { for (i = 7; $i != \"-\"; i++) { split($i, t, \":\"); print t[1] } }",
        "/proc/self/mountinfo",
    ]);
    b.config["linux"]["rootfsPropagation"] = json!(mode);
    b.write();
    let (code, out, err) = rt.run(&b);
    assert_eq!(code, 0, "{} {mode}: {err}", rt.name);
    (code, out)
}

#[test]
fn rootfs_propagation_applies_to_the_container_root() {
    let modes = ["shared", "slave", "private"];
    let [crun, nestbox] = in_mount_namespace(CgroupLayout::V1, move || {
        [Runtime::crun(), Runtime::nestbox()].map(|rt| {
            let seen = modes.map(|m| propagation_seen(&rt, m));
            (seen, root_tags(&rt, "unbindable"))
        })
    });
    let tags = |t: &[&str]| t.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    for (i, mode) in modes.iter().enumerate() {
        if *mode != "slave" {
            assert_eq!(nestbox.0[i], crun.0[i], "{mode}: nestbox differs from crun");
        }
    }
    assert_eq!(nestbox.0[0], (tags(&["shared"]), false, true), "shared");
    assert_eq!(nestbox.0[2], (tags(&[]), false, true), "private");
    assert_eq!(nestbox.1, crun.1, "unbindable: nestbox differs from crun");
    assert_eq!(nestbox.1, (0, "unbindable\n".to_string()), "unbindable");
    // The spec: "slave: the rootfs mount receives propagation events from the host (e.g. if
    // something is mounted on the host it will also appear in the container) but not the
    // other way around". crun leaves the root private here (no tag, the host's mount unseen).
    assert_eq!(nestbox.0[1], (tags(&["master"]), true, true), "slave");
    assert_eq!(crun.0[1], (tags(&[]), false, true), "crun's slave");
}

// ---------------------------------------------------------------------------------------------
// 5. Hooks
// ---------------------------------------------------------------------------------------------

/// What the hooks of one `run` saw: each recording hook's (status, pid relation) in order of
/// name, the container's command line as poststart saw it, and the run's exit code.
#[derive(Debug, PartialEq)]
struct HooksSeen {
    code: i32,
    states: Vec<(String, String, String)>,
    poststart_cmdline: String,
}

fn hooks_seen(rt: &Runtime) -> HooksSeen {
    let out = TempDir::new("hk-out");
    let d = out.path().display().to_string();
    let record = |file: &str| {
        json!({"path": "/bin/sh", "args": ["sh", "-c", format!(
            "cat > {file}.json; pid=$(sed -n 's/.*\"pid\": *\\([0-9]*\\).*/\\1/p' {file}.json); \
             tr '\\0' ' ' < /proc/$pid/cmdline > {file}.cmdline 2>/dev/null; true"
        )]})
    };
    let fail = json!({"path": "/bin/sh", "args": ["sh", "-c", "exit 3"]});
    let mut b = bundle_with(&["sleep", "0.5"]);
    bind_rw(&mut b, out.path(), "/out");
    b.config["hooks"] = json!({
        "prestart": [record(&format!("{d}/prestart"))],
        "createRuntime": [record(&format!("{d}/createRuntime"))],
        // Before pivot_root: host paths still resolve.
        "createContainer": [record(&format!("{d}/createContainer"))],
        // After pivot_root: inside the container.
        "startContainer": [record("/out/startContainer")],
        "poststart": [fail.clone(), record(&format!("{d}/poststart"))],
        "poststop": [fail, record(&format!("{d}/poststop"))],
    });
    b.write();
    let (code, _, err) = rt.run(&b);
    assert_eq!(code, 0, "{}: {err}", rt.name);
    let read = |name: &str| std::fs::read_to_string(out.path().join(name)).unwrap_or_default();
    let host_pid = read("prestart.json")
        .parse::<serde_json::Value>()
        .ok()
        .and_then(|s| s["pid"].as_i64())
        .unwrap_or(-1);
    let states = [
        "prestart",
        "createRuntime",
        "createContainer",
        "startContainer",
        "poststart",
        "poststop",
    ]
    .iter()
    .map(|name| {
        let state: serde_json::Value =
            serde_json::from_str(&read(&format!("{name}.json"))).unwrap_or_default();
        let pid = match state["pid"].as_i64() {
            None => "none".to_string(),
            Some(0) => "0".to_string(),
            Some(1) => "1".to_string(),
            Some(p) if p == host_pid => "host".to_string(),
            Some(p) => format!("other {p}"),
        };
        (
            name.to_string(),
            state["status"]
                .as_str()
                .unwrap_or("did not run")
                .to_string(),
            pid,
        )
    })
    .collect();
    HooksSeen {
        code,
        states,
        poststart_cmdline: read("poststart.cmdline"),
    }
}

#[test]
fn hooks_run_after_failures_poststart_after_exec_with_spec_statuses() {
    let [crun, nestbox] = in_mount_namespace(CgroupLayout::V1, || {
        [Runtime::crun(), Runtime::nestbox()].map(|rt| hooks_seen(&rt))
    });
    let s = |name: &str, status: &str, pid: &str| (name.into(), status.into(), pid.into());
    assert_eq!(
        nestbox,
        HooksSeen {
            code: 0,
            states: vec![
                s("prestart", "created", "host"),
                s("createRuntime", "created", "host"),
                s("createContainer", "created", "1"),
                s("startContainer", "created", "1"),
                s("poststart", "running", "host"),
                s("poststop", "stopped", "0"),
            ],
            poststart_cmdline: "sleep 0.5 ".into(),
        },
        "crun: {crun:?}"
    );
    // Where crun follows the spec: the runtime-side hooks, the failures passed over, the
    // process already executed when poststart runs. (crun's startContainer says "starting",
    // a status the spec does not define for it, with pid 0.)
    let runtime_side = |h: &HooksSeen| {
        let mut st = h.states.clone();
        st.retain(|(n, _, _)| !n.ends_with("Container"));
        (h.code, st, h.poststart_cmdline.clone())
    };
    assert_eq!(runtime_side(&nestbox), runtime_side(&crun));
}

// ---------------------------------------------------------------------------------------------
// 6. Device cgroup rules in the config's order
// ---------------------------------------------------------------------------------------------

#[test]
fn v1_devices_list_follows_the_config_order() {
    let bundle = || {
        let mut b = bundle_with(&["cat", "/sys/fs/cgroup/devices/devices.list"]);
        b.config["linux"]["resources"]["devices"] = json!([
            {"allow": false, "access": "rwm"},
            {"allow": true, "type": "c", "major": 10, "minor": 229, "access": "rwm"}
        ]);
        b.write();
        b
    };
    let [crun, nestbox_v1] = in_mount_namespace(CgroupLayout::V1, move || {
        [Runtime::crun(), Runtime::nestbox()].map(|rt| rt.run(&bundle()))
    });
    let nestbox_host = in_mount_namespace(CgroupLayout::Host, move || {
        Runtime::nestbox().run(&bundle())
    });
    assert_eq!(crun.0, 0, "crun: {}", crun.2);
    for (layout, nb) in [("v1", nestbox_v1), ("host", nestbox_host)] {
        assert_eq!(
            (nb.0, &nb.1),
            (0, &crun.1),
            "{layout}: nestbox differs from crun: {}",
            nb.2
        );
    }
    let first: Vec<&str> = crun.1.lines().take(2).collect();
    assert_eq!(first, ["c 10:229 rwm", "c *:* m"], "{}", crun.1);
}

/// Opening /dev/fuse for reading and for writing under an order-sensitive rule list.
fn fuse_access(rt: &Runtime, rules: serde_json::Value) -> (i32, String) {
    let mut b = bundle_with(&[
        "sh",
        "-c",
        "(exec 3< /dev/fuse) 2>/dev/null && echo r; (exec 3> /dev/fuse) 2>/dev/null && echo w; \
         (exec 3> /dev/null) && echo null",
    ]);
    b.config["linux"]["devices"] =
        json!([{"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229, "fileMode": 438}]);
    b.config["linux"]["resources"]["devices"] = rules;
    b.write();
    let (code, out, err) = rt.run(&b);
    assert_eq!(code, 0, "{}: {err}", rt.name);
    (code, out)
}

#[test]
fn v2_device_program_applies_the_rules_in_order() {
    let cases = [
        // Allowed, then write taken back: read only.
        (
            json!([
                {"allow": false, "access": "rwm"},
                {"allow": true, "type": "c", "major": 10, "minor": 229, "access": "rwm"},
                {"allow": false, "type": "c", "major": 10, "minor": 229, "access": "w"}
            ]),
            "r\nnull\n",
        ),
        // A later deny-all resets what came before; the default devices still follow.
        (
            json!([
                {"allow": true, "type": "c", "major": 10, "minor": 229, "access": "rwm"},
                {"allow": false, "access": "rwm"}
            ]),
            "null\n",
        ),
    ];
    for (rules, expect) in cases {
        let r = rules.clone();
        let [runc, nestbox] = in_mount_namespace(CgroupLayout::V2, move || {
            [Runtime::runc(), Runtime::nestbox()].map(|rt| fuse_access(&rt, r.clone()))
        });
        assert_eq!(nestbox, runc, "{rules}: nestbox differs from runc");
        assert_eq!(nestbox, (0, expect.to_string()), "{rules}");
    }
}
