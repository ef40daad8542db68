//! The root complex of bus 0: the host bridge, configuration access through ports
//! 0xCF8/0xCFC and through ECAM, and the MMIO window that reaches the devices' BARs.
//!
//! The root sizes and places every BAR when a device is added, as firmware would, and reads
//! the BARs and the command register back after each configuration write to that device: the
//! window then dispatches each access to the first decoded BAR that covers it. BARs the guest
//! moves over each other or off the window are its own business; nothing panics.

use std::sync::{Arc, Mutex};

use vm_allocator::{AddressAllocator, AllocPolicy};

use super::config::{BarKind, NUM_BARS, PciConfiguration, PciHeader, command};
use super::msix::{MSI_GSI_BASE, MSI_GSI_LAST, MsiAllocator};
use super::{IntxRouter, PciDevice, PciError, SLOTS, SharedPciDevice, intx_gsi};
use crate::bus::BusDevice;
use crate::interrupt::{IrqLine, MsiSink};
use crate::legacy::{BusEntry, lock};

/// The configuration address port; the data ports follow at 0xCFC-0xCFF.
pub const CONFIG_ADDRESS_PORT: u64 = 0xcf8;
/// Length of the configuration port range (address and data).
pub const CONFIG_PORTS_LEN: u64 = 8;
/// Size of the ECAM range: bus 0 only.
pub const ECAM_SIZE: u64 = 1 << 20;
/// Vendor ID of the host bridge.
pub const HOST_BRIDGE_VENDOR_ID: u16 = 0x8086;
/// Device ID of the host bridge.
pub const HOST_BRIDGE_DEVICE_ID: u16 = 0x0d57;

const CONFIG_ENABLE: u32 = 1 << 31;
/// The bits of the address register that mean something: enable, bus, device, function, dword.
pub(super) const CONFIG_ADDRESS_MASK: u32 = CONFIG_ENABLE | 0x00ff_fffc;

/// Where the root's ranges are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PciRootConfig {
    /// Base of the ECAM range ([`ECAM_SIZE`] bytes).
    pub ecam_base: u64,
    /// Base of the MMIO window that BARs are placed in.
    pub mmio_base: u64,
    /// Size of the MMIO window.
    pub mmio_size: u64,
}

/// Where devices' interrupts go.
#[derive(Clone)]
pub struct PciIrqs {
    /// INTx lines.
    pub intx: Arc<dyn IntxRouter>,
    /// MSI-X messages.
    pub msi: Arc<dyn MsiSink>,
}

/// A slot reserved for a device, with the interrupts the device may use.
#[derive(Clone)]
pub struct PciSlot {
    /// Device number on bus 0 (1-31).
    pub slot: u8,
    /// The device's INTA line (a shared source on [`PciSlot::intx_gsi`]).
    pub intx: Arc<dyn IrqLine>,
    /// The GSI of INTA.
    pub intx_gsi: u32,
    /// Where to get GSIs for MSI-X vectors.
    pub msi: MsiAllocator,
}

/// The bus entries of a root: what the VMM inserts into its buses.
pub struct PciBusEntries {
    /// On the port bus: the configuration ports.
    pub pio: Vec<BusEntry>,
    /// On the MMIO bus: ECAM and the BAR window.
    pub mmio: Vec<BusEntry>,
}

/// A memory BAR the root placed: its index and size.
#[derive(Clone, Copy)]
struct SizedBar {
    index: usize,
    kind: BarKind,
    size: u64,
}

/// A BAR the device currently decodes.
#[derive(Clone, Copy)]
struct Mapped {
    start: u64,
    size: u64,
    index: usize,
}

pub(super) struct Slot {
    pub(super) device: SharedPciDevice,
    bars: Vec<SizedBar>,
    mapped: Vec<Mapped>,
}

/// Bus 0: the host bridge in slot 0 and up to 31 devices.
pub struct PciRoot {
    config: PciRootConfig,
    /// The address register at port 0xCF8.
    pub(super) config_address: u32,
    /// The host bridge, also in slot 0.
    pub(super) host_bridge: Arc<Mutex<HostBridge>>,
    pub(super) slots: Vec<Option<Slot>>,
    reserved: [bool; SLOTS as usize],
    mmio: AddressAllocator,
    intx: Arc<dyn IntxRouter>,
    msi: MsiAllocator,
}

impl PciRoot {
    /// A bus with only the host bridge, placing BARs in `config`'s window.
    pub fn new(config: PciRootConfig, irqs: PciIrqs) -> Result<Self, PciError> {
        let window_err = PciError::Window {
            base: config.mmio_base,
            size: config.mmio_size,
        };
        let mmio =
            AddressAllocator::new(config.mmio_base, config.mmio_size).map_err(|_| window_err)?;
        let host_bridge = Arc::new(Mutex::new(HostBridge::new()));
        let mut root = Self {
            config,
            config_address: 0,
            host_bridge: host_bridge.clone(),
            slots: (0..SLOTS).map(|_| None).collect(),
            reserved: [false; SLOTS as usize],
            mmio,
            intx: irqs.intx,
            msi: MsiAllocator::new(irqs.msi, MSI_GSI_BASE, MSI_GSI_LAST)?,
        };
        root.reserved[0] = true;
        root.slots[0] = Some(Slot {
            device: host_bridge,
            bars: Vec::new(),
            mapped: Vec::new(),
        });
        Ok(root)
    }

    /// The ranges the root was made with.
    pub fn config(&self) -> PciRootConfig {
        self.config
    }

    /// Reserves the lowest free slot and its interrupts, for a device about to be made.
    pub fn reserve_slot(&mut self) -> Result<PciSlot, PciError> {
        let slot = (1..SLOTS)
            .find(|&s| !self.reserved[usize::from(s)])
            .ok_or(PciError::NoSlot)?;
        let gsi = intx_gsi(slot, 0);
        let intx = self.intx.intx_line(gsi)?;
        self.reserved[usize::from(slot)] = true;
        Ok(PciSlot {
            slot,
            intx,
            intx_gsi: gsi,
            msi: self.msi.clone(),
        })
    }

    /// Puts `device` in `slot` (from [`PciRoot::reserve_slot`]) and places its memory BARs in
    /// the MMIO window. Memory decoding stays off until the guest turns it on.
    pub fn add_device(&mut self, slot: u8, device: SharedPciDevice) -> Result<(), PciError> {
        let index = usize::from(slot);
        if slot == 0 || slot >= SLOTS || self.slots[index].is_some() {
            return Err(PciError::SlotTaken(slot));
        }
        let bars = {
            let mut dev = lock(&device);
            let bars = size_bars(&mut *dev);
            for bar in bars.iter().filter(|b| b.kind != BarKind::Io) {
                let range = self
                    .mmio
                    .allocate(bar.size, bar.size, AllocPolicy::FirstMatch)
                    .map_err(|_| PciError::OutOfMmio(bar.size))?;
                let reg = 0x10 + 4 * bar.index as u64;
                let addr = range.start();
                dev.write_config(reg, &(addr as u32).to_le_bytes());
                if bar.kind == BarKind::Memory64 {
                    dev.write_config(reg + 4, &((addr >> 32) as u32).to_le_bytes());
                }
            }
            bars
        };
        self.reserved[index] = true;
        self.slots[index] = Some(Slot {
            device,
            bars,
            mapped: Vec::new(),
        });
        self.refresh(index);
        Ok(())
    }

    /// Reads configuration space of `bus:device.function` at `offset`. Absent functions read
    /// all-ones.
    pub fn config_read(&self, bus: u8, device: u8, function: u8, offset: u64, data: &mut [u8]) {
        match self.function(bus, device, function) {
            Some(slot) => lock(&slot.device).read_config(offset, data),
            None => data.fill(0xff),
        }
    }

    /// Writes configuration space of `bus:device.function` at `offset`.
    pub fn config_write(&mut self, bus: u8, device: u8, function: u8, offset: u64, data: &[u8]) {
        if let Some(slot) = self.function(bus, device, function) {
            lock(&slot.device).write_config(offset, data);
            self.refresh(usize::from(device));
        }
    }

    /// Reads guest-physical `addr` in the MMIO window: from the BAR there, or all-ones.
    pub fn mmio_read(&self, addr: u64, data: &mut [u8]) {
        match self.find_bar(addr, data.len()) {
            Some((device, bar, offset)) => lock(device).read_bar(bar, offset, data),
            None => data.fill(0xff),
        }
    }

    /// Writes guest-physical `addr` in the MMIO window (dropped when no BAR is there).
    pub fn mmio_write(&self, addr: u64, data: &[u8]) {
        if let Some((device, bar, offset)) = self.find_bar(addr, data.len()) {
            lock(device).write_bar(bar, offset, data);
        }
    }

    /// The configuration ports, ECAM and the MMIO window as bus devices, for the VMM to insert
    /// at the addresses given.
    pub fn bus_entries(root: &Arc<Mutex<PciRoot>>) -> PciBusEntries {
        let config = lock(root).config;
        let entry = |device: Arc<Mutex<dyn BusDevice>>, base, len| BusEntry { device, base, len };
        PciBusEntries {
            pio: vec![entry(
                Arc::new(Mutex::new(ConfigPorts { root: root.clone() })),
                CONFIG_ADDRESS_PORT,
                CONFIG_PORTS_LEN,
            )],
            mmio: vec![
                entry(
                    Arc::new(Mutex::new(Ecam { root: root.clone() })),
                    config.ecam_base,
                    ECAM_SIZE,
                ),
                entry(
                    Arc::new(Mutex::new(MmioWindow {
                        root: root.clone(),
                        base: config.mmio_base,
                    })),
                    config.mmio_base,
                    config.mmio_size,
                ),
            ],
        }
    }

    fn function(&self, bus: u8, device: u8, function: u8) -> Option<&Slot> {
        if bus != 0 || function != 0 {
            return None;
        }
        self.slots.get(usize::from(device))?.as_ref()
    }

    /// Reads back where `slot`'s device decodes its memory BARs.
    pub(super) fn refresh(&mut self, slot: usize) {
        let Some(Some(entry)) = self.slots.get_mut(slot) else {
            return;
        };
        let mut dev = lock(&entry.device);
        let mut cmd = [0u8; 2];
        dev.read_config(4, &mut cmd);
        entry.mapped.clear();
        if u16::from_le_bytes(cmd) & command::MEMORY == 0 {
            return;
        }
        for bar in entry.bars.iter().filter(|b| b.kind != BarKind::Io) {
            let reg = 0x10 + 4 * bar.index as u64;
            let mut start = u64::from(read_u32(&mut *dev, reg) & !0xf);
            if bar.kind == BarKind::Memory64 {
                start |= u64::from(read_u32(&mut *dev, reg + 4)) << 32;
            }
            entry.mapped.push(Mapped {
                start,
                size: bar.size,
                index: bar.index,
            });
        }
    }

    fn find_bar(&self, addr: u64, len: usize) -> Option<(&SharedPciDevice, usize, u64)> {
        self.slots.iter().flatten().find_map(|slot| {
            slot.mapped.iter().find_map(|m| {
                let offset = addr.checked_sub(m.start)?;
                let end = offset.checked_add(len as u64)?;
                (end <= m.size).then_some((&slot.device, m.index, offset))
            })
        })
    }
}

fn read_u32(dev: &mut dyn PciDevice, offset: u64) -> u32 {
    let mut b = [0u8; 4];
    dev.read_config(offset, &mut b);
    u32::from_le_bytes(b)
}

/// Sizes each BAR the way firmware does: write all-ones, read the mask back, restore.
fn size_bars(dev: &mut dyn PciDevice) -> Vec<SizedBar> {
    let mut bars = Vec::new();
    let mut index = 0;
    while index < NUM_BARS {
        let reg = 0x10 + 4 * index as u64;
        let original = read_u32(dev, reg);
        dev.write_config(reg, &u32::MAX.to_le_bytes());
        let low = read_u32(dev, reg);
        dev.write_config(reg, &original.to_le_bytes());
        let (kind, mask, regs) = if low & 1 == 1 {
            (BarKind::Io, u64::from(low & !0x3) | !0xffff_ffff, 1)
        } else if (low >> 1) & 3 == 2 && index + 1 < NUM_BARS {
            let original_high = read_u32(dev, reg + 4);
            dev.write_config(reg + 4, &u32::MAX.to_le_bytes());
            let high = read_u32(dev, reg + 4);
            dev.write_config(reg + 4, &original_high.to_le_bytes());
            (
                BarKind::Memory64,
                u64::from(high) << 32 | u64::from(low & !0xf),
                2,
            )
        } else {
            (BarKind::Memory32, u64::from(low & !0xf) | !0xffff_ffff, 1)
        };
        let size = (!mask).wrapping_add(1);
        if low != 0 && size.is_power_of_two() {
            bars.push(SizedBar { index, kind, size });
        }
        index += regs;
    }
    bars
}

/// The host bridge at 00:00.0: a header and nothing else.
pub(super) struct HostBridge {
    pub(super) config: PciConfiguration,
}

impl HostBridge {
    fn new() -> Self {
        Self {
            config: PciConfiguration::new(&PciHeader {
                vendor_id: HOST_BRIDGE_VENDOR_ID,
                device_id: HOST_BRIDGE_DEVICE_ID,
                revision: 0,
                class_code: 0x06_0000,
                subsystem_vendor_id: 0,
                subsystem_id: 0,
                interrupt_pin: 0,
            }),
        }
    }
}

impl PciDevice for HostBridge {
    fn read_config(&mut self, offset: u64, data: &mut [u8]) {
        self.config.read(offset, data);
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        self.config.write(offset, data);
    }
    fn read_bar(&mut self, _bar: usize, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }
    fn write_bar(&mut self, _bar: usize, _offset: u64, _data: &[u8]) {}
}

/// Ports 0xCF8 (address, 32-bit accesses only) and 0xCFC-0xCFF (data). The address register
/// is the root's, so that it is saved with the root's state.
struct ConfigPorts {
    root: Arc<Mutex<PciRoot>>,
}

impl PciRoot {
    /// The target of a data-port access at `port_offset` (4-7), if the address enables one.
    fn config_target(&self, port_offset: u64) -> Option<(u8, u8, u8, u64)> {
        if self.config_address & CONFIG_ENABLE == 0 {
            return None;
        }
        let a = self.config_address;
        let register = u64::from(a & 0xfc) + (port_offset - 4);
        Some((
            (a >> 16) as u8,
            ((a >> 11) & 0x1f) as u8,
            ((a >> 8) & 0x7) as u8,
            register,
        ))
    }
}

impl BusDevice for ConfigPorts {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let root = lock(&self.root);
        if offset < 4 {
            if offset == 0 && data.len() == 4 {
                data.copy_from_slice(&root.config_address.to_le_bytes());
            } else {
                data.fill(0xff);
            }
            return;
        }
        match root.config_target(offset) {
            Some((bus, dev, func, reg)) => root.config_read(bus, dev, func, reg, data),
            None => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let mut root = lock(&self.root);
        if offset < 4 {
            if let (0, Ok(bytes)) = (offset, <[u8; 4]>::try_from(data)) {
                root.config_address = u32::from_le_bytes(bytes) & CONFIG_ADDRESS_MASK;
            }
            return;
        }
        if let Some((bus, dev, func, reg)) = root.config_target(offset) {
            root.config_write(bus, dev, func, reg, data);
        }
    }
}

/// ECAM: bus 0's configuration space as memory, 4 KiB per function.
struct Ecam {
    root: Arc<Mutex<PciRoot>>,
}

fn ecam_decode(offset: u64) -> (u8, u8, u8, u64) {
    (
        (offset >> 20) as u8,
        ((offset >> 15) & 0x1f) as u8,
        ((offset >> 12) & 0x7) as u8,
        offset & 0xfff,
    )
}

impl BusDevice for Ecam {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let (bus, dev, func, reg) = ecam_decode(offset);
        lock(&self.root).config_read(bus, dev, func, reg, data);
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        let (bus, dev, func, reg) = ecam_decode(offset);
        lock(&self.root).config_write(bus, dev, func, reg, data);
    }
}

/// The MMIO window: whatever BAR the guest put at the address.
struct MmioWindow {
    root: Arc<Mutex<PciRoot>>,
    base: u64,
}

impl BusDevice for MmioWindow {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match self.base.checked_add(offset) {
            Some(addr) => lock(&self.root).mmio_read(addr, data),
            None => data.fill(0xff),
        }
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        if let Some(addr) = self.base.checked_add(offset) {
            lock(&self.root).mmio_write(addr, data);
        }
    }
}

#[cfg(test)]
#[path = "root_tests.rs"]
mod tests;
