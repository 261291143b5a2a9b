//! Behaviour of `nestbox` against `runc` on the same bundles: every case runs under both
//! runtimes and asserts equal outcomes plus the expected absolute value.
//!
//! Run after `cargo build --release -p nestbox-runtime`:
//! `cargo test -p nestbox-tests --test runtime_behaviour -- --test-threads=2`

use std::fs::File;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

use nestbox_tests::{bin, recv_fd, require_root, unique, wait_until, Bundle, Runtime, TempDir};
use serde_json::{json, Value};

fn runtimes() -> [Runtime; 2] {
    require_root();
    [Runtime::runc(), Runtime::nestbox()]
}

/// Run the same bundle under both runtimes; assert equal (code, stdout); return runc's.
fn run_both(bundle: &Bundle) -> (i32, String) {
    let [runc, nestbox] = runtimes();
    let (rc, rout, rerr) = runc.run(bundle);
    let (nc, nout, nerr) = nestbox.run(bundle);
    assert_eq!(
        (nc, &nout),
        (rc, &rout),
        "nestbox differs from runc\nnestbox stderr: {nerr}\nrunc stderr: {rerr}"
    );
    (rc, rout)
}

fn bundle_with(args: &[&str]) -> Bundle {
    let mut b = Bundle::new();
    b.set_args(args);
    b.write();
    b
}

#[test]
fn stdout_and_exit_code_pass_through() {
    let b = bundle_with(&["sh", "-c", "echo hello; echo oops >&2; exit 3"]);
    assert_eq!(run_both(&b), (3, "hello\n".into()));
}

#[test]
fn run_returns_128_plus_signal_when_killed() {
    for rt in runtimes() {
        let mut b = bundle_with(&["sleep", "100"]);
        b.config["process"]["terminal"] = json!(false);
        b.write();
        let id = unique("sig");
        let mut child = rt
            .cmd(&["run", "--bundle", b.path().to_str().unwrap(), &id])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn run");
        assert!(
            wait_until(10, || rt.status(&id) == "running"),
            "{}: container never ran",
            rt.name
        );
        let (code, _, err) = rt.out(&["kill", &id, "KILL"]);
        assert_eq!(code, 0, "{}: kill: {err}", rt.name);
        let status = child.wait().expect("wait run");
        assert_eq!(status.code(), Some(137), "{}: run exit", rt.name);
    }
}

#[test]
fn hostname_is_set() {
    let mut b = bundle_with(&["hostname"]);
    b.config["hostname"] = json!("nbhost");
    b.write();
    assert_eq!(run_both(&b), (0, "nbhost\n".into()));
}

#[test]
fn readonly_root_refuses_writes() {
    let b = bundle_with(&[
        "sh",
        "-c",
        "touch /x 2>/dev/null; echo $?; touch /tmp/y 2>/dev/null; echo $?",
    ]);
    // /tmp is part of the read-only root in the busybox bundle too.
    assert_eq!(run_both(&b), (0, "1\n1\n".into()));
}

#[test]
fn masked_paths_are_unreadable() {
    let b = bundle_with(&[
        "sh",
        "-c",
        "wc -c < /proc/keys; wc -c < /proc/timer_list; ls -A /sys/firmware | wc -l; echo x > /proc/sys/kernel/hostname 2>/dev/null; echo $?",
    ]);
    // Files read as /dev/null, directories as an empty tmpfs, /proc/sys is read-only.
    assert_eq!(run_both(&b), (0, "0\n0\n0\n1\n".into()));
}

#[test]
fn reduced_capability_set_shows_in_capeff() {
    let mut b = bundle_with(&["sh", "-c", "grep -E '^Cap(Eff|Prm|Bnd)' /proc/self/status"]);
    let caps = json!(["CAP_KILL", "CAP_CHOWN"]);
    b.config["process"]["capabilities"] = json!({"bounding": caps, "effective": caps, "permitted": caps, "inheritable": [], "ambient": []});
    b.write();
    let (code, out) = run_both(&b);
    assert_eq!(code, 0);
    // CAP_CHOWN = bit 0, CAP_KILL = bit 5.
    for set in ["CapPrm", "CapEff", "CapBnd"] {
        assert!(out.contains(&format!("{set}:\t0000000000000021")), "{out}");
    }
}

#[test]
fn rlimits_apply() {
    let mut b = bundle_with(&["sh", "-c", "ulimit -n; ulimit -Hn"]);
    b.config["process"]["rlimits"] = json!([{"type": "RLIMIT_NOFILE", "soft": 123, "hard": 456}]);
    b.write();
    assert_eq!(run_both(&b), (0, "123\n456\n".into()));
}

#[test]
fn user_group_and_additional_groups() {
    let mut b = bundle_with(&["id"]);
    b.config["process"]["user"] = json!({"uid": 1000, "gid": 1000, "additionalGids": [3000]});
    b.write();
    let (code, out) = run_both(&b);
    assert_eq!(code, 0);
    assert!(
        out.starts_with("uid=1000(user) gid=1000(user) groups="),
        "{out}"
    );
    assert!(out.contains("3000"), "{out}");
}

#[test]
fn env_and_cwd() {
    let mut b = bundle_with(&["sh", "-c", "pwd; env | sort"]);
    b.config["process"]["cwd"] = json!("/home/user");
    b.config["process"]["env"] = json!(["PATH=/bin", "FOO=bar baz"]);
    b.write();
    let (code, out) = run_both(&b);
    assert_eq!(code, 0);
    assert!(out.starts_with("/home/user\n"), "{out}");
    assert!(
        out.contains("FOO=bar baz\n") && out.contains("HOME=/root\n"),
        "{out}"
    );
}

#[test]
fn umask_applies() {
    let mut b = bundle_with(&["sh", "-c", "umask"]);
    b.config["process"]["user"]["umask"] = json!(0o027);
    b.write();
    assert_eq!(run_both(&b), (0, "0027\n".into()));
}

#[test]
fn memory_limit_is_visible_in_the_container_cgroup() {
    let mut b = bundle_with(&["cat", "/sys/fs/cgroup/memory/memory.limit_in_bytes"]);
    b.config["linux"]["resources"]["memory"] = json!({"limit": 33554432});
    b.write();
    assert_eq!(run_both(&b), (0, "33554432\n".into()));
}

#[test]
fn memory_limit_is_enforced_by_oom_kill() {
    // 16 MiB limit (swap capped too); dd wants a 64 MiB buffer: the OOM killer ends it.
    let mut b = bundle_with(&["dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"]);
    b.config["linux"]["resources"]["memory"] = json!({"limit": 16777216, "swap": 16777216});
    b.write();
    let (code, _) = run_both(&b);
    assert_eq!(code, 137);
}

#[test]
fn pids_limit_is_enforced() {
    let mut b = bundle_with(&[
        "sh",
        "-c",
        "cat /sys/fs/cgroup/pids/pids.max; sh -c 'for i in 1 2 3 4 5 6 7 8; do sleep 2 & done' 2>/dev/null; echo inner=$?",
    ]);
    b.config["linux"]["resources"]["pids"] = json!({"limit": 4});
    b.write();
    // The inner shell cannot fork its 4th sleep (sh, sh and 2 sleeps fill the limit) and
    // exits 2 ("can't fork").
    assert_eq!(run_both(&b), (0, "4\ninner=2\n".into()));
}

#[test]
fn state_goes_created_running_stopped() {
    for rt in runtimes() {
        let b = bundle_with(&["sleep", "100"]);
        let id = unique("st");
        let (code, err) = rt.create(&b, &id);
        assert_eq!(code, 0, "{}: create: {err}", rt.name);
        let st = rt.state(&id).expect("state after create");
        assert_eq!(st["status"], "created", "{}", rt.name);
        assert!(st["pid"].as_i64().unwrap_or(0) > 0, "{}", rt.name);
        assert_eq!(st["id"], id.as_str());
        let keys: Vec<&str> = st.as_object().unwrap().keys().map(String::as_str).collect();
        for k in [
            "ociVersion",
            "id",
            "pid",
            "status",
            "bundle",
            "rootfs",
            "created",
            "owner",
        ] {
            assert!(keys.contains(&k), "{}: state lacks {k}: {st}", rt.name);
        }
        assert_eq!(rt.out(&["start", &id]).0, 0, "{}: start", rt.name);
        assert_eq!(rt.status(&id), "running", "{}", rt.name);
        assert_eq!(rt.out(&["kill", &id, "9"]).0, 0, "{}: kill 9", rt.name);
        assert!(
            wait_until(10, || rt.status(&id) == "stopped"),
            "{}: never stopped",
            rt.name
        );
        assert_eq!(rt.state(&id).unwrap()["pid"], 0, "{}", rt.name);
        let (code, _, err) = rt.out(&["kill", &id, "KILL"]);
        assert_eq!(code, 1, "{}", rt.name);
        assert!(err.contains("not running"), "{}: {err}", rt.name);
        assert_eq!(rt.out(&["delete", &id]).0, 0, "{}: delete", rt.name);
        assert_eq!(rt.status(&id), "absent", "{}", rt.name);
    }
}

#[test]
fn kill_all_with_named_signal_stops_every_process() {
    for rt in runtimes() {
        let b = bundle_with(&["sh", "-c", "sleep 100 & sleep 100"]);
        let id = unique("ka");
        assert_eq!(rt.create(&b, &id).0, 0, "{}", rt.name);
        assert_eq!(rt.out(&["start", &id]).0, 0, "{}", rt.name);
        let (code, _, err) = rt.out(&["kill", "--all", &id, "SIGKILL"]);
        assert_eq!(code, 0, "{}: {err}", rt.name);
        assert!(
            wait_until(10, || rt.status(&id) == "stopped"),
            "{}",
            rt.name
        );
        assert_eq!(rt.out(&["delete", &id]).0, 0, "{}", rt.name);
    }
}

#[test]
fn delete_force_removes_a_running_container() {
    for rt in runtimes() {
        let b = bundle_with(&["sleep", "100"]);
        let id = unique("df");
        assert_eq!(rt.create(&b, &id).0, 0, "{}", rt.name);
        assert_eq!(rt.out(&["start", &id]).0, 0, "{}", rt.name);
        let (code, _, err) = rt.out(&["delete", &id]);
        assert_eq!(
            code, 1,
            "{}: delete of a running container must fail",
            rt.name
        );
        assert!(err.contains("running"), "{}: {err}", rt.name);
        let pid = rt.state(&id).unwrap()["pid"].as_i64().unwrap();
        let (code, _, err) = rt.out(&["delete", "--force", &id]);
        assert_eq!(code, 0, "{}: {err}", rt.name);
        assert_eq!(rt.status(&id), "absent", "{}", rt.name);
        assert!(
            !Path::new(&format!("/proc/{pid}/cmdline")).exists()
                || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .map(|s| s.contains(") Z"))
                    .unwrap_or(true),
            "{}: init still alive",
            rt.name
        );
        assert!(
            !rt.root.path().join(&id).exists(),
            "{}: state dir left",
            rt.name
        );
    }
}

#[test]
fn list_shows_containers_as_json() {
    for rt in runtimes() {
        let b = bundle_with(&["sleep", "100"]);
        let (a, z) = (unique("la"), unique("lz"));
        assert_eq!(rt.create(&b, &a).0, 0, "{}", rt.name);
        assert_eq!(rt.create(&b, &z).0, 0, "{}", rt.name);
        assert_eq!(rt.out(&["start", &z]).0, 0, "{}", rt.name);
        let (code, out, _) = rt.out(&["list", "--format", "json"]);
        assert_eq!(code, 0);
        let list: Value = serde_json::from_str(&out).expect("json");
        let mut seen: Vec<(String, String)> = list
            .as_array()
            .expect("array")
            .iter()
            .map(|c| {
                (
                    c["id"].as_str().unwrap().to_owned(),
                    c["status"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        seen.sort();
        assert_eq!(
            seen,
            vec![(a.clone(), "created".into()), (z.clone(), "running".into())],
            "{}",
            rt.name
        );
        let (_, table, _) = rt.out(&["list"]);
        assert!(table.starts_with("ID"), "{}: {table}", rt.name);
        for id in [&a, &z] {
            assert_eq!(rt.out(&["delete", "--force", id]).0, 0, "{}", rt.name);
        }
        let (_, out, _) = rt.out(&["list", "--format", "json"]);
        assert_eq!(out.trim(), "null", "{}", rt.name);
    }
}

#[test]
fn pid_file_is_written_before_create_returns() {
    for rt in runtimes() {
        let b = bundle_with(&["sleep", "100"]);
        let id = unique("pf");
        let pid_file = rt.root.path().join(format!("{id}.pid"));
        let status = rt
            .cmd(&[
                "create",
                "--bundle",
                b.path().to_str().unwrap(),
                "--pid-file",
                pid_file.to_str().unwrap(),
                &id,
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("create");
        assert!(status.success(), "{}", rt.name);
        let text = std::fs::read_to_string(&pid_file).expect("pid file");
        assert!(!text.ends_with('\n'), "{}: trailing newline", rt.name);
        let pid: i64 = text.parse().expect("decimal pid");
        assert_eq!(
            rt.state(&id).unwrap()["pid"].as_i64(),
            Some(pid),
            "{}",
            rt.name
        );
        assert_eq!(rt.out(&["delete", "--force", &id]).0, 0);
    }
}

#[test]
fn single_dash_long_flags_like_go_runc() {
    let nb = Runtime::nestbox();
    let b = bundle_with(&["echo", "dash"]);
    let id = unique("sd");
    let (code, out, err) = nestbox_tests::run(
        Command::new(&nb.bin)
            .arg(format!("-root={}", nb.root.path().display()))
            .args(["-log-format", "json", "run", "-no-subreaper", "-bundle"])
            .arg(b.path())
            .arg(&id),
    );
    assert_eq!((code, out.as_str()), (0, "dash\n"), "{err}");
}

#[test]
fn version_names_runtime_and_spec() {
    let (code, out, _) = nestbox_tests::run(Command::new(bin("nestbox")).arg("--version"));
    assert_eq!(code, 0);
    let mut lines = out.lines();
    assert!(
        lines.next().unwrap_or("").starts_with("nestbox version "),
        "{out}"
    );
    assert!(lines.next().unwrap_or("").starts_with("spec: 1."), "{out}");
}

#[test]
fn user_namespace_maps_ids() {
    let mut b = bundle_with(&[
        "sh",
        "-c",
        "cat /proc/self/uid_map /proc/self/gid_map; id; stat -c %u:%g /bin/busybox",
    ]);
    b.config["linux"]["namespaces"]
        .as_array_mut()
        .unwrap()
        .push(json!({"type": "user"}));
    let map = json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
    b.config["linux"]["uidMappings"] = map.clone();
    b.config["linux"]["gidMappings"] = map;
    b.write();
    let (code, out) = run_both(&b);
    assert_eq!(code, 0);
    let squashed: Vec<String> = out
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    // Host root owns the rootfs: unmapped inside, so it shows as the overflow id.
    assert_eq!(
        squashed,
        [
            "0 100000 65536",
            "0 100000 65536",
            "uid=0(root) gid=0(root)",
            "65534:65534"
        ]
    );
}

#[test]
fn terminal_through_console_socket() {
    use std::io::Read;
    let mut outputs = Vec::new();
    for rt in runtimes() {
        let mut b = bundle_with(&[
            "sh",
            "-c",
            "tty; [ -t 0 ] && [ -t 1 ] && echo tty-stdio; stat -c %t:%T /dev/console",
        ]);
        b.config["process"]["terminal"] = json!(true);
        b.write();
        let sock_path = rt.root.path().join("console.sock");
        let listener =
            std::os::unix::net::UnixListener::bind(&sock_path).expect("bind console socket");
        let id = unique("tty");
        let status = rt
            .cmd(&[
                "create",
                "--bundle",
                b.path().to_str().unwrap(),
                "--console-socket",
                sock_path.to_str().unwrap(),
                &id,
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("create");
        assert!(
            status.success(),
            "{}: create with a console socket",
            rt.name
        );
        let (stream, _) = listener.accept().expect("accept");
        let (name, master) = recv_fd(&stream);
        assert!(
            name.starts_with("/dev/"), // runc sends /dev/ptmx, nestbox /dev/pts/N,
            "{}: payload {name:?}",
            rt.name
        );
        assert_eq!(rt.out(&["start", &id]).0, 0, "{}: start", rt.name);
        let mut master = File::from(master);
        let mut out = Vec::new();
        // Reading the master ends with EIO once the container's side is closed.
        let _ = master.read_to_end(&mut out);
        let _ = rt.out(&["delete", "--force", &id]);
        outputs.push((rt.name, String::from_utf8_lossy(&out).into_owned()));
    }
    assert_eq!(outputs[0].1, outputs[1].1, "{outputs:?}");
    assert!(
        outputs[1]
            .1
            .starts_with("/dev/pts/0\r\ntty-stdio\r\n88:0\r\n"),
        "{outputs:?}"
    );
}

#[test]
fn preserve_fds_passes_extra_fds() {
    use std::io::Read;
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    for rt in runtimes() {
        let b = bundle_with(&[
            "sh",
            "-c",
            "echo via-fd3 >&3; ls /proc/self/fd | sort -n | tr '\\n' ' '",
        ]);
        let (mut reader, writer) = std::io::pipe().expect("pipe");
        let wfd = writer.as_raw_fd();
        let id = unique("pf");
        let mut cmd = rt.cmd(&[
            "run",
            "--preserve-fds",
            "1",
            "--bundle",
            b.path().to_str().unwrap(),
            &id,
        ]);
        // SAFETY: only dup2 (async-signal-safe) between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::dup2(wfd, 3) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let (code, out, err) = nestbox_tests::run(&mut cmd);
        drop(writer);
        let mut got = String::new();
        reader.read_to_string(&mut got).expect("read pipe");
        assert_eq!(code, 0, "{}: {err}", rt.name);
        assert_eq!(got, "via-fd3\n", "{}", rt.name);
        // Only stdio, the preserved fd and ls's own directory fd.
        assert_eq!(out.trim(), "0 1 2 3 4", "{}", rt.name);
    }
}

#[test]
fn no_pivot_runs_the_container() {
    for rt in runtimes() {
        let b = bundle_with(&["sh", "-c", "echo pivotless; ls /"]);
        let id = unique("np");
        let (code, out, err) = rt.out(&[
            "run",
            "--no-pivot",
            "--bundle",
            b.path().to_str().unwrap(),
            &id,
        ]);
        assert_eq!(code, 0, "{}: {err}", rt.name);
        assert!(
            out.starts_with("pivotless\n") && out.contains("bin\n"),
            "{}: {out}",
            rt.name
        );
    }
}

#[test]
fn network_namespace_joined_by_path() {
    use std::os::unix::fs::MetadataExt;
    let netns = nestbox_tests::NetNs::new("rtn");
    let inode = std::fs::metadata(netns.path()).expect("netns file").ino();
    let mut b = bundle_with(&["readlink", "/proc/self/ns/net"]);
    for ns in b.config["linux"]["namespaces"].as_array_mut().unwrap() {
        if ns["type"] == "network" {
            ns["path"] = json!(netns.path());
        }
    }
    b.write();
    assert_eq!(run_both(&b), (0, format!("net:[{inode}]\n")));
}

#[test]
fn hooks_run_at_their_points_with_state_on_stdin() {
    let mut results = Vec::new();
    for rt in runtimes() {
        let dir = TempDir::new("hooks");
        let d = dir.path().display().to_string();
        let save = |name: &str| json!({"path": "/bin/sh", "args": ["sh", "-c", format!("cat > {d}/{name}.json")]});
        let mut b = bundle_with(&["cat", "/dev/shm/started"]);
        b.config["hooks"] = json!({
            "prestart": [save("prestart")],
            "createRuntime": [save("createRuntime")],
            "startContainer": [{"path": "/bin/sh", "args": ["sh", "-c", "echo started > /dev/shm/started"]}],
            "poststart": [save("poststart")],
            "poststop": [save("poststop")],
        });
        b.write();
        let (code, out, err) = rt.run(&b);
        assert_eq!((code, out.as_str()), (0, "started\n"), "{}: {err}", rt.name);
        let mut seen = Vec::new();
        for name in ["prestart", "createRuntime", "poststart", "poststop"] {
            let text = std::fs::read_to_string(dir.path().join(format!("{name}.json")))
                .unwrap_or_else(|e| panic!("{}: {name} hook did not run: {e}", rt.name));
            let state: Value = serde_json::from_str(&text).expect("state JSON on stdin");
            assert_eq!(
                state["bundle"],
                b.path().to_str().unwrap(),
                "{}: {name}",
                rt.name
            );
            seen.push((name, state["status"].as_str().unwrap_or("").to_owned()));
        }
        results.push(seen);
    }
    // Statuses may be named differently between runtimes; each hook ran with valid state.
    assert_eq!(results[0].len(), results[1].len());
}

#[test]
fn failing_prestart_hook_fails_create_and_cleans_up() {
    for rt in runtimes() {
        let mut b = bundle_with(&["true"]);
        b.config["hooks"] = json!({"prestart": [{"path": "/bin/false"}]});
        b.write();
        let id = unique("hf");
        let (code, err) = rt.create(&b, &id);
        assert_ne!(code, 0, "{}: create must fail", rt.name);
        assert!(
            err.contains("prestart") || err.contains("hook"),
            "{}: {err}",
            rt.name
        );
        assert_eq!(rt.status(&id), "absent", "{}", rt.name);
    }
}

#[test]
fn pause_binary_exits_zero_on_sigterm_as_pid_1() {
    for rt in runtimes() {
        let b = bundle_with(&["/bin/pause"]);
        std::fs::copy(bin("nestbox-pause"), b.rootfs().join("bin/pause")).expect("copy pause");
        let id = unique("pz");
        let mut child = rt
            .cmd(&["run", "--bundle", b.path().to_str().unwrap(), &id])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn run");
        assert!(
            wait_until(10, || rt.status(&id) == "running"),
            "{}",
            rt.name
        );
        // Until pause has blocked its signals, a SIGTERM to a pid-namespace init without a
        // handler is dropped: repeat it until the process exits.
        let mut status = None;
        for _ in 0..100 {
            let _ = rt.out(&["kill", &id, "TERM"]);
            std::thread::sleep(std::time::Duration::from_millis(100));
            if let Some(s) = child.try_wait().expect("try_wait") {
                status = Some(s);
                break;
            }
        }
        let status = status.unwrap_or_else(|| {
            let _ = child.kill();
            panic!("{}: pause did not exit on SIGTERM", rt.name)
        });
        assert_eq!(status.code(), Some(0), "{}: pause exit", rt.name);
    }
}

#[test]
fn container_starts_with_no_blocked_signals_and_sigpipe_not_ignored() {
    // The ignored set partly comes from the caller (ignored signals survive exec); what the
    // runtime must not add is a blocked mask or an ignored SIGPIPE (Rust ignores it).
    let b = bundle_with(&[
        "sh",
        "-c",
        "grep SigBlk /proc/self/status; ign=$(grep SigIgn /proc/self/status | cut -f2); echo $(( 0x$ign & 0x1000 ))",
    ]);
    assert_eq!(run_both(&b), (0, "SigBlk:\t0000000000000000\n0\n".into()));
}

#[test]
fn pause_resume_and_ps() {
    let nb = Runtime::nestbox();
    let b = bundle_with(&["sh", "-c", "sleep 100 & sleep 100"]);
    let id = unique("pr");
    assert_eq!(nb.create(&b, &id).0, 0);
    assert_eq!(nb.out(&["start", &id]).0, 0);
    let mut last = String::new();
    let ok = wait_until(10, || {
        let (_, out, err) = nb.out(&["ps", "--format", "json", &id]);
        last = format!("{out}{err}");
        serde_json::from_str::<Vec<i32>>(&out)
            .map(|p| p.len() == 2)
            .unwrap_or(false)
    });
    // sh and the last sleep (exec'd by sh); the first sleep was forked.
    assert!(ok, "two processes expected: {last}");
    assert_eq!(nb.out(&["pause", &id]).0, 0);
    assert_eq!(nb.status(&id), "paused");
    assert_eq!(nb.out(&["resume", &id]).0, 0);
    assert_eq!(nb.status(&id), "running");
    let (code, table, _) = nb.out(&["ps", &id, ""]);
    assert_eq!(code, 0);
    assert!(
        table.starts_with("UID") && table.matches("sleep 100").count() == 2,
        "{table}"
    );
    assert_eq!(nb.out(&["delete", "--force", &id]).0, 0);
}

#[test]
fn exec_runs_a_process_in_the_running_container() {
    let mut results = Vec::new();
    for rt in runtimes() {
        let mut b = bundle_with(&["sleep", "100"]);
        b.config["hostname"] = json!("exechost");
        b.write();
        let id = unique("ex");
        assert_eq!(rt.create(&b, &id).0, 0, "{}", rt.name);
        assert_eq!(rt.out(&["start", &id]).0, 0, "{}", rt.name);
        let plain = rt.out(&[
            "exec",
            &id,
            "sh",
            "-c",
            "hostname; cat /proc/1/cmdline | tr '\\0' ' '; echo; exit 5",
        ]);
        let flags = rt.out(&[
            "exec",
            "--user",
            "1000:1000",
            "--env",
            "FOO=bar",
            "--cwd",
            "/tmp",
            &id,
            "sh",
            "-c",
            "id; pwd; echo $FOO",
        ]);
        let pid_file = rt.root.path().join("exec.pid");
        let status = rt
            .cmd(&[
                "exec",
                "--detach",
                "--pid-file",
                pid_file.to_str().unwrap(),
                &id,
                "sleep",
                "30",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("exec -d");
        assert!(status.success(), "{}: exec --detach", rt.name);
        let pid: i32 = std::fs::read_to_string(&pid_file)
            .expect("pid file")
            .parse()
            .expect("pid");
        let (_, ps, _) = rt.out(&["ps", "--format", "json", &id]);
        let pids: Vec<i32> = serde_json::from_str(&ps).expect("ps json");
        assert!(
            pids.contains(&pid),
            "{}: exec'd pid {pid} not in {pids:?}",
            rt.name
        );
        assert_eq!(rt.out(&["delete", "--force", &id]).0, 0, "{}", rt.name);
        let (code, _, err) = rt.out(&["exec", &id, "true"]);
        assert_ne!(code, 0, "{}: exec into a deleted container", rt.name);
        assert!(
            err.contains("does not exist") || err.contains("not exist"),
            "{}: {err}",
            rt.name
        );
        results.push(((plain.0, plain.1), (flags.0, flags.1)));
    }
    assert_eq!(results[0], results[1]);
    assert_eq!(results[1].0, (5, "exechost\nsleep 100 \n".to_string()));
    assert_eq!(
        results[1].1,
        (0, "uid=1000(user) gid=1000(user)\n/tmp\nbar\n".to_string())
    );
}

#[test]
fn update_changes_limits_of_a_running_container() {
    let mut results = Vec::new();
    for rt in runtimes() {
        let b = bundle_with(&["sleep", "100"]);
        let id = unique("up");
        assert_eq!(rt.create(&b, &id).0, 0, "{}", rt.name);
        assert_eq!(rt.out(&["start", &id]).0, 0, "{}", rt.name);
        let (code, _, err) = rt.out(&["update", "--memory", "64m", "--pids-limit", "10", &id]);
        assert_eq!(code, 0, "{}: update: {err}", rt.name);
        let read = rt.out(&[
            "exec",
            &id,
            "cat",
            "/sys/fs/cgroup/memory/memory.limit_in_bytes",
            "/sys/fs/cgroup/pids/pids.max",
        ]);
        assert_eq!(rt.out(&["delete", "--force", &id]).0, 0, "{}", rt.name);
        results.push((read.0, read.1));
    }
    assert_eq!(results[0], results[1]);
    assert_eq!(results[1], (0, "67108864\n10\n".to_string()));
}

#[test]
fn personality_io_priority_and_scheduler_apply() {
    // runc 1.1 predates ioPriority and scheduler: nestbox only, absolute values.
    let nb = Runtime::nestbox();
    let mut b = bundle_with(&[
        "sh",
        "-c",
        "uname -m; cut -d' ' -f19 /proc/self/stat; ionice -p $$",
    ]);
    b.config["linux"]["personality"] = json!({"domain": "LINUX32"});
    b.config["process"]["ioPriority"] = json!({"class": "IOPRIO_CLASS_BE", "priority": 6});
    b.config["process"]["scheduler"] = json!({"policy": "SCHED_BATCH", "nice": 7});
    b.write();
    let (code, out, err) = nb.run(&b);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "i686", "{out}");
    assert_eq!(lines[1], "7", "{out}");
    assert!(
        lines
            .get(2)
            .is_some_and(|l| l.contains("best-effort") && l.contains('6')),
        "{out}"
    );
}

#[test]
fn run_with_terminal_and_no_console_socket_relays_the_pty() {
    // runc's foreground tty mode needs a real tty on stdin; nestbox relays from any stdin.
    let nb = Runtime::nestbox();
    let mut b = bundle_with(&["sh", "-c", "tty; echo hi; exit 4"]);
    b.config["process"]["terminal"] = json!(true);
    b.write();
    let (code, out, err) = nb.run(&b);
    assert_eq!((code, out.as_str()), (4, "/dev/pts/0\r\nhi\r\n"), "{err}");
    let left: Vec<_> = std::fs::read_dir(nb.root.path())
        .expect("root")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "left in the state root: {left:?}");
}

#[test]
fn events_report_stats_and_oom() {
    for rt in runtimes() {
        let b = bundle_with(&["sleep", "100"]);
        let id = unique("ev");
        assert_eq!(rt.create(&b, &id).0, 0, "{}", rt.name);
        assert_eq!(rt.out(&["start", &id]).0, 0, "{}", rt.name);
        let (code, out, err) = rt.out(&["events", "--stats", &id]);
        assert_eq!(code, 0, "{}: {err}", rt.name);
        let ev: Value = serde_json::from_str(out.trim()).expect("one JSON record");
        assert_eq!(ev["type"], "stats", "{}", rt.name);
        assert_eq!(ev["id"], id.as_str(), "{}", rt.name);
        assert!(
            ev["data"]["memory"]["usage"]["usage"].as_u64().unwrap_or(0) > 0,
            "{}: {ev}",
            rt.name
        );
        assert!(
            ev["data"]["pids"]["current"].as_u64().unwrap_or(0) >= 1,
            "{}: {ev}",
            rt.name
        );
        assert_eq!(rt.out(&["delete", "--force", &id]).0, 0, "{}", rt.name);
    }
    // The OOM record (nestbox): a stream that ends when the container stops.
    let nb = Runtime::nestbox();
    let mut b = bundle_with(&[
        "sh",
        "-c",
        "sleep 1; dd if=/dev/zero of=/dev/null bs=64M count=1; sleep 1",
    ]);
    b.config["linux"]["resources"]["memory"] = json!({"limit": 16777216, "swap": 16777216});
    b.write();
    let id = unique("eo");
    assert_eq!(nb.create(&b, &id).0, 0);
    assert_eq!(nb.out(&["start", &id]).0, 0);
    let (code, out, err) = nb.out(&["events", "--interval", "200ms", &id]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.lines().any(|l| serde_json::from_str::<Value>(l)
            .map(|v| v["type"] == "oom")
            .unwrap_or(false)),
        "no oom record in {out}"
    );
    assert_eq!(nb.out(&["delete", &id]).0, 0);
}

#[test]
fn seccomp_notify_fd_goes_to_the_listener() {
    let nb = Runtime::nestbox();
    let sock = nb.root.path().join("agent.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).expect("bind agent socket");
    let agent = std::thread::spawn(move || {
        let (stream, _) = listener.accept().expect("accept");
        let (payload, fd) = recv_fd(&stream);
        // Closing the notify fd makes the pending and later notified syscalls fail (ENOSYS).
        drop(fd);
        payload
    });
    let mut b = bundle_with(&["sh", "-c", "mkdir /tmp/x 2>/dev/null; echo $?"]);
    b.config["root"]["readonly"] = json!(false);
    b.config["linux"]["seccomp"] = json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64"],
        "listenerPath": sock,
        "listenerMetadata": "meta-1",
        "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_NOTIFY"}]
    });
    b.write();
    let (code, out, err) = nb.run(&b);
    assert_eq!((code, out.as_str()), (0, "1\n"), "{err}");
    let payload: Value = serde_json::from_str(&agent.join().expect("agent")).expect("payload JSON");
    assert_eq!(payload["fds"], json!(["seccompFd"]), "{payload}");
    assert_eq!(payload["metadata"], "meta-1", "{payload}");
    assert!(payload["pid"].as_i64().unwrap_or(0) > 0, "{payload}");
    assert_eq!(
        payload["state"]["bundle"],
        b.path().to_str().unwrap(),
        "{payload}"
    );
}

/// nestbox keeps compiled seccomp programs in `<root>/@seccomp-cache/`, one per profile:
/// a second `run` and an `exec` with the same profile load the cached program and it is
/// still enforced; a different profile gets its own entry; `list` does not see the cache.
#[test]
fn seccomp_programs_are_cached_per_profile_and_still_enforced() {
    let nb = Runtime::nestbox();
    let cache = nb.root.path().join("@seccomp-cache");
    let deny = |b: &mut Bundle, names: &[&str], errno: u32| {
        b.config["linux"]["seccomp"] = json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"],
            "syscalls": [{"names": names, "action": "SCMP_ACT_ERRNO", "errnoRet": errno}]
        });
    };
    let entries = || std::fs::read_dir(&cache).map(|d| d.count()).unwrap_or(0);
    let mut b = bundle_with(&["sh", "-c", "cd /tmp && /bin/pwd -P; echo pwd=$?"]);
    deny(&mut b, &["getcwd"], 1);
    b.write();
    for round in 0..2 {
        let (code, out, err) = nb.run(&b);
        assert_eq!((code, out.as_str()), (0, "pwd=1\n"), "round {round}: {err}");
        assert_eq!(entries(), 1, "round {round}");
    }
    // exec into a container with the same profile: the cached program applies to it too.
    let mut sleeper = bundle_with(&["sleep", "1000"]);
    deny(&mut sleeper, &["getcwd"], 1);
    sleeper.write();
    let id = nb.start(&sleeper);
    let (code, out, err) = nb.out(&[
        "exec",
        &id,
        "sh",
        "-c",
        "cd /tmp && /bin/pwd -P; echo pwd=$?",
    ]);
    assert_eq!((code, out.as_str()), (0, "pwd=1\n"), "{err}");
    assert_eq!(entries(), 1);
    assert_eq!(nb.list_ids(), vec![id.clone()]);
    assert_eq!(nb.out(&["delete", "--force", &id]).0, 0);
    // Another profile: its own program, enforced as written.
    let mut other = bundle_with(&[
        "sh",
        "-c",
        "mkdir /tmp/d; echo mkdir=$?; cd /tmp && /bin/pwd",
    ]);
    other.config["root"]["readonly"] = json!(false);
    deny(&mut other, &["mkdir", "mkdirat"], 13);
    other.write();
    let (code, out, err) = nb.run(&other);
    assert_eq!((code, out.as_str()), (0, "mkdir=1\n/tmp\n"), "{err}");
    assert_eq!(entries(), 2);

    // A cache directory others may write is never used (nor written): the profile is
    // compiled and enforced all the same.
    let nb = Runtime::nestbox();
    let cache = nb.root.path().join("@seccomp-cache");
    std::fs::create_dir_all(&cache).expect("mkdir cache");
    let open = std::fs::Permissions::from_mode(0o777);
    std::fs::set_permissions(&cache, open).expect("chmod cache");
    let (code, out, err) = nb.run(&b);
    assert_eq!((code, out.as_str()), (0, "pwd=1\n"), "{err}");
    assert_eq!(std::fs::read_dir(&cache).map(|d| d.count()).unwrap_or(0), 0);
}

#[test]
fn devices_sysctl_oom_score_and_no_new_privs() {
    let mut b = bundle_with(&[
        "sh",
        "-c",
        "stat -c '%F %t:%T %a' /dev/fuse /dev/null /dev/urandom; cat /proc/sys/net/ipv4/ip_forward; cat /proc/self/oom_score_adj; grep NoNewPrivs /proc/self/status",
    ]);
    b.config["linux"]["devices"] = json!([{"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229, "fileMode": 0o640, "uid": 0, "gid": 0}]);
    b.config["linux"]["sysctl"] = json!({"net.ipv4.ip_forward": "1"});
    b.config["process"]["oomScoreAdj"] = json!(123);
    b.write();
    let (code, out) = run_both(&b);
    assert_eq!(code, 0);
    assert_eq!(
        out,
        "character special file a:e5 640\ncharacter special file 1:3 666\ncharacter special file 1:9 666\n1\n123\nNoNewPrivs:\t1\n"
    );
}

#[test]
fn cgroup_namespace_roots_the_container_cgroup() {
    let mut b = bundle_with(&["sh", "-c", "grep -E ':(memory|pids):' /proc/self/cgroup"]);
    b.config["linux"]["namespaces"]
        .as_array_mut()
        .unwrap()
        .push(json!({"type": "cgroup"}));
    b.write();
    assert_eq!(run_both(&b), (0, "8:pids:/\n4:memory:/\n".into()));
}

#[test]
fn mounts_stay_inside_the_rootfs_and_honour_options() {
    let host_dir = TempDir::new("mnt-src");
    std::fs::write(host_dir.path().join("data"), "from-host\n").expect("write");
    let mut b = bundle_with(&[
        "sh",
        "-c",
        "cat /data/data; touch /data/new 2>/dev/null; echo ro=$?; touch /scratch/x && echo tmpfs-ok; cat /etc/escaped",
    ]);
    // A symlink in the rootfs that points at the host's /etc: a mount through it must land
    // inside the rootfs, never on the host.
    std::os::unix::fs::symlink("/etc", b.rootfs().join("evil")).expect("symlink");
    b.config["mounts"].as_array_mut().unwrap().extend([
        json!({"destination": "/data", "type": "bind", "source": host_dir.path(), "options": ["rbind", "ro"]}),
        json!({"destination": "/scratch", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "size=1m"]}),
        json!({"destination": "/evil/escaped", "type": "bind", "source": host_dir.path().join("data"), "options": ["bind", "ro"]}),
    ]);
    b.write();
    assert_eq!(
        run_both(&b),
        (0, "from-host\nro=1\ntmpfs-ok\nfrom-host\n".into())
    );
    assert!(
        !Path::new("/etc/escaped").exists(),
        "a mount target escaped the rootfs onto the host"
    );
}

#[test]
fn domainname_is_set() {
    // runc 1.1 predates `domainname`: nestbox only.
    let nb = Runtime::nestbox();
    let mut b = bundle_with(&["cat", "/proc/sys/kernel/domainname"]);
    b.config["domainname"] = json!("nest.example");
    b.write();
    let (code, out, err) = nb.run(&b);
    assert_eq!((code, out.as_str()), (0, "nest.example\n"), "{err}");
}

#[test]
fn long_state_root_and_id_work() {
    // The exec socket path exceeds sun_path's 108 bytes here.
    for rt in runtimes() {
        let root = rt.root.path().join("r".repeat(60)).join("s".repeat(40));
        let id = format!("{}{}", unique("lg"), "i".repeat(60));
        let b = bundle_with(&["echo", "long"]);
        let (code, out, err) =
            nestbox_tests::run(Command::new(&rt.bin).arg("--root").arg(&root).args([
                "run",
                "--bundle",
                b.path().to_str().unwrap(),
                &id,
            ]));
        assert_eq!((code, out.as_str()), (0, "long\n"), "{}: {err}", rt.name);
    }
}

#[test]
fn new_user_namespace_with_a_network_namespace_joined_by_path() {
    use std::os::unix::fs::MetadataExt;
    let netns = nestbox_tests::NetNs::new("rtu");
    let inode = std::fs::metadata(netns.path()).expect("netns file").ino();
    let mut b = bundle_with(&["sh", "-c", "readlink /proc/self/ns/net; id -u"]);
    for ns in b.config["linux"]["namespaces"].as_array_mut().unwrap() {
        if ns["type"] == "network" {
            ns["path"] = json!(netns.path());
        }
    }
    b.config["linux"]["namespaces"]
        .as_array_mut()
        .unwrap()
        .push(json!({"type": "user"}));
    let map = json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
    b.config["linux"]["uidMappings"] = map.clone();
    b.config["linux"]["gidMappings"] = map;
    b.write();
    // runc 1.1 fails here (it mounts sysfs in a netns it does not own): nestbox only.
    let nb = Runtime::nestbox();
    let (code, out, err) = nb.run(&b);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with(&format!("net:[{inode}]\n0\n")), "{out}");
}
