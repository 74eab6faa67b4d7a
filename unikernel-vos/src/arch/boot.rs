//! PVH entry and the trampoline to long mode, then the drop to ring 3.
//!
//! Everything the CPU needs before ring 3 is prebuilt as static data (page tables identity
//! mapping 4 GiB with user-accessible 2 MiB pages, GDT, TSS), so ring 0 runs a few dozen
//! instructions: under paravirtual KVM each ring-0 instruction is emulated.

use core::arch::global_asm;

/// Selector of the ring-0 code segment.
pub const KERNEL_CS: u16 = 0x08;
/// Selector of the ring-3 code segment (RPL 3).
pub const USER_CS: u16 = 0x20 | 3;

global_asm!(
    r#"
    .section .note.Xen, "a", @note
    .balign 4
    .long 4                 /* name size */
    .long 4                 /* desc size */
    .long 18                /* XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .long pvh_start32

    .section .text.boot, "ax"
    .code32
    .global pvh_start32
pvh_start32:
    cli
    mov esi, ebx                       /* hvm_start_info, kept for the kernel */
    lgdt [gdt_ptr]
    mov eax, cr4
    or eax, 0x20                       /* PAE */
    mov cr4, eax
    mov eax, offset pml4
    mov cr3, eax
    mov ecx, 0xC0000080                /* EFER */
    rdmsr
    or eax, 0x100                      /* LME */
    wrmsr
    mov eax, 0x80000011                /* PG | ET | PE */
    mov cr0, eax
    .byte 0xEA                         /* ljmp 0x08:long_mode_entry */
    .long long_mode_entry
    .word 0x08

    .code64
long_mode_entry:
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    xor eax, eax
    mov fs, ax
    mov gs, ax
    /* TSS descriptor base (the TSS lies below 16 MiB, so bits 24.. are 0). */
    mov eax, offset tss
    mov word ptr [gdt_tss + 2], ax
    shr eax, 16
    mov byte ptr [gdt_tss + 4], al
    mov ax, 0x28
    ltr ax
    lidt [idt_ptr]
    /* IOPL=0 (popfq first: paravirtual KVM keeps IOPL from popf), then iretq to ring 3 with
       IOPL=0, IF=0: ss, rsp, rflags, cs, rip. With IOPL below 3 every CPU, paravirtual or
       not, checks ring 3's port I/O against the TSS I/O bitmap (below); ring 3 never needs
       cli/sti (it runs with IF=0 and halts through the #GP handler). */
    push 0x0002
    popfq
    push 0x1b
    mov rax, offset user_stack_top - 8
    push rax
    push 0x0002
    push 0x23
    mov rax, offset vos_entry
    push rax
    mov edi, esi
    iretq

    .section .data.pagetables, "aw"
    .balign 4096
pml4:
    .quad pdpt + 0x7
    .fill 511, 8, 0
pdpt:
    .quad pd0 + 0x7
    .quad pd0 + 0x1000 + 0x7
    .quad pd0 + 0x2000 + 0x7
    .quad pd0 + 0x3000 + 0x7
    .fill 508, 8, 0
pd0:
    /* 0..3 GiB: RAM, write-back; present | writable | user | 2 MiB page */
    .set page, 0
    .rept 1536
    .quad (page << 21) | 0x87
    .set page, page + 1
    .endr
    /* 3..4 GiB: PCI/MMIO hole, LAPIC, IOAPIC: uncached (PCD | PWT) */
    .rept 512
    .quad (page << 21) | 0x9F
    .set page, page + 1
    .endr

    .section .data, "aw"
    .balign 16
gdt:
    .quad 0
    .quad 0x00AF9A000000FFFF           /* 0x08 kernel code 64 */
    .quad 0x00CF92000000FFFF           /* 0x10 kernel data */
    .quad 0x00CFF2000000FFFF           /* 0x18 user data (DPL 3) */
    .quad 0x00AFFA000000FFFF           /* 0x20 user code 64 (DPL 3) */
gdt_tss:
    .quad 0x0000890000002068           /* 0x28 TSS, limit 104+8192 (base filled at boot) */
    .quad 0
gdt_end:
    .balign 4
    .word 0
gdt_ptr:
    .word gdt_end - gdt - 1
    .quad gdt
    .balign 4
    .word 0
idt_ptr:
    .word 256 * 16 - 1
    .quad IDT
    .balign 16
tss:
    .long 0
    .quad kernel_stack_top             /* RSP0: stack for ring 3 -> ring 0 entries */
    .fill 11, 8, 0
    .word 0
    .word 104                          /* I/O bitmap right after */
    /* The I/O permission bitmap (a set bit denies the port to ring 3): only the ports the VOS
       uses are open. Any other port faults (#GP), and the #GP handler reports it as fatal. */
    .fill 4, 1, 0xFF                   /* bytes 0-3:   0x00-0x1f */
    .byte 0xFD                         /* byte 4:      0x21, master PIC mask */
    .fill 3, 1, 0xFF
    .byte 0xF0                         /* byte 8:      0x40-0x43, PIT channel 0 and command */
    .fill 5, 1, 0xFF
    .byte 0xFC                         /* byte 14:     0x70-0x71, CMOS clock */
    .fill 5, 1, 0xFF
    .byte 0xFD                         /* byte 20:     0xa1, slave PIC mask */
    .fill 9, 1, 0xFF
    .byte 0x0F                         /* byte 30:     0xf4-0xf7, isa-debug-exit */
    .fill 64, 1, 0xFF
    .byte 0x00                         /* byte 95:     0x2f8-0x2ff, COM2 (control channel) */
    .fill 31, 1, 0xFF
    .byte 0x00                         /* byte 127:    0x3f8-0x3ff, COM1 (console) */
    .fill 287, 1, 0xFF
    .byte 0x00                         /* byte 415:    0xcf8-0xcff, PCI configuration */
    .fill 7776, 1, 0xFF                /* bytes 416-8191 */
    .byte 0xFF
tss_end:

    .section .bss
    .balign 4096
kernel_stack:
    .skip 16384
kernel_stack_top:
user_stack:
    .skip 262144
user_stack_top:
"#
);
