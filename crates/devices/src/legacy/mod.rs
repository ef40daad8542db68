//! The legacy PC devices that unmodified operating systems expect.
//!
//! Each device owns its register state and implements [`BusDevice`]. Devices whose registers sit
//! at scattered ports (the PIC, the PIT and its port 0x61, the i8042) keep their state behind
//! one `Arc<Mutex<_>>` and hand the VMM one small bus device per port range, listed by a
//! `bus_entries` function as [`BusEntry`] values the VMM inserts into its port bus.
//!
//! Snapshots: each device with state saves and restores it (`state.rs` in its folder: serial,
//! CMOS, ACPI PM, PIC, IOAPIC, PIT); the i8042 and the debug-exit port have none. Restore the
//! PIC and the IOAPIC before the devices that drive their inputs.
//!
//! Lock order: a device that raises an interrupt (PIT, serial, ...) holds its own lock while
//! it locks the PIC or the IOAPIC through an [`IrqRouter`] line; the interrupt controllers never
//! call back into a device. Sinks ([`crate::interrupt::ExtIntSink`],
//! [`crate::interrupt::MsiSink`], [`crate::clock::Timer`]) are called with the calling device
//! locked and must not lock that device again synchronously.

use std::sync::{Mutex, MutexGuard};

use crate::bus::{BusDevice, SharedDevice};

pub mod acpi_pm;
pub mod cmos;
pub mod debug_exit;
pub mod i8042;
pub mod ioapic;
pub mod irq_router;
pub mod pic;
pub mod pit;
pub mod serial;

pub use acpi_pm::{AcpiPm, AcpiPmState};
pub use cmos::{Cmos, CmosState};
pub use debug_exit::DebugExit;
pub use i8042::I8042;
pub use ioapic::{IOAPIC_PINS, Ioapic, IoapicError, IoapicState};
pub use irq_router::{IrqRouter, IrqRouterError};
pub use pic::{Pic, PicError, PicState};
pub use pit::{Pit, PitState};
pub use serial::{Serial, SerialState};

/// A device and the address range where the VMM should insert it into a bus.
pub struct BusEntry {
    /// The device.
    pub device: SharedDevice,
    /// First address of the range.
    pub base: u64,
    /// Length of the range.
    pub len: u64,
}

impl BusEntry {
    fn new(device: impl BusDevice + 'static, base: u64, len: u64) -> Self {
        Self {
            device: std::sync::Arc::new(Mutex::new(device)),
            base,
            len,
        }
    }
}

/// Locks shared device state, recovering from a poisoned mutex (the state stays consistent
/// between register accesses, and release builds abort on panic anyway).
pub(crate) fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Reads `data` byte by byte from consecutive registers, as an 8-bit ISA device answers a 16- or
/// 32-bit `in`.
pub(crate) fn read_bytes(offset: u64, data: &mut [u8], mut read: impl FnMut(u64) -> u8) {
    for (i, b) in (0u64..).zip(data.iter_mut()) {
        *b = read(offset.wrapping_add(i));
    }
}

/// Writes `data` byte by byte to consecutive registers, as an 8-bit ISA device takes a 16- or
/// 32-bit `out`.
pub(crate) fn write_bytes(offset: u64, data: &[u8], mut write: impl FnMut(u64, u8)) {
    for (i, &b) in (0u64..).zip(data.iter()) {
        write(offset.wrapping_add(i), b);
    }
}
