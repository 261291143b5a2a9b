//! `containerd-shim-nestbox-v2`: containerd runs it as `start`, `delete`, or (spawned by
//! `start`) the daemon serving one pod.

fn main() {
    containerd_shim::run::<nestbox_shim::Shim>(
        nestbox_shim::RUNTIME_TYPE,
        Some(containerd_shim::Config {
            // Logging goes to the bundle's `log` FIFO when containerd made one (shim.rs).
            no_setup_logger: true,
            ..Default::default()
        }),
    );
}
