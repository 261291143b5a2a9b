//! Seccomp for the container process, through nestbox-seccomp (libseccomp).

use oci_spec::runtime::LinuxSeccomp;

use crate::error::{Error, Result};

/// Compile and load the profile into the calling process (right before exec, or before the
/// user switch when no_new_privs is off, since loading then needs CAP_SYS_ADMIN).
pub fn load(profile: &LinuxSeccomp) -> Result<()> {
    let filter =
        nestbox_seccomp::compile(profile).map_err(|e| Error::Other(format!("seccomp: {e}")))?;
    if let Some(_notify) = filter
        .load()
        .map_err(|e| Error::Other(format!("seccomp: {e}")))?
    {
        // TODO: hand the notify fd to linux.seccomp.listenerPath with the container state.
        return Err(Error::Other(
            "seccomp: SCMP_ACT_NOTIFY (listenerPath) is not supported yet".into(),
        ));
    }
    Ok(())
}
