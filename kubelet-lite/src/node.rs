//! The Node object: registration (labels, addresses, capacity, nodeInfo), status
//! conditions (Ready/KubeletReady, or NotReady until a CNI config exists, and the pressure
//! conditions), the Lease in `kube-node-lease` renewed every 10 s, and status patched on
//! change and at least every 5 minutes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{
    DaemonEndpoint, Node, NodeAddress, NodeCondition, NodeDaemonEndpoints, NodeStatus,
    NodeSystemInfo,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

/// The message the node's Ready condition carries while no CNI config exists.
pub const NO_CNI_MESSAGE: &str = "network not ready: no CNI configuration";
pub const LEASE_SECONDS: i32 = 40;
pub const LEASE_RENEW: Duration = Duration::from_secs(10);
pub const STATUS_REPORT: Duration = Duration::from_secs(300);

pub fn cpu_count() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// Total memory from /proc/meminfo, bytes.
pub fn memory_bytes() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

fn read_trim(p: &str) -> String {
    std::fs::read_to_string(p)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn os_image() -> String {
    std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("PRETTY_NAME=")
                    .map(|v| v.trim_matches('"').to_string())
            })
        })
        .unwrap_or_else(|| "Linux".into())
}

pub fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".into())
}

/// What the node reports about itself (independent of the API).
pub struct NodeInfo {
    pub name: String,
    pub ip: String,
    pub runtime_version: String,
    pub max_pods: u32,
}

pub fn kubelet_version() -> String {
    format!("v{}-nestlet", env!("CARGO_PKG_VERSION"))
}

fn capacity(max_pods: u32) -> BTreeMap<String, Quantity> {
    let mut m = BTreeMap::new();
    m.insert("cpu".into(), Quantity(cpu_count().to_string()));
    m.insert(
        "memory".into(),
        Quantity(format!("{}Ki", memory_bytes() / 1024)),
    );
    m.insert("pods".into(), Quantity(max_pods.to_string()));
    if let Ok(st) = nix::sys::statvfs::statvfs("/") {
        let b = st.blocks() * st.fragment_size();
        m.insert(
            "ephemeral-storage".into(),
            Quantity(format!("{}Ki", b / 1024)),
        );
    }
    m
}

fn condition(ty: &str, ok: bool, reason: &str, message: &str) -> NodeCondition {
    let now = crate::util::now_time();
    NodeCondition {
        type_: ty.into(),
        status: if ok { "True" } else { "False" }.into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_heartbeat_time: Some(now.clone()),
        last_transition_time: Some(now),
    }
}

/// The node's status as nestlet sees it now.
pub fn status(info: &NodeInfo, network_ready: bool) -> NodeStatus {
    let ready = if network_ready {
        condition(
            "Ready",
            true,
            "KubeletReady",
            "nestlet is posting ready status",
        )
    } else {
        condition("Ready", false, "KubeletNotReady", NO_CNI_MESSAGE)
    };
    NodeStatus {
        addresses: Some(vec![
            NodeAddress {
                type_: "InternalIP".into(),
                address: info.ip.clone(),
            },
            NodeAddress {
                type_: "Hostname".into(),
                address: info.name.clone(),
            },
        ]),
        capacity: Some(capacity(info.max_pods)),
        allocatable: Some(capacity(info.max_pods)),
        conditions: Some(vec![
            condition(
                "MemoryPressure",
                false,
                "KubeletHasSufficientMemory",
                "nestlet has sufficient memory available",
            ),
            condition(
                "DiskPressure",
                false,
                "KubeletHasNoDiskPressure",
                "nestlet has no disk pressure",
            ),
            condition(
                "PIDPressure",
                false,
                "KubeletHasSufficientPID",
                "nestlet has sufficient PID available",
            ),
            ready,
        ]),
        daemon_endpoints: Some(NodeDaemonEndpoints {
            kubelet_endpoint: Some(DaemonEndpoint { port: 10250 }),
        }),
        node_info: Some(NodeSystemInfo {
            architecture: std::env::consts::ARCH
                .replace("x86_64", "amd64")
                .replace("aarch64", "arm64"),
            boot_id: read_trim("/proc/sys/kernel/random/boot_id"),
            container_runtime_version: info.runtime_version.clone(),
            kernel_version: read_trim("/proc/sys/kernel/osrelease"),
            kube_proxy_version: String::new(),
            kubelet_version: kubelet_version(),
            machine_id: read_trim("/etc/machine-id"),
            operating_system: "linux".into(),
            os_image: os_image(),
            system_uuid: read_trim("/sys/class/dmi/id/product_uuid"),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn labels(name: &str) -> BTreeMap<String, String> {
    let arch = std::env::consts::ARCH
        .replace("x86_64", "amd64")
        .replace("aarch64", "arm64");
    BTreeMap::from([
        ("kubernetes.io/hostname".to_string(), name.to_string()),
        ("kubernetes.io/os".to_string(), "linux".to_string()),
        ("kubernetes.io/arch".to_string(), arch.clone()),
        ("beta.kubernetes.io/os".to_string(), "linux".to_string()),
        ("beta.kubernetes.io/arch".to_string(), arch),
    ])
}

/// The node loop: register (retrying with backoff while the apiserver is unreachable),
/// then renew the Lease every 10 s and patch the status on change or every 5 minutes.
/// `network_ready` is asked on every round. Sends the podCIDR once known.
pub async fn run(
    client: kube::Client,
    info: Arc<NodeInfo>,
    network_ready: impl Fn() -> bool,
    pod_cidr: tokio::sync::watch::Sender<Option<String>>,
) {
    let nodes: Api<Node> = Api::all(client.clone());
    let leases: Api<Lease> = Api::namespaced(client, "kube-node-lease");
    let mut backoff = Duration::from_millis(500);
    let node = loop {
        match register(&nodes, &info, network_ready()).await {
            Ok(n) => break n,
            Err(e) => {
                tracing::error!(
                    "registering node {} with the apiserver: {e}; retrying in {backoff:?}",
                    info.name
                );
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    };
    tracing::info!(node = %info.name, "node registered");
    let uid = node.metadata.uid.clone().unwrap_or_default();
    let mut last_ready = None;
    let mut last_report = Instant::now();
    let mut cidr_logged = false;
    loop {
        if let Err(e) = renew_lease(&leases, &info.name, &uid).await {
            tracing::warn!("renewing the node lease: {e}");
        }
        let ready = network_ready();
        if last_ready != Some(ready) || last_report.elapsed() >= STATUS_REPORT {
            let patch = json!({"status": status(&info, ready)});
            match nodes
                .patch_status(
                    &info.name,
                    &PatchParams::default(),
                    &Patch::Strategic(patch),
                )
                .await
            {
                Ok(n) => {
                    last_ready = Some(ready);
                    last_report = Instant::now();
                    if let Some(c) = n.spec.as_ref().and_then(|s| s.pod_cidr.clone()) {
                        if !cidr_logged {
                            tracing::info!(pod_cidr = %c, "node podCIDR");
                            cidr_logged = true;
                        }
                        pod_cidr.send_replace(Some(c));
                    }
                }
                Err(e) => tracing::warn!("patching the node status: {e}"),
            }
        } else if !cidr_logged {
            if let Ok(n) = nodes.get(&info.name).await {
                if let Some(c) = n.spec.as_ref().and_then(|s| s.pod_cidr.clone()) {
                    tracing::info!(pod_cidr = %c, "node podCIDR");
                    cidr_logged = true;
                    pod_cidr.send_replace(Some(c));
                }
            }
        }
        tokio::time::sleep(LEASE_RENEW).await;
    }
}

async fn register(nodes: &Api<Node>, info: &NodeInfo, ready: bool) -> Result<Node, kube::Error> {
    let node = Node {
        metadata: ObjectMeta {
            name: Some(info.name.clone()),
            labels: Some(labels(&info.name)),
            annotations: Some(BTreeMap::from([(
                "node.alpha.kubernetes.io/ttl".to_string(),
                "0".to_string(),
            )])),
            ..Default::default()
        },
        ..Default::default()
    };
    match nodes.create(&PostParams::default(), &node).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {
            // Already registered (a restart): make sure the labels are ours.
            let patch = json!({"metadata": {"labels": labels(&info.name)}});
            nodes
                .patch(
                    &info.name,
                    &PatchParams::default(),
                    &Patch::Strategic(patch),
                )
                .await?;
        }
        Err(e) => return Err(e),
    }
    let patch = json!({"status": status(info, ready)});
    nodes
        .patch_status(
            &info.name,
            &PatchParams::default(),
            &Patch::Strategic(patch),
        )
        .await
}

async fn renew_lease(leases: &Api<Lease>, name: &str, node_uid: &str) -> Result<(), kube::Error> {
    let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
    let spec = LeaseSpec {
        holder_identity: Some(name.to_string()),
        lease_duration_seconds: Some(LEASE_SECONDS),
        renew_time: Some(now),
        ..Default::default()
    };
    match leases.get_opt(name).await? {
        Some(mut l) => {
            l.spec = Some(LeaseSpec {
                acquire_time: l.spec.as_ref().and_then(|s| s.acquire_time.clone()),
                ..spec
            });
            leases.replace(name, &PostParams::default(), &l).await?;
        }
        None => {
            let l = Lease {
                metadata: ObjectMeta {
                    name: Some(name.to_string()),
                    namespace: Some("kube-node-lease".into()),
                    owner_references: Some(vec![OwnerReference {
                        api_version: "v1".into(),
                        kind: "Node".into(),
                        name: name.to_string(),
                        uid: node_uid.to_string(),
                        ..Default::default()
                    }]),
                    ..Default::default()
                },
                spec: Some(spec),
            };
            leases.create(&PostParams::default(), &l).await?;
        }
    }
    Ok(())
}
