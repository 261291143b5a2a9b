//! The runtime library's error type. Messages are one line and name the problem; the wording
//! callers match on ("does not exist", "container not running", "no such process") lives here.

use std::path::Path;

/// Everything the runtime library can fail with.
#[derive(thiserror::Error, Debug)]
pub enum Error {
    #[error("invalid container id {0:?}: only letters, digits, '_', '+', '-' and '.' are allowed")]
    InvalidId(String),
    #[error("container {0:?} already exists")]
    AlreadyExists(String),
    #[error("container {0:?} does not exist")]
    NotExist(String),
    #[error("container {0:?}: container not running")]
    NotRunning(String),
    #[error("container {id:?}: {msg}")]
    WrongState { id: String, msg: String },
    #[error("bundle {path:?}: {msg}")]
    Bundle { path: String, msg: String },
    #[error("config.json: {0}")]
    Spec(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{context}: {source}")]
    Sys {
        context: String,
        #[source]
        source: nix::Error,
    },
    #[error("cgroup: {0}")]
    Cgroup(#[from] nestbox_cgroups::Error),
    /// Reported by the container's init process over the sync channel.
    #[error("{0}")]
    Init(String),
    #[error("{0}")]
    Other(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Attach a "what were we doing" context to io and nix errors.
pub trait Context<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> Context<T> for std::io::Result<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| Error::Io {
            context: what(),
            source,
        })
    }
}

impl<T> Context<T> for nix::Result<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| Error::Sys {
            context: what(),
            source,
        })
    }
}

/// `path.display()` as an owned string, for error contexts.
pub fn shown(path: &Path) -> String {
    path.display().to_string()
}
