//! A blocking CRI client (the kubelet's side of containerd's CRI plugin) for tests and the
//! shim benchmark: the `k8s-cri` v1 protos over tonic, on a private single-thread runtime.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::{Channel, Endpoint, Uri};

pub use k8s_cri::v1::{ContainerState, ContainerStatus, PodSandboxConfig};

pub struct Cri {
    rt: tokio::runtime::Runtime,
    runtime: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
}

/// A failed CRI call: the gRPC status message.
pub type Result<T> = std::result::Result<T, String>;

fn status(e: tonic::Status) -> String {
    format!("{:?}: {}", e.code(), e.message())
}

impl Cri {
    /// Connect to a CRI endpoint (containerd's socket).
    pub fn connect(socket: &Path) -> Cri {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let path = socket.to_path_buf();
        let channel = rt
            .block_on(async {
                Endpoint::try_from("http://[::]:50051")
                    .expect("endpoint")
                    .connect_with_connector(tower::service_fn(move |_: Uri| {
                        let path = path.clone();
                        async move {
                            Ok::<_, std::io::Error>(TokioIo::new(
                                tokio::net::UnixStream::connect(path).await?,
                            ))
                        }
                    }))
                    .await
            })
            .expect("connect to the CRI socket");
        Cri {
            rt,
            runtime: RuntimeServiceClient::new(channel.clone()),
            images: ImageServiceClient::new(channel),
        }
    }

    /// A pod config as the kubelet would send for a pod `name`: pod-wide net/ipc, its own pid
    /// namespace per container, logs under `log_dir`.
    pub fn pod_config(name: &str, log_dir: &Path) -> PodSandboxConfig {
        PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: name.to_owned(),
                uid: format!("uid-{name}"),
                namespace: "default".to_owned(),
                attempt: 0,
            }),
            hostname: name.to_owned(),
            log_directory: log_dir.display().to_string(),
            linux: Some(cri::LinuxPodSandboxConfig {
                security_context: Some(cri::LinuxSandboxSecurityContext {
                    namespace_options: Some(cri::NamespaceOption {
                        network: cri::NamespaceMode::Pod as i32,
                        pid: cri::NamespaceMode::Container as i32,
                        ipc: cri::NamespaceMode::Pod as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    pub fn run_pod(&mut self, config: &PodSandboxConfig, handler: &str) -> Result<String> {
        let req = cri::RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: handler.to_owned(),
        };
        let r = self
            .rt
            .block_on(self.runtime.run_pod_sandbox(req))
            .map_err(status)?;
        Ok(r.into_inner().pod_sandbox_id)
    }

    pub fn pod_ip(&mut self, pod: &str) -> Result<String> {
        let req = cri::PodSandboxStatusRequest {
            pod_sandbox_id: pod.to_owned(),
            verbose: false,
        };
        let r = self
            .rt
            .block_on(self.runtime.pod_sandbox_status(req))
            .map_err(status)?;
        Ok(r.into_inner()
            .status
            .and_then(|s| s.network)
            .map(|n| n.ip)
            .unwrap_or_default())
    }

    /// Create a container `name` running `command` from `image`, with an optional memory
    /// limit; its log goes to `<log_dir>/<name>.log`.
    pub fn create_container(
        &mut self,
        pod: &str,
        pod_config: &PodSandboxConfig,
        name: &str,
        image: &str,
        command: &[&str],
        memory_limit: Option<i64>,
    ) -> Result<String> {
        let config = cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata {
                name: name.to_owned(),
                attempt: 0,
            }),
            image: Some(cri::ImageSpec {
                image: image.to_owned(),
                ..Default::default()
            }),
            command: command.iter().map(|s| s.to_string()).collect(),
            envs: vec![cri::KeyValue {
                key: "NAME".to_owned(),
                value: name.to_owned(),
            }],
            log_path: format!("{name}.log"),
            labels: HashMap::new(),
            linux: Some(cri::LinuxContainerConfig {
                resources: memory_limit.map(|m| cri::LinuxContainerResources {
                    memory_limit_in_bytes: m,
                    ..Default::default()
                }),
                security_context: Some(cri::LinuxContainerSecurityContext {
                    namespace_options: pod_config
                        .linux
                        .as_ref()
                        .and_then(|l| l.security_context.as_ref())
                        .and_then(|s| s.namespace_options.clone()),
                    ..Default::default()
                }),
            }),
            ..Default::default()
        };
        let req = cri::CreateContainerRequest {
            pod_sandbox_id: pod.to_owned(),
            config: Some(config),
            sandbox_config: Some(pod_config.clone()),
        };
        let r = self
            .rt
            .block_on(self.runtime.create_container(req))
            .map_err(status)?;
        Ok(r.into_inner().container_id)
    }

    pub fn start_container(&mut self, id: &str) -> Result<()> {
        let req = cri::StartContainerRequest {
            container_id: id.to_owned(),
        };
        self.rt
            .block_on(self.runtime.start_container(req))
            .map_err(status)?;
        Ok(())
    }

    /// (exit code, stdout, stderr) of a command run in the container.
    pub fn exec_sync(&mut self, id: &str, cmd: &[&str]) -> Result<(i32, String, String)> {
        let req = cri::ExecSyncRequest {
            container_id: id.to_owned(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout: 30,
        };
        let r = self
            .rt
            .block_on(self.runtime.exec_sync(req))
            .map_err(status)?
            .into_inner();
        Ok((
            r.exit_code,
            String::from_utf8_lossy(&r.stdout).into_owned(),
            String::from_utf8_lossy(&r.stderr).into_owned(),
        ))
    }

    pub fn container_status(&mut self, id: &str) -> Result<ContainerStatus> {
        let req = cri::ContainerStatusRequest {
            container_id: id.to_owned(),
            verbose: false,
        };
        let r = self
            .rt
            .block_on(self.runtime.container_status(req))
            .map_err(status)?;
        r.into_inner()
            .status
            .ok_or_else(|| format!("no status for container {id}"))
    }

    pub fn stop_pod(&mut self, pod: &str) -> Result<()> {
        let req = cri::StopPodSandboxRequest {
            pod_sandbox_id: pod.to_owned(),
        };
        self.rt
            .block_on(self.runtime.stop_pod_sandbox(req))
            .map_err(status)?;
        Ok(())
    }

    pub fn remove_pod(&mut self, pod: &str) -> Result<()> {
        let req = cri::RemovePodSandboxRequest {
            pod_sandbox_id: pod.to_owned(),
        };
        self.rt
            .block_on(self.runtime.remove_pod_sandbox(req))
            .map_err(status)?;
        Ok(())
    }

    /// Whether the image is known to the CRI plugin.
    pub fn has_image(&mut self, image: &str) -> bool {
        let req = cri::ImageStatusRequest {
            image: Some(cri::ImageSpec {
                image: image.to_owned(),
                ..Default::default()
            }),
            verbose: false,
        };
        self.rt
            .block_on(self.images.image_status(req))
            .map(|r| r.into_inner().image.is_some())
            .unwrap_or(false)
    }

    /// Poll the container's state until `done` says so (or the time is up).
    pub fn wait_status(
        &mut self,
        id: &str,
        secs: u64,
        done: impl Fn(&ContainerStatus) -> bool,
    ) -> Result<ContainerStatus> {
        let deadline = std::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let st = self.container_status(id)?;
            if done(&st) || std::time::Instant::now() >= deadline {
                return Ok(st);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
