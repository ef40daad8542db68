//! virtio-net: a NIC whose frames go to a host backend (a tap).
//!
//! The device passes the virtio-net header (12 bytes, virtio 1.x layout) through to the tap
//! unchanged, so the checksum and segmentation offloads the driver negotiates are the tap's:
//! [`Net`] tells the tap which ones the driver accepted. Receive buffers may be merged
//! (`VIRTIO_NET_F_MRG_RXBUF`): a frame spans several chains and the header says how many.

mod backend;
mod device;
mod worker;

pub use backend::NetBackend;
pub use device::{Net, NetStats};

/// The virtio-net header the device and the backend exchange (`virtio_net_hdr_v1`).
pub const NET_HDR_LEN: usize = 12;

/// Feature bits (virtio 1.2, 5.1.3).
pub mod feature {
    /// Device handles packets with partial checksum.
    pub const CSUM: u64 = 1 << 0;
    /// Driver handles packets with partial checksum.
    pub const GUEST_CSUM: u64 = 1 << 1;
    /// Device has a MAC address in its configuration.
    pub const MAC: u64 = 1 << 5;
    /// Driver can receive TSOv4.
    pub const GUEST_TSO4: u64 = 1 << 7;
    /// Driver can receive TSOv6.
    pub const GUEST_TSO6: u64 = 1 << 8;
    /// Driver can receive TSO with ECN.
    pub const GUEST_ECN: u64 = 1 << 9;
    /// Driver can receive UFO.
    pub const GUEST_UFO: u64 = 1 << 10;
    /// Device can receive TSOv4.
    pub const HOST_TSO4: u64 = 1 << 11;
    /// Device can receive TSOv6.
    pub const HOST_TSO6: u64 = 1 << 12;
    /// Device can receive TSO with ECN.
    pub const HOST_ECN: u64 = 1 << 13;
    /// Device can receive UFO.
    pub const HOST_UFO: u64 = 1 << 14;
    /// Driver can merge receive buffers.
    pub const MRG_RXBUF: u64 = 1 << 15;
    /// Configuration status field is available.
    pub const STATUS: u64 = 1 << 16;
}

#[cfg(test)]
mod tests;
