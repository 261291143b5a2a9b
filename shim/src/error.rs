//! The shim's errors, and how each reaches containerd: a ttrpc status whose gRPC code
//! containerd's errdefs turn back into NotFound, AlreadyExists, InvalidArgument, … so `ctr` and
//! the CRI plugin react to them as they do to the Go shim's.

use containerd_shim::protos::ttrpc::{self, get_status, Code};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0} is not implemented by this shim")]
    Unimplemented(&'static str),
    /// The runtime CLI failed; the message is its last error line when it logged one.
    #[error("{op}: {msg}")]
    Runtime { op: String, msg: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Other(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Error {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    fn code(&self) -> Code {
        match self {
            Error::InvalidArgument(_) => Code::INVALID_ARGUMENT,
            Error::NotFound(_) => Code::NOT_FOUND,
            Error::AlreadyExists(_) => Code::ALREADY_EXISTS,
            Error::FailedPrecondition(_) => Code::FAILED_PRECONDITION,
            Error::Unimplemented(_) => Code::UNIMPLEMENTED,
            Error::Runtime { .. } | Error::Io { .. } | Error::Other(_) => Code::UNKNOWN,
        }
    }
}

impl From<Error> for ttrpc::Error {
    fn from(e: Error) -> ttrpc::Error {
        ttrpc::Error::RpcStatus(get_status(e.code(), e.to_string()))
    }
}

impl From<containerd_shim::Error> for Error {
    fn from(e: containerd_shim::Error) -> Error {
        match e {
            containerd_shim::Error::InvalidArgument(s) => Error::InvalidArgument(s),
            containerd_shim::Error::NotFoundError(s) => Error::NotFound(s),
            containerd_shim::Error::FailedPreconditionError(s) => Error::FailedPrecondition(s),
            other => Error::Other(other.to_string()),
        }
    }
}

impl From<Error> for containerd_shim::Error {
    fn from(e: Error) -> containerd_shim::Error {
        match e {
            Error::InvalidArgument(s) => containerd_shim::Error::InvalidArgument(s),
            Error::NotFound(s) => containerd_shim::Error::NotFoundError(s),
            Error::FailedPrecondition(s) => containerd_shim::Error::FailedPreconditionError(s),
            other => containerd_shim::Error::Other(other.to_string()),
        }
    }
}
