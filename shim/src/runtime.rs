//! The OCI runtime the shim drives: a runc-compatible CLI (`nestbox` by default; runc works
//! too) called through the `runc` crate. Every invocation is waited for through the shim's
//! reaper (its SIGCHLD thread reaps with waitpid(-1), so `Child::wait` would race it), and a
//! failure carries the last error line the runtime wrote to `<bundle>/log.json`.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::Arc;

use containerd_shim::api::Options as RuncOptions;
use containerd_shim::monitor::{monitor_subscribe, wait_pid, Topic};
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::{CodedInputStream, Message};
use runc::options::{CreateOpts, DeleteOpts, ExecOpts, GlobalOpts, KillOpts};
use runc::Spawner;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The runtime used when no option names one.
pub const DEFAULT_BINARY: &str = "nestbox";
/// State root of the runtime when no option names one; the namespace is appended, as the Go
/// shim does with /run/containerd/runc.
pub const DEFAULT_ROOT: &str = "/run/containerd/nestbox";
/// Where the shim keeps the settings of a bundle's runtime, for `delete` after a dead shim.
pub const OPTIONS_FILE: &str = "options.json";
const LOG_FILE: &str = "log.json";

/// How to run the runtime for one container: the runc shim options containerd sends
/// (`containerd.runc.v1.Options`) or the CRI plugin's `runtimeoptions.v1.Options` whose
/// ConfigPath names a TOML file with the same keys, resolved to a binary path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeOptions {
    pub binary: PathBuf,
    pub root: PathBuf,
    #[serde(default)]
    pub systemd_cgroup: bool,
    #[serde(default)]
    pub no_pivot_root: bool,
    #[serde(default)]
    pub no_new_keyring: bool,
    #[serde(default)]
    pub io_uid: u32,
    #[serde(default)]
    pub io_gid: u32,
}

/// The keys a CRI `ConfigPath` file may set (the names containerd's runc options use in TOML).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
struct ConfigFile {
    #[serde(default)]
    binary_name: String,
    #[serde(default)]
    root: String,
    #[serde(default)]
    systemd_cgroup: bool,
    #[serde(default)]
    no_pivot_root: bool,
    #[serde(default)]
    no_new_keyring: bool,
    #[serde(default)]
    io_uid: u32,
    #[serde(default)]
    io_gid: u32,
}

const RUNC_OPTIONS: &str = "containerd.runc.v1.Options";
const CRI_OPTIONS: &str = "runtimeoptions.v1.Options";

impl RuntimeOptions {
    /// Decode the Create request's options (absent: defaults) for a namespace.
    pub fn from_any(any: Option<&Any>, namespace: &str) -> Result<RuntimeOptions> {
        let file = match any.filter(|a| !a.type_url.is_empty()) {
            None => ConfigFile::default(),
            Some(any) => {
                let name = any.type_url.rsplit('/').next().unwrap_or_default();
                match name {
                    RUNC_OPTIONS => {
                        let o = RuncOptions::parse_from_bytes(&any.value).map_err(|e| {
                            Error::InvalidArgument(format!(
                                "decoding runtime options ({RUNC_OPTIONS}): {e}"
                            ))
                        })?;
                        ConfigFile {
                            binary_name: o.binary_name,
                            root: o.root,
                            systemd_cgroup: o.systemd_cgroup,
                            no_pivot_root: o.no_pivot_root,
                            no_new_keyring: o.no_new_keyring,
                            io_uid: o.io_uid,
                            io_gid: o.io_gid,
                        }
                    }
                    CRI_OPTIONS => match cri_config_path(&any.value)? {
                        Some(path) => read_config_file(&path)?,
                        None => ConfigFile::default(),
                    },
                    other => {
                        return Err(Error::InvalidArgument(format!(
                            "unsupported runtime options type {other:?} (want {RUNC_OPTIONS} or {CRI_OPTIONS})"
                        )))
                    }
                }
            }
        };
        let root = if file.root.is_empty() {
            Path::new(DEFAULT_ROOT).join(namespace)
        } else {
            Path::new(&file.root).join(namespace)
        };
        Ok(RuntimeOptions {
            binary: resolve_binary(&file.binary_name)?,
            root,
            systemd_cgroup: file.systemd_cgroup,
            no_pivot_root: file.no_pivot_root,
            no_new_keyring: file.no_new_keyring,
            io_uid: file.io_uid,
            io_gid: file.io_gid,
        })
    }

    /// Remember the options in the bundle (atomically) for a later `delete`.
    pub fn save(&self, bundle: &Path) -> Result<()> {
        let json = serde_json::to_vec(self).map_err(|e| Error::Other(e.to_string()))?;
        let tmp = bundle.join(format!(".{OPTIONS_FILE}.tmp"));
        std::fs::write(&tmp, json)
            .and_then(|()| std::fs::rename(&tmp, bundle.join(OPTIONS_FILE)))
            .map_err(|e| {
                Error::io(
                    format!("writing {}", bundle.join(OPTIONS_FILE).display()),
                    e,
                )
            })
    }

    /// The options saved in a bundle, else the defaults.
    pub fn load(bundle: &Path, namespace: &str) -> Result<RuntimeOptions> {
        match std::fs::read(bundle.join(OPTIONS_FILE)) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                Error::InvalidArgument(format!("{}: {e}", bundle.join(OPTIONS_FILE).display()))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                RuntimeOptions::from_any(None, namespace)
            }
            Err(e) => Err(Error::io(
                format!("reading {}", bundle.join(OPTIONS_FILE).display()),
                e,
            )),
        }
    }
}

/// `runtimeoptions.v1.Options { string type_url = 1; string config_path = 2; }`: the config
/// path, when set. The message is small enough to decode by field number.
fn cri_config_path(bytes: &[u8]) -> Result<Option<PathBuf>> {
    let bad = |e: &dyn std::fmt::Display| {
        Error::InvalidArgument(format!("decoding runtime options ({CRI_OPTIONS}): {e}"))
    };
    let mut is = CodedInputStream::from_bytes(bytes);
    let mut path = None;
    while let Some(tag) = is.read_raw_tag_or_eof().map_err(|e| bad(&e))? {
        match tag {
            // field 2, length-delimited
            18 => path = Some(is.read_string().map_err(|e| bad(&e))?),
            // field 1, length-delimited
            10 => {
                is.read_string().map_err(|e| bad(&e))?;
            }
            other => return Err(bad(&format!("unexpected field tag {other}"))),
        }
    }
    Ok(path.filter(|p| !p.is_empty()).map(PathBuf::from))
}

fn read_config_file(path: &Path) -> Result<ConfigFile> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::io(format!("reading runtime ConfigPath {}", path.display()), e))?;
    toml::from_str(&text)
        .map_err(|e| Error::InvalidArgument(format!("runtime ConfigPath {}: {e}", path.display())))
}

/// The runtime binary: a path as given, a bare name on PATH; none given: `nestbox` next to
/// the shim's own binary, else on PATH.
pub fn resolve_binary(name: &str) -> Result<PathBuf> {
    if name.contains('/') {
        let p = PathBuf::from(name);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(Error::InvalidArgument(format!(
                "runtime binary {name} does not exist"
            )))
        };
    }
    let name = if name.is_empty() {
        if let Some(beside) = std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(|d| d.join(DEFAULT_BINARY)))
            .filter(|p| p.is_file())
        {
            return Ok(beside);
        }
        DEFAULT_BINARY
    } else {
        name
    };
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            Error::InvalidArgument(format!(
                "runtime binary {name:?} not found next to the shim or on PATH"
            ))
        })
}

/// Runs runtime commands as children of the shim and waits for them through the reaper's
/// monitor: subscribed before the spawn, so the exit cannot be missed.
#[derive(Debug, Default)]
struct Reaped;

impl Spawner for Reaped {
    fn execute(
        &self,
        mut cmd: std::process::Command,
    ) -> runc::Result<(ExitStatus, u32, String, String)> {
        let sub = monitor_subscribe(Topic::Pid).map_err(|e| {
            runc::error::Error::Other(Box::new(std::io::Error::other(e.to_string())))
        })?;
        let mut child = cmd
            .spawn()
            .map_err(runc::error::Error::ProcessSpawnFailed)?;
        let pid = child.id();
        let read = |pipe: Option<&mut dyn std::io::Read>| {
            let mut s = Vec::new();
            if let Some(p) = pipe {
                let _ = p.read_to_end(&mut s);
            }
            String::from_utf8_lossy(&s).into_owned()
        };
        let mut stdout = child.stdout.take();
        let mut stderr = child.stderr.take();
        let (out, err) = std::thread::scope(|s| {
            let e = s.spawn(|| read(stderr.as_mut().map(|p| p as &mut dyn std::io::Read)));
            let o = read(stdout.as_mut().map(|p| p as &mut dyn std::io::Read));
            (o, e.join().unwrap_or_default())
        });
        let code = wait_pid(pid as i32, sub);
        // The monitor gives an exit code (128+n after a signal); keep it as a wait status.
        Ok((ExitStatus::from_raw((code & 0xff) << 8), pid, out, err))
    }
}

/// One container's runtime: the binary with its global flags, logging to the bundle.
#[derive(Clone)]
pub struct Runtime {
    client: Arc<runc::Runc>,
    log: PathBuf,
    pub options: RuntimeOptions,
}

impl Runtime {
    pub fn new(options: RuntimeOptions, bundle: &Path) -> Result<Runtime> {
        let log = bundle.join(LOG_FILE);
        let mut global = GlobalOpts::new()
            .command(&options.binary)
            .root(&options.root)
            .log(&log)
            .log_json()
            .systemd_cgroup(options.systemd_cgroup);
        global.custom_spawner(Arc::new(Reaped));
        let client = global.build().map_err(|e| {
            Error::InvalidArgument(format!("runtime {}: {e}", options.binary.display()))
        })?;
        Ok(Runtime {
            client: Arc::new(client),
            log,
            options,
        })
    }

    pub fn binary(&self) -> &Path {
        &self.options.binary
    }

    /// A runtime failure with the last error the runtime logged (else its output).
    fn fail(&self, op: &str, e: runc::error::Error) -> Error {
        let logged = last_error(&self.log);
        let msg = match (logged, e) {
            (Some(m), _) => m,
            (
                None,
                runc::error::Error::CommandFailed {
                    status,
                    stdout,
                    stderr,
                },
            ) => {
                let out = format!("{stdout}{stderr}");
                let out = out.trim();
                if out.is_empty() {
                    format!("exited with {status}")
                } else {
                    out.to_owned()
                }
            }
            (None, e) => e.to_string(),
        };
        Error::Runtime {
            op: format!("{} {op}", self.binary().display()),
            msg,
        }
    }

    /// Truncate the log before a call whose failure we report (old errors must not be taken
    /// for new ones).
    fn fresh_log(&self) {
        let _ = std::fs::File::create(&self.log);
    }

    pub fn create(&self, id: &str, bundle: &Path, opts: &CreateOpts) -> Result<()> {
        self.fresh_log();
        self.client
            .create(id, bundle, Some(opts))
            .map(|_| ())
            .map_err(|e| self.fail("create", e))
    }

    pub fn start(&self, id: &str) -> Result<()> {
        self.fresh_log();
        self.client
            .start(id)
            .map(|_| ())
            .map_err(|e| self.fail("start", e))
    }

    pub fn exec(&self, id: &str, spec: &oci_spec::runtime::Process, opts: &ExecOpts) -> Result<()> {
        self.fresh_log();
        self.client
            .exec(id, spec, Some(opts))
            .map_err(|e| self.fail("exec", e))
    }

    pub fn kill(&self, id: &str, signal: u32, all: bool) -> Result<()> {
        self.fresh_log();
        self.client
            .kill(id, signal, Some(&KillOpts::new().all(all)))
            .map_err(|e| self.fail("kill", e))
    }

    pub fn delete(&self, id: &str, force: bool) -> Result<()> {
        self.fresh_log();
        self.client
            .delete(id, Some(&DeleteOpts::new().force(force)))
            .map_err(|e| self.fail("delete", e))
    }

    pub fn pause(&self, id: &str) -> Result<()> {
        self.client.pause(id).map_err(|e| self.fail("pause", e))
    }

    pub fn resume(&self, id: &str) -> Result<()> {
        self.client.resume(id).map_err(|e| self.fail("resume", e))
    }

    pub fn ps(&self, id: &str) -> Result<Vec<usize>> {
        self.client.ps(id).map_err(|e| self.fail("ps", e))
    }

    pub fn update(&self, id: &str, resources: &oci_spec::runtime::LinuxResources) -> Result<()> {
        self.client
            .update(id, resources)
            .map_err(|e| self.fail("update", e))
    }
}

/// Whether a runtime error says the container or process is already gone: the wording
/// runc-compatible runtimes use, which callers match on.
pub fn is_gone(e: &Error) -> bool {
    let text = e.to_string();
    [
        "not running",
        "no such process",
        "does not exist",
        "process already finished",
    ]
    .iter()
    .any(|w| text.contains(w))
}

/// The message of the last `"level":"error"` line of a runtime's JSON log.
fn last_error(log: &Path) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    text.lines().rev().find_map(|line| {
        let v: serde_json::Value = serde_json::from_str(line).ok()?;
        (v["level"] == "error")
            .then(|| v["msg"].as_str().map(str::to_owned))
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn any(type_url: &str, value: Vec<u8>) -> Any {
        let mut a = Any::new();
        a.type_url = type_url.to_owned();
        a.value = value;
        a
    }

    #[test]
    fn runc_options_pick_binary_root_and_flags() {
        let mut o = RuncOptions::new();
        o.binary_name = "/bin/sh".to_owned();
        o.root = "/run/x".to_owned();
        o.systemd_cgroup = true;
        let bytes = o.write_to_bytes().expect("encode");
        let opts =
            RuntimeOptions::from_any(Some(&any(RUNC_OPTIONS, bytes)), "ns1").expect("decode");
        assert_eq!(opts.binary, PathBuf::from("/bin/sh"));
        assert_eq!(opts.root, PathBuf::from("/run/x/ns1"));
        assert!(opts.systemd_cgroup);
    }

    #[test]
    fn malformed_options_name_their_type() {
        let err = RuntimeOptions::from_any(Some(&any(RUNC_OPTIONS, vec![0xff, 0xff, 0xff])), "n")
            .expect_err("garbage must not decode");
        assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
        assert!(err.to_string().contains(RUNC_OPTIONS), "{err}");
        let err = RuntimeOptions::from_any(Some(&any("x.y/Unknown", vec![])), "n")
            .expect_err("unknown type");
        assert!(err.to_string().contains("Unknown"), "{err}");
    }

    #[test]
    fn cri_options_read_the_config_path() {
        let dir = std::env::temp_dir().join(format!("nestbox-shim-opts-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let conf = dir.join("runtime.toml");
        std::fs::write(&conf, "BinaryName = \"/bin/sh\"\nRoot = \"/run/y\"\n").expect("write");
        // type_url = "x" (field 1), config_path (field 2)
        let mut bytes = vec![10, 1, b'x', 18, conf.as_os_str().len() as u8];
        bytes.extend_from_slice(conf.as_os_str().as_encoded_bytes());
        let opts =
            RuntimeOptions::from_any(Some(&any(CRI_OPTIONS, bytes)), "k8s.io").expect("decode");
        assert_eq!(opts.binary, PathBuf::from("/bin/sh"));
        assert_eq!(opts.root, PathBuf::from("/run/y/k8s.io"));
        std::fs::write(&conf, "Bogus = 1\n").expect("write");
        let mut bytes = vec![18, conf.as_os_str().len() as u8];
        bytes.extend_from_slice(conf.as_os_str().as_encoded_bytes());
        let err = RuntimeOptions::from_any(Some(&any(CRI_OPTIONS, bytes)), "k8s.io")
            .expect_err("unknown key");
        assert!(err.to_string().contains("Bogus"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn last_error_line_wins() {
        let dir = std::env::temp_dir().join(format!("nestbox-shim-log-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let log = dir.join("log.json");
        std::fs::write(
            &log,
            "{\"level\":\"error\",\"msg\":\"first\"}\n{\"level\":\"warning\",\"msg\":\"w\"}\n{\"level\":\"error\",\"msg\":\"second\"}\n{\"level\":\"info\",\"msg\":\"i\"}\n",
        )
        .expect("write");
        assert_eq!(last_error(&log).as_deref(), Some("second"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
