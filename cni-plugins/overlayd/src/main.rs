//! `nestbox-overlayd`: the overlay agent's CLI. The overlay's CNI plugin is nestbox-cni's
//! `nestbox-vxlan` / `nestbox-host-gw`.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, ValueEnum};
use nestbox_cni::plugins::overlay::subnet_env::{SubnetEnv, DEFAULT_SUBNET_FILE};
use nestbox_overlayd::agent::{Agent, Options};
use nestbox_overlayd::backend::{hostgw::HostGw, udp, udp::Udp, vxlan::Vxlan, Backend};
use nestbox_overlayd::config::NetworkConfig;
use nestbox_overlayd::iface::{self, Choice};
use nestbox_overlayd::masq;
use nestbox_overlayd::subnet::etcd::EtcdSubnetManager;
use nestbox_overlayd::subnet::kube::KubeSubnetManager;
use nestbox_overlayd::subnet::SubnetManager;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum BackendKind {
    Vxlan,
    #[value(name = "host-gw")]
    HostGw,
    Udp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum MasqKind {
    Nftables,
    Iptables,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum SubnetMgr {
    Etcd,
    Kube,
}

/// Flannel-compatible overlay agent: leases this node's pod subnet and programs the
/// routes to every other node's subnet (VXLAN or host-gw).
#[derive(Debug, Parser)]
#[command(name = "nestbox-overlayd", version)]
struct Cli {
    /// Backend (default: the network config's Backend.Type, else vxlan).
    #[arg(long, value_enum)]
    backend: Option<BackendKind>,
    /// VXLAN network identifier (device flannel.<VNI>).
    #[arg(long)]
    vni: Option<u32>,
    /// UDP port: VXLAN's (kernel default 8472; 4789 is IANA's) or the UDP backend's (8285).
    #[arg(long)]
    port: Option<u16>,
    /// UDP backend: TUN queues, one forwarding thread each (default: one per CPU, up to 4).
    #[arg(long = "udp-queues")]
    udp_queues: Option<usize>,
    /// Underlay interface, by name or address (repeatable: first that exists wins).
    #[arg(long)]
    iface: Vec<String>,
    /// Regex matched against interface names and addresses.
    #[arg(long = "iface-regex")]
    iface_regex: Vec<String>,
    /// The address peers reach this node at (default: the interface's address).
    #[arg(long = "public-ip")]
    public_ip: Option<Ipv4Addr>,
    #[arg(long = "subnet-mgr", value_enum, default_value = "etcd")]
    subnet_mgr: SubnetMgr,
    /// Comma-separated etcd endpoints.
    #[arg(
        long = "etcd-endpoints",
        default_value = "http://127.0.0.1:2379",
        value_delimiter = ','
    )]
    etcd_endpoints: Vec<String>,
    #[arg(long = "etcd-prefix", default_value = "/coreos.com/network")]
    etcd_prefix: String,
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    #[arg(long = "node-name")]
    node_name: Option<String>,
    /// flannel's net-conf.json (kube mode; with etcd, written to <prefix>/config when absent).
    #[arg(long = "net-conf")]
    net_conf: Option<PathBuf>,
    #[arg(long = "subnet-file", default_value = DEFAULT_SUBNET_FILE)]
    subnet_file: PathBuf,
    /// TTL of our subnet lease in seconds (renewed at a third of it).
    #[arg(long = "subnet-lease-ttl", default_value_t = 86400)]
    subnet_lease_ttl: u64,
    /// Install masquerade rules for traffic leaving the cluster network.
    #[arg(long = "ip-masq")]
    ip_masq: bool,
    /// Masquerade rules in nftables or iptables (default: nftables when `nft` exists).
    #[arg(long = "ip-masq-backend", value_enum)]
    ip_masq_backend: Option<MasqKind>,
    /// VXLAN: route directly (host-gw style) to peers on a directly connected network.
    #[arg(long = "direct-routing")]
    direct_routing: bool,
    /// Enter this network namespace first (before any thread starts).
    #[arg(long)]
    netns: Option<PathBuf>,
    /// Seconds between full reconciles.
    #[arg(long = "reconcile-interval", default_value_t = 3)]
    reconcile_interval: u64,
    /// Remove the device, routes, masquerade rules and subnet.env, then exit.
    #[arg(long)]
    cleanup: bool,
}

fn enter_netns(path: &PathBuf) -> Result<()> {
    let f =
        std::fs::File::open(path).with_context(|| format!("opening netns {}", path.display()))?;
    // Only the calling thread moves: this runs before any other thread exists, so every
    // thread the agent starts later is born in the target namespace.
    nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)
        .with_context(|| format!("entering netns {}", path.display()))?;
    Ok(())
}

fn main() {
    let cli = Cli::parse();
    if let Some(ns) = &cli.netns {
        if let Err(e) = enter_netns(ns) {
            eprintln!("nestbox-overlayd: {e:#}");
            std::process::exit(1);
        }
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = run(cli) {
        tracing::error!("{e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    let underlay = iface::choose(&Choice {
        iface: cli.iface.clone(),
        iface_regex: cli.iface_regex.clone(),
        public_ip: cli.public_ip,
    })?;
    tracing::info!(iface = %underlay.name, ip = %underlay.ip, public_ip = %underlay.public_ip,
        mtu = underlay.mtu, reason = %underlay.reason, "underlay interface chosen");

    let ttl = Duration::from_secs(cli.subnet_lease_ttl.max(1));
    let mut sm: Box<dyn SubnetManager> = match cli.subnet_mgr {
        SubnetMgr::Etcd => {
            let mut sm = EtcdSubnetManager::new(&cli.etcd_endpoints, &cli.etcd_prefix, ttl);
            if let Some(path) = &cli.net_conf {
                let bytes =
                    std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
                let c = NetworkConfig::parse(&bytes)?;
                if sm.network_config().is_err() {
                    sm.put_config(&c)?;
                    tracing::info!(path = %path.display(), "network config stored in etcd");
                }
            }
            Box::new(sm)
        }
        SubnetMgr::Kube => {
            let node = cli
                .node_name
                .clone()
                .or_else(|| std::env::var("NODE_NAME").ok())
                .or_else(|| {
                    nix::unistd::gethostname()
                        .ok()
                        .and_then(|h| h.into_string().ok())
                })
                .context("no --node-name, NODE_NAME or hostname")?;
            let conf = cli
                .net_conf
                .clone()
                .unwrap_or_else(|| PathBuf::from("/etc/kube-flannel/net-conf.json"));
            Box::new(KubeSubnetManager::new(
                cli.kubeconfig.as_deref(),
                &node,
                &conf,
            )?)
        }
    };
    // Backend settings: flags win over the network config.
    let conf_backend = if cli.backend.is_none() || cli.vni.is_none() || cli.port.is_none() {
        sm.network_config().ok().map(|c| c.backend)
    } else {
        None
    };
    let kind = cli.backend.unwrap_or_else(|| {
        match conf_backend.as_ref().and_then(|b| b.kind.as_deref()) {
            Some("host-gw") => BackendKind::HostGw,
            Some("udp") => BackendKind::Udp,
            _ => BackendKind::Vxlan,
        }
    });
    let vni = cli
        .vni
        .or(conf_backend.as_ref().and_then(|b| b.vni))
        .unwrap_or(1);
    let port = cli
        .port
        .or(conf_backend.as_ref().and_then(|b| b.port))
        .unwrap_or(if kind == BackendKind::Udp {
            udp::DEFAULT_PORT
        } else {
            8472
        });
    let direct = cli.direct_routing
        || conf_backend
            .as_ref()
            .and_then(|b| b.direct_routing)
            .unwrap_or(false);
    let mut backend: Box<dyn Backend> = match kind {
        BackendKind::Vxlan => Box::new(Vxlan::new(underlay.clone(), vni, port, direct)?),
        BackendKind::HostGw => Box::new(HostGw::new(underlay.clone())?),
        BackendKind::Udp => {
            let queues = cli.udp_queues.unwrap_or_else(|| {
                std::thread::available_parallelism()
                    .map(|n| n.get())
                    .unwrap_or(1)
                    .min(4)
            });
            Box::new(Udp::new(underlay.clone(), port, queues)?)
        }
    };

    if cli.cleanup {
        let network = SubnetEnv::read(&cli.subnet_file)
            .ok()
            .flatten()
            .map(|e| e.network)
            .or_else(|| sm.network_config().ok().map(|c| c.network));
        backend.cleanup(network)?;
        // Whichever backend put them there.
        masq::remove(masq::MasqBackend::Nftables);
        masq::remove(masq::MasqBackend::Iptables);
        let _ = std::fs::remove_file(&cli.subnet_file);
        tracing::info!("cleaned up");
        return Ok(());
    }

    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, Arc::clone(&stop)).context("installing signal handler")?;
    }
    let mut agent = Agent {
        sm,
        backend,
        underlay,
        opts: Options {
            subnet_file: cli.subnet_file,
            ip_masq: cli.ip_masq,
            masq_backend: match cli.ip_masq_backend {
                Some(MasqKind::Nftables) => masq::MasqBackend::Nftables,
                Some(MasqKind::Iptables) => masq::MasqBackend::Iptables,
                None => masq::MasqBackend::detect(),
            },
            poll_interval: Duration::from_secs(1),
            reconcile_interval: Duration::from_secs(cli.reconcile_interval.max(1)),
            renew_interval: (ttl / 3).max(Duration::from_secs(1)),
        },
    };
    agent.run(&stop)?;
    Ok(())
}
