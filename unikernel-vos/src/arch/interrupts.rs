//! The IDT and the only ring-0 code after boot: exception entry, interrupt entry (EOI and
//! return) and the halt gate that ring 3 calls to sleep until the next interrupt.

use core::arch::{asm, global_asm};

/// Vector of the LAPIC timer.
pub const TIMER_VECTOR: u8 = 0x20;
/// First vector used for device interrupts (IOAPIC pins are mapped from here).
pub const DEVICE_VECTOR_BASE: u8 = 0x30;
/// Number of device vectors (one per IOAPIC pin used).
pub const DEVICE_VECTORS: u8 = 24;
/// Spurious-interrupt vector of the LAPIC.
pub const SPURIOUS_VECTOR: u8 = 0xFF;

/// The IDT, filled from ring 3 (its page is user-writable) before interrupts are used.
#[no_mangle]
static mut IDT: [u64; 512] = [0; 512];

global_asm!(
    r#"
    .section .text
    /* Exceptions: push a dummy error code where the CPU does not, then the vector. */
    .altmacro
    .macro EXC_NOERR n
    .global exc_stub_\n
exc_stub_\n:
    push 0
    push \n
    jmp exc_common
    .endm
    .macro EXC_ERR n
    .global exc_stub_\n
exc_stub_\n:
    push \n
    jmp exc_common
    .endm
    .irp n, 0,1,2,3,4,5,6,7,9,15,16,18,19,20,22,23,24,25,26,27,28,31
    EXC_NOERR \n
    .endr
    .irp n, 8,10,11,12,13,14,17,21,29,30
    EXC_ERR \n
    .endr

    .section .rodata
    .balign 8
    .global exc_stub_table
exc_stub_table:
    .irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    .quad exc_stub_\n
    .endr

    .section .text
exc_common:
    mov rdi, rsp                      /* [vector, error, rip, cs, rflags, rsp, ss] */
    and rsp, -16
    call vos_exception

    /* Device and timer interrupts only ever arrive inside the halt gate: return at once.
       Ring 3 sends the EOI after the halt (`halt`), and polls the devices. */
    .global irq_stub
irq_stub:
    iretq

    .global spurious_stub
spurious_stub:
    iretq

    /* The halt gate. Paravirtual KVM refuses `int n` and `syscall` to ring 0 from ring 3,
       but faults still arrive: ring 3 executes the `hlt` at vos_halt_insn, which raises
       #GP; this handler sees that rip, steps over it, and halts in ring 0 with interrupts
       enabled for exactly that one hlt (sti's shadow closes the race with a pending IRQ),
       then returns to ring 3 with its flags (IF=0). Any other #GP is fatal. */
    .global gp_stub
gp_stub:
    cmp qword ptr [rsp + 8], offset vos_halt_insn
    jne 1f
    add qword ptr [rsp + 8], 1
    add rsp, 8
    sti
    hlt
    cli
    iretq
1:
    push 13
    jmp exc_common
"#
);

global_asm!(
    r#"
    .section .text
    /* Ring 3's halt: this hlt faults (#GP), and gp_stub recognises its address. */
    .global vos_halt
vos_halt:
    .global vos_halt_insn
vos_halt_insn:
    hlt
    ret
"#
);

extern "C" {
    fn vos_halt();
    fn irq_stub();
    fn spurious_stub();
    fn gp_stub();
    static exc_stub_table: [usize; 32];
}

/// Writes one 64-bit interrupt gate (ring-0 code segment) into the IDT.
fn set_gate(vector: u8, handler: usize, dpl: u8) {
    let lo = (handler as u64 & 0xFFFF)
        | ((super::boot::KERNEL_CS as u64) << 16)
        | ((0x8E_u64 | ((dpl as u64 & 3) << 5)) << 40)
        | (((handler as u64 >> 16) & 0xFFFF) << 48);
    let hi = handler as u64 >> 32;
    // SAFETY: single-threaded kernel; the IDT is only written here, with interrupts off.
    unsafe {
        let idt = &raw mut IDT;
        (*idt)[vector as usize * 2] = lo;
        (*idt)[vector as usize * 2 + 1] = hi;
    }
}

/// Fills the IDT: exceptions, timer, device vectors and the spurious vector.
pub fn init() {
    // SAFETY: the table is immutable data emitted by the assembly above.
    let exc = unsafe { &exc_stub_table };
    for (v, h) in exc.iter().enumerate() {
        set_gate(v as u8, *h, 0);
    }
    set_gate(13, gp_stub as *const () as usize, 0);
    set_gate(TIMER_VECTOR, irq_stub as *const () as usize, 0);
    for v in DEVICE_VECTOR_BASE..DEVICE_VECTOR_BASE + DEVICE_VECTORS {
        set_gate(v, irq_stub as *const () as usize, 0);
    }
    set_gate(SPURIOUS_VECTOR, spurious_stub as *const () as usize, 0);
}

/// Sleeps (ring 0 `sti; hlt`) until the next interrupt; returns with interrupts off again.
pub fn halt() {
    // SAFETY: vos_halt's hlt faults; the #GP handler halts in ring 0 and returns past it.
    unsafe { vos_halt() };
    // The interrupt that woke us was not acknowledged in ring 0 (fewer emulated ring-0
    // instructions under paravirtual KVM): end it here. Harmless if nothing is in service.
    super::apic::eoi();
}

/// Exception entry, reached in ring 0: names the exception (console and control channel) and
/// ends the VM.
#[no_mangle]
extern "C" fn vos_exception(frame: *const u64) -> ! {
    // SAFETY: exc_common passes the stack it built: vector, error, then the CPU frame.
    let f = unsafe { core::slice::from_raw_parts(frame, 7) };
    let cr2: u64;
    // SAFETY: reading CR2 has no side effect (we are in ring 0 here).
    unsafe { asm!("mov {}, cr2", out(reg) cr2, options(nomem, nostack)) };
    let name = exception_name(f[0]);
    let what = format_args!(
        "cpu exception {} ({name}) error={:#x} rip={:#x} cs={:#x} rflags={:#x} rsp={:#x} cr2={:#x}",
        f[0], f[1], f[2], f[3], f[4], f[5], cr2
    );
    super::fatal(super::ExitCode::Fault, what)
}

fn exception_name(v: u64) -> &'static str {
    match v {
        0 => "divide error",
        3 => "breakpoint",
        6 => "invalid opcode",
        8 => "double fault",
        13 => "general protection",
        14 => "page fault",
        _ => "exception",
    }
}
