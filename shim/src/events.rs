//! Task events to containerd (or nestlet): one thread forwards them in the order they were
//! queued, over the ttrpc Events service at TTRPC_ADDRESS, reconnecting when the peer went
//! away (a restarted containerd listens on the same path again).

use std::sync::mpsc::{channel, Receiver, Sender};
use std::time::Duration;

use containerd_shim::protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskOOM, TaskPaused,
    TaskResumed, TaskStart,
};
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::Message;
use containerd_shim::protos::shim::event::Envelope;
use containerd_shim::protos::shim::events::ForwardRequest;
use containerd_shim::protos::ttrpc::context::Context;
use containerd_shim::protos::ttrpc::Client;
use containerd_shim::protos::EventsClient;

use crate::timestamp;

/// One event, encoded where it happened (protobuf messages are not Send as trait objects).
struct Queued {
    topic: &'static str,
    event: Any,
    at: containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp,
}

#[derive(Clone)]
pub struct Publisher {
    tx: Sender<Queued>,
}

/// Attempts per event; the waits between them double from 50 ms (about 1.5 s in all).
const ATTEMPTS: u32 = 5;

impl Publisher {
    /// Start the forwarding thread for `address` (ttrpc unix socket) and `namespace`.
    pub fn spawn(address: String, namespace: String) -> std::io::Result<Publisher> {
        let (tx, rx) = channel();
        std::thread::Builder::new()
            .name("events".to_owned())
            .stack_size(256 * 1024)
            .spawn(move || forward(rx, &address, &namespace))?;
        Ok(Publisher { tx })
    }

    /// Queue an event. The type URL is containerd's name for it (the proto's full name),
    /// written out rather than looked up: protobuf's reflection would build descriptors for
    /// every message of the proto file, code and memory a shim per pod should not carry.
    fn send<M: Message>(&self, topic: &'static str, type_url: &'static str, event: &M) {
        let mut value = Vec::new();
        if event.write_to_vec(&mut value).is_err() {
            tracing::warn!(topic, "event not encodable; dropped");
            return;
        }
        let mut any = Any::new();
        any.type_url = type_url.to_owned();
        any.value = value;
        let _ = self.tx.send(Queued {
            topic,
            event: any,
            at: timestamp(std::time::SystemTime::now()),
        });
    }

    pub fn create(&self, e: TaskCreate) {
        self.send("/tasks/create", "containerd.events.TaskCreate", &e)
    }
    pub fn start(&self, e: TaskStart) {
        self.send("/tasks/start", "containerd.events.TaskStart", &e)
    }
    pub fn exit(&self, e: TaskExit) {
        self.send("/tasks/exit", "containerd.events.TaskExit", &e)
    }
    pub fn delete(&self, e: TaskDelete) {
        self.send("/tasks/delete", "containerd.events.TaskDelete", &e)
    }
    pub fn exec_added(&self, e: TaskExecAdded) {
        self.send("/tasks/exec-added", "containerd.events.TaskExecAdded", &e)
    }
    pub fn exec_started(&self, e: TaskExecStarted) {
        self.send(
            "/tasks/exec-started",
            "containerd.events.TaskExecStarted",
            &e,
        )
    }
    pub fn oom(&self, e: TaskOOM) {
        self.send("/tasks/oom", "containerd.events.TaskOOM", &e)
    }
    pub fn paused(&self, e: TaskPaused) {
        self.send("/tasks/paused", "containerd.events.TaskPaused", &e)
    }
    pub fn resumed(&self, e: TaskResumed) {
        self.send("/tasks/resumed", "containerd.events.TaskResumed", &e)
    }
}

fn connect(address: &str) -> Option<EventsClient> {
    let path = address.strip_prefix("unix://").unwrap_or(address);
    match Client::connect(&format!("unix://{path}")) {
        Ok(c) => Some(EventsClient::new(c)),
        Err(e) => {
            tracing::debug!(address, error = %e, "connecting to the events service");
            None
        }
    }
}

fn forward(rx: Receiver<Queued>, address: &str, namespace: &str) {
    let mut client = connect(address);
    for q in rx {
        let mut envelope = Envelope::new();
        envelope.topic = q.topic.to_owned();
        envelope.namespace = namespace.to_owned();
        envelope.timestamp = Some(q.at).into();
        envelope.event = Some(q.event).into();
        let mut req = ForwardRequest::new();
        req.envelope = Some(envelope).into();
        let mut wait = Duration::from_millis(50);
        let mut sent = false;
        for _ in 0..ATTEMPTS {
            if client.is_none() {
                client = connect(address);
            }
            if let Some(c) = &client {
                match c.forward(Context::default(), &req) {
                    Ok(_) => {
                        sent = true;
                        break;
                    }
                    Err(e) => {
                        tracing::debug!(topic = q.topic, error = %e, "forwarding an event");
                        client = None;
                    }
                }
            }
            std::thread::sleep(wait);
            wait *= 2;
        }
        if !sent {
            tracing::warn!(
                topic = q.topic,
                address,
                "event dropped: the events service did not take it"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use containerd_shim::protos::protobuf::MessageFull;

    use super::*;

    #[test]
    fn written_out_type_urls_are_the_proto_names() {
        for (url, name) in [
            (
                "containerd.events.TaskCreate",
                TaskCreate::descriptor().full_name().to_owned(),
            ),
            (
                "containerd.events.TaskStart",
                TaskStart::descriptor().full_name().to_owned(),
            ),
            (
                "containerd.events.TaskExit",
                TaskExit::descriptor().full_name().to_owned(),
            ),
            (
                "containerd.events.TaskDelete",
                TaskDelete::descriptor().full_name().to_owned(),
            ),
            (
                "containerd.events.TaskExecAdded",
                TaskExecAdded::descriptor().full_name().to_owned(),
            ),
            (
                "containerd.events.TaskExecStarted",
                TaskExecStarted::descriptor().full_name().to_owned(),
            ),
            (
                "containerd.events.TaskOOM",
                TaskOOM::descriptor().full_name().to_owned(),
            ),
            (
                "containerd.events.TaskPaused",
                TaskPaused::descriptor().full_name().to_owned(),
            ),
            (
                "containerd.events.TaskResumed",
                TaskResumed::descriptor().full_name().to_owned(),
            ),
            (
                "containerd.runc.v1.ProcessDetails",
                containerd_shim::protos::shim::oci::ProcessDetails::descriptor()
                    .full_name()
                    .to_owned(),
            ),
        ] {
            assert_eq!(url, name);
        }
    }
}
