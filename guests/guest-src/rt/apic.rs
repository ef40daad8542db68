//! The local APIC (xAPIC, MMIO) and the IOAPIC.

use core::ptr::{read_volatile, write_volatile};

/// Default physical base of the local APIC.
pub const LAPIC_BASE: u64 = 0xfee0_0000;

/// Local APIC register offsets.
pub mod reg {
    /// APIC ID (bits 31:24).
    pub const ID: u64 = 0x20;
    /// End of interrupt.
    pub const EOI: u64 = 0xb0;
    /// Spurious interrupt vector; bit 8 enables the APIC.
    pub const SVR: u64 = 0xf0;
    /// Interrupt command, low half (writing it sends).
    pub const ICR_LOW: u64 = 0x300;
    /// Interrupt command, high half (destination in bits 31:24).
    pub const ICR_HIGH: u64 = 0x310;
    /// LVT timer.
    pub const LVT_TIMER: u64 = 0x320;
    /// Timer initial count.
    pub const TIMER_INITIAL: u64 = 0x380;
    /// Timer current count.
    pub const TIMER_CURRENT: u64 = 0x390;
    /// Timer divide configuration.
    pub const TIMER_DIVIDE: u64 = 0x3e0;
}

/// Reads a local APIC register.
pub fn read(offset: u64) -> u32 {
    // SAFETY: the LAPIC page is identity mapped (uncached) by the boot page tables.
    unsafe { read_volatile((LAPIC_BASE + offset) as *const u32) }
}

/// Writes a local APIC register.
pub fn write(offset: u64, value: u32) {
    // SAFETY: as for `read`.
    unsafe { write_volatile((LAPIC_BASE + offset) as *mut u32, value) }
}

/// This CPU's APIC ID.
pub fn id() -> u8 {
    (read(reg::ID) >> 24) as u8
}

/// Software-enables the local APIC with spurious vector 0xff.
pub fn enable() {
    write(reg::SVR, 0x1ff);
}

/// Signals end of interrupt.
pub fn eoi() {
    write(reg::EOI, 0);
}

/// Sends an IPI: `command` is the ICR low word, `dest` the destination APIC ID. Waits
/// (boundedly) for the delivery status bit to clear.
pub fn send_ipi(dest: u8, command: u32) {
    write(reg::ICR_HIGH, u32::from(dest) << 24);
    write(reg::ICR_LOW, command);
    for _ in 0..1000 {
        if read(reg::ICR_LOW) & (1 << 12) == 0 {
            break;
        }
    }
}

/// ICR: INIT, level assert.
pub const ICR_INIT_ASSERT: u32 = 0x0000_4500;
/// ICR: INIT, level-triggered de-assert.
pub const ICR_INIT_DEASSERT: u32 = 0x0000_8500;
/// ICR: start-up IPI (OR in the vector).
pub const ICR_STARTUP: u32 = 0x0000_4600;

/// An IOAPIC at an MMIO base.
#[derive(Clone, Copy, Debug)]
pub struct IoApic {
    base: u64,
}

impl IoApic {
    /// The IOAPIC at `base` (0xfec00000 on a PC).
    pub fn new(base: u64) -> Self {
        Self { base }
    }

    fn write(&self, index: u32, value: u32) {
        // SAFETY: IOREGSEL at +0 and IOWIN at +0x10, in the identity-mapped IOAPIC page.
        unsafe {
            write_volatile(self.base as *mut u32, index);
            write_volatile((self.base + 0x10) as *mut u32, value);
        }
    }

    /// Programs redirection entry `pin`: fixed delivery of `vector` to APIC ID `dest`, with
    /// `level`-triggered / `active_low` polarity as given, unmasked.
    pub fn route(&self, pin: u32, vector: u8, dest: u8, level: bool, active_low: bool) {
        let low = u32::from(vector) | u32::from(active_low) << 13 | u32::from(level) << 15;
        self.write(0x10 + 2 * pin + 1, u32::from(dest) << 24);
        self.write(0x10 + 2 * pin, low);
    }

    /// Masks redirection entry `pin`.
    pub fn mask(&self, pin: u32) {
        self.write(0x10 + 2 * pin, 1 << 16);
    }
}

/// Masks both 8259 PICs after moving their vectors to 0x20-0x2f, so that a spurious PIC
/// interrupt cannot land on an exception vector.
pub fn disable_pic() {
    use crate::port::outb;
    outb(0x20, 0x11);
    outb(0xa0, 0x11);
    outb(0x21, 0x20);
    outb(0xa1, 0x28);
    outb(0x21, 0x04);
    outb(0xa1, 0x02);
    outb(0x21, 0x01);
    outb(0xa1, 0x01);
    outb(0x21, 0xff);
    outb(0xa1, 0xff);
}
