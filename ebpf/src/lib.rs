//! nestbox-netdiag: pod traffic tracing and diagnosis; not built yet, see DESIGN §7.
