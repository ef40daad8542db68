//! PCI: configuration space, the root complex (host bridge, port 0xCF8/0xCFC and ECAM access),
//! BARs, MSI-X and legacy INTx.
//!
//! A [`PciDevice`] has a configuration space and up to six BARs. The [`PciRoot`] puts devices in
//! slots of bus 0, answers configuration accesses through either mechanism, and dispatches
//! accesses in the PCI MMIO window to whichever BAR the guest currently has there, so the guest
//! may move BARs.
//!
//! Interrupts: each MSI-X vector of each device has its own GSI from [`MSI_GSI_BASE`] up (see
//! [`MsiAllocator`]). INTx pin P (0 = INTA) of the device in slot S is wired to GSI
//! [`intx_gsi`]`(S, P)` = 16 + (S + P) mod 8, level-triggered and shared between slots; the
//! ACPI `_PRT` says the same.
//!
//! Snapshot state: [`PciConfigurationState`] (a function's configuration space, BAR addresses
//! included), [`MsixConfigState`] and [`PciRootState`] (the 0xCF8 address register and which
//! slots hold which device). Restore the root after its devices: it reads back where their BARs
//! are.
//!
//! Lock order: the root, then a device. A device locks its own interrupt state below that and
//! never calls back into the root.

mod config;
mod msix;
mod root;
mod state;

use std::sync::{Arc, Mutex};

pub use config::{
    Bar, BarKind, CONFIG_SPACE_SIZE, LEGACY_CONFIG_SPACE_SIZE, NUM_BARS, PciConfiguration,
    PciHeader, capabilities, command,
};
pub use msix::{
    BarOffset, CONTROL_ENABLE, CONTROL_FUNCTION_MASK, MSI_GSI_BASE, MSI_GSI_LAST, MSIX_CAP_ID,
    MSIX_CAP_LEN, MSIX_ENTRY_SIZE, MSIX_MAX_VECTORS, MsiAllocator, MsixConfig,
};
pub use root::{
    CONFIG_ADDRESS_PORT, CONFIG_PORTS_LEN, ECAM_SIZE, HOST_BRIDGE_DEVICE_ID, HOST_BRIDGE_VENDOR_ID,
    PciBusEntries, PciIrqs, PciRoot, PciRootConfig, PciSlot,
};
pub use state::{
    MsixConfigState, MsixVectorState, PciConfigurationState, PciRootState, PciSlotState,
};

use crate::interrupt::IrqLine;
use crate::legacy::IrqRouter;

/// Slots on bus 0: slot 0 is the host bridge, devices take 1-31.
pub const SLOTS: u8 = 32;
/// The first GSI of the PCI INTx lines.
pub const INTX_GSI_BASE: u32 = 16;
/// How many GSIs the INTx lines are spread over.
pub const INTX_GSI_COUNT: u32 = 8;

/// The GSI that INTx pin `pin` (0 = INTA .. 3 = INTD) of the device in `slot` is wired to.
pub fn intx_gsi(slot: u8, pin: u8) -> u32 {
    INTX_GSI_BASE + (u32::from(slot) + u32::from(pin)) % INTX_GSI_COUNT
}

/// A PCI function as the root sees it: configuration space and BAR contents.
///
/// Accesses come straight from the guest: any offset, any length. A device checks every
/// index and length and never panics. Reads of the header's BAR and command registers must
/// have no side effects: the root reads them to learn where the BARs are.
pub trait PciDevice: Send {
    /// Reads configuration space at `offset` (0..4096; 1, 2 or 4 bytes).
    fn read_config(&mut self, offset: u64, data: &mut [u8]);
    /// Writes configuration space at `offset`.
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// Reads `data.len()` bytes at `offset` into BAR `bar`.
    fn read_bar(&mut self, bar: usize, offset: u64, data: &mut [u8]);
    /// Writes `data` at `offset` into BAR `bar`.
    fn write_bar(&mut self, bar: usize, offset: u64, data: &[u8]);
}

/// A device as the root holds it.
pub type SharedPciDevice = Arc<Mutex<dyn PciDevice>>;

/// Hands out INTx lines: a source on a shared, level-triggered GSI for each device.
pub trait IntxRouter: Send + Sync {
    /// A new source on GSI `gsi`, wired-OR with the other sources on it.
    fn intx_line(&self, gsi: u32) -> Result<Arc<dyn IrqLine>, PciError>;
}

impl IntxRouter for IrqRouter {
    fn intx_line(&self, gsi: u32) -> Result<Arc<dyn IrqLine>, PciError> {
        self.shared_gsi(gsi).map_err(|_| PciError::IntxGsi(gsi))
    }
}

/// Errors of PCI setup. A guest's accesses never fail: they are ignored or read all-ones.
#[derive(Debug, thiserror::Error)]
pub enum PciError {
    /// A BAR index out of range or already taken.
    #[error("BAR {0} is out of range or already declared")]
    BarIndex(usize),
    /// A BAR size that is not a power of two within the kind's limits.
    #[error("BAR size {0:#x} is not a valid power of two for its kind")]
    BarSize(u64),
    /// The capabilities do not fit in the 256-byte configuration space.
    #[error("Capabilities overflow the configuration space")]
    CapabilitySpace,
    /// An MSI-X table of zero or more than 2048 vectors.
    #[error("MSI-X needs 1-2048 vectors, not {0}")]
    MsixVectors(u16),
    /// An empty or reversed GSI range.
    #[error("GSI range {0}-{1} is empty")]
    GsiRange(u32, u32),
    /// No GSI left for MSI-X vectors.
    #[error("No GSI left for MSI-X vectors")]
    OutOfGsis,
    /// The interrupt router refused an INTx GSI.
    #[error("GSI {0} cannot carry PCI INTx")]
    IntxGsi(u32),
    /// Every slot of bus 0 is taken.
    #[error("Every PCI slot of bus 0 is taken")]
    NoSlot,
    /// A slot out of range or already taken.
    #[error("PCI slot {0} is out of range or taken")]
    SlotTaken(u8),
    /// A device's BARs do not fit in the MMIO window.
    #[error("The PCI MMIO window has no room for a {0:#x}-byte BAR")]
    OutOfMmio(u64),
    /// The MMIO window is empty or overflows.
    #[error("PCI MMIO window {base:#x}+{size:#x} is invalid")]
    Window {
        /// Start of the window.
        base: u64,
        /// Its length.
        size: u64,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intx_pins_spread_over_eight_gsis() {
        assert_eq!(intx_gsi(1, 0), 17);
        assert_eq!(intx_gsi(7, 0), 23);
        assert_eq!(intx_gsi(8, 0), 16);
        assert_eq!(intx_gsi(1, 3), 20);
        assert!((0..SLOTS).all(|s| (0..4).all(|p| (16..24).contains(&intx_gsi(s, p)))));
    }
}
