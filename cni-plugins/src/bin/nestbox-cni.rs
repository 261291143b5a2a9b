//! `nestbox-cni`: one binary, acting as the plugin named by argv[0]'s basename
//! (`nestbox-bridge`, `bridge`, `nestbox-host-local`, `nestbox-vxlan`, `flannel`, ...), or
//! `nestbox-cni <plugin>`.

// musl's allocator hands every small free page back to the kernel at once: an ADD paid
// about a hundred mmap/munmap pairs for it. dlmalloc keeps what it got.
#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOC: dlmalloc::GlobalDlmalloc = dlmalloc::GlobalDlmalloc;

fn main() {
    let mut argv = std::env::args();
    let arg0 = argv.next().unwrap_or_default();
    let base = std::path::Path::new(&arg0)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_string();
    let name = if base == "nestbox-cni" {
        argv.next().unwrap_or_default()
    } else {
        base
    };
    match nestbox_cni::plugins::by_name(&name) {
        Some(plugin) => std::process::exit(nestbox_cni::cni::skel::run(plugin)),
        None => {
            eprintln!(
                "nestbox-cni: unknown plugin {name:?}; install as nestbox-bridge, nestbox-host-local, nestbox-loopback, nestbox-vxlan or nestbox-host-gw (or run `nestbox-cni <plugin>`)"
            );
            std::process::exit(2);
        }
    }
}
