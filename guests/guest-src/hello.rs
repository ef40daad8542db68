//! `hello`: prints one line and exits with status 0, in a handful of instructions.
//!
//! Written in assembly, without the runtime, because VMM start-up benchmarks time it: the PVH
//! entry stays in 32-bit protected mode (no long-mode switch, no page tables) and the Linux 64-bit
//! entry runs the same loop. No LSR polling: a VMM's UART accepts bytes at once, and every port
//! read would be one more exit.

#![no_std]
#![no_main]

core::arch::global_asm!(
    r#"
    .section .note.Xen, "a", @note
    .p2align 2
    .long 4
    .long 4
    .long 18                    /* XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .long rt_pvh_start32
    .p2align 2

    .section .text.boot, "ax"
    .code32
    .global rt_pvh_start32
rt_pvh_start32:
    movl $hello_message, %esi
    movl $hello_message_end - hello_message, %ecx
    movw $0x3f8, %dx
1:  lodsb
    outb %al, %dx
    loop 1b
    xorl %eax, %eax
    outb %al, $0xf4
2:  cli
    hlt
    jmp 2b

    .code64
    .global rt_linux_start64
rt_linux_start64:
    leaq hello_message(%rip), %rsi
    movl $hello_message_end - hello_message, %ecx
    movw $0x3f8, %dx
1:  lodsb
    outb %al, %dx
    loop 1b
    xorl %eax, %eax
    outb %al, $0xf4
2:  cli
    hlt
    jmp 2b

    .section .rodata.hello, "a"
hello_message:
    .ascii "Hello from the popek hello guest!\n"
hello_message_end:
    .text
    "#,
    options(att_syntax)
);

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    loop {}
}
