//! Container environment and command line: `$(VAR)` expansion as the kubelet does it,
//! `valueFrom` (fieldRef, resourceFieldRef, configMapKeyRef, secretKeyRef), `envFrom`;
//! resource quantities and the pod's QoS class.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Pod};

/// Expand `$(VAR)` references from `env` (`$$` escapes a `$`); unknown references stay as
/// they are (the kubelet's `expansion.Expand`).
pub fn expand(input: &str, env: &dyn Fn(&str) -> Option<String>) -> String {
    let b = input.as_bytes();
    let mut out = String::with_capacity(input.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'$' && i + 1 < b.len() {
            match b[i + 1] {
                b'$' => {
                    out.push('$');
                    i += 2;
                    continue;
                }
                b'(' => {
                    if let Some(end) = input[i + 2..].find(')') {
                        let name = &input[i + 2..i + 2 + end];
                        match env(name) {
                            Some(v) => out.push_str(&v),
                            None => {
                                out.push_str("$(");
                                out.push_str(name);
                                out.push(')');
                            }
                        }
                        i += 2 + end + 1;
                        continue;
                    }
                }
                _ => {}
            }
        }
        let ch = input[i..].chars().next().unwrap_or('\0');
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

/// CPU in millicores from a quantity (`100m`, `0.5`, `2`).
pub fn cpu_millis(q: &str) -> Option<i64> {
    let q = q.trim();
    if let Some(m) = q.strip_suffix('m') {
        return m.parse::<f64>().ok().map(|v| v.ceil() as i64);
    }
    parse_decimal(q).map(|v| (v * 1000.0).ceil() as i64)
}

fn parse_decimal(q: &str) -> Option<f64> {
    q.parse::<f64>().ok()
}

/// Bytes from a quantity (`128Mi`, `1G`, `1e6`, `512`).
pub fn bytes(q: &str) -> Option<i64> {
    let q = q.trim();
    let units: &[(&str, f64)] = &[
        ("Ki", 1024.0),
        ("Mi", 1024.0 * 1024.0),
        ("Gi", 1024.0 * 1024.0 * 1024.0),
        ("Ti", 1024.0 * 1024.0 * 1024.0 * 1024.0),
        ("Pi", 1024f64.powi(5)),
        ("Ei", 1024f64.powi(6)),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("P", 1e15),
        ("E", 1e18),
        ("m", 1e-3),
    ];
    for (suffix, mult) in units {
        if let Some(n) = q.strip_suffix(suffix) {
            return n.parse::<f64>().ok().map(|v| (v * mult).ceil() as i64);
        }
    }
    q.parse::<f64>().ok().map(|v| v.ceil() as i64)
}

fn quantity<'a>(c: &'a Container, which: &str, res: &str) -> Option<&'a str> {
    let r = c.resources.as_ref()?;
    let m = if which == "limits" {
        r.limits.as_ref()
    } else {
        r.requests.as_ref()
    }?;
    m.get(res).map(|q| q.0.as_str())
}

/// (requests, limits) of a container with the API's defaulting: a limit without a request
/// requests the limit.
pub fn requests_limits<'a>(c: &'a Container, res: &str) -> (Option<&'a str>, Option<&'a str>) {
    let lim = quantity(c, "limits", res);
    let req = quantity(c, "requests", res).or(lim);
    (req, lim)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Qos {
    Guaranteed,
    Burstable,
    BestEffort,
}

impl Qos {
    pub fn as_str(self) -> &'static str {
        match self {
            Qos::Guaranteed => "Guaranteed",
            Qos::Burstable => "Burstable",
            Qos::BestEffort => "BestEffort",
        }
    }

    /// The pod cgroup's parent under the cgroup root (the kubelet's layout).
    pub fn cgroup_dir(self) -> &'static str {
        match self {
            Qos::Guaranteed => "",
            Qos::Burstable => "burstable",
            Qos::BestEffort => "besteffort",
        }
    }
}

/// The pod's QoS class (the kubelet's `GetPodQOS`).
pub fn qos(pod: &Pod) -> Qos {
    let Some(spec) = pod.spec.as_ref() else {
        return Qos::BestEffort;
    };
    let all: Vec<&Container> = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .collect();
    let mut any = false;
    let mut guaranteed = true;
    for c in &all {
        for res in ["cpu", "memory"] {
            let (req, lim) = (quantity(c, "requests", res), quantity(c, "limits", res));
            if req.is_some() || lim.is_some() {
                any = true;
            }
            let (req, lim) = requests_limits(c, res);
            match (req, lim) {
                (Some(r), Some(l)) => {
                    let same = if res == "cpu" {
                        cpu_millis(r) == cpu_millis(l)
                    } else {
                        bytes(r) == bytes(l)
                    };
                    if !same {
                        guaranteed = false;
                    }
                }
                _ => guaranteed = false,
            }
        }
    }
    if !any {
        Qos::BestEffort
    } else if guaranteed {
        Qos::Guaranteed
    } else {
        Qos::Burstable
    }
}

/// oom_score_adj by QoS (the kubelet's policy), never below `floor` (this process's own:
/// lowering it needs CAP_SYS_RESOURCE).
pub fn oom_score_adj(q: Qos, c: &Container, floor: i32) -> i32 {
    let v = match q {
        Qos::Guaranteed => -997,
        Qos::BestEffort => 1000,
        Qos::Burstable => {
            let mem_req = requests_limits(c, "memory").0.and_then(bytes).unwrap_or(0);
            let total = crate::node::memory_bytes().max(1) as i64;
            let adj = 1000 - (1000 * mem_req) / total;
            adj.clamp(3, 999) as i32
        }
    };
    v.max(floor)
}

/// Field paths of `fieldRef` (downward API).
pub fn field_ref(pod: &Pod, path: &str, host_ip: &str, pod_ips: &[String]) -> Option<String> {
    let m = &pod.metadata;
    let sel = |map: &Option<BTreeMap<String, String>>, key: &str| {
        map.as_ref()
            .and_then(|m| m.get(key).cloned())
            .or(Some(String::new()))
    };
    let bracket = |p: &str, prefix: &str| -> Option<String> {
        p.strip_prefix(prefix)
            .and_then(|r| r.strip_prefix("['").or_else(|| r.strip_prefix("[\"")))
            .and_then(|r| r.strip_suffix("']").or_else(|| r.strip_suffix("\"]")))
            .map(str::to_owned)
    };
    match path {
        "metadata.name" => m.name.clone(),
        "metadata.namespace" => Some(m.namespace.clone().unwrap_or_else(|| "default".into())),
        "metadata.uid" => m.uid.clone(),
        "spec.nodeName" => pod.spec.as_ref().and_then(|s| s.node_name.clone()),
        "spec.serviceAccountName" => pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone()),
        "status.hostIP" => Some(host_ip.to_string()),
        "status.podIP" => Some(pod_ips.first().cloned().unwrap_or_default()),
        "status.podIPs" => Some(pod_ips.join(",")),
        p => {
            if let Some(k) = bracket(p, "metadata.labels") {
                sel(&m.labels, &k)
            } else if let Some(k) = bracket(p, "metadata.annotations") {
                sel(&m.annotations, &k)
            } else {
                None
            }
        }
    }
}

/// `resourceFieldRef` values (`limits.cpu` in cores rounded up with the divisor, memory in
/// bytes); unset limits fall back to the node's capacity as the kubelet does.
pub fn resource_field(c: &Container, resource: &str, divisor: Option<&str>) -> Option<String> {
    let (req, lim) = (
        requests_limits(c, resource.split('.').nth(1)?).0,
        requests_limits(c, resource.split('.').nth(1)?).1,
    );
    let v = if resource.starts_with("limits.") {
        lim
    } else {
        req
    };
    match resource {
        "limits.cpu" | "requests.cpu" => {
            let millis = v
                .and_then(cpu_millis)
                .unwrap_or(crate::node::cpu_count() as i64 * 1000);
            let div = divisor
                .and_then(cpu_millis)
                .filter(|d| *d > 0)
                .unwrap_or(1000);
            Some(((millis + div - 1) / div).to_string())
        }
        "limits.memory"
        | "requests.memory"
        | "limits.ephemeral-storage"
        | "requests.ephemeral-storage" => {
            let b = v
                .and_then(bytes)
                .unwrap_or(crate::node::memory_bytes() as i64);
            let div = divisor.and_then(bytes).filter(|d| *d > 0).unwrap_or(1);
            Some(((b + div - 1) / div).to_string())
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expansion_matches_the_kubelet() {
        let env = |k: &str| match k {
            "A" => Some("1".to_string()),
            "B" => Some("two".to_string()),
            _ => None,
        };
        assert_eq!(expand("x$(A)y$(B)", &env), "x1ytwo");
        assert_eq!(expand("$(C) stays", &env), "$(C) stays");
        assert_eq!(expand("$$(A) escaped", &env), "$(A) escaped");
        assert_eq!(expand("plain $ sign", &env), "plain $ sign");
        assert_eq!(expand("$(A", &env), "$(A");
    }

    #[test]
    fn quantities() {
        assert_eq!(cpu_millis("100m"), Some(100));
        assert_eq!(cpu_millis("1.5"), Some(1500));
        assert_eq!(bytes("128Mi"), Some(128 << 20));
        assert_eq!(bytes("1G"), Some(1_000_000_000));
        assert_eq!(bytes("512"), Some(512));
    }
}
