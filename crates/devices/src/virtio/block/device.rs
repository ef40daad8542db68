//! The virtio-blk device model: features and configuration space.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use block::DiskImage;

use super::worker::BlockWorker;
use super::{SECTOR_SIZE, feature};
use crate::virtio::{
    ActivateError, Activation, F_VERSION_1, VirtioDevice, VirtioWorker, device_type,
};

/// Queue size offered to the driver.
pub(super) const QUEUE_SIZE: u16 = 256;
/// Most data segments in one request (besides the header and the status byte).
pub(super) const SEG_MAX: u32 = 126;
/// Most sectors one discard or write-zeroes segment may cover.
pub(super) const MAX_ZERO_SECTORS: u32 = u32::MAX / SECTOR_SIZE as u32;
/// Most segments in one discard or write-zeroes request.
pub(super) const MAX_ZERO_SEGMENTS: u32 = 1;
/// Size of the configuration space this device fills in.
const CONFIG_LEN: usize = 60;

/// Request counters, shared with the worker (metrics read them).
#[derive(Debug, Default)]
pub struct BlockStats {
    /// Requests completed (any status).
    pub requests: AtomicU64,
    /// Bytes read from the image into the guest.
    pub read_bytes: AtomicU64,
    /// Bytes written from the guest to the image.
    pub written_bytes: AtomicU64,
    /// Requests completed with an error status, and malformed chains.
    pub errors: AtomicU64,
}

/// A virtio-blk device backed by a disk image.
pub struct Block {
    disk: Arc<Mutex<Box<dyn DiskImage>>>,
    id: String,
    read_only: bool,
    capacity: u64,
    stats: Arc<BlockStats>,
}

impl Block {
    /// A block device on `disk`. The disk is read-only to the guest when the image is.
    pub fn new(disk: Box<dyn DiskImage>) -> Self {
        let id = disk.id();
        let read_only = disk.read_only();
        let capacity = disk.size() / SECTOR_SIZE;
        Self {
            disk: Arc::new(Mutex::new(disk)),
            id,
            read_only,
            capacity,
            stats: Arc::default(),
        }
    }

    /// The device's counters.
    pub fn stats(&self) -> Arc<BlockStats> {
        self.stats.clone()
    }

    /// The disk, for callers that must flush or snapshot it while the VM is paused.
    pub fn disk(&self) -> Arc<Mutex<Box<dyn DiskImage>>> {
        self.disk.clone()
    }

    fn config(&self) -> [u8; CONFIG_LEN] {
        let mut c = [0u8; CONFIG_LEN];
        c[0..8].copy_from_slice(&self.capacity.to_le_bytes());
        // size_max (8) stays 0: no limit per segment.
        c[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());
        c[20..24].copy_from_slice(&(SECTOR_SIZE as u32).to_le_bytes());
        // num_queues (34) is only meaningful with VIRTIO_BLK_F_MQ, which is not offered.
        c[36..40].copy_from_slice(&MAX_ZERO_SECTORS.to_le_bytes());
        c[40..44].copy_from_slice(&MAX_ZERO_SEGMENTS.to_le_bytes());
        c[44..48].copy_from_slice(&1u32.to_le_bytes());
        c[48..52].copy_from_slice(&MAX_ZERO_SECTORS.to_le_bytes());
        c[52..56].copy_from_slice(&MAX_ZERO_SEGMENTS.to_le_bytes());
        c
    }
}

impl VirtioDevice for Block {
    fn name(&self) -> &'static str {
        "block"
    }

    fn device_type(&self) -> u32 {
        device_type::BLOCK
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        let mut f = F_VERSION_1 | feature::SEG_MAX | feature::BLK_SIZE | feature::FLUSH;
        if self.read_only {
            f |= feature::RO;
        } else {
            f |= feature::DISCARD | feature::WRITE_ZEROES;
        }
        f
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config(&self.config(), offset, data);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {
        // `writeback` (offset 32) needs VIRTIO_BLK_F_CONFIG_WCE, which is not offered.
    }

    fn activate(&mut self, a: Activation) -> Result<Box<dyn VirtioWorker>, ActivateError> {
        let mut queues = a.queues;
        if queues.is_empty() {
            return Err(ActivateError::BadQueues {
                device: "block",
                what: "the request queue is not enabled".into(),
            });
        }
        let q = queues.swap_remove(0);
        Ok(Box::new(BlockWorker {
            mem: a.mem,
            queue: q.queue,
            notify: q.notify,
            interrupt: a.interrupt,
            disk: self.disk.clone(),
            id: self.id.clone(),
            read_only: self.read_only,
            stats: self.stats.clone(),
            buffer: Vec::new(),
        }))
    }
}

/// Copies `config[offset..]` into `data`, with zeroes past the end.
pub(crate) fn read_config(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if start < config.len() {
        let n = data.len().min(config.len() - start);
        data[..n].copy_from_slice(&config[start..start + n]);
    }
}
