//! The PVH boot information (`hvm_start_info`) QEMU passes in ebx: command line and memory map.

/// `hvm_start_info.magic`.
const MAGIC: u32 = 0x336e_c578;
/// Memory-map entry type for usable RAM.
const E820_RAM: u32 = 1;

#[repr(C)]
struct StartInfo {
    magic: u32,
    version: u32,
    flags: u32,
    nr_modules: u32,
    modlist_paddr: u64,
    cmdline_paddr: u64,
    rsdp_paddr: u64,
    memmap_paddr: u64,
    memmap_entries: u32,
    reserved: u32,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct MemmapEntry {
    addr: u64,
    size: u64,
    kind: u32,
    reserved: u32,
}

/// What the kernel takes from the boot information.
pub struct BootInfo {
    /// The kernel command line (`-append`), empty if none.
    pub cmdline: &'static str,
    /// Usable RAM from `ram_start` (the end of the image) to `ram_end`, in the region that
    /// holds the image.
    pub ram_start: u64,
    /// End (exclusive) of that RAM region.
    pub ram_end: u64,
}

extern "C" {
    static __image_end: u8;
}

/// Reads the boot information at physical address `addr` (identity mapped).
pub fn parse(addr: u32) -> Result<BootInfo, &'static str> {
    if addr == 0 {
        return Err("no PVH start info (ebx = 0): boot with QEMU -kernel");
    }
    // SAFETY: QEMU's PVH loader put a hvm_start_info at `addr`; RAM below 3 GiB is mapped.
    let si = unsafe { &*(addr as usize as *const StartInfo) };
    if si.magic != MAGIC {
        return Err("PVH start info has a bad magic");
    }
    let cmdline = if si.cmdline_paddr == 0 {
        ""
    } else {
        // SAFETY: a NUL-terminated string placed by the loader in mapped low memory.
        let c = unsafe {
            core::ffi::CStr::from_ptr(si.cmdline_paddr as usize as *const core::ffi::c_char)
        };
        c.to_str().map_err(|_| "kernel command line is not UTF-8")?
    };
    let image_end = &raw const __image_end as u64;
    if si.version < 1 || si.memmap_paddr == 0 || si.memmap_entries == 0 {
        return Err("PVH start info has no memory map (version < 1)");
    }
    // SAFETY: the loader's memory map: `memmap_entries` entries at `memmap_paddr`.
    let map = unsafe {
        core::slice::from_raw_parts(
            si.memmap_paddr as usize as *const MemmapEntry,
            si.memmap_entries.min(128) as usize,
        )
    };
    // Only RAM below 3 GiB is mapped write-back (see boot.rs).
    const LIMIT: u64 = 3 << 30;
    let region = map
        .iter()
        .find(|e| {
            e.kind == E820_RAM && e.addr <= image_end && e.addr.saturating_add(e.size) > image_end
        })
        .ok_or("memory map has no RAM region holding the kernel image")?;
    let ram_end = region.addr.saturating_add(region.size).min(LIMIT);
    Ok(BootInfo {
        cmdline,
        ram_start: image_end,
        ram_end,
    })
}
