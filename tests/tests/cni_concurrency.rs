//! 300 pods ADDed at once by separate plugin processes on one network: distinct
//! addresses, every pod reaches the gateway; 300 concurrent DELs leave nothing behind.

mod cni_common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use cni_common::*;
use nestbox_tests::{sh_ok, unique, NetNs, TempDir};
use serde_json::Value;

const PODS: usize = 300;
/// Processes in flight at once (the CI machine has 2 cores).
const PARALLEL: usize = 24;

/// Run `f(i)` for 0..n on PARALLEL threads; each call spawns its own plugin process.
fn pool<T: Send>(n: usize, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    let next = AtomicUsize::new(0);
    let out: Mutex<Vec<Option<T>>> = Mutex::new((0..n).map(|_| None).collect());
    std::thread::scope(|s| {
        for _ in 0..PARALLEL {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= n {
                    break;
                }
                let r = f(i);
                out.lock().expect("lock")[i] = Some(r);
            });
        }
    });
    out.into_inner()
        .expect("lock")
        .into_iter()
        .map(|r| r.expect("ran"))
        .collect()
}

/// Pod namespaces created in bulk (`ip -batch`), deleted on drop.
struct Pods(Vec<String>);

impl Pods {
    fn new(n: usize) -> Pods {
        let names: Vec<String> = (0..n).map(|_| unique("cc")).collect();
        let batch = TempDir::new("nsbatch");
        let f = batch.path().join("add");
        std::fs::write(
            &f,
            names
                .iter()
                .map(|n| format!("netns add {n}\n"))
                .collect::<String>(),
        )
        .expect("write batch");
        sh_ok(&format!("ip -batch {}", f.display()));
        Pods(names)
    }
}

impl Drop for Pods {
    fn drop(&mut self) {
        let batch = std::env::temp_dir().join(format!("nestbox-nsdel-{}", unique("d")));
        let _ = std::fs::write(
            &batch,
            self.0
                .iter()
                .map(|n| format!("netns del {n}\n"))
                .collect::<String>(),
        );
        let _ = std::process::Command::new("ip")
            .args(["-force", "-batch"])
            .arg(&batch)
            .output();
        let _ = std::fs::remove_file(&batch);
    }
}

#[test]
fn three_hundred_concurrent_adds_get_distinct_ips_and_dels_leave_nothing() {
    require_cni_tools();
    let node = NetNs::new("ccn");
    let data = TempDir::new("cniconc");
    let pd = PluginDir::new(Impl::Ours, Impl::Ours);
    let exe = pd.path().join("bridge");
    let conf = bridge_conf("1.1.0", "conc", "ccbr0", "10.60.0.0/22", data.path());
    let pods = Pods::new(PODS);

    // All processes start before any finishes: the bridge is created by a race of many.
    let results: Vec<Outcome> = pool(PODS, |i| {
        let netns = format!("/run/netns/{}", pods.0[i]);
        Call::new("ADD", &format!("ctr{i}"), &netns, "eth0", pd.path()).run(
            Some(&node),
            &exe,
            &conf,
        )
    });
    let mut ips: Vec<String> = results
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let v: Value = r.ok();
            assert_eq!(
                v["interfaces"][2]["sandbox"],
                format!("/run/netns/{}", pods.0[i])
            );
            v["ips"][0]["address"]
                .as_str()
                .expect("address")
                .to_string()
        })
        .collect();
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), PODS, "addresses handed out twice");
    assert_eq!(ip_files(data.path(), "conc").len(), PODS);
    let ours: Vec<String> = results
        .iter()
        .map(|r| {
            r.ok()["interfaces"][1]["name"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .collect();
    let stray: Vec<String> = veths(&node)
        .into_iter()
        .filter(|v| !ours.contains(v))
        .collect();
    assert!(stray.is_empty(), "veths no result names: {stray:?}");
    assert_eq!(veths(&node).len(), PODS);
    assert_eq!(masq_rules(&node), PODS);

    let unreachable: Vec<String> = pool(PODS, |i| {
        let ok = std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                &pods.0[i],
                "ping",
                "-c1",
                "-W3",
                "10.60.0.1",
            ])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        (!ok).then(|| pods.0[i].clone())
    })
    .into_iter()
    .flatten()
    .collect();
    assert!(
        unreachable.is_empty(),
        "pods that cannot ping the gateway: {unreachable:?}"
    );

    let dels: Vec<Outcome> = pool(PODS, |i| {
        let netns = format!("/run/netns/{}", pods.0[i]);
        Call::new("DEL", &format!("ctr{i}"), &netns, "eth0", pd.path()).run(
            Some(&node),
            &exe,
            &conf,
        )
    });
    for d in &dels {
        d.ok();
    }
    assert!(veths(&node).is_empty(), "veths left: {:?}", veths(&node));
    assert!(store_files(data.path(), "conc").is_empty(), "IP files left");
    assert_eq!(masq_rules(&node), 0, "masquerade rules left");
}
