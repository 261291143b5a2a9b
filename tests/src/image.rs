//! OCI image archives made from a root filesystem, for peers that import images (containerd's
//! `ctr images import`): one uncompressed layer, a config with the entrypoint, a manifest and
//! an index whose `io.containerd.image.name` annotation names the image.

use std::fs;
use std::path::Path;
use std::process::Command;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::TempDir;

fn blob(dir: &Path, bytes: &[u8]) -> (String, usize) {
    let digest = format!("{:x}", Sha256::digest(bytes));
    fs::write(dir.join("blobs/sha256").join(&digest), bytes).expect("write blob");
    (format!("sha256:{digest}"), bytes.len())
}

/// Write `out`, an OCI image-layout tar of `rootfs` named `name` (a full reference such as
/// `docker.io/nestbox/busybox:test`), whose config runs `entrypoint` + `cmd` with `env`.
pub fn oci_archive(
    rootfs: &Path,
    name: &str,
    entrypoint: &[&str],
    cmd: &[&str],
    env: &[&str],
    out: &Path,
) {
    let work = TempDir::new("oci");
    let layout = work.path().join("layout");
    fs::create_dir_all(layout.join("blobs/sha256")).expect("mkdir layout");
    let layer = work.path().join("layer.tar");
    let st = Command::new("tar")
        .args(["--sort=name", "--numeric-owner", "-C"])
        .arg(rootfs)
        .arg("-cf")
        .arg(&layer)
        .arg(".")
        .status()
        .expect("run tar");
    assert!(st.success(), "tar of {}", rootfs.display());
    let layer_bytes = fs::read(&layer).expect("read layer");
    let (layer_digest, layer_size) = blob(&layout, &layer_bytes);
    let config = json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Entrypoint": entrypoint, "Cmd": cmd, "Env": env, "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
    });
    let (config_digest, config_size) = blob(&layout, config.to_string().as_bytes());
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": layer_digest, "size": layer_size}],
    });
    let (manifest_digest, manifest_size) = blob(&layout, manifest.to_string().as_bytes());
    let tag = name.rsplit_once(':').map(|(_, t)| t).unwrap_or("latest");
    let index: Value = json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest, "size": manifest_size,
            "platform": {"architecture": "amd64", "os": "linux"},
            "annotations": {"io.containerd.image.name": name, "org.opencontainers.image.ref.name": tag},
        }],
    });
    fs::write(layout.join("index.json"), index.to_string()).expect("index.json");
    fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .expect("oci-layout");
    let st = Command::new("tar")
        .arg("-C")
        .arg(&layout)
        .arg("-cf")
        .arg(out)
        .arg(".")
        .status()
        .expect("run tar");
    assert!(st.success(), "tar of the layout");
}
