//! A container the shim serves: its bundle, its runtime, the rootfs it mounted, its init
//! process and the exec processes added to it. Each process carries the small state machine
//! containerd observes (created → running ⇄ paused → stopped) and the exit others wait for.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use containerd_shim::protos::api::Status;
use nestbox_cgroups::Cgroup;

use crate::io::{ProcessIo, Stdio};
use crate::runtime::Runtime;

pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[derive(Debug, Clone, Copy)]
pub struct Exited {
    pub status: u32,
    pub at: SystemTime,
}

#[derive(Debug)]
pub struct ProcessState {
    pub pid: u32,
    pub status: Status,
    pub exited: Option<Exited>,
    /// A Start call is running the runtime: the exit event waits until the start event is
    /// out (containerd wants exit after start, always).
    pub starting: bool,
    pub exit_published: bool,
}

pub struct Process {
    /// None for the init process.
    pub exec_id: Option<String>,
    pub stdio: Stdio,
    /// The exec's process spec (runtime-spec Process); None for init.
    pub spec: Option<oci_spec::runtime::Process>,
    state: Mutex<ProcessState>,
    exited: Condvar,
    pub io: Mutex<Option<Arc<ProcessIo>>>,
}

impl Process {
    pub fn new(
        exec_id: Option<String>,
        stdio: Stdio,
        spec: Option<oci_spec::runtime::Process>,
    ) -> Process {
        Process {
            exec_id,
            stdio,
            spec,
            state: Mutex::new(ProcessState {
                pid: 0,
                status: Status::CREATED,
                exited: None,
                starting: false,
                exit_published: false,
            }),
            exited: Condvar::new(),
            io: Mutex::new(None),
        }
    }

    pub fn state(&self) -> MutexGuard<'_, ProcessState> {
        lock(&self.state)
    }

    /// Record the exit (once) and wake the waiters.
    pub fn set_exited(&self, st: &mut ProcessState, code: i32) {
        if st.exited.is_none() {
            st.exited = Some(Exited {
                status: code as u32,
                at: SystemTime::now(),
            });
        }
        st.status = Status::STOPPED;
        self.exited.notify_all();
    }

    /// Block until the process exited.
    pub fn wait(&self) -> Exited {
        let mut st = self.state();
        loop {
            if let Some(e) = st.exited {
                return e;
            }
            st = self.exited.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Wait at most `timeout` for the exit.
    pub fn wait_for(&self, timeout: Duration) -> Option<Exited> {
        let st = self.state();
        let (st, _) = self
            .exited
            .wait_timeout_while(st, timeout, |s| s.exited.is_none())
            .unwrap_or_else(|p| p.into_inner());
        st.exited
    }

    pub fn io(&self) -> Option<Arc<ProcessIo>> {
        lock(&self.io).clone()
    }
}

pub struct Container {
    pub id: String,
    pub bundle: PathBuf,
    pub runtime: Runtime,
    /// The shim mounted the request's rootfs at `<bundle>/rootfs` and unmounts it at delete.
    pub mounted_rootfs: bool,
    /// Without a PID namespace of its own, processes may outlive init: kill them when it exits.
    pub kill_all_on_exit: bool,
    pub cgroup: Option<Cgroup>,
    /// OOM kills already reported (starting from the count at create).
    pub oom_reported: AtomicU64,
    pub init: Arc<Process>,
    pub execs: Mutex<HashMap<String, Arc<Process>>>,
}

impl Container {
    /// The init process (empty exec id) or an exec.
    pub fn process(&self, exec_id: &str) -> Option<Arc<Process>> {
        if exec_id.is_empty() {
            Some(Arc::clone(&self.init))
        } else {
            lock(&self.execs).get(exec_id).cloned()
        }
    }

    /// The OOM kills counted since the last call, if the count went up.
    pub fn new_oom_kills(&self) -> bool {
        let Some(count) = self.cgroup.as_ref().and_then(|c| c.oom_kill_count().ok()) else {
            return false;
        };
        self.oom_reported.fetch_max(count, Ordering::SeqCst) < count
    }
}
