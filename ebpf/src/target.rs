//! Which pod a command is about, and what the node knows of it: a pod name (`ns/name`)
//! from nestlet's state, a container id from the CNI result cache that every libcni
//! caller keeps (`/var/lib/cni/results/<network>-<container>-<ifname>`), a netns name
//! under /run/netns, or a netns path. Names for pods come from the same places, in that
//! order, so any node built from bridges and veths works, with or without nestlet.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use base64::Engine;
use ipnetwork::IpNetwork;
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("no pod, container or netns named {0:?} (looked in nestlet's state {1}, the CNI result cache {2} and {3})")]
    NotFound(String, String, String, String),
    #[error("{0:?} matches several containers: {1}")]
    Ambiguous(String, String),
}

/// Where names come from.
#[derive(Debug, Clone)]
pub struct Sources {
    pub nestlet_root: PathBuf,
    /// libcni's cache dir (results under `results/`).
    pub cni_cache: PathBuf,
    pub netns_dir: PathBuf,
}

impl Default for Sources {
    fn default() -> Self {
        Sources {
            nestlet_root: PathBuf::from("/var/lib/nestlet"),
            cni_cache: PathBuf::from("/var/lib/cni"),
            netns_dir: PathBuf::from("/run/netns"),
        }
    }
}

/// A pod (or a bare netns) to look at.
#[derive(Debug, Clone, Default)]
pub struct Target {
    /// What to call it: `ns/name`, else the container id, else the netns name.
    pub name: String,
    pub netns: PathBuf,
    pub ifname: String,
    pub container_id: Option<String>,
    /// The addresses IPAM gave it (CNI result), when known.
    pub ips: Vec<IpNetwork>,
    pub gateway: Option<IpAddr>,
    /// The CNI network config the attachment was made with, when known.
    pub net_conf: Option<Value>,
    /// Where the target was found: `nestlet`, `cni-cache`, `netns`.
    pub source: &'static str,
}

impl Target {
    pub fn from_netns(path: &Path, name: &str) -> Target {
        Target {
            name: name.to_string(),
            netns: path.to_path_buf(),
            ifname: "eth0".into(),
            source: "netns",
            ..Default::default()
        }
    }
}

/// Every attachment in the CNI result cache.
pub fn cni_cache_entries(src: &Sources) -> Vec<Target> {
    let dir = src.cni_cache.join("results");
    let Ok(rd) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut out: Vec<Target> = rd
        .flatten()
        .filter_map(|e| std::fs::read(e.path()).ok())
        .filter_map(|b| serde_json::from_slice::<Value>(&b).ok())
        .filter_map(|v| from_cni_cache(&v))
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// libcni's cachedInfo (`kind: cniCacheV1`): containerId, ifName, networkName, config
/// (base64 of the network config), cniArgs (`[[K, V]…]`), result, and netns in newer
/// versions (else the result's interface sandbox).
fn from_cni_cache(v: &Value) -> Option<Target> {
    let id = v["containerId"].as_str()?.to_string();
    let ifname = v["ifName"].as_str().unwrap_or("eth0").to_string();
    let result = &v["result"];
    let netns = v["netns"].as_str().map(str::to_string).or_else(|| {
        result["interfaces"].as_array()?.iter().find_map(|i| {
            let s = i["sandbox"].as_str()?;
            (i["name"] == ifname.as_str() && !s.is_empty()).then(|| s.to_string())
        })
    })?;
    let arg = |k: &str| -> Option<String> {
        v["cniArgs"].as_array()?.iter().find_map(|kv| {
            let kv = kv.as_array()?;
            (kv.first()?.as_str()? == k).then(|| kv.get(1)?.as_str().map(str::to_string))?
        })
    };
    let name = match (arg("K8S_POD_NAMESPACE"), arg("K8S_POD_NAME")) {
        (Some(ns), Some(n)) => format!("{ns}/{n}"),
        _ => id.clone(),
    };
    let ips: Vec<IpNetwork> = result["ips"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|i| i["address"].as_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    let gateway = result["ips"]
        .as_array()
        .and_then(|a| a.iter().find_map(|i| i["gateway"].as_str()?.parse().ok()));
    let net_conf = v["config"].as_str().and_then(|c| {
        let bytes = base64::engine::general_purpose::STANDARD.decode(c).ok()?;
        serde_json::from_slice(&bytes).ok()
    });
    Some(Target {
        name,
        netns: PathBuf::from(netns),
        ifname,
        container_id: Some(id),
        ips,
        gateway,
        net_conf,
        source: "cni-cache",
    })
}

/// Pods in nestlet's state: `<root>/pods/<uid>/pod.json` or `<root>/pods/<uid>.json`,
/// each with `namespace`, `name`, `netns` (and optionally `containerId`, `podIP`,
/// `ifName`); the field names follow the CRI's PodSandboxStatus. Entries that do not
/// parse are skipped: the state is nestlet's, read here only for names.
pub fn nestlet_pods(src: &Sources) -> Vec<Target> {
    let dir = src.nestlet_root.join("pods");
    let Ok(rd) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in rd.flatten() {
        let p = e.path();
        let file = if p.is_dir() { p.join("pod.json") } else { p };
        let Some(v) = std::fs::read(&file)
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        else {
            continue;
        };
        let (Some(ns), Some(name), Some(netns)) = (
            v["namespace"].as_str(),
            v["name"].as_str(),
            v["netns"].as_str(),
        ) else {
            continue;
        };
        out.push(Target {
            name: format!("{ns}/{name}"),
            netns: PathBuf::from(netns),
            ifname: v["ifName"].as_str().unwrap_or("eth0").to_string(),
            container_id: v["containerId"].as_str().map(str::to_string),
            ips: v["podIP"]
                .as_str()
                .and_then(|ip| ip.parse::<IpAddr>().ok())
                .and_then(|ip| IpNetwork::new(ip, if ip.is_ipv4() { 32 } else { 128 }).ok())
                .into_iter()
                .collect(),
            source: "nestlet",
            ..Default::default()
        });
    }
    out
}

/// Every pod the node knows by name (nestlet's, then the CNI cache's), one per netns;
/// CNI cache facts (addresses, config) fill in what nestlet's entry lacks.
pub fn known_pods(src: &Sources) -> Vec<Target> {
    let cache = cni_cache_entries(src);
    let mut out: Vec<Target> = Vec::new();
    for mut p in nestlet_pods(src) {
        if let Some(c) = cache.iter().find(|c| c.netns == p.netns) {
            p.net_conf = c.net_conf.clone();
            p.gateway = c.gateway;
            if p.ips.is_empty() || !c.ips.is_empty() {
                p.ips = c.ips.clone();
            }
            p.container_id = p.container_id.or_else(|| c.container_id.clone());
        }
        out.push(p);
    }
    for c in cache {
        if !out.iter().any(|p| p.netns == c.netns) {
            out.push(c);
        }
    }
    out
}

/// Resolve a command-line argument.
pub fn resolve(arg: &str, src: &Sources) -> Result<Target, TargetError> {
    let pods = known_pods(src);
    // A pod name.
    if let Some(p) = pods.iter().find(|p| p.name == arg) {
        return Ok(p.clone());
    }
    // A container id, whole or a unique prefix (as `ctr`/`crictl` accept).
    if !arg.contains('/') && arg.len() >= 4 {
        let by_id: Vec<&Target> = pods
            .iter()
            .filter(|p| {
                p.container_id
                    .as_deref()
                    .is_some_and(|c| c.starts_with(arg))
            })
            .collect();
        match by_id.len() {
            1 => return Ok(by_id[0].clone()),
            0 => {}
            _ => {
                return Err(TargetError::Ambiguous(
                    arg.to_string(),
                    by_id
                        .iter()
                        .filter_map(|p| p.container_id.clone())
                        .collect::<Vec<_>>()
                        .join(", "),
                ))
            }
        }
    }
    // A netns path or name; known facts about it come along.
    let path = if arg.starts_with('/') {
        PathBuf::from(arg)
    } else {
        src.netns_dir.join(arg)
    };
    if !arg.contains('/') || arg.starts_with('/') {
        if let Some(p) = pods.iter().find(|p| same_file(&p.netns, &path)) {
            return Ok(p.clone());
        }
        if path.exists() {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| arg.to_string());
            return Ok(Target::from_netns(&path, &name));
        }
    }
    Err(TargetError::NotFound(
        arg.to_string(),
        src.nestlet_root.display().to_string(),
        src.cni_cache.join("results").display().to_string(),
        src.netns_dir.display().to_string(),
    ))
}

fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    if a == b {
        return true;
    }
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

/// The inode of a netns file (what the kernel calls the namespace's `ns.inum`).
pub fn netns_inode(p: &Path) -> std::io::Result<u32> {
    use std::os::unix::fs::MetadataExt;
    Ok(std::fs::metadata(p)?.ino() as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("netdiag-target-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("results")).unwrap();
        d
    }

    #[test]
    fn cni_cache_entries_give_pod_names_addresses_and_config() {
        let d = tmp("cache");
        let conf = base64::engine::general_purpose::STANDARD
            .encode(r#"{"cniVersion":"1.0.0","name":"n","type":"bridge","bridge":"cni0"}"#);
        let entry = serde_json::json!({
            "kind": "cniCacheV1", "containerId": "abcdef123456", "ifName": "eth0",
            "networkName": "n", "config": conf,
            "cniArgs": [["K8S_POD_NAMESPACE", "default"], ["K8S_POD_NAME", "web-1"]],
            "result": {"cniVersion": "1.0.0",
                "interfaces": [{"name": "eth0", "sandbox": "/run/netns/pod1"}],
                "ips": [{"address": "10.244.1.5/24", "gateway": "10.244.1.1", "interface": 0}]}
        });
        std::fs::write(d.join("results/n-abcdef123456-eth0"), entry.to_string()).unwrap();
        let src = Sources {
            nestlet_root: d.join("none"),
            cni_cache: d.clone(),
            netns_dir: d.join("netns"),
        };
        let t = resolve("default/web-1", &src).unwrap();
        assert_eq!(t.netns, PathBuf::from("/run/netns/pod1"));
        assert_eq!(t.ips[0].to_string(), "10.244.1.5/24");
        assert_eq!(t.gateway, Some("10.244.1.1".parse().unwrap()));
        assert_eq!(t.net_conf.as_ref().unwrap()["bridge"], "cni0");
        assert_eq!(resolve("abcdef", &src).unwrap().name, "default/web-1");
        assert!(matches!(
            resolve("nope", &src),
            Err(TargetError::NotFound(..))
        ));
        let _ = std::fs::remove_dir_all(&d);
    }
}
