//! Which namespaces a container gets: new ones (clone/unshare flags) and ones joined by path.

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::sched::{setns, CloneFlags};
use oci_spec::runtime::{LinuxNamespace, LinuxNamespaceType, Spec};

use crate::error::{shown, Context, Error, Result};

pub fn clone_flag(typ: LinuxNamespaceType) -> CloneFlags {
    match typ {
        LinuxNamespaceType::Mount => CloneFlags::CLONE_NEWNS,
        LinuxNamespaceType::Cgroup => CloneFlags::CLONE_NEWCGROUP,
        LinuxNamespaceType::Uts => CloneFlags::CLONE_NEWUTS,
        LinuxNamespaceType::Ipc => CloneFlags::CLONE_NEWIPC,
        LinuxNamespaceType::User => CloneFlags::CLONE_NEWUSER,
        LinuxNamespaceType::Pid => CloneFlags::CLONE_NEWPID,
        LinuxNamespaceType::Network => CloneFlags::CLONE_NEWNET,
        // Not in nix's CloneFlags: CLONE_NEWTIME.
        LinuxNamespaceType::Time => CloneFlags::from_bits_retain(libc::CLONE_NEWTIME),
    }
}

/// The spec's namespaces, split into new ones and ones to join.
#[derive(Debug, Clone)]
pub struct Namespaces {
    /// Namespaces to create.
    pub new: CloneFlags,
    /// Namespaces to join, user first (joining it first grants the rights for the others).
    pub join: Vec<(LinuxNamespaceType, PathBuf)>,
}

impl Namespaces {
    pub fn from_spec(spec: &Spec) -> Namespaces {
        let mut out = Namespaces {
            new: CloneFlags::empty(),
            join: Vec::new(),
        };
        let list: &[LinuxNamespace] = spec
            .linux()
            .as_ref()
            .and_then(|l| l.namespaces().as_deref())
            .unwrap_or_default();
        for ns in list {
            match ns.path() {
                Some(p) if !p.as_os_str().is_empty() => out.join.push((ns.typ(), p.clone())),
                _ => out.new |= clone_flag(ns.typ()),
            }
        }
        out.join
            .sort_by_key(|(t, _)| if *t == LinuxNamespaceType::User { 0 } else { 1 });
        out
    }

    pub fn has_new(&self, typ: LinuxNamespaceType) -> bool {
        self.new.contains(clone_flag(typ))
    }

    pub fn joins(&self, typ: LinuxNamespaceType) -> Option<&Path> {
        self.join
            .iter()
            .find(|(t, _)| *t == typ)
            .map(|(_, p)| p.as_path())
    }

    /// Open every namespace path (before anything changes, so errors name the spec's path).
    pub fn open_joins(&self) -> Result<Vec<(LinuxNamespaceType, OwnedFd)>> {
        self.join
            .iter()
            .map(|(typ, path)| {
                let f = std::fs::File::open(path).map_err(|e| {
                    Error::Spec(format!("linux.namespaces {typ}: path {}: {e}", shown(path)))
                })?;
                Ok((*typ, OwnedFd::from(f)))
            })
            .collect()
    }
}

/// setns into an opened namespace.
pub fn join(typ: LinuxNamespaceType, fd: &OwnedFd) -> Result<()> {
    setns(fd.as_fd(), clone_flag(typ)).ctx(|| format!("joining the {typ} namespace"))
}
