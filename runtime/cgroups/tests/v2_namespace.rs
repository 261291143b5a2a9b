//! The pure cgroup v2 code path, exercised on any host with a cgroup2 hierarchy: the test
//! re-runs itself inside a private mount namespace where every cgroup mount is replaced by
//! the cgroup2 hierarchy alone (`unshare -m`, `umount -R /sys/fs/cgroup`, `mount -t cgroup2`),
//! so detect() sees a v2 host. On a hybrid host that tree holds only the controllers v1 did
//! not take (hugetlb here); core files (cgroup.freeze, cgroup.procs) and BPF device programs
//! work regardless. Nothing outside the namespace changes except the test's own cgroup.

use std::io::Write;
use std::process::{Command, Stdio};

use nestbox_cgroups::{Cgroup, Error, Layout};
use oci_spec::runtime::LinuxResources;

const INNER: &str = "NESTBOX_CGROUPS_V2_INNER";

#[test]
fn pure_v2_layout_in_a_private_mount_namespace() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "needs root (mount namespace, cgroups)"
    );
    let mi = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(
        mi.lines().any(|l| l.contains(" - cgroup2 ")),
        "this test needs a cgroup2 hierarchy mounted (v2 or hybrid host)"
    );
    let exe = std::env::current_exe().expect("current_exe");
    let out = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c"])
        .arg(
            "set -e; v2=$(awk '$9 == \"cgroup2\" {print $5; exit}' /proc/self/mountinfo); \
             t=/run/nestbox-v2-test-$$; mkdir -p $t; mount --bind \"$v2\" $t; \
             umount -R /sys/fs/cgroup 2>/dev/null || umount -l /sys/fs/cgroup; \
             mount --move $t /sys/fs/cgroup; rmdir $t; \
             exec \"$0\" --exact inner_v2_checks --nocapture --test-threads=1",
        )
        .arg(&exe)
        .env(INNER, "1")
        .output()
        .expect("unshare (util-linux)");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "inner run failed:\n{text}");
    assert!(
        text.contains("inner v2 checks passed"),
        "inner test did not run:\n{text}"
    );
}

fn resources(json: &str) -> LinuxResources {
    serde_json::from_str(json).expect("resources JSON")
}

fn run_in(cg: &Cgroup, script: &str) -> i32 {
    let mut child = Command::new("sh")
        .args(["-c", &format!("read x; {script}")])
        .stdin(Stdio::piped())
        .spawn()
        .expect("spawn sh");
    cg.add_task(child.id() as i32).expect("add_task");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"go\n")
        .expect("write");
    child.wait().expect("wait").code().unwrap_or(-1)
}

/// Runs only inside the namespace set up above.
#[test]
fn inner_v2_checks() {
    if std::env::var_os(INNER).is_none() {
        return;
    }
    assert_eq!(nestbox_cgroups::detect().expect("detect"), Layout::V2);
    let name = format!("nbv2-{}", std::process::id());
    let cg = Cgroup::resolve(Some(&format!("{name}/ctr")), "ctr", false).expect("resolve");
    let parent = Cgroup::resolve(Some(&name), "x", false).expect("resolve parent");
    assert_eq!(cg.hierarchies().len(), 1);
    let dir = cg.path("").expect("dir");
    assert_eq!(cg.path("memory"), Some(dir.clone()));
    cg.create().expect("create");

    let result = std::panic::catch_unwind(|| {
        let controllers =
            std::fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
        // Controllers the root offers were enabled down to the container's directory.
        let root_offers =
            std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers").unwrap_or_default();
        for c in root_offers.split_whitespace() {
            assert!(
                controllers.split_whitespace().any(|x| x == c),
                "{c} not enabled: {controllers}"
            );
        }
        if controllers.split_whitespace().any(|c| c == "hugetlb") {
            cg.apply(&resources(
                r#"{"hugepageLimits": [{"pageSize": "2MB", "limit": 2097152}]}"#,
            ))
            .expect("hugetlb");
            let v = std::fs::read_to_string(dir.join("hugetlb.2MB.max")).expect("hugetlb.2MB.max");
            assert_eq!(v.trim(), "2097152");
        }
        if !controllers.split_whitespace().any(|c| c == "memory") {
            let err = cg
                .apply(&resources(r#"{"memory": {"limit": 1048576}}"#))
                .expect_err("memory is not in this tree");
            assert!(matches!(err, Error::MissingController { .. }), "{err}");
        }

        // Device rules through apply(): a BPF program on the directory.
        cg.apply(&resources(
            r#"{"devices": [{"allow": false, "access": "rwm"}]}"#,
        ))
        .expect("devices");
        assert_eq!(
            run_in(
                &cg,
                "true </dev/null || exit 10; true 2>/dev/null </dev/kmsg || exit 11; exit 0"
            ),
            11
        );

        // Freeze through cgroup.freeze / cgroup.events.
        let mut child = Command::new("sleep").arg("1000").spawn().expect("sleep");
        cg.add_task(child.id() as i32).expect("add_task");
        cg.freeze().expect("freeze");
        assert!(cg.is_frozen().expect("is_frozen"));
        let events = std::fs::read_to_string(dir.join("cgroup.events")).unwrap_or_default();
        assert!(events.contains("frozen 1"), "{events}");
        cg.thaw().expect("thaw");
        assert!(!cg.is_frozen().expect("is_frozen"));
        assert_eq!(cg.pids().expect("pids"), vec![child.id() as i32]);
        let stats = cg.stats().expect("stats");
        assert!(stats.cpu.usage.total > 0 || stats.cpu.usage.user == 0);
        let _ = child.kill();
        let _ = child.wait();
    });
    let destroyed = cg.destroy();
    let _ = parent.destroy();
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
    destroyed.expect("destroy");
    assert!(!dir.exists());
    println!("inner v2 checks passed");
}
