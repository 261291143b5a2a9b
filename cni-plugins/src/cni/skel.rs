//! The plugin skeleton: read `CNI_*` and stdin, check the version, dispatch the verb,
//! print the result or the error JSON on stdout and return the exit code.

use std::io::{Read, Write};
use std::path::PathBuf;

use serde::Deserialize;
use serde_json::Value;

use super::{version, CniResult, Code, Dns, Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Status,
    Gc,
    Version,
}

impl Command {
    pub fn name(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Status => "STATUS",
            Command::Gc => "GC",
            Command::Version => "VERSION",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            "VERSION" => Command::Version,
            _ => return None,
        })
    }
}

/// Fields every network config shares; plugins parse their own keys from `raw`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct NetConf {
    #[serde(default, rename = "cniVersion")]
    pub cni_version: String,
    #[serde(default)]
    pub name: String,
    #[serde(default, rename = "type")]
    pub plugin_type: String,
    #[serde(default)]
    pub ipam: IpamRef,
    #[serde(default)]
    pub dns: Dns,
    #[serde(default, rename = "prevResult")]
    pub prev_result: Option<Value>,
    #[serde(default, rename = "runtimeConfig")]
    pub runtime_config: Value,
    #[serde(default)]
    pub args: Value,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct IpamRef {
    #[serde(default, rename = "type")]
    pub plugin_type: String,
}

/// Everything a verb needs: the environment, the raw and parsed config.
#[derive(Debug, Clone)]
pub struct CmdArgs {
    pub command: Command,
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
    /// `CNI_ARGS` as given.
    pub args: String,
    pub path: Vec<PathBuf>,
    pub stdin: Vec<u8>,
    pub raw: Value,
    pub conf: NetConf,
    /// The config's version (empty → 0.1.0).
    pub version: String,
}

impl CmdArgs {
    /// `CNI_ARGS` as `(key, value)` pairs.
    pub fn cni_args(&self) -> Vec<(String, String)> {
        parse_cni_args(&self.args)
    }

    pub fn prev_result(&self) -> Result<Option<CniResult>> {
        match &self.conf.prev_result {
            Some(v) if !v.is_null() => CniResult::parse(v).map(Some),
            _ => Ok(None),
        }
    }

    /// Parse the plugin's own config struct out of stdin.
    pub fn plugin_conf<T: serde::de::DeserializeOwned>(&self) -> Result<T> {
        // Straight from the parsed tree (`&Value` is a deserializer): no copy of it.
        T::deserialize(&self.raw)
            .map_err(|e| Error::new(Code::Decode, format!("failed to load netconf: {e}")))
    }
}

pub fn parse_cni_args(s: &str) -> Vec<(String, String)> {
    s.split(';')
        .filter(|kv| !kv.is_empty())
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            Some((k.to_string(), v.to_string()))
        })
        .collect()
}

/// What a plugin implements; the skeleton calls one verb per process.
pub trait Plugin {
    fn add(&self, args: &CmdArgs) -> Result<CniResult>;
    fn del(&self, args: &CmdArgs) -> Result<()>;
    fn check(&self, args: &CmdArgs) -> Result<()>;
    fn status(&self, args: &CmdArgs) -> Result<()>;
    fn gc(&self, args: &CmdArgs) -> Result<()>;
}

fn valid_container_id(id: &str) -> bool {
    let mut chars = id.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace())
}

fn parse_env(stdin: Vec<u8>, env: &dyn Fn(&str) -> Option<String>) -> Result<CmdArgs> {
    let get = |k: &str| env(k).unwrap_or_default();
    let cmd_s = get("CNI_COMMAND");
    if cmd_s.is_empty() {
        return Err(Error::new(
            Code::InvalidEnv,
            "required env variables [CNI_COMMAND] missing",
        ));
    }
    let command = Command::parse(&cmd_s)
        .ok_or_else(|| Error::new(Code::InvalidEnv, format!("unknown CNI_COMMAND: {cmd_s}")))?;
    let required: &[&str] = match command {
        Command::Add | Command::Check => {
            &["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"]
        }
        Command::Del => &["CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"],
        Command::Gc | Command::Status => &["CNI_PATH"],
        Command::Version => &[],
    };
    let missing: Vec<&str> = required
        .iter()
        .copied()
        .filter(|k| get(k).is_empty())
        .collect();
    if !missing.is_empty() {
        return Err(Error::new(
            Code::InvalidEnv,
            format!("required env variables [{}] missing", missing.join(" ")),
        ));
    }
    let path = get("CNI_PATH")
        .split(':')
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .collect();
    Ok(CmdArgs {
        command,
        container_id: get("CNI_CONTAINERID"),
        netns: get("CNI_NETNS"),
        ifname: get("CNI_IFNAME"),
        args: get("CNI_ARGS"),
        path,
        stdin,
        raw: Value::Null,
        conf: NetConf::default(),
        version: String::new(),
    })
}

/// Decode the config and check that its version allows the verb.
fn decode_config(a: &mut CmdArgs) -> Result<()> {
    let raw: Value = serde_json::from_slice(&a.stdin).map_err(|e| {
        Error::new(
            Code::Decode,
            format!("decoding version from network config: {e}"),
        )
    })?;
    let conf = NetConf::deserialize(&raw)
        .map_err(|e| Error::new(Code::Decode, format!("failed to load netconf: {e}")))?;
    let ver = version::of_config(&conf.cni_version).to_string();
    if !version::is_supported(&ver) {
        return Err(
            Error::new(Code::IncompatibleVersion, "incompatible CNI versions").with_details(
                format!(
                    "config is {ver:?}, plugin supports {:?}",
                    version::SUPPORTED
                ),
            ),
        );
    }
    let min = match a.command {
        Command::Check => Some("0.4.0"),
        Command::Gc | Command::Status => Some("1.1.0"),
        _ => None,
    };
    if let Some(min) = min {
        if !version::at_least(&ver, min) {
            return Err(Error::new(
                Code::IncompatibleVersion,
                format!("config version does not allow {}", a.command.name()),
            ));
        }
    }
    if matches!(a.command, Command::Add | Command::Del | Command::Check) {
        if !valid_container_id(&a.container_id) {
            return Err(Error::new(
                Code::InvalidEnv,
                "invalid characters in containerID",
            ));
        }
        if !valid_ifname(&a.ifname) {
            return Err(Error::new(
                Code::InvalidEnv,
                format!("invalid interface name {:?}", a.ifname),
            ));
        }
    }
    a.raw = raw;
    a.conf = conf;
    a.version = ver;
    Ok(())
}

/// Run one verb of `plugin` with the process environment and stdio; returns the exit code.
pub fn run(plugin: &dyn Plugin) -> i32 {
    // Room for a typical config up front: one read takes it all (an empty Vec reads it
    // in growing steps from 32 bytes, a system call each).
    let mut stdin = Vec::with_capacity(16 << 10);
    let _ = std::io::stdin().read_to_end(&mut stdin);
    let (code, out) = run_with(plugin, stdin, &|k| std::env::var(k).ok());
    let mut o = std::io::stdout().lock();
    let _ = o.write_all(out.as_bytes());
    let _ = o.flush();
    code
}

/// The skeleton without process globals (for tests): returns (exit code, stdout).
pub fn run_with(
    plugin: &dyn Plugin,
    stdin: Vec<u8>,
    env: &dyn Fn(&str) -> Option<String>,
) -> (i32, String) {
    let mut args = match parse_env(stdin, env) {
        Ok(a) => a,
        Err(e) => return (1, e.to_json(version::CURRENT)),
    };
    if args.command == Command::Version {
        return (0, version::version_info_json());
    }
    if let Err(e) = decode_config(&mut args) {
        let ver = serde_json::from_slice::<Value>(&args.stdin)
            .ok()
            .and_then(|v| {
                v.get("cniVersion")
                    .and_then(|v| v.as_str())
                    .map(String::from)
            })
            .filter(|v| version::is_supported(v))
            .unwrap_or_else(|| version::CURRENT.to_string());
        return (1, e.to_json(&ver));
    }
    let outcome = match args.command {
        Command::Add => plugin
            .add(&args)
            .and_then(|r| r.to_value(&args.version))
            .map(|v| serde_json::to_string(&v).unwrap_or_default()),
        Command::Del => plugin.del(&args).map(|_| String::new()),
        Command::Check => plugin.check(&args).map(|_| String::new()),
        Command::Status => plugin.status(&args).map(|_| String::new()),
        Command::Gc => plugin.gc(&args).map(|_| String::new()),
        Command::Version => unreachable!("handled above"),
    };
    match outcome {
        Ok(out) => (0, out),
        Err(e) => {
            tracing::debug!(code = e.code, msg = %e.msg, "plugin failed");
            (1, e.to_json(&args.version))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cni_args_split_on_semicolons() {
        assert_eq!(
            parse_cni_args("IgnoreUnknown=1;IP=10.0.0.5;K8S_POD_NAME=a"),
            vec![
                ("IgnoreUnknown".into(), "1".into()),
                ("IP".into(), "10.0.0.5".into()),
                ("K8S_POD_NAME".into(), "a".into())
            ]
        );
    }

    #[test]
    fn container_ids_and_ifnames_are_validated() {
        assert!(valid_container_id("abc-1.2_x"));
        assert!(!valid_container_id("-abc"));
        assert!(!valid_container_id("a/b"));
        assert!(valid_ifname("eth0"));
        assert!(!valid_ifname("a-very-long-interface-name"));
        assert!(!valid_ifname("a/b"));
    }
}
