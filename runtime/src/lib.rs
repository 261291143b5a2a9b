//! nestbox OCI runtime library.
