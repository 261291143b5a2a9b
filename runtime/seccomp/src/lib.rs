//! OCI seccomp profiles for nestbox, compiled with libseccomp.
