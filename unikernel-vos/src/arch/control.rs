//! The control channel: a second 16550 UART (COM2, port 0x2f8) that carries typed records to the
//! host, apart from the human console on COM1. Each record is postcard-encoded and COBS-framed
//! (`dvs_vos_abi::ControlRecord::encode`) and written with one `rep outsb`, so under KVM a record
//! costs one exit. Ring 3 reaches the port through the TSS I/O bitmap (see boot.rs).
//!
//! If no UART answers at 0x2f8 (the host gave the VM no control line), records are dropped and
//! the kernel runs on.

use super::inb;
use alloc::vec::Vec;
use core::arch::asm;
use core::sync::atomic::{AtomicBool, Ordering};
use dvs_vos_abi::control::MAX_RECORD;
use dvs_vos_abi::ControlRecord;

/// I/O base of COM2.
pub const COM2: u16 = 0x2f8;
/// Line status register: a 16550 reads 0x60 (transmitter empty) after reset; no device: 0xff.
const LSR: u16 = COM2 + 5;

static PRESENT: AtomicBool = AtomicBool::new(false);
static FATAL_SENT: AtomicBool = AtomicBool::new(false);

/// Looks for the UART (one read of its line status: an absent port reads 0xff; one exit under
/// KVM). Its reset state is what the channel needs (no interrupts, 8 data bits); the baud rate
/// means nothing to QEMU's chardev. Returns whether it is there.
pub fn init() -> bool {
    let present = inb(LSR) != 0xff;
    PRESENT.store(present, Ordering::Relaxed);
    present
}

/// Whether records reach a host.
pub fn present() -> bool {
    PRESENT.load(Ordering::Relaxed)
}

/// Sends one record (dropped without a control line, or if it does not fit `MAX_RECORD`).
pub fn send(record: &ControlRecord) {
    if !present() {
        return;
    }
    let mut buf = [0u8; MAX_RECORD];
    if let Some(frame) = record.encode(&mut buf) {
        write(frame);
    }
}

/// Sends several records with one write (one exit under KVM for up to 4 KiB): the boot's
/// `ServiceUp`s and `Ready` go out together.
pub fn send_all(records: &[ControlRecord]) {
    if !present() {
        return;
    }
    let mut out = Vec::with_capacity(records.len() * 64);
    let mut buf = [0u8; MAX_RECORD];
    for r in records {
        if let Some(frame) = r.encode(&mut buf) {
            out.extend_from_slice(frame);
        }
    }
    write(&out);
}

/// Sends the `Fatal` record, once (a fault while reporting a fault sends nothing more), and
/// only when the heap can be used: a fault inside the allocator must not allocate.
pub fn fatal(reason: core::fmt::Arguments<'_>) {
    if !present() || !super::heap::usable() || FATAL_SENT.swap(true, Ordering::Relaxed) {
        return;
    }
    send(&ControlRecord::Fatal {
        reason: alloc::fmt::format(reason),
    });
}

fn write(bytes: &[u8]) {
    // SAFETY: string output from our own buffer to the UART's data port (allowed by the TSS
    // I/O bitmap); rsi/rcx are declared clobbered.
    unsafe {
        asm!(
            "rep outsb",
            in("dx") COM2,
            inout("rsi") bytes.as_ptr() => _,
            inout("rcx") bytes.len() => _,
            options(nostack, preserves_flags, readonly)
        )
    };
}
