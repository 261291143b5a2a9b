//! Which process an exit belongs to. The shim is the subreaper of its containers: the
//! crate's SIGCHLD thread reaps every child and hands (pid, code) to its monitor. This module
//! subscribes once, before anything is spawned, and routes each exit to the process watching
//! that pid. An exit that arrives before its process is known (a process that died before
//! the runtime returned its pid) is kept for a while, so nothing waits forever.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use containerd_shim::monitor::{monitor_subscribe, Subject, Topic};

/// How long an exit nobody watches is kept, and how many at most.
const UNCLAIMED_FOR: Duration = Duration::from_secs(60);
const UNCLAIMED_MAX: usize = 1024;

pub struct Exits<W> {
    inner: Mutex<Inner<W>>,
}

struct Inner<W> {
    watched: HashMap<i32, W>,
    unclaimed: VecDeque<(i32, i32, Instant)>,
}

impl<W: Clone + Send + 'static> Exits<W> {
    /// Subscribe to the reaper and start routing: `on_exit(watcher, code)` runs on the
    /// routing thread for every watched pid that exits.
    pub fn start(on_exit: impl Fn(W, i32) + Send + 'static) -> std::io::Result<Arc<Exits<W>>> {
        let sub = monitor_subscribe(Topic::All)
            .map_err(|e| std::io::Error::other(format!("subscribing to exits: {e}")))?;
        let exits = Arc::new(Exits {
            inner: Mutex::new(Inner {
                watched: HashMap::new(),
                unclaimed: VecDeque::new(),
            }),
        });
        let me = Arc::clone(&exits);
        std::thread::Builder::new()
            .name("exits".to_owned())
            .stack_size(256 * 1024)
            .spawn(move || {
                while let Ok(e) = sub.rx.recv() {
                    let Subject::Pid(pid) = e.subject else {
                        continue;
                    };
                    if let Some(w) = me.route(pid, e.exit_code) {
                        on_exit(w, e.exit_code);
                    }
                }
            })?;
        Ok(exits)
    }

    fn route(&self, pid: i32, code: i32) -> Option<W> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(w) = inner.watched.remove(&pid) {
            return Some(w);
        }
        let now = Instant::now();
        while inner
            .unclaimed
            .front()
            .is_some_and(|(_, _, t)| now.duration_since(*t) > UNCLAIMED_FOR)
            || inner.unclaimed.len() >= UNCLAIMED_MAX
        {
            inner.unclaimed.pop_front();
        }
        inner.unclaimed.push_back((pid, code, now));
        None
    }

    /// Watch `pid`; its exit code when it has already exited (then it is not watched).
    pub fn watch(&self, pid: i32, w: W) -> Option<i32> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = inner.unclaimed.iter().position(|(p, _, _)| *p == pid) {
            return inner.unclaimed.remove(i).map(|(_, code, _)| code);
        }
        inner.watched.insert(pid, w);
        None
    }

    pub fn unwatch(&self, pid: i32) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.watched.remove(&pid);
    }
}
