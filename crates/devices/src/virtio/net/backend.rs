//! Where a virtio-net device's frames go on the host.

use std::io;
use std::os::fd::{AsRawFd, RawFd};

/// A host endpoint exchanging frames, each prefixed by the 12-byte virtio-net header.
pub trait NetBackend: Send + Sync {
    /// Reads one frame into `buf` without blocking: `WouldBlock` when none is waiting.
    fn read_frame(&self, buf: &mut [u8]) -> io::Result<usize>;
    /// Writes one frame without blocking.
    fn write_frame(&self, buf: &[u8]) -> io::Result<usize>;
    /// The fd that becomes readable when a frame is waiting.
    fn raw_fd(&self) -> RawFd;
    /// Prepares the backend: the 12-byte header, non-blocking mode, and the offloads the driver
    /// accepted, as `feature::GUEST_*` bits.
    fn configure(&self, guest_offloads: u64) -> io::Result<()>;
}

impl NetBackend for net_host::Tap {
    fn read_frame(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.read(buf)
    }

    fn write_frame(&self, buf: &[u8]) -> io::Result<usize> {
        self.write(buf)
    }

    fn raw_fd(&self) -> RawFd {
        self.as_raw_fd()
    }

    fn configure(&self, guest_offloads: u64) -> io::Result<()> {
        use super::feature as f;
        let to_io = |e: net_host::Error| io::Error::other(e.to_string());
        self.set_vnet_hdr_size(super::NET_HDR_LEN as i32)
            .map_err(to_io)?;
        self.set_nonblocking(true).map_err(to_io)?;
        let mut flags = 0;
        if guest_offloads & f::GUEST_CSUM != 0 {
            flags |= net_host::TUN_F_CSUM;
            if guest_offloads & f::GUEST_TSO4 != 0 {
                flags |= net_host::TUN_F_TSO4;
            }
            if guest_offloads & f::GUEST_TSO6 != 0 {
                flags |= net_host::TUN_F_TSO6;
            }
            if guest_offloads & f::GUEST_ECN != 0 {
                flags |= net_host::TUN_F_TSO_ECN;
            }
            if guest_offloads & f::GUEST_UFO != 0 {
                flags |= net_host::TUN_F_UFO;
            }
        }
        self.set_offload(flags).map_err(to_io)
    }
}
