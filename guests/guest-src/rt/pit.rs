//! The 8254 PIT: channel 2 as a polled one-shot delay (gated through port 0x61), channel 0 as
//! the periodic interrupt source.

use crate::port::{inb, outb};

/// The PIT input clock.
pub const FREQUENCY_HZ: u32 = 1_193_182;

/// Busy-waits about `micros` microseconds (at most ~54 ms per call) on PIT channel 2. Returns
/// false if the output never rose (no PIT), after a bounded number of polls.
pub fn delay_us(micros: u32) -> bool {
    let count = (u64::from(FREQUENCY_HZ) * u64::from(micros) / 1_000_000).clamp(1, 0xffff) as u16;
    // Gate low, speaker off; then channel 2, lobyte/hibyte, mode 0 (interrupt on terminal count).
    let gate = inb(0x61) & !0x03;
    outb(0x61, gate);
    outb(0x43, 0xb0);
    outb(0x42, count as u8);
    outb(0x42, (count >> 8) as u8);
    // Raising the gate starts the count; OUT2 (bit 5 of port 0x61) rises at terminal count.
    outb(0x61, gate | 0x01);
    for _ in 0..10_000_000u32 {
        if inb(0x61) & 0x20 != 0 {
            return true;
        }
    }
    false
}

/// Starts channel 0 in mode 2 (rate generator) at about `hz` interrupts per second.
pub fn start_periodic(hz: u32) {
    let divisor = (FREQUENCY_HZ / hz).clamp(2, 0xffff) as u16;
    outb(0x43, 0x34);
    outb(0x40, divisor as u8);
    outb(0x40, (divisor >> 8) as u8);
}

