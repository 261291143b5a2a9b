//! Kubernetes subnet manager (flannel's `--kube-subnet-mgr`): the node's `spec.podCIDR`
//! (set by controller-manager `--allocate-node-cidrs`) is the lease; the VTEP data is
//! published as node annotations (`flannel.alpha.coreos.com/backend-type`,
//! `backend-data`, `public-ip`, `kube-subnet-manager`) with a patch of the node's status,
//! as flannel does; peers are the other nodes carrying those annotations. The network
//! config comes from flannel's net-conf.json.
//!
//! kube-rs is async: calls run on a private current-thread runtime (`block_on`), so the
//! agent stays synchronous and single-threaded.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc::Sender;

use ::kube::api::{Api, ListParams, Patch, PatchParams, WatchEvent, WatchParams};
use ::kube::config::{KubeConfigOptions, Kubeconfig};
use ::kube::{Client, Config};
use ipnetwork::Ipv4Network;
use k8s_openapi::api::core::v1::Node;
use serde_json::{json, Value};

use super::SubnetManager;
use crate::config::{Lease, LeaseAttrs, NetworkConfig};
use crate::Error;

pub const ANNOTATION_PREFIX: &str = "flannel.alpha.coreos.com/";

pub struct KubeSubnetManager {
    rt: tokio::runtime::Runtime,
    /// For the watch thread's own client (a client's worker runs on the runtime it was
    /// made on, and ours only runs inside `block_on`).
    config: Config,
    nodes: Api<Node>,
    node_name: String,
    net_conf: PathBuf,
}

fn kerr(context: &str, e: impl std::fmt::Display) -> Error {
    Error::Store(format!("{context}: {e}"))
}

fn annotation<'a>(a: &'a BTreeMap<String, String>, key: &str) -> Option<&'a str> {
    a.get(&format!("{ANNOTATION_PREFIX}{key}"))
        .map(|s| s.as_str())
}

/// A node's lease, when it has a podCIDR and flannel's annotations.
pub fn lease_of_node(n: &Node) -> Option<Lease> {
    let cidr = n.spec.as_ref()?.pod_cidr.as_deref()?;
    let subnet: Ipv4Network = cidr.parse().ok()?;
    let a = n.metadata.annotations.as_ref()?;
    let public_ip = annotation(a, "public-ip")?.parse().ok()?;
    let backend_type = annotation(a, "backend-type")?.to_string();
    let backend_data = annotation(a, "backend-data")
        .and_then(|d| serde_json::from_str(d).ok())
        .unwrap_or(Value::Null);
    Some(Lease {
        subnet,
        attrs: LeaseAttrs {
            public_ip,
            public_ipv6: annotation(a, "public-ipv6").and_then(|v| v.parse().ok()),
            backend_type,
            backend_data,
        },
        revision: 0,
    })
}

impl KubeSubnetManager {
    pub fn new(
        kubeconfig: Option<&Path>,
        node_name: &str,
        net_conf: &Path,
    ) -> Result<KubeSubnetManager, Error> {
        // kube's rustls needs a process-wide crypto provider; ring is the one built in.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (client, config) = rt.block_on(async {
            let config = match kubeconfig {
                Some(p) => {
                    let kc = Kubeconfig::read_from(p).map_err(|e| kerr("reading kubeconfig", e))?;
                    Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                        .await
                        .map_err(|e| kerr("kubeconfig", e))?
                }
                None => Config::infer()
                    .await
                    .map_err(|e| kerr("finding the apiserver", e))?,
            };
            let client = Client::try_from(config.clone()).map_err(|e| kerr("kube client", e))?;
            Ok::<_, Error>((client, config))
        })?;
        Ok(KubeSubnetManager {
            rt,
            config,
            nodes: Api::all(client),
            node_name: node_name.to_string(),
            net_conf: net_conf.to_path_buf(),
        })
    }

    fn own_node(&self) -> Result<Node, Error> {
        self.rt
            .block_on(self.nodes.get(&self.node_name))
            .map_err(|e| kerr(&format!("getting node {}", self.node_name), e))
    }
}

impl SubnetManager for KubeSubnetManager {
    fn network_config(&mut self) -> Result<NetworkConfig, Error> {
        let bytes = std::fs::read(&self.net_conf)
            .map_err(|e| Error::Config(format!("{}: {e}", self.net_conf.display())))?;
        NetworkConfig::parse(&bytes)
    }

    fn leases(&mut self) -> Result<Vec<Lease>, Error> {
        let list = self
            .rt
            .block_on(self.nodes.list(&ListParams::default()))
            .map_err(|e| kerr("listing nodes", e))?;
        Ok(list.items.iter().filter_map(lease_of_node).collect())
    }

    fn acquire(
        &mut self,
        config: &NetworkConfig,
        attrs: &LeaseAttrs,
        _previous: Option<&Lease>,
        _prefer: Option<Ipv4Network>,
    ) -> Result<Lease, Error> {
        let node = self.own_node()?;
        let cidr = node
            .spec
            .as_ref()
            .and_then(|s| s.pod_cidr.clone())
            .ok_or_else(|| {
                Error::Store(format!(
                    "node {} has no spec.podCIDR yet (controller-manager --allocate-node-cidrs)",
                    self.node_name
                ))
            })?;
        let subnet: Ipv4Network = cidr
            .parse()
            .map_err(|e| Error::Config(format!("podCIDR {cidr:?}: {e}")))?;
        if !config.network.contains(subnet.network()) {
            return Err(Error::Config(format!(
                "podCIDR {subnet} is outside the network {}",
                config.network
            )));
        }
        let data =
            serde_json::to_string(&attrs.backend_data).map_err(|e| Error::Config(e.to_string()))?;
        let p = |k: &str| format!("{ANNOTATION_PREFIX}{k}");
        let patch = json!({"metadata": {"annotations": {
            p("backend-type"): attrs.backend_type,
            p("backend-data"): data,
            p("public-ip"): attrs.public_ip.to_string(),
            p("kube-subnet-manager"): "true",
        }}});
        self.rt
            .block_on(self.nodes.patch_status(
                &self.node_name,
                &PatchParams::default(),
                &Patch::Strategic(patch),
            ))
            .map_err(|e| kerr(&format!("annotating node {}", self.node_name), e))?;
        tracing::info!(%subnet, node = %self.node_name, "node podCIDR is our lease; VTEP published");
        Ok(Lease {
            subnet,
            attrs: attrs.clone(),
            revision: 0,
        })
    }

    fn renew(&mut self, lease: &Lease) -> Result<bool, Error> {
        // The lease lives as long as the node; re-publish if the annotations went away.
        let node = self.own_node()?;
        Ok(
            lease_of_node(&node)
                .is_some_and(|l| l.attrs == lease.attrs && l.subnet == lease.subnet),
        )
    }

    fn watch(&mut self, changed: Sender<()>) -> Result<(), Error> {
        let config = self.config.clone();
        std::thread::Builder::new()
            .name("node-watch".into())
            .spawn(move || watch_nodes(config, changed))?;
        Ok(())
    }
}

/// Watch Node objects on a runtime of this thread; any event wakes the agent, which then
/// lists the nodes. Re-watches after errors and server-side timeouts.
fn watch_nodes(config: Config, changed: Sender<()>) {
    use futures::StreamExt;
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::warn!(error = %e, "node watch runtime; polling only");
            return;
        }
    };
    rt.block_on(async move {
        let nodes: Api<Node> = match Client::try_from(config) {
            Ok(c) => Api::all(c),
            Err(e) => {
                tracing::warn!(error = %e, "node watch client; polling only");
                return;
            }
        };
        let mut seen: std::collections::HashMap<String, Option<Lease>> = Default::default();
        loop {
            match nodes.watch(&WatchParams::default().timeout(290), "0").await {
                Ok(stream) => {
                    let mut stream = Box::pin(stream);
                    while let Some(ev) = stream.next().await {
                        // Only lease changes matter: node status heartbeats are ignored.
                        let relevant = match ev {
                            Ok(WatchEvent::Added(n)) | Ok(WatchEvent::Modified(n)) => {
                                let name = n.metadata.name.clone().unwrap_or_default();
                                let lease = lease_of_node(&n);
                                seen.insert(name, lease.clone()) != Some(lease)
                            }
                            Ok(WatchEvent::Deleted(n)) => {
                                let name = n.metadata.name.clone().unwrap_or_default();
                                seen.remove(&name).flatten().is_some()
                            }
                            Ok(_) => false,
                            Err(_) => break,
                        };
                        if relevant && changed.send(()).is_err() {
                            return;
                        }
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "node watch failed; retrying");
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                }
            }
            if changed.send(()).is_err() {
                return;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_with_flannel_annotations_is_a_lease() {
        let n: Node = serde_json::from_value(json!({
            "metadata": {"name": "n1", "annotations": {
                "flannel.alpha.coreos.com/backend-type": "vxlan",
                "flannel.alpha.coreos.com/backend-data": "{\"VNI\":1,\"VtepMAC\":\"0e:00:00:00:00:01\"}",
                "flannel.alpha.coreos.com/public-ip": "192.168.77.11",
            }},
            "spec": {"podCIDR": "10.244.1.0/24"},
        }))
        .unwrap();
        let l = lease_of_node(&n).unwrap();
        assert_eq!(l.subnet.to_string(), "10.244.1.0/24");
        assert_eq!(l.vxlan_data().unwrap().vtep_mac, "0e:00:00:00:00:01");
        let bare: Node = serde_json::from_value(
            json!({"metadata": {"name": "n2"}, "spec": {"podCIDR": "10.244.2.0/24"}}),
        )
        .unwrap();
        assert!(lease_of_node(&bare).is_none());
    }
}
