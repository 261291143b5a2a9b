//! A private containerd for end-to-end tests (its own root, state, sockets and config under a
//! temp dir, optionally inside a test node netns), `ctr` against it, and the two shims a task
//! can run under: containerd's Go runc-v2 shim with a runtime as its `BinaryName`, or ours.

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::image::oci_archive;
use crate::{
    bin, busybox_rootfs, require_cmd, require_root, run, shim_dir, unique, wait_until, NetNs,
    TempDir,
};

/// The images [`import_cri_images`] provides: a pause image holding `nestbox-pause`, and
/// busybox.
pub const PAUSE_IMAGE: &str = "docker.io/nestbox/pause:test";
pub const BUSYBOX_IMAGE: &str = "docker.io/nestbox/busybox:test";

/// Config text for containerd's CRI plugin with two runtime handlers: `nestbox` (our shim,
/// runtime_type io.containerd.nestbox.v2, the default) and `runc` (the Go runc-v2 shim with
/// `runc_binary` as its BinaryName); the CNI bin and conf dirs when pods get networking.
pub fn cri_config(runc_binary: &Path, cni: Option<(&Path, &Path)>) -> String {
    let cri = "io.containerd.grpc.v1.cri";
    let mut text = format!(
        r#"[plugins."{cri}"]
  sandbox_image = "{PAUSE_IMAGE}"
  restrict_oom_score_adj = true
  enable_selinux = false
  [plugins."{cri}".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "nestbox"
    [plugins."{cri}".containerd.runtimes.nestbox]
      runtime_type = "io.containerd.nestbox.v2"
    [plugins."{cri}".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."{cri}".containerd.runtimes.runc.options]
        BinaryName = "{runc}"
"#,
        runc = runc_binary.display()
    );
    if let Some((bin_dir, conf_dir)) = cni {
        text += &format!(
            r#"  [plugins."{cri}".cni]
    bin_dir = "{}"
    conf_dir = "{}"
"#,
            bin_dir.display(),
            conf_dir.display()
        );
    }
    text
}

/// Import [`PAUSE_IMAGE`] and [`BUSYBOX_IMAGE`] into containerd's `k8s.io` namespace (the
/// CRI plugin's) from OCI archives made here: no registry needed.
pub fn import_cri_images(ctrd: &Containerd) {
    let work = TempDir::new("criimg");
    let pause_root = work.path().join("pause-rootfs");
    fs::create_dir_all(&pause_root).expect("mkdir");
    fs::copy(bin("nestbox-pause"), pause_root.join("pause")).expect("copy pause");
    let busybox = busybox_rootfs();
    let images = [
        (pause_root.as_path(), PAUSE_IMAGE, vec!["/pause"], vec![]),
        (busybox.as_path(), BUSYBOX_IMAGE, vec![], vec!["sh"]),
    ];
    for (rootfs, name, entry, cmd) in images {
        let archive = work.path().join("image.tar");
        oci_archive(rootfs, name, &entry, &cmd, &["PATH=/bin:/sbin"], &archive);
        let (code, out, err) = run(ctrd
            .ctr_ns("k8s.io")
            .args(["images", "import"])
            .arg(&archive));
        assert_eq!(code, 0, "ctr images import {name}: {out} {err}");
    }
}

/// The shim (and runtime) a `ctr` task runs under.
#[derive(Debug, Clone, Copy)]
pub enum Shim<'a> {
    /// containerd's Go `containerd-shim-runc-v2`, driving this runtime binary.
    RuncV2(&'a Path),
    /// `containerd-shim-nestbox-v2` (it finds `nestbox` beside itself).
    Nestbox,
}

impl Shim<'_> {
    /// The `ctr run` flags that pick it.
    pub fn flags(&self) -> Vec<OsString> {
        match self {
            Shim::RuncV2(runtime) => vec!["--runc-binary".into(), runtime.as_os_str().into()],
            Shim::Nestbox => vec!["--runtime".into(), "io.containerd.nestbox.v2".into()],
        }
    }
}

/// A containerd process and its files; killed and cleaned up on drop.
pub struct Containerd {
    dir: TempDir,
    child: Option<Child>,
    netns: Option<PathBuf>,
}

impl Containerd {
    /// containerd without the CRI plugin, in the caller's network namespace.
    pub fn start() -> Containerd {
        Containerd::with_config(None, "")
    }

    /// containerd inside `netns` (entered with nsenter --net, which keeps /sys and the cgroup
    /// mounts) with extra config text appended (e.g. the CRI plugin's tables). Without
    /// extra config the CRI plugin is disabled.
    pub fn with_config(netns: Option<&NetNs>, extra: &str) -> Containerd {
        require_root();
        require_cmd("containerd");
        require_cmd("ctr");
        require_cmd("containerd-shim-runc-v2");
        let dir = TempDir::new("ctrd");
        let d = dir.path();
        let disabled = if extra.is_empty() {
            r#"disabled_plugins = ["io.containerd.grpc.v1.cri"]"#
        } else {
            ""
        };
        let config = format!(
            r#"version = 2
root = "{d}/root"
state = "{d}/state"
{disabled}
[grpc]
  address = "{d}/containerd.sock"
[ttrpc]
  address = "{d}/containerd.sock.ttrpc"
[debug]
  level = "debug"
{extra}
"#,
            d = d.display()
        );
        fs::write(d.join("config.toml"), config).expect("write containerd config");
        let mut c = Containerd {
            dir,
            child: None,
            netns: netns.map(|n| n.path()),
        };
        c.launch();
        c
    }

    /// Start (or restart) the daemon and wait until it answers.
    fn launch(&mut self) {
        let d = self.dir.path();
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(d.join("containerd.log"))
            .expect("log file");
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net={}", ns.display())).arg("--");
                c.arg(require_cmd("containerd"));
                c
            }
            None => Command::new(require_cmd("containerd")),
        };
        // Our shim is found on containerd's PATH, like any containerd-shim-*.
        let path = format!(
            "{}:{}",
            shim_dir().display(),
            std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into())
        );
        let child = cmd
            .arg("--config")
            .arg(d.join("config.toml"))
            .env("PATH", path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("start containerd");
        self.child = Some(child);
        let up = wait_until(60, || {
            self.ctr()
                .arg("version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        });
        assert!(up, "containerd did not come up: {}", self.log());
    }

    /// SIGKILL the daemon (tasks and shims stay), then start it again on the same state.
    pub fn kill_and_restart(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.launch();
    }

    /// `ctr` against this containerd, namespace `nestbox-test`.
    pub fn ctr(&self) -> Command {
        self.ctr_ns("nestbox-test")
    }

    /// `ctr` against this containerd in a namespace (`k8s.io` for CRI).
    pub fn ctr_ns(&self, namespace: &str) -> Command {
        let mut c = Command::new("ctr");
        c.arg("--address")
            .arg(self.socket())
            .arg("--namespace")
            .arg(namespace);
        c
    }

    /// The gRPC socket (also the CRI endpoint when the plugin is on).
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("containerd.sock")
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    /// The pids of our shim processes serving this containerd (their `-address` names our
    /// socket).
    pub fn nestbox_shims(&self) -> Vec<i32> {
        let sock = self.socket().display().to_string();
        let mut out = Vec::new();
        for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else {
                continue;
            };
            let args: Vec<String> = cmdline
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            let is_shim = args
                .first()
                .is_some_and(|a| a.ends_with("containerd-shim-nestbox-v2"));
            if is_shim && args.iter().any(|a| a == &sock) && !args.iter().any(|a| a == "delete") {
                out.push(pid);
            }
        }
        out
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Shims outlive containerd by design; a test's leftovers go with it.
        for pid in self.nestbox_shims() {
            // SAFETY: kill(2) with a pid read from /proc; at worst ESRCH.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let state = self.dir.path().join("state");
        let _ = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "grep -o ' {}[^ ]*' /proc/self/mountinfo | sort -r | xargs -r -n1 umount -l",
                state.display()
            ))
            .status();
    }
}

/// A writable copy of the busybox rootfs in `dir` (ctr runs it in place).
pub fn rootfs_copy(dir: &Path) -> PathBuf {
    let dest = dir.join("rootfs");
    let out = Command::new("cp")
        .arg("-a")
        .arg(busybox_rootfs())
        .arg(&dest)
        .output()
        .expect("cp");
    assert!(
        out.status.success(),
        "copy rootfs: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    dest
}

/// `ctr run` under `shim`, a plain rootfs and PATH set (a rootfs without an image config has
/// no environment).
pub fn ctr_run(
    ctrd: &Containerd,
    work: &Path,
    shim: Shim,
    rootfs: &Path,
    flags: &[&str],
) -> Command {
    let mut c = ctrd.ctr();
    c.arg("run")
        .arg("--fifo-dir")
        .arg(work.join("fifo"))
        .args(["--env", "PATH=/bin"])
        .args(shim.flags())
        .args(flags)
        .arg("--rootfs")
        .arg(rootfs);
    c
}

/// Bound every peer command: a hang becomes a failure, not a stuck CI.
pub fn bounded(c: Command, secs: u32) -> Command {
    let mut t = Command::new("timeout");
    t.arg("-k")
        .arg("5")
        .arg(secs.to_string())
        .arg(c.get_program());
    t.args(c.get_args());
    for (k, v) in c.get_envs() {
        if let Some(v) = v {
            t.env(k, v);
        }
    }
    t
}

/// The task's status column in `ctr task ls` (RUNNING, PAUSED, STOPPED), if listed.
pub fn task_status(ctrd: &Containerd, id: &str) -> Option<String> {
    let (_, out, _) = run(ctrd.ctr().args(["task", "ls"]));
    out.lines()
        .find(|l| l.split_whitespace().next() == Some(id))
        .and_then(|l| l.split_whitespace().nth(2).map(str::to_string))
}

/// The task's pid column in `ctr task ls`.
pub fn task_pid(ctrd: &Containerd, id: &str) -> Option<i32> {
    let (_, out, _) = run(ctrd.ctr().args(["task", "ls"]));
    out.lines()
        .find(|l| l.split_whitespace().next() == Some(id))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|p| p.parse().ok()))
}

/// A detached task running `sleep 300`; returns its id once RUNNING.
pub fn ctr_detached(ctrd: &Containerd, work: &Path, shim: Shim, rootfs: &Path) -> String {
    let id = unique("ctd");
    let (code, out, err) = run(&mut bounded(
        {
            let mut c = ctr_run(ctrd, work, shim, rootfs, &["-d"]);
            c.arg(&id).args(["sleep", "300"]);
            c
        },
        60,
    ));
    assert_eq!(
        code,
        0,
        "ctr run -d: {out} {err}; containerd log:\n{}",
        ctrd.log()
    );
    assert!(
        wait_until(30, || task_status(ctrd, &id).as_deref() == Some("RUNNING")),
        "task {id} not RUNNING"
    );
    id
}
