//! GC (1.1) releases exactly the attachments not listed, with their masquerade rules;
//! STATUS reports 50 when the IPAM store cannot take reservations.

mod cni_common;

use cni_common::*;
use nestbox_tests::{sh_ok, NetNs, TempDir};
use serde_json::json;

#[test]
fn gc_releases_exactly_the_attachments_not_listed() {
    require_cni_tools();
    let node = NetNs::new("gcn");
    let data = TempDir::new("cnigc");
    let pd = PluginDir::new(Impl::Ours, Impl::Ours);
    let exe = pd.path().join("bridge");
    let conf = bridge_conf("1.1.0", "gcnet", "gcbr0", "10.61.0.0/24", data.path());
    let pods: Vec<NetNs> = (0..10).map(|_| NetNs::new("gcp")).collect();
    let mut held = Vec::new();
    for (i, pod) in pods.iter().enumerate() {
        let r = Call::new(
            "ADD",
            &format!("gc{i}"),
            &pod.path().display().to_string(),
            "eth0",
            pd.path(),
        )
        .run(Some(&node), &exe, &conf)
        .ok();
        held.push(
            r["ips"][0]["address"]
                .as_str()
                .expect("ip")
                .split('/')
                .next()
                .expect("ip")
                .to_string(),
        );
    }
    assert_eq!(masq_rules(&node), 10);

    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!((0..5)
        .map(|i| json!({"containerID": format!("gc{i}"), "ifname": "eth0"}))
        .collect::<Vec<_>>());
    Call::new("GC", "", "", "", pd.path())
        .run(Some(&node), &exe, &gc)
        .ok();

    let mut kept = held[..5].to_vec();
    kept.sort();
    assert_eq!(
        ip_files(data.path(), "gcnet"),
        kept,
        "GC must keep exactly the listed five"
    );
    assert_eq!(
        masq_rules(&node),
        5,
        "GC must remove the other five masquerade rules"
    );

    // The older key works too; an empty list releases everything.
    let mut gc = conf.clone();
    gc["cni.dev/attachments"] = json!([]);
    Call::new("GC", "", "", "", pd.path())
        .run(Some(&node), &exe, &gc)
        .ok();
    assert!(store_files(data.path(), "gcnet").is_empty());
    assert_eq!(masq_rules(&node), 0);
    for (i, pod) in pods.iter().enumerate() {
        Call::new(
            "DEL",
            &format!("gc{i}"),
            &pod.path().display().to_string(),
            "eth0",
            pd.path(),
        )
        .run(Some(&node), &exe, &conf)
        .ok();
    }
}

#[test]
fn gc_and_status_are_refused_below_1_1_0() {
    require_cni_tools();
    let data = TempDir::new("cnigcv");
    let pd = PluginDir::new(Impl::Ours, Impl::Ours);
    let conf = bridge_conf("1.0.0", "old", "oldbr", "10.62.0.0/24", data.path());
    for cmd in ["GC", "STATUS"] {
        let r = Call::new(cmd, "", "", "", pd.path()).run(None, &pd.path().join("bridge"), &conf);
        assert_eq!(r.err_code(), 1, "{cmd}");
    }
}

#[test]
fn status_is_50_when_the_ipam_store_is_unwritable() {
    require_cni_tools();
    let data = TempDir::new("cnistatus");
    let pd = PluginDir::new(Impl::Ours, Impl::Ours);
    let status = |conf: &serde_json::Value| {
        Call::new("STATUS", "", "", "", pd.path()).run(None, &pd.path().join("bridge"), conf)
    };
    let good = bridge_conf("1.1.0", "st", "stbr", "10.63.0.0/24", data.path());
    status(&good).ok();
    status(&{
        let mut c = good.clone();
        c["ipam"]["type"] = json!("nestbox-host-local");
        c
    })
    .ok();

    // A file where the data dir should be.
    let file = data.path().join("not-a-dir");
    std::fs::write(&file, "x").expect("write");
    let bad = bridge_conf("1.1.0", "st", "stbr", "10.63.0.0/24", &file);
    assert_eq!(status(&bad).err_code(), 50);

    // A read-only bind mount (root ignores permissions), inside a private mount ns.
    let ro = data.path().join("ro");
    std::fs::create_dir_all(&ro).expect("mkdir");
    let conf = bridge_conf("1.1.0", "st", "stbr", "10.63.0.0/24", &ro);
    let exe = pd.path().join("bridge");
    let script = format!(
        "mount --bind {ro} {ro} && mount -o remount,bind,ro {ro} && printf '%s' '{conf}' | CNI_COMMAND=STATUS CNI_PATH={path} {exe}",
        ro = ro.display(),
        conf = conf,
        path = pd.path().display(),
        exe = exe.display()
    );
    let out = std::process::Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", &script])
        .output()
        .expect("unshare");
    assert!(
        !out.status.success(),
        "STATUS on a read-only store must fail"
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("error JSON");
    assert_eq!(v["code"], 50, "{v}");
    let _ = sh_ok("true");
}

#[test]
fn gc_removes_stale_iptables_masquerade_chains() {
    require_cni_tools();
    let node = NetNs::new("gin");
    let data = TempDir::new("cnigci");
    let pd = PluginDir::new(Impl::Ours, Impl::Ours);
    let exe = pd.path().join("bridge");
    let mut conf = bridge_conf("1.1.0", "gcipt", "gibr0", "10.65.0.0/24", data.path());
    conf["ipMasqBackend"] = json!("iptables");
    let pods: Vec<NetNs> = (0..2).map(|_| NetNs::new("gip")).collect();
    for (i, pod) in pods.iter().enumerate() {
        Call::new(
            "ADD",
            &format!("ipt{i}"),
            &pod.path().display().to_string(),
            "eth0",
            pd.path(),
        )
        .run(Some(&node), &exe, &conf)
        .ok();
    }
    let chains = |node: &NetNs| {
        node.exec_ok(&["iptables", "-t", "nat", "-S"])
            .lines()
            .filter(|l| l.starts_with("-N CNI-"))
            .count()
    };
    assert_eq!(chains(&node), 2);
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "ipt0", "ifname": "eth0"}]);
    Call::new("GC", "", "", "", pd.path())
        .run(Some(&node), &exe, &gc)
        .ok();
    assert_eq!(
        chains(&node),
        1,
        "GC must remove the unlisted container's chain"
    );
    assert_eq!(ip_files(data.path(), "gcipt").len(), 1);
    for (i, pod) in pods.iter().enumerate() {
        Call::new(
            "DEL",
            &format!("ipt{i}"),
            &pod.path().display().to_string(),
            "eth0",
            pd.path(),
        )
        .run(Some(&node), &exe, &conf)
        .ok();
    }
    assert_eq!(chains(&node), 0);
}
