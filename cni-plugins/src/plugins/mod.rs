//! The plugins, one file each, reading like the spec's verbs; plus running the IPAM
//! delegate (exec from CNI_PATH like libcni, or in-process when CNI_PATH resolves the
//! delegate to this very binary's host-local: same code, same behaviour, no exec).

pub mod bridge;
pub mod host_local;
pub mod loopback;
pub mod overlay;

use std::path::{Path, PathBuf};

use crate::cni::skel::{CmdArgs, Command, Plugin};
use crate::cni::{invoke, CniResult, Result};

/// The plugin an applet name stands for (`bridge`, `nestbox-bridge`, `nestbox-vxlan`,
/// `flannel`, ...).
pub fn by_name(name: &str) -> Option<&'static dyn Plugin> {
    match name.strip_prefix("nestbox-").unwrap_or(name) {
        "bridge" => Some(&bridge::Bridge),
        "host-local" => Some(&host_local::HostLocal),
        "loopback" => Some(&loopback::Loopback),
        "vxlan" | "host-gw" | "flannel" => Some(&overlay::Overlay),
        _ => None,
    }
}

fn is_our_host_local(exe: &Path) -> bool {
    let Some(name) = exe.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    if name.strip_prefix("nestbox-").unwrap_or(name) != "host-local" {
        return false;
    }
    // Same file as our own executable (stat follows the symlinks): cheaper than
    // canonicalizing both paths.
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(exe), std::fs::metadata("/proc/self/exe")) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// Where `ipam.type` resolves: this very binary's host-local (run in-process) or a
/// plugin to exec.
enum Delegate {
    InProcess,
    Exec(PathBuf),
}

fn resolve(args: &CmdArgs) -> Result<Delegate> {
    let exe = invoke::find_in_path(&args.conf.ipam.plugin_type, &args.path)?;
    Ok(if is_our_host_local(&exe) {
        Delegate::InProcess
    } else {
        Delegate::Exec(exe)
    })
}

/// Run the IPAM delegate named by `ipam.type` for `cmd`; ADD returns its result.
pub fn ipam(args: &CmdArgs, cmd: Command) -> Result<Option<CniResult>> {
    run_ipam(&resolve(args)?, args, cmd)
}

fn run_ipam(d: &Delegate, args: &CmdArgs, cmd: Command) -> Result<Option<CniResult>> {
    let exe = match d {
        Delegate::InProcess => {
            let hl = host_local::HostLocal;
            return match cmd {
                Command::Add => hl.add(args).map(Some),
                Command::Del => hl.del(args).map(|_| None),
                Command::Check => hl.check(args).map(|_| None),
                Command::Status => hl.status(args).map(|_| None),
                Command::Gc => hl.gc(args).map(|_| None),
                Command::Version => Ok(None),
            };
        }
        Delegate::Exec(exe) => exe,
    };
    let verb = match cmd {
        Command::Add => return invoke::exec_add(exe, &args.stdin).map(Some),
        Command::Del => "DEL",
        Command::Check => "CHECK",
        Command::Status => "STATUS",
        Command::Gc => "GC",
        Command::Version => "VERSION",
    };
    invoke::exec(exe, verb, &args.stdin, &[]).map(|_| None)
}

/// An IPAM ADD started early when its work is long enough to be worth overlapping with
/// the caller's link setup (which spends its time in the kernel): our own host-local
/// over a large store (it reads every reservation file: about 0.35 ms with 250 pods).
/// Otherwise it runs at [`IpamAdd::finish`], where the reference calls IPAM: a thread
/// costs more than it saves on a small store (about 80 µs here), and an exec'd delegate
/// may need the pod's interface to exist already (dhcp does).
///
/// The thread never enters a netns, so it stays in the node's netns whatever the
/// caller's thread enters (setns(CLONE_NEWNET) moves only the calling thread). The
/// caller must [`IpamAdd::finish`] before it forks: a child forked while this thread
/// holds an allocator lock would deadlock.
pub struct IpamAdd(IpamJob);

enum IpamJob {
    Thread(std::thread::JoinHandle<Result<Option<CniResult>>>),
    /// Run at finish, with the delegate resolved here (None: resolving failed, and
    /// finish reports why, in order).
    Later(Option<Delegate>),
}

impl IpamAdd {
    pub fn start(args: &CmdArgs) -> IpamAdd {
        let d = resolve(args).ok();
        if !(matches!(d, Some(Delegate::InProcess)) && large_store(args)) {
            return IpamAdd(IpamJob::Later(d));
        }
        let a = args.clone();
        match std::thread::Builder::new()
            .name("ipam".into())
            .stack_size(256 << 10)
            .spawn(move || run_ipam(&Delegate::InProcess, &a, Command::Add))
        {
            Ok(h) => IpamAdd(IpamJob::Thread(h)),
            Err(_) => IpamAdd(IpamJob::Later(d)),
        }
    }

    /// The delegate's ADD result (`args`: the ones it was started with).
    pub fn finish(self, args: &CmdArgs) -> Result<Option<CniResult>> {
        match self.0 {
            IpamJob::Thread(h) => joined(h),
            IpamJob::Later(Some(d)) => run_ipam(&d, args, Command::Add),
            IpamJob::Later(None) => ipam(args, Command::Add),
        }
    }

    /// After a failed link setup: the result of an ADD already running, `Err` when none
    /// was (nothing was reserved then).
    pub fn finish_started(self) -> Result<Option<CniResult>> {
        match self.0 {
            IpamJob::Thread(h) => joined(h),
            IpamJob::Later(_) => Err(crate::cni::Error::internal("IPAM ADD not started")),
        }
    }
}

fn joined(h: std::thread::JoinHandle<Result<Option<CniResult>>>) -> Result<Option<CniResult>> {
    h.join()
        .unwrap_or_else(|_| Err(crate::cni::Error::internal("IPAM ADD panicked")))
}

/// Whether host-local's directory for this network holds more than one 4 KiB block of
/// entries (a few dozen reservations with their owner links on ext4; a directory's size
/// grows with its entries on every common filesystem).
fn large_store(args: &CmdArgs) -> bool {
    let dir = args
        .raw
        .get("ipam")
        .and_then(|i| i.get("dataDir"))
        .and_then(|d| d.as_str())
        .unwrap_or(crate::ipam::config::DEFAULT_DATA_DIR);
    std::fs::metadata(Path::new(dir).join(&args.conf.name))
        .map(|m| m.len() > 4096)
        .unwrap_or(false)
}

/// `cni.dev/valid-attachments` (or the older `cni.dev/attachments`) of a GC config.
pub fn valid_attachments(args: &CmdArgs) -> Vec<(String, String)> {
    let list = args
        .raw
        .get("cni.dev/valid-attachments")
        .or_else(|| args.raw.get("cni.dev/attachments"))
        .and_then(|v| v.as_array())
        .cloned()
        .unwrap_or_default();
    list.iter()
        .filter_map(|a| {
            Some((
                a.get("containerID")?.as_str()?.to_string(),
                a.get("ifname")?.as_str()?.to_string(),
            ))
        })
        .collect()
}
