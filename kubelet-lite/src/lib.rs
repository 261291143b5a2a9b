//! nestlet, the minimal kubelet: not built yet; see DESIGN §6.
