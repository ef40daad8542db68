//! The TSS and the way down to CPL 3 and back.
//!
//! [`enter_user`] saves the kernel's callee-saved registers and stack, `iretq`s into ring 3 on the
//! user segments, and returns when the user code calls [`user_return`], which executes `ud2` at a
//! known address (`rt_user_exit`) with the result in `rax`: the #UD brings the CPU back to ring 0
//! on the TSS's `rsp0` stack, and the #UD entry recognises the address and resumes the kernel.
//!
//! Why an exception and not `int 0x80` or `syscall`: on hosts that run CPL-3 code natively and
//! emulate CPL 0 (this project's own, see HOST.md) a CPL-3 `int n` arrives as #UD and `syscall`
//! reaches LSTAR still at CPL 3, while exceptions are delivered like on real hardware.

use core::arch::{asm, global_asm};

use crate::Global;
use crate::boot::{TSS_SEL, USER_CS, USER_DS};

const TSS_SIZE: usize = 104;

#[repr(C, align(16))]
struct Tss([u8; TSS_SIZE]);

static TSS: Global<Tss> = Global::new(Tss([0; TSS_SIZE]));
static RING0_STACK: Global<[u8; 16384]> = Global::new([0; 16384]);

unsafe extern "C" {
    static mut rt_gdt: [u64; 7];
    fn rt_user_return();
    fn rt_user_exit();
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

    /* The CPL-3 exit: user_return jumps here with the result in rax. */
    .global rt_user_exit
rt_user_exit:
    ud2

    /* #UD entry. From rt_user_exit at CPL 3: drop the exception frame and return from
       rt_enter_user with rax. Anything else: the ordinary diagnostic stub for vector 6. */
    .global rt_user_return
rt_user_return:
    testb $3, 8(%rsp)           /* saved CS: from ring 3? */
    jz 1f
    pushq %rax
    leaq rt_user_exit(%rip), %rax
    cmpq %rax, 8(%rsp)          /* saved RIP */
    popq %rax
    jne 1f
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
1:  jmp rt_isr_stubs + 6 * 16

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
/// register and routes #UD through the return path. Call once, after `idt::init`.
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
    crate::idt::set_gate(6, rt_user_return as *const () as u64, 0);
}

/// Runs `entry(arg)` at CPL 3 on `user_stack_top` with interrupts off, and returns the value
/// the user code passed back with [`user_return`]. Everything the user code touches must be
/// mapped user-accessible.
///
/// # Safety
/// `entry` must end with [`user_return`] (never return), and `user_stack_top` must be a
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

/// Ends a CPL-3 entry: jumps to `rt_user_exit` (a `ud2`) with `value` in `rax`, which returns
/// from [`enter_user`].
pub fn user_return(value: u64) -> ! {
    // SAFETY: the #UD entry recognises rt_user_exit and never comes back here.
    unsafe { asm!("jmp {}", sym rt_user_exit, in("rax") value, options(noreturn)) }
}
