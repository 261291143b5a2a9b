//! The image store: pulls from OCI/Docker registries (`oci-client`; plain http for loopback
//! registries and those named by `--insecure-registry`), imports OCI archives, and unpacks
//! layers into a content-addressed store shared by every pod:
//!
//! ```text
//! <root>/images/blobs/sha256/<hex>        manifests, configs, compressed layers
//! <root>/images/layers/<chainID>/fs       one unpacked layer (overlayfs whiteouts)
//! <root>/images/index.json                name → manifest digest, config digest, chain
//! ```
//!
//! A container's rootfs is an overlay of its image's layer dirs (read-only lowers) with a
//! private upper dir; the shim mounts it.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use oci_client::Reference;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::Digest;

use crate::shim::RootfsMount;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("invalid image reference {0:?}: {1}")]
    InvalidReference(String, String),
    #[error("image {0} is not present")]
    NotPresent(String),
    #[error("pulling {image}: {msg}")]
    Pull { image: String, msg: String },
    #[error("unpacking layer {digest}: {msg}")]
    Unpack { digest: String, msg: String },
    #[error("importing {path}: {msg}")]
    Import { path: String, msg: String },
    #[error("image store {0}: {1}")]
    Io(String, std::io::Error),
}

fn io_err(what: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> ImageError {
    let what = what.to_string();
    move |e| ImageError::Io(what, e)
}

/// What the store knows about one image name.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ImageRecord {
    /// Normalized reference (`docker.io/library/busybox:latest`).
    pub name: String,
    /// `sha256:…` of the manifest (the repo digest).
    pub manifest_digest: String,
    /// `sha256:…` of the config (the image ID).
    pub config_digest: String,
    /// Chain IDs (hex), bottom layer first.
    pub chain_ids: Vec<String>,
    /// Compressed size of the layers.
    pub size: u64,
}

impl ImageRecord {
    /// `repo@sha256:…`, what the kubelet reports as `imageID`.
    pub fn repo_digest(&self) -> String {
        let repo = match self.name.rsplit_once(':') {
            Some((r, tag)) if !tag.contains('/') => r,
            _ => self.name.as_str(),
        };
        let repo = repo.split('@').next().unwrap_or(repo);
        format!("{repo}@{}", self.manifest_digest)
    }
}

/// The parts of the image config a container needs.
#[derive(Clone, Debug, Default)]
pub struct ImageConfig {
    pub env: Vec<String>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub working_dir: String,
    pub user: String,
}

#[derive(Default, Serialize, Deserialize)]
struct Index {
    images: BTreeMap<String, ImageRecord>,
}

pub struct ImageStore {
    root: PathBuf,
    insecure: Vec<String>,
    /// One pull per name at a time (concurrent pods of one image share it).
    pulls: tokio::sync::Mutex<BTreeMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// Parse and normalize an image reference as the kubelet does (`busybox` →
/// `docker.io/library/busybox:latest`).
pub fn parse_reference(image: &str) -> Result<Reference, ImageError> {
    if image.is_empty() || image.trim() != image {
        return Err(ImageError::InvalidReference(
            image.to_string(),
            "empty or surrounded by spaces".into(),
        ));
    }
    image
        .parse::<Reference>()
        .map_err(|e| ImageError::InvalidReference(image.to_string(), e.to_string()))
}

/// The normalized name of a reference (what the index is keyed by).
pub fn normalized(r: &Reference) -> String {
    r.whole()
}

/// Whether an image name has no tag or the tag `latest` (pull policy default `Always`).
pub fn is_latest(image: &str) -> bool {
    match parse_reference(image) {
        Ok(r) => r.digest().is_none() && r.tag().is_none_or(|t| t == "latest"),
        Err(_) => false,
    }
}

fn is_loopback(registry: &str) -> bool {
    let host = if let Some(rest) = registry.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        registry.split(':').next().unwrap_or("")
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Chain IDs from diff IDs (`sha256:` prefixed): chain(0) = diff(0); chain(n) =
/// sha256(chain(n-1) + " " + diff(n)). Returned as hex without the prefix.
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut prev: Option<String> = None;
    for d in diff_ids {
        let id = match &prev {
            None => d.clone(),
            Some(p) => format!(
                "sha256:{}",
                crate::util::sha256_hex(format!("{p} {d}").as_bytes())
            ),
        };
        out.push(id.trim_start_matches("sha256:").to_string());
        prev = Some(id);
    }
    out
}

/// A reader that hashes what passes through it.
struct HashingReader<R> {
    inner: R,
    hasher: sha2::Sha256,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

fn mknod_whiteout(path: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: mknod(2) with a valid NUL-terminated path; creates a 0/0 char device, the
    // overlayfs whiteout.
    let r = unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR, libc::makedev(0, 0)) };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn set_opaque(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    let name = c"trusted.overlay.opaque";
    // SAFETY: setxattr(2) with valid NUL-terminated strings and a 1-byte value.
    let r = unsafe {
        libc::lsetxattr(
            c.as_ptr(),
            name.as_ptr(),
            b"y".as_ptr() as *const libc::c_void,
            1,
            0,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Unpack one layer blob (tar, tar+gzip) into `dest`, turning OCI whiteouts into overlayfs
/// ones. Returns the diff ID (`sha256:` of the uncompressed tar).
pub fn unpack_layer(blob: &Path, dest: &Path) -> Result<String, String> {
    let mut f = std::fs::File::open(blob).map_err(|e| format!("open {}: {e}", blob.display()))?;
    let mut magic = [0u8; 4];
    let n = f.read(&mut magic).map_err(|e| e.to_string())?;
    drop(f);
    let f = std::fs::File::open(blob).map_err(|e| e.to_string())?;
    let f = std::io::BufReader::with_capacity(256 * 1024, f);
    let reader: Box<dyn Read> = if n >= 2 && magic[..2] == [0x1f, 0x8b] {
        Box::new(flate2::read::MultiGzDecoder::new(f))
    } else if n == 4 && magic == [0x28, 0xb5, 0x2f, 0xfd] {
        return Err("zstd-compressed layers are not supported".into());
    } else {
        Box::new(f)
    };
    let mut hashing = HashingReader {
        inner: reader,
        hasher: sha2::Sha256::new(),
    };
    std::fs::create_dir_all(dest).map_err(|e| e.to_string())?;
    {
        let mut ar = tar::Archive::new(&mut hashing);
        ar.set_preserve_permissions(true);
        ar.set_preserve_ownerships(true);
        ar.set_unpack_xattrs(true);
        ar.set_preserve_mtime(true);
        ar.set_overwrite(true);
        for entry in ar.entries().map_err(|e| e.to_string())? {
            let mut entry = entry.map_err(|e| e.to_string())?;
            let path = entry.path().map_err(|e| e.to_string())?.into_owned();
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if let Some(hidden) = name.strip_prefix(".wh.") {
                // Whiteouts: refuse paths that climb out of the layer.
                if path.components().any(|c| {
                    !matches!(
                        c,
                        std::path::Component::Normal(_) | std::path::Component::CurDir
                    )
                }) {
                    return Err(format!("whiteout with an unsafe path: {}", path.display()));
                }
                let parent = dest.join(path.parent().unwrap_or(Path::new("")));
                std::fs::create_dir_all(&parent).map_err(|e| e.to_string())?;
                if hidden == ".wh..opq" {
                    set_opaque(&parent).map_err(|e| format!("opaque {}: {e}", parent.display()))?;
                } else {
                    let target = parent.join(hidden);
                    let _ = std::fs::remove_file(&target);
                    mknod_whiteout(&target)
                        .map_err(|e| format!("whiteout {}: {e}", target.display()))?;
                }
                continue;
            }
            entry
                .unpack_in(dest)
                .map_err(|e| format!("{}: {e}", path.display()))?;
        }
    }
    // The tar end may leave padding unread: hash all of it.
    std::io::copy(&mut hashing, &mut std::io::sink()).map_err(|e| e.to_string())?;
    Ok(format!(
        "sha256:{}",
        crate::util::hex(&hashing.hasher.finalize())
    ))
}

impl ImageStore {
    pub fn new(root: &Path, insecure: Vec<String>) -> ImageStore {
        ImageStore {
            root: root.join("images"),
            insecure,
            pulls: tokio::sync::Mutex::new(BTreeMap::new()),
        }
    }

    fn blob_path(&self, digest: &str) -> PathBuf {
        let (alg, hex) = digest.split_once(':').unwrap_or(("sha256", digest));
        self.root.join("blobs").join(alg).join(hex)
    }

    pub fn layer_dir(&self, chain_id: &str) -> PathBuf {
        self.root.join("layers").join(chain_id)
    }

    /// Exclusive lock over the index (flock: the CLI's `image import` may run beside the
    /// daemon).
    fn lock(&self) -> Result<std::fs::File, ImageError> {
        std::fs::create_dir_all(&self.root).map_err(io_err(self.root.display()))?;
        let p = self.root.join("lock");
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
            .map_err(io_err(p.display()))?;
        use std::os::fd::AsRawFd;
        // SAFETY: flock(2) on an fd we own; released when the file is closed.
        let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
        if r != 0 {
            return Err(ImageError::Io(
                p.display().to_string(),
                std::io::Error::last_os_error(),
            ));
        }
        Ok(f)
    }

    fn read_index(&self) -> Index {
        std::fs::read(self.root.join("index.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    fn record(&self, rec: ImageRecord) -> Result<(), ImageError> {
        let _l = self.lock()?;
        let mut idx = self.read_index();
        idx.images.insert(rec.name.clone(), rec);
        let p = self.root.join("index.json");
        crate::util::write_atomic(&p, &serde_json::to_vec_pretty(&idx).unwrap_or_default())
            .map_err(io_err(p.display()))
    }

    /// All images, by name.
    pub fn list(&self) -> Vec<ImageRecord> {
        self.read_index().images.into_values().collect()
    }

    /// The image a container's `image` field names, when present (by name, or by manifest
    /// digest for `repo@sha256:…`).
    pub fn get(&self, image: &str) -> Result<Option<ImageRecord>, ImageError> {
        let r = parse_reference(image)?;
        let idx = self.read_index();
        let found = match r.digest() {
            Some(d) => idx
                .images
                .values()
                .find(|rec| rec.manifest_digest == d)
                .cloned(),
            None => idx.images.get(&normalized(&r)).cloned(),
        };
        Ok(found.filter(|rec| {
            rec.chain_ids
                .iter()
                .all(|c| self.layer_dir(c).join("fs").is_dir())
        }))
    }

    /// The config of a stored image.
    pub fn config(&self, rec: &ImageRecord) -> Result<ImageConfig, ImageError> {
        let p = self.blob_path(&rec.config_digest);
        let bytes = std::fs::read(&p).map_err(io_err(p.display()))?;
        let v: Value = serde_json::from_slice(&bytes).map_err(|e| ImageError::Import {
            path: p.display().to_string(),
            msg: format!("config: {e}"),
        })?;
        let c = &v["config"];
        let strs = |k: &str| -> Vec<String> {
            c[k].as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default()
        };
        Ok(ImageConfig {
            env: strs("Env"),
            entrypoint: strs("Entrypoint"),
            cmd: strs("Cmd"),
            working_dir: c["WorkingDir"].as_str().unwrap_or("").to_string(),
            user: c["User"].as_str().unwrap_or("").to_string(),
        })
    }

    fn protocol_for(&self, registry: &str) -> ClientProtocol {
        if is_loopback(registry) || self.insecure.iter().any(|i| i == registry) {
            ClientProtocol::Http
        } else {
            ClientProtocol::Https
        }
    }

    /// Pull `image` (unless `only_if_missing` and it is present); returns its record.
    /// `progress` gets one-line progress texts.
    pub async fn pull(
        &self,
        image: &str,
        only_if_missing: bool,
        progress: Option<&(dyn Fn(&str) + Sync)>,
    ) -> Result<ImageRecord, ImageError> {
        let r = parse_reference(image)?;
        let name = normalized(&r);
        let lock = {
            let mut pulls = self.pulls.lock().await;
            pulls
                .entry(name.clone())
                .or_insert_with(|| Arc::new(tokio::sync::Mutex::new(())))
                .clone()
        };
        let _g = lock.lock().await;
        if only_if_missing {
            if let Some(rec) = self.get(image)? {
                return Ok(rec);
            }
        }
        let perr = |msg: String| ImageError::Pull {
            image: image.to_string(),
            msg,
        };
        let client = oci_client::Client::new(ClientConfig {
            protocol: self.protocol_for(r.resolve_registry()),
            ..Default::default()
        });
        let auth = RegistryAuth::Anonymous;
        let (manifest, manifest_digest, config) = client
            .pull_manifest_and_config(&r, &auth)
            .await
            .map_err(|e| perr(e.to_string()))?;
        let config_v: Value =
            serde_json::from_str(&config).map_err(|e| perr(format!("image config: {e}")))?;
        let diff_ids: Vec<String> = config_v["rootfs"]["diff_ids"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        if diff_ids.len() != manifest.layers.len() {
            return Err(perr(format!(
                "config lists {} layers, the manifest {}",
                diff_ids.len(),
                manifest.layers.len()
            )));
        }
        let chain = chain_ids(&diff_ids);
        let total = manifest.layers.len();
        let mut size = 0u64;
        for (i, (layer, chain_id)) in manifest.layers.iter().zip(&chain).enumerate() {
            size += layer.size.max(0) as u64;
            if self.layer_dir(chain_id).join("fs").is_dir() {
                continue;
            }
            if let Some(p) = progress {
                p(&format!(
                    "{name}: layer {}/{total} {} ({} bytes)",
                    i + 1,
                    short(&layer.digest),
                    layer.size
                ));
            }
            let blob = self.blob_path(&layer.digest);
            if !blob.is_file() {
                self.fetch_blob(&client, &r, layer).await.map_err(perr)?;
            }
            self.unpack(&blob, &layer.digest, chain_id, &diff_ids[i])
                .await?;
        }
        self.put_blob(&config_digest_of(&manifest), config.as_bytes())?;
        let rec = ImageRecord {
            name,
            manifest_digest,
            config_digest: manifest.config.digest.clone(),
            chain_ids: chain,
            size,
        };
        self.record(rec.clone())?;
        if let Some(p) = progress {
            p(&format!(
                "{}: pulled {}",
                rec.name,
                short(&rec.manifest_digest)
            ));
        }
        Ok(rec)
    }

    async fn fetch_blob(
        &self,
        client: &oci_client::Client,
        r: &Reference,
        layer: &OciDescriptor,
    ) -> Result<(), String> {
        let blob = self.blob_path(&layer.digest);
        let dir = blob.parent().unwrap_or(Path::new("/"));
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let tmp = dir.join(format!(
            ".{}.partial-{}",
            short(&layer.digest),
            crate::util::random_hex(4)
        ));
        let f = tokio::fs::File::create(&tmp)
            .await
            .map_err(|e| format!("{}: {e}", tmp.display()))?;
        let mut w = tokio::io::BufWriter::new(f);
        let res = client.pull_blob(r, layer, &mut w).await;
        let res = match res {
            Ok(()) => {
                use tokio::io::AsyncWriteExt;
                w.flush().await.map_err(|e| e.to_string())
            }
            Err(e) => Err(format!("layer {}: {e}", layer.digest)),
        };
        drop(w);
        // oci-client checks the digest while it downloads; check again on disk.
        let res = res.and_then(|()| {
            let got = file_digest(&tmp).map_err(|e| e.to_string())?;
            if got != layer.digest {
                return Err(format!(
                    "layer {}: downloaded content has digest {got}",
                    layer.digest
                ));
            }
            std::fs::rename(&tmp, &blob).map_err(|e| e.to_string())
        });
        if res.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        res
    }

    fn put_blob(&self, digest: &str, data: &[u8]) -> Result<(), ImageError> {
        let p = self.blob_path(digest);
        if p.is_file() {
            return Ok(());
        }
        crate::util::write_atomic(&p, data).map_err(io_err(p.display()))
    }

    /// Unpack a layer blob into `layers/<chain>/fs` (via a temp dir, renamed when complete),
    /// checking its diff ID.
    async fn unpack(
        &self,
        blob: &Path,
        digest: &str,
        chain_id: &str,
        diff_id: &str,
    ) -> Result<(), ImageError> {
        let final_dir = self.layer_dir(chain_id);
        if final_dir.join("fs").is_dir() {
            return Ok(());
        }
        let tmp = self.root.join("layers").join(format!(
            ".tmp-{}-{}",
            &chain_id[..12.min(chain_id.len())],
            crate::util::random_hex(4)
        ));
        let blob = blob.to_path_buf();
        let t = tmp.clone();
        let res = tokio::task::spawn_blocking(move || unpack_layer(&blob, &t.join("fs")))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r);
        let res = res.and_then(|got| {
            if got != diff_id {
                Err(format!(
                    "uncompressed content has diff ID {got}, the config says {diff_id}"
                ))
            } else {
                Ok(())
            }
        });
        let res = res.and_then(|()| match std::fs::rename(&tmp, &final_dir) {
            Ok(()) => Ok(()),
            // Another pull of a sharing image won the race.
            Err(_) if final_dir.join("fs").is_dir() => {
                let _ = std::fs::remove_dir_all(&tmp);
                Ok(())
            }
            Err(e) => Err(e.to_string()),
        });
        if let Err(msg) = res {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(ImageError::Unpack {
                digest: digest.to_string(),
                msg,
            });
        }
        Ok(())
    }

    /// Import an OCI image layout (a directory, or a tar archive of one). The name comes
    /// from `name`, else the index's `io.containerd.image.name` or a full
    /// `org.opencontainers.image.ref.name` annotation. Returns the imported records.
    pub async fn import(
        &self,
        path: &Path,
        name: Option<&str>,
    ) -> Result<Vec<ImageRecord>, ImageError> {
        let ierr = |msg: String| ImageError::Import {
            path: path.display().to_string(),
            msg,
        };
        let (layout, _tmp) = if path.is_dir() {
            (path.to_path_buf(), None)
        } else {
            let tmp = self
                .root
                .join(format!(".import-{}", crate::util::random_hex(6)));
            std::fs::create_dir_all(&tmp).map_err(io_err(tmp.display()))?;
            let guard = RemoveOnDrop(tmp.clone());
            let (p, t) = (path.to_path_buf(), tmp.clone());
            tokio::task::spawn_blocking(move || -> Result<(), String> {
                let f = std::fs::File::open(&p).map_err(|e| e.to_string())?;
                let mut ar = tar::Archive::new(std::io::BufReader::new(f));
                ar.unpack(&t).map_err(|e| e.to_string())
            })
            .await
            .map_err(|e| ierr(e.to_string()))?
            .map_err(|e| ierr(format!("not a tar archive: {e}")))?;
            (tmp, Some(guard))
        };
        let read_json = |p: PathBuf| -> Result<Value, ImageError> {
            let b = std::fs::read(&p).map_err(|e| ierr(format!("{}: {e}", p.display())))?;
            serde_json::from_slice(&b).map_err(|e| ierr(format!("{}: {e}", p.display())))
        };
        if !layout.join("oci-layout").is_file() {
            return Err(ierr("no oci-layout file: not an OCI image layout".into()));
        }
        let index = read_json(layout.join("index.json"))?;
        let blob = |d: &str| {
            let (alg, hex) = d.split_once(':').unwrap_or(("sha256", d));
            layout.join("blobs").join(alg).join(hex)
        };
        let mut out = Vec::new();
        let manifests = index["manifests"].as_array().cloned().unwrap_or_default();
        if manifests.is_empty() {
            return Err(ierr("index.json lists no manifests".into()));
        }
        for desc in manifests {
            let ann = &desc["annotations"];
            let mut desc = desc.clone();
            // An index inside: take its linux/amd64 (or first) manifest.
            let mt = desc["mediaType"].as_str().unwrap_or("").to_string();
            if mt.contains("index") || mt.contains("manifest.list") {
                let inner = read_json(blob(desc["digest"].as_str().unwrap_or("")))?;
                let list = inner["manifests"].as_array().cloned().unwrap_or_default();
                desc = list
                    .iter()
                    .find(|m| {
                        m["platform"]["os"] == "linux" && m["platform"]["architecture"] == "amd64"
                    })
                    .or(list.first())
                    .cloned()
                    .ok_or_else(|| ierr("empty nested index".into()))?;
            }
            let manifest_digest = desc["digest"].as_str().unwrap_or("").to_string();
            let mbytes = std::fs::read(blob(&manifest_digest))
                .map_err(|e| ierr(format!("manifest {manifest_digest}: {e}")))?;
            let manifest: Value = serde_json::from_slice(&mbytes)
                .map_err(|e| ierr(format!("manifest {manifest_digest}: {e}")))?;
            let ref_name = ann["io.containerd.image.name"]
                .as_str()
                .or(ann["org.opencontainers.image.ref.name"].as_str());
            let image_name = match (name, ref_name) {
                (Some(n), _) => n.to_string(),
                (None, Some(r)) if r.contains('/') || r.contains(':') => r.to_string(),
                (None, Some(tag)) => {
                    return Err(ierr(format!(
                        "the layout names the image only by the tag {tag:?}: give --name"
                    )))
                }
                (None, None) => return Err(ierr("the image has no name: give --name".into())),
            };
            let r = parse_reference(&image_name)?;
            let config_digest = manifest["config"]["digest"]
                .as_str()
                .unwrap_or("")
                .to_string();
            let cbytes = std::fs::read(blob(&config_digest))
                .map_err(|e| ierr(format!("config {config_digest}: {e}")))?;
            let config: Value = serde_json::from_slice(&cbytes)
                .map_err(|e| ierr(format!("config {config_digest}: {e}")))?;
            let diff_ids: Vec<String> = config["rootfs"]["diff_ids"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            let layers = manifest["layers"].as_array().cloned().unwrap_or_default();
            if layers.len() != diff_ids.len() {
                return Err(ierr(
                    "config and manifest disagree on the layer count".into(),
                ));
            }
            let chain = chain_ids(&diff_ids);
            let mut size = 0;
            for (i, l) in layers.iter().enumerate() {
                let d = l["digest"].as_str().unwrap_or("");
                size += l["size"].as_u64().unwrap_or(0);
                if self.layer_dir(&chain[i]).join("fs").is_dir() {
                    continue;
                }
                let src = blob(d);
                if file_digest(&src).map_err(|e| ierr(format!("layer {d}: {e}")))? != d {
                    return Err(ierr(format!(
                        "layer {d}: content does not match its digest"
                    )));
                }
                self.unpack(&src, d, &chain[i], &diff_ids[i]).await?;
            }
            self.put_blob(&config_digest, &cbytes)?;
            self.put_blob(&manifest_digest, &mbytes)?;
            let rec = ImageRecord {
                name: normalized(&r),
                manifest_digest,
                config_digest,
                chain_ids: chain,
                size,
            };
            self.record(rec.clone())?;
            out.push(rec);
            if name.is_some() {
                break;
            }
        }
        Ok(out)
    }

    /// The overlay mount for a container rootfs: the image's layers under `upper`/`work`.
    pub fn rootfs_mount(
        &self,
        rec: &ImageRecord,
        upper: &Path,
        work: &Path,
    ) -> Result<RootfsMount, ImageError> {
        let mut lowers: Vec<String> = rec
            .chain_ids
            .iter()
            .rev()
            .map(|c| self.layer_dir(c).join("fs").display().to_string())
            .collect();
        if lowers.is_empty() {
            let empty = self.root.join("layers").join("empty");
            std::fs::create_dir_all(&empty).map_err(io_err(empty.display()))?;
            lowers.push(empty.display().to_string());
        }
        Ok(RootfsMount {
            fstype: "overlay".into(),
            source: "overlay".into(),
            options: vec![
                format!("lowerdir={}", lowers.join(":")),
                format!("upperdir={}", upper.display()),
                format!("workdir={}", work.display()),
                "index=off".into(),
            ],
        })
    }

    /// Look a user (and its primary group) up in the image's `/etc/passwd` (top layer
    /// first).
    pub fn lookup_passwd(&self, rec: &ImageRecord, user: &str) -> Option<(u32, u32)> {
        self.find_file(rec, "etc/passwd").and_then(|s| {
            s.lines().find_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f.len() >= 4 && f[0] == user)
                    .then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
                    .flatten()
            })
        })
    }

    /// The primary gid of a uid in the image's `/etc/passwd`.
    pub fn lookup_passwd_by_uid(&self, rec: &ImageRecord, uid: u32) -> Option<u32> {
        self.find_file(rec, "etc/passwd").and_then(|s| {
            s.lines().find_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f.len() >= 4 && f[2].parse::<u32>().ok() == Some(uid))
                    .then(|| f[3].parse().ok())
                    .flatten()
            })
        })
    }

    /// A group's gid from the image's `/etc/group`.
    pub fn lookup_group(&self, rec: &ImageRecord, group: &str) -> Option<u32> {
        self.find_file(rec, "etc/group").and_then(|s| {
            s.lines().find_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f.len() >= 3 && f[0] == group)
                    .then(|| f[2].parse().ok())
                    .flatten()
            })
        })
    }

    fn find_file(&self, rec: &ImageRecord, rel: &str) -> Option<String> {
        for c in rec.chain_ids.iter().rev() {
            let p = self.layer_dir(c).join("fs").join(rel);
            if let Ok(meta) = std::fs::symlink_metadata(&p) {
                if meta.file_type().is_file() {
                    return std::fs::read_to_string(&p).ok();
                }
                return None; // a whiteout or something else hides it
            }
        }
        None
    }
}

fn config_digest_of(m: &oci_client::manifest::OciImageManifest) -> String {
    m.config.digest.clone()
}

fn file_digest(p: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(p)?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(format!("sha256:{}", crate::util::hex(&h.finalize())))
}

pub fn short(digest: &str) -> &str {
    let hex = digest.split(':').next_back().unwrap_or(digest);
    &hex[..12.min(hex.len())]
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Print `nestlet image ls`.
pub fn print_list(store: &ImageStore, out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(
        out,
        "{:<50} {:<14} {:<14} {:>10}",
        "IMAGE", "DIGEST", "IMAGE ID", "SIZE"
    )?;
    for r in store.list() {
        writeln!(
            out,
            "{:<50} {:<14} {:<14} {:>10}",
            r.name,
            short(&r.manifest_digest),
            short(&r.config_digest),
            human_size(r.size)
        )?;
    }
    Ok(())
}

fn human_size(b: u64) -> String {
    if b >= 1 << 20 {
        format!("{:.1}MiB", b as f64 / (1 << 20) as f64)
    } else if b >= 1 << 10 {
        format!("{:.1}KiB", b as f64 / 1024.0)
    } else {
        format!("{b}B")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_normalize_like_docker() {
        assert_eq!(
            normalized(&parse_reference("busybox").unwrap()),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(
            normalized(&parse_reference("127.0.0.1:5000/bb:1").unwrap()),
            "127.0.0.1:5000/bb:1"
        );
        assert!(parse_reference("Not A Ref!").is_err());
        assert!(is_latest("busybox"));
        assert!(is_latest("a/b:latest"));
        assert!(!is_latest("a/b:1.0"));
    }

    #[test]
    fn loopback_registries_are_plain_http() {
        assert!(is_loopback("127.0.0.1:5000"));
        assert!(is_loopback("localhost:5000"));
        assert!(is_loopback("[::1]:5000"));
        assert!(!is_loopback("docker.io"));
    }

    #[test]
    fn chain_ids_follow_the_spec() {
        let d = vec!["sha256:aa".to_string(), "sha256:bb".to_string()];
        let c = chain_ids(&d);
        assert_eq!(c[0], "aa");
        assert_eq!(c[1], crate::util::sha256_hex(b"sha256:aa sha256:bb"));
    }

    #[test]
    fn repo_digest_drops_the_tag() {
        let r = ImageRecord {
            name: "127.0.0.1:5000/bb:1".into(),
            manifest_digest: "sha256:abc".into(),
            config_digest: String::new(),
            chain_ids: vec![],
            size: 0,
        };
        assert_eq!(r.repo_digest(), "127.0.0.1:5000/bb@sha256:abc");
    }
}
