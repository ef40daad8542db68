//! The TSS and the way down to CPL 3 and back.
//!
//! [`enter_user`] saves the kernel's callee-saved registers and stack, `iretq`s into ring 3 on the
//! user segments, and returns when the user code raises [`USER_RETURN_VECTOR`] (an interrupt gate
//! with DPL 3) with its result in `rax`. The TSS's `rsp0` is the stack the CPU switches to then.

use core::arch::{asm, global_asm};

use crate::Global;
use crate::boot::{TSS_SEL, USER_CS, USER_DS};

/// The vector user code raises (`int 0x80`) to hand its result back to ring 0.
pub const USER_RETURN_VECTOR: u8 = 0x80;

const TSS_SIZE: usize = 104;

#[repr(C, align(16))]
struct Tss([u8; TSS_SIZE]);

static TSS: Global<Tss> = Global::new(Tss([0; TSS_SIZE]));
static RING0_STACK: Global<[u8; 16384]> = Global::new([0; 16384]);

unsafe extern "C" {
    static mut rt_gdt: [u64; 7];
    fn rt_user_return();
}

global_asm!(
    r#"
    .section .text.rt_user, "ax"
    /* rt_enter_user(entry: rdi, arg: rsi, user_stack_top: rdx, user_cs: rcx, user_ss: r8) */
    .global rt_enter_user
rt_enter_user:
    pushq %rbx
    pushq %rbp
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, rt_saved_kernel_rsp(%rip)
    pushq %r8                   /* ss */
    pushq %rdx                  /* rsp */
    pushq $0x2                  /* rflags: interrupts off, IOPL 0 */
    pushq %rcx                  /* cs */
    pushq %rdi                  /* rip */
    movq %rsi, %rdi
    xorl %eax, %eax
    xorl %ebx, %ebx
    xorl %ecx, %ecx
    xorl %edx, %edx
    xorl %esi, %esi
    xorl %ebp, %ebp
    xorl %r8d, %r8d
    xorl %r9d, %r9d
    xorl %r10d, %r10d
    xorl %r11d, %r11d
    xorl %r12d, %r12d
    xorl %r13d, %r13d
    xorl %r14d, %r14d
    xorl %r15d, %r15d
    iretq

    /* int 0x80 from ring 3: drop the interrupt frame and return from rt_enter_user with rax. */
    .global rt_user_return
rt_user_return:
    movw $0x10, %cx
    movw %cx, %ds
    movw %cx, %es
    movw %cx, %ss
    movq rt_saved_kernel_rsp(%rip), %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbp
    popq %rbx
    ret

    .section .data.rt_user, "aw"
    .p2align 3
rt_saved_kernel_rsp:
    .quad 0
    .text
    "#,
    options(att_syntax)
);

unsafe extern "C" {
    fn rt_enter_user(entry: u64, arg: u64, user_stack_top: u64, cs: u64, ss: u64) -> u64;
}

/// Fills the TSS descriptor (with `rsp0` at the top of a static ring-0 stack), loads the task
/// register and routes [`USER_RETURN_VECTOR`] to the return path. Call once, after `idt::init`.
pub fn init_user_mode() {
    let tss = TSS.get() as u64;
    let rsp0 = RING0_STACK.get() as u64 + 16384;
    // SAFETY: the TSS is a static; rsp0 lives at byte 4, the I/O map base at byte 102 (= size,
    // so there is no I/O map). The GDT is the boot stub's static table; slot 5-6 is the TSS.
    unsafe {
        let bytes = TSS.get() as *mut u8;
        (bytes.add(4) as *mut u64).write_unaligned(rsp0);
        (bytes.add(102) as *mut u16).write_unaligned(TSS_SIZE as u16);
        let limit = (TSS_SIZE - 1) as u64;
        let low = (limit & 0xffff)
            | (tss & 0xff_ffff) << 16
            | 0x89 << 40 // present, 64-bit TSS (available)
            | ((tss >> 24) & 0xff) << 56;
        let gdt = &raw mut rt_gdt as *mut u64;
        gdt.add(5).write_volatile(low);
        gdt.add(6).write_volatile(tss >> 32);
        asm!("ltr {0:x}", in(reg) TSS_SEL, options(nostack));
    }
    crate::idt::set_gate(USER_RETURN_VECTOR, rt_user_return as *const () as u64, 3);
}

/// Runs `entry(arg)` at CPL 3 on `user_stack_top` with interrupts off, and returns the value
/// the user code passed back in `rax` with `int 0x80`. Everything the user code touches must be
/// mapped user-accessible.
///
/// # Safety
/// `entry` must end by raising `int 0x80` (never return), and `user_stack_top` must be a
/// 16-byte-aligned user-writable stack.
pub unsafe fn enter_user(entry: extern "C" fn(u64) -> !, arg: u64, user_stack_top: u64) -> u64 {
    // SAFETY: forwarded to the caller; the TSS and gate are set up by `init_user_mode`.
    unsafe {
        rt_enter_user(
            entry as *const () as u64,
            arg,
            user_stack_top - 8, // as if called: keeps the SysV alignment the entry expects
            u64::from(USER_CS),
            u64::from(USER_DS),
        )
    }
}

/// Raises [`USER_RETURN_VECTOR`] with `value` in `rax`: the end of a CPL-3 entry.
pub fn user_return(value: u64) -> ! {
    // SAFETY: the gate for 0x80 has DPL 3 and never returns here.
    unsafe { asm!("int 0x80", in("rax") value, options(noreturn)) }
}
