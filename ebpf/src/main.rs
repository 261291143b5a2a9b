//! nestbox-netdiag: `doctor`, `trace` and `drops` for pod networking (DESIGN §7).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use nestbox_netdiag::doctor::{self, NodeFacts};
use nestbox_netdiag::events::Stop;
use nestbox_netdiag::report::Status;
use nestbox_netdiag::target::{self, Sources, Target};
use nestbox_netdiag::{drops, trace};

#[derive(Parser)]
#[command(
    name = "nestbox-netdiag",
    version,
    about = "Why can't pod A reach pod B, and where is the packet dropped"
)]
struct Cli {
    /// Work on the node whose network namespace this is (default: the current one).
    #[arg(long, global = true)]
    node_netns: Option<PathBuf>,
    /// nestlet's state directory (pod names).
    #[arg(long, global = true, default_value = "/var/lib/nestlet")]
    nestlet_root: PathBuf,
    /// libcni's cache directory (its `results/` name containers and pods).
    #[arg(long, global = true, default_value = "/var/lib/cni")]
    cni_cache_dir: PathBuf,
    /// Where named network namespaces live.
    #[arg(long, global = true, default_value = "/run/netns")]
    netns_dir: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Check every hop of a pod's packet path; exit 0 when all pass, 1 on a failure,
    /// 2 on warnings only.
    Doctor(DoctorArgs),
    /// Count a pod's flows at every hop of its path (tc programs) until Ctrl-C.
    Trace(TraceArgs),
    /// Report dropped packets of pods with the kernel's drop reason until Ctrl-C.
    Drops(DropsArgs),
}

#[derive(Args)]
struct DoctorArgs {
    /// Pods (`namespace/name`), container ids, netns names or netns paths.
    targets: Vec<String>,
    /// Every pod the node knows (nestlet's state, the CNI result cache).
    #[arg(long)]
    all: bool,
    /// Print JSON.
    #[arg(long, conflicts_with = "dot")]
    json: bool,
    /// Print the path as a Graphviz graph (render: `| dot -Tsvg > path.svg`).
    #[arg(long)]
    dot: bool,
    /// The overlay's subnet.env.
    #[arg(long, default_value = "/run/flannel/subnet.env")]
    subnet_file: PathBuf,
    /// etcd endpoints holding the overlay leases (comma-separated).
    #[arg(long, value_delimiter = ',')]
    etcd_endpoints: Vec<String>,
    #[arg(long, default_value = "/coreos.com/network")]
    etcd_prefix: String,
    /// A kubeconfig: the leases are the Nodes' podCIDRs and flannel annotations.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Do not ping the peers' public addresses.
    #[arg(long)]
    no_ping: bool,
}

#[derive(Args)]
struct TraceArgs {
    /// Pods to trace (default: every bridge port of the node).
    #[arg(long = "pod")]
    pods: Vec<String>,
    /// Stop after this many seconds.
    #[arg(long)]
    duration: Option<f64>,
    /// Print the flows as JSON at the end (and no live lines).
    #[arg(long)]
    json: bool,
    /// Do not print a line each time a flow shows up at a hop.
    #[arg(long)]
    quiet: bool,
    /// The VXLAN UDP port (to see pod packets inside the underlay's datagrams).
    #[arg(long, default_value_t = 8472)]
    vxlan_port: u16,
}

#[derive(Args)]
struct DropsArgs {
    /// Pods to watch (`namespace/name`, container id).
    #[arg(long = "pod")]
    pods: Vec<String>,
    /// Network namespaces to watch whole (name or path).
    #[arg(long = "netns")]
    netns: Vec<String>,
    /// Stop after this many seconds.
    #[arg(long)]
    duration: Option<f64>,
    /// Stop after this many drops.
    #[arg(long)]
    count: Option<usize>,
    /// One JSON object per drop.
    #[arg(long)]
    json: bool,
    #[arg(long, default_value_t = 8472)]
    vxlan_port: u16,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("nestbox-netdiag: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn resolve_all(args: &[String], src: &Sources) -> anyhow::Result<Vec<Target>> {
    args.iter()
        .map(|a| target::resolve(a, src).map_err(anyhow::Error::from))
        .collect()
}

fn duration(secs: Option<f64>) -> anyhow::Result<Option<Duration>> {
    secs.map(|s| Duration::try_from_secs_f64(s).context("--duration"))
        .transpose()
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    if let Some(ns) = &cli.node_netns {
        // Before any thread exists: the whole process moves.
        let f = std::fs::File::open(ns).with_context(|| format!("opening {}", ns.display()))?;
        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET)
            .with_context(|| format!("entering {}", ns.display()))?;
    }
    let src = Sources {
        nestlet_root: cli.nestlet_root,
        cni_cache: cli.cni_cache_dir,
        netns_dir: cli.netns_dir,
    };
    match cli.cmd {
        Cmd::Doctor(a) => {
            let targets = if a.all {
                target::known_pods(&src)
            } else {
                anyhow::ensure!(
                    !a.targets.is_empty(),
                    "doctor needs a pod, container id or netns (or --all)"
                );
                resolve_all(&a.targets, &src)?
            };
            let opts = doctor::Options {
                subnet_file: a.subnet_file,
                etcd_endpoints: a.etcd_endpoints,
                etcd_prefix: a.etcd_prefix,
                kubeconfig: a.kubeconfig,
                ping_peers: !a.no_ping,
            };
            let mut facts = NodeFacts::gather(&opts)?;
            let mut worst = Status::Pass;
            let mut json = Vec::new();
            for t in &targets {
                let r = doctor::doctor(t, &mut facts);
                worst = worst.max(r.worst());
                if a.json {
                    json.push(r.json());
                } else if a.dot {
                    print!("{}", r.dot());
                } else {
                    print!("{}", r.text());
                }
            }
            if a.json {
                let v = if json.len() == 1 {
                    json.remove(0)
                } else {
                    serde_json::Value::Array(json)
                };
                println!("{}", serde_json::to_string_pretty(&v)?);
            }
            Ok(ExitCode::from(match worst {
                Status::Pass => 0,
                Status::Fail => 1,
                Status::Warn => 2,
            }))
        }
        Cmd::Trace(a) => {
            let targets = resolve_all(&a.pods, &src)?;
            let stop = Stop::new(duration(a.duration)?)?;
            trace::run(
                &targets,
                &trace::Options {
                    json: a.json,
                    vxlan_port: a.vxlan_port,
                    live: !a.quiet,
                },
                &stop,
            )?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Drops(a) => {
            let mut targets = resolve_all(&a.pods, &src)?;
            targets.extend(resolve_all(&a.netns, &src)?);
            let stop = Stop::new(duration(a.duration)?)?;
            drops::run(
                &targets,
                &drops::Options {
                    json: a.json,
                    count: a.count,
                    vxlan_port: a.vxlan_port,
                },
                &stop,
            )?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
