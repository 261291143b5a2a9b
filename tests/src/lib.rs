//! Shared helpers for the end-to-end tests: where the built binaries are, the busybox test
//! rootfs, OCI bundles, test network namespaces and small process helpers.
//!
//! Every test that needs root, a peer binary or a kernel feature calls `require_*` first, which
//! panics with a clear message: CI installs the peers, so a missing one is a failure, not a skip.

use std::fs;
use std::io::Write;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

pub mod containerd;
pub mod cri;
pub mod image;

/// The workspace root (the parent of this crate's folder).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Path of a built nestbox binary: `$NESTBOX_BIN_DIR/<name>`, else `target/release`, else
/// `target/debug` (`nestbox` and `nestbox-pause`: `$NESTBOX_RUNTIME_DIR/<name>` first).
/// Panics when it was not built.
/// The nestbox-cni binary under test: `$NESTBOX_CNI_BIN` (scripts/test.sh sets it to the
/// static musl build that gets installed, see scripts/build-cni.sh), else the workspace
/// build.
pub fn cni_bin() -> PathBuf {
    match std::env::var_os("NESTBOX_CNI_BIN") {
        Some(p) if !p.is_empty() => {
            let p = PathBuf::from(p);
            assert!(p.is_file(), "NESTBOX_CNI_BIN={} is not a file", p.display());
            p
        }
        _ => bin("nestbox-cni"),
    }
}

/// The containerd shim under test: `$NESTBOX_SHIM_BIN` (scripts/test.sh sets it to the
/// static musl build that gets installed, see scripts/build-shim.sh), else the workspace build.
pub fn shim_bin() -> PathBuf {
    match std::env::var_os("NESTBOX_SHIM_BIN") {
        Some(p) if !p.is_empty() => {
            let p = PathBuf::from(p);
            assert!(
                p.is_file(),
                "NESTBOX_SHIM_BIN={} is not a file",
                p.display()
            );
            p
        }
        _ => bin("containerd-shim-nestbox-v2"),
    }
}

/// A directory holding the shim under test and `nestbox` side by side, as
/// scripts/install.sh lays them out (the shim runs the `nestbox` beside it): put it on
/// containerd's PATH. Refreshed once per test process under the target dir.
pub fn shim_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let target = std::env::var("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|_| workspace_root().join("target"));
        let dir = target.join(format!("shim-under-test-{}", std::process::id()));
        let tmp = target.join(format!(".shim-under-test-{}", unique("s")));
        fs::create_dir_all(&tmp).expect("mkdir shim dir");
        for (name, src) in [
            ("containerd-shim-nestbox-v2", shim_bin()),
            ("nestbox", bin("nestbox")),
        ] {
            if fs::hard_link(&src, tmp.join(name)).is_err() {
                fs::copy(&src, tmp.join(name)).expect("copy shim dir binary");
            }
        }
        let _ = fs::remove_dir_all(&dir);
        fs::rename(&tmp, &dir).expect("install shim dir");
        // Dirs of earlier test processes (pids gone) are removed here.
        if let Ok(entries) = fs::read_dir(&target) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if let Some(pid) = name.strip_prefix("shim-under-test-") {
                    let gone = pid
                        .parse::<u32>()
                        .is_ok_and(|p| !Path::new(&format!("/proc/{p}")).exists());
                    if gone {
                        let _ = fs::remove_dir_all(e.path());
                    }
                }
            }
        }
        dir
    })
    .clone()
}

pub fn bin(name: &str) -> PathBuf {
    let mut dirs = Vec::new();
    // The installed builds, when scripts/test.sh or a benchmark names them: the runtime's
    // (scripts/build-runtime.sh: static, `runtime` profile) for `nestbox` and `nestbox-pause`,
    // nestlet's (scripts/build-nestlet.sh: `nestlet` profile) for `nestlet`.
    let own_dir = match name {
        "nestbox" | "nestbox-pause" => Some("NESTBOX_RUNTIME_DIR"),
        "nestlet" => Some("NESTBOX_NESTLET_DIR"),
        _ => None,
    };
    if let Some(d) = own_dir.and_then(|v| std::env::var(v).ok()) {
        dirs.push(PathBuf::from(d));
    }
    if let Ok(d) = std::env::var("NESTBOX_BIN_DIR") {
        dirs.push(PathBuf::from(d));
    }
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| workspace_root().join("target"));
    dirs.push(target.join("release"));
    dirs.push(target.join("debug"));
    for d in &dirs {
        let p = d.join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!(
        "binary {name} not built (looked in {dirs:?}); run `cargo build --release --workspace` first"
    );
}

/// Panics unless running as root.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() };
    assert_eq!(
        uid, 0,
        "this test needs root (it creates namespaces, cgroups and mounts)"
    );
}

/// Full path of a command on PATH (also searching the sbin dirs), if any.
pub fn which(cmd: &str) -> Option<PathBuf> {
    if cmd.contains('/') {
        return Path::new(cmd).is_file().then(|| PathBuf::from(cmd));
    }
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain([
            "/usr/local/sbin",
            "/usr/sbin",
            "/sbin",
            "/usr/local/bin",
            "/usr/bin",
            "/bin",
        ])
        .map(|d| Path::new(d).join(cmd))
        .find(|p| p.is_file());
    found
}

/// Panics with a clear message when a peer command is missing (CI installs them all).
pub fn require_cmd(cmd: &str) -> PathBuf {
    which(cmd).unwrap_or_else(|| {
        panic!("required command `{cmd}` is not installed; .ci/run installs it (apt-get)")
    })
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A short unique name (at most 12 characters with a prefix of at most 4), usable as an
/// interface, netns or container name. Unique across processes and calls.
pub fn unique(prefix: &str) -> String {
    let prefix: String = prefix.chars().take(4).collect();
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed) as u64;
    let mix = nanos
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add((std::process::id() as u64) << 20)
        .wrapping_add(n.wrapping_mul(0xBF58_476D_1CE4_E5B9));
    let mix = (mix ^ (mix >> 29)) as u32;
    format!("{prefix}{mix:08x}")
}

/// Run a shell command line with `sh -c` and return its output (never panics on failure).
pub fn sh(cmd: &str) -> Output {
    Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .stdin(Stdio::null())
        .output()
        .expect("spawn sh")
}

/// Run a command line; panic with its stderr when it fails. Returns stdout.
pub fn sh_ok(cmd: &str) -> String {
    let out = sh(cmd);
    assert!(
        out.status.success(),
        "`{cmd}` failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Run a command, return (exit code or 128+signal, stdout, stderr).
pub fn run(cmd: &mut Command) -> (i32, String, String) {
    use std::os::unix::process::ExitStatusExt;
    let out = cmd.stdin(Stdio::null()).output().expect("spawn");
    let code = out
        .status
        .code()
        .unwrap_or_else(|| 128 + out.status.signal().unwrap_or(0));
    (
        code,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A busybox-static root filesystem, built once per machine (cached by the busybox binary's
/// size and mtime) under the system temp dir. Treat it as read-only: copy it (see [`Bundle`]).
pub fn busybox_rootfs() -> PathBuf {
    static ROOTFS: OnceLock<PathBuf> = OnceLock::new();
    ROOTFS.get_or_init(build_busybox_rootfs).clone()
}

fn build_busybox_rootfs() -> PathBuf {
    let busybox = require_cmd("busybox");
    let meta = fs::metadata(&busybox).expect("stat busybox");
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let dest = std::env::temp_dir().join(format!("nestbox-busybox-{}-{mtime}", meta.len()));
    if dest.join("bin/busybox").is_file() {
        return dest;
    }
    // Build in a private dir, then rename into place: concurrent builders never see a half tree.
    let tmp = std::env::temp_dir().join(format!("{}.tmp-{}", dest.display(), unique("")));
    for d in [
        "bin",
        "proc",
        "sys",
        "dev",
        "tmp",
        "etc",
        "root",
        "home/user",
        "var",
        "run",
    ] {
        fs::create_dir_all(tmp.join(d)).expect("mkdir rootfs");
    }
    fs::copy(&busybox, tmp.join("bin/busybox")).expect("copy busybox");
    let list = Command::new(&busybox)
        .arg("--list")
        .output()
        .expect("busybox --list");
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let applet = applet.trim();
        if applet.is_empty() || applet == "busybox" {
            continue;
        }
        let _ = symlink("busybox", tmp.join("bin").join(applet));
    }
    symlink("bin", tmp.join("sbin")).expect("sbin link");
    fs::create_dir_all(tmp.join("usr")).expect("mkdir usr");
    symlink("../bin", tmp.join("usr/bin")).expect("usr/bin link");
    symlink("../bin", tmp.join("usr/sbin")).expect("usr/sbin link");
    fs::write(
        tmp.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:user:/home/user:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
    )
    .expect("passwd");
    fs::write(
        tmp.join("etc/group"),
        "root:x:0:\nuser:x:1000:\nextra:x:2000:user\nnogroup:x:65534:\n",
    )
    .expect("group");
    fs::write(tmp.join("etc/hostname"), "busybox\n").expect("hostname");
    fs::set_permissions(
        tmp.join("tmp"),
        std::os::unix::fs::PermissionsExt::from_mode(0o1777),
    )
    .expect("chmod tmp");
    match fs::rename(&tmp, &dest) {
        Ok(()) => {}
        Err(_) if dest.join("bin/busybox").is_file() => {
            let _ = fs::remove_dir_all(&tmp);
        }
        Err(e) => panic!("install rootfs at {}: {e}", dest.display()),
    }
    dest
}

/// The default config.json of a bundle: what `runc spec` writes (runc 1.1), without a terminal.
pub fn default_spec() -> Value {
    let caps = json!(["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]);
    json!({
        "ociVersion": "1.0.2-dev",
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": ["sh"],
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "TERM=xterm"],
            "cwd": "/",
            "capabilities": {
                "bounding": caps, "effective": caps, "permitted": caps, "ambient": caps
            },
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": true
        },
        "root": {"path": "rootfs", "readonly": true},
        "hostname": "runc",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
             "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
             "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}
        ],
        "linux": {
            "resources": {"devices": [{"allow": false, "access": "rwm"}]},
            "namespaces": [
                {"type": "pid"}, {"type": "network"}, {"type": "ipc"},
                {"type": "uts"}, {"type": "mount"}
            ],
            "maskedPaths": [
                "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware",
                "/proc/scsi"
            ],
            "readonlyPaths": [
                "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"
            ]
        }
    })
}

/// An OCI bundle in a fresh temp dir: a private copy of the busybox rootfs and a config.
/// Removed on drop.
pub struct Bundle {
    dir: PathBuf,
    /// The config.json content; call [`Bundle::write`] after changing it.
    pub config: Value,
}

impl Bundle {
    /// A bundle with the default spec (not yet written: call `write`).
    pub fn new() -> Bundle {
        let dir = std::env::temp_dir().join(format!("nestbox-bundle-{}", unique("b")));
        fs::create_dir_all(&dir).expect("mkdir bundle");
        let out = Command::new("cp")
            .arg("-a")
            .arg(busybox_rootfs())
            .arg(dir.join("rootfs"))
            .output()
            .expect("cp rootfs");
        assert!(
            out.status.success(),
            "copy rootfs: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let b = Bundle {
            dir,
            config: default_spec(),
        };
        b.write();
        b
    }

    /// Set `process.args`.
    pub fn set_args(&mut self, args: &[&str]) -> &mut Self {
        self.config["process"]["args"] = json!(args);
        self
    }

    /// Write config.json.
    pub fn write(&self) {
        let mut f = fs::File::create(self.dir.join("config.json")).expect("create config.json");
        f.write_all(
            serde_json::to_string_pretty(&self.config)
                .expect("json")
                .as_bytes(),
        )
        .expect("write config.json");
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    pub fn rootfs(&self) -> PathBuf {
        self.dir.join("rootfs")
    }
}

impl AsRef<Path> for Bundle {
    fn as_ref(&self) -> &Path {
        &self.dir
    }
}

impl Default for Bundle {
    fn default() -> Self {
        Bundle::new()
    }
}

impl Drop for Bundle {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// A network namespace made for one test (`ip netns add`), removed on drop even when the
/// test panics. Links inside it go with it.
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Create `<prefix><random>`; the loopback inside is brought up.
    pub fn new(prefix: &str) -> NetNs {
        require_root();
        require_cmd("ip");
        let name = unique(prefix);
        sh_ok(&format!("ip netns add {name}"));
        let ns = NetNs { name };
        ns.exec_ok(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/<name>`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// Run a command inside with `ip netns exec` (fine for ip/ping/CNI plugins; for anything
    /// touching cgroups use [`NetNs::nsenter`]: `ip netns exec` remounts /sys).
    pub fn exec(&self, argv: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(argv)
            .stdin(Stdio::null())
            .output()
            .expect("spawn ip netns exec")
    }

    /// Like [`NetNs::exec`], panicking with stderr on failure; returns stdout.
    pub fn exec_ok(&self, argv: &[&str]) -> String {
        let out = self.exec(argv);
        assert!(
            out.status.success(),
            "in netns {}: {:?} failed: {}{}",
            self.name,
            argv,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A command that runs `argv` inside with `nsenter --net=` (keeps /sys and cgroups).
    pub fn nsenter(&self, argv: &[&str]) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.path().display()))
            .arg("--")
            .args(argv);
        c
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A veth pair between two test namespaces: `a_if` in `a`, `b_if` in `b`, both up.
pub fn veth_between(a: &NetNs, a_if: &str, b: &NetNs, b_if: &str) {
    sh_ok(&format!(
        "ip -n {an} link add {a_if} type veth peer name {b_if} netns {bn} && ip -n {an} link set {a_if} up && ip -n {bn} link set {b_if} up",
        an = a.name(),
        bn = b.name()
    ));
}

/// Poll `f` every 50 ms until it returns true or `secs` pass; returns the last result.
pub fn wait_until(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        if f() {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// A unique temp dir removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("nestbox-{prefix}-{}", unique("t")));
        fs::create_dir_all(&p).expect("mkdir temp");
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// One OCI runtime binary (runc, crun or nestbox) with a private state root, driven through
/// its runc-style command line. Every container still listed is force-deleted on drop, so a
/// failed assertion leaves nothing running.
pub struct Runtime {
    /// A short name for messages ("runc", "nestbox").
    pub name: &'static str,
    pub bin: PathBuf,
    /// The `--root` state directory.
    pub root: TempDir,
    /// Extra environment for every invocation.
    pub env: Vec<(&'static str, &'static str)>,
    /// Where the captured stdio of invocations goes (never inside `root`).
    io: TempDir,
}

impl Runtime {
    /// A runtime binary under a name.
    pub fn new(name: &'static str, bin: PathBuf) -> Runtime {
        require_root();
        Runtime {
            name,
            bin,
            root: TempDir::new(&format!("rt-{name}")),
            env: Vec::new(),
            io: TempDir::new("rt-io"),
        }
    }

    /// The nestbox binary built in this workspace.
    pub fn nestbox() -> Runtime {
        Runtime::new("nestbox", bin("nestbox"))
    }

    /// Debian's runc, the reference.
    pub fn runc() -> Runtime {
        Runtime::new("runc", require_cmd("runc"))
    }

    /// Debian's crun. It refuses this VM's hybrid cgroup layout: drive it from a thread of
    /// [`in_mount_namespace`] with [`CgroupLayout::V1`].
    pub fn crun() -> Runtime {
        Runtime::new("crun", require_cmd("crun"))
    }

    /// The command line `<bin> --root <root> <args…>` with the extra environment.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        c.envs(self.env.iter().copied());
        c.arg("--root").arg(self.root.path()).args(args);
        c
    }

    /// Run a command with stdio on files (a container process may inherit them and would keep
    /// a pipe open): (exit code or 128+signal, stdout, stderr).
    pub fn out_cmd(&self, mut cmd: Command) -> (i32, String, String) {
        use std::os::unix::process::ExitStatusExt;
        let tag = unique("o");
        let out_path = self.io.path().join(format!("{tag}.out"));
        let err_path = self.io.path().join(format!("{tag}.err"));
        let status = cmd
            .stdin(Stdio::null())
            .stdout(fs::File::create(&out_path).expect("stdout file"))
            .stderr(fs::File::create(&err_path).expect("stderr file"))
            .status()
            .expect("spawn runtime");
        let read = |p: &Path| {
            let s = fs::read_to_string(p).unwrap_or_default();
            let _ = fs::remove_file(p);
            s
        };
        (
            status
                .code()
                .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)),
            read(&out_path),
            read(&err_path),
        )
    }

    /// `<bin> --root <root> <args…>`: (exit code, stdout, stderr).
    pub fn out(&self, args: &[&str]) -> (i32, String, String) {
        self.out_cmd(self.cmd(args))
    }

    /// Like [`Runtime::out`], panicking with stderr unless it exits 0; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let (code, out, err) = self.out(args);
        assert_eq!(
            code, 0,
            "{} {args:?} failed ({code}): {out}{err}",
            self.name
        );
        out
    }

    /// `run` the bundle to completion under a fresh id: (exit code, stdout, stderr).
    pub fn run(&self, bundle: &Bundle) -> (i32, String, String) {
        let id = unique("rb");
        self.out(&["run", "--bundle", path_str(bundle.path()), &id])
    }

    /// `create --bundle <path> <id>`: (exit code, stderr).
    pub fn create(&self, bundle: impl AsRef<Path>, id: &str) -> (i32, String) {
        let (code, _, err) = self.out(&["create", "--bundle", path_str(bundle.as_ref()), id]);
        (code, err)
    }

    /// create + start a container whose process keeps running; returns its id.
    pub fn start(&self, bundle: &Bundle) -> String {
        let id = unique("sc");
        let (code, err) = self.create(bundle, &id);
        assert_eq!(code, 0, "{}: create: {err}", self.name);
        self.ok(&["start", &id]);
        id
    }

    /// The `state` JSON, or None when the runtime does not know the container.
    pub fn state(&self, id: &str) -> Option<Value> {
        let (code, out, _) = self.out(&["state", id]);
        (code == 0).then(|| serde_json::from_str(&out).expect("state is JSON"))
    }

    /// The state's status ("created", "running", …) or "absent".
    pub fn status(&self, id: &str) -> String {
        self.state(id)
            .and_then(|s| s["status"].as_str().map(str::to_owned))
            .unwrap_or_else(|| "absent".into())
    }

    /// The container's init pid from `state`.
    pub fn pid(&self, id: &str) -> i32 {
        let state = self
            .state(id)
            .unwrap_or_else(|| panic!("{}: no state for {id}", self.name));
        state["pid"].as_i64().expect("pid in state") as i32
    }

    /// `ps --format json`: the container's pids.
    pub fn pids(&self, id: &str) -> Vec<i32> {
        let out = self.ok(&["ps", "--format", "json", id]);
        serde_json::from_str(&out).expect("ps json")
    }

    /// The ids `list --format json` reports.
    pub fn list_ids(&self) -> Vec<String> {
        let (_, out, _) = self.out(&["list", "--format", "json"]);
        match serde_json::from_str::<Value>(&out) {
            Ok(Value::Array(list)) => list
                .iter()
                .filter_map(|c| c["id"].as_str().map(str::to_owned))
                .collect(),
            _ => Vec::new(),
        }
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        for id in self.list_ids() {
            let _ = self.out(&["delete", "--force", &id]);
        }
    }
}

/// The cgroup layouts a runtime must cope with (detected, never assumed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupLayout {
    /// As the host has it (this VM: v1 controllers plus a cgroup2 mount holding hugetlb).
    Host,
    /// The v1 hierarchies only (the cgroup2 mount removed): what crun accepts here.
    V1,
    /// The cgroup2 hierarchy alone, mounted at /sys/fs/cgroup.
    V2,
}

/// Run `f` on a new thread inside a private mount namespace where the cgroup mounts are
/// rearranged to `layout`; every process the thread starts (runtimes, containers) inherits
/// it, the host's mounts stay as they are. A panic in `f` is passed on.
pub fn in_mount_namespace<T: Send + 'static>(
    layout: CgroupLayout,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    require_root();
    let thread = std::thread::spawn(move || {
        use nix::mount::{mount, umount2, MntFlags, MsFlags};
        // A mount namespace is per thread: this one, then its children.
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).expect("unshare(CLONE_NEWNS)");
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None::<&str>,
        )
        .expect("make / rprivate");
        let mountinfo =
            fs::read_to_string("/proc/thread-self/mountinfo").expect("read own mountinfo");
        let cgroup2 = mountinfo
            .lines()
            .find(|l| {
                l.split(" - ")
                    .nth(1)
                    .is_some_and(|t| t.starts_with("cgroup2 "))
            })
            .and_then(|l| l.split_whitespace().nth(4))
            .map(PathBuf::from);
        let v1 = mountinfo.lines().any(|l| {
            l.split(" - ")
                .nth(1)
                .is_some_and(|t| t.starts_with("cgroup "))
        });
        match layout {
            CgroupLayout::Host => {}
            CgroupLayout::V1 => {
                assert!(v1, "no cgroup v1 hierarchy on this host");
                if let Some(unified) = &cgroup2 {
                    umount2(unified, MntFlags::MNT_DETACH).expect("umount the cgroup2 mount");
                }
            }
            CgroupLayout::V2 => {
                let unified = cgroup2.expect("no cgroup2 hierarchy on this host");
                if unified != Path::new("/sys/fs/cgroup") {
                    let keep = std::env::temp_dir().join(format!("nestbox-v2-{}", unique("m")));
                    fs::create_dir_all(&keep).expect("mkdir");
                    let bind = MsFlags::MS_BIND;
                    mount(Some(&unified), &keep, None::<&str>, bind, None::<&str>)
                        .expect("bind the cgroup2 mount aside");
                    umount2("/sys/fs/cgroup", MntFlags::MNT_DETACH).expect("umount cgroups");
                    let mv = MsFlags::MS_MOVE;
                    mount(
                        Some(&keep),
                        "/sys/fs/cgroup",
                        None::<&str>,
                        mv,
                        None::<&str>,
                    )
                    .expect("move cgroup2 to /sys/fs/cgroup");
                    let _ = fs::remove_dir(&keep);
                }
            }
        }
        f()
    });
    match thread.join() {
        Ok(v) => v,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("test paths are UTF-8")
}

/// Receive one message carrying one SCM_RIGHTS fd over a unix stream (the console-socket and
/// seccomp listenerPath protocols): (payload as text, the fd).
pub fn recv_fd(stream: &std::os::unix::net::UnixStream) -> (String, std::os::fd::OwnedFd) {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    use std::os::fd::{AsRawFd, FromRawFd, RawFd};
    let mut buf = [0u8; 8192];
    let mut cmsg = nix::cmsg_space!([RawFd; 1]);
    let (n, fd) = {
        let mut iov = [std::io::IoSliceMut::new(&mut buf)];
        let msg = recvmsg::<()>(
            stream.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::empty(),
        )
        .expect("recvmsg");
        let fd = msg
            .cmsgs()
            .expect("control messages")
            .find_map(|c| match c {
                ControlMessageOwned::ScmRights(fds) => fds.first().copied(),
                _ => None,
            })
            .expect("no SCM_RIGHTS control message received");
        (msg.bytes, fd)
    };
    assert!(n > 0, "empty message on the fd socket");
    // SAFETY: SCM_RIGHTS installed a new fd in this process that nothing else owns.
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    (String::from_utf8_lossy(&buf[..n]).into_owned(), fd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_names_fit_an_interface_and_differ() {
        let a = unique("node");
        let b = unique("node");
        assert!(a.len() <= 12, "{a}");
        assert_ne!(a, b);
    }
}
