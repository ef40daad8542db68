//! The IOAPIC's snapshot state: the ID, the register select, the redirection table (remote IRR
//! included) and the asserted state of the input lines.
//!
//! Restoring delivers nothing. Restore the IOAPIC before the devices that drive its pins: a
//! device that drives its restored level again then makes no new edge.

use serde::{Deserialize, Serialize};

use super::{IOAPIC_PINS, Ioapic, REMOTE_IRR, TRIGGER_LEVEL, WRITABLE};
use crate::state::{StateError, ensure};

const DEVICE: &str = "ioapic";

/// An I/O APIC's state.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct IoapicState {
    /// The APIC ID (0-15).
    pub id: u8,
    /// IOREGSEL.
    pub regsel: u8,
    /// The 24 redirection entries, remote IRR included.
    pub redirection: Vec<u64>,
    /// Asserted input lines, bit per pin.
    pub lines: u32,
}

impl Ioapic {
    /// The IOAPIC's state.
    pub fn save(&self) -> IoapicState {
        IoapicState {
            id: self.id,
            regsel: self.regsel,
            redirection: self.redirection.to_vec(),
            lines: self.lines,
        }
    }

    /// Restores `s`, delivering nothing.
    pub fn restore(&mut self, s: &IoapicState) -> Result<(), StateError> {
        ensure(s.id <= 0x0f, DEVICE, || format!("ID {} beyond 15", s.id))?;
        let redirection: [u64; IOAPIC_PINS] =
            s.redirection
                .as_slice()
                .try_into()
                .map_err(|_| StateError::Invalid {
                    device: DEVICE,
                    what: format!(
                        "{} redirection entries, not {IOAPIC_PINS}",
                        s.redirection.len()
                    ),
                })?;
        for (pin, &e) in redirection.iter().enumerate() {
            ensure(e & !(WRITABLE | REMOTE_IRR) == 0, DEVICE, || {
                format!("redirection entry {pin} ({e:#018x}) sets reserved bits")
            })?;
            ensure(
                e & REMOTE_IRR == 0 || e & TRIGGER_LEVEL != 0,
                DEVICE,
                || format!("redirection entry {pin} has remote IRR on an edge-triggered pin"),
            )?;
        }
        ensure(s.lines >> IOAPIC_PINS == 0, DEVICE, || {
            format!("input lines {:#x} beyond pin 23", s.lines)
        })?;
        self.id = s.id;
        self.regsel = s.regsel;
        self.redirection = redirection;
        self.lines = s.lines;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::bus::BusDevice;
    use crate::testing::MockMsi;

    fn ioapic() -> (Ioapic, Arc<MockMsi>) {
        let msi = Arc::new(MockMsi::default());
        (Ioapic::new(msi.clone()), msi)
    }

    fn write_reg(io: &mut Ioapic, reg: u8, v: u32) {
        io.write(0x00, &u32::from(reg).to_le_bytes());
        io.write(0x10, &v.to_le_bytes());
    }

    fn read_reg(io: &mut Ioapic, reg: u8) -> u32 {
        io.write(0x00, &u32::from(reg).to_le_bytes());
        let mut b = [0; 4];
        io.read(0x10, &mut b);
        u32::from_le_bytes(b)
    }

    #[test]
    fn redirection_entries_and_remote_irr_survive_restore() {
        let (mut a, msi) = ioapic();
        write_reg(&mut a, 0x00, 0x0300_0000);
        write_reg(&mut a, 0x10 + 2 * 4, 0x34);
        write_reg(&mut a, 0x10 + 2 * 4 + 1, 0x0100_0000);
        write_reg(&mut a, 0x10 + 2 * 9, 0x49 | TRIGGER_LEVEL as u32);
        a.set_irq(9, true).unwrap();
        assert_eq!(msi.take().len(), 1);
        let saved = a.save();

        let (mut b, msi) = ioapic();
        b.restore(&saved).unwrap();
        assert!(msi.take().is_empty(), "restore delivers nothing");
        assert_eq!(read_reg(&mut b, 0x00), 0x0300_0000);
        assert_eq!(read_reg(&mut b, 0x10 + 2 * 4), 0x34);
        assert_eq!(read_reg(&mut b, 0x10 + 2 * 4 + 1), 0x0100_0000);
        assert_eq!(
            b.redirection_entry(9),
            Some(0x49 | TRIGGER_LEVEL | REMOTE_IRR)
        );
        // The level line is still asserted: the EOI delivers again, and a repeated level
        // from the device makes no new interrupt.
        b.set_irq(9, true).unwrap();
        assert!(msi.take().is_empty());
        b.end_of_interrupt(0x49);
        assert_eq!(msi.take().len(), 1);
        b.set_irq(4, true).unwrap();
        let got = msi.take();
        assert_eq!((got[0].0, got[0].1.address), (4, 0xfee0_1000));
    }

    #[test]
    fn reserved_bits_and_wrong_sizes_are_refused() {
        let (mut io, _) = ioapic();
        let good = io.save();
        let cases: [fn(&mut IoapicState); 5] = [
            |s| s.id = 16,
            |s| s.redirection.truncate(23),
            |s| s.redirection[3] = 1 << 12,
            |s| s.redirection[3] = REMOTE_IRR,
            |s| s.lines = 1 << 24,
        ];
        for corrupt in cases {
            let mut bad = good.clone();
            corrupt(&mut bad);
            assert!(matches!(
                io.restore(&bad),
                Err(StateError::Invalid {
                    device: "ioapic",
                    ..
                })
            ));
        }
        assert_eq!(io.save(), good);
    }
}
