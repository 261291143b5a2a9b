//! Test-only helper: a real Kubernetes 1.20.2 control plane inside a test network namespace.
//!
//! [`ControlPlane::start`] creates a netns, runs Debian's etcd on 127.0.0.1 inside it, then
//! kube-apiserver (token auth, RBAC + Node authorization, service-account keys, serving cert
//! and kubelet client cert signed by a test CA made with openssl) bound to the control-plane
//! address, and kube-controller-manager (node CIDR allocation from 10.244.0.0/16, /24 per node).
//! The binaries come from `scripts/kube-build.sh` (built once per machine, then cached).
//!
//! The address lives on the netns' loopback device, so the apiserver can bind before any
//! test topology exists; [`ControlPlane::connect`] then plugs the netns into a test "switch"
//! (a bridge in another netns) with the same address on a veth, so other namespaces on that
//! switch reach the apiserver at [`ControlPlane::url`] with [`ControlPlane::kubeconfig`].
//!
//! Everything (processes, netns, temp dir) is killed and removed on drop, also on panic.
#![allow(dead_code)]

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use nestbox_tests::{require_cmd, require_root, sh_ok, wait_until, workspace_root, NetNs, TempDir};
use serde_json::Value;

/// Cluster CIDR the controller-manager allocates node pod CIDRs from.
pub const CLUSTER_CIDR: &str = "10.244.0.0/16";
/// Service CIDR (the `kubernetes` service gets 10.96.0.1).
pub const SERVICE_CIDR: &str = "10.96.0.0/12";
/// The apiserver's secure port.
pub const API_PORT: u16 = 6443;
/// The admin user's name in the token file (group `system:masters`).
pub const ADMIN_USER: &str = "nestbox-admin";

/// The dir holding kube-apiserver, kube-controller-manager and kubectl, built on first use by
/// `scripts/kube-build.sh` (cached under /var/cache/nestbox/kube-1.20.2/bin, or
/// `$NESTBOX_KUBE_CACHE/bin`). Panics with the script's exit status when the build fails.
pub fn kube_bin_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let script = workspace_root().join("scripts/kube-build.sh");
        let out = Command::new("bash")
            .arg(&script)
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output()
            .expect("spawn bash scripts/kube-build.sh");
        assert!(
            out.status.success(),
            "{} failed ({}); its log is under the cache dir (see the stderr above)",
            script.display(),
            out.status
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        let dir = PathBuf::from(stdout.lines().last().unwrap_or("").trim());
        for b in [
            "kube-apiserver",
            "kube-controller-manager",
            "kube-scheduler",
            "kubectl",
        ] {
            assert!(
                dir.join(b).is_file(),
                "kube-build.sh printed {} but {b} is not there",
                dir.display()
            );
        }
        dir
    })
    .clone()
}

/// Path of one of the built kube binaries (`kubectl`, `kube-apiserver`, ...).
pub fn kube_bin(name: &str) -> PathBuf {
    kube_bin_dir().join(name)
}

/// Extra bearer token for the token file (e.g. a node identity for nestlet tests).
#[derive(Clone, Debug)]
pub struct Token {
    pub token: String,
    pub user: String,
    pub groups: Vec<String>,
}

/// How to start the control plane. `Default` gives 192.168.99.2/24, the CIDRs above, /24 nodes.
#[derive(Clone, Debug)]
pub struct KubeOpts {
    /// The control-plane address (apiserver bind/advertise address, serving-cert SAN).
    pub ip: String,
    /// Prefix length used by [`ControlPlane::connect`] for the veth address.
    pub prefix_len: u8,
    pub cluster_cidr: String,
    pub node_cidr_mask_size: u8,
    pub service_cidr: String,
    /// Extra token-file entries besides the admin token.
    pub extra_tokens: Vec<Token>,
    /// Extra kube-apiserver flags (`--name=value`), appended last.
    pub apiserver_args: Vec<String>,
    /// Extra kube-controller-manager flags, appended last.
    pub controller_manager_args: Vec<String>,
    /// Also run kube-scheduler (`--leader-elect=false`). Off by default.
    pub scheduler: bool,
    /// Extra kube-scheduler flags, appended last.
    pub scheduler_args: Vec<String>,
    /// Wait until the `default` service account in `default` has its token secret (pods can
    /// be admitted from then on). On by default.
    pub wait_service_account: bool,
}

impl Default for KubeOpts {
    fn default() -> Self {
        KubeOpts {
            ip: "192.168.99.2".into(),
            prefix_len: 24,
            cluster_cidr: CLUSTER_CIDR.into(),
            node_cidr_mask_size: 24,
            service_cidr: SERVICE_CIDR.into(),
            extra_tokens: Vec::new(),
            apiserver_args: Vec::new(),
            controller_manager_args: Vec::new(),
            scheduler: false,
            scheduler_args: Vec::new(),
            wait_service_account: true,
        }
    }
}

/// A running control plane: etcd + kube-apiserver + kube-controller-manager in [`Self::ns`].
pub struct ControlPlane {
    /// Killed in reverse start order on drop.
    procs: Vec<(String, Child)>,
    /// The control-plane netns (`lo` holds `ip/32`; `eth0` gets `ip/prefix_len` on `connect`).
    pub ns: NetNs,
    /// Certificates, keys, token file, kubeconfig, logs, etcd data.
    pub dir: TempDir,
    pub opts: KubeOpts,
    /// Admin bearer token (user [`ADMIN_USER`], group `system:masters`).
    pub token: String,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("spawn openssl");
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn random_token() -> String {
    let mut buf = [0u8; 16];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut buf))
        .expect("read /dev/urandom");
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// The last `lines` lines of a log; when a Go process crashed, the start of its panic (the
/// goroutine dump after it is long) instead.
fn tail(path: &Path, lines: usize) -> String {
    let s = fs::read_to_string(path).unwrap_or_default();
    let v: Vec<&str> = s.lines().collect();
    if let Some(i) = v
        .iter()
        .position(|l| l.starts_with("panic:") || l.starts_with("fatal error:"))
    {
        let from = i.saturating_sub(5);
        return v[from..(i + lines).min(v.len())].join("\n");
    }
    v[v.len().saturating_sub(lines)..].join("\n")
}

impl ControlPlane {
    /// Start etcd, kube-apiserver and kube-controller-manager with default options.
    pub fn start() -> ControlPlane {
        Self::start_with(KubeOpts::default())
    }

    /// Start with `opts`; returns when the apiserver answers `/readyz`, the controller-manager
    /// answers `/healthz` and (unless disabled) the default service account has its token.
    /// Panics with the logs' tails when a component fails or is not ready within 120 s.
    pub fn start_with(opts: KubeOpts) -> ControlPlane {
        require_root();
        for c in ["ip", "etcd", "openssl", "curl"] {
            require_cmd(c);
        }
        let bin_dir = kube_bin_dir();
        let ns = NetNs::new("kcp");
        // On lo until `connect` adds it to eth0 too: the apiserver binds before any topology
        // exists (this kernel may lack the dummy driver).
        ns.exec_ok(&["ip", "addr", "add", &format!("{}/32", opts.ip), "dev", "lo"]);
        let dir = TempDir::new("kube");
        let mut cp = ControlPlane {
            procs: Vec::new(),
            ns,
            dir,
            token: random_token(),
            opts,
        };
        cp.write_pki();
        cp.write_auth();
        cp.start_etcd();
        cp.start_apiserver(&bin_dir);
        cp.start_controller_manager(&bin_dir);
        if cp.opts.scheduler {
            cp.start_scheduler(&bin_dir);
        }
        if cp.opts.wait_service_account {
            let ok = wait_until(120, || {
                let out = cp.kubectl(&[
                    "get",
                    "serviceaccount",
                    "default",
                    "-n",
                    "default",
                    "-o",
                    "jsonpath={.secrets[0].name}",
                ]);
                out.status.success() && !out.stdout.is_empty()
            });
            assert!(
                ok,
                "default service account got no token within 120 s\n{}",
                cp.logs()
            );
        }
        cp
    }

    /// The apiserver URL, `https://<ip>:6443`.
    pub fn url(&self) -> String {
        format!("https://{}:{API_PORT}", self.opts.ip)
    }

    /// The control-plane address.
    pub fn ip(&self) -> &str {
        &self.opts.ip
    }

    /// Admin kubeconfig (server [`Self::url`], CA data embedded, admin bearer token).
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("admin.kubeconfig")
    }

    /// The test CA certificate (signs the serving cert and the kubelet client cert; it is
    /// also the apiserver's `--client-ca-file` and the controller-manager's signing CA).
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    pub fn ca_key(&self) -> PathBuf {
        self.dir.path().join("ca.key")
    }

    /// Write a kubeconfig for another bearer token (e.g. from [`KubeOpts::extra_tokens`]).
    pub fn kubeconfig_for(&self, name: &str, token: &str) -> PathBuf {
        let p = self.dir.path().join(format!("{name}.kubeconfig"));
        let ca = fs::read(self.ca_cert()).expect("read ca.crt");
        let kc = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: nestbox\n  cluster:\n    server: {url}\n    certificate-authority-data: {ca}\nusers:\n- name: {name}\n  user:\n    token: {token}\ncontexts:\n- name: {name}\n  context:\n    cluster: nestbox\n    user: {name}\ncurrent-context: {name}\n",
            url = self.url(),
            ca = base64(&ca),
        );
        fs::write(&p, kc).expect("write kubeconfig");
        p
    }

    /// Issue a certificate signed by the test CA: `<dir>/<name>.crt` and `.key`.
    /// `orgs` become O= entries; `sans` are `IP:…`/`DNS:…` items (server certs); the cert is
    /// usable for both client and server auth.
    pub fn issue_cert(
        &self,
        name: &str,
        cn: &str,
        orgs: &[&str],
        sans: &[&str],
    ) -> (PathBuf, PathBuf) {
        let d = self.dir.path();
        let mut subj = String::new();
        for o in orgs {
            subj.push_str(&format!("/O={o}"));
        }
        subj.push_str(&format!("/CN={cn}"));
        let mut ext = String::from(
            "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth,clientAuth\n",
        );
        if !sans.is_empty() {
            ext.push_str(&format!("subjectAltName={}\n", sans.join(",")));
        }
        fs::write(d.join(format!("{name}.ext")), ext).expect("write ext");
        let (key, csr, crt, extf) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.crt"),
            format!("{name}.ext"),
        );
        openssl(
            d,
            &[
                "req", "-newkey", "rsa:2048", "-nodes", "-keyout", &key, "-out", &csr, "-subj",
                &subj,
            ],
        );
        openssl(
            d,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "30",
                "-sha256",
                "-extfile",
                &extf,
                "-out",
                &crt,
            ],
        );
        (d.join(crt), d.join(key))
    }

    fn write_pki(&self) {
        let d = self.dir.path();
        openssl(
            d,
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
                "-days",
                "30",
                "-sha256",
                "-subj",
                "/CN=nestbox-test-ca",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
            ],
        );
        let ip = self.opts.ip.clone();
        self.issue_cert(
            "apiserver",
            "kube-apiserver",
            &[],
            &[
                &format!("IP:{ip}"),
                "IP:127.0.0.1",
                "IP:10.96.0.1",
                "DNS:localhost",
                "DNS:kubernetes",
                "DNS:kubernetes.default",
                "DNS:kubernetes.default.svc",
                "DNS:kubernetes.default.svc.cluster.local",
            ],
        );
        self.issue_cert(
            "kubelet-client",
            "kube-apiserver-kubelet-client",
            &["system:masters"],
            &[],
        );
        openssl(d, &["genrsa", "-out", "sa.key", "2048"]);
        openssl(d, &["rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub"]);
    }

    fn write_auth(&self) {
        let mut csv = format!(
            "{},{ADMIN_USER},{ADMIN_USER},\"system:masters\"\n",
            self.token
        );
        for t in &self.opts.extra_tokens {
            csv.push_str(&format!(
                "{},{},{},\"{}\"\n",
                t.token,
                t.user,
                t.user,
                t.groups.join(",")
            ));
        }
        fs::write(self.dir.path().join("tokens.csv"), csv).expect("write tokens.csv");
        let kc = self.kubeconfig_for("admin", &self.token);
        assert_eq!(kc, self.kubeconfig());
    }

    fn log_path(&self, component: &str) -> PathBuf {
        self.dir.path().join(format!("{component}.log"))
    }

    /// A component's log (`etcd`, `kube-apiserver`, `kube-controller-manager`).
    pub fn log(&self, component: &str) -> String {
        fs::read_to_string(self.log_path(component)).unwrap_or_default()
    }

    /// The last 30 lines of every component's log, for assertion messages.
    pub fn logs(&self) -> String {
        let mut s = format!(
            "control plane in netns {} (files in {})\n",
            self.ns.name(),
            self.dir.path().display()
        );
        for c in [
            "etcd",
            "kube-apiserver",
            "kube-controller-manager",
            "kube-scheduler",
        ] {
            if !self.log_path(c).exists() {
                continue;
            }
            s.push_str(&format!("--- {c} ---\n{}\n", tail(&self.log_path(c), 30)));
        }
        s
    }

    fn spawn(&mut self, component: &str, program: &Path, args: &[String]) {
        let log = fs::File::create(self.log_path(component)).expect("create log");
        let child = Command::new("ip")
            .args(["netns", "exec", self.ns.name()])
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {component}: {e}"));
        self.procs.push((component.to_string(), child));
    }

    /// Panics with the logs when a started component has exited.
    fn assert_running(&mut self) {
        for (name, child) in self.procs.iter_mut() {
            if let Ok(Some(st)) = child.try_wait() {
                let name = name.clone();
                panic!("{name} exited ({st}) during start-up\n{}", self.logs());
            }
        }
    }

    fn wait_ready(&mut self, what: &str, mut probe: impl FnMut(&ControlPlane) -> bool) {
        let mut ok = false;
        for _ in 0..600 {
            if probe(self) {
                ok = true;
                break;
            }
            self.assert_running();
            std::thread::sleep(Duration::from_millis(200));
        }
        assert!(ok, "{what} not ready within 120 s\n{}", self.logs());
    }

    fn curl_ok(&self, url: &str, extra: &[&str]) -> bool {
        let mut argv = vec!["curl", "-sf", "-m", "3", "-o", "/dev/null"];
        argv.extend_from_slice(extra);
        argv.push(url);
        self.ns.exec(&argv).status.success()
    }

    fn start_etcd(&mut self) {
        let data = self.dir.path().join("etcd-data");
        let args: Vec<String> = [
            "--name=kcp",
            "--listen-client-urls=http://127.0.0.1:2379",
            "--advertise-client-urls=http://127.0.0.1:2379",
            "--listen-peer-urls=http://127.0.0.1:2380",
            "--initial-advertise-peer-urls=http://127.0.0.1:2380",
            "--initial-cluster=kcp=http://127.0.0.1:2380",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([format!("--data-dir={}", data.display())])
        .collect();
        let etcd = require_cmd("etcd");
        self.spawn("etcd", &etcd, &args);
        self.wait_ready("etcd", |cp| cp.curl_ok("http://127.0.0.1:2379/health", &[]));
    }

    fn start_apiserver(&mut self, bin_dir: &Path) {
        let d = self.dir.path().to_path_buf();
        let p = |f: &str| d.join(f).display().to_string();
        let o = &self.opts;
        let mut args = vec![
            "--etcd-servers=http://127.0.0.1:2379".to_string(),
            format!("--bind-address={}", o.ip),
            format!("--advertise-address={}", o.ip),
            format!("--secure-port={API_PORT}"),
            "--insecure-port=0".into(),
            format!("--cert-dir={}", p("certs")),
            format!("--tls-cert-file={}", p("apiserver.crt")),
            format!("--tls-private-key-file={}", p("apiserver.key")),
            format!("--client-ca-file={}", p("ca.crt")),
            format!("--token-auth-file={}", p("tokens.csv")),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
            format!("--service-account-key-file={}", p("sa.pub")),
            format!("--service-account-signing-key-file={}", p("sa.key")),
            format!("--service-cluster-ip-range={}", o.service_cidr),
            "--authorization-mode=Node,RBAC".into(),
            "--allow-privileged=true".into(),
            format!("--kubelet-client-certificate={}", p("kubelet-client.crt")),
            format!("--kubelet-client-key={}", p("kubelet-client.key")),
            "--kubelet-preferred-address-types=InternalIP,Hostname,ExternalIP".into(),
            "--profiling=false".into(),
            "--v=1".into(),
        ];
        args.extend(o.apiserver_args.iter().cloned());
        self.spawn("kube-apiserver", &bin_dir.join("kube-apiserver"), &args);
        let auth = format!("Authorization: Bearer {}", self.token);
        let ca = p("ca.crt");
        let url = format!("{}/readyz", self.url());
        self.wait_ready("kube-apiserver", |cp| {
            cp.curl_ok(&url, &["--cacert", &ca, "-H", &auth])
        });
    }

    fn start_controller_manager(&mut self, bin_dir: &Path) {
        let d = self.dir.path().to_path_buf();
        let p = |f: &str| d.join(f).display().to_string();
        let kc = self.kubeconfig().display().to_string();
        let o = &self.opts;
        let mut args = vec![
            format!("--kubeconfig={kc}"),
            format!("--authentication-kubeconfig={kc}"),
            format!("--authorization-kubeconfig={kc}"),
            "--bind-address=127.0.0.1".into(),
            "--secure-port=10257".into(),
            "--port=0".into(),
            format!("--cert-dir={}", p("kcm-certs")),
            "--allocate-node-cidrs=true".into(),
            format!("--cluster-cidr={}", o.cluster_cidr),
            format!("--node-cidr-mask-size={}", o.node_cidr_mask_size),
            format!("--service-cluster-ip-range={}", o.service_cidr),
            "--leader-elect=false".into(),
            "--controllers=*".into(),
            "--use-service-account-credentials=false".into(),
            format!("--service-account-private-key-file={}", p("sa.key")),
            format!("--root-ca-file={}", p("ca.crt")),
            format!("--cluster-signing-cert-file={}", p("ca.crt")),
            format!("--cluster-signing-key-file={}", p("ca.key")),
            "--profiling=false".into(),
            "--v=1".into(),
        ];
        args.extend(o.controller_manager_args.iter().cloned());
        self.spawn(
            "kube-controller-manager",
            &bin_dir.join("kube-controller-manager"),
            &args,
        );
        self.wait_ready("kube-controller-manager", |cp| {
            cp.curl_ok("https://127.0.0.1:10257/healthz", &["-k"])
        });
    }

    fn start_scheduler(&mut self, bin_dir: &Path) {
        let kc = self.kubeconfig().display().to_string();
        let mut args = vec![
            format!("--kubeconfig={kc}"),
            format!("--authentication-kubeconfig={kc}"),
            format!("--authorization-kubeconfig={kc}"),
            "--bind-address=127.0.0.1".into(),
            "--secure-port=10259".into(),
            "--port=0".into(),
            "--leader-elect=false".into(),
            "--profiling=false".into(),
            "--v=1".into(),
        ];
        args.extend(self.opts.scheduler_args.iter().cloned());
        self.spawn("kube-scheduler", &bin_dir.join("kube-scheduler"), &args);
        self.wait_ready("kube-scheduler", |cp| {
            cp.curl_ok("https://127.0.0.1:10259/healthz", &["-k"])
        });
    }

    /// A raw API call with the admin token from inside the control-plane netns (curl):
    /// `method` (GET, POST, PUT, PATCH, DELETE), `path` (`/api/v1/nodes/n1/status`), an optional
    /// JSON body and its content type (PATCH: `application/merge-patch+json`,
    /// `application/strategic-merge-patch+json`, `application/json-patch+json`; else
    /// `application/json`). Returns (HTTP status, parsed body or `Value::Null`).
    pub fn api(&self, method: &str, path: &str, body: Option<(&str, &Value)>) -> (u16, Value) {
        let url = format!("{}{path}", self.url());
        let ca = self.ca_cert().display().to_string();
        let auth = format!("Authorization: Bearer {}", self.token);
        let mut argv: Vec<String> = [
            "curl",
            "-sS",
            "-m",
            "20",
            "--cacert",
            &ca,
            "-H",
            &auth,
            "-X",
            method,
            "-w",
            "\n%{http_code}",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if let Some((ctype, b)) = body {
            argv.extend([
                "-H".into(),
                format!("Content-Type: {ctype}"),
                "--data-binary".into(),
                b.to_string(),
            ]);
        }
        argv.push(url);
        let refs: Vec<&str> = argv.iter().map(String::as_str).collect();
        let out = self.ns.exec(&refs);
        assert!(
            out.status.success(),
            "curl {method} {path}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.logs()
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        let code = code.trim().parse().unwrap_or(0);
        (code, serde_json::from_str(body).unwrap_or(Value::Null))
    }

    /// Plug the control plane into a test switch: a veth `eth0` here (address `ip/prefix_len`)
    /// whose peer `port` (≤ 15 chars) goes into `switch` as a port of its bridge `bridge`.
    /// Removed with the namespaces.
    pub fn connect(&self, switch: &NetNs, bridge: &str, port: &str) {
        sh_ok(&format!(
            "ip -n {sw} link add {port} type veth peer name eth0 netns {cp} && \
             ip -n {sw} link set {port} master {bridge} && ip -n {sw} link set {port} up && \
             ip -n {cp} addr add {ip}/{len} dev eth0 && ip -n {cp} link set eth0 up",
            sw = switch.name(),
            cp = self.ns.name(),
            ip = self.opts.ip,
            len = self.opts.prefix_len,
        ));
    }

    /// Run the built kubectl inside the control-plane netns with the admin kubeconfig.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_stdin(args, None)
    }

    /// Like [`Self::kubectl`], feeding `input` on stdin (e.g. `apply -f -`).
    pub fn kubectl_stdin(&self, args: &[&str], input: Option<&str>) -> Output {
        let mut child = Command::new("ip")
            .args(["netns", "exec", self.ns.name()])
            .arg(kube_bin("kubectl"))
            .arg(format!("--kubeconfig={}", self.kubeconfig().display()))
            .arg("--request-timeout=20s")
            .args(args)
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn kubectl");
        if let Some(s) = input {
            let mut stdin = child.stdin.take().expect("kubectl stdin");
            stdin.write_all(s.as_bytes()).expect("write kubectl stdin");
        }
        child.wait_with_output().expect("wait kubectl")
    }

    /// kubectl that must succeed; returns stdout. Panics with stderr otherwise.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `kubectl <args> -o json`, parsed.
    pub fn kubectl_json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        let s = self.kubectl_ok(&a);
        serde_json::from_str(&s).unwrap_or_else(|e| panic!("kubectl {args:?}: bad JSON: {e}"))
    }

    /// `kubectl apply -f -` with a JSON or YAML manifest; panics on failure.
    pub fn apply(&self, manifest: &str) -> String {
        let out = self.kubectl_stdin(&["apply", "-f", "-"], Some(manifest));
        assert!(
            out.status.success(),
            "kubectl apply failed: {}{}\nmanifest:\n{manifest}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Stop one component (SIGKILL) — for restart tests. Returns false when not running.
    pub fn kill(&mut self, component: &str) -> bool {
        if let Some(i) = self.procs.iter().position(|(n, _)| n == component) {
            let (_, mut c) = self.procs.remove(i);
            let _ = c.kill();
            let _ = c.wait();
            true
        } else {
            false
        }
    }

    /// Restart the apiserver (kill, start again with the same flags, wait for `/readyz`).
    pub fn restart_apiserver(&mut self) {
        self.kill("kube-apiserver");
        let log = self.log_path("kube-apiserver");
        let old = fs::read_to_string(&log).unwrap_or_default();
        fs::write(self.dir.path().join("kube-apiserver.log.prev"), old).expect("save log");
        self.start_apiserver(&kube_bin_dir());
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        // Reverse order: controller-manager, apiserver, etcd. SIGTERM first, then SIGKILL.
        while let Some((_, mut c)) = self.procs.pop() {
            // SAFETY: kill(2) on the pid of our own child, not yet reaped.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            if !wait_until(5, || matches!(c.try_wait(), Ok(Some(_)))) {
                let _ = c.kill();
            }
            let _ = c.wait();
        }
    }
}

/// Standard base64 (for kubeconfig `*-data` fields).
pub fn base64(data: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// A fresh random bearer token for [`KubeOpts::extra_tokens`].
pub fn new_token(user: &str, groups: &[&str]) -> Token {
    Token {
        token: random_token(),
        user: user.to_string(),
        groups: groups.iter().map(|s| s.to_string()).collect(),
    }
}
