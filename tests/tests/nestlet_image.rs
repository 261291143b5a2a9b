//! nestlet's image store against real peers: an OCI layout made by umoci is imported (as a
//! directory and as a tar archive), and the same image pushed by skopeo into a real
//! `docker-registry` on 127.0.0.1 (inside a test netns) is pulled over plain http; layers
//! are shared by content, and bad input fails clearly without leaving anything behind.

mod nestlet_common;

use std::process::Command;

use nestbox_tests::{bin, require_root, sh_ok, NetNs, TempDir};
use nestlet_common::{busybox_layout, Registry};

fn nestlet(args: &[&str], root: &std::path::Path) -> (bool, String, String) {
    let out = Command::new(bin("nestlet"))
        .args(args)
        .arg("--root")
        .arg(root)
        .output()
        .expect("run nestlet");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn layer_dirs(root: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(root.join("images/layers"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn an_oci_layout_imports_as_a_directory_and_as_an_archive() {
    require_root();
    let layout = busybox_layout();
    let dir = TempDir::new("nlimg");
    let root = dir.path().join("root");

    let (ok, out, err) = nestlet(
        &[
            "image",
            "import",
            &layout.display().to_string(),
            "--name",
            "example.com/bb:1",
        ],
        &root,
    );
    assert!(ok, "import failed: {out}{err}");
    assert!(out.contains("example.com/bb:1"), "{out}");
    let (ok, ls, _) = nestlet(&["image", "ls"], &root);
    assert!(ok);
    assert!(ls.contains("example.com/bb:1"), "{ls}");
    let layers = layer_dirs(&root);
    assert_eq!(layers.len(), 1, "one layer expected: {layers:?}");
    let fs = root.join("images/layers").join(&layers[0]).join("fs");
    assert!(
        fs.join("bin/busybox").is_file(),
        "layer not unpacked at {}",
        fs.display()
    );

    // The same image as a tar archive under another name shares the layer.
    let tar = dir.path().join("bb.tar");
    sh_ok(&format!(
        "tar -C {} -cf {} .",
        layout.display(),
        tar.display()
    ));
    let (ok, out, err) = nestlet(
        &[
            "image",
            "import",
            &tar.display().to_string(),
            "--name",
            "example.com/other:2",
        ],
        &root,
    );
    assert!(ok, "archive import failed: {out}{err}");
    assert_eq!(layer_dirs(&root).len(), 1, "the layer was unpacked twice");
    let (_, ls, _) = nestlet(&["image", "ls"], &root);
    assert!(
        ls.contains("example.com/other:2") && ls.contains("example.com/bb:1"),
        "{ls}"
    );

    // Without a name, a layout that only carries a tag is refused with a hint.
    let (ok, _, err) = nestlet(&["image", "import", &layout.display().to_string()], &root);
    assert!(!ok);
    assert!(err.contains("--name"), "{err}");

    // Not an archive: a clear error, no temp dir left.
    let junk = dir.path().join("junk.tar");
    std::fs::write(&junk, b"this is not a tar archive at all").unwrap();
    let (ok, _, err) = nestlet(
        &[
            "image",
            "import",
            &junk.display().to_string(),
            "--name",
            "x/y:z",
        ],
        &root,
    );
    assert!(!ok, "junk imported");
    assert!(err.contains("junk.tar"), "{err}");
    let leftovers: Vec<_> = std::fs::read_dir(root.join("images"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".import"))
        .collect();
    assert!(leftovers.is_empty(), "temp dirs left: {leftovers:?}");
}

#[test]
fn images_pull_from_a_loopback_registry_over_plain_http() {
    require_root();
    let ns = NetNs::new("nlreg");
    let reg = Registry::start(&ns);
    let image = reg.push_busybox(&ns, "busybox", "1.36");
    reg.push_busybox(&ns, "copy", "latest");
    let dir = TempDir::new("nlpull");
    let root = dir.path().join("root");
    let pull = |img: &str| {
        let out = ns
            .nsenter(&[
                &bin("nestlet").display().to_string(),
                "image",
                "pull",
                img,
                "--root",
                &root.display().to_string(),
            ])
            .output()
            .expect("nestlet image pull");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, out, err) = pull(&image);
    assert!(ok, "pull failed: {out}{err}\nregistry: {}", reg.log());
    assert!(out.contains("127.0.0.1:5000/busybox:1.36 sha256:"), "{out}");
    let layers = layer_dirs(&root);
    assert_eq!(layers.len(), 1, "{layers:?}");
    assert!(root
        .join("images/layers")
        .join(&layers[0])
        .join("fs/bin/busybox")
        .is_file());

    // A second name for the same content: no second layer.
    let (ok, out, err) = pull("127.0.0.1:5000/copy");
    assert!(ok, "{out}{err}");
    assert!(out.contains("127.0.0.1:5000/copy:latest"), "{out}");
    assert_eq!(layer_dirs(&root).len(), 1);

    // Missing image: a clear error naming it, non-zero exit, the store unchanged.
    let (ok, _, err) = pull("127.0.0.1:5000/nope:1");
    assert!(!ok, "pulled an image that does not exist");
    assert!(err.contains("127.0.0.1:5000/nope:1"), "{err}");
    let (_, ls, _) = nestlet(&["image", "ls"], &root);
    assert!(!ls.contains("nope"), "{ls}");
    // Nothing half-downloaded is left.
    let partial = sh_ok(&format!(
        "find {} -name '.*partial*' -o -name '.tmp-*'",
        root.display()
    ));
    assert!(partial.trim().is_empty(), "leftovers: {partial}");
}
