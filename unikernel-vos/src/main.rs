//! dvs VOS: a unikernel booted by QEMU `-kernel` (PVH) that runs its services in ring 3.
//!
//! Layout (Hermit-like): `arch` (the machine, incl. the console and the control channel),
//! `drivers` (virtio), `net` (smoltcp and the Ethernet demultiplexer), `ipc` (M3-IPC),
//! `services`, the boot configuration (`config`), the cooperative `executor`, and the `kernel`
//! value with its event loop. This file only says the order of boot.
#![no_std]
#![no_main]

extern crate alloc;

pub mod arch;
pub mod config;
pub mod drivers;
pub mod executor;
pub mod ipc;
pub mod kernel;
pub mod net;
pub mod services;

use arch::{time, ExitCode};

/// Ring-3 entry, reached from boot.rs by `iretq` with the PVH start-info address.
#[no_mangle]
extern "C" fn vos_entry(start_info: u32) -> ! {
    // The machine: clock origin, IDT, boot information, heap, control channel.
    let boot = arch::init(start_info);
    // The host's configuration (a bad one ends the boot here).
    let config::Boot { cfg, mmio } = config::load(boot.cmdline);
    // Interrupt controllers, NICs and disks; the clock is calibrated meanwhile.
    let devices = drivers::init(&mmio, cfg.mtu as usize);
    // One port per NIC, with its address.
    let net = net::Net::new(devices.nics, &cfg, time::rdtsc(), time::now_us());
    // The engine with the endpoints bound and their vcopy buffers.
    let ipc = ipc::Ipc::start(&cfg, net.fabric_mac())
        .unwrap_or_else(|e| arch::fatal(ExitCode::Fault, format_args!("{e}")));
    if cfg.local_sendrecs > 0 {
        ipc::local_bench::report(cfg.dc, cfg.local_sendrecs);
    }
    let mut kernel = kernel::Kernel::new(&cfg, net, ipc);
    kernel.disks = devices.disks;
    services::start(&mut kernel, &cfg);
    kernel.ready(&cfg, &devices.clock);
    kernel.run()
}
