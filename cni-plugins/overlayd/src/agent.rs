//! The agent: lease our subnet, publish it in subnet.env, then loop — poll the peers'
//! leases, renew ours, and reconcile the backend whenever the peers change and every few
//! seconds anyway (so hand-deleted devices, routes and entries come back).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

use ipnetwork::Ipv4Network;
use nestbox_cni::plugins::overlay::subnet_env::SubnetEnv;

use crate::backend::{peers_of, Backend};
use crate::config::{Lease, LeaseAttrs, NetworkConfig};
use crate::iface::Underlay;
use crate::masq::{self, MasqBackend};
use crate::subnet::SubnetManager;
use crate::takeover;
use crate::Error;

pub struct Options {
    pub subnet_file: PathBuf,
    pub ip_masq: bool,
    pub masq_backend: MasqBackend,
    /// How often the peers' leases are read without a watch (5 s at least with one).
    pub poll_interval: Duration,
    /// Full reconcile at least this often.
    pub reconcile_interval: Duration,
    /// How often our lease is renewed.
    pub renew_interval: Duration,
}

pub struct Agent {
    pub sm: Box<dyn SubnetManager>,
    pub backend: Box<dyn Backend>,
    pub underlay: Underlay,
    pub opts: Options,
}

fn sleep_unless(stop: &AtomicBool, d: Duration) {
    let until = Instant::now() + d;
    while !stop.load(Ordering::Relaxed) && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(50).min(until - Instant::now()));
    }
}

impl Agent {
    /// Retry `f` until it succeeds or we are told to stop.
    fn retry<T>(
        &mut self,
        stop: &AtomicBool,
        what: &str,
        mut f: impl FnMut(&mut Self) -> Result<T, Error>,
    ) -> Option<T> {
        let mut logged = false;
        while !stop.load(Ordering::Relaxed) {
            match f(self) {
                Ok(v) => return Some(v),
                Err(e) => {
                    if !logged {
                        tracing::warn!(error = %e, "{what} failed; retrying");
                        logged = true;
                    }
                    sleep_unless(stop, Duration::from_secs(1));
                }
            }
        }
        None
    }

    fn acquire(
        &mut self,
        config: &NetworkConfig,
        prefer: Option<Ipv4Network>,
        stop: &AtomicBool,
    ) -> Option<Lease> {
        let public_ip = self.underlay.public_ip;
        let kind = self.backend.kind();
        self.retry(stop, "leasing a subnet", |a| {
            let leases = a.sm.leases()?;
            let previous = leases
                .iter()
                .find(|l| l.attrs.public_ip == public_ip && l.attrs.backend_type == kind)
                .cloned();
            let attrs = LeaseAttrs {
                public_ip,
                public_ipv6: None,
                backend_type: kind.to_string(),
                backend_data: a.backend.backend_data(previous.as_ref())?,
            };
            a.sm.acquire(config, &attrs, previous.as_ref(), prefer)
        })
    }

    fn publish_env(&self, config: &NetworkConfig, own: &Lease) -> Result<(), Error> {
        let env = SubnetEnv::new(
            config.network,
            own.subnet,
            self.backend.mtu(),
            self.opts.ip_masq,
        );
        if SubnetEnv::read(&self.opts.subnet_file).ok().flatten() != Some(env.clone()) {
            env.write(&self.opts.subnet_file)?;
            tracing::info!(path = %self.opts.subnet_file.display(), subnet = %env.subnet,
                mtu = env.mtu, "subnet.env written");
        }
        Ok(())
    }

    /// Run until `stop` is set. Kernel state is left in place on return.
    pub fn run(&mut self, stop: &AtomicBool) -> Result<(), Error> {
        // Before anything is touched: what flannel left here, if it ran on this node.
        let mut flannel = Some(takeover::detect(&self.backend.device().unwrap_or_default()))
            .filter(|f| f.flannel_ran());
        if let Some(f) = &flannel {
            tracing::info!(device = ?f.device, "flannel's state found; taking it over in place");
        }
        if !self.opts.ip_masq {
            // Our own rules from a run with --ip-masq would still masquerade.
            for b in [MasqBackend::Nftables, MasqBackend::Iptables] {
                if masq::remove(b) {
                    tracing::info!(backend = ?b, "masquerade rules of an earlier --ip-masq run removed");
                }
            }
        }
        let Some(config) = self.retry(stop, "reading the network config", |a| {
            a.sm.network_config()
        }) else {
            return Ok(());
        };
        tracing::info!(network = %config.network, subnet_len = config.subnet_len,
            backend = self.backend.kind(), "network config");
        let prefer = SubnetEnv::read(&self.opts.subnet_file)
            .ok()
            .flatten()
            .map(|e| e.lease())
            .filter(|l| config.network.contains(l.network()));
        let Some(mut own) = self.acquire(&config, prefer, stop) else {
            return Ok(());
        };
        let masq_backend = self.opts.masq_backend;
        let (tx, changed) = std::sync::mpsc::channel();
        // With a watch, the periodic re-read is only a safety net.
        let poll_interval = match self.sm.watch(tx) {
            Ok(()) => self.opts.poll_interval.max(Duration::from_secs(5)),
            Err(e) => {
                tracing::warn!(error = %e, "watching leases failed; polling only");
                self.opts.poll_interval
            }
        };

        let mut peers: Vec<Lease> = Vec::new();
        let mut dirty = true;
        let mut next_poll = Instant::now();
        let mut next_reconcile = Instant::now();
        let mut next_renew = Instant::now() + self.opts.renew_interval;
        let mut env_written = false;
        let mut other_masq_removed = false;
        while !stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            if now >= next_renew {
                next_renew = now + self.opts.renew_interval;
                match self.sm.renew(&own) {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::warn!(subnet = %own.subnet, "our lease expired; leasing again");
                        match self.acquire(&config, Some(own.subnet), stop) {
                            Some(l) => own = l,
                            None => break,
                        }
                        env_written = false;
                        dirty = true;
                    }
                    Err(e) => tracing::warn!(error = %e, "renewing our lease failed"),
                }
            }
            if now >= next_poll {
                next_poll = now + poll_interval;
                match self.sm.leases() {
                    Ok(all) => {
                        let ours = all.iter().any(|l| {
                            l.subnet == own.subnet && l.attrs.public_ip == own.attrs.public_ip
                        });
                        if !ours {
                            tracing::warn!(subnet = %own.subnet, "our lease is gone from the store; leasing again");
                            match self.acquire(&config, Some(own.subnet), stop) {
                                Some(l) => own = l,
                                None => break,
                            }
                            env_written = false;
                            dirty = true;
                            continue;
                        }
                        let mut now_peers: Vec<Lease> = peers_of(&own, &all).cloned().collect();
                        now_peers.sort_by_key(|l| l.subnet);
                        let key = |v: &[Lease]| {
                            v.iter()
                                .map(|l| (l.subnet, l.attrs.clone()))
                                .collect::<Vec<_>>()
                        };
                        if key(&now_peers) != key(&peers) {
                            tracing::info!(peers = now_peers.len(), "peer leases changed");
                            peers = now_peers;
                            dirty = true;
                        }
                    }
                    // Keep programming the last known peers while the store is away.
                    Err(e) => tracing::warn!(error = %e, "reading leases failed"),
                }
            }
            if dirty || now >= next_reconcile {
                let reconciled = match self.backend.reconcile(config.network, &own, &peers) {
                    Ok(n) => {
                        if n > 0 {
                            tracing::info!(changes = n, "reconciled");
                        }
                        true
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "reconcile failed");
                        false
                    }
                };
                if !env_written {
                    match self.publish_env(&config, &own) {
                        Ok(()) => env_written = true,
                        Err(e) => tracing::error!(error = %e, "writing subnet.env failed"),
                    }
                }
                let mut masq_ok = !self.opts.ip_masq;
                if self.opts.ip_masq {
                    match masq::ensure(masq_backend, config.network, own.subnet) {
                        Ok(changed) => {
                            if changed {
                                tracing::info!(backend = ?masq_backend, "masquerade rules installed");
                            }
                            masq_ok = true;
                        }
                        Err(e) => tracing::error!(error = %e, "masquerade rules"),
                    }
                    // Ours are in place: now the other backend's (a switch of
                    // --ip-masq-backend) can go without a moment unmasqueraded.
                    if masq_ok && !other_masq_removed {
                        other_masq_removed = true;
                        if masq::remove(masq_backend.other()) {
                            tracing::info!(removed = ?masq_backend.other(), kept = ?masq_backend,
                                "masquerade backend switched: the other backend's rules removed");
                        }
                    }
                }
                if reconciled && masq_ok {
                    if let Some(f) = flannel.take() {
                        f.finish(
                            &self.backend.device().unwrap_or_default(),
                            &own,
                            self.opts.ip_masq,
                            masq_backend,
                        );
                    }
                }
                dirty = false;
                next_reconcile = Instant::now() + self.opts.reconcile_interval;
            }
            // Sleep until the next deadline, a lease change, or (every 100 ms) a stop check.
            let wake = next_poll.min(next_reconcile).min(next_renew);
            let nap = wake
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(100));
            match changed.recv_timeout(nap) {
                Ok(()) => {
                    while changed.try_recv().is_ok() {}
                    next_poll = Instant::now();
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => sleep_unless(stop, nap),
            }
        }
        tracing::info!("stopping; kernel state left in place");
        Ok(())
    }
}
