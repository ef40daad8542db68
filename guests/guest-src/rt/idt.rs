//! The IDT: one assembly stub per vector saving the registers into a [`Frame`] and calling the
//! Rust handler registered for that vector. Vectors without a handler print what happened and end
//! the VM with status 3.

use core::arch::{asm, global_asm};
use core::sync::atomic::{AtomicUsize, Ordering};

use crate::{Global, boot::KERNEL_CS};

global_asm!(
    r#"
    .section .text.rt_isr, "ax"
    .p2align 4
    .global rt_isr_stubs
rt_isr_stubs:
    .set rt_vec, 0
    .rept 256
    .p2align 4
    .if (rt_vec == 8) + (rt_vec == 10) + (rt_vec == 11) + (rt_vec == 12) + (rt_vec == 13) + (rt_vec == 14) + (rt_vec == 17) + (rt_vec == 21) + (rt_vec == 29) + (rt_vec == 30)
    .else
    pushq $0                    /* no error code: push a dummy one */
    .endif
    pushq $rt_vec
    jmp rt_isr_common
    .set rt_vec, rt_vec + 1
    .endr

rt_isr_common:
    pushq %rax
    pushq %rbx
    pushq %rcx
    pushq %rdx
    pushq %rsi
    pushq %rdi
    pushq %rbp
    pushq %r8
    pushq %r9
    pushq %r10
    pushq %r11
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, %rdi             /* &mut Frame */
    movq %rsp, %rbp
    andq $-16, %rsp
    subq $256, %rsp             /* the interrupted code's xmm0-15 */
    movups %xmm0, 0(%rsp)
    movups %xmm1, 16(%rsp)
    movups %xmm2, 32(%rsp)
    movups %xmm3, 48(%rsp)
    movups %xmm4, 64(%rsp)
    movups %xmm5, 80(%rsp)
    movups %xmm6, 96(%rsp)
    movups %xmm7, 112(%rsp)
    movups %xmm8, 128(%rsp)
    movups %xmm9, 144(%rsp)
    movups %xmm10, 160(%rsp)
    movups %xmm11, 176(%rsp)
    movups %xmm12, 192(%rsp)
    movups %xmm13, 208(%rsp)
    movups %xmm14, 224(%rsp)
    movups %xmm15, 240(%rsp)
    cld
    call rt_isr_dispatch
    movups 0(%rsp), %xmm0
    movups 16(%rsp), %xmm1
    movups 32(%rsp), %xmm2
    movups 48(%rsp), %xmm3
    movups 64(%rsp), %xmm4
    movups 80(%rsp), %xmm5
    movups 96(%rsp), %xmm6
    movups 112(%rsp), %xmm7
    movups 128(%rsp), %xmm8
    movups 144(%rsp), %xmm9
    movups 160(%rsp), %xmm10
    movups 176(%rsp), %xmm11
    movups 192(%rsp), %xmm12
    movups 208(%rsp), %xmm13
    movups 224(%rsp), %xmm14
    movups 240(%rsp), %xmm15
    movq %rbp, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %r11
    popq %r10
    popq %r9
    popq %r8
    popq %rbp
    popq %rdi
    popq %rsi
    popq %rdx
    popq %rcx
    popq %rbx
    popq %rax
    addq $16, %rsp              /* vector and error code */
    iretq
    .text
    "#,
    options(att_syntax)
);

/// The interrupted state as the stub saved it; handlers may change it (e.g. `rip`).
#[repr(C)]
#[derive(Debug)]
#[allow(missing_docs)]
pub struct Frame {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rbp: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub rdx: u64,
    pub rcx: u64,
    pub rbx: u64,
    pub rax: u64,
    pub vector: u64,
    pub error_code: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

/// A Rust interrupt or exception handler.
pub type Handler = fn(&mut Frame);

unsafe extern "C" {
    static rt_isr_stubs: u8;
}

const STUB_SIZE: u64 = 16;

static HANDLERS: [AtomicUsize; 256] = [const { AtomicUsize::new(0) }; 256];
static IDT: Global<[u64; 512]> = Global::new([0; 512]);

/// Installs the IDT with the exception vectors 0-31 pointing at the diagnostic stubs. Only the
/// vectors used are filled, to keep CPL-0 work small.
pub fn init() {
    for vector in 0..32 {
        set_gate(vector, stub_address(vector), 0);
    }
    #[repr(C, packed)]
    struct Pointer {
        limit: u16,
        base: u64,
    }
    let pointer = Pointer {
        limit: (512 * 8 - 1) as u16,
        base: IDT.get() as u64,
    };
    // SAFETY: the IDT is a static, so it outlives its use; every present gate points at a stub.
    unsafe { asm!("lidt [{}]", in(reg) &raw const pointer, options(readonly, nostack)) };
}

/// Routes `vector` to `handler`; `dpl` 3 lets CPL-3 code raise it with `int`.
pub fn set_handler(vector: u8, handler: Handler, dpl: u8) {
    HANDLERS[vector as usize].store(handler as usize, Ordering::SeqCst);
    set_gate(vector, stub_address(vector), dpl);
}

/// Points `vector` straight at `address` (an assembly entry), as an interrupt gate.
pub fn set_gate(vector: u8, address: u64, dpl: u8) {
    let low = (address & 0xffff)
        | (u64::from(KERNEL_CS) << 16)
        | (u64::from(0x8e | (dpl & 3) << 5) << 40)
        | ((address >> 16) & 0xffff) << 48;
    let high = address >> 32;
    // SAFETY: single 64-bit stores into the static IDT; gates are only changed by the BSP.
    unsafe {
        let idt = IDT.get() as *mut u64;
        idt.add(2 * vector as usize).write_volatile(low);
        idt.add(2 * vector as usize + 1).write_volatile(high);
    }
}

fn stub_address(vector: u8) -> u64 {
    (&raw const rt_isr_stubs) as u64 + STUB_SIZE * u64::from(vector)
}

/// Enables interrupts.
pub fn enable() {
    // SAFETY: sti only lets interrupts in; handlers are installed by then.
    unsafe { asm!("sti", options(nomem, nostack)) };
}

/// Disables interrupts.
pub fn disable() {
    // SAFETY: cli only keeps interrupts out.
    unsafe { asm!("cli", options(nomem, nostack)) };
}

/// Enables interrupts and halts until one arrives (sti's one-instruction shadow makes this
/// race-free), then disables them again.
pub fn wait_for_interrupt() {
    // SAFETY: as for `enable`/`disable`.
    unsafe { asm!("sti", "hlt", "cli", options(nomem, nostack)) };
}

#[unsafe(no_mangle)]
extern "C" fn rt_isr_dispatch(frame: &mut Frame) {
    let handler = HANDLERS[frame.vector as usize & 0xff].load(Ordering::SeqCst);
    if handler != 0 {
        // SAFETY: only `set_handler` stores here, and it stores a `Handler`.
        let handler: Handler = unsafe { core::mem::transmute::<usize, Handler>(handler) };
        handler(frame);
        return;
    }
    let cr2: u64;
    // SAFETY: reading CR2 has no side effects.
    unsafe { asm!("mov {}, cr2", out(reg) cr2, options(nomem, nostack)) };
    use crate::serial::Hex;
    crate::say!(
        "unexpected vector ",
        frame.vector,
        " at rip ",
        Hex(frame.rip),
        " (cs ",
        Hex(frame.cs),
        "), error code ",
        Hex(frame.error_code),
        ", cr2 ",
        Hex(cr2)
    );
    crate::exit(3)
}
