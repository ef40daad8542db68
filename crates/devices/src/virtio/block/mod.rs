//! virtio-blk: a disk image file as a block device.
//!
//! [`Block`] is the device model (features, configuration space); its [`worker`] serves the one
//! request queue on the device thread. Requests: read, write, flush (an `fdatasync` through the
//! image before the guest is told), get-id, discard and write-zeroes. A request that reaches past
//! the end of the disk, writes a read-only disk or arrives malformed completes with an error
//! status, and the image is untouched.

mod device;
mod worker;

pub(crate) use device::read_config;
pub use device::{Block, BlockStats};

/// Sector size of the virtio-blk protocol.
pub const SECTOR_SIZE: u64 = 512;

/// Request types (virtio 1.2, 5.2.6).
mod req {
    pub const IN: u32 = 0;
    pub const OUT: u32 = 1;
    pub const FLUSH: u32 = 4;
    pub const GET_ID: u32 = 8;
    pub const DISCARD: u32 = 11;
    pub const WRITE_ZEROES: u32 = 13;
}

/// Status bytes.
mod status {
    pub const OK: u8 = 0;
    pub const IOERR: u8 = 1;
    pub const UNSUPP: u8 = 2;
}

/// Feature bits.
mod feature {
    pub const SEG_MAX: u64 = 1 << 2;
    pub const RO: u64 = 1 << 5;
    pub const BLK_SIZE: u64 = 1 << 6;
    pub const FLUSH: u64 = 1 << 9;
    pub const DISCARD: u64 = 1 << 13;
    pub const WRITE_ZEROES: u64 = 1 << 14;
}

#[cfg(test)]
mod tests;
