//! Validated descriptor chains.
//!
//! `virtio-queue`'s chain iterator stops quietly at a bad descriptor (a loop, an index out of
//! range, a nested indirect table), which would make a malformed chain look like a shorter valid
//! one. Devices here walk the chain once with [`Chain::walk`], which names what is wrong instead,
//! and then move data only through the checked segments.
//!
//! A chain is valid when:
//! - every `next` index is inside the table, and the chain ends within as many descriptors as the
//!   table holds (no loop);
//! - an indirect descriptor is alone in its chain's main table position chain, is not nested, and
//!   its table is a whole number of descriptors inside guest memory;
//! - every buffer lies inside guest RAM;
//! - device-readable buffers come before device-writable ones;
//! - the total length stays under the device's limit.

use std::sync::atomic::Ordering;

use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend as _};

use super::GuestMemory;

/// Size of one split-ring descriptor.
const DESC_SIZE: u64 = 16;
/// The VIRTQ_DESC_F_NEXT flag.
const F_NEXT: u16 = 1;
/// The VIRTQ_DESC_F_WRITE flag.
const F_WRITE: u16 = 2;
/// The VIRTQ_DESC_F_INDIRECT flag.
const F_INDIRECT: u16 = 4;

/// What is wrong with a descriptor chain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// A descriptor index is outside its table.
    #[error("descriptor index {index} outside a table of {size}")]
    IndexOutOfRange {
        /// The index.
        index: u16,
        /// The table's size.
        size: u16,
    },
    /// The chain is longer than its table: it loops.
    #[error("descriptor chain loops (more than {0} descriptors)")]
    Loop(u16),
    /// A descriptor could not be read from guest memory.
    #[error("descriptor table at {0:#x} is outside guest memory")]
    TableOutsideMemory(u64),
    /// A buffer is not inside guest RAM.
    #[error("buffer {addr:#x}+{len:#x} is outside guest memory")]
    BufferOutsideMemory {
        /// The buffer's guest address.
        addr: u64,
        /// Its length.
        len: u32,
    },
    /// An indirect table is malformed or nested.
    #[error("invalid indirect descriptor table: {0}")]
    Indirect(&'static str),
    /// A device-readable buffer follows a device-writable one.
    #[error("device-readable buffer after a device-writable one")]
    ReadableAfterWritable,
    /// The chain carries more bytes than the device accepts.
    #[error("descriptor chain carries more than {0} bytes")]
    TooLong(u64),
    /// The available ring's index is inconsistent with the queue size.
    #[error("available ring index is invalid")]
    AvailRing,
}

/// One guest buffer of a chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Guest physical address.
    pub addr: GuestAddress,
    /// Length in bytes.
    pub len: u32,
}

/// A descriptor chain whose buffers are known to be inside guest memory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Chain {
    /// The head index, which goes back in the used ring.
    pub head: u16,
    /// Device-readable buffers, in order.
    pub readable: Vec<Segment>,
    /// Device-writable buffers, in order.
    pub writable: Vec<Segment>,
}

impl Chain {
    /// Walks the chain at `head` of the descriptor table at `table` (of `size` entries).
    /// `max_bytes` bounds the sum of all buffer lengths.
    pub fn walk(
        mem: &GuestMemory,
        table: GuestAddress,
        size: u16,
        head: u16,
        max_bytes: u64,
    ) -> Result<Chain, ChainError> {
        let mut chain = Chain {
            head,
            ..Chain::default()
        };
        let mut total = 0u64;
        let (mut table, mut size, mut index) = (table, size, head);
        let mut indirect = false;
        let mut budget = size;
        loop {
            if index >= size {
                return Err(ChainError::IndexOutOfRange { index, size });
            }
            if budget == 0 {
                return Err(ChainError::Loop(size));
            }
            budget -= 1;
            let addr = table
                .checked_add(u64::from(index) * DESC_SIZE)
                .ok_or(ChainError::TableOutsideMemory(table.0))?;
            let desc: Descriptor = mem
                .read_obj(addr)
                .map_err(|_| ChainError::TableOutsideMemory(addr.0))?;
            let flags = desc.flags();
            if flags & F_INDIRECT != 0 {
                if indirect {
                    return Err(ChainError::Indirect("nested indirect table"));
                }
                if flags & F_NEXT != 0 {
                    return Err(ChainError::Indirect("indirect descriptor with NEXT set"));
                }
                let len = u64::from(desc.len());
                if len == 0 || len % DESC_SIZE != 0 || len / DESC_SIZE > u64::from(u16::MAX) {
                    return Err(ChainError::Indirect(
                        "length is not a whole number of entries",
                    ));
                }
                if !mem.check_range(desc.addr(), len as usize) {
                    return Err(ChainError::TableOutsideMemory(desc.addr().0));
                }
                indirect = true;
                table = desc.addr();
                size = (len / DESC_SIZE) as u16;
                budget = size;
                index = 0;
                continue;
            }
            let segment = Segment {
                addr: desc.addr(),
                len: desc.len(),
            };
            if segment.len > 0 && !mem.check_range(segment.addr, segment.len as usize) {
                return Err(ChainError::BufferOutsideMemory {
                    addr: segment.addr.0,
                    len: segment.len,
                });
            }
            total += u64::from(segment.len);
            if total > max_bytes {
                return Err(ChainError::TooLong(max_bytes));
            }
            if flags & F_WRITE != 0 {
                chain.writable.push(segment);
            } else if chain.writable.is_empty() {
                chain.readable.push(segment);
            } else {
                return Err(ChainError::ReadableAfterWritable);
            }
            if flags & F_NEXT == 0 {
                return Ok(chain);
            }
            index = desc.next();
        }
    }

    /// Total bytes of the device-readable buffers.
    pub fn readable_len(&self) -> u64 {
        self.readable.iter().map(|s| u64::from(s.len)).sum()
    }

    /// Total bytes of the device-writable buffers.
    pub fn writable_len(&self) -> u64 {
        self.writable.iter().map(|s| u64::from(s.len)).sum()
    }

    /// Copies up to `buf.len()` bytes of the readable buffers, starting `offset` bytes in.
    /// Returns how many were copied.
    pub fn read_at(&self, mem: &GuestMemory, offset: u64, buf: &mut [u8]) -> usize {
        copy_segments(&self.readable, offset, buf.len(), |seg_addr, at, n| {
            mem.read_slice(&mut buf[at..at + n], seg_addr).is_ok()
        })
    }

    /// Copies `buf` into the writable buffers, starting `offset` bytes in. Returns how many bytes
    /// were written (fewer when the buffers are shorter).
    pub fn write_at(&self, mem: &GuestMemory, offset: u64, buf: &[u8]) -> usize {
        copy_segments(&self.writable, offset, buf.len(), |seg_addr, at, n| {
            mem.write_slice(&buf[at..at + n], seg_addr).is_ok()
        })
    }
}

/// Walks `segments` from byte `offset` for up to `len` bytes, calling `copy(guest address, offset
/// into the caller's buffer, bytes)` per piece. Stops at the first failed copy.
fn copy_segments(
    segments: &[Segment],
    mut offset: u64,
    len: usize,
    mut copy: impl FnMut(GuestAddress, usize, usize) -> bool,
) -> usize {
    let mut done = 0usize;
    for s in segments {
        if done == len {
            break;
        }
        let seg_len = u64::from(s.len);
        if offset >= seg_len {
            offset -= seg_len;
            continue;
        }
        let n = ((seg_len - offset) as usize).min(len - done);
        // The segment was checked to lie in guest memory, so the address cannot overflow.
        if !copy(s.addr.unchecked_add(offset), done, n) {
            break;
        }
        done += n;
        offset = 0;
    }
    done
}

/// Takes the next available chain of `queue`: `None` when the ring is empty, `Some(Err)` for a
/// chain (or ring) the guest got wrong. For a bad chain, the head index is returned alongside so
/// the device can complete it with an error.
pub fn next_chain(
    queue: &mut Queue,
    mem: &GuestMemory,
    max_bytes: u64,
) -> Option<Result<Chain, (Option<u16>, ChainError)>> {
    let table = GuestAddress(queue.desc_table());
    let size = queue.size();
    let mut iter = match queue.iter(mem) {
        Ok(iter) => iter,
        Err(_) => return Some(Err((None, ChainError::AvailRing))),
    };
    let head = iter.next()?.head_index();
    Some(Chain::walk(mem, table, size, head, max_bytes).map_err(|e| (Some(head), e)))
}

/// Completes `head` with `len` bytes written, and tells whether the driver wants an interrupt.
/// A used ring outside guest memory (the driver moved it under us) gives `Err`.
pub fn complete(
    queue: &mut Queue,
    mem: &GuestMemory,
    head: u16,
    len: u32,
) -> Result<bool, virtio_queue::Error> {
    queue.add_used(mem, head, len)?;
    queue.needs_notification(mem)
}

/// Whether the available ring has entries the device has not taken.
pub fn has_available(queue: &Queue, mem: &GuestMemory) -> bool {
    queue
        .avail_idx(mem, Ordering::Acquire)
        .is_ok_and(|idx| idx.0 != queue.next_avail())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem() -> GuestMemory {
        GuestMemory::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    fn put(mem: &GuestMemory, table: u64, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let d = Descriptor::new(addr, len, flags, next);
        mem.write_obj(d, GuestAddress(table + u64::from(i) * 16))
            .unwrap();
    }

    #[test]
    fn a_good_chain_splits_into_readable_and_writable() {
        let m = mem();
        put(&m, 0x1000, 0, 0x8000, 16, F_NEXT, 1);
        put(&m, 0x1000, 1, 0x9000, 512, F_NEXT | F_WRITE, 2);
        put(&m, 0x1000, 2, 0xa000, 1, F_WRITE, 0);
        let c = Chain::walk(&m, GuestAddress(0x1000), 8, 0, 1 << 20).unwrap();
        assert_eq!(c.readable.len(), 1);
        assert_eq!(c.writable.len(), 2);
        assert_eq!((c.readable_len(), c.writable_len()), (16, 513));
    }

    #[test]
    fn malformed_chains_are_named() {
        let m = mem();
        let walk = |head| Chain::walk(&m, GuestAddress(0x1000), 4, head, 4096);
        // A loop.
        put(&m, 0x1000, 0, 0x8000, 8, F_NEXT, 1);
        put(&m, 0x1000, 1, 0x8000, 8, F_NEXT, 0);
        assert_eq!(walk(0), Err(ChainError::Loop(4)));
        // Next index out of range.
        put(&m, 0x1000, 0, 0x8000, 8, F_NEXT, 9);
        assert_eq!(
            walk(0),
            Err(ChainError::IndexOutOfRange { index: 9, size: 4 })
        );
        // A buffer outside memory.
        put(&m, 0x1000, 0, 0xffff_0000, 8, 0, 0);
        assert!(matches!(
            walk(0),
            Err(ChainError::BufferOutsideMemory { .. })
        ));
        // A buffer that wraps the address space.
        put(&m, 0x1000, 0, u64::MAX - 2, 8, 0, 0);
        assert!(matches!(
            walk(0),
            Err(ChainError::BufferOutsideMemory { .. })
        ));
        // Readable after writable.
        put(&m, 0x1000, 0, 0x8000, 8, F_NEXT | F_WRITE, 1);
        put(&m, 0x1000, 1, 0x8000, 8, 0, 0);
        assert_eq!(walk(0), Err(ChainError::ReadableAfterWritable));
        // Too long.
        put(&m, 0x1000, 0, 0x8000, 8192, 0, 0);
        assert_eq!(walk(0), Err(ChainError::TooLong(4096)));
        // A head out of range.
        assert!(matches!(walk(7), Err(ChainError::IndexOutOfRange { .. })));
    }

    #[test]
    fn indirect_tables_are_followed_once() {
        let m = mem();
        put(&m, 0x2000, 0, 0x8000, 16, F_NEXT, 1);
        put(&m, 0x2000, 1, 0x9000, 1, F_WRITE, 0);
        put(&m, 0x1000, 0, 0x2000, 32, F_INDIRECT, 0);
        let c = Chain::walk(&m, GuestAddress(0x1000), 4, 0, 4096).unwrap();
        assert_eq!((c.readable.len(), c.writable.len()), (1, 1));
        // Nested.
        put(&m, 0x2000, 1, 0x2000, 32, F_INDIRECT, 0);
        assert!(matches!(
            Chain::walk(&m, GuestAddress(0x1000), 4, 0, 4096),
            Err(ChainError::Indirect(_))
        ));
        // Bad length.
        put(&m, 0x1000, 0, 0x2000, 17, F_INDIRECT, 0);
        assert!(matches!(
            Chain::walk(&m, GuestAddress(0x1000), 4, 0, 4096),
            Err(ChainError::Indirect(_))
        ));
        // A loop inside the indirect table.
        put(&m, 0x2000, 0, 0x8000, 16, F_NEXT, 1);
        put(&m, 0x2000, 1, 0x8000, 16, F_NEXT, 0);
        put(&m, 0x1000, 0, 0x2000, 32, F_INDIRECT, 0);
        assert_eq!(
            Chain::walk(&m, GuestAddress(0x1000), 4, 0, 4096),
            Err(ChainError::Loop(2))
        );
    }

    #[test]
    fn copies_cross_segment_boundaries() {
        let m = mem();
        put(&m, 0x1000, 0, 0x8000, 4, F_NEXT | F_WRITE, 1);
        put(&m, 0x1000, 1, 0x9000, 4, F_WRITE, 0);
        let c = Chain::walk(&m, GuestAddress(0x1000), 4, 0, 4096).unwrap();
        assert_eq!(c.write_at(&m, 2, &[1, 2, 3, 4, 5, 6, 7]), 6);
        let mut out = [0u8; 4];
        m.read_slice(&mut out, GuestAddress(0x9000)).unwrap();
        assert_eq!(out, [3, 4, 5, 6]);
    }
}
