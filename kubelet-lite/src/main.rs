//! `nestlet`: the node agent (daemon), plus `nestlet image …` and `nestlet pods`.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context as _, Result};
use clap::{Args, Parser, Subcommand};
use nestlet::config::Config;
use nestlet::image::ImageStore;
use nestlet::pod::{self, Manager};
use nestlet::shim::{EventsServer, Shims};
use tokio::sync::mpsc;

#[derive(Parser)]
#[command(
    name = "nestlet",
    version,
    about = "a minimal kubelet: runs pods through containerd-shim-nestbox-v2 and CNI"
)]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Cmd {
    /// Manage the image store.
    Image {
        #[command(subcommand)]
        cmd: ImageCmd,
    },
    /// List the pods this node runs (from the state directory).
    Pods {
        #[arg(long, default_value = "/var/lib/nestlet")]
        root: PathBuf,
    },
}

#[derive(Subcommand)]
enum ImageCmd {
    /// Import an OCI image layout (directory or tar archive).
    Import {
        file: PathBuf,
        /// The image's name (else taken from the layout's annotations).
        #[arg(long)]
        name: Option<String>,
        #[arg(long, default_value = "/var/lib/nestlet")]
        root: PathBuf,
    },
    /// List the stored images.
    Ls {
        #[arg(long, default_value = "/var/lib/nestlet")]
        root: PathBuf,
    },
    /// Pull an image from its registry.
    Pull {
        image: String,
        #[arg(long, default_value = "/var/lib/nestlet")]
        root: PathBuf,
        /// Registries reached over plain http (host:port); loopback ones always are.
        #[arg(long = "insecure-registry")]
        insecure_registry: Vec<String>,
    },
}

#[derive(Args)]
struct RunArgs {
    /// kubeconfig of the apiserver (without it: standalone mode, static pods only).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// The node's name (default: the hostname).
    #[arg(long)]
    node_name: Option<String>,
    /// The node's address (default: the first non-loopback IPv4 address).
    #[arg(long)]
    node_ip: Option<String>,
    #[arg(long, default_value = "/etc/cni/net.d")]
    cni_conf_dir: PathBuf,
    /// Where CNI plugins are (repeat, or colon-separated).
    #[arg(long, default_value = "/opt/cni/bin")]
    cni_bin_dir: Vec<String>,
    #[arg(long, default_value = "/var/lib/nestlet")]
    root: PathBuf,
    /// Directory of static pod manifests.
    #[arg(long)]
    pod_manifest_path: Option<PathBuf>,
    /// Where CRI-format container logs go.
    #[arg(long, default_value = "/var/log/pods")]
    pod_log_dir: PathBuf,
    /// Cgroup under which pod cgroups are made.
    #[arg(long, default_value = "/nestlet")]
    cgroup_root: String,
    /// Cluster DNS server address(es) for ClusterFirst pods.
    #[arg(long)]
    cluster_dns: Vec<String>,
    #[arg(long, default_value = "cluster.local")]
    cluster_domain: String,
    #[arg(long, default_value = "/etc/resolv.conf")]
    resolv_conf: PathBuf,
    /// Registries reached over plain http (host:port); loopback ones always are.
    #[arg(long = "insecure-registry")]
    insecure_registry: Vec<String>,
    /// containerd-shim-nestbox-v2 (default: beside nestlet, else on PATH).
    #[arg(long)]
    shim_binary: Option<PathBuf>,
    /// The OCI runtime the shim runs (default: nestbox beside nestlet, else on PATH).
    #[arg(long)]
    runtime_binary: Option<PathBuf>,
    /// The static pause binary (default: nestbox-pause beside nestlet, else on PATH).
    #[arg(long)]
    pause_binary: Option<PathBuf>,
    #[arg(long, default_value_t = 110)]
    max_pods: u32,
    /// How many pods are set up at once (sandbox, network, first start of the containers;
    /// image pulls do not hold a turn); the others wait in the order they arrived.
    /// Default: twice the CPUs. Setting up is CPU-bound: with every pod of a burst at once,
    /// each one waits for all of them.
    #[arg(long)]
    parallel_pod_starts: Option<usize>,
}

/// A binary: the flag, else beside this executable, else on PATH.
fn find_binary(flag: Option<PathBuf>, name: &str) -> Result<PathBuf> {
    if let Some(p) = flag {
        if p.is_file() {
            return Ok(std::fs::canonicalize(&p).unwrap_or(p));
        }
        bail!("{} does not exist", p.display());
    }
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        let p = dir.join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    for d in std::env::var("PATH").unwrap_or_default().split(':') {
        let p = Path::new(d).join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!("{name} not found beside nestlet or on PATH (give its path with a flag)")
}

fn first_ipv4() -> Option<String> {
    let addrs = nix::ifaddrs::getifaddrs().ok()?;
    for a in addrs {
        if let Some(sin) = a.address.as_ref().and_then(|s| s.as_sockaddr_in()) {
            let ip = sin.ip();
            if !ip.is_loopback() {
                return Some(ip.to_string());
            }
        }
    }
    None
}

fn runtime_version(bin: &Path) -> String {
    let out = std::process::Command::new(bin).arg("--version").output();
    let first = out
        .ok()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .to_string()
        })
        .unwrap_or_default();
    // "nestbox version 0.1.0" / "runc version 1.1.5"
    let mut parts = first.split_whitespace();
    match (parts.next(), parts.nth(1)) {
        (Some(name), Some(v)) => format!("{name}://{v}"),
        _ => "nestbox://unknown".into(),
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("NESTLET_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    match cli.cmd {
        Some(Cmd::Image { cmd }) => rt.block_on(image_cmd(cmd)),
        Some(Cmd::Pods { root }) => print_pods(&root),
        None => rt.block_on(run(cli.run)),
    }
}

async fn image_cmd(cmd: ImageCmd) -> Result<()> {
    match cmd {
        ImageCmd::Import { file, name, root } => {
            let store = ImageStore::new(&root, Vec::new());
            let recs = store.import(&file, name.as_deref()).await?;
            for r in recs {
                println!("imported {} ({})", r.name, r.manifest_digest);
            }
        }
        ImageCmd::Ls { root } => {
            let store = ImageStore::new(&root, Vec::new());
            nestlet::image::print_list(&store, &mut std::io::stdout())?;
        }
        ImageCmd::Pull {
            image,
            root,
            insecure_registry,
        } => {
            let store = ImageStore::new(&root, insecure_registry);
            let tty = std::io::stderr().is_terminal();
            let progress = move |s: &str| {
                if tty {
                    eprint!("\r\x1b[K{s}");
                }
            };
            let rec = store.pull(&image, false, Some(&progress)).await?;
            if tty {
                eprintln!();
            }
            println!("{} {}", rec.name, rec.manifest_digest);
        }
    }
    Ok(())
}

fn print_pods(root: &Path) -> Result<()> {
    println!(
        "{:<12} {:<40} {:<6} {:<26} {:<9} {:<16}",
        "NAMESPACE", "NAME", "READY", "STATUS", "RESTARTS", "IP"
    );
    let mut rows = Vec::new();
    for e in std::fs::read_dir(root.join("pods"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let Some(st) = pod::state::PodState::load(&e.path().join("state.json")) else {
            continue;
        };
        let status: k8s_openapi::api::core::v1::PodStatus =
            std::fs::read(e.path().join("status.json"))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or_default();
        let cs = status.container_statuses.clone().unwrap_or_default();
        let ready = cs.iter().filter(|c| c.ready).count();
        let restarts: i32 = cs.iter().map(|c| c.restart_count).sum();
        let reason = cs
            .iter()
            .chain(status.init_container_statuses.iter().flatten())
            .find_map(|c| {
                c.state
                    .as_ref()
                    .and_then(|s| s.waiting.as_ref())
                    .and_then(|w| w.reason.clone())
            })
            .filter(|r| r != "PodInitializing" || status.phase.as_deref() == Some("Pending"));
        let shown = match (status.phase.as_deref(), reason) {
            (Some("Running"), _) | (Some("Succeeded"), _) | (Some("Failed"), _) => {
                status.phase.clone().unwrap_or_default()
            }
            (_, Some(r)) => r,
            (p, None) => p.unwrap_or("Pending").to_string(),
        };
        rows.push(format!(
            "{:<12} {:<40} {:<6} {:<26} {:<9} {:<16}",
            st.namespace,
            st.name,
            format!("{ready}/{}", cs.len()),
            shown,
            restarts,
            status.pod_ip.unwrap_or_else(|| "<none>".into())
        ));
    }
    rows.sort();
    for r in rows {
        println!("{r}");
    }
    Ok(())
}

async fn run(a: RunArgs) -> Result<()> {
    if a.kubeconfig.is_none() && a.pod_manifest_path.is_none() {
        bail!("nothing to run: give --kubeconfig (apiserver) and/or --pod-manifest-path (static pods)");
    }
    let node_name = a
        .node_name
        .clone()
        .unwrap_or_else(nestlet::node::hostname)
        .to_lowercase();
    let node_ip = match a.node_ip.clone().or_else(first_ipv4) {
        Some(ip) => ip,
        None => bail!("no node IP: this network namespace has no IPv4 address besides loopback; give --node-ip"),
    };
    let shim_binary = find_binary(a.shim_binary.clone(), "containerd-shim-nestbox-v2")?;
    let runtime_binary = find_binary(a.runtime_binary.clone(), "nestbox")?;
    let pause_binary = find_binary(a.pause_binary.clone(), "nestbox-pause")?;
    std::fs::create_dir_all(&a.root).with_context(|| format!("creating {}", a.root.display()))?;
    let root = std::fs::canonicalize(&a.root)?;
    let cfg = Config {
        root: root.clone(),
        pod_log_dir: a.pod_log_dir.clone(),
        node_name: node_name.clone(),
        node_ip: node_ip.clone(),
        cni_conf_dir: a.cni_conf_dir.clone(),
        cni_bin_dirs: a
            .cni_bin_dir
            .iter()
            .flat_map(|d| d.split(':').map(PathBuf::from).collect::<Vec<_>>())
            .collect(),
        pause_binary,
        cgroup_root: format!("/{}", a.cgroup_root.trim_matches('/')),
        cluster_dns: a.cluster_dns.clone(),
        cluster_domain: a.cluster_domain.clone(),
        resolv_conf: a.resolv_conf.clone(),
        insecure_registries: a.insecure_registry.clone(),
        shim_binary,
        runtime_binary: runtime_binary.clone(),
        pod_manifest_path: a.pod_manifest_path.clone(),
        kubeconfig: a.kubeconfig.clone(),
        max_pods: a.max_pods,
        parallel_pod_starts: a
            .parallel_pod_starts
            .unwrap_or_else(|| 2 * std::thread::available_parallelism().map_or(1, |n| n.get())),
    };
    cfg.prepare_pause_rootfs()
        .context("preparing the pause rootfs")?;
    let api = match &cfg.kubeconfig {
        Some(p) => {
            let kc = kube::config::Kubeconfig::read_from(p)
                .with_context(|| format!("reading kubeconfig {}", p.display()))?;
            let kcfg = kube::Config::from_custom_kubeconfig(
                kc,
                &kube::config::KubeConfigOptions::default(),
            )
            .await
            .with_context(|| format!("kubeconfig {}", p.display()))?;
            Some(kube::Client::try_from(kcfg).context("kube client")?)
        }
        None => None,
    };
    let (ev_tx, mut ev_rx) = mpsc::unbounded_channel();
    let events = EventsServer::start(&root.join("events.sock"), ev_tx)
        .await
        .context("serving the shim events endpoint")?;
    let (status_tx, status_rx) = mpsc::unbounded_channel();
    let runtime_name = runtime_version(&runtime_binary);
    let oom_floor = std::fs::read_to_string("/proc/self/oom_score_adj")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    let ctx = Arc::new(pod::Context {
        shims: Shims::new(
            cfg.shim_binary.clone(),
            root.join("nestlet.sock").display().to_string(),
            std::env::current_exe().unwrap_or_else(|_| PathBuf::from("nestlet")),
            root.join("events.sock"),
            cfg.runtime_binary.clone(),
            root.join("runtime"),
        ),
        images: ImageStore::new(&root, cfg.insecure_registries.clone()),
        cni: nestlet::cni::Cni {
            conf_dir: cfg.cni_conf_dir.clone(),
            bin_dirs: cfg.cni_bin_dirs.clone(),
            cache_dir: root.join("cni"),
        },
        api: api.clone(),
        status: status_tx,
        containers: Mutex::new(HashMap::new()),
        oom_floor,
        runtime_name: runtime_name
            .split("://")
            .next()
            .unwrap_or("nestbox")
            .to_string(),
        start_slots: Arc::new(tokio::sync::Semaphore::new(cfg.parallel_pod_starts.max(1))),
        cfg: cfg.clone(),
    });
    tracing::info!(node = %node_name, ip = %node_ip, root = %root.display(), runtime = %runtime_name,
        mode = if api.is_some() { "apiserver" } else { "standalone" }, "nestlet starting");
    tokio::spawn(nestlet::sources::report_status(
        api.clone(),
        root.clone(),
        status_rx,
    ));
    let (src_tx, mut src_rx) = mpsc::unbounded_channel();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let mut manager = Manager::new(ctx.clone());
    manager.restore(&done_tx);
    if let Some(client) = api.clone() {
        let info = Arc::new(nestlet::node::NodeInfo {
            name: node_name.clone(),
            ip: node_ip.clone(),
            runtime_version: runtime_name.clone(),
            max_pods: cfg.max_pods,
        });
        let cni = ctx.cni.clone();
        let (cidr_tx, _cidr_rx) = tokio::sync::watch::channel(None);
        tokio::spawn(nestlet::node::run(
            client.clone(),
            info,
            move || cni.load().is_ok(),
            cidr_tx,
        ));
        tokio::spawn(nestlet::sources::watch_api_pods(
            client,
            node_name.clone(),
            src_tx.clone(),
        ));
    }
    if let Some(dir) = cfg.pod_manifest_path.clone() {
        tokio::spawn(nestlet::sources::watch_manifests(
            dir,
            node_name.clone(),
            src_tx.clone(),
        ));
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    loop {
        tokio::select! {
            Some(m) = src_rx.recv() => manager.handle(m, &done_tx),
            Some(e) = ev_rx.recv() => manager.event(e),
            Some(uid) = done_rx.recv() => manager.finished(&uid),
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    // Pods keep running (their shims are their parents): a restarted nestlet adopts them.
    tracing::info!(pods = manager.len(), "nestlet stopping; pods keep running");
    events.stop().await;
    Ok(())
}
