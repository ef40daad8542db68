//! `int3`: takes a breakpoint exception at CPL 0 and handles it.
//!
//! Hosts that emulate CPL-0 code may be unable to emulate `int3`; there the VMM is expected to
//! stop with an emulation failure, which is what this guest lets a test observe.

#![no_std]
#![no_main]

use core::sync::atomic::{AtomicBool, Ordering};

use rt::{idt, say};

rt::entry!(main);

static HANDLED: AtomicBool = AtomicBool::new(false);

fn breakpoint(_: &mut idt::Frame) {
    // #BP is a trap: the saved rip is already past the int3, so returning resumes after it.
    HANDLED.store(true, Ordering::SeqCst);
    say!("int3: breakpoint handled");
}

fn main(_: &rt::BootInfo) -> u8 {
    idt::init();
    idt::set_handler(3, breakpoint, 0);
    // SAFETY: #BP is routed to `breakpoint`, which returns.
    unsafe { core::arch::asm!("int3") };
    if HANDLED.load(Ordering::SeqCst) {
        0
    } else {
        say!("int3: breakpoint not delivered");
        1
    }
}
