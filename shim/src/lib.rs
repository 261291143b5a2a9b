//! containerd shim v2 for nestbox (`containerd-shim-nestbox-v2`, runtime type
//! `io.containerd.nestbox.v2`): one small process per pod serving containerd's Task API over
//! ttrpc and driving a runc-compatible runtime CLI (nestbox by default, runc works too).
//! Contract: DESIGN §5. Built on the `containerd-shim` crate 0.11 (task v2, as containerd 1.6
//! speaks it) and the `runc` crate's CLI client.

pub mod container;
pub mod error;
pub mod events;
pub mod exits;
pub mod io;
pub mod metrics;
pub mod runtime;
pub mod service;
pub mod shim;

pub use shim::{Shim, RUNTIME_TYPE};

use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;

/// A protobuf timestamp.
pub fn timestamp(t: std::time::SystemTime) -> Timestamp {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let mut ts = Timestamp::new();
    ts.seconds = d.as_secs() as i64;
    ts.nanos = d.subsec_nanos() as i32;
    ts
}
