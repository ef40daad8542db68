//! The PM registers' snapshot state: PM1 status, enable and control.
//!
//! The SCI's level follows from status and enable; a restored device whose SCI was asserted
//! drives its line high again, which the restored interrupt controllers already know (restore
//! them first: the PIC and the IOAPIC then see no new edge).

use serde::{Deserialize, Serialize};

use super::{AcpiPm, GBL_RLS, PWRBTN, SLP_EN};
use crate::state::{StateError, ensure};

const DEVICE: &str = "acpi-pm";

/// The PM1a registers.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct AcpiPmState {
    /// PM1_STS (only PWRBTN_STS is ever set).
    pub status: u16,
    /// PM1_EN.
    pub enable: u16,
    /// PM1_CNT as stored (SCI_EN reads 1 regardless; GBL_RLS and SLP_EN are never stored).
    pub control: u16,
}

impl AcpiPm {
    /// The registers' state.
    pub fn save(&self) -> AcpiPmState {
        AcpiPmState {
            status: self.status,
            enable: self.enable,
            control: self.control,
        }
    }

    /// Restores `s` and drives the SCI to the level it implies.
    pub fn restore(&mut self, s: &AcpiPmState) -> Result<(), StateError> {
        ensure(s.status & !PWRBTN == 0, DEVICE, || {
            format!(
                "PM1_STS {:#06x} has events this device never raises",
                s.status
            )
        })?;
        ensure(s.control & (GBL_RLS | SLP_EN) == 0, DEVICE, || {
            format!("PM1_CNT {:#06x} holds write-only bits", s.control)
        })?;
        self.status = s.status;
        self.enable = s.enable;
        self.control = s.control;
        self.update_sci();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::bus::BusDevice;
    use crate::testing::{MockIrq, MockVm};

    fn pm() -> (AcpiPm, Arc<MockIrq>) {
        let sci = Arc::new(MockIrq::default());
        (AcpiPm::new(Arc::new(MockVm::default()), sci.clone()), sci)
    }

    fn inw(pm: &mut AcpiPm, offset: u64) -> u16 {
        let mut b = [0; 2];
        pm.read(offset, &mut b);
        u16::from_le_bytes(b)
    }

    #[test]
    fn pressed_button_survives_restore_and_keeps_the_sci_asserted() {
        let (mut a, _) = pm();
        a.write(2, &PWRBTN.to_le_bytes());
        a.write(4, &(3u16 << 10).to_le_bytes());
        a.press_power_button();
        let saved = a.save();
        let (mut b, sci) = pm();
        b.restore(&saved).unwrap();
        assert!(sci.level(), "enabled event must assert the SCI");
        assert_eq!(inw(&mut b, 0), PWRBTN);
        assert_eq!(inw(&mut b, 4), (3 << 10) | 1);
        b.write(0, &PWRBTN.to_le_bytes());
        assert!(!sci.level());
        assert_eq!(b.save().enable, PWRBTN);
    }

    #[test]
    fn impossible_bits_are_refused() {
        let (mut p, sci) = pm();
        for bad in [
            AcpiPmState {
                status: 1,
                enable: 0,
                control: 0,
            },
            AcpiPmState {
                status: 0,
                enable: 0,
                control: SLP_EN,
            },
        ] {
            assert!(matches!(
                p.restore(&bad),
                Err(StateError::Invalid {
                    device: "acpi-pm",
                    ..
                })
            ));
        }
        assert!(!sci.level());
    }
}
