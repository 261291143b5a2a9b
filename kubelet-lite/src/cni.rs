//! CNI by exec, with libcni's rules: the first valid config file in lexical order of the conf
//! dir (`.conflist`, or a single-plugin `.conf`/`.json` wrapped into a list), each plugin of the
//! chain called with `name`, `cniVersion`, the previous plugin's result as `prevResult` and
//! the capabilities it declares as `runtimeConfig`; ADD results cached under the state dir
//! (libcni's `cniCacheV1` layout) so DEL and CHECK get their `prevResult` and the config the
//! attachment was made with, even when the conf dir changed since.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde_json::{json, Map, Value};

#[derive(Debug, thiserror::Error)]
pub enum CniError {
    #[error("no CNI configuration in {0}")]
    NoConfig(PathBuf),
    #[error("CNI plugin {plugin} not found in {path}")]
    PluginNotFound { plugin: String, path: String },
    #[error("CNI plugin {plugin} {verb} failed: {msg}")]
    Plugin {
        plugin: String,
        verb: &'static str,
        msg: String,
    },
    #[error("CNI {0}: {1}")]
    Io(String, std::io::Error),
}

/// One network: a conflist (a single `.conf` becomes a one-plugin list).
#[derive(Clone, Debug)]
pub struct NetworkList {
    pub name: String,
    pub cni_version: String,
    pub disable_check: bool,
    pub plugins: Vec<Value>,
    /// The file it came from.
    pub source: PathBuf,
    /// The list as JSON (what the result cache keeps).
    pub raw: Value,
}

/// What one attachment is: libcni's RuntimeConf.
#[derive(Clone, Debug, Default)]
pub struct RuntimeConf {
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
    /// `CNI_ARGS` pairs (K8S_POD_NAMESPACE, K8S_POD_NAME, ...).
    pub args: Vec<(String, String)>,
    /// Capability arguments the runtime offers (`portMappings`, `dns`, ...): given to the
    /// plugins that declare them, as `runtimeConfig`.
    pub capability_args: BTreeMap<String, Value>,
}

#[derive(Clone, Debug)]
pub struct Cni {
    pub conf_dir: PathBuf,
    pub bin_dirs: Vec<PathBuf>,
    /// `<root>/cni`: results cache at `results/<net>-<cid>-<ifname>`.
    pub cache_dir: PathBuf,
}

fn version_at_least(v: &str, major: u32, minor: u32) -> bool {
    let mut it = v.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (a, b) = (it.next().unwrap_or(0), it.next().unwrap_or(0));
    (a, b) >= (major, minor)
}

impl NetworkList {
    /// Parse a `.conflist` (or, with `single`, a one-plugin `.conf`).
    pub fn parse(bytes: &[u8], single: bool, source: &Path) -> Result<NetworkList, String> {
        let v: Value = serde_json::from_slice(bytes).map_err(|e| format!("invalid JSON: {e}"))?;
        let obj = v.as_object().ok_or("not a JSON object")?;
        let name = obj
            .get("name")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or("no \"name\"")?
            .to_string();
        let mut cni_version = obj
            .get("cniVersion")
            .and_then(Value::as_str)
            .unwrap_or("0.1.0")
            .to_string();
        // CNI 1.1: `cniVersions` lists the versions the config is valid for; take the highest.
        if let Some(vs) = obj.get("cniVersions").and_then(Value::as_array) {
            let mut best: Option<&str> = None;
            for v in vs.iter().filter_map(Value::as_str) {
                let newer = best.is_none_or(|b| {
                    let key = |s: &str| -> Vec<u32> {
                        s.split('.').map(|p| p.parse().unwrap_or(0)).collect()
                    };
                    key(v) > key(b)
                });
                if newer {
                    best = Some(v);
                }
            }
            if let Some(b) = best {
                cni_version = b.to_string();
            }
        }
        let plugins = if single {
            if obj.get("type").and_then(Value::as_str).is_none() {
                return Err("no \"type\"".into());
            }
            vec![v.clone()]
        } else {
            let list = obj
                .get("plugins")
                .and_then(Value::as_array)
                .ok_or("no \"plugins\" list")?;
            if list.is_empty() {
                return Err("empty \"plugins\" list".into());
            }
            for p in list {
                if p.get("type").and_then(Value::as_str).is_none() {
                    return Err("a plugin without \"type\"".into());
                }
            }
            list.clone()
        };
        let raw = if single {
            json!({"cniVersion": cni_version, "name": name, "plugins": plugins})
        } else {
            v.clone()
        };
        Ok(NetworkList {
            disable_check: obj
                .get("disableCheck")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            name,
            cni_version,
            plugins,
            source: source.to_path_buf(),
            raw,
        })
    }

    fn from_raw(raw: &Value) -> Option<NetworkList> {
        let bytes = serde_json::to_vec(raw).ok()?;
        NetworkList::parse(&bytes, false, Path::new("<cache>")).ok()
    }
}

/// The result's IP addresses (`a.b.c.d/len` → address), any CNI version from 0.2.0.
pub fn result_ips(result: &Value) -> Vec<String> {
    let mut ips = Vec::new();
    if let Some(list) = result.get("ips").and_then(Value::as_array) {
        for ip in list {
            if let Some(a) = ip.get("address").and_then(Value::as_str) {
                ips.push(a.split('/').next().unwrap_or(a).to_string());
            }
        }
    }
    for key in ["ip4", "ip6"] {
        if let Some(a) = result
            .get(key)
            .and_then(|v| v.get("ip"))
            .and_then(Value::as_str)
        {
            ips.push(a.split('/').next().unwrap_or(a).to_string());
        }
    }
    ips
}

impl Cni {
    /// The first valid network config in the conf dir (lexical order), or why there is none.
    pub fn load(&self) -> Result<NetworkList, CniError> {
        let mut files: Vec<PathBuf> = match std::fs::read_dir(&self.conf_dir) {
            Ok(rd) => rd
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    matches!(
                        p.extension().and_then(|e| e.to_str()),
                        Some("conf" | "conflist" | "json")
                    )
                })
                .collect(),
            Err(_) => Vec::new(),
        };
        files.sort();
        for f in files {
            let Ok(bytes) = std::fs::read(&f) else {
                continue;
            };
            let single = f.extension().and_then(|e| e.to_str()) != Some("conflist");
            match NetworkList::parse(&bytes, single, &f) {
                Ok(n) => return Ok(n),
                Err(e) => tracing::warn!(file = %f.display(), "skipping CNI config: {e}"),
            }
        }
        Err(CniError::NoConfig(self.conf_dir.clone()))
    }

    fn cache_path(&self, net: &str, rt: &RuntimeConf) -> PathBuf {
        self.cache_dir
            .join("results")
            .join(format!("{net}-{}-{}", rt.container_id, rt.ifname))
    }

    fn find_plugin(&self, plugin: &str) -> Result<PathBuf, CniError> {
        if !plugin.contains('/') {
            for d in &self.bin_dirs {
                let p = d.join(plugin);
                if p.is_file() {
                    return Ok(p);
                }
            }
        }
        Err(CniError::PluginNotFound {
            plugin: plugin.to_string(),
            path: self.cni_path(),
        })
    }

    fn cni_path(&self) -> String {
        self.bin_dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(":")
    }

    /// The config one plugin of the chain gets (libcni's buildOneConfig).
    fn plugin_config(
        net: &NetworkList,
        plugin: &Value,
        rt: &RuntimeConf,
        prev: Option<&Value>,
    ) -> Value {
        let mut conf: Map<String, Value> = plugin.as_object().cloned().unwrap_or_default();
        conf.insert("name".into(), json!(net.name));
        conf.insert("cniVersion".into(), json!(net.cni_version));
        if let Some(p) = prev {
            conf.insert("prevResult".into(), p.clone());
        }
        let mut runtime_config = Map::new();
        if let Some(caps) = conf.remove("capabilities").and_then(|c| match c {
            Value::Object(m) => Some(m),
            _ => None,
        }) {
            for (cap, on) in caps {
                if on.as_bool() == Some(true) {
                    if let Some(v) = rt.capability_args.get(&cap) {
                        runtime_config.insert(cap, v.clone());
                    }
                }
            }
        }
        if !runtime_config.is_empty() {
            conf.insert("runtimeConfig".into(), Value::Object(runtime_config));
        }
        Value::Object(conf)
    }

    async fn exec(
        &self,
        verb: &'static str,
        plugin: &Value,
        conf: &Value,
        rt: &RuntimeConf,
    ) -> Result<Option<Value>, CniError> {
        let ty = plugin.get("type").and_then(Value::as_str).unwrap_or("");
        let bin = self.find_plugin(ty)?;
        let args = rt
            .args
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(";");
        let stdin = serde_json::to_vec(conf).unwrap_or_default();
        let mut cmd = tokio::process::Command::new(&bin);
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("CNI_COMMAND", verb)
            .env("CNI_CONTAINERID", &rt.container_id)
            .env("CNI_NETNS", &rt.netns)
            .env("CNI_IFNAME", &rt.ifname)
            .env("CNI_ARGS", args)
            .env("CNI_PATH", self.cni_path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .map_err(|e| CniError::Io(format!("exec {}", bin.display()), e))?;
        if let Some(mut si) = child.stdin.take() {
            use tokio::io::AsyncWriteExt;
            let _ = si.write_all(&stdin).await;
        }
        let out = child
            .wait_with_output()
            .await
            .map_err(|e| CniError::Io(format!("wait {}", bin.display()), e))?;
        if !out.status.success() {
            let msg = match serde_json::from_slice::<Value>(&out.stdout) {
                Ok(v) => {
                    let m = v.get("msg").and_then(Value::as_str).unwrap_or("");
                    let d = v.get("details").and_then(Value::as_str).unwrap_or("");
                    let code = v.get("code").and_then(Value::as_u64).unwrap_or(0);
                    if d.is_empty() {
                        format!("{m} (code {code})")
                    } else {
                        format!("{m}: {d} (code {code})")
                    }
                }
                Err(_) => format!(
                    "{} {}{}",
                    out.status,
                    String::from_utf8_lossy(&out.stdout).trim(),
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            };
            return Err(CniError::Plugin {
                plugin: ty.to_string(),
                verb,
                msg,
            });
        }
        if verb == "ADD" {
            let v = serde_json::from_slice(&out.stdout).map_err(|e| CniError::Plugin {
                plugin: ty.to_string(),
                verb,
                msg: format!("bad result: {e}"),
            })?;
            return Ok(Some(v));
        }
        Ok(None)
    }

    /// ADD over the whole chain; the final result is cached. On failure the chain is DELeted
    /// (so nothing is left behind) and the error returned.
    pub async fn add(&self, net: &NetworkList, rt: &RuntimeConf) -> Result<Value, CniError> {
        let mut prev: Option<Value> = None;
        for plugin in &net.plugins {
            let conf = Self::plugin_config(net, plugin, rt, prev.as_ref());
            match self.exec("ADD", plugin, &conf, rt).await {
                Ok(r) => prev = r,
                Err(e) => {
                    if let Err(d) = self.del_chain(net, rt, None).await {
                        tracing::warn!("CNI DEL after a failed ADD: {d}");
                    }
                    return Err(e);
                }
            }
        }
        let result = prev.unwrap_or_else(|| json!({"cniVersion": net.cni_version}));
        self.write_cache(net, rt, &result);
        Ok(result)
    }

    fn write_cache(&self, net: &NetworkList, rt: &RuntimeConf, result: &Value) {
        let path = self.cache_path(&net.name, rt);
        let entry = json!({
            "kind": "cniCacheV1",
            "containerId": rt.container_id,
            "config": crate::util::base64(&serde_json::to_vec(&net.raw).unwrap_or_default()),
            "ifName": rt.ifname,
            "networkName": net.name,
            "cniArgs": rt.args.iter().map(|(k, v)| json!([k, v])).collect::<Vec<_>>(),
            "capabilityArgs": rt.capability_args,
            "result": result,
        });
        if let Err(e) =
            crate::util::write_atomic(&path, &serde_json::to_vec(&entry).unwrap_or_default())
        {
            tracing::warn!(path = %path.display(), "writing the CNI result cache: {e}");
        }
    }

    /// The cached (network list, result) of an attachment made with network `net`.
    pub fn cached(&self, net: &str, rt: &RuntimeConf) -> Option<(NetworkList, Value)> {
        let bytes = std::fs::read(self.cache_path(net, rt)).ok()?;
        let v: Value = serde_json::from_slice(&bytes).ok()?;
        let conf = v
            .get("config")
            .and_then(Value::as_str)
            .and_then(crate::util::unbase64)?;
        let raw: Value = serde_json::from_slice(&conf).ok()?;
        Some((NetworkList::from_raw(&raw)?, v.get("result").cloned()?))
    }

    async fn del_chain(
        &self,
        net: &NetworkList,
        rt: &RuntimeConf,
        prev: Option<&Value>,
    ) -> Result<(), CniError> {
        let prev = prev.filter(|_| version_at_least(&net.cni_version, 0, 4));
        for plugin in net.plugins.iter().rev() {
            let conf = Self::plugin_config(net, plugin, rt, prev);
            self.exec("DEL", plugin, &conf, rt).await?;
        }
        Ok(())
    }

    /// DEL of an attachment: with the cached config and result when there is one (the config
    /// the attachment was made with), else with `net`. Idempotent.
    pub async fn del(
        &self,
        net_name: &str,
        fallback: Option<&NetworkList>,
        rt: &RuntimeConf,
    ) -> Result<(), CniError> {
        let (net, prev) = match self.cached(net_name, rt) {
            Some((n, r)) => (n, Some(r)),
            None => match fallback {
                Some(n) => (n.clone(), None),
                None => return Ok(()),
            },
        };
        self.del_chain(&net, rt, prev.as_ref()).await?;
        let _ = std::fs::remove_file(self.cache_path(&net.name, rt));
        Ok(())
    }

    /// Bring `lo` up in the pod's netns with the loopback plugin (`loopback`, else
    /// `nestbox-loopback`, from the bin dirs), as containerd's CRI plugin does besides the
    /// configured network.
    pub async fn loopback(&self, rt: &RuntimeConf) -> Result<(), CniError> {
        let ty = ["loopback", "nestbox-loopback"]
            .into_iter()
            .find(|t| self.find_plugin(t).is_ok())
            .ok_or_else(|| CniError::PluginNotFound {
                plugin: "loopback".into(),
                path: self.cni_path(),
            })?;
        let conf = json!({"cniVersion": "0.3.1", "name": "cni-loopback", "type": ty});
        let rt = RuntimeConf {
            ifname: "lo".into(),
            ..rt.clone()
        };
        self.exec("ADD", &conf, &conf, &rt).await.map(|_| ())
    }

    /// CHECK (CNI ≥ 0.4.0, unless the list disables it) against the cached result.
    pub async fn check(&self, net_name: &str, rt: &RuntimeConf) -> Result<(), CniError> {
        let Some((net, prev)) = self.cached(net_name, rt) else {
            return Err(CniError::Plugin {
                plugin: net_name.to_string(),
                verb: "CHECK",
                msg: "no cached result for this attachment".into(),
            });
        };
        if net.disable_check || !version_at_least(&net.cni_version, 0, 4) {
            return Ok(());
        }
        for plugin in &net.plugins {
            let conf = Self::plugin_config(&net, plugin, rt, Some(&prev));
            self.exec("CHECK", plugin, &conf, rt).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_single_conf_becomes_a_one_plugin_list() {
        let n = NetworkList::parse(
            br#"{"cniVersion":"0.4.0","name":"n","type":"bridge","ipam":{}}"#,
            true,
            Path::new("x.conf"),
        )
        .unwrap();
        assert_eq!(n.plugins.len(), 1);
        assert_eq!(n.raw["plugins"][0]["type"], "bridge");
    }

    #[test]
    fn cni_versions_picks_the_highest() {
        let n = NetworkList::parse(
            br#"{"cniVersion":"0.4.0","cniVersions":["1.0.0","1.1.0","0.4.0"],"name":"n","plugins":[{"type":"a"}]}"#,
            false,
            Path::new("x.conflist"),
        )
        .unwrap();
        assert_eq!(n.cni_version, "1.1.0");
    }

    #[test]
    fn runtime_config_carries_only_declared_capabilities() {
        let n = NetworkList::parse(
            br#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"a"},{"type":"portmap","capabilities":{"portMappings":true}}]}"#,
            false,
            Path::new("x.conflist"),
        )
        .unwrap();
        let mut rt = RuntimeConf::default();
        rt.capability_args
            .insert("portMappings".into(), json!([{"hostPort": 8080}]));
        rt.capability_args.insert("bandwidth".into(), json!({}));
        let a = Cni::plugin_config(&n, &n.plugins[0], &rt, None);
        assert!(a.get("runtimeConfig").is_none());
        let prev = json!({"cniVersion":"1.0.0"});
        let p = Cni::plugin_config(&n, &n.plugins[1], &rt, Some(&prev));
        assert_eq!(p["runtimeConfig"]["portMappings"][0]["hostPort"], 8080);
        assert!(p["runtimeConfig"].get("bandwidth").is_none());
        assert!(p.get("capabilities").is_none());
        assert_eq!(p["prevResult"], prev);
        assert_eq!(p["name"], "n");
    }

    #[test]
    fn result_ips_reads_every_version() {
        assert_eq!(
            result_ips(&json!({"ips":[{"address":"10.1.0.5/24"}]})),
            vec!["10.1.0.5"]
        );
        assert_eq!(
            result_ips(&json!({"ip4":{"ip":"10.1.0.6/24"}})),
            vec!["10.1.0.6"]
        );
    }
}
