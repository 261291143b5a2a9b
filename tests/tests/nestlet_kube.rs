//! nestlet against a real kube-apiserver 1.20.2 (+ controller-manager and scheduler) in a
//! control-plane netns, with nestlet in a node netns on a test switch (entered with
//! `nsenter --net`), a node identity (`system:node:<name>`, Node authorizer), and a real
//! docker-registry in the node netns holding the busybox image (pushed with skopeo).
//! The checks are issue 12's "what must hold" 1–4 and 6.

mod kube_common;
mod nestlet_cluster;
mod nestlet_common;

use std::fs;
use std::time::{Duration, Instant};

use nestbox_tests::{sh_ok, wait_until, TempDir};
use nestlet_cluster::{phase, ready_condition, Cluster, NODE_IP};
use serde_json::{json, Value};

fn in_cidr(ip: &str, cidr: &str) -> bool {
    let (net, len) = cidr.split_once('/').unwrap();
    let len: u32 = len.parse().unwrap();
    let a: std::net::Ipv4Addr = ip.parse().unwrap();
    let b: std::net::Ipv4Addr = net.parse().unwrap();
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    u32::from(a) & mask == u32::from(b) & mask
}

fn waiting_reason(p: &Value, i: usize) -> String {
    p["status"]["containerStatuses"][i]["state"]["waiting"]["reason"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

#[test]
fn a_deployment_runs_on_the_node_and_each_pod_answers_http() {
    let c = Cluster::start();

    // Node object: Ready, nodeInfo filled, Lease renewed.
    let node = c.cp.kubectl_json(&["get", "node", &c.name]);
    let info = &node["status"]["nodeInfo"];
    assert!(
        info["containerRuntimeVersion"]
            .as_str()
            .unwrap_or("")
            .starts_with("nestbox://"),
        "{info}"
    );
    assert!(
        !info["kubeletVersion"].as_str().unwrap_or("").is_empty(),
        "{info}"
    );
    assert_eq!(info["operatingSystem"], "linux");
    assert!(
        !info["kernelVersion"].as_str().unwrap_or("").is_empty(),
        "{info}"
    );
    assert_eq!(
        node["metadata"]["labels"]["kubernetes.io/hostname"],
        c.name.as_str()
    );
    assert_eq!(ready_condition(&node)["reason"], "KubeletReady");
    let addrs = node["status"]["addresses"].to_string();
    assert!(addrs.contains(NODE_IP), "{addrs}");
    assert!(node["status"]["capacity"]["pods"].is_string(), "{node}");
    let lease =
        c.cp.kubectl_json(&["get", "lease", "-n", "kube-node-lease", &c.name]);
    assert_eq!(lease["spec"]["holderIdentity"], c.name.as_str());
    assert_eq!(lease["spec"]["leaseDurationSeconds"], 40);
    let first = lease["spec"]["renewTime"].clone();
    let ok = wait_until(25, || {
        c.cp.kubectl_json(&["get", "lease", "-n", "kube-node-lease", &c.name])["spec"]["renewTime"]
            != first
    });
    assert!(ok, "lease not renewed within 25 s");

    let deploy = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "terminationGracePeriodSeconds": 2,
                    "containers": [{
                        "name": "httpd", "image": c.image,
                        "command": ["sh", "-c", "mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 8080 -h /www"],
                        "ports": [{"containerPort": 8080}]
                    }]
                }
            }
        }
    });
    c.cp.apply(&deploy.to_string());
    let mut pods = Value::Null;
    let ok = wait_until(90, || {
        pods = c.cp.kubectl_json(&["get", "pods", "-l", "app=web"]);
        let items = pods["items"].as_array().cloned().unwrap_or_default();
        items.len() == 3
            && items.iter().all(|p| {
                phase(p) == "Running"
                    && p["status"]["podIP"]
                        .as_str()
                        .is_some_and(|ip| in_cidr(ip, &c.pod_cidr))
                    && p["status"]["containerStatuses"][0]["ready"] == true
            })
    });
    assert!(
        ok,
        "3 replicas not Running in {} within 90 s: {}\n{}",
        c.pod_cidr,
        pods["items"]
            .as_array()
            .map(|a| a.iter().map(|p| p["status"].clone()).collect::<Vec<_>>())
            .unwrap_or_default()
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .join("\n"),
        c.n.log()
    );
    let items = pods["items"].as_array().unwrap();
    let ips: Vec<String> = items
        .iter()
        .map(|p| p["status"]["podIP"].as_str().unwrap().to_string())
        .collect();
    let names: Vec<String> = items
        .iter()
        .map(|p| p["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    let wide =
        c.cp.kubectl_ok(&["get", "pods", "-l", "app=web", "-o", "wide"]);
    for (ip, name) in ips.iter().zip(&names) {
        assert!(
            wide.lines().any(|l| l.contains(name)
                && l.contains(ip)
                && l.contains(&c.name)
                && l.contains("Running")),
            "{wide}"
        );
    }
    for p in items {
        assert_eq!(p["status"]["hostIP"], NODE_IP);
        assert_eq!(p["status"]["qosClass"], "BestEffort");
        assert!(p["status"]["startTime"].is_string());
        let cs = &p["status"]["containerStatuses"][0];
        assert!(
            cs["imageID"].as_str().unwrap_or("").contains("@sha256:"),
            "{cs}"
        );
        assert!(
            cs["containerID"]
                .as_str()
                .unwrap_or("")
                .starts_with("nestbox://"),
            "{cs}"
        );
        let conds = p["status"]["conditions"].to_string();
        for t in ["PodScheduled", "Initialized", "ContainersReady", "Ready"] {
            assert!(conds.contains(t), "{conds}");
        }
    }

    // Another pod reaches each replica over HTTP; each answers with its own hostname.
    let client = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "client", "namespace": "default"},
        "spec": {
            "restartPolicy": "Never",
            "containers": [{
                "name": "wget", "image": c.image,
                "command": ["sh", "-c", format!("for ip in {}; do wget -qO- http://$ip:8080/ || exit 1; done", ips.join(" "))]
            }]
        }
    });
    c.cp.apply(&client.to_string());
    let p = c.wait_pod("client", 60, "Succeeded", |p| {
        phase(p) == "Succeeded" || phase(p) == "Failed"
    });
    let log = c.log_of(&p, "wget");
    assert_eq!(phase(&p), "Succeeded", "{}\n{log}", p["status"]);
    for name in &names {
        assert!(
            log.contains(&format!("stdout F {name}")),
            "no answer from {name}: {log}"
        );
    }
}

#[test]
fn init_order_shared_localhost_and_status_fidelity() {
    let mut c = Cluster::start();
    let img = c.image.clone();
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "inits", "namespace": "default"},
        "spec": {
            "terminationGracePeriodSeconds": 2,
            "volumes": [{"name": "shared", "emptyDir": {}}],
            "initContainers": [
                {"name": "first", "image": img, "volumeMounts": [{"name": "shared", "mountPath": "/s"}],
                 "command": ["sh", "-c", "cut -d' ' -f1 /proc/uptime > /s/first; sleep 1"]},
                {"name": "second", "image": img, "volumeMounts": [{"name": "shared", "mountPath": "/s"}],
                 "command": ["sh", "-c", "test -f /s/first && cut -d' ' -f1 /proc/uptime > /s/second"]}
            ],
            "containers": [
                {"name": "server", "image": img, "volumeMounts": [{"name": "shared", "mountPath": "/s"}],
                 "command": ["sh", "-c", "echo local-ok > /s/index.html && exec httpd -f -p 127.0.0.1:8081 -h /s"]},
                {"name": "probe", "image": img, "volumeMounts": [{"name": "shared", "mountPath": "/s"}],
                 "env": [{"name": "WHO", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                         {"name": "GREETING", "value": "hi $(WHO)"}],
                 "command": ["sh", "-c", "echo \"$GREETING\"; cat /s/first /s/second; until wget -qO- http://127.0.0.1:8081/; do sleep 0.2; done; sleep 3600"]}
            ]
        }
    });
    c.cp.apply(&pod.to_string());
    let p = c.wait_pod("inits", 60, "Running", |p| phase(p) == "Running");
    let inits = p["status"]["initContainerStatuses"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(inits.len(), 2, "{}", p["status"]);
    for i in &inits {
        assert_eq!(i["state"]["terminated"]["reason"], "Completed", "{i}");
        assert_eq!(i["ready"], true, "{i}");
    }
    let first_done = inits[0]["state"]["terminated"]["finishedAt"]
        .as_str()
        .unwrap()
        .to_string();
    let second_start = inits[1]["state"]["terminated"]["startedAt"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        first_done <= second_start,
        "init order: first finished {first_done}, second started {second_start}"
    );
    let ok = wait_until(20, || {
        c.log_of(&c.pod("inits"), "probe").contains("local-ok")
    });
    let log = c.log_of(&c.pod("inits"), "probe");
    assert!(ok, "the apps do not share localhost: {log}");
    assert!(log.contains("stdout F hi inits"), "env expansion: {log}");
    // /proc/uptime readings: "<seconds>.<hundredths>".
    let stamps: Vec<f64> = log
        .lines()
        .filter_map(|l| l.rsplit(' ').next())
        .filter(|t| t.contains('.'))
        .filter_map(|t| t.parse().ok())
        .collect();
    assert_eq!(stamps.len(), 2, "{log}");
    assert!(
        stamps[0] < stamps[1],
        "init timestamps out of order: {stamps:?}"
    );

    // Exit 0 with restartPolicy Never → Succeeded/Completed; exit 3 → Failed, exitCode 3.
    for (name, code) in [("exit0", 0), ("exit3", 3)] {
        c.cp.apply(
            &json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "namespace": "default"},
                "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": img,
                         "command": ["sh", "-c", format!("exit {code}")]}]}
            })
            .to_string(),
        );
    }
    let p = c.wait_pod("exit0", 60, "Succeeded", |p| phase(p) == "Succeeded");
    assert_eq!(
        p["status"]["containerStatuses"][0]["state"]["terminated"]["reason"],
        "Completed"
    );
    let p = c.wait_pod("exit3", 60, "Failed", |p| phase(p) == "Failed");
    let t = &p["status"]["containerStatuses"][0]["state"]["terminated"];
    assert_eq!(t["exitCode"], 3, "{t}");
    assert_eq!(t["reason"], "Error", "{t}");

    // A missing image: ErrImagePull, then ImagePullBackOff.
    c.cp.apply(
        &json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "missing", "namespace": "default"},
            "spec": {"containers": [{"name": "c", "image": "127.0.0.1:5000/nope:1"}]}
        })
        .to_string(),
    );
    let mut seen: Vec<String> = Vec::new();
    let ok = wait_until(60, || {
        let r = waiting_reason(&c.pod("missing"), 0);
        if !r.is_empty() && seen.last() != Some(&r) {
            seen.push(r.clone());
        }
        seen.contains(&"ErrImagePull".to_string()) && seen.contains(&"ImagePullBackOff".to_string())
    });
    assert!(ok, "reasons seen: {seen:?}\n{}", c.n.log());

    // A spec nestlet cannot run gets a reason and a message, and nestlet carries on.
    c.cp.apply(
        &json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "nonroot", "namespace": "default"},
            "spec": {"securityContext": {"runAsNonRoot": true},
                     "containers": [{"name": "c", "image": img, "command": ["sleep", "60"]}]}
        })
        .to_string(),
    );
    let p = c.wait_pod("nonroot", 60, "CreateContainerConfigError", |p| {
        waiting_reason(p, 0) == "CreateContainerConfigError"
    });
    let msg = p["status"]["containerStatuses"][0]["state"]["waiting"]["message"]
        .as_str()
        .unwrap_or("");
    assert!(msg.contains("runAsNonRoot"), "{msg}");
    assert!(c.n.running(), "nestlet died\n{}", c.n.log());
}

#[test]
fn deletion_runs_prestop_then_kills_and_cleans_up_and_a_restart_keeps_pods() {
    let mut c = Cluster::start();
    let hostdir = TempDir::new("nlhost");
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "stubborn", "namespace": "default"},
        "spec": {
            "terminationGracePeriodSeconds": 4,
            "volumes": [{"name": "host", "hostPath": {"path": hostdir.path().display().to_string(), "type": "Directory"}}],
            "containers": [{
                "name": "c", "image": c.image,
                "volumeMounts": [{"name": "host", "mountPath": "/host"}],
                "command": ["sh", "-c", "trap '' TERM; echo started > /host/started; exec sleep 3600"],
                "lifecycle": {"preStop": {"exec": {"command": ["sh", "-c", "echo prestop-ran > /host/prestop"]}}}
            }]
        }
    });
    c.cp.apply(&pod.to_string());
    let p = c.wait_pod("stubborn", 60, "Running", |p| phase(p) == "Running");
    let ip = p["status"]["podIP"].as_str().unwrap().to_string();
    assert!(wait_until(10, || hostdir.path().join("started").is_file()));
    let pids = c.n.cgroup_pids();
    assert!(pids.len() >= 2, "{pids:?}");

    // nestlet SIGTERMed: the pod keeps running; a new nestlet adopts it.
    c.n.stop();
    std::thread::sleep(Duration::from_secs(1));
    for pid in &pids {
        assert!(
            std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "pid {pid} died with nestlet"
        );
    }
    c.n.start();
    std::thread::sleep(Duration::from_secs(3));
    let p2 = c.pod("stubborn");
    assert_eq!(phase(&p2), "Running");
    assert_eq!(p2["status"]["containerStatuses"][0]["restartCount"], 0);
    assert_eq!(
        p2["status"]["containerStatuses"][0]["containerID"],
        p["status"]["containerStatuses"][0]["containerID"]
    );

    let started = Instant::now();
    c.cp.kubectl_ok(&["delete", "pod", "stubborn", "--wait=false"]);
    let ok = wait_until(30, || {
        let out = c.cp.kubectl(&["get", "pod", "stubborn"]);
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("NotFound")
    });
    let took = started.elapsed();
    assert!(ok, "pod not deleted\n{}", c.n.log());
    assert!(
        took <= Duration::from_secs(4 + 2 + 1),
        "deletion took {took:?} (grace 4 s)"
    );
    assert_eq!(
        fs::read_to_string(hostdir.path().join("prestop"))
            .unwrap_or_default()
            .trim(),
        "prestop-ran"
    );
    // Everything of the pod is gone.
    assert!(
        c.n.cgroup_pids().is_empty(),
        "processes left: {:?}",
        c.n.cgroup_pids()
    );
    assert!(
        c.n.shim_pids().is_empty(),
        "shims left: {:?}",
        c.n.shim_pids()
    );
    assert!(c.n.mounts().is_empty(), "mounts left: {:?}", c.n.mounts());
    let veths = c
        .node
        .exec_ok(&["ip", "-o", "link", "show", "type", "veth"]);
    assert!(!veths.contains("master cni0"), "pod veth left: {veths}");
    let reserved = fs::read_dir(c.n.ipam_dir.join("nestlet-test"))
        .map(|d| d.flatten().any(|e| e.file_name().to_string_lossy() == ip))
        .unwrap_or(false);
    assert!(!reserved, "IP {ip} still reserved");
    let uid = p["metadata"]["uid"].as_str().unwrap();
    for m in nestlet_common::cgroup_mounts() {
        let left = sh_ok(&format!(
            "find {} -maxdepth 4 -name 'pod{uid}' 2>/dev/null || true",
            m.join(c.n.cgroup_root.trim_start_matches('/')).display()
        ));
        assert!(left.trim().is_empty(), "pod cgroup left: {left}");
    }
}
