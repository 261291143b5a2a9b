//! nestlet, the minimal kubelet (DESIGN §6): runs the pods bound to its node (from a
//! Kubernetes apiserver, or static pods from a manifest directory) through
//! `containerd-shim-nestbox-v2` over ttrpc, with CNI networking by exec and an image store
//! of its own.

pub mod cgroups;
pub mod cni;
pub mod config;
pub mod image;
pub mod logs;
pub mod node;
pub mod pod;
pub mod shim;
pub mod sources;
pub mod spec;
pub mod util;
