//! Ours and the reference share a node: host-local allocations made by one are released
//! by the other, neither hands out an address the other holds, and each bridge works
//! with the other's host-local as its IPAM delegate.

mod cni_common;

use cni_common::*;
use nestbox_tests::{NetNs, TempDir};
use serde_json::json;

fn hl_conf(data: &std::path::Path) -> serde_json::Value {
    json!({
        "cniVersion": "1.0.0", "name": "shared", "type": "host-local",
        "ipam": {"type": "host-local", "dataDir": data.display().to_string(),
                 "ranges": [[{"subnet": "10.44.0.0/24"}]]}
    })
}

#[test]
fn host_local_allocations_are_released_by_the_other_implementation() {
    require_cni_tools();
    let data = TempDir::new("cniinterop");
    let ours = PluginDir::new(Impl::Ours, Impl::Ours);
    let refd = PluginDir::new(Impl::Reference, Impl::Reference);
    let conf = hl_conf(data.path());
    let call = |pd: &PluginDir, cmd: &str, id: &str| {
        Call::new(cmd, id, "/run/netns/x", "eth0", pd.path()).run(
            None,
            &pd.path().join("host-local"),
            &conf,
        )
    };

    let a = call(&ours, "ADD", "by-ours").ok();
    let b = call(&refd, "ADD", "by-ref").ok();
    let c = call(&ours, "ADD", "by-ours-2").ok();
    let ips: Vec<String> = [&a, &b, &c]
        .iter()
        .map(|r| r["ips"][0]["address"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(
        ips,
        vec!["10.44.0.2/24", "10.44.0.3/24", "10.44.0.4/24"],
        "round robin shared across implementations"
    );
    // Each CHECKs and releases the other's reservation.
    call(&refd, "CHECK", "by-ours").ok();
    call(&ours, "CHECK", "by-ref").ok();
    call(&refd, "DEL", "by-ours").ok();
    call(&ours, "DEL", "by-ref").ok();
    assert_eq!(
        ip_files(data.path(), "shared"),
        vec!["10.44.0.4".to_string()]
    );
    call(&refd, "DEL", "by-ours-2").ok();
    assert!(store_files(data.path(), "shared").is_empty());
}

#[test]
fn each_bridge_works_with_the_other_host_local() {
    require_cni_tools();
    for (bridge, ipam) in [(Impl::Ours, Impl::Reference), (Impl::Reference, Impl::Ours)] {
        let node = NetNs::new("cid");
        let pod = NetNs::new("cip");
        let data = TempDir::new("cnimix");
        let pd = PluginDir::new(bridge, ipam);
        let exe = pd.path().join("bridge");
        let conf = bridge_conf("1.0.0", "mixed", "cnibr2", "10.45.0.0/24", data.path());
        let netns = pod.path().display().to_string();
        let r = Call::new("ADD", "m1", &netns, "eth0", pd.path())
            .run(Some(&node), &exe, &conf)
            .ok();
        assert_eq!(
            r["ips"][0]["address"], "10.45.0.2/24",
            "{bridge:?}+{ipam:?}"
        );
        assert!(
            pod.exec(&["ping", "-c1", "-W2", "10.45.0.1"])
                .status
                .success(),
            "{bridge:?}+{ipam:?}: no ping"
        );
        Call::new("CHECK", "m1", &netns, "eth0", pd.path())
            .run(Some(&node), &exe, &with_prev(&conf, &r))
            .ok();
        Call::new("DEL", "m1", &netns, "eth0", pd.path())
            .run(Some(&node), &exe, &conf)
            .ok();
        assert!(
            store_files(data.path(), "mixed").is_empty(),
            "{bridge:?}+{ipam:?}: IP left"
        );
        assert!(veths(&node).is_empty(), "{bridge:?}+{ipam:?}: veth left");
    }
}
