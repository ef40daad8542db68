//! The common configuration structure (virtio 1.x, 4.1.4.3): feature negotiation, device status
//! and queue setup.
//!
//! Accesses of any size and alignment are served from a byte image of the registers: a read
//! copies from it, a write merges into it and then applies every field it touched, in offset
//! order. The driver's values are checked where they are taken: a feature the device did not
//! offer fails FEATURES_OK, a queue size that is not a power of two up to the maximum is
//! ignored, and a queue whose rings are not in guest memory does not enable.

use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_DRIVER_OK, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
};
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddress;

use super::interrupt::Interrupts;
use crate::virtio::{F_RING_EVENT_IDX, F_VERSION_1, GuestMemory};

/// Length of the common configuration structure.
pub const COMMON_LEN: usize = 0x38;

pub(super) const DRIVER_OK: u8 = VIRTIO_CONFIG_S_DRIVER_OK as u8;
pub(super) const FEATURES_OK: u8 = VIRTIO_CONFIG_S_FEATURES_OK as u8;
pub(super) const NEEDS_RESET: u8 = VIRTIO_CONFIG_S_NEEDS_RESET as u8;

/// Register offsets.
mod reg {
    pub const DEVICE_FEATURE_SELECT: usize = 0x00;
    pub const DEVICE_FEATURE: usize = 0x04;
    pub const DRIVER_FEATURE_SELECT: usize = 0x08;
    pub const DRIVER_FEATURE: usize = 0x0c;
    pub const MSIX_CONFIG: usize = 0x10;
    pub const NUM_QUEUES: usize = 0x12;
    pub const DEVICE_STATUS: usize = 0x14;
    pub const CONFIG_GENERATION: usize = 0x15;
    pub const QUEUE_SELECT: usize = 0x16;
    pub const QUEUE_SIZE: usize = 0x18;
    pub const QUEUE_MSIX_VECTOR: usize = 0x1a;
    pub const QUEUE_ENABLE: usize = 0x1c;
    pub const QUEUE_NOTIFY_OFF: usize = 0x1e;
    pub const QUEUE_DESC: usize = 0x20;
    pub const QUEUE_DRIVER: usize = 0x28;
    pub const QUEUE_DEVICE: usize = 0x30;
}

/// Every field, as (offset, width); the 64-bit addresses are two 32-bit halves.
const FIELDS: [(usize, usize); 19] = [
    (reg::DEVICE_FEATURE_SELECT, 4),
    (reg::DEVICE_FEATURE, 4),
    (reg::DRIVER_FEATURE_SELECT, 4),
    (reg::DRIVER_FEATURE, 4),
    (reg::MSIX_CONFIG, 2),
    (reg::NUM_QUEUES, 2),
    (reg::DEVICE_STATUS, 1),
    (reg::CONFIG_GENERATION, 1),
    (reg::QUEUE_SELECT, 2),
    (reg::QUEUE_SIZE, 2),
    (reg::QUEUE_MSIX_VECTOR, 2),
    (reg::QUEUE_ENABLE, 2),
    (reg::QUEUE_NOTIFY_OFF, 2),
    (reg::QUEUE_DESC, 4),
    (reg::QUEUE_DESC + 4, 4),
    (reg::QUEUE_DRIVER, 4),
    (reg::QUEUE_DRIVER + 4, 4),
    (reg::QUEUE_DEVICE, 4),
    (reg::QUEUE_DEVICE + 4, 4),
];

/// What the transport must do after a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Action {
    /// Nothing more.
    None,
    /// The driver wrote 0 to device_status.
    Reset,
    /// The driver set DRIVER_OK.
    DriverOk,
}

/// One queue's registers as the driver set them.
#[derive(Debug, Clone, Copy)]
pub(super) struct QueueRegs {
    pub(super) max: u16,
    pub(super) size: u16,
    pub(super) enabled: bool,
    pub(super) desc: u64,
    pub(super) driver: u64,
    pub(super) device: u64,
}

impl QueueRegs {
    pub(super) fn new(max: u16) -> Self {
        // A maximum virtio-queue would refuse reads as size 0: the driver skips the queue.
        let usable = max.is_power_of_two() && max <= 32768;
        Self {
            max,
            size: if usable { max } else { 0 },
            enabled: false,
            desc: 0,
            driver: 0,
            device: 0,
        }
    }

    /// The queue these registers describe, if it is usable in `mem`.
    pub(super) fn queue(&self, mem: &GuestMemory, event_idx: bool) -> Option<Queue> {
        let mut q = Queue::new(self.max).ok()?;
        q.try_set_size(self.size).ok()?;
        q.try_set_desc_table_address(GuestAddress(self.desc)).ok()?;
        q.try_set_avail_ring_address(GuestAddress(self.driver))
            .ok()?;
        q.try_set_used_ring_address(GuestAddress(self.device))
            .ok()?;
        q.set_ready(true);
        q.set_event_idx(event_idx);
        q.is_valid(mem).then_some(q)
    }
}

/// The common configuration registers of one device.
pub(super) struct CommonConfig {
    pub(super) device_features: u64,
    pub(super) device_feature_select: u32,
    pub(super) driver_feature_select: u32,
    pub(super) driver_features: u64,
    pub(super) status: u8,
    pub(super) queue_select: u16,
    pub(super) queues: Vec<QueueRegs>,
}

fn set_half(value: &mut u64, high: bool, half: u32) {
    *value = if high {
        (*value & 0xffff_ffff) | u64::from(half) << 32
    } else {
        (*value & !0xffff_ffff) | u64::from(half)
    };
}

impl CommonConfig {
    pub(super) fn new(device_features: u64, queue_max_sizes: &[u16]) -> Self {
        Self {
            device_features,
            device_feature_select: 0,
            driver_feature_select: 0,
            driver_features: 0,
            status: 0,
            queue_select: 0,
            queues: queue_max_sizes.iter().map(|&m| QueueRegs::new(m)).collect(),
        }
    }

    pub(super) fn status(&self) -> u8 {
        self.status
    }

    pub(super) fn driver_features(&self) -> u64 {
        self.driver_features
    }

    /// Something went wrong that only a reset cures.
    pub(super) fn set_needs_reset(&mut self) {
        self.status |= NEEDS_RESET;
    }

    /// Back to the state before the driver touched the device.
    pub(super) fn reset(&mut self) {
        *self = Self::new(
            self.device_features,
            &self.queues.iter().map(|q| q.max).collect::<Vec<_>>(),
        );
    }

    /// The queues to activate: the enabled ones from queue 0 up to the first that is not.
    pub(super) fn active_queues(&self, mem: &GuestMemory) -> Vec<Queue> {
        let event_idx = self.driver_features & F_RING_EVENT_IDX != 0;
        self.queues
            .iter()
            .take_while(|q| q.enabled)
            .map_while(|q| q.queue(mem, event_idx))
            .collect()
    }

    fn selected(&self) -> Option<&QueueRegs> {
        self.queues.get(usize::from(self.queue_select))
    }

    /// The registers as the driver reads them.
    fn image(&self, ints: &Interrupts) -> [u8; COMMON_LEN] {
        let mut b = [0u8; COMMON_LEN];
        let mut put = |offset: usize, bytes: &[u8]| {
            b[offset..offset + bytes.len()].copy_from_slice(bytes);
        };
        let word = |features: u64, select: u32| match select {
            0 => features as u32,
            1 => (features >> 32) as u32,
            _ => 0,
        };
        put(
            reg::DEVICE_FEATURE_SELECT,
            &self.device_feature_select.to_le_bytes(),
        );
        put(
            reg::DEVICE_FEATURE,
            &word(self.device_features, self.device_feature_select).to_le_bytes(),
        );
        put(
            reg::DRIVER_FEATURE_SELECT,
            &self.driver_feature_select.to_le_bytes(),
        );
        put(
            reg::DRIVER_FEATURE,
            &word(self.driver_features, self.driver_feature_select).to_le_bytes(),
        );
        put(reg::MSIX_CONFIG, &ints.config_vector().to_le_bytes());
        put(reg::NUM_QUEUES, &(self.queues.len() as u16).to_le_bytes());
        put(reg::DEVICE_STATUS, &[self.status]);
        put(reg::CONFIG_GENERATION, &[ints.config_generation()]);
        put(reg::QUEUE_SELECT, &self.queue_select.to_le_bytes());
        if let Some(q) = self.selected() {
            put(reg::QUEUE_SIZE, &q.size.to_le_bytes());
            put(
                reg::QUEUE_MSIX_VECTOR,
                &ints.queue_vector(self.queue_select).to_le_bytes(),
            );
            put(reg::QUEUE_ENABLE, &u16::from(q.enabled).to_le_bytes());
            put(reg::QUEUE_NOTIFY_OFF, &self.queue_select.to_le_bytes());
            put(reg::QUEUE_DESC, &q.desc.to_le_bytes());
            put(reg::QUEUE_DRIVER, &q.driver.to_le_bytes());
            put(reg::QUEUE_DEVICE, &q.device.to_le_bytes());
        }
        b
    }

    /// Reads at `offset` into the structure; bytes past its end read 0.
    pub(super) fn read(&self, ints: &Interrupts, offset: u64, data: &mut [u8]) {
        let image = self.image(ints);
        for (i, b) in data.iter_mut().enumerate() {
            *b = usize::try_from(offset)
                .ok()
                .and_then(|o| o.checked_add(i))
                .and_then(|o| image.get(o))
                .copied()
                .unwrap_or(0);
        }
    }

    /// Writes at `offset` into the structure.
    pub(super) fn write(
        &mut self,
        ints: &Interrupts,
        mem: &GuestMemory,
        offset: u64,
        data: &[u8],
    ) -> Action {
        let Some(start) = usize::try_from(offset).ok().filter(|&o| o < COMMON_LEN) else {
            return Action::None;
        };
        if data.is_empty() {
            return Action::None;
        }
        let end = start.saturating_add(data.len()).min(COMMON_LEN);
        let mut image = self.image(ints);
        image[start..end].copy_from_slice(&data[..end - start]);
        let mut action = Action::None;
        for &(field, width) in FIELDS.iter().filter(|(f, w)| *f < end && f + w > start) {
            let mut bytes = [0u8; 4];
            bytes[..width].copy_from_slice(&image[field..field + width]);
            match self.write_field(ints, mem, field, u32::from_le_bytes(bytes)) {
                Action::None => {}
                a => action = a,
            }
        }
        action
    }

    fn write_field(
        &mut self,
        ints: &Interrupts,
        mem: &GuestMemory,
        field: usize,
        v: u32,
    ) -> Action {
        let select = self.queue_select;
        match field {
            reg::DEVICE_FEATURE_SELECT => self.device_feature_select = v,
            reg::DRIVER_FEATURE_SELECT => self.driver_feature_select = v,
            reg::DRIVER_FEATURE => {
                if self.status & FEATURES_OK == 0 && self.driver_feature_select < 2 {
                    set_half(
                        &mut self.driver_features,
                        self.driver_feature_select == 1,
                        v,
                    );
                }
            }
            reg::MSIX_CONFIG => ints.set_config_vector(v as u16),
            reg::DEVICE_STATUS => return self.write_status(v as u8),
            reg::QUEUE_SELECT => self.queue_select = v as u16,
            reg::QUEUE_MSIX_VECTOR => ints.set_queue_vector(select, v as u16),
            _ => self.write_queue_field(mem, field, v),
        }
        Action::None
    }

    fn write_queue_field(&mut self, mem: &GuestMemory, field: usize, v: u32) {
        let driver_ok = self.status & DRIVER_OK != 0;
        let event_idx = self.driver_features & F_RING_EVENT_IDX != 0;
        let Some(q) = self.queues.get_mut(usize::from(self.queue_select)) else {
            return;
        };
        // The driver may not change a queue once it is enabled or the device runs.
        if q.enabled || driver_ok {
            return;
        }
        match field {
            reg::QUEUE_SIZE => {
                let size = v as u16;
                if size.is_power_of_two() && size <= q.max {
                    q.size = size;
                }
            }
            // Only 1 means something; the queue is not enabled yet (see above).
            reg::QUEUE_ENABLE => q.enabled = v as u16 == 1 && q.queue(mem, event_idx).is_some(),
            reg::QUEUE_DESC => set_half(&mut q.desc, false, v),
            f if f == reg::QUEUE_DESC + 4 => set_half(&mut q.desc, true, v),
            reg::QUEUE_DRIVER => set_half(&mut q.driver, false, v),
            f if f == reg::QUEUE_DRIVER + 4 => set_half(&mut q.driver, true, v),
            reg::QUEUE_DEVICE => set_half(&mut q.device, false, v),
            f if f == reg::QUEUE_DEVICE + 4 => set_half(&mut q.device, true, v),
            // Read-only: device_feature, num_queues, config_generation, queue_notify_off.
            _ => {}
        }
    }

    fn write_status(&mut self, value: u8) -> Action {
        if value == 0 {
            return Action::Reset;
        }
        let old = self.status;
        // Status bits only accumulate until a reset; NEEDS_RESET is the device's to set.
        let mut new = old | (value & !NEEDS_RESET);
        if new & FEATURES_OK != 0 && old & FEATURES_OK == 0 && !self.features_acceptable() {
            new &= !FEATURES_OK;
        }
        self.status = new;
        if new & DRIVER_OK != 0 && old & DRIVER_OK == 0 {
            Action::DriverOk
        } else {
            Action::None
        }
    }

    /// The driver took only offered features, VERSION_1 among them.
    fn features_acceptable(&self) -> bool {
        self.driver_features & !self.device_features == 0 && self.driver_features & F_VERSION_1 != 0
    }

    /// Whether FEATURES_OK was accepted.
    pub(super) fn features_ok(&self) -> bool {
        self.status & FEATURES_OK != 0
    }
}
