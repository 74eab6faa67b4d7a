//! The boot-time floor: a PVH ELF that exits QEMU (isa-debug-exit) at its first instruction.
//! The benchmark compares the VOS's launch-to-ready time against this one's launch-to-exit.
#![no_std]
#![no_main]

core::arch::global_asm!(
    r#"
    .section .note.Xen, "a", @note
    .balign 4
    .long 4
    .long 4
    .long 18
    .asciz "Xen"
    .long pvh_start32

    .section .text.boot, "ax"
    .code32
    .global pvh_start32
pvh_start32:
    mov dx, 0xf4
    xor eax, eax
    out dx, eax
1:  hlt
    jmp 1b
    .code64
"#
);

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    loop {}
}
