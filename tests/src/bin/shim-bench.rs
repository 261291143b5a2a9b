//! `nestbox-shim-bench`, run by scripts/bench/shim.sh: our shim driving nestbox against
//! containerd's Go runc-v2 shim driving runc, side by side under one containerd 1.6 (CRI
//! plugin on) inside a throw-away node netns. Prints medians and ratios for
//! - resident memory of the shim serving one pod (VmRSS once its container runs), over P pods;
//! - `ctr run --rm` of busybox `true`, rounds interleaved between the two;
//! - CRI pod start: RunPodSandbox + CreateContainer + StartContainer, interleaved. The pods
//!   use the node's network: a CNI plugin would add the same cost to both sides (its own
//!   benchmark is scripts/bench/cni.sh).
//!
//! Usage: nestbox-shim-bench [ROUNDS] [PODS]   (as root; defaults 20 and 5)

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use nestbox_tests::containerd::{
    cri_config, import_cri_images, rootfs_copy, Containerd, BUSYBOX_IMAGE,
};
use nestbox_tests::cri::{Cri, PodSandboxConfig};
use nestbox_tests::{require_cmd, unique, NetNs, TempDir};

struct Side {
    label: &'static str,
    handler: &'static str,
    ctr_flags: Vec<String>,
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn range(v: &[f64]) -> String {
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{min:.1}-{max:.1}")
}

/// VmRSS in KiB of every process whose argv[0] ends with `exe` and whose arguments name the
/// containerd socket.
fn shim_rss(exe: &str, socket: &Path) -> Vec<f64> {
    let sock = socket.display().to_string();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if !args.first().is_some_and(|a| a.ends_with(exe)) || !args.iter().any(|a| a == &sock) {
            continue;
        }
        let status = std::fs::read_to_string(e.path().join("status")).unwrap_or_default();
        if let Some(kib) = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        {
            out.push(kib);
        }
    }
    out
}

fn host_network_pod(name: &str, logs: &Path) -> PodSandboxConfig {
    let mut cfg = Cri::pod_config(name, logs);
    // The node's UTS namespace too: the kubelet sends no hostname for such pods.
    cfg.hostname.clear();
    if let Some(ns) = cfg
        .linux
        .as_mut()
        .and_then(|l| l.security_context.as_mut())
        .and_then(|s| s.namespace_options.as_mut())
    {
        ns.network = k8s_cri::v1::NamespaceMode::Node as i32;
    }
    cfg
}

fn start_pod(cri: &mut Cri, handler: &str, logs: &Path) -> String {
    let cfg = host_network_pod(&unique("bp"), logs);
    let pod = cri.run_pod(&cfg, handler).expect("RunPodSandbox");
    let c = cri
        .create_container(&pod, &cfg, "app", BUSYBOX_IMAGE, &["sleep", "3600"], None)
        .expect("CreateContainer");
    cri.start_container(&c).expect("StartContainer");
    pod
}

fn remove_pod(cri: &mut Cri, pod: &str) {
    cri.stop_pod(pod).expect("StopPodSandbox");
    cri.remove_pod(pod).expect("RemovePodSandbox");
}

fn main() {
    let mut args = std::env::args().skip(1);
    let rounds: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(20);
    let pods: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(5);
    let runc = require_cmd("runc");
    let node = NetNs::new("sbn");
    let ctrd = Containerd::with_config(Some(&node), &cri_config(&runc, None));
    import_cri_images(&ctrd);
    let work = TempDir::new("shimbench");
    let rootfs = rootfs_copy(work.path());
    let logs = TempDir::new("shimbenchlogs");
    let sides = [
        Side {
            label: "nestbox shim + nestbox",
            handler: "nestbox",
            ctr_flags: vec!["--runtime".into(), "io.containerd.nestbox.v2".into()],
        },
        Side {
            label: "Go runc-v2 shim + runc",
            handler: "runc",
            ctr_flags: vec!["--runc-binary".into(), runc.display().to_string()],
        },
    ];
    let mut cri = Cri::connect(&ctrd.socket());

    // 1. Resident memory of the shim per pod.
    let mut rss: Vec<Vec<f64>> = Vec::new();
    for side in &sides {
        let ids: Vec<String> = (0..pods)
            .map(|_| start_pod(&mut cri, side.handler, logs.path()))
            .collect();
        std::thread::sleep(std::time::Duration::from_millis(500));
        let exe = if side.handler == "nestbox" {
            "containerd-shim-nestbox-v2"
        } else {
            "containerd-shim-runc-v2"
        };
        rss.push(shim_rss(exe, &ctrd.socket()));
        for p in &ids {
            remove_pod(&mut cri, p);
        }
    }

    // 2. `ctr run --rm` of busybox `true`, interleaved; 3. CRI pod start, interleaved.
    let mut run_ms = [Vec::new(), Vec::new()];
    let mut pod_ms = [Vec::new(), Vec::new()];
    for round in 0..rounds + 2 {
        for (i, side) in sides.iter().enumerate() {
            let t = Instant::now();
            let status = ctrd
                .ctr()
                .arg("run")
                .arg("--rm")
                .arg("--fifo-dir")
                .arg(work.path().join("fifo"))
                .args(&side.ctr_flags)
                .arg("--rootfs")
                .arg(&rootfs)
                .arg(unique("br"))
                .arg("/bin/true")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .status()
                .expect("ctr run");
            let ms = t.elapsed().as_secs_f64() * 1e3;
            assert!(status.success(), "ctr run under {} failed", side.label);

            let t = Instant::now();
            let pod = start_pod(&mut cri, side.handler, logs.path());
            let pod_ms_now = t.elapsed().as_secs_f64() * 1e3;
            remove_pod(&mut cri, &pod);
            // The first two rounds warm caches (images, binaries) and are not counted.
            if round >= 2 {
                run_ms[i].push(ms);
                pod_ms[i].push(pod_ms_now);
            }
        }
    }

    let version = Command::new("containerd")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    println!(
        "shim benchmark: {version}; {rounds} interleaved rounds, {pods} pods per side for RSS"
    );
    println!(
        "{:<30} {:>26} {:>26} {:>8}",
        "", sides[0].label, sides[1].label, "ratio"
    );
    let row = |name: &str, a: &mut Vec<f64>, b: &mut Vec<f64>, unit: &str| {
        let (ra, rb) = (range(a), range(b));
        let (ma, mb) = (median(a), median(b));
        println!(
            "{:<30} {:>26} {:>26} {:>8.2}",
            format!("{name} ({unit})"),
            format!("{ma:.1} ({ra})"),
            format!("{mb:.1} ({rb})"),
            ma / mb
        );
    };
    let (mut a, mut b) = (rss[0].clone(), rss[1].clone());
    row("shim RSS per pod", &mut a, &mut b, "KiB");
    let (mut a, mut b) = (run_ms[0].clone(), run_ms[1].clone());
    row("ctr run --rm true", &mut a, &mut b, "ms");
    let (mut a, mut b) = (pod_ms[0].clone(), pod_ms[1].clone());
    row("CRI pod start", &mut a, &mut b, "ms");
    println!("(median, min-max; ratio = nestbox / Go; goals: RSS <= 3072 KiB, time ratios <= 0.8)");
    // For looking into the numbers: containerd's debug log (its shims' logs included).
    if let Some(path) = std::env::var_os("NESTBOX_BENCH_LOG") {
        let _ = std::fs::write(path, ctrd.log());
    }
}
