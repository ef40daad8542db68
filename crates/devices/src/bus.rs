//! An address space of devices: port I/O or MMIO.
//!
//! A [`Bus`] maps non-overlapping address ranges to devices. The VMM hands it every port and MMIO
//! exit; the device sees the offset into its own range.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// A device with registers on a bus.
pub trait BusDevice: Send {
    /// Reads `data.len()` bytes at `offset` into the device's range.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Writes `data` at `offset` into the device's range.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// Errors of [`Bus`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    /// The new range overlaps one already on the bus.
    #[error("Range {base:#x}+{len:#x} overlaps a device already on the bus")]
    Overlap {
        /// Start of the rejected range.
        base: u64,
        /// Length of the rejected range.
        len: u64,
    },
    /// A range of length zero.
    #[error("Range at {0:#x} has length zero")]
    Empty(u64),
}

/// A shared device on the bus.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

#[derive(Clone)]
struct Entry {
    len: u64,
    device: SharedDevice,
}

/// Address ranges mapped to devices.
#[derive(Clone, Default)]
pub struct Bus {
    ranges: BTreeMap<u64, Entry>,
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Maps `device` at `[base, base + len)`.
    pub fn insert(&mut self, device: SharedDevice, base: u64, len: u64) -> Result<(), BusError> {
        if len == 0 {
            return Err(BusError::Empty(base));
        }
        let end = base
            .checked_add(len)
            .ok_or(BusError::Overlap { base, len })?;
        if let Some((&b, e)) = self.ranges.range(..end).next_back()
            && b + e.len > base
        {
            return Err(BusError::Overlap { base, len });
        }
        self.ranges.insert(base, Entry { len, device });
        Ok(())
    }

    fn find(&self, addr: u64, size: usize) -> Option<(u64, &Entry)> {
        let (&base, entry) = self.ranges.range(..=addr).next_back()?;
        let offset = addr - base;
        // The whole access must fall inside the device's range.
        (offset.checked_add(size as u64)? <= entry.len).then_some((offset, entry))
    }

    /// Reads from the device at `addr`. Returns false (and fills `data` with 0xff, as an
    /// unclaimed ISA bus reads) when no device claims the address.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((offset, entry)) => {
                lock(&entry.device).read(offset, data);
                true
            }
            None => {
                data.fill(0xff);
                false
            }
        }
    }

    /// Writes to the device at `addr`. Returns false when no device claims the address.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((offset, entry)) => {
                lock(&entry.device).write(offset, data);
                true
            }
            None => false,
        }
    }
}

/// Locks a device, recovering from a poisoned mutex: a device's state stays usable even if a
/// thread panicked while holding it, because the process aborts on panic in release builds.
fn lock(device: &SharedDevice) -> std::sync::MutexGuard<'_, dyn BusDevice + 'static> {
    device.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Reg(Vec<u8>);
    impl BusDevice for Reg {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            for (i, b) in data.iter_mut().enumerate() {
                *b = self.0[offset as usize + i];
            }
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.0[offset as usize..offset as usize + data.len()].copy_from_slice(data);
        }
    }

    #[test]
    fn overlapping_ranges_are_refused() {
        let mut bus = Bus::new();
        let dev: SharedDevice = Arc::new(Mutex::new(Reg(vec![0; 8])));
        bus.insert(dev.clone(), 0x10, 8).unwrap();
        assert_eq!(
            bus.insert(dev.clone(), 0x14, 8),
            Err(BusError::Overlap { base: 0x14, len: 8 })
        );
        assert_eq!(
            bus.insert(dev.clone(), 0x8, 9),
            Err(BusError::Overlap { base: 0x8, len: 9 })
        );
        assert_eq!(bus.insert(dev.clone(), 0x0, 0), Err(BusError::Empty(0)));
        bus.insert(dev.clone(), 0x18, 8).unwrap();
        bus.insert(dev, 0x8, 8).unwrap();
    }

    #[test]
    fn accesses_reach_the_device_at_their_offset() {
        let mut bus = Bus::new();
        bus.insert(Arc::new(Mutex::new(Reg(vec![0; 8]))), 0x3f8, 8)
            .unwrap();
        assert!(bus.write(0x3fa, &[0xab, 0xcd]));
        let mut out = [0u8; 2];
        assert!(bus.read(0x3fa, &mut out));
        assert_eq!(out, [0xab, 0xcd]);
    }

    #[test]
    fn unclaimed_and_straddling_accesses_read_all_ones() {
        let mut bus = Bus::new();
        bus.insert(Arc::new(Mutex::new(Reg(vec![0; 8]))), 0x10, 8)
            .unwrap();
        let mut out = [0u8; 4];
        assert!(!bus.read(0x16, &mut out));
        assert_eq!(out, [0xff; 4]);
        assert!(!bus.read(0x100, &mut out));
        assert!(!bus.write(0x17, &[0; 2]));
    }
}
