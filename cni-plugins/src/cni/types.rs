//! Results in the 1.1.0 shape internally, parsed from and printed as any version
//! 0.1.0–1.1.0 (`version` per IP for 0.3.x/0.4.0, `ip4`/`ip6` for 0.1.0/0.2.0, the
//! 1.1-only fields dropped below 1.1.0).

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::{version, Code, Error, Result};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sandbox: String,
    #[serde(
        default,
        rename = "socketPath",
        skip_serializing_if = "String::is_empty"
    )]
    pub socket_path: String,
    #[serde(default, rename = "pciID", skip_serializing_if = "String::is_empty")]
    pub pci_id: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IpConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
    pub address: IpNetwork,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Route {
    pub dst: IpNetwork,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, rename = "advmss", skip_serializing_if = "Option::is_none")]
    pub adv_mss: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<u8>,
}

impl Route {
    pub fn new(dst: IpNetwork, gw: Option<IpAddr>) -> Self {
        Route {
            dst,
            gw,
            mtu: None,
            adv_mss: None,
            priority: None,
            table: None,
            scope: None,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Dns {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub domain: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl Dns {
    pub fn is_set(&self) -> bool {
        !self.nameservers.is_empty()
            || !self.domain.is_empty()
            || !self.search.is_empty()
            || !self.options.is_empty()
    }
}

/// A result in the 1.1.0 shape.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CniResult {
    pub interfaces: Vec<Interface>,
    pub ips: Vec<IpConfig>,
    pub routes: Vec<Route>,
    pub dns: Dns,
}

#[derive(Deserialize)]
struct AnyIp {
    #[serde(default)]
    interface: Option<usize>,
    address: IpNetwork,
    #[serde(default)]
    gateway: Option<IpAddr>,
}

#[derive(Deserialize)]
struct LegacyIp {
    ip: IpNetwork,
    #[serde(default)]
    gateway: Option<IpAddr>,
    #[serde(default)]
    routes: Vec<Route>,
}

fn decode<T: serde::de::DeserializeOwned>(v: Value, what: &str) -> Result<T> {
    serde_json::from_value(v)
        .map_err(|e| Error::new(Code::Decode, format!("failed to decode {what}: {e}")))
}

impl CniResult {
    /// Parse a result of any supported version (its own `cniVersion` decides the shape).
    pub fn parse(v: &Value) -> Result<CniResult> {
        let obj = v
            .as_object()
            .ok_or_else(|| Error::new(Code::Decode, "result is not an object"))?;
        let mut r = CniResult::default();
        if let Some(d) = obj.get("dns") {
            if !d.is_null() {
                r.dns = decode(d.clone(), "dns")?;
            }
        }
        if obj.contains_key("ip4") || obj.contains_key("ip6") {
            for key in ["ip4", "ip6"] {
                if let Some(ip) = obj.get(key).filter(|v| !v.is_null()) {
                    let l: LegacyIp = decode(ip.clone(), key)?;
                    r.ips.push(IpConfig {
                        interface: None,
                        address: l.ip,
                        gateway: l.gateway,
                    });
                    r.routes.extend(l.routes);
                }
            }
            return Ok(r);
        }
        if let Some(i) = obj.get("interfaces").filter(|v| !v.is_null()) {
            r.interfaces = decode(i.clone(), "interfaces")?;
        }
        if let Some(i) = obj.get("ips").filter(|v| !v.is_null()) {
            let ips: Vec<AnyIp> = decode(i.clone(), "ips")?;
            r.ips = ips
                .into_iter()
                .map(|i| IpConfig {
                    interface: i.interface,
                    address: i.address,
                    gateway: i.gateway,
                })
                .collect();
        }
        if let Some(i) = obj.get("routes").filter(|v| !v.is_null()) {
            r.routes = decode(i.clone(), "routes")?;
        }
        Ok(r)
    }

    /// The result as JSON in the wire format of `ver`.
    pub fn to_value(&self, ver: &str) -> Result<Value> {
        let ver = version::of_config(ver);
        if !version::is_supported(ver) {
            return Err(Error::new(
                Code::IncompatibleVersion,
                format!("unsupported CNI result version {ver:?}"),
            ));
        }
        let mut out = Map::new();
        out.insert("cniVersion".into(), json!(ver));
        if !version::at_least(ver, "0.3.0") {
            for (key, v4) in [("ip4", true), ("ip6", false)] {
                if let Some(ip) = self.ips.iter().find(|i| i.address.is_ipv4() == v4) {
                    let routes: Vec<Value> = self
                        .routes
                        .iter()
                        .filter(|r| r.dst.is_ipv4() == v4)
                        .map(|r| route_value(r, false))
                        .collect();
                    let mut o = Map::new();
                    o.insert("ip".into(), json!(ip.address.to_string()));
                    if let Some(gw) = ip.gateway {
                        o.insert("gateway".into(), json!(gw.to_string()));
                    }
                    if !routes.is_empty() {
                        o.insert("routes".into(), Value::Array(routes));
                    }
                    out.insert(key.into(), Value::Object(o));
                }
            }
            out.insert(
                "dns".into(),
                serde_json::to_value(&self.dns).unwrap_or_default(),
            );
            return Ok(Value::Object(out));
        }
        let v11 = version::at_least(ver, "1.1.0");
        let with_ip_version = !version::at_least(ver, "1.0.0");
        if !self.interfaces.is_empty() {
            let ifs: Vec<Value> = self
                .interfaces
                .iter()
                .map(|i| {
                    let mut i = i.clone();
                    if !v11 {
                        i.mtu = None;
                        i.socket_path.clear();
                        i.pci_id.clear();
                    }
                    serde_json::to_value(i).unwrap_or_default()
                })
                .collect();
            out.insert("interfaces".into(), Value::Array(ifs));
        }
        if !self.ips.is_empty() {
            let ips: Vec<Value> = self
                .ips
                .iter()
                .map(|i| {
                    let mut o = Map::new();
                    if with_ip_version {
                        o.insert(
                            "version".into(),
                            json!(if i.address.is_ipv4() { "4" } else { "6" }),
                        );
                    }
                    if let Some(idx) = i.interface {
                        o.insert("interface".into(), json!(idx));
                    }
                    o.insert("address".into(), json!(i.address.to_string()));
                    if let Some(gw) = i.gateway {
                        o.insert("gateway".into(), json!(gw.to_string()));
                    }
                    Value::Object(o)
                })
                .collect();
            out.insert("ips".into(), Value::Array(ips));
        }
        if !self.routes.is_empty() {
            let routes = self.routes.iter().map(|r| route_value(r, v11)).collect();
            out.insert("routes".into(), Value::Array(routes));
        }
        out.insert(
            "dns".into(),
            serde_json::to_value(&self.dns).unwrap_or_default(),
        );
        Ok(Value::Object(out))
    }
}

fn route_value(r: &Route, v11: bool) -> Value {
    let mut r = r.clone();
    if !v11 {
        r.mtu = None;
        r.adv_mss = None;
        r.priority = None;
        r.table = None;
        r.scope = None;
    }
    serde_json::to_value(r).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CniResult {
        CniResult {
            interfaces: vec![Interface {
                name: "eth0".into(),
                mac: "aa:bb:cc:dd:ee:ff".into(),
                mtu: Some(1500),
                sandbox: "/run/netns/x".into(),
                ..Default::default()
            }],
            ips: vec![IpConfig {
                interface: Some(0),
                address: "10.1.0.2/24".parse().unwrap(),
                gateway: Some("10.1.0.1".parse().unwrap()),
            }],
            routes: vec![Route::new("0.0.0.0/0".parse().unwrap(), None)],
            dns: Dns::default(),
        }
    }

    #[test]
    fn result_round_trips_through_every_version() {
        for v in version::SUPPORTED {
            let json = sample().to_value(v).unwrap();
            let back = CniResult::parse(&json).unwrap();
            assert_eq!(back.ips[0].address, sample().ips[0].address, "{v}");
            assert_eq!(back.routes.len(), 1, "{v}");
        }
    }

    #[test]
    fn old_versions_carry_ip_version_and_drop_new_fields() {
        let v = sample().to_value("0.4.0").unwrap();
        assert_eq!(v["ips"][0]["version"], "4");
        assert!(v["interfaces"][0].get("mtu").is_none());
        let v = sample().to_value("1.1.0").unwrap();
        assert!(v["ips"][0].get("version").is_none());
        assert_eq!(v["interfaces"][0]["mtu"], 1500);
        let v = sample().to_value("0.2.0").unwrap();
        assert_eq!(v["ip4"]["ip"], "10.1.0.2/24");
    }
}
