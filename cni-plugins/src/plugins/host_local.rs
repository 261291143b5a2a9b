//! host-local: addresses from local range sets, one reservation file per address.

use std::net::IpAddr;

use crate::cni::skel::{CmdArgs, Plugin};
use crate::cni::{CniResult, Code, Error, Result};
use crate::ipam::config::parse_resolv_conf;
use crate::ipam::store::{probe_writable, Entry};
use crate::ipam::{Allocator, IpamConfig, Store};

pub struct HostLocal;

impl Plugin for HostLocal {
    fn add(&self, args: &CmdArgs) -> Result<CniResult> {
        let conf = IpamConfig::load(args)?;
        let store = Store::open(&conf.network_dir())?;
        let existing = store.find(&args.container_id, &args.ifname)?;
        let before: Vec<Option<IpAddr>> = existing.iter().map(|e| e.ip).collect();
        let outcome = allocate(&conf, &store, &existing, args);
        if outcome.is_err() {
            // Undo only what this ADD reserved.
            for e in store.find(&args.container_id, &args.ifname)? {
                if !before.contains(&e.ip) {
                    let _ = store.remove(&e);
                }
            }
        }
        outcome
    }

    fn del(&self, args: &CmdArgs) -> Result<()> {
        let conf = IpamConfig::load(args)?;
        let store = Store::open(&conf.network_dir())?;
        store.release(&args.container_id, &args.ifname)?;
        Ok(())
    }

    fn check(&self, args: &CmdArgs) -> Result<()> {
        let conf = IpamConfig::load(args)?;
        let store = Store::open(&conf.network_dir())?;
        if store.find(&args.container_id, &args.ifname)?.is_empty() {
            return Err(Error::new(
                Code::UnknownContainer,
                format!(
                    "host-local: Failed to find address added by container {}",
                    args.container_id
                ),
            ));
        }
        Ok(())
    }

    fn status(&self, args: &CmdArgs) -> Result<()> {
        let conf = IpamConfig::load(args)?;
        probe_writable(&conf.network_dir())
    }

    fn gc(&self, args: &CmdArgs) -> Result<()> {
        let conf = IpamConfig::load(args)?;
        let store = Store::open(&conf.network_dir())?;
        store.gc(&super::valid_attachments(args))?;
        Ok(())
    }
}

fn allocate(
    conf: &IpamConfig,
    store: &Store,
    existing: &[Entry],
    args: &CmdArgs,
) -> Result<CniResult> {
    let mut requested = conf.requested.clone();
    let mut result = CniResult::default();
    for (index, set) in conf.range_sets.iter().enumerate() {
        let want = requested
            .iter()
            .position(|ip| set.iter().any(|r| r.contains(*ip)))
            .map(|i| requested.remove(i));
        let alloc = Allocator {
            set,
            index,
            store,
            existing,
        };
        let ip = alloc
            .get(&args.container_id, &args.ifname, want)
            .map_err(|e| e.context(format!("failed to allocate for range {index}")))?;
        result.ips.push(ip);
    }
    if !requested.is_empty() {
        let list: Vec<String> = requested.iter().map(|i| i.to_string()).collect();
        return Err(Error::config(format!(
            "failed to allocate all requested IPs: {}",
            list.join(", ")
        )));
    }
    result.routes = conf.routes.clone();
    if let Some(path) = &conf.resolv_conf {
        result.dns = parse_resolv_conf(path)?;
    }
    Ok(result)
}
