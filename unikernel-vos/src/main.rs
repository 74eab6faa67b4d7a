//! dvs VOS: a unikernel booted by QEMU `-kernel` (PVH), running its services in ring 3.
#![no_std]
#![no_main]

extern crate alloc;

pub mod arch;

use linked_list_allocator::LockedHeap;

#[global_allocator]
static HEAP: LockedHeap = LockedHeap::empty();

/// Ring-3 entry, reached from boot.rs by `iretq` with the PVH start-info address.
#[no_mangle]
extern "C" fn vos_entry(start_info: u32) -> ! {
    arch::time::set_origin();
    arch::interrupts::init();
    let boot = match arch::pvh::parse(start_info) {
        Ok(b) => b,
        Err(e) => {
            println!("dvs: FATAL boot info: {e}");
            arch::exit(arch::ExitCode::Fault);
        }
    };
    // SAFETY: [ram_start, ram_end) is RAM after the image that nothing else uses.
    unsafe {
        HEAP.lock().init(
            boot.ram_start as usize as *mut u8,
            (boot.ram_end - boot.ram_start) as usize,
        )
    };
    arch::apic::init();
    let cal = arch::time::calibrate(2000);
    println!(
        "dvs: cmdline '{}' ram={}KiB cal={:?}",
        boot.cmdline,
        (boot.ram_end - boot.ram_start) / 1024,
        cal
    );
    println!("dvs: ready");
    arch::exit(arch::ExitCode::Done)
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    println!("dvs: PANIC {info}");
    arch::exit(arch::ExitCode::Fault)
}
