//! Pod volumes: emptyDir (disk, or tmpfs for `medium: Memory`), hostPath (with its type
//! checks), configMap and secret (files written from the API objects; secrets on a tmpfs).
//! Everything lives under `<pod dir>/volumes/<kind>/<name>` and goes with the pod.

use std::collections::BTreeMap;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{ConfigMap, KeyToPath, Pod, Secret, Volume};
use kube::api::Api;

/// A volume ready to be bind-mounted into containers.
#[derive(Clone, Debug)]
pub struct Prepared {
    pub path: PathBuf,
}

fn mount_tmpfs(dir: &Path, size: Option<i64>) -> Result<(), String> {
    let opts = match size {
        Some(s) if s > 0 => format!("mode=0777,size={s}"),
        _ => "mode=0777".to_string(),
    };
    nix::mount::mount(
        Some("tmpfs"),
        dir,
        Some("tmpfs"),
        nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
        Some(opts.as_str()),
    )
    .map_err(|e| format!("mounting a tmpfs on {}: {e}", dir.display()))
}

fn is_mountpoint(dir: &Path) -> bool {
    let Ok(s) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let d = dir.display().to_string();
    s.lines()
        .any(|l| l.split_whitespace().nth(4) == Some(d.as_str()))
}

fn write_items(
    dir: &Path,
    data: &BTreeMap<String, Vec<u8>>,
    items: Option<&Vec<KeyToPath>>,
    default_mode: i32,
) -> Result<(), String> {
    let files: Vec<(String, &Vec<u8>, i32)> = match items {
        Some(items) => {
            let mut v = Vec::new();
            for it in items {
                let d = data
                    .get(&it.key)
                    .ok_or_else(|| format!("key {:?} not found", it.key))?;
                v.push((it.path.clone(), d, it.mode.unwrap_or(default_mode)));
            }
            v
        }
        None => data
            .iter()
            .map(|(k, d)| (k.clone(), d, default_mode))
            .collect(),
    };
    for (rel, content, mode) in files {
        if rel.starts_with('/') || rel.split('/').any(|c| c == "..") {
            return Err(format!("invalid item path {rel:?}"));
        }
        let p = dir.join(&rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
        }
        std::fs::write(&p, content).map_err(|e| format!("{}: {e}", p.display()))?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode as u32 & 0o777))
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn check_host_path(path: &Path, ty: &str) -> Result<(), String> {
    let meta = std::fs::metadata(path);
    let bad = |what: &str| {
        Err(format!(
            "hostPath type check failed: {} is not {what}",
            path.display()
        ))
    };
    match ty {
        "" => Ok(()),
        "DirectoryOrCreate" => {
            if !path.exists() {
                std::fs::create_dir_all(path).map_err(|e| e.to_string())?;
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
                    .map_err(|e| e.to_string())?;
            }
            if path.is_dir() {
                Ok(())
            } else {
                bad("a directory")
            }
        }
        "Directory" => {
            if meta.is_ok_and(|m| m.is_dir()) {
                Ok(())
            } else {
                bad("a directory")
            }
        }
        "FileOrCreate" => {
            if !path.exists() {
                if let Some(p) = path.parent() {
                    std::fs::create_dir_all(p).map_err(|e| e.to_string())?;
                }
                std::fs::File::create(path).map_err(|e| e.to_string())?;
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))
                    .map_err(|e| e.to_string())?;
            }
            if path.is_file() {
                Ok(())
            } else {
                bad("a file")
            }
        }
        "File" => {
            if meta.is_ok_and(|m| m.is_file()) {
                Ok(())
            } else {
                bad("a file")
            }
        }
        "Socket" => {
            if meta.is_ok_and(|m| m.file_type().is_socket()) {
                Ok(())
            } else {
                bad("a socket")
            }
        }
        "CharDevice" => {
            if meta.is_ok_and(|m| m.file_type().is_char_device()) {
                Ok(())
            } else {
                bad("a character device")
            }
        }
        "BlockDevice" => {
            if meta.is_ok_and(|m| m.file_type().is_block_device()) {
                Ok(())
            } else {
                bad("a block device")
            }
        }
        other => Err(format!("unknown hostPath type {other:?}")),
    }
}

/// Which kind a volume is, for messages; None when nestlet does not support it.
fn kind(v: &Volume) -> Option<&'static str> {
    if v.empty_dir.is_some() {
        Some("empty-dir")
    } else if v.host_path.is_some() {
        Some("host-path")
    } else if v.config_map.is_some() {
        Some("configmap")
    } else if v.secret.is_some() {
        Some("secret")
    } else {
        None
    }
}

/// Set up every volume of the pod (idempotent: a restarted nestlet finds them ready).
/// Errors are messages for a `CreateContainerConfigError`.
pub async fn prepare(
    pod: &Pod,
    pod_dir: &Path,
    api: Option<&kube::Client>,
) -> Result<BTreeMap<String, Prepared>, String> {
    let mut out = BTreeMap::new();
    let ns = pod
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let Some(spec) = pod.spec.as_ref() else {
        return Ok(out);
    };
    for v in spec.volumes.iter().flatten() {
        let Some(k) = kind(v) else {
            return Err(format!(
                "volume {:?}: unsupported volume type (nestlet supports emptyDir, hostPath, configMap, secret)",
                v.name
            ));
        };
        let dir = pod_dir.join("volumes").join(k).join(&v.name);
        if let Some(hp) = &v.host_path {
            let p = PathBuf::from(&hp.path);
            check_host_path(&p, hp.type_.as_deref().unwrap_or(""))
                .map_err(|e| format!("volume {:?}: {e}", v.name))?;
            out.insert(v.name.clone(), Prepared { path: p });
            continue;
        }
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        if let Some(ed) = &v.empty_dir {
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777))
                .map_err(|e| e.to_string())?;
            if ed.medium.as_deref() == Some("Memory") && !is_mountpoint(&dir) {
                let size = ed.size_limit.as_ref().and_then(|q| super::env::bytes(&q.0));
                mount_tmpfs(&dir, size)?;
            }
        } else if let Some(cm) = &v.config_map {
            let name = cm.name.clone();
            let optional = cm.optional.unwrap_or(false);
            let Some(client) = api else {
                return Err(format!(
                    "volume {:?}: configMap {name:?} needs an apiserver",
                    v.name
                ));
            };
            let api: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
            match api.get_opt(&name).await {
                Ok(Some(c)) => {
                    let mut data: BTreeMap<String, Vec<u8>> = c
                        .data
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(k, v)| (k, v.into_bytes()))
                        .collect();
                    for (k, b) in c.binary_data.unwrap_or_default() {
                        data.insert(k, b.0);
                    }
                    write_items(
                        &dir,
                        &data,
                        cm.items.as_ref(),
                        cm.default_mode.unwrap_or(0o644),
                    )
                    .map_err(|e| format!("volume {:?}: {e}", v.name))?;
                }
                Ok(None) if optional => {}
                Ok(None) => return Err(format!("configmap {name:?} not found")),
                Err(e) => return Err(format!("configmap {name:?}: {e}")),
            }
        } else if let Some(sec) = &v.secret {
            let name = sec.secret_name.clone().unwrap_or_default();
            if !is_mountpoint(&dir) {
                mount_tmpfs(&dir, None)?;
            }
            let Some(client) = api else {
                return Err(format!(
                    "volume {:?}: secret {name:?} needs an apiserver",
                    v.name
                ));
            };
            let api: Api<Secret> = Api::namespaced(client.clone(), &ns);
            match api.get_opt(&name).await {
                Ok(Some(s)) => {
                    let mut data: BTreeMap<String, Vec<u8>> = s
                        .data
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(k, v)| (k, v.0))
                        .collect();
                    for (k, v) in s.string_data.unwrap_or_default() {
                        data.insert(k, v.into_bytes());
                    }
                    write_items(
                        &dir,
                        &data,
                        sec.items.as_ref(),
                        sec.default_mode.unwrap_or(0o644),
                    )
                    .map_err(|e| format!("volume {:?}: {e}", v.name))?;
                }
                Ok(None) if sec.optional.unwrap_or(false) => {}
                Ok(None) => return Err(format!("secret {name:?} not found")),
                Err(e) => return Err(format!("secret {name:?}: {e}")),
            }
        }
        out.insert(v.name.clone(), Prepared { path: dir });
    }
    Ok(out)
}

/// Unmount the pod's tmpfs volumes (before its directory is removed).
pub fn teardown(pod_dir: &Path) {
    let vols = pod_dir.join("volumes");
    for k in ["empty-dir", "secret"] {
        let Ok(rd) = std::fs::read_dir(vols.join(k)) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if is_mountpoint(&p) {
                if let Err(err) = nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH) {
                    tracing::warn!(path = %p.display(), "unmounting a volume: {err}");
                }
            }
        }
    }
}
