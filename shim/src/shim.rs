//! The shim binary's three lives, as containerd runs it: `start` (find or launch the pod's
//! shim and print its address), `delete` (clean up after a shim that died), and the daemon
//! that serves the Task API until Shutdown.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{
    socket_address, spawn, util::write_address, Config, DeleteResponse, ExitSignal, Flags,
    StartOpts,
};

use crate::runtime::{is_gone, Runtime, RuntimeOptions};
use crate::service::{unmount_rootfs, Service};
use crate::timestamp;

/// containerd's runtime type for this shim.
pub const RUNTIME_TYPE: &str = "io.containerd.nestbox.v2";
/// The CRI annotation naming the pod sandbox a container belongs to: one shim per pod.
const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";

pub struct Shim {
    namespace: String,
    id: String,
    bundle: PathBuf,
    socket: String,
    exit: Arc<ExitSignal>,
}

/// The group a bundle's container belongs to: its pod sandbox, else itself.
fn group_of(bundle: &Path, id: &str) -> String {
    std::fs::read(bundle.join("config.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|spec| {
            spec["annotations"][SANDBOX_ID]
                .as_str()
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
        })
        .unwrap_or_else(|| id.to_owned())
}

fn socket_path(address: &str) -> &str {
    address.strip_prefix("unix://").unwrap_or(address)
}

/// Whether a shim answers at `address`.
fn serving(address: &str) -> bool {
    UnixStream::connect(socket_path(address)).is_ok()
}

/// Send the crate's logger output to the `log` FIFO containerd reads in the bundle, when
/// there is one (nestlet and tests may run the shim without it).
fn init_logging(debug: bool) {
    let Ok(logger) = containerd_shim::logger::FifoLogger::with_path("log") else {
        return;
    };
    if log::set_boxed_logger(Box::new(logger)).is_ok() {
        let level = std::env::var("RUST_LOG")
            .ok()
            .and_then(|l| l.parse().ok())
            .unwrap_or(if debug {
                log::LevelFilter::Debug
            } else {
                log::LevelFilter::Info
            });
        log::set_max_level(level);
    }
}

impl containerd_shim::Shim for Shim {
    type T = Service;

    fn new(_runtime_id: &str, args: &Flags, _config: &mut Config) -> Self {
        if args.action.is_empty() {
            init_logging(args.debug);
        }
        let bundle = if args.bundle.is_empty() {
            std::env::current_dir().unwrap_or_default()
        } else {
            PathBuf::from(&args.bundle)
        };
        Shim {
            namespace: args.namespace.clone(),
            id: args.id.clone(),
            bundle,
            socket: args.socket.clone(),
            exit: Arc::new(ExitSignal::default()),
        }
    }

    fn start_shim(&mut self, opts: StartOpts) -> containerd_shim::Result<String> {
        let group = group_of(&self.bundle, &opts.id);
        let address = socket_address(&opts.address, &opts.namespace, &group);
        if serving(&address) {
            write_address(&address)?;
            return Ok(address);
        }
        // A socket left by a shim that was killed: without this the new shim first waits
        // about a second for the dead one to answer.
        let _ = std::fs::remove_file(socket_path(&address));
        let (_, address) = spawn(opts, &group, Vec::new())?;
        write_address(&address)?;
        Ok(address)
    }

    fn delete_shim(&mut self) -> containerd_shim::Result<DeleteResponse> {
        let options = RuntimeOptions::load(&self.bundle, &self.namespace)?;
        let runtime = Runtime::new(options, &self.bundle)?;
        let pid = std::fs::read_to_string(self.bundle.join("init.pid"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        if let Err(e) = runtime.delete(&self.id, true) {
            if !is_gone(&e) {
                tracing::warn!(id = %self.id, error = %e, "deleting the container of a dead shim");
            }
        }
        unmount_rootfs(&self.bundle);
        if let Ok(address) = std::fs::read_to_string(self.bundle.join("address")) {
            if !serving(address.trim()) {
                let _ = std::fs::remove_file(socket_path(address.trim()));
            }
        }
        Ok(DeleteResponse {
            pid,
            exit_status: 128 + libc::SIGKILL as u32,
            exited_at: Some(timestamp(SystemTime::now())).into(),
            ..Default::default()
        })
    }

    fn wait(&mut self) {
        self.exit.wait();
        // The crate removes the socket only when it finds an `address` file in its working
        // directory, which containerd may already have removed with the bundle.
        let _ = std::fs::remove_file(socket_path(&self.socket));
    }

    fn create_task_service(&self, publisher: RemotePublisher) -> Service {
        // The crate's publisher cannot reconnect after a containerd restart; ours can.
        drop(publisher);
        let address = std::env::var("TTRPC_ADDRESS").unwrap_or_default();
        match Service::new(&self.namespace, &address, Arc::clone(&self.exit)) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "starting the task service");
                std::process::exit(1);
            }
        }
    }
}
