//! ACPI fixed-hardware power management registers: the PM1a event and control blocks and the
//! reset register, in one 8-byte port range the FADT points into.
//!
//! Layout (offsets from [`ACPI_PM_BASE`]):
//!
//! | offset | register   | behaviour                                                    |
//! |--------|------------|--------------------------------------------------------------|
//! | 0..2   | PM1_STS    | write 1 to clear; PWRBTN_STS set by [`AcpiPm::press_power_button`] |
//! | 2..4   | PM1_EN     | read/write                                                   |
//! | 4..6   | PM1_CNT    | SCI_EN reads 1 (always ACPI mode); SLP_EN with SLP_TYP 5 = off |
//! | 6      | reserved   | reads 0                                                      |
//! | 7      | RESET_REG  | writing [`RESET_VALUE`] resets the VM                        |
//!
//! The FADT should advertise `SMI_CMD = 0` (no legacy mode to switch from), the S5 package
//! `SLP_TYP = `[`S5_SLP_TYP`] in the DSDT, and the SCI on ISA IRQ [`SCI_IRQ`], level-triggered,
//! active high (an interrupt source override in the MADT). There is no PM timer.
//! Sleep states other than S5 are ignored: the guest simply continues.
//!
//! Its snapshot state is [`AcpiPmState`].

use std::sync::Arc;

use super::{read_bytes, write_bytes};
use crate::bus::BusDevice;
use crate::interrupt::{IrqLine, VmControl, VmRequest};

mod state;

pub use state::AcpiPmState;

/// The conventional base port.
pub const ACPI_PM_BASE: u64 = 0x600;
/// The length of the device's range.
pub const ACPI_PM_LEN: u64 = 8;
/// Offset of the PM1a event block (status then enable).
pub const PM1_EVT_OFFSET: u64 = 0;
/// Length of the PM1a event block.
pub const PM1_EVT_LEN: u8 = 4;
/// Offset of the PM1a control block.
pub const PM1_CNT_OFFSET: u64 = 4;
/// Length of the PM1a control block.
pub const PM1_CNT_LEN: u8 = 2;
/// Offset of the reset register.
pub const RESET_OFFSET: u64 = 7;
/// The value to write to the reset register (FADT `RESET_VALUE`).
pub const RESET_VALUE: u8 = 0x0e;
/// The SLP_TYP value of the S5 (soft off) state.
pub const S5_SLP_TYP: u8 = 5;
/// The ISA IRQ of the SCI.
pub const SCI_IRQ: u8 = 9;

/// PM1_STS / PM1_EN: the power button event.
pub const PWRBTN: u16 = 1 << 8;
/// PM1_CNT: SCI_EN.
const SCI_EN: u16 = 1 << 0;
/// PM1_CNT: GBL_RLS, write-only.
const GBL_RLS: u16 = 1 << 2;
/// PM1_CNT: SLP_EN, write-only.
const SLP_EN: u16 = 1 << 13;
const SLP_TYP_SHIFT: u16 = 10;

/// The PM1a registers and the reset register.
pub struct AcpiPm {
    vm: Arc<dyn VmControl>,
    sci: Arc<dyn IrqLine>,
    sci_level: bool,
    status: u16,
    enable: u16,
    control: u16,
}

impl AcpiPm {
    /// Registers that ask `vm` to power off or reset and raise `sci` for enabled events.
    pub fn new(vm: Arc<dyn VmControl>, sci: Arc<dyn IrqLine>) -> Self {
        Self {
            vm,
            sci,
            sci_level: false,
            status: 0,
            enable: 0,
            control: 0,
        }
    }

    /// Presses the power button: sets PWRBTN_STS and raises the SCI if the guest enabled it,
    /// so that an ACPI guest shuts down cleanly.
    pub fn press_power_button(&mut self) {
        self.status |= PWRBTN;
        self.update_sci();
    }

    fn update_sci(&mut self) {
        let level = self.status & self.enable != 0;
        if level != self.sci_level {
            self.sci_level = level;
            self.sci.set_level(level);
        }
    }

    fn read_register(&self, offset: u64) -> u8 {
        let [sts_lo, sts_hi] = self.status.to_le_bytes();
        let [en_lo, en_hi] = self.enable.to_le_bytes();
        let [cnt_lo, cnt_hi] = (self.control | SCI_EN).to_le_bytes();
        match offset {
            0 => sts_lo,
            1 => sts_hi,
            2 => en_lo,
            3 => en_hi,
            4 => cnt_lo,
            5 => cnt_hi,
            6 | 7 => 0,
            _ => 0xff,
        }
    }

    fn write_register(&mut self, offset: u64, value: u8) {
        let v = u16::from(value);
        match offset {
            0 => self.status &= !v,
            1 => self.status &= !(v << 8),
            2 => self.enable = (self.enable & 0xff00) | v,
            3 => self.enable = (self.enable & 0x00ff) | (v << 8),
            4 => self.control = ((self.control & 0xff00) | v) & !GBL_RLS,
            5 => {
                let control = (self.control & 0x00ff) | (v << 8);
                self.control = control & !SLP_EN;
                let slp_typ = (control >> SLP_TYP_SHIFT) & 7;
                if control & SLP_EN != 0 && slp_typ == u16::from(S5_SLP_TYP) {
                    self.vm.request(VmRequest::PowerOff);
                }
            }
            RESET_OFFSET if value == RESET_VALUE => self.vm.request(VmRequest::Reset),
            _ => {}
        }
        self.update_sci();
    }
}

impl BusDevice for AcpiPm {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        read_bytes(offset, data, |o| self.read_register(o));
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        write_bytes(offset, data, |o, v| self.write_register(o, v));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{MockIrq, MockVm};

    fn pm() -> (AcpiPm, Arc<MockVm>, Arc<MockIrq>) {
        let vm = Arc::new(MockVm::default());
        let sci = Arc::new(MockIrq::default());
        (AcpiPm::new(vm.clone(), sci.clone()), vm, sci)
    }

    fn inw(pm: &mut AcpiPm, offset: u64) -> u16 {
        let mut b = [0; 2];
        pm.read(offset, &mut b);
        u16::from_le_bytes(b)
    }

    #[test]
    fn slp_en_with_s5_powers_off() {
        let (mut pm, vm, _) = pm();
        let slp_typ = u16::from(S5_SLP_TYP) << SLP_TYP_SHIFT;
        // Linux writes SLP_TYP first, then SLP_TYP | SLP_EN.
        pm.write(PM1_CNT_OFFSET, &slp_typ.to_le_bytes());
        assert!(vm.take().is_empty());
        pm.write(PM1_CNT_OFFSET, &(slp_typ | SLP_EN).to_le_bytes());
        assert_eq!(vm.take(), vec![VmRequest::PowerOff]);
    }

    #[test]
    fn other_sleep_types_are_ignored() {
        let (mut pm, vm, _) = pm();
        for typ in 0..8u16 {
            if typ != u16::from(S5_SLP_TYP) {
                pm.write(
                    PM1_CNT_OFFSET,
                    &((typ << SLP_TYP_SHIFT) | SLP_EN).to_le_bytes(),
                );
            }
        }
        assert!(vm.take().is_empty());
    }

    #[test]
    fn control_reads_acpi_mode_and_hides_slp_en() {
        let (mut pm, _, _) = pm();
        assert_eq!(inw(&mut pm, PM1_CNT_OFFSET), SCI_EN);
        pm.write(
            PM1_CNT_OFFSET,
            &((3 << SLP_TYP_SHIFT) | SLP_EN).to_le_bytes(),
        );
        assert_eq!(inw(&mut pm, PM1_CNT_OFFSET), (3 << SLP_TYP_SHIFT) | SCI_EN);
    }

    #[test]
    fn reset_register_resets_only_with_reset_value() {
        let (mut pm, vm, _) = pm();
        pm.write(RESET_OFFSET, &[0x01]);
        assert!(vm.take().is_empty());
        pm.write(RESET_OFFSET, &[RESET_VALUE]);
        assert_eq!(vm.take(), vec![VmRequest::Reset]);
    }

    #[test]
    fn power_button_raises_sci_until_status_cleared() {
        let (mut pm, _, sci) = pm();
        pm.press_power_button();
        assert!(!sci.level(), "SCI raised though PWRBTN_EN is clear");
        pm.write(2, &PWRBTN.to_le_bytes());
        assert!(sci.level());
        assert_eq!(inw(&mut pm, 0) & PWRBTN, PWRBTN);
        pm.write(0, &PWRBTN.to_le_bytes());
        assert_eq!(inw(&mut pm, 0) & PWRBTN, 0);
        assert!(!sci.level());
    }

    #[test]
    fn hostile_offsets_do_not_panic() {
        let (mut pm, _, _) = pm();
        let mut buf = [0; 8];
        pm.read(u64::MAX, &mut buf);
        pm.write(u64::MAX - 3, &[0xff; 8]);
    }
}
