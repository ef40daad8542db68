//! `reset`: pulses the reset line through the i8042 (0xfe to port 0x64). A VMM that implements
//! it ends the VM there (popek exits 0); a guest still running 100 ms later reports failure.

#![no_std]
#![no_main]

use rt::{pit, port, say};

rt::entry!(main);

fn main(_: &rt::BootInfo) -> u8 {
    say!("reset: pulsing the i8042 reset line");
    port::outb(0x64, 0xfe);
    // Give a VMM that handles the reset asynchronously (QEMU) time to act on it.
    for _ in 0..2 {
        pit::delay_us(50_000);
    }
    say!("reset: still running");
    1
}
