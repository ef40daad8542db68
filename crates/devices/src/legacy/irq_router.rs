//! Routing of interrupt lines to the PIC pair and the IOAPIC.
//!
//! An ISA IRQ `n` drives PIC input `n` and IOAPIC pin `n`, except IRQ 0 (the PIT), which goes
//! to pin 2: the standard ISA override that the MADT announces. GSIs 16-23 (PCI INTx, say) drive
//! only the IOAPIC. A guest that runs on the IOAPIC masks the PIC, and one on the PIC leaves
//! the IOAPIC entries masked, so a line never interrupts twice.
//!
//! Each line has one source: `set_level` from two devices on one line would overwrite each
//! other's level rather than OR them. Sharing a level-triggered line needs a per-source
//! combination that this router does not provide.

use std::sync::{Arc, Mutex};

use super::ioapic::{IOAPIC_PINS, Ioapic};
use super::lock;
use super::pic::{PIC_IRQS, Pic};
use crate::interrupt::IrqLine;

/// The PIC input the slave is cascaded on, which no device may drive.
const CASCADE_IRQ: u8 = 2;

/// Errors of [`IrqRouter`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IrqRouterError {
    /// ISA IRQs are 0-15, and IRQ 2 is the cascade.
    #[error("ISA IRQ {0} is not a device IRQ (0-15 except 2)")]
    InvalidIsaIrq(u8),
    /// Lines that are not ISA IRQs are GSIs 16-23.
    #[error("GSI {0} is not a non-ISA IOAPIC pin (16-23); use an ISA IRQ below 16")]
    InvalidGsi(u32),
}

/// The interrupt controllers, handing out lines into them.
#[derive(Clone)]
pub struct IrqRouter {
    pic: Arc<Mutex<Pic>>,
    ioapic: Arc<Mutex<Ioapic>>,
}

impl IrqRouter {
    /// A router into `pic` and `ioapic`.
    pub fn new(pic: Arc<Mutex<Pic>>, ioapic: Arc<Mutex<Ioapic>>) -> Self {
        Self { pic, ioapic }
    }

    /// The GSI (IOAPIC pin) of ISA IRQ `irq`, as the MADT's overrides say.
    pub fn isa_irq_to_gsi(irq: u8) -> u32 {
        if irq == 0 { 2 } else { u32::from(irq) }
    }

    /// The line of ISA IRQ `irq`: PIC input `irq` and IOAPIC pin [`Self::isa_irq_to_gsi`].
    pub fn isa_irq(&self, irq: u8) -> Result<Arc<dyn IrqLine>, IrqRouterError> {
        if irq >= PIC_IRQS || irq == CASCADE_IRQ {
            return Err(IrqRouterError::InvalidIsaIrq(irq));
        }
        Ok(Arc::new(RoutedLine {
            pic: Some((self.pic.clone(), irq)),
            ioapic: self.ioapic.clone(),
            pin: Self::isa_irq_to_gsi(irq) as usize,
        }))
    }

    /// The line of GSI `gsi` (16-23), which only the IOAPIC sees.
    pub fn gsi(&self, gsi: u32) -> Result<Arc<dyn IrqLine>, IrqRouterError> {
        let pin = usize::try_from(gsi).map_err(|_| IrqRouterError::InvalidGsi(gsi))?;
        if !(usize::from(PIC_IRQS)..IOAPIC_PINS).contains(&pin) {
            return Err(IrqRouterError::InvalidGsi(gsi));
        }
        Ok(Arc::new(RoutedLine {
            pic: None,
            ioapic: self.ioapic.clone(),
            pin,
        }))
    }
}

/// A line into an IOAPIC pin and, for ISA IRQs, a PIC input.
struct RoutedLine {
    pic: Option<(Arc<Mutex<Pic>>, u8)>,
    ioapic: Arc<Mutex<Ioapic>>,
    pin: usize,
}

impl IrqLine for RoutedLine {
    fn set_level(&self, level: bool) {
        // The router checked the numbers when it made the line, so these cannot fail.
        if let Some((pic, irq)) = &self.pic {
            let _ = lock(pic).set_irq(*irq, level);
        }
        let _ = lock(&self.ioapic).set_irq(self.pin, level);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{MockExtInt, MockMsi};

    type Controllers = (IrqRouter, Arc<Mutex<Pic>>, Arc<Mutex<Ioapic>>, Arc<MockMsi>);

    fn router() -> Controllers {
        let msi = Arc::new(MockMsi::default());
        let pic = Arc::new(Mutex::new(Pic::new(Arc::new(MockExtInt::default()))));
        let ioapic = Arc::new(Mutex::new(Ioapic::new(msi.clone())));
        (
            IrqRouter::new(pic.clone(), ioapic.clone()),
            pic,
            ioapic,
            msi,
        )
    }

    /// Unmasks IOAPIC pin `pin` with vector `vector`, edge-triggered, as a guest would.
    fn unmask(ioapic: &Mutex<Ioapic>, pin: u8, vector: u8) {
        use crate::bus::BusDevice;
        let mut io = lock(ioapic);
        io.write(0x00, &u32::from(0x10 + 2 * pin).to_le_bytes());
        io.write(0x10, &u32::from(vector).to_le_bytes());
    }

    #[test]
    fn isa_irq0_reaches_pic_input0_and_ioapic_pin2() {
        let (router, pic, ioapic, msi) = router();
        unmask(&ioapic, 2, 0x30);
        router.isa_irq(0).unwrap().pulse();
        assert!(lock(&pic).has_interrupt());
        assert_eq!(
            lock(&pic).acknowledge(),
            Some(0x00),
            "uninitialised PIC base is 0"
        );
        assert_eq!(
            msi.take().iter().map(|(gsi, _)| *gsi).collect::<Vec<_>>(),
            vec![2]
        );
    }

    #[test]
    fn isa_irq4_reaches_pin4() {
        let (router, _, ioapic, msi) = router();
        unmask(&ioapic, 4, 0x34);
        router.isa_irq(4).unwrap().pulse();
        let got = msi.take();
        assert_eq!(got.len(), 1);
        assert_eq!((got[0].0, got[0].1.data & 0xff), (4, 0x34));
    }

    #[test]
    fn gsi_lines_skip_the_pic() {
        let (router, pic, ioapic, msi) = router();
        unmask(&ioapic, 17, 0x51);
        router.gsi(17).unwrap().pulse();
        assert!(!lock(&pic).has_interrupt());
        assert_eq!(msi.take().len(), 1);
    }

    #[test]
    fn invalid_lines_are_refused() {
        let (router, ..) = router();
        assert_eq!(
            router.isa_irq(2).err(),
            Some(IrqRouterError::InvalidIsaIrq(2))
        );
        assert_eq!(
            router.isa_irq(16).err(),
            Some(IrqRouterError::InvalidIsaIrq(16))
        );
        assert_eq!(router.gsi(5).err(), Some(IrqRouterError::InvalidGsi(5)));
        assert_eq!(router.gsi(24).err(), Some(IrqRouterError::InvalidGsi(24)));
    }
}
