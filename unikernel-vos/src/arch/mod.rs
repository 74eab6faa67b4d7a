//! The machine: boot, descriptor tables, port I/O, serial console, control channel, heap, exit
//! device, boot info, clock and interrupt controllers. Nothing above this module touches the
//! CPU directly.

pub mod apic;
pub mod boot;
pub mod control;
pub mod heap;
pub mod interrupts;
pub mod pvh;
pub mod serial;
pub mod time;

use core::arch::asm;
use core::fmt;

/// Writes one byte to an I/O port (allowed in ring 3 by the TSS I/O bitmap).
#[inline]
pub fn outb(port: u16, value: u8) {
    // SAFETY: port I/O to devices this kernel owns; no memory is touched.
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags))
    };
}

/// Reads one byte from an I/O port.
#[inline]
pub fn inb(port: u16) -> u8 {
    let v: u8;
    // SAFETY: as `outb`.
    unsafe {
        asm!("in al, dx", out("al") v, in("dx") port, options(nomem, nostack, preserves_flags))
    };
    v
}

/// Writes a 32-bit value to an I/O port.
#[inline]
pub fn outl(port: u16, value: u32) {
    // SAFETY: as `outb`.
    unsafe {
        asm!("out dx, eax", in("dx") port, in("eax") value, options(nomem, nostack, preserves_flags))
    };
}

/// Reads a 32-bit value from an I/O port.
#[inline]
pub fn inl(port: u16) -> u32 {
    let v: u32;
    // SAFETY: as `outb`.
    unsafe {
        asm!("in eax, dx", out("eax") v, in("dx") port, options(nomem, nostack, preserves_flags))
    };
    v
}

/// Why the VM ends; QEMU's isa-debug-exit turns value `v` into exit status `2v+1`.
#[derive(Clone, Copy, Debug)]
#[repr(u8)]
pub enum ExitCode {
    /// Orderly end (QEMU exits with status 1: isa-debug-exit cannot exit 0).
    Done = 0,
    /// Panic or CPU exception (status 3).
    Fault = 1,
    /// Bad or missing boot configuration (status 5).
    BadConfig = 2,
}

/// I/O port of QEMU's `isa-debug-exit` device (`-device isa-debug-exit,iobase=0xf4,iosize=4`).
pub const DEBUG_EXIT_PORT: u16 = 0xf4;

/// Ends the VM through isa-debug-exit; without that device, sleeps forever with interrupts off.
pub fn exit(code: ExitCode) -> ! {
    outl(DEBUG_EXIT_PORT, code as u32);
    // Without isa-debug-exit: stop (the LAPIC timer is masked first so the halt is final).
    apic::mask_timer();
    loop {
        interrupts::halt();
    }
}

/// The first steps in ring 3: the clock's origin, the IDT, the PVH boot information, the heap
/// (the RAM after the image) and the control channel (so that every later failure reaches the
/// host). Returns the boot information.
pub fn init(start_info: u32) -> pvh::BootInfo {
    time::set_origin();
    interrupts::init();
    let boot =
        pvh::parse(start_info).unwrap_or_else(|e| fatal(ExitCode::Fault, format_args!("{e}")));
    heap::init(boot.ram_start, boot.ram_end);
    control::init();
    boot
}

/// Reports a fatal error, as the console line `dvs: FATAL <what>` and a `Fatal` control record,
/// and ends the VM with `code`.
pub fn fatal(code: ExitCode, what: fmt::Arguments<'_>) -> ! {
    report_fatal(what);
    exit(code)
}

/// Reports a fatal error like [`fatal`] without ending the VM (the caller adds to the console,
/// then calls [`exit`]).
pub fn report_fatal(what: fmt::Arguments<'_>) {
    crate::println!("dvs: FATAL {what}");
    control::fatal(what);
}

/// A count of seconds since 2000 from the CMOS real-time clock that grows with the date and
/// time (the default incarnation; not calendar-exact).
pub fn rtc_seconds() -> u32 {
    let read = |reg: u8| {
        outb(0x70, reg);
        inb(0x71)
    };
    let binary = read(0x0B) & 0x04 != 0;
    let conv = |v: u8| {
        if binary {
            v as u32
        } else {
            (v as u32 & 0x0F) + (v as u32 >> 4) * 10
        }
    };
    let (s, m, h) = (conv(read(0x00)), conv(read(0x02)), conv(read(0x04) & 0x7F));
    let (d, mo, y) = (conv(read(0x07)), conv(read(0x08)), conv(read(0x09)));
    // 31-day months and 372-day years: not calendar days, but never decreasing.
    let days = y * 372 + mo.saturating_sub(1) * 31 + d;
    let secs = ((days * 24 + h) * 60 + m) * 60 + s;
    if secs == 0 {
        (time::rdtsc() >> 10) as u32 | 1
    } else {
        secs
    }
}
