//! Local APIC (timer, EOI) and IOAPIC (device interrupt routing), both by MMIO from ring 3;
//! the legacy 8259 PIC is masked.

use super::interrupts::{DEVICE_VECTORS, DEVICE_VECTOR_BASE, SPURIOUS_VECTOR, TIMER_VECTOR};
use core::ptr::{read_volatile, write_volatile};

const LAPIC: usize = 0xFEE0_0000;
const IOAPIC: usize = 0xFEC0_0000;

const TPR: usize = 0x80;
const EOI: usize = 0xB0;
const SVR: usize = 0xF0;
const LVT_TIMER: usize = 0x320;
const LVT_LINT0: usize = 0x350;
const LVT_LINT1: usize = 0x360;
const TIMER_INITIAL: usize = 0x380;
const TIMER_CURRENT: usize = 0x390;
const TIMER_DIVIDE: usize = 0x3E0;
const MASKED: u32 = 1 << 16;

fn lapic_write(reg: usize, v: u32) {
    // SAFETY: the LAPIC page is identity mapped, uncached and user accessible.
    unsafe { write_volatile((LAPIC + reg) as *mut u32, v) }
}

fn lapic_read(reg: usize) -> u32 {
    // SAFETY: as `lapic_write`.
    unsafe { read_volatile((LAPIC + reg) as *const u32) }
}

fn ioapic_write(reg: u32, v: u32) {
    // SAFETY: the IOAPIC window is identity mapped, uncached and user accessible.
    unsafe {
        write_volatile(IOAPIC as *mut u32, reg);
        write_volatile((IOAPIC + 0x10) as *mut u32, v);
    }
}

/// Masks the 8259 PIC, enables the LAPIC and masks LINT0 and the timer.
pub fn init() {
    super::outb(0x21, 0xFF);
    super::outb(0xA1, 0xFF);
    lapic_write(TPR, 0);
    lapic_write(SVR, 0x100 | SPURIOUS_VECTOR as u32);
    lapic_write(LVT_LINT0, MASKED);
    lapic_write(LVT_LINT1, MASKED);
    lapic_write(TIMER_DIVIDE, 0xB); // divide by 1
    lapic_write(LVT_TIMER, MASKED | TIMER_VECTOR as u32);
}

/// Signals end of interrupt to the LAPIC.
pub fn eoi() {
    lapic_write(EOI, 0);
}

/// Starts a masked one-shot countdown from the maximum, for calibration.
pub fn start_calibration_count() {
    lapic_write(LVT_TIMER, MASKED | TIMER_VECTOR as u32);
    lapic_write(TIMER_INITIAL, u32::MAX);
}

/// The LAPIC timer's current count.
pub fn current_count() -> u32 {
    lapic_read(TIMER_CURRENT)
}

/// Arms the one-shot timer to interrupt in `ns` nanoseconds (clamped to the counter's range).
pub fn arm_timer_ns(ns: u64) {
    let ticks = (ns as u128 * super::time::lapic_hz() as u128 / 1_000_000_000) as u64;
    lapic_write(LVT_TIMER, TIMER_VECTOR as u32);
    lapic_write(TIMER_INITIAL, ticks.clamp(1, u32::MAX as u64) as u32);
}

/// Stops and masks the timer.
pub fn mask_timer() {
    lapic_write(LVT_TIMER, MASKED | TIMER_VECTOR as u32);
    lapic_write(TIMER_INITIAL, 0);
}

/// Routes IOAPIC input `pin` to this CPU's device vector for that pin, edge-triggered and
/// active high. Edge, not level, even for PCI INTx: the loop acknowledges every device before
/// it halts, so each new event is a rising edge, and QEMU's userspace IOAPIC (TCG) loses
/// level-triggered wake-ups (a halted guest then answered in 6.5 ms instead of 0.15 ms).
pub fn route_irq(pin: u8) -> Result<(), u8> {
    if pin >= DEVICE_VECTORS {
        return Err(pin);
    }
    let vector = DEVICE_VECTOR_BASE as u32 + pin as u32;
    ioapic_write(0x11 + 2 * pin as u32, 0); // destination: APIC id 0
    ioapic_write(0x10 + 2 * pin as u32, vector);
    Ok(())
}
