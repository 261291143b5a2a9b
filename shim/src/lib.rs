//! containerd shim v2 (`containerd-shim-nestbox-v2`): not built yet; see DESIGN §5.
