//! Emulated devices of a popek VM.
//!
//! Devices see only narrow traits: register-level `read`/`write` through a [`bus::Bus`], an
//! interrupt line ([`interrupt::IrqLine`]), a message sink for MSIs ([`interrupt::MsiSink`]),
//! a [`clock::Clock`] and a [`clock::Timer`]. No device knows which CPU engine runs the guest.

pub mod bus;
pub mod clock;
pub mod interrupt;
pub mod lapic;
pub mod legacy;
pub mod pci;
#[cfg(any(test, feature = "test-utils"))]
pub mod testing;
pub mod virtio;

pub use bus::{Bus, BusDevice, BusError};
