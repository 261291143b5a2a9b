//! nestbox OCI runtime library: the container lifecycle (container.rs), the process model
//! (process/: spawning init, init itself; channel.rs between them), the container's view of
//! the system (namespaces.rs, rootfs.rs, capabilities.rs, console.rs, seccomp.rs) and the
//! state kept between CLI invocations (state.rs).

pub mod capabilities;
pub mod channel;
pub mod console;
pub mod container;
pub mod error;
pub mod hooks;
pub mod logging;
pub mod memfd;
pub mod namespaces;
pub mod process;
pub mod rootfs;
pub mod seccomp;
pub mod signal;
pub mod spec;
pub mod state;
pub mod time;

/// The oci-spec this library uses, so callers never mix versions.
pub use oci_spec;

pub use error::{Error, Result};

/// The OCI runtime spec version this runtime implements.
pub const SPEC_VERSION: &str = "1.0.2-dev";
