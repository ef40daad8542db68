//! The I/O APIC: 24 interrupt pins turned into message-signalled interrupts to the local APICs.
//!
//! A version 0x20 IOAPIC (the ICH kind, with the EOI register at 0x40) at MMIO 0xfec00000:
//! IOREGSEL at 0x00 selects a register that IOWIN at 0x10 reads or writes. Registers: the ID,
//! the version (0x170020: 24 entries), the arbitration ID, and 24 64-bit redirection entries.
//!
//! Inputs come from [`Ioapic::set_irq`] with the line's *asserted* state (the entry's polarity
//! bit is kept for the guest but not applied: the source says "asserted", not a voltage).
//! Edge-triggered entries deliver on the line's rising edge when unmasked; an edge on a masked
//! pin is lost, as the 82093AA datasheet says. Level-triggered entries deliver while the line
//! is asserted, unmasked and remote IRR is clear, and set remote IRR; the local APIC's EOI
//! (forwarded as [`Ioapic::end_of_interrupt`] or written to the EOI register) clears it and
//! delivers again if the line is still asserted. Each EOI delivers at most once per pin and
//! the controller never calls itself back, so a line that stays asserted gives one interrupt
//! per EOI rather than a storm.
//!
//! Its snapshot state is [`IoapicState`].

use std::sync::Arc;

use crate::bus::BusDevice;
use crate::interrupt::{MsiMessage, MsiSink};

mod state;

pub use state::IoapicState;

/// The conventional MMIO base.
pub const IOAPIC_BASE: u64 = 0xfec0_0000;
/// The length of the MMIO range.
pub const IOAPIC_LEN: u64 = 0x1000;
/// Number of pins (GSIs 0-23).
pub const IOAPIC_PINS: usize = 24;

const IOREGSEL: u64 = 0x00;
const IOWIN: u64 = 0x10;
const EOI: u64 = 0x40;

const REG_ID: u8 = 0x00;
const REG_VERSION: u8 = 0x01;
const REG_ARBITRATION: u8 = 0x02;
const REG_REDIRECTION: u8 = 0x10;
const VERSION: u32 = 0x0020 | ((IOAPIC_PINS as u32 - 1) << 16);

const VECTOR: u64 = 0xff;
const DELIVERY_MODE_SHIFT: u64 = 8;
const DEST_MODE_SHIFT: u64 = 11;
const REMOTE_IRR: u64 = 1 << 14;
const TRIGGER_LEVEL: u64 = 1 << 15;
const MASKED: u64 = 1 << 16;
const DEST_SHIFT: u64 = 56;
/// Bits of a redirection entry the guest may write: vector, delivery mode, destination mode,
/// polarity, trigger mode, mask and destination.
const WRITABLE: u64 = 0xff00_0000_0001_afff;
const LOWEST_PRIORITY: u64 = 1;

/// Errors of [`Ioapic`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IoapicError {
    /// There are only [`IOAPIC_PINS`] pins.
    #[error("IOAPIC pin {0} does not exist (0-23)")]
    InvalidPin(usize),
}

/// An I/O APIC.
pub struct Ioapic {
    id: u8,
    regsel: u8,
    redirection: [u64; IOAPIC_PINS],
    /// Asserted state of each input line, bit per pin.
    lines: u32,
    msi: Arc<dyn MsiSink>,
}

impl Ioapic {
    /// An IOAPIC with every entry masked, delivering to `msi`.
    pub fn new(msi: Arc<dyn MsiSink>) -> Self {
        Self {
            id: 0,
            regsel: 0,
            redirection: [MASKED; IOAPIC_PINS],
            lines: 0,
            msi,
        }
    }

    /// Drives input `pin` asserted (`true`) or deasserted.
    pub fn set_irq(&mut self, pin: usize, level: bool) -> Result<(), IoapicError> {
        if pin >= IOAPIC_PINS {
            return Err(IoapicError::InvalidPin(pin));
        }
        let bit = 1u32 << pin;
        let was = self.lines & bit != 0;
        if level {
            self.lines |= bit;
        } else {
            self.lines &= !bit;
        }
        let entry = self.redirection[pin];
        if entry & TRIGGER_LEVEL != 0 {
            self.service_level(pin);
        } else if level && !was && entry & MASKED == 0 {
            self.deliver(pin);
        }
        Ok(())
    }

    /// The local APICs' EOI for `vector`: clears remote IRR of the level-triggered entries
    /// with that vector and delivers again those whose line is still asserted.
    pub fn end_of_interrupt(&mut self, vector: u8) {
        for pin in 0..IOAPIC_PINS {
            let entry = self.redirection[pin];
            if entry & VECTOR == u64::from(vector) && entry & REMOTE_IRR != 0 {
                self.redirection[pin] &= !REMOTE_IRR;
                self.service_level(pin);
            }
        }
    }

    /// The redirection entry of `pin`, if it exists.
    pub fn redirection_entry(&self, pin: usize) -> Option<u64> {
        self.redirection.get(pin).copied()
    }

    /// Delivers a level-triggered entry if its line is asserted, it is unmasked and the last
    /// delivery was EOIed.
    fn service_level(&mut self, pin: usize) {
        let entry = self.redirection[pin];
        let asserted = self.lines & (1 << pin) != 0;
        if entry & TRIGGER_LEVEL != 0 && asserted && entry & (MASKED | REMOTE_IRR) == 0 {
            self.redirection[pin] |= REMOTE_IRR;
            self.deliver(pin);
        }
    }

    fn deliver(&self, pin: usize) {
        self.msi
            .deliver(pin as u32, Self::message(self.redirection[pin]));
    }

    /// The x86 MSI an entry sends.
    fn message(entry: u64) -> MsiMessage {
        let delivery_mode = (entry >> DELIVERY_MODE_SHIFT) & 7;
        let dest_mode = (entry >> DEST_MODE_SHIFT) & 1;
        let hint = u64::from(delivery_mode == LOWEST_PRIORITY);
        let address = 0xfee0_0000 | ((entry >> DEST_SHIFT) << 12) | (hint << 3) | (dest_mode << 2);
        // Bit 14: assert; bit 15: trigger mode.
        let data = (entry & VECTOR) | (delivery_mode << 8) | (1 << 14) | (entry & TRIGGER_LEVEL);
        MsiMessage {
            address,
            data: data as u32,
        }
    }

    fn read_indirect(&self) -> u32 {
        match self.regsel {
            REG_ID | REG_ARBITRATION => u32::from(self.id) << 24,
            REG_VERSION => VERSION,
            r => match Self::entry_index(r) {
                Some((pin, high)) => {
                    let e = self.redirection[pin];
                    if high { (e >> 32) as u32 } else { e as u32 }
                }
                None => 0,
            },
        }
    }

    fn write_indirect(&mut self, v: u32) {
        match self.regsel {
            REG_ID => self.id = ((v >> 24) & 0x0f) as u8,
            r => {
                let Some((pin, high)) = Self::entry_index(r) else {
                    return;
                };
                let old = self.redirection[pin];
                let new = if high {
                    (old & 0xffff_ffff) | (u64::from(v) << 32)
                } else {
                    (old & !0xffff_ffff) | u64::from(v)
                };
                let mut entry = (new & WRITABLE) | (old & REMOTE_IRR);
                if entry & TRIGGER_LEVEL == 0 {
                    entry &= !REMOTE_IRR;
                }
                self.redirection[pin] = entry;
                // Unmasking (or switching to level) a pin whose level line is asserted delivers.
                self.service_level(pin);
            }
        }
    }

    /// The pin and half (true = high dword) that an indirect register index names.
    fn entry_index(r: u8) -> Option<(usize, bool)> {
        let i = usize::from(r.checked_sub(REG_REDIRECTION)?);
        (i / 2 < IOAPIC_PINS).then_some((i / 2, i % 2 == 1))
    }

    fn read_dword(&self, offset: u64) -> u32 {
        match offset {
            IOREGSEL => u32::from(self.regsel),
            IOWIN => self.read_indirect(),
            _ => 0,
        }
    }

    fn write_dword(&mut self, offset: u64, v: u32) {
        match offset {
            IOREGSEL => self.regsel = v as u8,
            IOWIN => self.write_indirect(v),
            EOI => self.end_of_interrupt(v as u8),
            _ => {}
        }
    }
}

impl BusDevice for Ioapic {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        for (i, b) in (0u64..).zip(data.iter_mut()) {
            let addr = offset.wrapping_add(i);
            *b = (self.read_dword(addr & !3) >> (8 * (addr & 3))) as u8;
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        // Bytes within one dword merge into one register write; a guest normally writes whole
        // aligned dwords.
        let mut rest = data;
        let mut addr = offset;
        while !rest.is_empty() {
            let dword = addr & !3;
            let shift = (addr & 3) as usize;
            let n = rest.len().min(4 - shift);
            let mut bytes = self.read_dword(dword).to_le_bytes();
            bytes[shift..shift + n].copy_from_slice(&rest[..n]);
            self.write_dword(dword, u32::from_le_bytes(bytes));
            rest = &rest[n..];
            addr = addr.wrapping_add(n as u64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::MockMsi;

    fn ioapic() -> (Ioapic, Arc<MockMsi>) {
        let msi = Arc::new(MockMsi::default());
        (Ioapic::new(msi.clone()), msi)
    }

    fn write_reg(io: &mut Ioapic, reg: u8, v: u32) {
        io.write(IOREGSEL, &u32::from(reg).to_le_bytes());
        io.write(IOWIN, &v.to_le_bytes());
    }

    fn read_reg(io: &mut Ioapic, reg: u8) -> u32 {
        io.write(IOREGSEL, &u32::from(reg).to_le_bytes());
        let mut b = [0; 4];
        io.read(IOWIN, &mut b);
        u32::from_le_bytes(b)
    }

    fn program(io: &mut Ioapic, pin: u8, low: u32, dest: u8) {
        write_reg(io, REG_REDIRECTION + 2 * pin, MASKED as u32);
        write_reg(io, REG_REDIRECTION + 2 * pin + 1, u32::from(dest) << 24);
        write_reg(io, REG_REDIRECTION + 2 * pin, low);
    }

    #[test]
    fn version_and_id_registers() {
        let (mut io, _) = ioapic();
        assert_eq!(read_reg(&mut io, REG_VERSION), 0x0017_0020);
        write_reg(&mut io, REG_ID, 0x0500_0000);
        assert_eq!(read_reg(&mut io, REG_ID), 0x0500_0000);
        assert_eq!(read_reg(&mut io, REG_ARBITRATION), 0x0500_0000);
        assert_eq!(read_reg(&mut io, REG_REDIRECTION + 47), 0);
        assert_eq!(read_reg(&mut io, REG_REDIRECTION), MASKED as u32);
    }

    #[test]
    fn edge_entry_delivers_msi_on_rising_edge() {
        let (mut io, msi) = ioapic();
        program(&mut io, 2, 0x30, 3);
        io.set_irq(2, true).unwrap();
        io.set_irq(2, true).unwrap();
        io.set_irq(2, false).unwrap();
        let expected = MsiMessage {
            address: 0xfee0_3000,
            data: 0x4030,
        };
        assert_eq!(msi.take(), vec![(2, expected)]);
    }

    #[test]
    fn lowest_priority_logical_entry_sets_hint_and_mode_bits() {
        let (mut io, msi) = ioapic();
        program(&mut io, 5, 0x41 | (1 << 8) | (1 << 11), 0x0f);
        io.set_irq(5, true).unwrap();
        let expected = MsiMessage {
            address: 0xfee0_f00c,
            data: 0x4141,
        };
        assert_eq!(msi.take(), vec![(5, expected)]);
    }

    #[test]
    fn masked_edge_is_lost() {
        let (mut io, msi) = ioapic();
        io.set_irq(4, true).unwrap();
        program(&mut io, 4, 0x34, 0);
        assert!(msi.take().is_empty());
    }

    #[test]
    fn level_entry_waits_for_eoi_and_redelivers_while_asserted() {
        let (mut io, msi) = ioapic();
        program(&mut io, 9, 0x49 | TRIGGER_LEVEL as u32, 0);
        io.set_irq(9, true).unwrap();
        io.set_irq(9, true).unwrap();
        assert_eq!(msi.take().len(), 1);
        assert_ne!(
            read_reg(&mut io, REG_REDIRECTION + 18) & REMOTE_IRR as u32,
            0
        );
        io.end_of_interrupt(0x49);
        let got = msi.take();
        assert_eq!(got.len(), 1, "still asserted after EOI must deliver once");
        assert_eq!(got[0].1.data, 0xc049);
        io.set_irq(9, false).unwrap();
        io.write(EOI, &[0x49, 0, 0, 0]);
        assert!(msi.take().is_empty());
        assert_eq!(
            read_reg(&mut io, REG_REDIRECTION + 18) & REMOTE_IRR as u32,
            0
        );
    }

    #[test]
    fn unmasking_asserted_level_line_delivers() {
        let (mut io, msi) = ioapic();
        program(&mut io, 10, 0x4a | (TRIGGER_LEVEL | MASKED) as u32, 0);
        io.set_irq(10, true).unwrap();
        assert!(msi.take().is_empty());
        write_reg(&mut io, REG_REDIRECTION + 20, 0x4a | TRIGGER_LEVEL as u32);
        assert_eq!(msi.take().len(), 1);
    }

    #[test]
    fn guest_cannot_write_remote_irr_or_delivery_status() {
        let (mut io, _) = ioapic();
        write_reg(&mut io, REG_REDIRECTION, 0xffff_ffff);
        assert_eq!(read_reg(&mut io, REG_REDIRECTION), 0x0001_afff);
    }

    #[test]
    fn hostile_register_accesses_do_not_panic() {
        let (mut io, _) = ioapic();
        for sel in 0..=255u32 {
            write_reg(&mut io, sel as u8, 0xffff_ffff);
            read_reg(&mut io, sel as u8);
            io.write(IOREGSEL, &sel.to_le_bytes());
        }
        let mut buf = [0; 8];
        io.read(u64::MAX - 2, &mut buf);
        io.write(u64::MAX - 2, &[0xff; 8]);
        io.write(0x11, &[1, 2]);
        io.end_of_interrupt(0xff);
        assert_eq!(io.set_irq(24, true), Err(IoapicError::InvalidPin(24)));
    }
}
