//! The virtio-net device model: features and configuration space.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use super::backend::NetBackend;
use super::feature as f;
use super::worker::NetWorker;
use crate::virtio::block::read_config;
use crate::virtio::{
    ActivateError, Activation, F_VERSION_1, VirtioDevice, VirtioWorker, device_type,
};

/// Queue size offered to the driver.
const QUEUE_SIZE: u16 = 256;
/// VIRTIO_NET_S_LINK_UP.
const LINK_UP: u16 = 1;

/// Counters of one NIC.
#[derive(Debug, Default)]
pub struct NetStats {
    /// Frames delivered to the guest.
    pub rx_frames: AtomicU64,
    /// Bytes delivered to the guest (headers excluded).
    pub rx_bytes: AtomicU64,
    /// Frames the guest sent.
    pub tx_frames: AtomicU64,
    /// Bytes the guest sent (headers excluded).
    pub tx_bytes: AtomicU64,
    /// Frames dropped: too large for the guest's buffers, or the backend refused them.
    pub dropped: AtomicU64,
    /// Malformed chains.
    pub errors: AtomicU64,
}

/// A virtio-net device.
pub struct Net {
    backend: Arc<dyn NetBackend>,
    mac: [u8; 6],
    stats: Arc<NetStats>,
}

impl Net {
    /// A NIC with address `mac` on `backend`.
    pub fn new(backend: Arc<dyn NetBackend>, mac: [u8; 6]) -> Self {
        Self {
            backend,
            mac,
            stats: Arc::default(),
        }
    }

    /// The device's counters.
    pub fn stats(&self) -> Arc<NetStats> {
        self.stats.clone()
    }

    /// The NIC's MAC address.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }
}

impl VirtioDevice for Net {
    fn name(&self) -> &'static str {
        "net"
    }

    fn device_type(&self) -> u32 {
        device_type::NET
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_SIZE, QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        F_VERSION_1
            | f::MAC
            | f::STATUS
            | f::MRG_RXBUF
            | f::CSUM
            | f::GUEST_CSUM
            | f::GUEST_TSO4
            | f::GUEST_TSO6
            | f::GUEST_ECN
            | f::GUEST_UFO
            | f::HOST_TSO4
            | f::HOST_TSO6
            | f::HOST_ECN
            | f::HOST_UFO
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let mut c = [0u8; 8];
        c[..6].copy_from_slice(&self.mac);
        c[6..8].copy_from_slice(&LINK_UP.to_le_bytes());
        read_config(&c, offset, data);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {
        // The MAC is read-only under virtio 1.x (VIRTIO_NET_F_CTRL_MAC_ADDR is not offered).
    }

    fn activate(&mut self, a: Activation) -> Result<Box<dyn VirtioWorker>, ActivateError> {
        if a.queues.len() < 2 {
            return Err(ActivateError::BadQueues {
                device: "net",
                what: "the receive and transmit queues must both be enabled".into(),
            });
        }
        self.backend
            .configure(a.features)
            .map_err(|source| ActivateError::Host {
                device: "net",
                what: "cannot configure the tap for the driver's offloads".into(),
                source,
            })?;
        let mut queues = a.queues;
        queues.truncate(2);
        let tx = queues.swap_remove(1);
        let rx = queues.swap_remove(0);
        Ok(Box::new(NetWorker::new(
            a.mem,
            rx,
            tx,
            a.interrupt,
            self.backend.clone(),
            a.features & f::MRG_RXBUF != 0,
            self.stats.clone(),
        )))
    }
}
