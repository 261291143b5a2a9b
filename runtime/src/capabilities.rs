//! The process's five capability sets, from the spec's names (unknown names were already
//! dropped with a warning by spec.rs).

use caps::{CapSet, Capability, CapsHashSet};
use oci_spec::runtime::LinuxCapabilities;

use crate::error::{Error, Result};

fn to_set<T: ToString>(names: Option<&std::collections::HashSet<T>>) -> CapsHashSet {
    names
        .map(|set| {
            set.iter()
                .filter_map(|c| {
                    let name = c.to_string();
                    let canonical = caps::to_canonical(&name);
                    match canonical.parse::<Capability>() {
                        Ok(cap) => Some(cap),
                        Err(_) => {
                            tracing::warn!("unknown capability {name}, ignored");
                            None
                        }
                    }
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Drop everything outside the bounding set (needs CAP_SETPCAP: call before the user switch).
pub fn drop_bounding(spec: Option<&LinuxCapabilities>) -> Result<()> {
    let keep = to_set(spec.and_then(|c| c.bounding().as_ref()));
    for cap in caps::all() {
        if !keep.contains(&cap) {
            match caps::drop(None, CapSet::Bounding, cap) {
                Ok(()) => {}
                // Capabilities newer than the running kernel cannot be dropped: fine.
                Err(_) if !caps::runtime::thread_all_supported().contains(&cap) => {}
                Err(e) => {
                    return Err(Error::Other(format!(
                        "dropping {cap} from the bounding set: {e}"
                    )))
                }
            }
        }
    }
    Ok(())
}

/// Set effective, inheritable, permitted and ambient (after the user switch, with keep-caps).
pub fn apply(spec: Option<&LinuxCapabilities>) -> Result<()> {
    let effective = to_set(spec.and_then(|c| c.effective().as_ref()));
    let permitted = to_set(spec.and_then(|c| c.permitted().as_ref()));
    let inheritable = to_set(spec.and_then(|c| c.inheritable().as_ref()));
    let ambient = to_set(spec.and_then(|c| c.ambient().as_ref()));
    // Order matters: effective must stay a subset of permitted at every step.
    let set = |which: CapSet, value: &CapsHashSet| {
        caps::set(None, which, value)
            .map_err(|e| Error::Other(format!("setting {which:?} capabilities: {e}")))
    };
    set(
        CapSet::Effective,
        &effective.intersection(&permitted).cloned().collect(),
    )?;
    set(CapSet::Inheritable, &inheritable)?;
    set(CapSet::Permitted, &permitted)?;
    set(CapSet::Effective, &effective)?;
    if let Err(e) = caps::set(None, CapSet::Ambient, &ambient) {
        // Ambient needs each cap in permitted and inheritable; runc only warns too.
        tracing::debug!("setting ambient capabilities: {e}");
    }
    Ok(())
}
