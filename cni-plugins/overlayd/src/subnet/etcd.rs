//! etcd v3 subnet manager over etcd's JSON gRPC-gateway (`/v3/kv/range`, `/v3/kv/txn`,
//! `/v3/lease/grant`, `/v3/lease/keepalive`) with a blocking HTTP client: the agent stays
//! synchronous (no async runtime, so `--netns` entry before any thread is trivially
//! safe) and the build needs no `protoc`.
//!
//! Layout (flannel's): `<prefix>/config` holds the network config, `<prefix>/subnets/
//! 10.244.1.0-24` a node's lease attached to an etcd lease with a TTL. Allocation is a
//! transaction `create_revision(key) == 0 → put`, so two nodes never get one subnet.

use std::io::{BufRead, BufReader};
use std::sync::mpsc::Sender;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ipnetwork::Ipv4Network;
use serde_json::{json, Value};

use super::SubnetManager;
use crate::config::{parse_subnet_key, subnet_key, Lease, LeaseAttrs, NetworkConfig};
use crate::Error;

pub struct EtcdSubnetManager {
    endpoints: Vec<String>,
    prefix: String,
    ttl: i64,
    agent: ureq::Agent,
    /// The etcd lease our subnet key is attached to.
    lease_id: Option<String>,
}

fn b64(s: &str) -> String {
    B64.encode(s.as_bytes())
}

fn unb64(v: &Value) -> Option<Vec<u8>> {
    B64.decode(v.as_str()?).ok()
}

/// etcd's JSON gateway prints int64 fields as strings.
fn int(v: &Value) -> i64 {
    match v {
        Value::String(s) => s.parse().unwrap_or(0),
        Value::Number(n) => n.as_i64().unwrap_or(0),
        _ => 0,
    }
}

/// The key just past every key starting with `p` (etcd's prefix range end).
fn prefix_end(p: &str) -> Vec<u8> {
    let mut b = p.as_bytes().to_vec();
    while let Some(last) = b.pop() {
        if last < 0xff {
            b.push(last + 1);
            return b;
        }
    }
    vec![0]
}

impl EtcdSubnetManager {
    pub fn new(endpoints: &[String], prefix: &str, ttl: Duration) -> EtcdSubnetManager {
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(2))
            .timeout(Duration::from_secs(5))
            .build();
        EtcdSubnetManager {
            endpoints: endpoints
                .iter()
                .map(|e| e.trim_end_matches('/').to_string())
                .collect(),
            prefix: prefix.trim_end_matches('/').to_string(),
            ttl: ttl.as_secs().max(1) as i64,
            agent,
            lease_id: None,
        }
    }

    fn post(&self, path: &str, body: &Value) -> Result<Value, Error> {
        let mut last = String::from("no etcd endpoints given");
        for ep in &self.endpoints {
            match self
                .agent
                .post(&format!("{ep}{path}"))
                .send_json(body.clone())
            {
                Ok(resp) => {
                    return resp
                        .into_json::<Value>()
                        .map_err(|e| Error::Store(format!("{ep}{path}: bad reply: {e}")))
                }
                Err(ureq::Error::Status(code, resp)) => {
                    let text = resp.into_string().unwrap_or_default();
                    return Err(Error::Store(format!("{ep}{path}: HTTP {code}: {text}")));
                }
                Err(e) => last = format!("{ep}{path}: {e}"),
            }
        }
        Err(Error::Store(last))
    }

    fn subnets_prefix(&self) -> String {
        format!("{}/subnets/", self.prefix)
    }

    fn grant(&mut self) -> Result<String, Error> {
        let r = self.post("/v3/lease/grant", &json!({ "TTL": self.ttl }))?;
        let id = r
            .get("ID")
            .map(|v| int(v).to_string())
            .filter(|s| s != "0")
            .ok_or_else(|| Error::Store(format!("lease grant returned no ID: {r}")))?;
        self.lease_id = Some(id.clone());
        Ok(id)
    }

    /// Put `value` at `key` if `compare` holds; returns whether it did.
    fn put_if(&self, key: &str, value: &str, lease: &str, compare: Value) -> Result<bool, Error> {
        let r = self.post(
            "/v3/kv/txn",
            &json!({
                "compare": [compare],
                "success": [{"request_put": {"key": b64(key), "value": b64(value), "lease": lease}}],
            }),
        )?;
        Ok(r.get("succeeded")
            .and_then(|v| v.as_bool())
            .unwrap_or(false))
    }

    /// Write the network config (tests and first-time setup).
    pub fn put_config(&self, config: &NetworkConfig) -> Result<(), Error> {
        let v = serde_json::to_string(config).map_err(|e| Error::Config(e.to_string()))?;
        self.post(
            "/v3/kv/put",
            &json!({"key": b64(&format!("{}/config", self.prefix)), "value": b64(&v)}),
        )?;
        Ok(())
    }
}

impl SubnetManager for EtcdSubnetManager {
    fn network_config(&mut self) -> Result<NetworkConfig, Error> {
        let key = format!("{}/config", self.prefix);
        let r = self.post("/v3/kv/range", &json!({ "key": b64(&key) }))?;
        let kv = r
            .get("kvs")
            .and_then(|k| k.as_array())
            .and_then(|k| k.first())
            .ok_or_else(|| Error::Config(format!("no network config at {key} in etcd")))?;
        let value = kv.get("value").and_then(unb64).unwrap_or_default();
        NetworkConfig::parse(&value)
    }

    fn leases(&mut self) -> Result<Vec<Lease>, Error> {
        let p = self.subnets_prefix();
        let r = self.post(
            "/v3/kv/range",
            &json!({"key": b64(&p), "range_end": B64.encode(prefix_end(&p))}),
        )?;
        let mut out = Vec::new();
        for kv in r
            .get("kvs")
            .and_then(|k| k.as_array())
            .into_iter()
            .flatten()
        {
            let key = kv.get("key").and_then(unb64).unwrap_or_default();
            let key = String::from_utf8_lossy(&key);
            let Some(subnet) = key.strip_prefix(&p).and_then(parse_subnet_key) else {
                continue;
            };
            let value = kv.get("value").and_then(unb64).unwrap_or_default();
            match serde_json::from_slice::<LeaseAttrs>(&value) {
                Ok(attrs) => out.push(Lease {
                    subnet,
                    attrs,
                    revision: kv.get("mod_revision").map(int).unwrap_or(0),
                }),
                Err(e) => tracing::warn!(%key, error = %e, "ignoring unreadable lease"),
            }
        }
        Ok(out)
    }

    fn acquire(
        &mut self,
        config: &NetworkConfig,
        attrs: &LeaseAttrs,
        previous: Option<&Lease>,
        prefer: Option<Ipv4Network>,
    ) -> Result<Lease, Error> {
        let value = serde_json::to_string(attrs).map_err(|e| Error::Config(e.to_string()))?;
        let lease_id = self.grant()?;
        let sp = self.subnets_prefix();
        let key_of = |n: &Ipv4Network| format!("{sp}{}", subnet_key(n));
        let candidates = config.candidate_subnets();

        // Our own lease from before a restart: take it over unless it changed meanwhile.
        if let Some(prev) = previous {
            if candidates.contains(&prev.subnet) {
                let key = key_of(&prev.subnet);
                let cmp = json!({"key": b64(&key), "target": "MOD", "result": "EQUAL",
                                 "mod_revision": prev.revision.to_string()});
                if self.put_if(&key, &value, &lease_id, cmp)? {
                    tracing::info!(subnet = %prev.subnet, "reusing our previous lease");
                    return self.reread(prev.subnet, attrs);
                }
            }
        }
        let taken: Vec<Ipv4Network> = self.leases()?.into_iter().map(|l| l.subnet).collect();
        let mut free: Vec<Ipv4Network> = candidates
            .into_iter()
            .filter(|n| !taken.contains(n))
            .collect();
        // Random order: nodes starting together rarely race for the same subnet.
        shuffle(&mut free);
        if let Some(p) = prefer.filter(|p| free.contains(p)) {
            free.retain(|n| *n != p);
            free.insert(0, p);
        }
        for subnet in free {
            let key = key_of(&subnet);
            let cmp = json!({"key": b64(&key), "target": "CREATE", "result": "EQUAL",
                             "create_revision": "0"});
            if self.put_if(&key, &value, &lease_id, cmp)? {
                tracing::info!(%subnet, "leased subnet");
                return self.reread(subnet, attrs);
            }
            tracing::info!(%subnet, "subnet taken meanwhile (compare-and-swap lost), trying another");
        }
        Err(Error::Exhausted(config.network.to_string()))
    }

    fn watch(&mut self, changed: Sender<()>) -> Result<(), Error> {
        let endpoints = self.endpoints.clone();
        if endpoints.is_empty() {
            return Err(Error::Store("no etcd endpoints".into()));
        }
        let key = self.subnets_prefix();
        let end = prefix_end(&key);
        std::thread::Builder::new()
            .name("etcd-watch".into())
            .spawn(move || watch_loop(endpoints, key, end, changed))?;
        Ok(())
    }

    fn renew(&mut self, lease: &Lease) -> Result<bool, Error> {
        let Some(id) = self.lease_id.clone() else {
            return Ok(false);
        };
        let r = self.post("/v3/lease/keepalive", &json!({ "ID": id }))?;
        let ttl = r
            .get("result")
            .and_then(|x| x.get("TTL"))
            .map(int)
            .unwrap_or(0);
        if ttl <= 0 {
            tracing::warn!(subnet = %lease.subnet, "etcd lease expired");
            self.lease_id = None;
            return Ok(false);
        }
        Ok(true)
    }
}

/// One watch stream on the subnets prefix (`POST /v3/watch`, newline-delimited JSON
/// replies); reconnects after errors and idle timeouts.
fn watch_loop(endpoints: Vec<String>, key: String, range_end: Vec<u8>, tx: Sender<()>) {
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(2))
        .timeout_read(Duration::from_secs(30))
        .build();
    let body = json!({"create_request": {"key": b64(&key), "range_end": B64.encode(range_end)}});
    let mut i = 0;
    loop {
        let ep = &endpoints[i % endpoints.len()];
        i += 1;
        match agent
            .post(&format!("{ep}/v3/watch"))
            .send_json(body.clone())
        {
            Ok(resp) => {
                let reader = BufReader::new(resp.into_reader());
                for line in reader.lines() {
                    let Ok(line) = line else { break };
                    let Ok(v) = serde_json::from_str::<Value>(&line) else {
                        continue;
                    };
                    let events = v
                        .get("result")
                        .and_then(|r| r.get("events"))
                        .and_then(|e| e.as_array())
                        .is_some_and(|e| !e.is_empty());
                    if events && tx.send(()).is_err() {
                        return; // the agent is gone
                    }
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "etcd watch failed; retrying");
                std::thread::sleep(Duration::from_secs(1));
            }
        }
        // Changes may have been missed while reconnecting: let the agent re-read.
        if tx.send(()).is_err() {
            return;
        }
    }
}

impl EtcdSubnetManager {
    fn reread(&mut self, subnet: Ipv4Network, attrs: &LeaseAttrs) -> Result<Lease, Error> {
        let revision = self
            .leases()?
            .into_iter()
            .find(|l| l.subnet == subnet)
            .map(|l| l.revision)
            .unwrap_or(0);
        Ok(Lease {
            subnet,
            attrs: attrs.clone(),
            revision,
        })
    }
}

fn shuffle<T>(v: &mut [T]) {
    let mut seed = crate::random_u64();
    for i in (1..v.len()).rev() {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        v.swap(i, (seed % (i as u64 + 1)) as usize);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_increments_the_last_byte() {
        assert_eq!(prefix_end("/a/subnets/"), b"/a/subnets0".to_vec());
    }

    #[test]
    fn gateway_int64_strings_parse() {
        assert_eq!(int(&json!("42")), 42);
        assert_eq!(int(&json!(7)), 7);
        assert_eq!(int(&Value::Null), 0);
    }
}
