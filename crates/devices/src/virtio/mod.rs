//! Virtio devices (virtio 1.x), independent of their transport.
//!
//! A [`VirtioDevice`] describes one device: its type, features, configuration space and queues.
//! The PCI transport ([`pci`]) presents it to the guest. When the driver sets DRIVER_OK, the
//! transport calls [`VirtioDevice::activate`] with the negotiated features, the queues the driver
//! configured and, per queue, the eventfd the driver's notifications arrive on (a KVM ioeventfd, or
//! written by the transport itself under the software CPU). The device answers with a
//! [`VirtioWorker`]: the object that serves the queues on the VMM's device thread, off the vCPU
//! threads.
//!
//! Every descriptor chain a worker takes goes through [`chain`]'s validation first: a guest is
//! hostile, and a bad chain earns a device error status, never a panic or a hang.
//!
//! Snapshots: the transport saves and restores everything the driver set up (see
//! [`pci::VirtioPciState`]), asking the worker for its queue positions; a device adds its own
//! state through [`VirtioDevice::save_state`]. Block, net and entropy devices have none: once
//! the worker is idle no request is in flight (a frame the tap delivered that waits for receive
//! buffers is dropped, as a NIC drops one). Vsock connections cannot outlive the process: a
//! restored vsock device tells the guest to drop them.

pub mod block;
pub mod chain;
pub mod net;
pub mod pci;
pub mod rng;
#[cfg(any(test, feature = "test-utils"))]
pub mod test_queue;
pub mod vsock;

use std::os::fd::RawFd;
use std::sync::Arc;

use virtio_queue::{Queue, QueueState};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use crate::state::StateError;

/// Device type IDs (virtio 1.x, section 5).
pub mod device_type {
    /// Network card.
    pub const NET: u32 = 1;
    /// Block device.
    pub const BLOCK: u32 = 2;
    /// Entropy source.
    pub const RNG: u32 = 4;
    /// Socket device.
    pub const VSOCK: u32 = 19;
}

/// VIRTIO_F_VERSION_1: every device offers it; the modern transport requires it.
pub const F_VERSION_1: u64 = 1 << 32;
/// VIRTIO_F_RING_EVENT_IDX.
pub const F_RING_EVENT_IDX: u64 = 1 << 29;

/// Guest memory as devices see it. Cloning it is cheap (the regions are shared), and the mapping
/// lives as long as any clone.
pub type GuestMemory = GuestMemoryMmap<()>;

/// Errors of activating a device.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// The driver configured too few queues, or an invalid one.
    #[error("virtio {device}: {what}")]
    BadQueues {
        /// The device's name.
        device: &'static str,
        /// What was wrong.
        what: String,
    },
    /// A host resource the device needs failed.
    #[error("virtio {device}: {what}")]
    Host {
        /// The device's name.
        device: &'static str,
        /// What failed.
        what: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// How a device interrupts the driver. The transport implements it (MSI-X vector, or INTx with
/// the ISR status register).
pub trait VirtioInterrupt: Send + Sync {
    /// The device put buffers in queue `queue`'s used ring.
    fn signal_queue(&self, queue: u16);
    /// The device's configuration space changed.
    fn signal_config(&self);
}

/// One queue as the driver configured it.
pub struct ActiveQueue {
    /// The queue (split virtqueue), with the addresses and size the driver chose.
    pub queue: Queue,
    /// Becomes readable when the driver notifies the queue.
    pub notify: EventFd,
}

/// Everything a device gets when the driver sets DRIVER_OK.
pub struct Activation {
    /// Guest memory, for the queues and the buffers.
    pub mem: GuestMemory,
    /// The features the driver accepted (a subset of [`VirtioDevice::features`]).
    pub features: u64,
    /// The queues, in queue index order. Queues the driver did not enable are absent from the
    /// end; a device that needs them fails activation with [`ActivateError::BadQueues`].
    pub queues: Vec<ActiveQueue>,
    /// How to interrupt the driver.
    pub interrupt: Arc<dyn VirtioInterrupt>,
}

/// A device model, as the transport sees it.
pub trait VirtioDevice: Send {
    /// A short name for messages and metrics ("block", "net", ...).
    fn name(&self) -> &'static str;
    /// The virtio device type ([`device_type`]).
    fn device_type(&self) -> u32;
    /// The maximum size of each queue; the length is the number of queues.
    fn queue_max_sizes(&self) -> Vec<u16>;
    /// The features the device offers, [`F_VERSION_1`] included.
    fn features(&self) -> u64;
    /// Reads the device-specific configuration space at `offset`. Bytes past its end read 0.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes the device-specific configuration space (most devices ignore writes).
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// Starts the device.
    fn activate(&mut self, activation: Activation) -> Result<Box<dyn VirtioWorker>, ActivateError>;
    /// The driver reset the device: the transport has already stopped its worker. The device
    /// returns to its state before activation.
    fn reset(&mut self) {}
    /// The device's own state for a snapshot, beyond what the transport saves (features,
    /// queues, interrupts). The transport calls it with the device's worker idle. The default,
    /// for devices with none, is `null`.
    fn save_state(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
    /// Restores what [`VirtioDevice::save_state`] returned, before the transport activates the
    /// device again (when it was active). The device checks `state` as untrusted input. The
    /// default accepts only `null`.
    fn restore_state(&mut self, state: &serde_json::Value) -> Result<(), StateError> {
        crate::state::ensure_fits(state.is_null(), self.name(), || {
            "device state saved for a device that has none".into()
        })
    }
}

/// Serves an active device's queues on the VMM's device thread.
///
/// The device thread watches every fd of [`VirtioWorker::sources`] and calls
/// [`VirtioWorker::handle`] with the token of each that became readable. Handlers never block:
/// they do what is ready and return.
pub trait VirtioWorker: Send {
    /// The fds to watch (queue notifications, a tap, sockets), each with a token.
    fn sources(&self) -> Vec<(RawFd, u64)>;
    /// The fd with `token` is readable (for a queue's eventfd: the worker reads it to clear it).
    fn handle(&mut self, token: u64);
    /// Called after [`VirtioWorker::handle`] when the set of fds to watch may have changed
    /// (vsock connections come and go). The default keeps the set fixed.
    fn sources_changed(&mut self) -> bool {
        false
    }
    /// The state of the worker's queues, in the activation's queue order, for a snapshot: the
    /// positions it reached in each ring. The transport asks between two calls of
    /// [`VirtioWorker::handle`], so a worker must not hold a chain across calls without
    /// completing it or stepping back before it (`next_avail` must not skip a chain the driver
    /// has not been given back).
    fn queue_states(&self) -> Vec<QueueState>;
}
