//! The nftables ruleset (`nft -j list ruleset`; iptables-nft rules are in it too) read
//! against one pod's traffic: which rules on the forwarding path would drop or reject
//! it, whether a forward chain's drop policy catches it, and whether something
//! masquerades it. A rule is judged by its matches: all of them hold for the pod's
//! traffic (`Full`), one cannot hold (`None`), or some depend on things not known here
//! such as ports or conntrack state (`Partial`).

use std::net::{IpAddr, Ipv4Addr};

use ipnetwork::{IpNetwork, Ipv4Network};
use serde_json::Value;

/// The pod's traffic as the node sees it.
#[derive(Debug, Clone)]
pub struct Traffic {
    pub pod_ip: Ipv4Addr,
    /// Where the other end of pod traffic lives (the cluster network, else the pod
    /// subnet): a rule matching only addresses outside these is not about pods.
    pub peers: Vec<Ipv4Network>,
    /// Interfaces on the pod's path in the node (host veth, bridge, overlay, underlay).
    pub ifaces: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Applies {
    None,
    Partial,
    Full,
}

#[derive(Debug, Clone)]
pub struct Rule {
    pub family: String,
    pub table: String,
    pub chain: String,
    pub handle: u64,
    pub text: String,
    pub verdict: String,
    pub applies: Applies,
    /// The hook of the base chain it is reached from.
    pub hook: String,
}

impl Rule {
    pub fn name(&self) -> String {
        format!(
            "{} {} {} handle {}: {}",
            self.family, self.table, self.chain, self.handle, self.text
        )
    }
    pub fn command(&self) -> String {
        format!(
            "nft -a list chain {} {} {}",
            self.family, self.table, self.chain
        )
    }
}

#[derive(Debug, Clone)]
pub struct BaseChain {
    pub family: String,
    pub table: String,
    pub name: String,
    pub hook: String,
    pub kind: String,
    pub policy: String,
}

#[derive(Debug, Default)]
pub struct Ruleset {
    pub chains: Vec<BaseChain>,
    /// Rules reachable from a base chain (through jumps and gotos), in order.
    pub rules: Vec<Rule>,
}

/// The hooks a forwarded pod packet meets in the node.
pub const PATH_HOOKS: &[&str] = &["prerouting", "forward", "postrouting"];

impl Ruleset {
    pub fn parse(json: &Value, t: &Traffic) -> Ruleset {
        let items = json["nftables"].as_array().cloned().unwrap_or_default();
        let mut rs = Ruleset::default();
        let mut all_rules: Vec<&Value> = Vec::new();
        for it in &items {
            if let Some(c) = it.get("chain") {
                if let Some(hook) = c["hook"].as_str() {
                    rs.chains.push(BaseChain {
                        family: s(&c["family"]),
                        table: s(&c["table"]),
                        name: s(&c["name"]),
                        hook: hook.to_string(),
                        kind: s(&c["type"]),
                        policy: c["policy"].as_str().unwrap_or("accept").to_string(),
                    });
                }
            }
            if let Some(r) = it.get("rule") {
                all_rules.push(r);
            }
        }
        for c in rs.chains.clone() {
            if !matches!(c.family.as_str(), "ip" | "inet" | "bridge") {
                continue;
            }
            walk(
                &all_rules,
                &c.family,
                &c.table,
                &c.name,
                &c.hook,
                Applies::Full,
                t,
                0,
                &mut rs.rules,
            );
        }
        rs
    }

    /// Rules on the forwarding path that drop or reject the pod's traffic.
    pub fn drops(&self) -> Vec<&Rule> {
        self.rules
            .iter()
            .filter(|r| {
                PATH_HOOKS.contains(&r.hook.as_str())
                    && matches!(r.verdict.as_str(), "drop" | "reject")
                    && r.applies != Applies::None
            })
            .collect()
    }

    /// Forward base chains with a drop policy and whether an accept rule takes all of
    /// the pod's traffic before the policy does.
    pub fn forward_policies(&self) -> Vec<(&BaseChain, bool)> {
        self.chains
            .iter()
            .filter(|c| c.hook == "forward" && c.policy == "drop" && c.family != "bridge")
            .map(|c| {
                let accepted = self.rules.iter().any(|r| {
                    r.family == c.family
                        && r.table == c.table
                        && r.hook == "forward"
                        && r.verdict == "accept"
                        && r.applies == Applies::Full
                });
                (c, accepted)
            })
            .collect()
    }

    /// Masquerade rules that take the pod's traffic.
    pub fn masquerades(&self) -> Vec<&Rule> {
        self.rules
            .iter()
            .filter(|r| r.verdict == "masquerade" && r.applies != Applies::None)
            .collect()
    }
}

fn s(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_string()
}

#[allow(clippy::too_many_arguments)]
fn walk(
    rules: &[&Value],
    family: &str,
    table: &str,
    chain: &str,
    hook: &str,
    reach: Applies,
    t: &Traffic,
    depth: usize,
    out: &mut Vec<Rule>,
) {
    if depth > 8 {
        return;
    }
    for r in rules
        .iter()
        .filter(|r| r["family"] == family && r["table"] == table && r["chain"] == chain)
    {
        let exprs = r["expr"].as_array().cloned().unwrap_or_default();
        let mut applies = reach;
        let mut verdict = String::new();
        let mut target = None;
        // Judged once per direction (from the pod, to the pod); the rule applies as much
        // as it does in the direction it fits best.
        let mut per_dir = [Applies::Full, Applies::Full];
        for e in &exprs {
            if let Some(m) = e.get("match") {
                for (d, a) in per_dir.iter_mut().enumerate() {
                    *a = (*a).min(judge(m, t, d == 0));
                }
            } else if let Some(obj) = e.as_object() {
                for k in [
                    "drop",
                    "reject",
                    "accept",
                    "masquerade",
                    "return",
                    "snat",
                    "dnat",
                ] {
                    if obj.contains_key(k) {
                        verdict = k.to_string();
                    }
                }
                for k in ["jump", "goto"] {
                    if let Some(tg) = obj.get(k).and_then(|j| j["target"].as_str()) {
                        verdict = k.to_string();
                        target = Some(tg.to_string());
                    }
                }
                if obj.contains_key("xt") {
                    // An iptables match nft cannot show natively: unknown.
                    applies = applies.min(Applies::Partial);
                }
            }
        }
        applies = applies.min(per_dir[0].max(per_dir[1]));
        out.push(Rule {
            family: family.to_string(),
            table: table.to_string(),
            chain: chain.to_string(),
            handle: r["handle"].as_u64().unwrap_or(0),
            text: render(&exprs),
            verdict,
            applies,
            hook: hook.to_string(),
        });
        if let (Some(tg), true) = (target, applies != Applies::None) {
            walk(rules, family, table, &tg, hook, applies, t, depth + 1, out);
        }
    }
}

/// Whether one `match` expression holds for the pod's traffic in one direction
/// (`from_pod`: the pod is the source).
fn judge(m: &Value, t: &Traffic, from_pod: bool) -> Applies {
    let op = m["op"].as_str().unwrap_or("==");
    let left = &m["left"];
    let right = &m["right"];
    let negate = op == "!=";
    let field = left["payload"]["field"].as_str();
    let proto = left["payload"]["protocol"].as_str();
    if proto == Some("ip") && matches!(field, Some("saddr") | Some("daddr")) {
        let pod_side = (field == Some("saddr")) == from_pod;
        if pod_side {
            return match contains(right, IpAddr::V4(t.pod_ip)) {
                Some(hit) if hit != negate => Applies::Full,
                Some(_) => Applies::None,
                None => Applies::Partial,
            };
        }
        // The other end: some peer address.
        let hits = t.peers.iter().map(|n| covers(right, n)).collect::<Vec<_>>();
        return if negate {
            if hits.iter().all(|h| *h == Some(Cover::All)) {
                Applies::None
            } else {
                Applies::Partial
            }
        } else if hits.iter().all(|h| *h == Some(Cover::All)) && !hits.is_empty() {
            Applies::Full
        } else if hits.iter().all(|h| *h == Some(Cover::Disjoint)) {
            Applies::None
        } else {
            Applies::Partial
        };
    }
    if let Some(key) = left["meta"]["key"].as_str() {
        if matches!(key, "iifname" | "oifname") {
            let hit = names(right)
                .iter()
                .any(|n| t.ifaces.iter().any(|i| glob(n, i)));
            return if hit != negate {
                Applies::Full
            } else {
                Applies::None
            };
        }
        if key == "nfproto" || key == "l4proto" {
            return Applies::Partial;
        }
    }
    Applies::Partial
}

fn names(v: &Value) -> Vec<String> {
    match v {
        Value::String(s) => vec![s.clone()],
        Value::Object(o) => o
            .get("set")
            .and_then(|s| s.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default(),
        _ => Vec::new(),
    }
}

/// nft's interface wildcard: a trailing `*`.
fn glob(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(p) => name.starts_with(p),
        None => pattern == name,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cover {
    All,
    Some,
    Disjoint,
}

/// How an nft address value relates to a network; None when it cannot be told.
fn covers(v: &Value, n: &Ipv4Network) -> Option<Cover> {
    let net_of = |a: Ipv4Addr, len: u8| Ipv4Network::new(a, len).ok();
    let rel = |m: Ipv4Network| {
        if m.prefix() <= n.prefix() && m.contains(n.network()) {
            Cover::All
        } else if n.contains(m.network()) {
            Cover::Some
        } else {
            Cover::Disjoint
        }
    };
    match v {
        Value::String(s) if s.starts_with('@') => None,
        Value::String(s) => {
            if let Ok(a) = s.parse::<Ipv4Addr>() {
                return net_of(a, 32).map(rel);
            }
            s.parse::<Ipv4Network>().ok().map(rel)
        }
        Value::Object(o) => {
            if let Some(p) = o.get("prefix") {
                let a = p["addr"].as_str()?.parse::<Ipv4Addr>().ok()?;
                return net_of(a, p["len"].as_u64()? as u8).map(rel);
            }
            if let Some(set) = o.get("set").and_then(|s| s.as_array()) {
                let all: Vec<Option<Cover>> = set.iter().map(|x| covers(x, n)).collect();
                if all.contains(&Some(Cover::All)) {
                    return Some(Cover::All);
                }
                if all.iter().all(|c| *c == Some(Cover::Disjoint)) {
                    return Some(Cover::Disjoint);
                }
                return Some(Cover::Some);
            }
            None
        }
        _ => None,
    }
}

/// Whether an nft value (address, prefix, range, anonymous set) holds `ip`; None when it
/// cannot be told (a named set).
fn contains(v: &Value, ip: IpAddr) -> Option<bool> {
    match v {
        Value::String(s) if s.starts_with('@') => None,
        Value::String(s) => Some(
            s.parse::<IpAddr>().ok() == Some(ip)
                || s.parse::<IpNetwork>().is_ok_and(|n| n.contains(ip)),
        ),
        Value::Object(o) => {
            if let Some(p) = o.get("prefix") {
                let addr = p["addr"].as_str()?.parse::<Ipv4Addr>().ok()?;
                let len = p["len"].as_u64()? as u8;
                let n = Ipv4Network::new(addr, len).ok()?;
                return Some(matches!(ip, IpAddr::V4(a) if n.contains(a)));
            }
            if let Some(r) = o.get("range").and_then(|r| r.as_array()) {
                let lo = r.first()?.as_str()?.parse::<IpAddr>().ok()?;
                let hi = r.get(1)?.as_str()?.parse::<IpAddr>().ok()?;
                return Some(lo <= ip && ip <= hi);
            }
            if let Some(set) = o.get("set").and_then(|s| s.as_array()) {
                let mut unknown = false;
                for x in set {
                    match contains(x, ip) {
                        Some(true) => return Some(true),
                        None => unknown = true,
                        _ => {}
                    }
                }
                return if unknown { None } else { Some(false) };
            }
            None
        }
        _ => None,
    }
}

/// A rule in words, close to `nft list`'s syntax for the common expressions.
pub fn render(exprs: &[Value]) -> String {
    let val = |v: &Value| -> String {
        match v {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Object(o) => {
                if let Some(p) = o.get("prefix") {
                    format!("{}/{}", s(&p["addr"]), p["len"])
                } else if let Some(set) = o.get("set").and_then(|x| x.as_array()) {
                    let items: Vec<String> = set
                        .iter()
                        .map(|x| {
                            x.as_str()
                                .map(str::to_string)
                                .unwrap_or_else(|| x.to_string())
                        })
                        .collect();
                    format!("{{ {} }}", items.join(", "))
                } else {
                    v.to_string()
                }
            }
            _ => v.to_string(),
        }
    };
    let mut parts = Vec::new();
    for e in exprs {
        let Some(obj) = e.as_object() else { continue };
        let Some((k, v)) = obj.iter().next() else {
            continue;
        };
        match k.as_str() {
            "match" => {
                let l = &v["left"];
                let left = if let Some(p) = l.get("payload") {
                    format!("{} {}", s(&p["protocol"]), s(&p["field"]))
                } else if let Some(m) = l.get("meta") {
                    s(&m["key"])
                } else if let Some(c) = l.get("ct") {
                    format!("ct {}", s(&c["key"]))
                } else {
                    l.to_string()
                };
                let op = match v["op"].as_str() {
                    Some("==") | Some("in") | None => String::new(),
                    Some(o) => format!("{o} "),
                };
                parts.push(format!("{left} {op}{}", val(&v["right"])));
            }
            "jump" | "goto" => parts.push(format!("{k} {}", s(&v["target"]))),
            "counter" => parts.push("counter".into()),
            "xt" => parts.push(format!("xt {}", s(&v["name"]))),
            other => parts.push(other.to_string()),
        }
    }
    parts.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn traffic() -> Traffic {
        Traffic {
            pod_ip: "10.244.1.2".parse().unwrap(),
            peers: vec!["10.244.0.0/16".parse().unwrap()],
            ifaces: vec!["cni0".into(), "veth1".into(), "flannel.1".into()],
        }
    }

    fn ruleset(rules: Vec<Value>, policy: &str) -> Value {
        let mut items = vec![
            json!({"table": {"family": "inet", "name": "t", "handle": 1}}),
            json!({"chain": {"family": "inet", "table": "t", "name": "fwd", "handle": 1,
                "type": "filter", "hook": "forward", "prio": 0, "policy": policy}}),
            json!({"chain": {"family": "inet", "table": "t", "name": "sub", "handle": 2}}),
        ];
        items.extend(rules);
        json!({ "nftables": items })
    }

    fn rule(chain: &str, handle: u64, expr: Value) -> Value {
        json!({"rule": {"family": "inet", "table": "t", "chain": chain, "handle": handle, "expr": expr}})
    }

    #[test]
    fn a_drop_of_the_pod_address_is_named_and_others_are_not() {
        let rs = Ruleset::parse(
            &ruleset(
                vec![
                    rule(
                        "fwd",
                        3,
                        json!([{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": "10.244.1.2"}}, {"drop": null}]),
                    ),
                    rule(
                        "fwd",
                        4,
                        json!([{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": "10.9.9.9"}}, {"drop": null}]),
                    ),
                    rule(
                        "fwd",
                        5,
                        json!([{"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "eth9"}}, {"drop": null}]),
                    ),
                ],
                "accept",
            ),
            &traffic(),
        );
        let d = rs.drops();
        // handle 4 is about an address outside the cluster network, 5 another interface.
        assert_eq!(d.iter().map(|r| r.handle).collect::<Vec<_>>(), vec![3]);
        assert_eq!(d[0].applies, Applies::Full);
        assert_eq!(d[0].name(), "inet t fwd handle 3: ip saddr 10.244.1.2 drop");
    }

    #[test]
    fn rules_behind_a_jump_count_and_a_drop_policy_needs_an_accept() {
        let rs = Ruleset::parse(
            &ruleset(
                vec![
                    rule(
                        "fwd",
                        3,
                        json!([{"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "cni*"}}, {"jump": {"target": "sub"}}]),
                    ),
                    rule(
                        "sub",
                        4,
                        json!([{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": {"prefix": {"addr": "10.244.0.0", "len": 16}}}}, {"reject": null}]),
                    ),
                ],
                "drop",
            ),
            &traffic(),
        );
        assert_eq!(rs.drops()[0].handle, 4);
        assert_eq!(rs.drops()[0].applies, Applies::Full);
        let p = rs.forward_policies();
        assert_eq!(p.len(), 1);
        assert!(
            !p[0].1,
            "no accept rule: the policy drops the pod's traffic"
        );
    }
}
