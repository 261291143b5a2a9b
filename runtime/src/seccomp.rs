//! Seccomp for the container process, through nestbox-seccomp (libseccomp).

use oci_spec::runtime::LinuxSeccomp;

use crate::error::{Error, Result};

/// Compile and load the profile into the calling process (right before exec, or before the
/// user switch when no_new_privs is off, since loading then needs CAP_SYS_ADMIN).
pub fn load(_profile: &LinuxSeccomp) -> Result<()> {
    // TODO(R2): nestbox_seccomp::compile(profile)?.load() once the crate provides it.
    Err(Error::Other("seccomp not supported yet".into()))
}
