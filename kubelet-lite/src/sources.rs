//! Where pods come from, and where their status goes:
//! - the apiserver: pods bound to this node (watch with `spec.nodeName=<node>`; the watcher
//!   re-lists when its watch expires), status PATCHed on `pods/<name>/status`;
//! - the manifest directory: static pods (`*.yaml`, `*.yml`, `*.json`), re-read every few
//!   seconds; named `<name>-<node>` with a UID derived from the file and its content, as the
//!   kubelet does. Their status is kept in the state dir (`nestlet pods` shows it).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use serde_json::json;
use tokio::sync::{mpsc, Mutex};

use crate::pod::{Source, SourceMsg, StatusReport};

/// Watch the pods bound to `node` and feed the manager.
pub async fn watch_api_pods(
    client: kube::Client,
    node: String,
    tx: mpsc::UnboundedSender<SourceMsg>,
) {
    let api: Api<Pod> = Api::all(client);
    let cfg = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
    let mut stream = watcher::watcher(api, cfg).default_backoff().boxed();
    let mut listed: Vec<String> = Vec::new();
    while let Some(ev) = stream.next().await {
        match ev {
            Ok(Event::Init) => listed.clear(),
            Ok(Event::InitApply(p)) => {
                listed.push(p.metadata.uid.clone().unwrap_or_default());
                let _ = tx.send(SourceMsg::Upsert(Box::new(p), Source::Api));
            }
            Ok(Event::InitDone) => {
                let _ = tx.send(SourceMsg::Snapshot(
                    Source::Api,
                    std::mem::take(&mut listed),
                ));
            }
            Ok(Event::Apply(p)) => {
                let _ = tx.send(SourceMsg::Upsert(Box::new(p), Source::Api));
            }
            Ok(Event::Delete(p)) => {
                let _ = tx.send(SourceMsg::Delete(
                    p.metadata.uid.clone().unwrap_or_default(),
                ));
            }
            Err(e) => tracing::warn!("pod watch: {e} (retrying)"),
        }
    }
}

/// The UID of a static pod: stable for one file content (a changed manifest is a new pod).
fn static_uid(path: &Path, content: &[u8]) -> String {
    let mut data = path.display().to_string().into_bytes();
    data.push(0);
    data.extend_from_slice(content);
    let h = crate::util::sha256_hex(&data);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Parse one manifest into a static pod of `node` (the kubelet's defaulting for file
/// sources).
pub fn static_pod(path: &Path, content: &[u8], node: &str) -> Result<Pod, String> {
    let text = std::str::from_utf8(content).map_err(|e| e.to_string())?;
    let mut pod: Pod = if path.extension().and_then(|e| e.to_str()) == Some("json") {
        serde_json::from_str(text).map_err(|e| e.to_string())?
    } else {
        serde_saphyr::from_str(text).map_err(|e| e.to_string())?
    };
    let name = pod
        .metadata
        .name
        .clone()
        .filter(|n| !n.is_empty())
        .ok_or("no metadata.name")?;
    let uid = static_uid(path, content);
    pod.metadata.name = Some(format!("{name}-{node}"));
    pod.metadata
        .namespace
        .get_or_insert_with(|| "default".into());
    pod.metadata.uid = Some(uid.clone());
    let ann = pod.metadata.annotations.get_or_insert_with(BTreeMap::new);
    ann.insert("kubernetes.io/config.source".into(), "file".into());
    ann.insert("kubernetes.io/config.hash".into(), uid);
    let spec = pod.spec.as_mut().ok_or("no spec")?;
    if spec.containers.is_empty() {
        return Err("spec.containers is empty".into());
    }
    spec.node_name = Some(node.to_string());
    Ok(pod)
}

/// Poll the manifest directory; send every pod and, after each scan, the snapshot.
pub async fn watch_manifests(dir: PathBuf, node: String, tx: mpsc::UnboundedSender<SourceMsg>) {
    let mut seen: HashMap<PathBuf, (std::time::SystemTime, u64, Option<String>)> = HashMap::new();
    loop {
        let mut uids = Vec::new();
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map(|rd| rd.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        files.sort();
        let mut present = HashMap::new();
        for f in files {
            let hidden = f
                .file_name()
                .and_then(|n| n.to_str())
                .is_none_or(|n| n.starts_with('.'));
            let ext_ok = matches!(
                f.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml" | "json")
            );
            if hidden || !ext_ok || !f.is_file() {
                continue;
            }
            let Ok(meta) = std::fs::metadata(&f) else {
                continue;
            };
            let key = (meta.modified().unwrap_or(std::time::UNIX_EPOCH), meta.len());
            if let Some((m, l, uid)) = seen.get(&f) {
                if (*m, *l) == key {
                    if let Some(u) = uid {
                        uids.push(u.clone());
                    }
                    present.insert(f.clone(), seen[&f].clone());
                    continue;
                }
            }
            let content = std::fs::read(&f).unwrap_or_default();
            let uid = match static_pod(&f, &content, &node) {
                Ok(p) => {
                    let uid = p.metadata.uid.clone();
                    let _ = tx.send(SourceMsg::Upsert(Box::new(p), Source::File));
                    uid
                }
                Err(e) => {
                    tracing::warn!(file = %f.display(), "static pod manifest: {e}");
                    None
                }
            };
            if let Some(u) = &uid {
                uids.push(u.clone());
            }
            present.insert(f.clone(), (key.0, key.1, uid));
        }
        seen = present;
        let _ = tx.send(SourceMsg::Snapshot(Source::File, uids));
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// Writes every status report to `<root>/pods/<uid>/status.json` and, for API pods, PATCHes
/// it to the apiserver (in order per pod, concurrently across pods).
pub async fn report_status(
    api: Option<kube::Client>,
    root: PathBuf,
    mut rx: mpsc::UnboundedReceiver<StatusReport>,
) {
    let locks: Arc<Mutex<HashMap<String, Arc<Mutex<()>>>>> = Arc::default();
    while let Some(r) = rx.recv().await {
        let dir = root.join("pods").join(&r.uid);
        if r.gone {
            locks.lock().await.remove(&r.uid);
            continue;
        }
        if dir.is_dir() {
            let _ = crate::util::write_atomic(
                &dir.join("status.json"),
                &serde_json::to_vec(&r.status).unwrap_or_default(),
            );
        }
        let Some(client) = api.clone() else { continue };
        if r.static_pod {
            continue;
        }
        let lock = locks
            .lock()
            .await
            .entry(r.uid.clone())
            .or_insert_with(|| Arc::new(Mutex::new(())))
            .clone();
        tokio::spawn(async move {
            let _g = lock.lock().await;
            let pods: Api<Pod> = Api::namespaced(client, &r.namespace);
            let patch = json!({"metadata": {"uid": r.uid}, "status": r.status});
            for attempt in 0..5u32 {
                match pods
                    .patch_status(&r.name, &PatchParams::default(), &Patch::Strategic(&patch))
                    .await
                {
                    Ok(_) => return,
                    Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => return,
                    Err(e) => {
                        tracing::warn!(pod = %format!("{}/{}", r.namespace, r.name), "status patch: {e}");
                        tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
                    }
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_pods_are_named_after_the_node_with_a_content_uid() {
        let y = b"apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\nspec:\n  containers:\n  - name: c\n    image: busybox\n";
        let p = static_pod(Path::new("/m/web.yaml"), y, "n1").unwrap();
        assert_eq!(p.metadata.name.as_deref(), Some("web-n1"));
        assert_eq!(p.metadata.namespace.as_deref(), Some("default"));
        let uid = p.metadata.uid.clone().unwrap();
        assert_eq!(uid.len(), 36);
        let p2 = static_pod(
            Path::new("/m/web.yaml"),
            &[y.as_slice(), b"    args: [x]\n"].concat(),
            "n1",
        )
        .unwrap();
        assert_ne!(p2.metadata.uid.unwrap(), uid);
        assert!(static_pod(Path::new("/m/x.yaml"), b"kind: Pod\n", "n1").is_err());
    }
}
