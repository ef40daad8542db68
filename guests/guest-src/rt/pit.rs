//! The 8254 PIT: channel 0 as a polled delay, or as the periodic interrupt source.

use crate::port::{inb, outb};

/// The PIT input clock.
pub const FREQUENCY_HZ: u32 = 1_193_182;

/// Busy-waits about `micros` microseconds by polling channel 0's count (latched reads while it
/// runs in mode 2 with the full 65536 period). Channel 0 rather than channel 2: channel 2's gate
/// and output live in port 0x61, which some machines (QEMU microvm) do not have. Gives up after a
/// bounded number of polls if the count never moves (no PIT). Leaves channel 0 running.
pub fn delay_us(micros: u32) {
    let target = u64::from(FREQUENCY_HZ) * u64::from(micros) / 1_000_000;
    outb(0x43, 0x34);
    outb(0x40, 0);
    outb(0x40, 0);
    let mut last = read_count0();
    let mut elapsed = 0u64;
    for _ in 0..1_000_000u32 {
        let now = read_count0();
        // The count runs down and wraps at 65536; polls are far closer together than that.
        elapsed += u64::from(last.wrapping_sub(now));
        last = now;
        if elapsed >= target {
            return;
        }
    }
}

fn read_count0() -> u16 {
    outb(0x43, 0x00); // latch channel 0
    let low = inb(0x40);
    let high = inb(0x40);
    u16::from(low) | u16::from(high) << 8
}

/// Starts channel 0 in mode 2 (rate generator) at about `hz` interrupts per second.
pub fn start_periodic(hz: u32) {
    let divisor = (FREQUENCY_HZ / hz).clamp(2, 0xffff) as u16;
    outb(0x43, 0x34);
    outb(0x40, divisor as u8);
    outb(0x40, (divisor >> 8) as u8);
}
