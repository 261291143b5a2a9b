//! Choosing the underlay interface and the public IP (`--iface`, `--iface-regex`,
//! `--public-ip`, else the default route's interface), and saying why.

use std::net::{IpAddr, Ipv4Addr};

use nestbox_cni::net::netlink::{Link, Netlink};

use crate::Error;

#[derive(Debug, Clone)]
pub struct Underlay {
    pub index: u32,
    pub name: String,
    pub mtu: u32,
    /// The interface's own IPv4 address.
    pub ip: Ipv4Addr,
    /// The address peers reach us at (`--public-ip`, else `ip`).
    pub public_ip: Ipv4Addr,
    pub reason: String,
}

#[derive(Debug, Default, Clone)]
pub struct Choice {
    pub iface: Vec<String>,
    pub iface_regex: Vec<String>,
    pub public_ip: Option<Ipv4Addr>,
}

fn v4_addrs(nl: &mut Netlink, l: &Link) -> Result<Vec<Ipv4Addr>, Error> {
    let addrs = nl
        .addrs(l.index)
        .map_err(|e| Error::Interface(format!("reading addresses of {}: {e}", l.name)))?;
    Ok(addrs
        .into_iter()
        .filter_map(|a| match a.ip() {
            IpAddr::V4(v) if !v.is_loopback() && !v.is_link_local() => Some(v),
            _ => None,
        })
        .collect())
}

/// Pick the underlay as flannel does; the error says what was tried.
pub fn choose(c: &Choice) -> Result<Underlay, Error> {
    let mut nl = Netlink::new().map_err(|e| Error::Interface(format!("netlink: {e}")))?;
    let links = nl
        .links()
        .map_err(|e| Error::Interface(format!("listing links: {e}")))?;
    let finish = |nl: &mut Netlink, l: &Link, ip: Option<Ipv4Addr>, reason: String| {
        let ip = match ip {
            Some(ip) => ip,
            None => *v4_addrs(nl, l)?.first().ok_or_else(|| {
                Error::Interface(format!("{} ({reason}) has no IPv4 address", l.name))
            })?,
        };
        Ok(Underlay {
            index: l.index,
            name: l.name.clone(),
            mtu: l.mtu,
            ip,
            public_ip: c.public_ip.unwrap_or(ip),
            reason,
        })
    };

    for want in &c.iface {
        // An IP address or an interface name.
        if let Ok(ip) = want.parse::<Ipv4Addr>() {
            for l in &links {
                if v4_addrs(&mut nl, l)?.contains(&ip) {
                    return finish(&mut nl, l, Some(ip), format!("--iface {want} (address)"));
                }
            }
        } else if let Some(l) = links.iter().find(|l| &l.name == want) {
            return finish(&mut nl, l, None, format!("--iface {want}"));
        }
    }
    if !c.iface.is_empty() {
        return Err(Error::Interface(format!(
            "none of --iface {:?} exists here",
            c.iface
        )));
    }
    for re in &c.iface_regex {
        let rx = regex::Regex::new(re)
            .map_err(|e| Error::Interface(format!("bad --iface-regex {re:?}: {e}")))?;
        for l in &links {
            if l.name == "lo" {
                continue;
            }
            if rx.is_match(&l.name) {
                return finish(
                    &mut nl,
                    l,
                    None,
                    format!("--iface-regex {re:?} matched the name"),
                );
            }
            for ip in v4_addrs(&mut nl, l)? {
                if rx.is_match(&ip.to_string()) {
                    return finish(
                        &mut nl,
                        l,
                        Some(ip),
                        format!("--iface-regex {re:?} matched {ip}"),
                    );
                }
            }
        }
    }
    if !c.iface_regex.is_empty() {
        return Err(Error::Interface(format!(
            "no interface name or address matches --iface-regex {:?}",
            c.iface_regex
        )));
    }
    if let Some(pip) = c.public_ip {
        for l in &links {
            if v4_addrs(&mut nl, l)?.contains(&pip) {
                return finish(&mut nl, l, Some(pip), format!("holds --public-ip {pip}"));
            }
        }
    }
    let routes = nl
        .routes()
        .map_err(|e| Error::Interface(format!("reading routes: {e}")))?;
    let default = routes
        .iter()
        .find(|r| r.dst.prefix() == 0 && r.dst.is_ipv4())
        .and_then(|r| r.oif)
        .and_then(|i| links.iter().find(|l| l.index == i));
    match default {
        Some(l) => finish(&mut nl, l, None, "default route's interface".into()),
        None => Err(Error::Interface(
            "no default route and no --iface/--iface-regex/--public-ip given".into(),
        )),
    }
}
