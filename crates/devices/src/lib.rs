//! Emulated devices of a popek VM.
//!
//! Devices see only narrow traits: register-level `read`/`write` through a [`bus::Bus`], an
//! interrupt line ([`interrupt::IrqLine`]), a message sink for MSIs ([`interrupt::MsiSink`]),
//! a [`clock::Clock`] and a [`clock::Timer`]. No device knows which CPU engine runs the guest.
//!
//! Every device with state saves and restores it for snapshots; [`state`] says how.

pub mod bus;
pub mod clock;
pub mod interrupt;
pub mod lapic;
pub mod legacy;
pub mod pci;
pub mod state;
#[cfg(any(test, feature = "test-utils"))]
pub mod testing;
pub mod virtio;

pub use bus::{Bus, BusDevice, BusError};
pub use state::StateError;
