//! A driver's side of one split virtqueue in guest memory, for device tests and benchmarks.
//!
//! Compiled only for tests and with the `test-utils` feature, never into the product.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::{ActiveQueue, GuestMemory, VirtioInterrupt};

/// Descriptor flags.
pub const NEXT: u16 = 1;
/// Device-writable buffer.
pub const WRITE: u16 = 2;

/// 1 MiB of guest memory.
pub fn memory() -> GuestMemory {
    GuestMemory::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
}

/// A queue of `size` entries whose rings live at `base`, `base + 0x1000` and `base + 0x2000`.
///
/// The gaps fit up to 256 entries: a descriptor table of 256 * 16 bytes, an available ring of
/// 6 + 256 * 2 bytes, then the used ring (6 + 256 * 8 bytes) from `base + 0x2000`.
pub struct TestQueue {
    base: u64,
    size: u16,
    next_desc: u16,
    avail_idx: u16,
}

impl TestQueue {
    /// A queue at `base`. `size` is a power of two, at most 256.
    pub fn new(base: u64, size: u16) -> Self {
        assert!(
            size.is_power_of_two() && size <= 256,
            "queue size {size} does not fit"
        );
        Self {
            base,
            size,
            next_desc: 0,
            avail_idx: 0,
        }
    }

    /// The device's view of the queue, ready.
    pub fn active(&self, mem: &GuestMemory) -> ActiveQueue {
        let mut q = Queue::new(self.size).unwrap();
        q.set_size(self.size);
        q.set_desc_table_address(Some(self.base as u32), Some(0));
        q.set_avail_ring_address(Some((self.base + 0x1000) as u32), Some(0));
        q.set_used_ring_address(Some((self.base + 0x2000) as u32), Some(0));
        q.set_ready(true);
        assert!(q.is_valid(mem));
        ActiveQueue {
            queue: q,
            notify: EventFd::new(EFD_NONBLOCK).unwrap(),
        }
    }

    /// Writes raw descriptor `index`.
    pub fn put_desc(
        &self,
        mem: &GuestMemory,
        index: u16,
        addr: u64,
        len: u32,
        flags: u16,
        next: u16,
    ) {
        let d = Descriptor::new(addr, len, flags, next);
        mem.write_obj(d, GuestAddress(self.base + u64::from(index) * 16))
            .unwrap();
    }

    /// Makes `head` available.
    pub fn publish(&mut self, mem: &GuestMemory, head: u16) {
        let slot = self.base + 0x1000 + 4 + u64::from(self.avail_idx % self.size) * 2;
        mem.write_obj(head, GuestAddress(slot)).unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        mem.write_obj(self.avail_idx, GuestAddress(self.base + 0x1000 + 2))
            .unwrap();
    }

    /// Adds a chain of `(addr, len, writable)` buffers and makes it available. Returns its head.
    pub fn add(&mut self, mem: &GuestMemory, bufs: &[(u64, u32, bool)]) -> u16 {
        let head = self.next_desc;
        for (i, &(addr, len, w)) in bufs.iter().enumerate() {
            let index = (self.next_desc + i as u16) % self.size;
            let last = i + 1 == bufs.len();
            let flags = if w { WRITE } else { 0 } | if last { 0 } else { NEXT };
            self.put_desc(mem, index, addr, len, flags, (index + 1) % self.size);
        }
        self.next_desc = (self.next_desc + bufs.len() as u16) % self.size;
        self.publish(mem, head);
        head
    }

    /// How many entries the device has put in the used ring.
    pub fn used_idx(&self, mem: &GuestMemory) -> u16 {
        mem.read_obj(GuestAddress(self.base + 0x2000 + 2)).unwrap()
    }

    /// Used ring entry `i`: (head, length).
    pub fn used(&self, mem: &GuestMemory, i: u16) -> (u32, u32) {
        let at = self.base + 0x2000 + 4 + u64::from(i % self.size) * 8;
        (
            mem.read_obj(GuestAddress(at)).unwrap(),
            mem.read_obj(GuestAddress(at + 4)).unwrap(),
        )
    }
}

/// Counts interrupts.
#[derive(Default)]
pub struct CountingInterrupt {
    /// Queue interrupts.
    pub queue: AtomicU32,
    /// Configuration-change interrupts.
    pub config: AtomicU32,
}

impl VirtioInterrupt for CountingInterrupt {
    fn signal_queue(&self, _queue: u16) {
        self.queue.fetch_add(1, Ordering::SeqCst);
    }
    fn signal_config(&self) {
        self.config.fetch_add(1, Ordering::SeqCst);
    }
}

/// A counting interrupt, shared.
pub fn interrupt() -> Arc<CountingInterrupt> {
    Arc::default()
}
