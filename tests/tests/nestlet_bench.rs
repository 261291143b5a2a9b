//! The pods benchmark (run by `scripts/bench/pods.sh`; `#[ignore]`d, so `cargo test` skips
//! it; it prints numbers and asserts nothing about time): N pods (default 30) created at
//! once on a nestlet node, image present, bound to the node directly (the scheduler's
//! latency is not nestlet's); creation → Running as a `kubectl get --watch` sees it
//! (p50/p99/max), then the memory of nestlet and its shims (RSS and PSS summed), and the
//! time until all are gone after one `kubectl delete`.

mod kube_common;
mod nestlet_cluster;
mod nestlet_common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nestbox_tests::wait_until;
use nestlet_cluster::{phase, Cluster};
use serde_json::{json, Value};

fn status_kb(pid: i32, file: &str, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/{file}"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// (own, reaped children's) CPU time of a process, in clock ticks (/proc/PID/stat fields
/// 14-17).
fn cpu_ticks(pid: i32) -> (u64, u64) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which may hold spaces: state is field 3.
    let rest = s.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    let at = |i: usize| f.get(i - 3).copied().unwrap_or(0);
    (at(14) + at(15), at(16) + at(17))
}

/// The busy ticks of every CPU together (/proc/stat: all but idle and iowait).
fn system_busy_ticks() -> u64 {
    let s = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<u64> = s
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    v.iter().sum::<u64>() - v.get(3).copied().unwrap_or(0) - v.get(4).copied().unwrap_or(0)
}

/// Pids whose command name is `comm`.
fn pids_named(comm: &str) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<i32>().ok())
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == comm)
        })
        .collect()
}

/// CPU ticks of the processes that do the work of starting pods, by role.
fn cpu_by_role(nestlet: i32) -> Vec<(&'static str, u64)> {
    let (own, children) = cpu_ticks(nestlet);
    let sum = |comm: &str| -> u64 {
        pids_named(comm)
            .iter()
            .map(|p| {
                let (a, b) = cpu_ticks(*p);
                a + b
            })
            .sum()
    };
    vec![
        ("nestlet", own),
        ("nestlet's children (CNI plugins, shim start)", children),
        // A shim's children are the runtime invocations it reaped.
        ("shims + runtime", sum("containerd-shim")),
        ("kube-apiserver", sum("kube-apiserver")),
        ("etcd", sum("etcd")),
        (
            "controller-manager + scheduler",
            sum("kube-controller") + sum("kube-scheduler"),
        ),
        ("kubectl watch", sum("kubectl")),
    ]
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[test]
#[ignore = "benchmark: run by scripts/bench/pods.sh"]
fn pods_created_at_once() {
    let count: usize = std::env::var("PODS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let c = Cluster::start();
    let pod = |name: &str| {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default", "labels": {"bench": "pods"}},
            "spec": {
                "nodeName": c.name,
                "terminationGracePeriodSeconds": 1,
                "containers": [{"name": "c", "image": c.image, "command": ["sleep", "3600"]}]
            }
        })
    };
    // Warm-up: the image is pulled once, so the measured pods find it present.
    c.cp.apply(&pod("warmup").to_string());
    c.wait_pod("warmup", 60, "Running", |p| phase(p) == "Running");
    c.cp.kubectl_ok(&["delete", "pod", "warmup", "--wait=true"]);

    // A watch that timestamps each event as it arrives.
    let mut watch = Command::new("ip")
        .args(["netns", "exec", c.cp.ns.name()])
        .arg(kube_common::kube_bin("kubectl"))
        .arg(format!("--kubeconfig={}", c.cp.kubeconfig().display()))
        .args(["get", "pods", "-l", "bench=pods", "--watch", "-o"])
        .arg("jsonpath={.metadata.name} {.status.phase}{\"\\n\"}")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("kubectl watch");
    let (tx, rx) = mpsc::channel::<(Instant, String, String)>();
    let out = watch.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let mut it = line.split_whitespace();
            if let (Some(n), Some(p)) = (it.next(), it.next()) {
                let _ = tx.send((Instant::now(), n.to_string(), p.to_string()));
            }
        }
    });
    std::thread::sleep(Duration::from_secs(1));

    let list = json!({
        "apiVersion": "v1", "kind": "List",
        "items": (0..count).map(|i| pod(&format!("bench-{i:02}"))).collect::<Vec<Value>>()
    });
    let nestlet_pid = c.n.pid().expect("nestlet pid") as i32;
    let (busy0, roles0) = (system_busy_ticks(), cpu_by_role(nestlet_pid));
    let t0 = Instant::now();
    c.cp.apply(&list.to_string());
    let applied = t0.elapsed();
    // Per pod: when the watch first saw it (its creation) and when it saw it Running.
    let mut created: std::collections::BTreeMap<String, Instant> = Default::default();
    let mut running: std::collections::BTreeMap<String, Instant> = Default::default();
    let deadline = Instant::now() + Duration::from_secs(120);
    while running.len() < count && Instant::now() < deadline {
        if let Ok((t, n, p)) = rx.recv_timeout(Duration::from_millis(200)) {
            created.entry(n.clone()).or_insert(t);
            if p == "Running" {
                running.entry(n).or_insert(t);
            }
        }
    }
    let (busy1, roles1) = (system_busy_ticks(), cpu_by_role(nestlet_pid));
    let window = t0.elapsed().as_secs_f64();
    let sorted = |mut v: Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v
    };
    // Creation -> Running of each pod, as the watch saw both.
    let lat = sorted(
        running
            .iter()
            .map(|(n, t)| t.duration_since(created[n]).as_secs_f64())
            .collect(),
    );
    // The same from the moment `kubectl apply` began (includes kubectl creating them one by one).
    let from_apply = sorted(
        running
            .values()
            .map(|t| t.duration_since(t0).as_secs_f64())
            .collect(),
    );
    std::thread::sleep(Duration::from_secs(2));

    let mut pids = vec![nestlet_pid];
    let shims = c.n.shim_pids();
    pids.extend(&shims);
    if let Ok(keep) = std::env::var("NESTBOX_BENCH_LOG") {
        let _ = std::fs::copy(
            format!("/proc/{nestlet_pid}/smaps"),
            format!("{keep}.smaps"),
        );
    }
    let rss: u64 = pids.iter().map(|p| status_kb(*p, "status", "VmRSS:")).sum();
    let pss: u64 = pids
        .iter()
        .map(|p| status_kb(*p, "smaps_rollup", "Pss:"))
        .sum();
    let nestlet_rss = status_kb(nestlet_pid, "status", "VmRSS:");
    let shim_rss = if shims.is_empty() {
        0
    } else {
        status_kb(shims[0], "status", "VmRSS:")
    };

    let t1 = Instant::now();
    c.cp.kubectl_ok(&["delete", "pods", "-l", "bench=pods", "--wait=false"]);
    let gone = wait_until(120, || {
        c.cp.kubectl_ok(&["get", "pods", "-l", "bench=pods", "-o", "name"])
            .trim()
            .is_empty()
    });
    let del = t1.elapsed();
    let _ = watch.kill();
    let _ = watch.wait();
    // NESTBOX_BENCH_LOG=FILE keeps nestlet's log (where the time went).
    if let Ok(keep) = std::env::var("NESTBOX_BENCH_LOG") {
        let _ = std::fs::copy(c.n.log_path(), keep);
    }

    println!(
        "pods: {count} created at once (kubectl apply took {:.2} s), {} Running within 120 s",
        applied.as_secs_f64(),
        lat.len()
    );
    println!(
        "creation -> Running (watch): p50 {:.3} s  p99 {:.3} s  max {:.3} s   (goal p99 <= 1 s: {:.2}x)",
        percentile(&lat, 50.0),
        percentile(&lat, 99.0),
        lat.last().copied().unwrap_or(f64::NAN),
        percentile(&lat, 99.0) / 1.0
    );
    println!(
        "from the start of kubectl apply -> Running: p50 {:.3} s  p99 {:.3} s  max {:.3} s",
        percentile(&from_apply, 50.0),
        percentile(&from_apply, 99.0),
        from_apply.last().copied().unwrap_or(f64::NAN),
    );
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let roles: Vec<String> = roles0
        .iter()
        .zip(&roles1)
        .map(|((n, a), (_, b))| format!("{n} {:.2}", b.saturating_sub(*a) as f64 / hz))
        .collect();
    println!(
        "cpu from apply to all Running ({window:.2} s wall): {:.2} s busy over all cores; {} (s; shims count the runtime runs they reaped; processes gone before the end are missed)",
        busy1.saturating_sub(busy0) as f64 / hz,
        roles.join(", ")
    );
    println!(
        "memory: nestlet {} KiB RSS, one shim {} KiB RSS; nestlet + {} shims: RSS {:.1} MiB, PSS {:.1} MiB  (goal <= 100 MiB: {:.2}x; stock kubelet+containerd+Go shims ~560 MiB: {:.2}x)",
        nestlet_rss,
        shim_rss,
        shims.len(),
        rss as f64 / 1024.0,
        pss as f64 / 1024.0,
        rss as f64 / 1024.0 / 100.0,
        rss as f64 / 1024.0 / 560.0
    );
    println!(
        "deletion of all {count} (grace 1 s): {:.2} s{}",
        del.as_secs_f64(),
        if gone { "" } else { " (not all gone!)" }
    );
}
