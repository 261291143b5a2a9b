//! `nestbox-cni`: one binary, acting as the plugin named by argv[0]'s basename
//! (`nestbox-bridge`, `bridge`, `nestbox-host-local`, `nestbox-vxlan`, `flannel`, ...), or
//! `nestbox-cni <plugin>`.

// musl's allocator hands every small free page back to the kernel at once: an ADD paid
// about a hundred mmap/munmap pairs for it. dlmalloc keeps what it got.
#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOC: dlmalloc::GlobalDlmalloc = dlmalloc::GlobalDlmalloc;

/// Map the binary's read-only segments (code and constants) in one madvise each before
/// anything runs. A plugin call lives about a millisecond, and each first touch of a code
/// page was a page fault (about a hundred per ADD, each a trap that costs more on a VM than
/// the page-table work); MADV_POPULATE_READ maps the pages, already in the page cache,
/// from inside the kernel. Best effort: kernels before 5.14 refuse it.
fn prefault_image() {
    const MADV_POPULATE_READ: libc::c_int = 22;
    // SAFETY: getauxval only reads the auxiliary vector the kernel gave this process.
    let (phdr, count) = unsafe {
        (
            libc::getauxval(libc::AT_PHDR) as usize,
            libc::getauxval(libc::AT_PHNUM) as usize,
        )
    };
    if phdr == 0 {
        return;
    }
    // SAFETY: AT_PHDR/AT_PHNUM describe this executable's program headers, mapped for the
    // life of the process.
    let headers = unsafe { std::slice::from_raw_parts(phdr as *const libc::Elf64_Phdr, count) };
    // Where the image was loaded relative to its link addresses (0 unless PIE).
    let bias = headers
        .iter()
        .find(|h| h.p_type == libc::PT_PHDR)
        .map_or(0, |h| phdr.wrapping_sub(h.p_vaddr as usize));
    for h in headers {
        if h.p_type != libc::PT_LOAD || h.p_flags & libc::PF_W != 0 {
            continue;
        }
        let start = bias.wrapping_add(h.p_vaddr as usize) & !0xfff;
        let end = bias.wrapping_add((h.p_vaddr + h.p_memsz) as usize);
        // SAFETY: advice on a range of our own read-only mapping; it changes no contents.
        unsafe { libc::madvise(start as *mut libc::c_void, end - start, MADV_POPULATE_READ) };
    }
}

fn main() {
    prefault_image();
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
