//! A doctor's findings and their three renderings: text lines for people, JSON for
//! machines, and a Graphviz graph of the path with each hop coloured by its worst check.

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Status {
    Pass,
    Warn,
    Fail,
}

impl Status {
    pub fn label(self) -> &'static str {
        match self {
            Status::Pass => "PASS",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        }
    }
    fn colour(self) -> &'static str {
        match self {
            Status::Pass => "palegreen",
            Status::Warn => "orange",
            Status::Fail => "tomato",
        }
    }
}

/// The hops of a pod's path, in the order a packet leaving the pod meets them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Hop {
    Pod,
    Veth,
    Bridge,
    Node,
    Overlay,
    Underlay,
    Peer,
}

impl Hop {
    pub fn name(self) -> &'static str {
        match self {
            Hop::Pod => "pod",
            Hop::Veth => "veth",
            Hop::Bridge => "bridge",
            Hop::Node => "node",
            Hop::Overlay => "overlay",
            Hop::Underlay => "underlay",
            Hop::Peer => "peer",
        }
    }
}

/// One check: what was expected, what was found, and how a person would look.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub hop: Hop,
    /// A short stable id (`veth-up`, `peer-route`) tests and scripts can match.
    pub id: String,
    pub status: Status,
    /// What the check is about, in words (`veth veth1234 up`).
    pub subject: String,
    pub expected: String,
    pub found: String,
    pub command: String,
    /// The graph node a peer check belongs to (the peer subnet), for `--dot`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
}

/// Everything doctor found about one pod.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub target: String,
    pub netns: String,
    /// Interface names on the path, by hop, for the graph's labels.
    pub hops: Vec<(Hop, String)>,
    pub checks: Vec<Check>,
}

impl Report {
    pub fn worst(&self) -> Status {
        self.checks
            .iter()
            .map(|c| c.status)
            .max()
            .unwrap_or(Status::Pass)
    }

    pub fn count(&self, s: Status) -> usize {
        self.checks.iter().filter(|c| c.status == s).count()
    }

    /// One line per check, then a summary line.
    pub fn text(&self) -> String {
        let mut out = format!("doctor: {} (netns {})\n", self.target, self.netns);
        for c in &self.checks {
            out.push_str(&format!(
                "{:<4} {:<8} {}: expected {}, found {}  [{}]\n",
                c.status.label(),
                c.hop.name(),
                c.subject,
                c.expected,
                c.found,
                c.command
            ));
        }
        out.push_str(&format!(
            "summary: {} passed, {} warnings, {} failed\n",
            self.count(Status::Pass),
            self.count(Status::Warn),
            self.count(Status::Fail)
        ));
        out
    }

    pub fn json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        v["summary"] = serde_json::json!({
            "pass": self.count(Status::Pass),
            "warn": self.count(Status::Warn),
            "fail": self.count(Status::Fail),
            "status": self.worst(),
        });
        v
    }

    /// The path as a Graphviz digraph: pod → veth → bridge → node → overlay →
    /// underlay → each peer, every hop filled with the colour of its worst check and
    /// labelled with its failing checks.
    pub fn dot(&self) -> String {
        let mut out = String::from("digraph netdiag {\n  rankdir=LR;\n  node [shape=box, style=\"rounded,filled\", fontname=\"monospace\"];\n");
        out.push_str(&format!(
            "  label=\"nestbox-netdiag doctor {}\"; labelloc=t;\n",
            esc(&self.target)
        ));
        let mut prev: Option<String> = None;
        for hop in [
            Hop::Pod,
            Hop::Veth,
            Hop::Bridge,
            Hop::Node,
            Hop::Overlay,
            Hop::Underlay,
        ] {
            let checks: Vec<&Check> = self
                .checks
                .iter()
                .filter(|c| c.hop == hop && c.peer.is_none())
                .collect();
            let iface = self
                .hops
                .iter()
                .find(|(h, _)| *h == hop)
                .map(|(_, n)| n.clone());
            if checks.is_empty() && iface.is_none() {
                continue;
            }
            let id = hop.name().to_string();
            out.push_str(&node_line(&id, hop.name(), iface.as_deref(), &checks));
            if let Some(p) = &prev {
                out.push_str(&format!("  {p} -> {id};\n"));
            }
            prev = Some(id);
        }
        let mut peers: Vec<String> = self.checks.iter().filter_map(|c| c.peer.clone()).collect();
        peers.sort();
        peers.dedup();
        for (i, peer) in peers.iter().enumerate() {
            let checks: Vec<&Check> = self
                .checks
                .iter()
                .filter(|c| c.peer.as_deref() == Some(peer))
                .collect();
            let id = format!("peer{i}");
            out.push_str(&node_line(&id, "peer", Some(peer), &checks));
            if let Some(p) = &prev {
                out.push_str(&format!("  {p} -> {id};\n"));
            }
        }
        out.push_str("}\n");
        out
    }
}

fn esc(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

fn node_line(id: &str, title: &str, iface: Option<&str>, checks: &[&Check]) -> String {
    let worst = checks
        .iter()
        .map(|c| c.status)
        .max()
        .unwrap_or(Status::Pass);
    let mut label = title.to_string();
    if let Some(i) = iface {
        label.push_str(&format!("\\n{}", esc(i)));
    }
    for c in checks.iter().filter(|c| c.status != Status::Pass) {
        label.push_str(&format!("\\n{} {}", c.status.label(), esc(&c.subject)));
    }
    format!(
        "  {id} [label=\"{label}\", fillcolor={}];\n",
        worst.colour()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(hop: Hop, status: Status, peer: Option<&str>) -> Check {
        Check {
            hop,
            id: "x".into(),
            status,
            subject: format!("{} thing", hop.name()),
            expected: "a".into(),
            found: "b".into(),
            command: "ip link".into(),
            peer: peer.map(str::to_string),
        }
    }

    #[test]
    fn dot_colours_each_hop_by_its_worst_check_and_links_the_path() {
        let r = Report {
            target: "default/web".into(),
            netns: "/run/netns/x".into(),
            hops: vec![(Hop::Pod, "eth0".into()), (Hop::Veth, "veth1".into())],
            checks: vec![
                check(Hop::Pod, Status::Pass, None),
                check(Hop::Veth, Status::Fail, None),
                check(Hop::Peer, Status::Warn, Some("10.244.2.0/24")),
            ],
        };
        let d = r.dot();
        assert!(
            d.contains("pod [label=\"pod\\neth0\", fillcolor=palegreen]"),
            "{d}"
        );
        assert!(d.contains("fillcolor=tomato"), "{d}");
        assert!(d.contains("pod -> veth;"), "{d}");
        assert!(d.contains("veth -> peer0;"), "{d}");
        assert!(d.contains("FAIL veth thing"), "{d}");
        assert_eq!(r.worst(), Status::Fail);
        assert_eq!(r.json()["summary"]["fail"], 1);
    }
}
