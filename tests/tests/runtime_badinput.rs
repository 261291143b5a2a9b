//! Bad input to `nestbox`: each case gets a one-line error naming the problem, exit 1, and
//! leaves no state dir, cgroup or mount behind; plus 200 create/start/delete cycles that leave
//! nothing behind either.
//!
//! Run after `cargo build --release -p nestbox-runtime`:
//! `cargo test -p nestbox-tests --test runtime_badinput -- --test-threads=2`

use std::path::Path;
use std::process::{Command, Stdio};

use nestbox_tests::{unique, Bundle, Runtime};
use serde_json::{json, Value};

/// Nothing of container `id` may remain: no state dir, no cgroup dir, no mount.
fn assert_nothing_left(nb: &Runtime, id: &str, bundle: Option<&Path>) {
    assert!(
        !nb.root.path().join(id).exists(),
        "state dir of {id} left behind"
    );
    let found = Command::new("find")
        .args([
            "/sys/fs/cgroup",
            "-mindepth",
            "2",
            "-maxdepth",
            "7",
            "-type",
            "d",
            "-name",
            id,
        ])
        .output()
        .expect("find");
    let found = String::from_utf8_lossy(&found.stdout);
    assert!(
        found.trim().is_empty(),
        "cgroup dirs of {id} left behind: {found}"
    );
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let needle = bundle
        .map(|b| b.display().to_string())
        .unwrap_or_else(|| id.to_string());
    assert!(
        !mountinfo.contains(&needle),
        "mount of {needle} left behind in the host namespace"
    );
}

/// Exactly one line on stderr containing every `needles` item; exit code 1.
fn assert_error(code: i32, stderr: &str, needles: &[&str]) {
    assert_eq!(code, 1, "exit code; stderr: {stderr}");
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "one line expected: {stderr:?}"
    );
    for n in needles {
        assert!(stderr.contains(n), "stderr {stderr:?} lacks {n:?}");
    }
}

#[test]
fn missing_bundle_is_named() {
    let nb = Runtime::nestbox();
    let id = unique("mb");
    let (code, err) = nb.create(Path::new("/nonexistent/bundle-x"), &id);
    assert_error(
        code,
        &err,
        &["/nonexistent/bundle-x", "No such file or directory"],
    );
    assert_nothing_left(&nb, &id, None);
}

#[test]
fn unreadable_config_is_named() {
    let nb = Runtime::nestbox();
    let b = Bundle::new();
    std::fs::remove_file(b.path().join("config.json")).expect("rm config");
    std::fs::create_dir(b.path().join("config.json")).expect("config.json as a dir");
    let id = unique("ur");
    let (code, err) = nb.create(b.path(), &id);
    assert_error(code, &err, &["config.json", "Is a directory"]);
    assert_nothing_left(&nb, &id, Some(b.path()));
}

#[test]
fn malformed_config_is_named() {
    let nb = Runtime::nestbox();
    let b = Bundle::new();
    std::fs::write(b.path().join("config.json"), "{\"ociVersion\": ").expect("write");
    let id = unique("mf");
    let (code, err) = nb.create(b.path(), &id);
    assert_error(code, &err, &["config.json", "malformed JSON"]);
    assert_nothing_left(&nb, &id, Some(b.path()));
}

#[test]
fn unknown_namespace_type_is_named() {
    let nb = Runtime::nestbox();
    let mut b = Bundle::new();
    b.config["linux"]["namespaces"] =
        json!([{"type": "pid"}, {"type": "mount"}, {"type": "bogusns"}]);
    b.write();
    let id = unique("ns");
    let (code, err) = nb.create(b.path(), &id);
    assert_error(code, &err, &["unknown namespace type", "bogusns"]);
    assert_nothing_left(&nb, &id, Some(b.path()));
}

#[test]
fn invalid_id_is_named() {
    let nb = Runtime::nestbox();
    let b = Bundle::new();
    for id in ["bad/id", "..", "sp ace"] {
        let (code, err) = nb.create(b.path(), id);
        assert_error(code, &err, &["invalid container id"]);
    }
    assert_eq!(
        std::fs::read_dir(nb.root.path())
            .map(|d| d.count())
            .unwrap_or(0),
        0
    );
}

#[test]
fn duplicate_id_is_refused_and_the_first_survives() {
    let nb = Runtime::nestbox();
    let mut b = Bundle::new();
    b.set_args(&["sleep", "100"]);
    b.write();
    let id = unique("dup");
    assert_eq!(nb.create(b.path(), &id).0, 0);
    let (code, err) = nb.create(b.path(), &id);
    assert_error(code, &err, &[&id, "already exists"]);
    let out = nb
        .cmd(&["state", &id])
        .stderr(Stdio::null())
        .output()
        .expect("state");
    let state: Value = serde_json::from_slice(&out.stdout).expect("state json");
    assert_eq!(
        state["status"], "created",
        "the first container must be untouched"
    );
    assert_eq!(nb.out(&["delete", &id]).0, 0);
    assert_nothing_left(&nb, &id, Some(b.path()));
}

#[test]
fn delete_of_unknown_id_says_does_not_exist() {
    let nb = Runtime::nestbox();
    let id = unique("nx");
    let (code, _, err) = nb.out(&["delete", &id]);
    assert_error(code, &err, &["does not exist"]);
    // runc: --force on an unknown id succeeds.
    assert_eq!(nb.out(&["delete", "--force", &id]).0, 0);
    let (code, _, err) = nb.out(&["state", &id]);
    assert_error(code, &err, &["does not exist"]);
    let (code, _, err) = nb.out(&["kill", &id, "KILL"]);
    assert_error(code, &err, &["does not exist"]);
}

#[test]
fn failure_inside_init_cleans_up_cgroup_and_state() {
    // These fail after init was cloned and put in its cgroup.
    let nb = Runtime::nestbox();
    let mut b = Bundle::new();
    b.set_args(&["/no/such/binary"]);
    b.write();
    let id = unique("ex");
    let (code, err) = nb.create(b.path(), &id);
    assert_error(code, &err, &["/no/such/binary"]);
    assert_nothing_left(&nb, &id, Some(b.path()));

    b.set_args(&["true"]);
    b.config["mounts"]
        .as_array_mut()
        .unwrap()
        .push(json!({"destination": "/mnt", "type": "bind", "source": "/no/such/source", "options": ["bind"]}));
    b.write();
    let id = unique("mt");
    let (code, err) = nb.create(b.path(), &id);
    assert_error(code, &err, &["/no/such/source", "/mnt"]);
    assert_nothing_left(&nb, &id, Some(b.path()));
}

#[test]
fn errors_are_json_log_lines_with_log_format_json() {
    let nb = Runtime::nestbox();
    let log = nb.root.path().join("nestbox.log");
    let id = unique("js");
    let out = nb
        .cmd(&[
            "--log",
            log.to_str().unwrap(),
            "--log-format",
            "json",
            "delete",
            &id,
        ])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let text = std::fs::read_to_string(&log).expect("log file");
    let last: Value =
        serde_json::from_str(text.lines().last().expect("a line")).expect("json line");
    assert_eq!(last["level"], "error");
    assert!(
        last["msg"].as_str().unwrap().contains("does not exist"),
        "{last}"
    );
    assert!(last["time"].as_str().unwrap().ends_with('Z'), "{last}");
    // And the plain message on stderr.
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"));
}

#[test]
fn two_hundred_create_start_delete_cycles_leave_nothing_behind() {
    let nb = Runtime::nestbox();
    let mut b = Bundle::new();
    b.set_args(&["true"]);
    b.write();
    let prefix = unique("cy");
    let mounts_before = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .count();
    for i in 0..200 {
        let id = format!("{prefix}-{i}");
        let (code, err) = nb.create(b.path(), &id);
        assert_eq!(code, 0, "cycle {i}: create: {err}");
        let (code, _, err) = nb.out(&["start", &id]);
        assert_eq!(code, 0, "cycle {i}: start: {err}");
        let (code, _, err) = nb.out(&["delete", "--force", &id]);
        assert_eq!(code, 0, "cycle {i}: delete: {err}");
    }
    let left: Vec<_> = std::fs::read_dir(nb.root.path())
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "state dirs left: {left:?}");
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "find /sys/fs/cgroup -mindepth 2 -maxdepth 7 -type d -name '{prefix}-*' | head"
        ))
        .output()
        .expect("find");
    assert!(
        found.stdout.is_empty(),
        "cgroups left: {}",
        String::from_utf8_lossy(&found.stdout)
    );
    let mounts_after = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .count();
    assert_eq!(mounts_before, mounts_after, "host mount count changed");
}
