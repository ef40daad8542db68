//! Routing of interrupt lines to the PIC pair and the IOAPIC.
//!
//! An ISA IRQ `n` drives PIC input `n` and IOAPIC pin `n`, except IRQ 0 (the PIT), which goes
//! to pin 2: the standard ISA override that the MADT announces. GSIs 16-23 (PCI INTx, say) drive
//! only the IOAPIC. A guest that runs on the IOAPIC masks the PIC, and one on the PIC leaves
//! the IOAPIC entries masked, so a line never interrupts twice.
//!
//! A line from [`IrqRouter::isa_irq`] or [`IrqRouter::gsi`] has one source: `set_level` from two
//! devices on one line would overwrite each other's level rather than OR them. PCI INTx lines are
//! shared by several slots, so [`IrqRouter::shared_gsi`] hands each device its own source on a GSI
//! and the pin is asserted while any source asserts it (wired-OR, as on a PCI board).

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

/// GSIs that only the IOAPIC sees, which [`IrqRouter::gsi`] and [`IrqRouter::shared_gsi`] serve.
const NON_ISA_GSIS: usize = IOAPIC_PINS - PIC_IRQS as usize;

/// The interrupt controllers, handing out lines into them.
#[derive(Clone)]
pub struct IrqRouter {
    pic: Arc<Mutex<Pic>>,
    ioapic: Arc<Mutex<Ioapic>>,
    /// Per non-ISA GSI, how many shared sources assert it.
    shared: Arc<[Mutex<u32>; NON_ISA_GSIS]>,
}

impl IrqRouter {
    /// A router into `pic` and `ioapic`.
    pub fn new(pic: Arc<Mutex<Pic>>, ioapic: Arc<Mutex<Ioapic>>) -> Self {
        Self {
            pic,
            ioapic,
            shared: Arc::new(Default::default()),
        }
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
        let pin = Self::non_isa_pin(gsi)?;
        Ok(Arc::new(RoutedLine {
            pic: None,
            ioapic: self.ioapic.clone(),
            pin,
        }))
    }

    /// A new source on GSI `gsi` (16-23), shared with the other sources from this method: the
    /// IOAPIC pin is asserted while any of them is. Dropping an asserted source deasserts it.
    /// For level-triggered PCI INTx lines, which several slots share.
    pub fn shared_gsi(&self, gsi: u32) -> Result<Arc<dyn IrqLine>, IrqRouterError> {
        let pin = Self::non_isa_pin(gsi)?;
        Ok(Arc::new(SharedLine {
            shared: self.shared.clone(),
            ioapic: self.ioapic.clone(),
            pin,
            asserted: Mutex::new(false),
        }))
    }

    fn non_isa_pin(gsi: u32) -> Result<usize, IrqRouterError> {
        usize::try_from(gsi)
            .ok()
            .filter(|pin| (usize::from(PIC_IRQS)..IOAPIC_PINS).contains(pin))
            .ok_or(IrqRouterError::InvalidGsi(gsi))
    }
}

/// One source on a wired-OR IOAPIC pin.
struct SharedLine {
    shared: Arc<[Mutex<u32>; NON_ISA_GSIS]>,
    ioapic: Arc<Mutex<Ioapic>>,
    pin: usize,
    /// This source's level. Changed only with the pin's count locked, so the two agree.
    asserted: Mutex<bool>,
}

impl SharedLine {
    fn update(&self, level: bool) {
        // Lock order: the pin's count, this source, the IOAPIC.
        let mut count = lock(&self.shared[self.pin - usize::from(PIC_IRQS)]);
        let mut asserted = lock(&self.asserted);
        if *asserted == level {
            return;
        }
        *asserted = level;
        let before = *count > 0;
        *count = if level {
            count.saturating_add(1)
        } else {
            count.saturating_sub(1)
        };
        if before != (*count > 0) {
            let _ = lock(&self.ioapic).set_irq(self.pin, *count > 0);
        }
    }
}

impl IrqLine for SharedLine {
    fn set_level(&self, level: bool) {
        self.update(level);
    }
}

impl Drop for SharedLine {
    fn drop(&mut self) {
        self.update(false);
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

    /// Programs IOAPIC pin `pin` level-triggered and unmasked with `vector`.
    fn unmask_level(ioapic: &Mutex<Ioapic>, pin: u8, vector: u8) {
        use crate::bus::BusDevice;
        let mut io = lock(ioapic);
        io.write(0x00, &u32::from(0x10 + 2 * pin).to_le_bytes());
        io.write(0x10, &(u32::from(vector) | 1 << 15).to_le_bytes());
    }

    #[test]
    fn shared_gsi_stays_asserted_while_any_source_asserts_it() {
        let (router, _, ioapic, msi) = router();
        unmask_level(&ioapic, 18, 0x52);
        let a = router.shared_gsi(18).unwrap();
        let b = router.shared_gsi(18).unwrap();
        a.set_level(true);
        b.set_level(true);
        assert_eq!(msi.take().len(), 1);
        a.set_level(false);
        // Still asserted through b: the EOI re-delivers.
        lock(&ioapic).end_of_interrupt(0x52);
        assert_eq!(msi.take().len(), 1);
        b.set_level(false);
        lock(&ioapic).end_of_interrupt(0x52);
        assert!(msi.take().is_empty());
        // Repeated levels from one source count once; dropping it releases the pin.
        a.set_level(true);
        a.set_level(true);
        assert_eq!(msi.take().len(), 1);
        drop(a);
        lock(&ioapic).end_of_interrupt(0x52);
        assert!(msi.take().is_empty());
        assert!(router.shared_gsi(4).is_err());
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
