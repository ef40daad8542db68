//! The virtio-vsock packet header.

use super::{HOST_CID, TYPE_STREAM};

/// Size of the header in front of every packet (`struct virtio_vsock_hdr`).
pub(super) const HEADER_LEN: usize = 44;

/// A packet header, in host byte order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Header {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    /// Payload bytes after the header.
    pub len: u32,
    pub kind: u16,
    pub op: u16,
    pub flags: u32,
    /// The sender's receive buffer space for this connection.
    pub buf_alloc: u32,
    /// Bytes the sender has consumed of what it received on this connection.
    pub fwd_cnt: u32,
}

impl Header {
    /// A stream header from the host (`local` port) to the guest's `peer` port.
    pub fn to_guest(guest_cid: u64, local: u32, peer: u32, op: u16) -> Self {
        Self {
            src_cid: HOST_CID,
            dst_cid: guest_cid,
            src_port: local,
            dst_port: peer,
            kind: TYPE_STREAM,
            op,
            ..Self::default()
        }
    }

    /// Decodes a header from its little-endian wire form.
    pub fn parse(b: &[u8; HEADER_LEN]) -> Self {
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap_or_default());
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap_or_default());
        let u16_at = |i: usize| u16::from_le_bytes(b[i..i + 2].try_into().unwrap_or_default());
        Self {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            kind: u16_at(28),
            op: u16_at(30),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        }
    }

    /// Encodes the header in its little-endian wire form.
    pub fn to_bytes(self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.kind.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }
}
