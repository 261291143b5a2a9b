//! The shim's Task API driven directly over ttrpc, as containerd's task manager and nestlet
//! drive it: the shim started with `start` (cwd = bundle, TTRPC_ADDRESS = an events service
//! this test serves), every call checked, and the events it forwards checked in order. Runs
//! with nestbox and with runc as the runtime (the runtime options' BinaryName), and feeds it
//! bad input: each gets a clear gRPC error and the pod's other containers keep being served.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use containerd_shim_protos::api::{
    CreateTaskRequest, DeleteRequest, ExecProcessRequest, KillRequest, PauseRequest, PidsRequest,
    ResizePtyRequest, ResumeRequest, ShutdownRequest, StartRequest, StateRequest, StatsRequest,
    Status, WaitRequest,
};
use containerd_shim_protos::events::task::{TaskExecStarted, TaskExit};
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::Message;
use containerd_shim_protos::shim::events::ForwardRequest;
use containerd_shim_protos::shim::oci::Options;
use containerd_shim_protos::ttrpc::{self, context::Context, Client, Code, Server};
use containerd_shim_protos::types::empty::Empty;
use containerd_shim_protos::{create_events, Events, TaskClient};
use nestbox_tests::{bin, require_cmd, run, shim_dir, unique, wait_until, Bundle, NetNs, TempDir};
use serde_json::json;

/// Events the shim forwarded: (topic, event type, raw event).
#[derive(Default)]
struct Recorder {
    seen: Mutex<Vec<(String, String, Vec<u8>)>>,
}

impl Events for Recorder {
    fn forward(&self, _: &ttrpc::TtrpcContext, req: ForwardRequest) -> ttrpc::Result<Empty> {
        let env = req.envelope.unwrap_or_default();
        let ev = env.event.clone().unwrap_or_default();
        self.seen
            .lock()
            .unwrap()
            .push((env.topic.clone(), ev.type_url.clone(), ev.value.clone()));
        Ok(Empty::new())
    }
}

/// An events service plus a place for shim sockets' parent address.
struct Harness {
    dir: TempDir,
    node: NetNs,
    recorder: Arc<Recorder>,
    _server: Server,
    namespace: String,
    shims: Mutex<Vec<String>>,
}

impl Harness {
    fn new() -> Harness {
        require_cmd("nsenter");
        let dir = TempDir::new("shimapi");
        let events = dir.path().join("events.sock");
        let recorder = Arc::new(Recorder::default());
        let mut server = Server::new()
            .bind(&format!("unix://{}", events.display()))
            .expect("bind events socket")
            .register_service(create_events(recorder.clone()));
        server.start().expect("start events server");
        Harness {
            dir,
            node: NetNs::new("sha"),
            recorder,
            _server: server,
            namespace: unique("ns"),
            shims: Mutex::new(Vec::new()),
        }
    }

    /// `containerd-shim-nestbox-v2 … start` for a container of `bundle`: the shim address.
    fn start_shim(&self, id: &str, bundle: &Path) -> String {
        let mut c = self.node.nsenter(&[]);
        c.arg(shim_dir().join("containerd-shim-nestbox-v2"))
            .args(["-namespace", &self.namespace, "-id", id, "-address"])
            .arg(self.dir.path().join("containerd.sock"))
            .args(["-publish-binary", "/bin/true", "start"])
            .current_dir(bundle)
            .env("TTRPC_ADDRESS", self.dir.path().join("events.sock"));
        let (code, out, err) = run(&mut c);
        assert_eq!(code, 0, "shim start: {out} {err}");
        let address = out.trim().to_owned();
        assert!(
            address.starts_with("unix:///run/containerd/s/"),
            "address {address:?}"
        );
        self.shims.lock().unwrap().push(address.clone());
        address
    }

    fn topics(&self) -> Vec<String> {
        self.recorder
            .seen
            .lock()
            .unwrap()
            .iter()
            .map(|(t, _, _)| t.clone())
            .collect()
    }

    fn events_of<M: Message>(&self, topic: &str) -> Vec<M> {
        self.recorder
            .seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(t, _, _)| t == topic)
            .map(|(_, _, v)| M::parse_from_bytes(v).expect("decode event"))
            .collect()
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        for address in self.shims.lock().unwrap().iter() {
            if let Ok(c) = Client::connect(address) {
                let t = TaskClient::new(c);
                let req = ShutdownRequest {
                    now: true,
                    ..Default::default()
                };
                let _ = t.shutdown(Context::default(), &req);
            }
        }
    }
}

fn client(address: &str) -> TaskClient {
    TaskClient::new(Client::connect(address).expect("connect to the shim"))
}

fn ctx() -> Context {
    ttrpc::context::with_timeout(Duration::from_secs(60).as_nanos() as i64)
}

fn runc_options(binary: &Path) -> Any {
    let o = Options {
        binary_name: binary.display().to_string(),
        ..Default::default()
    };
    let mut any = Any::new();
    any.type_url = "containerd.runc.v1.Options".to_owned();
    any.value = o.write_to_bytes().expect("encode options");
    any
}

/// The gRPC code and message of a failed call.
fn status_of<T: std::fmt::Debug>(r: ttrpc::Result<T>) -> (Code, String) {
    match r {
        Err(ttrpc::Error::RpcStatus(s)) => (s.code(), s.message().to_owned()),
        other => panic!("expected an RPC status error, got {other:?}"),
    }
}

fn bundle_running(args: &[&str], sandbox: Option<&str>) -> Bundle {
    let mut b = Bundle::new();
    b.set_args(args);
    b.config["root"]["readonly"] = json!(false);
    if let Some(s) = sandbox {
        b.config["annotations"] = json!({"io.kubernetes.cri.sandbox-id": s});
    }
    b.write();
    b
}

fn create_req(id: &str, bundle: &Path, stdout: &Path, runtime: Option<&Path>) -> CreateTaskRequest {
    CreateTaskRequest {
        id: id.to_owned(),
        bundle: bundle.display().to_string(),
        stdout: format!("file://{}", stdout.display()),
        stderr: format!("file://{}", stdout.display()),
        options: runtime.map(runc_options).into(),
        ..Default::default()
    }
}

fn exec_spec(args: &[&str]) -> Any {
    let mut any = Any::new();
    any.type_url = "types.containerd.io/opencontainers/runtime-spec/1/Process".to_owned();
    any.value = serde_json::to_vec(&json!({
        "args": args, "cwd": "/", "env": ["PATH=/bin"], "user": {"uid": 0, "gid": 0}
    }))
    .expect("json");
    any
}

fn lifecycle(runtime: Option<&Path>) {
    let h = Harness::new();
    let id = unique("api");
    let bundle = bundle_running(&["sleep", "300"], None);
    let out = h.dir.path().join(format!("{id}.log"));
    let address = h.start_shim(&id, bundle.path());
    let t = client(&address);

    let created = t
        .create(ctx(), &create_req(&id, bundle.path(), &out, runtime))
        .expect("create");
    assert!(created.pid > 0);
    let st = t
        .state(
            ctx(),
            &StateRequest {
                id: id.clone(),
                ..Default::default()
            },
        )
        .expect("state");
    assert_eq!(st.status.enum_value(), Ok(Status::CREATED));
    let started = t
        .start(
            ctx(),
            &StartRequest {
                id: id.clone(),
                ..Default::default()
            },
        )
        .expect("start");
    assert_eq!(started.pid, created.pid);

    // An exec that exits 5, its output in the file log.
    let exec = ExecProcessRequest {
        id: id.clone(),
        exec_id: "e1".into(),
        stdout: format!("file://{}", out.display()),
        spec: Some(exec_spec(&["sh", "-c", "echo from-exec; exit 5"])).into(),
        ..Default::default()
    };
    t.exec(ctx(), &exec).expect("exec");
    let epid = t
        .start(
            ctx(),
            &StartRequest {
                id: id.clone(),
                exec_id: "e1".into(),
                ..Default::default()
            },
        )
        .expect("start exec")
        .pid;
    let waited = t
        .wait(
            ctx(),
            &WaitRequest {
                id: id.clone(),
                exec_id: "e1".into(),
                ..Default::default()
            },
        )
        .expect("wait exec");
    assert_eq!(waited.exit_status, 5);
    assert!(
        wait_until(10, || fs::read_to_string(&out)
            .unwrap_or_default()
            .contains("from-exec")),
        "exec output in the log"
    );
    t.delete(
        ctx(),
        &DeleteRequest {
            id: id.clone(),
            exec_id: "e1".into(),
            ..Default::default()
        },
    )
    .expect("delete exec");

    let pids = t
        .pids(
            ctx(),
            &PidsRequest {
                id: id.clone(),
                ..Default::default()
            },
        )
        .expect("pids");
    assert!(
        pids.processes.iter().any(|p| p.pid == created.pid),
        "pids lists init"
    );

    let stats = t
        .stats(
            ctx(),
            &StatsRequest {
                id: id.clone(),
                ..Default::default()
            },
        )
        .expect("stats");
    let any = stats.stats.unwrap_or_default();
    assert!(
        any.type_url == "io.containerd.cgroups.v1.Metrics"
            || any.type_url == "io.containerd.cgroups.v2.Metrics",
        "metrics type {}",
        any.type_url
    );
    assert!(!any.value.is_empty(), "metrics carry numbers");

    t.pause(
        ctx(),
        &PauseRequest {
            id: id.clone(),
            ..Default::default()
        },
    )
    .expect("pause");
    let st = t
        .state(
            ctx(),
            &StateRequest {
                id: id.clone(),
                ..Default::default()
            },
        )
        .expect("state");
    assert_eq!(st.status.enum_value(), Ok(Status::PAUSED));
    t.resume(
        ctx(),
        &ResumeRequest {
            id: id.clone(),
            ..Default::default()
        },
    )
    .expect("resume");

    t.kill(
        ctx(),
        &KillRequest {
            id: id.clone(),
            signal: 9,
            ..Default::default()
        },
    )
    .expect("kill");
    let waited = t
        .wait(
            ctx(),
            &WaitRequest {
                id: id.clone(),
                ..Default::default()
            },
        )
        .expect("wait");
    assert_eq!(waited.exit_status, 137);
    let deleted = t
        .delete(
            ctx(),
            &DeleteRequest {
                id: id.clone(),
                ..Default::default()
            },
        )
        .expect("delete");
    assert_eq!(deleted.exit_status, 137);
    assert_eq!(deleted.pid, created.pid);

    assert!(
        wait_until(10, || h.topics().last().map(String::as_str)
            == Some("/tasks/delete")),
        "events: {:?}",
        h.topics()
    );
    assert_eq!(
        h.topics(),
        [
            "/tasks/create",
            "/tasks/start",
            "/tasks/exec-added",
            "/tasks/exec-started",
            "/tasks/exit",
            "/tasks/paused",
            "/tasks/resumed",
            "/tasks/exit",
            "/tasks/delete"
        ],
        "events in order"
    );
    let exits: Vec<TaskExit> = h.events_of("/tasks/exit");
    assert_eq!(
        (exits[0].id.as_str(), exits[0].pid, exits[0].exit_status),
        ("e1", epid, 5)
    );
    assert_eq!(
        (exits[1].id.as_str(), exits[1].exit_status),
        (id.as_str(), 137)
    );
    let started: Vec<TaskExecStarted> = h.events_of("/tasks/exec-started");
    assert_eq!(started[0].pid, epid);

    // Shutdown with no container left: the shim exits and removes its socket.
    t.shutdown(ctx(), &ShutdownRequest::default())
        .expect("shutdown");
    let socket = PathBuf::from(address.trim_start_matches("unix://"));
    assert!(
        wait_until(10, || !socket.exists()),
        "socket removed at shutdown"
    );
}

#[test]
fn task_api_lifecycle_and_event_order_with_nestbox() {
    lifecycle(None);
}

#[test]
fn task_api_lifecycle_and_event_order_with_runc_as_binary_name() {
    lifecycle(Some(&require_cmd("runc")));
}

#[test]
fn bad_input_gets_clear_errors_and_the_pod_keeps_serving() {
    let h = Harness::new();
    let sandbox = unique("sbx");
    let pod = bundle_running(&["sleep", "300"], Some(&sandbox));
    let log = h.dir.path().join("pod.log");
    let address = h.start_shim(&sandbox, pod.path());
    let t = client(&address);
    t.create(ctx(), &create_req(&sandbox, pod.path(), &log, None))
        .expect("create sandbox");
    t.start(
        ctx(),
        &StartRequest {
            id: sandbox.clone(),
            ..Default::default()
        },
    )
    .expect("start sandbox");
    let serving = |t: &TaskClient| {
        let st = t
            .state(
                ctx(),
                &StateRequest {
                    id: sandbox.clone(),
                    ..Default::default()
                },
            )
            .expect("the sandbox is still served");
        assert_eq!(st.status.enum_value(), Ok(Status::RUNNING));
    };

    // A missing bundle.
    let missing = h.dir.path().join("no-such-bundle");
    let (code, msg) = status_of(t.create(ctx(), &create_req("c-missing", &missing, &log, None)));
    assert_eq!(code, Code::INVALID_ARGUMENT, "{msg}");
    assert!(msg.contains("no-such-bundle"), "names the bundle: {msg}");
    serving(&t);

    // A malformed options blob.
    let other = bundle_running(&["true"], Some(&sandbox));
    let mut req = create_req("c-badopts", other.path(), &log, None);
    let mut any = Any::new();
    any.type_url = "containerd.runc.v1.Options".into();
    any.value = vec![0x0a, 0xff, 0xff, 0xff, 0xff];
    req.options = Some(any).into();
    let (code, msg) = status_of(t.create(ctx(), &req));
    assert_eq!(code, Code::INVALID_ARGUMENT, "{msg}");
    assert!(
        msg.contains("runtime options"),
        "says what was wrong: {msg}"
    );
    assert!(
        !other.rootfs().join("proc/1").exists(),
        "nothing was created for the refused container"
    );
    serving(&t);

    // An unknown exec id.
    let (code, msg) = status_of(t.start(
        ctx(),
        &StartRequest {
            id: sandbox.clone(),
            exec_id: "nope".into(),
            ..Default::default()
        },
    ));
    assert_eq!(code, Code::NOT_FOUND, "{msg}");
    assert!(msg.contains("nope"), "{msg}");
    let (code, _) = status_of(t.start(
        ctx(),
        &StartRequest {
            id: "no-such-container".into(),
            ..Default::default()
        },
    ));
    assert_eq!(code, Code::NOT_FOUND);
    serving(&t);

    // A kill of a stopped task (a second container of the pod that exited).
    let short = unique("sht");
    t.create(ctx(), &create_req(&short, other.path(), &log, None))
        .expect("create short-lived");
    t.start(
        ctx(),
        &StartRequest {
            id: short.clone(),
            ..Default::default()
        },
    )
    .expect("start");
    let w = t
        .wait(
            ctx(),
            &WaitRequest {
                id: short.clone(),
                ..Default::default()
            },
        )
        .expect("wait");
    assert_eq!(w.exit_status, 0);
    let (code, msg) = status_of(t.kill(
        ctx(),
        &KillRequest {
            id: short.clone(),
            signal: 15,
            ..Default::default()
        },
    ));
    assert_eq!(code, Code::NOT_FOUND, "{msg}");
    assert!(msg.contains("process already finished"), "{msg}");
    // Deleting the running sandbox is refused; the exited one goes.
    let (code, _) = status_of(t.delete(
        ctx(),
        &DeleteRequest {
            id: sandbox.clone(),
            ..Default::default()
        },
    ));
    assert_eq!(code, Code::FAILED_PRECONDITION);
    t.delete(
        ctx(),
        &DeleteRequest {
            id: short.clone(),
            ..Default::default()
        },
    )
    .expect("delete short");
    serving(&t);

    // The pod's sandbox still takes an exec.
    t.exec(
        ctx(),
        &ExecProcessRequest {
            id: sandbox.clone(),
            exec_id: "still".into(),
            stdout: format!("file://{}", log.display()),
            spec: Some(exec_spec(&["sh", "-c", "echo still-serving"])).into(),
            ..Default::default()
        },
    )
    .expect("exec after errors");
    t.start(
        ctx(),
        &StartRequest {
            id: sandbox.clone(),
            exec_id: "still".into(),
            ..Default::default()
        },
    )
    .expect("start exec");
    let w = t
        .wait(
            ctx(),
            &WaitRequest {
                id: sandbox.clone(),
                exec_id: "still".into(),
                ..Default::default()
            },
        )
        .expect("wait exec");
    assert_eq!(w.exit_status, 0);
    assert!(fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("still-serving"));

    t.kill(
        ctx(),
        &KillRequest {
            id: sandbox.clone(),
            signal: 9,
            ..Default::default()
        },
    )
    .expect("kill");
    t.wait(
        ctx(),
        &WaitRequest {
            id: sandbox.clone(),
            ..Default::default()
        },
    )
    .expect("wait");
    t.delete(
        ctx(),
        &DeleteRequest {
            id: sandbox.clone(),
            ..Default::default()
        },
    )
    .expect("delete");
    // The refused containers left no runtime state behind.
    let root = format!("/run/containerd/nestbox/{}", h.namespace);
    let (_, list, _) = run(Command::new(bin("nestbox")).args(["--root", &root, "list"]));
    assert!(
        !list.contains("c-missing") && !list.contains("c-badopts"),
        "{list}"
    );
}

#[test]
fn containers_of_one_pod_share_one_shim_and_a_terminal_resizes() {
    let h = Harness::new();
    let sandbox = unique("pod");
    let pod = bundle_running(&["sleep", "300"], Some(&sandbox));
    let app = bundle_running(&["sh", "-c", "sleep 1; stty size"], Some(&sandbox));
    let a1 = h.start_shim(&sandbox, pod.path());
    let app_id = unique("app");
    let a2 = h.start_shim(&app_id, app.path());
    assert_eq!(a1, a2, "the app container is grouped with its sandbox");
    assert_eq!(
        fs::read_to_string(app.path().join("address"))
            .expect("address file")
            .trim(),
        a1,
        "each bundle gets the address file containerd reloads"
    );
    let t = client(&a1);
    let log = h.dir.path().join("pod.log");
    t.create(ctx(), &create_req(&sandbox, pod.path(), &log, None))
        .expect("create sandbox");
    t.start(
        ctx(),
        &StartRequest {
            id: sandbox.clone(),
            ..Default::default()
        },
    )
    .expect("start");

    // The app runs on a terminal; its size is set before start.
    let tty_log = h.dir.path().join("tty.log");
    let mut req = create_req(&app_id, app.path(), &tty_log, None);
    req.terminal = true;
    req.stderr = String::new();
    let mut cfg: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(app.path().join("config.json")).unwrap()).unwrap();
    cfg["process"]["terminal"] = json!(true);
    fs::write(app.path().join("config.json"), cfg.to_string()).unwrap();
    t.create(ctx(), &req).expect("create tty app");
    t.resize_pty(
        ctx(),
        &ResizePtyRequest {
            id: app_id.clone(),
            width: 111,
            height: 33,
            ..Default::default()
        },
    )
    .expect("resize");
    t.start(
        ctx(),
        &StartRequest {
            id: app_id.clone(),
            ..Default::default()
        },
    )
    .expect("start app");
    let w = t
        .wait(
            ctx(),
            &WaitRequest {
                id: app_id.clone(),
                ..Default::default()
            },
        )
        .expect("wait");
    assert_eq!(w.exit_status, 0);
    assert!(
        wait_until(10, || fs::read_to_string(&tty_log)
            .unwrap_or_default()
            .contains("33 111")),
        "stty size inside: {:?}",
        fs::read_to_string(&tty_log)
    );
    t.delete(
        ctx(),
        &DeleteRequest {
            id: app_id.clone(),
            ..Default::default()
        },
    )
    .expect("delete app");
    let creates: HashMap<String, usize> =
        h.topics().into_iter().fold(HashMap::new(), |mut m, t| {
            *m.entry(t).or_default() += 1;
            m
        });
    assert_eq!(creates.get("/tasks/create"), Some(&2), "{creates:?}");
    t.kill(
        ctx(),
        &KillRequest {
            id: sandbox.clone(),
            signal: 9,
            ..Default::default()
        },
    )
    .expect("kill");
    t.wait(
        ctx(),
        &WaitRequest {
            id: sandbox.clone(),
            ..Default::default()
        },
    )
    .expect("wait");
    t.delete(
        ctx(),
        &DeleteRequest {
            id: sandbox.clone(),
            ..Default::default()
        },
    )
    .expect("delete");
}
