//! AP start-up: the real-mode trampoline (copied to [`TRAMPOLINE_ADDRESS`]) and INIT-SIPI-SIPI.
//!
//! An AP starts in real mode at `vector << 12`; the trampoline loads a tiny GDT, enters flat
//! 32-bit protected mode and jumps into the image at `rt_ap_start32`, which shares the PVH path's
//! switch to long mode. Each AP then takes the next free stack (`lock xadd` on a counter) and
//! calls the entry registered with [`start_aps`].

use core::arch::global_asm;
use core::sync::atomic::{AtomicUsize, Ordering};

use crate::{apic, pit};

/// Where the trampoline is copied: below 1 MiB, page aligned.
pub const TRAMPOLINE_ADDRESS: u64 = 0x8000;
/// The start-up IPI vector matching [`TRAMPOLINE_ADDRESS`].
pub const STARTUP_VECTOR: u8 = (TRAMPOLINE_ADDRESS >> 12) as u8;

global_asm!(
    r#"
    .section .rodata.rt_trampoline, "a"
    .global rt_trampoline_start, rt_trampoline_end
    .code16
rt_trampoline_start:
    cli
    cld
    xorw %ax, %ax
    movw %ax, %ds
    lgdtl (rt_trampoline_gdtr - rt_trampoline_start + {base})
    movl %cr0, %eax
    orl $1, %eax
    movl %eax, %cr0
    ljmpl $0x08, $rt_ap_start32
    .p2align 3
rt_trampoline_gdt:
    .quad 0
    .quad 0x00cf9a000000ffff    /* 0x08: flat 32-bit code */
    .quad 0x00cf92000000ffff    /* 0x10: flat data */
rt_trampoline_gdtr:
    .word 23
    .long rt_trampoline_gdt - rt_trampoline_start + {base}
rt_trampoline_end:
    .code64
    .text
    "#,
    base = const TRAMPOLINE_ADDRESS,
    options(att_syntax)
);

unsafe extern "C" {
    static rt_trampoline_start: u8;
    static rt_trampoline_end: u8;
}

static AP_ENTRY: AtomicUsize = AtomicUsize::new(0);

/// What an AP runs once in long mode, on its own stack.
pub type ApEntry = fn() -> !;

#[unsafe(no_mangle)]
extern "C" fn rt_rust_ap_start() -> ! {
    let entry = AP_ENTRY.load(Ordering::SeqCst);
    if entry == 0 {
        crate::halt_forever();
    }
    // SAFETY: only `start_aps` stores here, and it stores an `ApEntry`.
    let entry: ApEntry = unsafe { core::mem::transmute::<usize, ApEntry>(entry) };
    entry()
}

/// Copies the trampoline below 1 MiB and sends INIT, then two start-up IPIs, to every APIC ID in
/// `apic_ids` (the BSP's own is skipped). All INITs go out first and share one 10 ms wait, so
/// start-up costs about the same for 2 CPUs as for 64. Each AP ends up in `entry`.
pub fn start_aps(apic_ids: &[u8], entry: ApEntry) {
    AP_ENTRY.store(entry as usize, Ordering::SeqCst);
    let start = &raw const rt_trampoline_start;
    let end = &raw const rt_trampoline_end;
    // SAFETY: the trampoline is a byte range of the image; TRAMPOLINE_ADDRESS is low RAM that
    // nothing of ours uses (the boot structures were copied out by `boot::collect`).
    unsafe {
        core::ptr::copy_nonoverlapping(
            start,
            TRAMPOLINE_ADDRESS as *mut u8,
            end as usize - start as usize,
        );
    }
    apic::enable();
    let me = apic::id();
    let others = || apic_ids.iter().copied().filter(move |&id| id != me);
    for id in others() {
        apic::send_ipi(id, apic::ICR_INIT_ASSERT);
        apic::send_ipi(id, apic::ICR_INIT_DEASSERT);
    }
    pit::delay_us(10_000);
    for _ in 0..2 {
        for id in others() {
            apic::send_ipi(id, apic::ICR_STARTUP | u32::from(STARTUP_VECTOR));
        }
        pit::delay_us(200);
    }
}
