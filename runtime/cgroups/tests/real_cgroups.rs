//! Real cgroups on this host (needs root): create a uniquely named cgroup, apply limits, put
//! a process in it, freeze/thaw it, read stats, OOM-kill in it, destroy it and check nothing
//! is left. Every test removes its cgroup even when it fails (Guard).

use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use nestbox_cgroups::{Cgroup, Layout};
use oci_spec::runtime::LinuxResources;

fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "these tests create real cgroups and need root (run them as root)"
    );
}

fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}-{}-{nanos:x}", std::process::id())
}

/// Kills the child and removes the cgroup (and the test's parent dir) on drop.
struct Guard {
    cg: Cgroup,
    parent: Option<Cgroup>,
    child: Option<Child>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = self.cg.thaw();
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = self.cg.destroy();
        if let Some(p) = &self.parent {
            let _ = p.destroy();
        }
    }
}

fn resources(json: &str) -> LinuxResources {
    serde_json::from_str(json).expect("resources JSON")
}

fn read(path: PathBuf) -> String {
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
        .trim()
        .to_owned()
}

fn proc_state(pid: u32) -> char {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    // The state follows the ")" that closes the command name.
    let after = stat.rsplit_once(')').map(|(_, s)| s).unwrap_or_default();
    after.trim_start().chars().next().unwrap_or('?')
}

fn new_guard(prefix: &str) -> (Guard, String) {
    require_root();
    let top = unique(prefix);
    let rel = format!("{top}/ctr");
    let cg = Cgroup::resolve(Some(&rel), "ctr", false).expect("resolve");
    let parent = Cgroup::resolve(Some(&top), "ctr", false).expect("resolve parent");
    (
        Guard {
            cg,
            parent: Some(parent),
            child: None,
        },
        top,
    )
}

#[test]
fn detect_matches_mountinfo() {
    let layout = nestbox_cgroups::detect().expect("detect");
    let mi = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let v1 = mi.lines().any(|l| l.contains(" - cgroup "));
    let v2 = mi.lines().any(|l| l.contains(" - cgroup2 "));
    let want = match (v1, v2) {
        (true, true) => Layout::Hybrid,
        (true, false) => Layout::V1,
        _ => Layout::V2,
    };
    assert_eq!(layout, want);
}

#[test]
fn limits_task_freeze_stats_and_destroy() {
    let (mut g, top) = new_guard("nbcg");
    let cg = g.cg.clone();
    cg.create().expect("create");
    cg.create().expect("create is idempotent");
    // Swap limits only where the kernel accounts swap (memsw files / memory.swap.max).
    let mem_dir = cg.path("memory").expect("memory dir");
    let swap_accounting = mem_dir.join("memory.memsw.limit_in_bytes").exists()
        || mem_dir.join("memory.swap.max").exists();
    let swap = if swap_accounting { 134217728 } else { 67108864 };
    let r = resources(&format!(
        r#"{{
        "memory": {{"limit": 67108864, "swap": {swap}, "reservation": 33554432}},
        "cpu": {{"shares": 512, "quota": 50000, "period": 100000, "cpus": "0", "mems": "0"}},
        "pids": {{"limit": 32}},
        "devices": [{{"allow": false, "access": "rwm"}}, {{"allow": true, "type": "c", "major": 10, "minor": 229, "access": "rw"}}]
    }}"#
    ));
    cg.apply(&r).expect("apply");

    let layout = cg.layout();
    if layout == Layout::V2 {
        let dir = cg.path("").expect("v2 dir");
        assert_eq!(read(dir.join("memory.max")), "67108864");
        if swap_accounting {
            assert_eq!(read(dir.join("memory.swap.max")), "67108864");
        }
        assert_eq!(read(dir.join("cpu.max")), "50000 100000");
        assert_eq!(read(dir.join("pids.max")), "32");
    } else {
        let mem = cg.path("memory").expect("memory");
        assert!(mem.to_string_lossy().contains(&top), "{}", mem.display());
        assert_eq!(read(mem.join("memory.limit_in_bytes")), "67108864");
        if mem.join("memory.memsw.limit_in_bytes").exists() {
            assert_eq!(read(mem.join("memory.memsw.limit_in_bytes")), "134217728");
        }
        assert_eq!(read(mem.join("memory.soft_limit_in_bytes")), "33554432");
        let cpu = cg.path("cpu").expect("cpu");
        assert_eq!(read(cpu.join("cpu.shares")), "512");
        assert_eq!(read(cpu.join("cpu.cfs_quota_us")), "50000");
        assert_eq!(read(cpu.join("cpu.cfs_period_us")), "100000");
        let cpuset = cg.path("cpuset").expect("cpuset");
        assert_eq!(read(cpuset.join("cpuset.cpus")), "0");
        // The intermediate directory got the parent's cpus/mems copied down.
        let parent_cpus = read(cpuset.parent().expect("parent").join("cpuset.cpus"));
        assert!(!parent_cpus.is_empty());
        assert_eq!(read(cg.path("pids").expect("pids").join("pids.max")), "32");
        let devices = read(cg.path("devices").expect("devices").join("devices.list"));
        assert!(devices.contains("c 10:229 rw"), "{devices}");
        assert!(devices.contains("c 1:3 rwm"), "{devices}");
        assert!(!devices.contains("a *:* rwm"), "{devices}");
    }

    // A process in the cgroup.
    let child = Command::new("sleep")
        .arg("1000")
        .spawn()
        .expect("spawn sleep");
    let pid = child.id();
    g.child = Some(child);
    cg.add_task(pid as i32).expect("add_task");
    assert_eq!(cg.pids().expect("pids"), vec![pid as i32]);
    let own = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("proc cgroup");
    assert!(own.contains(&top), "{own}");

    // Partial update: only memory changes, cpu stays.
    let swap = if swap_accounting {
        201326592
    } else {
        100663296
    };
    cg.apply(&resources(&format!(
        r#"{{"memory": {{"limit": 100663296, "swap": {swap}}}}}"#
    )))
    .expect("update memory");
    if layout != Layout::V2 {
        let mem = cg.path("memory").expect("memory");
        assert_eq!(read(mem.join("memory.limit_in_bytes")), "100663296");
        assert_eq!(read(cg.path("cpu").expect("cpu").join("cpu.shares")), "512");
        if mem.join("memory.memsw.limit_in_bytes").exists() {
            // The limit alone grows past the old memsw: the 96 MiB swap allowance is kept.
            cg.apply(&resources(r#"{"memory": {"limit": 268435456}}"#))
                .expect("update limit alone");
            assert_eq!(read(mem.join("memory.limit_in_bytes")), "268435456");
            assert_eq!(read(mem.join("memory.memsw.limit_in_bytes")), "369098752");
            cg.apply(&resources(r#"{"memory": {"limit": 100663296}}"#))
                .expect("shrink limit alone");
            assert_eq!(read(mem.join("memory.memsw.limit_in_bytes")), "201326592");
        }
    }

    // Freeze and thaw.
    cg.freeze().expect("freeze");
    assert!(cg.is_frozen().expect("is_frozen"));
    if let Some(f) = cg.path("freezer") {
        if layout != Layout::V2 {
            assert_eq!(read(f.join("freezer.state")), "FROZEN");
        }
    }
    let st = proc_state(pid);
    assert!(
        matches!(st, 'D' | 'T' | 't' | 'S'),
        "frozen task state {st}"
    );
    assert_ne!(st, 'R');
    cg.thaw().expect("thaw");
    assert!(!cg.is_frozen().expect("is_frozen"));

    // Stats.
    let stats = cg.stats().expect("stats");
    assert_eq!(stats.pids.current, 1);
    assert_eq!(stats.pids.limit, 32);
    assert_eq!(stats.memory.usage.limit, 100663296);
    assert!(stats.memory.raw.contains_key("rss") || stats.memory.raw.contains_key("anon"));
    let json = serde_json::to_value(&stats).expect("stats json");
    assert!(json["memory"]["usage"]["limit"].is_u64());
    assert_eq!(cg.oom_kill_count().expect("oom count"), 0);

    // Destroy: busy while the task is in it is reported after the retry budget.
    let mut child = g.child.take().expect("child");
    child.kill().expect("kill");
    child.wait().expect("wait");
    cg.destroy().expect("destroy");
    cg.destroy().expect("destroy is idempotent");
    for h in cg.hierarchies() {
        assert!(!h.dir.exists(), "{} left behind", h.dir.display());
    }
}

#[test]
fn destroy_removes_sub_cgroups_the_container_made() {
    let (g, _top) = new_guard("nbsub");
    g.cg.create().expect("create");
    let mem =
        g.cg.path("memory")
            .or_else(|| g.cg.path(""))
            .expect("a dir");
    std::fs::create_dir(mem.join("inner")).expect("inner cgroup");
    g.cg.destroy().expect("destroy");
    assert!(!mem.exists());
}

#[test]
fn oom_kill_is_counted() {
    let (mut g, _top) = new_guard("nboom");
    let cg = g.cg.clone();
    cg.create().expect("create");
    cg.apply(&resources(
        r#"{"memory": {"limit": 16777216, "swap": 16777216}}"#,
    ))
    .expect("apply");
    let mut notifier = cg.oom_notifier().expect("oom notifier");
    // The shell waits for a line so it is in the cgroup before it starts eating memory.
    let mut child = Command::new("sh")
        .args(["-c", "read x; exec tail /dev/zero"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("spawn");
    cg.add_task(child.id() as i32).expect("add_task");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"go\n")
        .expect("write");
    let status = child.wait().expect("wait");
    g.child = None;
    // The notifier registered before the OOM is readable now and reports the kill.
    let mut pfd = libc::pollfd {
        fd: std::os::fd::AsRawFd::as_raw_fd(&std::os::fd::AsFd::as_fd(&notifier)),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd. The timeout only keeps a broken notifier from hanging CI.
    let ready = unsafe { libc::poll(&mut pfd, 1, 30_000) };
    assert_eq!(ready, 1, "OOM notifier never became readable");
    assert!(notifier.wait().expect("wait oom").unwrap_or(0) >= 1);
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
    assert!(cg.oom_kill_count().expect("oom count") >= 1);
    cg.destroy().expect("destroy");
    // Removing the cgroup wakes the notifier up with "gone".
    assert_eq!(notifier.wait().expect("wait after destroy"), None);
}

#[test]
fn bad_values_name_field_and_file() {
    let (g, _top) = new_guard("nbbad");
    g.cg.create().expect("create");
    let err =
        g.cg.apply(&resources(r#"{"cpu": {"cpus": "999"}}"#))
            .expect_err("cpus 999 must fail");
    let msg = err.to_string();
    assert!(
        msg.contains("cpu.cpus") && msg.contains("cpuset.cpus"),
        "{msg}"
    );
    let err =
        g.cg.apply(&resources(r#"{"memory": {"swappiness": 200}}"#))
            .expect_err("swappiness 200 must fail");
    assert!(err.to_string().contains("memory.swappiness"), "{err}");
    if g.cg.path("rdma").is_none() {
        let err =
            g.cg.apply(&resources(r#"{"rdma": {"mlx4_0": {"hcaHandles": 2}}}"#))
                .expect_err("no rdma controller here");
        assert!(err.to_string().contains("rdma"), "{err}");
    }
    let err =
        g.cg.apply(&resources(
            r#"{"hugepageLimits": [{"pageSize": "3MB", "limit": 1}]}"#,
        ))
        .expect_err("3MB pages do not exist");
    assert!(err.to_string().contains("hugepageLimits.pageSize"), "{err}");
}

#[test]
fn hugetlb_limit_lands_in_the_hierarchy_that_has_it() {
    let (g, _top) = new_guard("nbhuge");
    g.cg.create().expect("create");
    let Some(dir) = g.cg.path("hugetlb") else {
        panic!("no hugetlb controller on this host (expected v1 hugetlb or cgroup2 hugetlb)");
    };
    g.cg.apply(&resources(
        r#"{"hugepageLimits": [{"pageSize": "2MB", "limit": 4194304}]}"#,
    ))
    .expect("apply hugetlb");
    let v2 = dir.join("hugetlb.2MB.max");
    let file = if v2.exists() {
        v2
    } else {
        dir.join("hugetlb.2MB.limit_in_bytes")
    };
    assert_eq!(read(file), "4194304");
    let stats = g.cg.stats().expect("stats");
    assert!(stats.hugetlb.contains_key("2MB"), "{:?}", stats.hugetlb);
}

/// Runs `sh -c script` inside the cgroup (it waits for a line first so it is in the cgroup
/// before it touches anything) and returns its exit code.
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

#[test]
fn v1_device_list_is_enforced_and_updated_in_place() {
    let (g, _top) = new_guard("nbdev");
    g.cg.create().expect("create");
    if g.cg.path("devices").is_none() || g.cg.layout() == Layout::V2 {
        panic!("this test needs the v1 devices controller (v1 or hybrid host)");
    }
    let deny_all = r#"{"allow": false, "access": "rwm"}"#;
    g.cg.apply(&resources(&format!(r#"{{"devices": [{deny_all}]}}"#)))
        .expect("deny all");
    // /dev/null is a default device; /dev/kmsg (c 1:11) is not.
    let script = "true </dev/null || exit 10; true 2>/dev/null </dev/kmsg || exit 11; exit 0";
    assert_eq!(run_in(&g.cg, script), 11);
    let list = read(g.cg.path("devices").expect("devices").join("devices.list"));
    g.cg.apply(&resources(&format!(
        r#"{{"devices": [{deny_all}, {{"allow": true, "type": "c", "major": 1, "minor": 11, "access": "r"}}]}}"#
    )))
    .expect("allow kmsg");
    let after = read(g.cg.path("devices").expect("devices").join("devices.list"));
    assert!(after.contains("c 1:11 r"), "{after}");
    assert_eq!(
        after.lines().count(),
        list.lines().count() + 1,
        "{list}\n---\n{after}"
    );
    assert_eq!(run_in(&g.cg, script), 0);
}

#[test]
fn v2_device_program_is_enforced_and_replaced() {
    let (g, _top) = new_guard("nbbpf");
    g.cg.create().expect("create");
    let dir =
        g.cg.path("")
            .expect("this test needs a cgroup2 hierarchy (v2 or hybrid host)");
    let deny_all: oci_spec::runtime::LinuxDeviceCgroup =
        serde_json::from_str(r#"{"allow": false, "access": "rwm"}"#).expect("rule");
    nestbox_cgroups::bpf::attach_device_rules(&dir, std::slice::from_ref(&deny_all))
        .expect("attach");
    assert_eq!(
        nestbox_cgroups::bpf::attached_device_programs(&dir).expect("query"),
        1
    );
    let script = "true </dev/null || exit 10; true 2>/dev/null </dev/kmsg || exit 11; \
                  true 2>/dev/null >/dev/kmsg && exit 12; exit 0";
    assert_eq!(run_in(&g.cg, script), 11);
    let kmsg_read: oci_spec::runtime::LinuxDeviceCgroup = serde_json::from_str(
        r#"{"allow": true, "type": "c", "major": 1, "minor": 11, "access": "r"}"#,
    )
    .expect("rule");
    nestbox_cgroups::bpf::attach_device_rules(&dir, &[deny_all, kmsg_read]).expect("update");
    assert_eq!(
        nestbox_cgroups::bpf::attached_device_programs(&dir).expect("query"),
        1
    );
    // Read is allowed now, write still is not.
    assert_eq!(run_in(&g.cg, script), 0);
}
