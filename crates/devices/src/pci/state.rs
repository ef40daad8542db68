//! Snapshot state of PCI: a function's configuration space, its MSI-X table, and the root.
//!
//! What a function is made of (IDs, BAR sizes, capability layout, write masks, the MSI-X table's
//! size and GSIs, which slot it is in) is structural: the VMM builds the same devices in the
//! same slots, and a state whose read-only bits or sizes differ from the device's is refused as
//! a [`StateError::Mismatch`]. What the guest programmed (command, BAR addresses, capability
//! fields, the vector table) is the state.

use serde::{Deserialize, Serialize};

use super::msix::VECTOR_MASKED;
use super::root::CONFIG_ADDRESS_MASK;
use super::{MsixConfig, PciConfiguration, PciRoot};
use crate::legacy::lock;
use crate::state::{StateError, ensure, ensure_fits};

/// A function's configuration space as the guest programmed it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct PciConfigurationState {
    /// The dwords from offset 0 up to the last one a guest can change (read-only bits
    /// included, so that a state from another device is recognised).
    pub dwords: Vec<u32>,
}

/// One MSI-X vector.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct MsixVectorState {
    /// Message address.
    pub address: u64,
    /// Message data.
    pub data: u32,
    /// The vector control's mask bit.
    pub masked: bool,
}

/// A function's MSI-X state.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct MsixConfigState {
    /// Message control: MSI-X enable.
    pub enabled: bool,
    /// Message control: function mask.
    pub function_masked: bool,
    /// The vector table, one entry per vector.
    pub table: Vec<MsixVectorState>,
    /// Vectors signalled while masked, waiting for an unmask (the PBA).
    pub pending: Vec<u16>,
}

/// Which device a slot holds, to check that the VM was rebuilt the same way.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct PciSlotState {
    /// Device number on bus 0.
    pub slot: u8,
    /// Its vendor ID.
    pub vendor_id: u16,
    /// Its device ID.
    pub device_id: u16,
}

/// The root complex's state.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct PciRootState {
    /// The address register at port 0xCF8.
    pub config_address: u32,
    /// The host bridge's configuration space.
    pub host_bridge: PciConfigurationState,
    /// The occupied slots after the host bridge, in slot order.
    pub devices: Vec<PciSlotState>,
}

impl PciConfiguration {
    /// How many dwords hold something a guest can change.
    fn mutable_dwords(&self) -> usize {
        (0..self.regs.len())
            .rev()
            .find(|&i| self.writable[i] | self.write_one_clears[i] != 0)
            .map_or(0, |i| i + 1)
    }

    /// The configuration space's state.
    pub fn save(&self) -> PciConfigurationState {
        PciConfigurationState {
            dwords: self.regs[..self.mutable_dwords()].to_vec(),
        }
    }

    /// Restores `s`. Registers only change; a device that acts on them (decoding, MSI-X
    /// control, INTx disable) applies them itself.
    pub fn restore(&mut self, s: &PciConfigurationState) -> Result<(), StateError> {
        self.check_state(s, "pci function")?;
        self.apply_state(s);
        Ok(())
    }

    /// Checks `s` for [`PciConfiguration::restore`], with errors naming `device`.
    pub(crate) fn check_state(
        &self,
        s: &PciConfigurationState,
        device: &'static str,
    ) -> Result<(), StateError> {
        let n = self.mutable_dwords();
        ensure_fits(s.dwords.len() == n, device, || {
            format!(
                "{} configuration dwords saved, the function has {n}",
                s.dwords.len()
            )
        })?;
        for (i, &v) in s.dwords.iter().enumerate() {
            let fixed = !(self.writable[i] | self.write_one_clears[i]);
            ensure_fits((v ^ self.regs[i]) & fixed == 0, device, || {
                format!(
                    "read-only bits of configuration dword {:#x} are {:#010x}, not {:#010x}",
                    i * 4,
                    v & fixed,
                    self.regs[i] & fixed
                )
            })?;
        }
        Ok(())
    }

    /// Applies a state [`PciConfiguration::check_state`] accepted.
    pub(crate) fn apply_state(&mut self, s: &PciConfigurationState) {
        for (r, &v) in self.regs.iter_mut().zip(&s.dwords) {
            *r = v;
        }
    }
}

impl MsixConfig {
    /// The MSI-X state.
    pub fn save(&self) -> MsixConfigState {
        MsixConfigState {
            enabled: self.enabled,
            function_masked: self.function_masked,
            table: self
                .table
                .iter()
                .map(|&[lo, hi, data, control]| MsixVectorState {
                    address: u64::from(hi) << 32 | u64::from(lo),
                    data,
                    masked: control & VECTOR_MASKED != 0,
                })
                .collect(),
            pending: (0u16..)
                .zip(&self.pending)
                .filter(|(_, p)| **p)
                .map(|(v, _)| v)
                .collect(),
        }
    }

    /// Restores `s`, delivering nothing: a pending vector stays pending until unmasked.
    pub fn restore(&mut self, s: &MsixConfigState) -> Result<(), StateError> {
        self.check_state(s, "msix")?;
        self.apply_state(s);
        Ok(())
    }

    /// Checks `s` for [`MsixConfig::restore`], with errors naming `device`.
    pub(crate) fn check_state(
        &self,
        s: &MsixConfigState,
        device: &'static str,
    ) -> Result<(), StateError> {
        ensure_fits(s.table.len() == self.table.len(), device, || {
            format!(
                "{} MSI-X vectors saved, the function has {}",
                s.table.len(),
                self.table.len()
            )
        })?;
        for &v in &s.pending {
            let Some(entry) = s.table.get(usize::from(v)) else {
                return Err(StateError::Invalid {
                    device,
                    what: format!("pending MSI-X vector {v} beyond the table"),
                });
            };
            // A vector pends only while it cannot be delivered.
            ensure(
                !s.enabled || s.function_masked || entry.masked,
                device,
                || format!("MSI-X vector {v} is pending but deliverable"),
            )?;
        }
        Ok(())
    }

    /// Applies a state [`MsixConfig::check_state`] accepted.
    pub(crate) fn apply_state(&mut self, s: &MsixConfigState) {
        self.enabled = s.enabled;
        self.function_masked = s.function_masked;
        for (e, v) in self.table.iter_mut().zip(&s.table) {
            *e = [
                v.address as u32,
                (v.address >> 32) as u32,
                v.data,
                u32::from(v.masked),
            ];
        }
        self.pending.fill(false);
        for &v in &s.pending {
            if let Some(p) = self.pending.get_mut(usize::from(v)) {
                *p = true;
            }
        }
    }
}

impl PciRoot {
    /// The root's state: the address latch, the host bridge, and which device is where.
    pub fn save(&self) -> PciRootState {
        let devices = (1u8..)
            .zip(self.slots.iter().skip(1))
            .filter_map(|(slot, s)| {
                let s = s.as_ref()?;
                let mut id = [0u8; 4];
                lock(&s.device).read_config(0, &mut id);
                Some(PciSlotState {
                    slot,
                    vendor_id: u16::from_le_bytes([id[0], id[1]]),
                    device_id: u16::from_le_bytes([id[2], id[3]]),
                })
            })
            .collect();
        PciRootState {
            config_address: self.config_address,
            host_bridge: lock(&self.host_bridge).config.save(),
            devices,
        }
    }

    /// Restores `s` once the devices on the bus are restored: checks that the same devices are
    /// in the same slots, then reads back where each device's BARs now are.
    pub fn restore(&mut self, s: &PciRootState) -> Result<(), StateError> {
        const DEVICE: &str = "pci root";
        ensure(s.config_address & !CONFIG_ADDRESS_MASK == 0, DEVICE, || {
            format!(
                "address register {:#010x} sets reserved bits",
                s.config_address
            )
        })?;
        let here = self.save().devices;
        ensure_fits(here == s.devices, DEVICE, || {
            format!("slots hold {:?}, the snapshot's held {:?}", here, s.devices)
        })?;
        let mut bridge = lock(&self.host_bridge);
        bridge.config.check_state(&s.host_bridge, DEVICE)?;
        bridge.config.apply_state(&s.host_bridge);
        drop(bridge);
        self.config_address = s.config_address;
        for slot in 0..self.slots.len() {
            self.refresh(slot);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::pci::{
        BarKind, CONTROL_ENABLE, MSI_GSI_BASE, MSI_GSI_LAST, MsiAllocator, PciDevice, PciHeader,
        PciIrqs, PciRootConfig, command,
    };
    use crate::testing::{MockIntx, MockMsi};

    fn header(device_id: u16) -> PciHeader {
        PciHeader {
            vendor_id: 0x1af4,
            device_id,
            revision: 1,
            class_code: 0xff_0000,
            subsystem_vendor_id: 0,
            subsystem_id: 0,
            interrupt_pin: 1,
        }
    }

    fn function(device_id: u16) -> PciConfiguration {
        let mut c = PciConfiguration::new(&header(device_id));
        c.add_bar(0, BarKind::Memory64, 0x4000, false).unwrap();
        c.add_capability(&[0x09, 0, 8, 0, 0, 0, 0, 0], &[0, 0, 0, 0, 0xff])
            .unwrap();
        c
    }

    /// A device whose BAR 0 reads its offset's low byte.
    struct Dev(PciConfiguration);

    impl PciDevice for Dev {
        fn read_config(&mut self, offset: u64, data: &mut [u8]) {
            self.0.read(offset, data);
        }
        fn write_config(&mut self, offset: u64, data: &[u8]) {
            self.0.write(offset, data);
        }
        fn read_bar(&mut self, _bar: usize, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write_bar(&mut self, _bar: usize, _offset: u64, _data: &[u8]) {}
    }

    fn root_with(device_ids: &[u16]) -> (Arc<Mutex<PciRoot>>, Vec<Arc<Mutex<Dev>>>) {
        let mut root = PciRoot::new(
            PciRootConfig {
                ecam_base: 0xe000_0000,
                mmio_base: 0xc000_0000,
                mmio_size: 0x1000_0000,
            },
            PciIrqs {
                intx: Arc::new(MockIntx::default()),
                msi: Arc::new(MockMsi::default()),
            },
        )
        .unwrap();
        let mut devs = Vec::new();
        for &id in device_ids {
            let slot = root.reserve_slot().unwrap();
            let dev = Arc::new(Mutex::new(Dev(function(id))));
            root.add_device(slot.slot, dev.clone()).unwrap();
            devs.push(dev);
        }
        (Arc::new(Mutex::new(root)), devs)
    }

    #[test]
    fn configuration_space_keeps_bars_command_and_capability_fields() {
        let mut a = function(0x1042);
        a.write(0x10, &0xd000_0000u32.to_le_bytes());
        a.write(0x14, &0x1u32.to_le_bytes());
        a.write(4, &(command::MEMORY | command::BUS_MASTER).to_le_bytes());
        a.write(0x44, &[0x5a]);
        let saved = a.save();
        let mut b = function(0x1042);
        b.restore(&saved).unwrap();
        assert_eq!(b.bar(0).unwrap().addr, 0x1_d000_0000);
        assert!(b.memory_enabled());
        assert_eq!(b.read_dword(0x44) & 0xff, 0x5a);
        assert_eq!(b.save(), saved);
    }

    #[test]
    fn configuration_of_another_device_or_size_is_refused() {
        let mut a = function(0x1042);
        let saved = a.save();
        let mut other = function(0x1043);
        assert!(matches!(
            other.restore(&saved),
            Err(StateError::Mismatch { .. })
        ));
        let mut bad = saved.clone();
        bad.dwords.push(0);
        assert!(a.restore(&bad).is_err());
        let mut bad = saved.clone();
        bad.dwords[2] ^= 0xff00; // The class code is read-only.
        assert!(a.restore(&bad).is_err());
        a.write(0x10, &0xd000_0000u32.to_le_bytes());
        let mut bad = a.save();
        bad.dwords[4] |= 0x0f; // BAR flags are read-only.
        assert!(a.restore(&bad).is_err());
        assert_eq!(a.bar(0).unwrap().addr, 0xd000_0000, "unchanged");
    }

    fn msix(vectors: u16) -> (MsixConfig, Arc<MockMsi>) {
        let sink = Arc::new(MockMsi::default());
        let alloc = MsiAllocator::new(sink.clone(), MSI_GSI_BASE, MSI_GSI_LAST).unwrap();
        (alloc.allocate(vectors).unwrap(), sink)
    }

    #[test]
    fn msix_table_and_pending_vectors_survive_and_deliver_on_unmask() {
        let (mut a, _) = msix(3);
        a.set_control(CONTROL_ENABLE);
        a.write_table(16, &0xfee0_1000u32.to_le_bytes());
        a.write_table(24, &0x45u32.to_le_bytes());
        a.signal(1);
        assert!(a.is_pending(1));
        let saved = a.save();
        assert_eq!(saved.pending, vec![1]);

        let (mut b, sink) = msix(3);
        b.restore(&saved).unwrap();
        assert!(sink.take().is_empty(), "restore delivers nothing");
        assert!(b.enabled() && b.is_pending(1));
        b.write_table(28, &0u32.to_le_bytes());
        let got = sink.take();
        assert_eq!(got.len(), 1);
        assert_eq!((got[0].1.address, got[0].1.data), (0xfee0_1000, 0x45));
        assert_eq!(got[0].0, b.gsis()[1], "on this table's own GSI");
    }

    #[test]
    fn inconsistent_msix_states_are_refused() {
        let (mut m, _) = msix(2);
        let good = m.save();
        let mut bad = good.clone();
        bad.table.pop();
        assert!(matches!(m.restore(&bad), Err(StateError::Mismatch { .. })));
        let mut bad = good.clone();
        bad.pending = vec![2];
        assert!(m.restore(&bad).is_err());
        let mut bad = good.clone();
        bad.enabled = true;
        bad.table[0].masked = false;
        bad.pending = vec![0];
        assert!(matches!(m.restore(&bad), Err(StateError::Invalid { .. })));
        assert_eq!(m.save(), good);
    }

    #[test]
    fn root_keeps_the_address_latch_and_maps_restored_bars() {
        let (a, adevs) = root_with(&[0x1042, 0x1041]);
        let entries = PciRoot::bus_entries(&a);
        let mut ports = entries.pio.into_iter().next().unwrap().device;
        // The guest moves device 2's BAR and turns decoding on through ECAM.
        {
            let mut r = lock(&a);
            r.config_write(0, 2, 0, 0x10, &0xc800_0000u32.to_le_bytes());
            r.config_write(0, 2, 0, 4, &command::MEMORY.to_le_bytes());
        }
        lock(&*ports).write(0, &0x8000_1000u32.to_le_bytes());
        let dev_states: Vec<_> = adevs.iter().map(|d| lock(d).0.save()).collect();
        let saved = lock(&a).save();
        assert_eq!(saved.devices.len(), 2);

        let (b, bdevs) = root_with(&[0x1042, 0x1041]);
        for (d, s) in bdevs.iter().zip(&dev_states) {
            lock(d).0.restore(s).unwrap();
        }
        lock(&b).restore(&saved).unwrap();
        let mut byte = [0u8];
        lock(&b).mmio_read(0xc800_0007, &mut byte);
        assert_eq!(byte, [7], "device 2's BAR decodes where the guest put it");
        ports = PciRoot::bus_entries(&b)
            .pio
            .into_iter()
            .next()
            .unwrap()
            .device;
        let mut addr = [0u8; 4];
        lock(&*ports).read(0, &mut addr);
        assert_eq!(u32::from_le_bytes(addr), 0x8000_1000);
        let mut id = [0u8; 2];
        lock(&*ports).read(6, &mut id);
        assert_eq!(
            u16::from_le_bytes(id),
            0x1041,
            "data port reads slot 2's device ID"
        );
    }

    #[test]
    fn root_with_other_devices_or_a_bad_latch_is_refused() {
        let (a, _) = root_with(&[0x1042]);
        let saved = lock(&a).save();
        let (b, _) = root_with(&[0x1041]);
        assert!(matches!(
            lock(&b).restore(&saved),
            Err(StateError::Mismatch { .. })
        ));
        let (c, _) = root_with(&[0x1042, 0x1042]);
        assert!(lock(&c).restore(&saved).is_err());
        let mut bad = saved.clone();
        bad.config_address = 0x8000_0003;
        assert!(matches!(
            lock(&a).restore(&bad),
            Err(StateError::Invalid { .. })
        ));
    }
}
