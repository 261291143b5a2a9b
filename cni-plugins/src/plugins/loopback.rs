//! loopback: `lo` up in the pod's netns (whatever CNI_IFNAME says).

use std::io;

use crate::cni::skel::{CmdArgs, Plugin};
use crate::cni::{CniResult, Code, Error, Interface, IpConfig, Result};
use crate::net::netns::NetNs;

pub struct Loopback;

fn open(args: &CmdArgs) -> Result<NetNs> {
    NetNs::open(&args.netns).map_err(|e| {
        Error::new(
            Code::InvalidNetns,
            format!("failed to open netns {:?}: {e}", args.netns),
        )
    })
}

fn nl_err(e: io::Error) -> Error {
    Error::internal(format!("netlink: {e}"))
}

impl Plugin for Loopback {
    fn add(&self, args: &CmdArgs) -> Result<CniResult> {
        let ns = open(args)?;
        let mut nl = ns.netlink().map_err(nl_err)?;
        let lo = nl
            .link_by_name("lo")
            .map_err(nl_err)?
            .ok_or_else(|| Error::internal("no lo in the netns"))?;
        nl.set_up(lo.index, true).map_err(nl_err)?;
        if let Some(prev) = args.prev_result()? {
            return Ok(prev);
        }
        let mut addrs = nl.addrs(lo.index).map_err(nl_err)?;
        addrs.sort_by_key(|a| a.is_ipv6());
        Ok(CniResult {
            interfaces: vec![Interface {
                name: "lo".into(),
                mac: "00:00:00:00:00:00".into(),
                sandbox: args.netns.clone(),
                ..Default::default()
            }],
            ips: addrs
                .into_iter()
                .map(|a| IpConfig {
                    interface: Some(0),
                    address: a,
                    gateway: None,
                })
                .collect(),
            ..Default::default()
        })
    }

    fn del(&self, args: &CmdArgs) -> Result<()> {
        if args.netns.is_empty() {
            return Ok(());
        }
        let ns = match NetNs::open(&args.netns) {
            Ok(ns) => ns,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => {
                return Err(Error::new(
                    Code::InvalidNetns,
                    format!("failed to open netns: {e}"),
                ))
            }
        };
        let mut nl = ns.netlink().map_err(nl_err)?;
        if let Some(lo) = nl.link_by_name("lo").map_err(nl_err)? {
            nl.set_up(lo.index, false).map_err(nl_err)?;
        }
        Ok(())
    }

    fn check(&self, args: &CmdArgs) -> Result<()> {
        let ns = open(args)?;
        let mut nl = ns.netlink().map_err(nl_err)?;
        match nl.link_by_name("lo").map_err(nl_err)? {
            Some(lo) if lo.up => Ok(()),
            _ => Err(Error::internal("loopback interface is down")),
        }
    }

    fn status(&self, _args: &CmdArgs) -> Result<()> {
        Ok(())
    }

    fn gc(&self, _args: &CmdArgs) -> Result<()> {
        Ok(())
    }
}
