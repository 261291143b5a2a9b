//! The overlay's CNI plugin (`nestbox-vxlan`, `nestbox-host-gw`; `flannel` as a drop-in),
//! with flannel's CNI semantics: read the agent's (nestbox-overlayd's) subnet.env and
//! delegate to the bridge plugin with `isGateway`, the overlay MTU,
//! `ipMasq: !FLANNEL_IPMASQ` and host-local over the node's subnet (route to the cluster
//! network), plus the user's `delegate` keys. The delegate config is saved at
//! `<dataDir>/<containerID>` so DEL works after subnet.env changed or vanished.
//! subnet.env missing at ADD → code 11 (try again later): the agent is starting.

pub mod subnet_env;

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::cni::skel::{CmdArgs, Plugin};
use crate::cni::{invoke, CniResult, Code, Error, Result};
use subnet_env::{SubnetEnv, DEFAULT_SUBNET_FILE};

pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/flannel";

#[derive(Debug, Deserialize)]
struct Conf {
    #[serde(default, rename = "subnetFile")]
    subnet_file: Option<PathBuf>,
    #[serde(default, rename = "dataDir")]
    data_dir: Option<PathBuf>,
    #[serde(default)]
    delegate: Option<Map<String, Value>>,
    /// Base IPAM config (flannel merges its ranges and routes into it).
    #[serde(default)]
    ipam: Option<Map<String, Value>>,
}

/// `nestbox-vxlan` / `nestbox-host-gw` / `flannel` (same behaviour: the agent's backend
/// decides).
pub struct Overlay;

fn conf(args: &CmdArgs) -> Result<Conf> {
    args.plugin_conf()
}

fn saved_path(c: &Conf, container_id: &str) -> PathBuf {
    c.data_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR))
        .join(container_id)
}

/// flannel's delegate config for this node's subnet.env.
pub fn delegate_conf(
    args: &CmdArgs,
    env: &SubnetEnv,
    user: Option<&Map<String, Value>>,
    ipam_base: Option<&Map<String, Value>>,
) -> Value {
    let mut d = Map::new();
    d.insert("type".into(), json!("nestbox-bridge"));
    if let Some(user) = user {
        for (k, v) in user {
            d.insert(k.clone(), v.clone());
        }
    }
    d.insert("name".into(), json!(args.conf.name));
    d.insert("cniVersion".into(), json!(args.version));
    d.entry("isGateway").or_insert(json!(true));
    if d.get("isDefaultGateway").and_then(|v| v.as_bool()) == Some(true) {
        d.insert("isGateway".into(), json!(true));
    }
    d.entry("mtu").or_insert(json!(env.mtu));
    d.entry("ipMasq").or_insert(json!(!env.ipmasq));
    let mut ipam = ipam_base.cloned().unwrap_or_default();
    ipam.entry("type").or_insert(json!("nestbox-host-local"));
    // FLANNEL_SUBNET parsed as a CIDR, i.e. its network (flannel's Go ParseCIDR does the same).
    ipam.entry("ranges")
        .or_insert(json!([[{"subnet": env.lease().to_string()}]]));
    ipam.entry("routes")
        .or_insert(json!([{"dst": env.network.to_string()}]));
    d.entry("ipam").or_insert(Value::Object(ipam));
    if let Some(rc) = args.raw.get("runtimeConfig") {
        d.entry("runtimeConfig").or_insert(rc.clone());
    }
    Value::Object(d)
}

/// Temp file + fsync + rename: a reader (the plugin, a later DEL) never sees half a file.
fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp.{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

fn delegate_type(d: &Value) -> Result<String> {
    d.get("type")
        .and_then(|t| t.as_str())
        .map(String::from)
        .ok_or_else(|| Error::config("delegate has no type"))
}

fn exec_delegate(args: &CmdArgs, d: &Value, verb: &str) -> Result<Vec<u8>> {
    let exe = invoke::find_in_path(&delegate_type(d)?, &args.path)?;
    let stdin = serde_json::to_vec(d).map_err(|e| Error::internal(e.to_string()))?;
    invoke::exec(&exe, verb, &stdin, &[])
}

fn read_env(c: &Conf) -> Result<Option<SubnetEnv>> {
    let path = c
        .subnet_file
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SUBNET_FILE));
    match SubnetEnv::read(&path) {
        Ok(Some(e)) => Ok(Some(e)),
        Ok(None) => Ok(None),
        Err(e) => Err(Error::io(path.display(), e)),
    }
}

impl Plugin for Overlay {
    fn add(&self, args: &CmdArgs) -> Result<CniResult> {
        let c = conf(args)?;
        let env = read_env(&c)?.ok_or_else(|| {
            Error::new(
                Code::TryAgainLater,
                "subnet.env not written yet: the overlay agent (nestbox-overlayd) is not running or still starting",
            )
        })?;
        let d = delegate_conf(args, &env, c.delegate.as_ref(), c.ipam.as_ref());
        let bytes = serde_json::to_vec(&d).map_err(|e| Error::internal(e.to_string()))?;
        let saved = saved_path(&c, &args.container_id);
        write_atomic(&saved, &bytes).map_err(|e| Error::io(saved.display(), e))?;
        let out = exec_delegate(args, &d, "ADD")?;
        let v: Value = serde_json::from_slice(&out)
            .map_err(|e| Error::new(Code::Decode, format!("decoding delegate result: {e}")))?;
        CniResult::parse(&v)
    }

    fn del(&self, args: &CmdArgs) -> Result<()> {
        let c = conf(args)?;
        let path = saved_path(&c, &args.container_id);
        let d: Value = match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|e| Error::new(Code::Decode, format!("{}: {e}", path.display())))?,
            // Never added (or already deleted): nothing to do.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(Error::io(path.display(), e)),
        };
        exec_delegate(args, &d, "DEL")?;
        let _ = std::fs::remove_file(&path);
        Ok(())
    }

    fn check(&self, args: &CmdArgs) -> Result<()> {
        let c = conf(args)?;
        let path = saved_path(&c, &args.container_id);
        let b = std::fs::read(&path).map_err(|e| Error::io(path.display(), e))?;
        let mut d: Value = serde_json::from_slice(&b)
            .map_err(|e| Error::new(Code::Decode, format!("{}: {e}", path.display())))?;
        if let (Some(obj), Some(prev)) = (d.as_object_mut(), args.raw.get("prevResult")) {
            obj.insert("prevResult".into(), prev.clone());
        }
        exec_delegate(args, &d, "CHECK").map(|_| ())
    }

    fn status(&self, args: &CmdArgs) -> Result<()> {
        let c = conf(args)?;
        match read_env(&c)? {
            Some(_) => Ok(()),
            None => Err(Error::new(Code::NotAvailable, "subnet.env not written yet")),
        }
    }

    fn gc(&self, _args: &CmdArgs) -> Result<()> {
        Ok(())
    }
}
