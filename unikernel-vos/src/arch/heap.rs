//! The kernel heap: the RAM after the image (from the PVH memory map), managed by a linked-list
//! allocator. The data path allocates nothing; its pools are made at boot.

use core::sync::atomic::{AtomicBool, Ordering};
use linked_list_allocator::LockedHeap;

#[global_allocator]
static HEAP: LockedHeap = LockedHeap::empty();

static READY: AtomicBool = AtomicBool::new(false);

/// Gives the allocator the RAM `[start, end)`.
pub fn init(start: u64, end: u64) {
    // SAFETY: the boot information says [start, end) is RAM after the image that nothing else
    // uses; it is handed over once.
    unsafe {
        HEAP.lock()
            .init(start as usize as *mut u8, (end - start) as usize)
    };
    READY.store(true, Ordering::Relaxed);
}

/// Whether allocating now is safe: the heap is set up and not in use. False inside a fault
/// taken while the allocator held its lock (so fault paths skip what would allocate).
pub fn usable() -> bool {
    READY.load(Ordering::Relaxed) && !HEAP.is_locked()
}

/// Bytes of heap not allocated now.
pub fn free() -> usize {
    HEAP.lock().free()
}
