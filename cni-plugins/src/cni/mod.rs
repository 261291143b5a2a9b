//! The CNI contract: versions, results (with conversion between versions), errors with
//! the spec's codes, the plugin skeleton (environment + verb dispatch) and delegate exec.

pub mod error;
pub mod invoke;
pub mod skel;
pub mod types;
pub mod version;

pub use error::{Code, Error, Result};
pub use types::{CniResult, Dns, Interface, IpConfig, Route};
