//! The pod's API status from what the worker knows: phase (the kubelet's `getPhase`),
//! conditions, IPs, QoS class and container statuses with their states and reasons.

use k8s_openapi::api::core::v1::{
    Container, ContainerState as ApiState, ContainerStateRunning, ContainerStateTerminated,
    ContainerStateWaiting, ContainerStatus, HostIP, Pod, PodCondition, PodIP, PodStatus,
};

use super::state::{ContainerState, Phase, PodState, Terminated};
use crate::util::time_from_unix_nanos;

pub fn restart_policy(pod: &Pod) -> &str {
    pod.spec
        .as_ref()
        .and_then(|s| s.restart_policy.as_deref())
        .unwrap_or("Always")
}

/// Whether a container that exited with `code` is started again.
pub fn should_restart(policy: &str, code: i32) -> bool {
    match policy {
        "Never" => false,
        "OnFailure" => code != 0,
        _ => true,
    }
}

fn terminated(t: &Terminated, runtime: &str) -> ContainerStateTerminated {
    ContainerStateTerminated {
        exit_code: t.exit_code,
        signal: (t.signal != 0).then_some(t.signal),
        reason: Some(t.reason.clone()).filter(|s| !s.is_empty()),
        message: Some(t.message.clone()).filter(|s| !s.is_empty()),
        started_at: (t.started_at != 0).then(|| time_from_unix_nanos(t.started_at)),
        finished_at: (t.finished_at != 0).then(|| time_from_unix_nanos(t.finished_at)),
        container_id: (!t.container_id.is_empty())
            .then(|| format!("{runtime}://{}", t.container_id)),
    }
}

fn container_status(
    c: &Container,
    cs: Option<&ContainerState>,
    default_reason: &str,
    runtime: &str,
) -> ContainerStatus {
    let image = c.image.clone().unwrap_or_default();
    let Some(cs) = cs else {
        return ContainerStatus {
            name: c.name.clone(),
            image,
            image_id: String::new(),
            ready: false,
            restart_count: 0,
            started: Some(false),
            state: Some(ApiState {
                waiting: Some(ContainerStateWaiting {
                    reason: Some(default_reason.to_string()),
                    message: None,
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
    };
    let state = match cs.phase {
        Phase::Running => ApiState {
            running: Some(ContainerStateRunning {
                started_at: Some(time_from_unix_nanos(cs.started_at)),
            }),
            ..Default::default()
        },
        Phase::Exited => ApiState {
            terminated: cs.exited.as_ref().map(|t| terminated(t, runtime)),
            ..Default::default()
        },
        Phase::Waiting => ApiState {
            waiting: Some(ContainerStateWaiting {
                reason: Some(if cs.waiting_reason.is_empty() {
                    default_reason.to_string()
                } else {
                    cs.waiting_reason.clone()
                }),
                message: Some(cs.waiting_message.clone()).filter(|s| !s.is_empty()),
            }),
            ..Default::default()
        },
    };
    let last = cs.last.as_ref().map(|t| ApiState {
        terminated: Some(terminated(t, runtime)),
        ..Default::default()
    });
    ContainerStatus {
        name: c.name.clone(),
        image,
        image_id: cs.image_id.clone(),
        container_id: (!cs.id.is_empty()).then(|| format!("{runtime}://{}", cs.id)),
        ready: cs.phase == Phase::Running,
        restart_count: cs.restarts as i32,
        started: Some(cs.phase == Phase::Running),
        state: Some(state),
        last_state: last,
        ..Default::default()
    }
}

fn cond(
    ty: &str,
    ok: bool,
    reason: Option<&str>,
    message: Option<String>,
    old: Option<&PodStatus>,
) -> PodCondition {
    let status = if ok { "True" } else { "False" };
    // Keep the transition time while the status stays the same.
    let prev = old
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == ty))
        .filter(|c| c.status == status)
        .and_then(|c| c.last_transition_time.clone());
    PodCondition {
        type_: ty.to_string(),
        status: status.to_string(),
        reason: if ok { None } else { reason.map(str::to_owned) },
        message: if ok { None } else { message },
        last_transition_time: Some(prev.unwrap_or_else(crate::util::now_time)),
        last_probe_time: None,
        ..Default::default()
    }
}

/// The phase (the kubelet's getPhase over our container states).
pub fn phase(pod: &Pod, st: &PodState) -> &'static str {
    let Some(spec) = pod.spec.as_ref() else {
        return "Pending";
    };
    let policy = restart_policy(pod);
    let mut pending_init = false;
    for c in spec.init_containers.iter().flatten() {
        match st.init.get(&c.name) {
            Some(cs) if cs.phase == Phase::Exited => {
                let code = cs.exited.as_ref().map(|t| t.exit_code).unwrap_or(0);
                if code != 0 {
                    if policy == "Never" {
                        return "Failed";
                    }
                    pending_init = true;
                }
            }
            _ => pending_init = true,
        }
    }
    if pending_init {
        return "Pending";
    }
    let (mut running, mut waiting, mut stopped, mut succeeded) = (0, 0, 0, 0);
    for c in &spec.containers {
        match st.apps.get(&c.name) {
            Some(cs) => match cs.phase {
                Phase::Running => running += 1,
                Phase::Exited => {
                    stopped += 1;
                    if cs.exited.as_ref().is_some_and(|t| t.exit_code == 0) {
                        succeeded += 1;
                    }
                }
                Phase::Waiting => {
                    if cs.last.is_some() {
                        stopped += 1;
                    } else {
                        waiting += 1;
                    }
                }
            },
            None => waiting += 1,
        }
    }
    if waiting > 0 {
        "Pending"
    } else if running > 0 {
        "Running"
    } else if stopped > 0 {
        match policy {
            "Always" => "Running",
            "OnFailure" if stopped != succeeded => "Running",
            _ if stopped == succeeded => "Succeeded",
            _ => "Failed",
        }
    } else {
        "Pending"
    }
}

/// The whole status. `sandbox_message` explains a pod that has no sandbox yet.
pub fn compute(
    pod: &Pod,
    st: &PodState,
    host_ip: &str,
    runtime: &str,
    old: Option<&PodStatus>,
    sandbox_message: Option<&str>,
) -> PodStatus {
    let spec = pod.spec.clone().unwrap_or_default();
    let phase = phase(pod, st);
    let inits_done = spec.init_containers.iter().flatten().all(|c| {
        st.init.get(&c.name).is_some_and(|cs| {
            cs.phase == Phase::Exited && cs.exited.as_ref().is_some_and(|t| t.exit_code == 0)
        })
    });
    let app_default = if !inits_done {
        "PodInitializing"
    } else {
        "ContainerCreating"
    };
    let init_default = if st.sandbox.is_none() {
        "ContainerCreating"
    } else {
        "PodInitializing"
    };
    let init_statuses: Vec<ContainerStatus> = spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| {
            let mut s = container_status(c, st.init.get(&c.name), init_default, runtime);
            // An init container is ready once it completed successfully.
            s.ready = st.init.get(&c.name).is_some_and(|cs| {
                cs.phase == Phase::Exited && cs.exited.as_ref().is_some_and(|t| t.exit_code == 0)
            });
            s
        })
        .collect();
    let statuses: Vec<ContainerStatus> = spec
        .containers
        .iter()
        .map(|c| container_status(c, st.apps.get(&c.name), app_default, runtime))
        .collect();
    let unready: Vec<&str> = statuses
        .iter()
        .filter(|s| !s.ready)
        .map(|s| s.name.as_str())
        .collect();
    let uninit: Vec<&str> = init_statuses
        .iter()
        .filter(|s| !s.ready)
        .map(|s| s.name.as_str())
        .collect();
    let terminal = phase == "Succeeded" || phase == "Failed";
    let ready = unready.is_empty() && !terminal;
    let ready_reason = if terminal {
        "PodCompleted"
    } else {
        "ContainersNotReady"
    };
    let ready_msg = (!unready.is_empty())
        .then(|| format!("containers with unready status: [{}]", unready.join(" ")));
    let mut conditions = vec![
        cond(
            "Initialized",
            uninit.is_empty(),
            Some("ContainersNotInitialized"),
            Some(format!(
                "containers with incomplete status: [{}]",
                uninit.join(" ")
            )),
            old,
        ),
        cond("Ready", ready, Some(ready_reason), ready_msg.clone(), old),
        cond("ContainersReady", ready, Some(ready_reason), ready_msg, old),
    ];
    // PodScheduled is the scheduler's; keep it (static pods: ours).
    let scheduled = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "PodScheduled").cloned())
        .unwrap_or_else(|| cond("PodScheduled", true, None, None, old));
    conditions.insert(0, scheduled);
    let ips: Vec<String> = st
        .sandbox
        .as_ref()
        .map(|s| {
            if s.host_network {
                vec![host_ip.to_string()]
            } else {
                s.ips.clone()
            }
        })
        .unwrap_or_default();
    let ips = if terminal && st.sandbox.is_none() {
        // A finished pod keeps the IPs it had (the kubelet reports them too).
        old.and_then(|o| o.pod_ips.as_ref())
            .map(|v| v.iter().map(|p| p.ip.clone()).collect())
            .unwrap_or_default()
    } else {
        ips
    };
    PodStatus {
        phase: Some(phase.to_string()),
        conditions: Some(conditions),
        host_ip: Some(host_ip.to_string()),
        host_ips: Some(vec![HostIP {
            ip: host_ip.to_string(),
        }]),
        pod_ip: ips.first().cloned(),
        pod_ips: (!ips.is_empty()).then(|| ips.iter().map(|ip| PodIP { ip: ip.clone() }).collect()),
        start_time: (st.start_time != 0).then(|| time_from_unix_nanos(st.start_time)),
        qos_class: Some(super::env::qos(pod).as_str().to_string()),
        container_statuses: Some(statuses),
        init_container_statuses: (!init_statuses.is_empty()).then_some(init_statuses),
        message: sandbox_message.map(str::to_owned),
        ..Default::default()
    }
}

/// Two statuses equal but for the transition times (to skip no-op patches).
pub fn same(a: &PodStatus, b: &PodStatus) -> bool {
    let strip = |s: &PodStatus| {
        let mut s = s.clone();
        for c in s.conditions.iter_mut().flatten() {
            c.last_transition_time = None;
        }
        serde_json::to_value(&s).unwrap_or_default()
    };
    strip(a) == strip(b)
}
