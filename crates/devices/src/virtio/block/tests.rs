//! The block device against a driver written by hand, on an image in memory.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use block::{DiskImage, Error, Format};
use vm_memory::{Bytes, GuestAddress};

use super::{Block, req, status};
use crate::virtio::test_queue::{self, TestQueue};
use crate::virtio::{Activation, VirtioDevice, VirtioWorker};

/// A disk in memory.
struct MemDisk {
    data: Vec<u8>,
    read_only: bool,
    flushes: Arc<std::sync::atomic::AtomicU32>,
}

impl DiskImage for MemDisk {
    fn size(&self) -> u64 {
        self.data.len() as u64
    }
    fn read_only(&self) -> bool {
        self.read_only
    }
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> Result<(), Error> {
        let o = offset as usize;
        buf.copy_from_slice(&self.data[o..o + buf.len()]);
        Ok(())
    }
    fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<(), Error> {
        let o = offset as usize;
        self.data[o..o + buf.len()].copy_from_slice(buf);
        Ok(())
    }
    fn flush(&mut self) -> Result<(), Error> {
        self.flushes.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    fn discard(&mut self, offset: u64, len: u64) -> Result<(), Error> {
        self.write_zeroes(offset, len)
    }
    fn write_zeroes(&mut self, offset: u64, len: u64) -> Result<(), Error> {
        self.data[offset as usize..(offset + len) as usize].fill(0);
        Ok(())
    }
    fn id(&self) -> String {
        "popek-test-disk".into()
    }
    fn format(&self) -> Format {
        Format::Raw
    }
}

const HDR: u64 = 0x4_0000;
const DATA: u64 = 0x5_0000;
const STATUS: u64 = 0x6_0000;

struct Rig {
    mem: crate::virtio::GuestMemory,
    q: TestQueue,
    worker: Box<dyn VirtioWorker>,
    block: Block,
    irq: Arc<test_queue::CountingInterrupt>,
}

fn rig(sectors: usize, read_only: bool) -> Rig {
    let mem = test_queue::memory();
    let q = TestQueue::new(0x1_0000, 16);
    let disk = MemDisk {
        data: (0..sectors * 512).map(|i| (i % 251) as u8).collect(),
        read_only,
        flushes: Arc::default(),
    };
    let mut block = Block::new(Box::new(disk));
    let irq = test_queue::interrupt();
    let worker = block
        .activate(Activation {
            mem: mem.clone(),
            features: block.features(),
            queues: vec![q.active(&mem)],
            interrupt: irq.clone(),
        })
        .unwrap();
    Rig {
        mem,
        q,
        worker,
        block,
        irq,
    }
}

impl Rig {
    fn header(&self, kind: u32, sector: u64) {
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&kind.to_le_bytes());
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        self.mem.write_slice(&h, GuestAddress(HDR)).unwrap();
        self.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
    }

    /// Submits `bufs`, runs the worker, and returns the status byte and the used length.
    fn submit(&mut self, bufs: &[(u64, u32, bool)]) -> (u8, u32) {
        let before = self.q.used_idx(&self.mem);
        self.q.add(&self.mem, bufs);
        self.worker.handle(0);
        assert_eq!(
            self.q.used_idx(&self.mem),
            before.wrapping_add(1),
            "no completion"
        );
        let (_, len) = self.q.used(&self.mem, before);
        (self.mem.read_obj(GuestAddress(STATUS)).unwrap(), len)
    }

    fn disk_bytes(&self, offset: usize, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        self.block
            .disk()
            .lock()
            .unwrap()
            .read_at(&mut buf, offset as u64)
            .unwrap();
        buf
    }
}

#[test]
fn reads_and_writes_reach_the_image() {
    let mut r = rig(64, false);
    r.mem
        .write_slice(&[0xab; 1024], GuestAddress(DATA))
        .unwrap();
    r.header(req::OUT, 3);
    let out = r.submit(&[(HDR, 16, false), (DATA, 1024, false), (STATUS, 1, true)]);
    assert_eq!(out, (status::OK, 1));
    assert_eq!(r.disk_bytes(3 * 512, 1024), vec![0xab; 1024]);
    assert_eq!(r.disk_bytes(5 * 512, 1)[0], ((5 * 512) % 251) as u8);

    r.header(req::IN, 2);
    let out = r.submit(&[(HDR, 16, false), (DATA, 512, true), (STATUS, 1, true)]);
    assert_eq!(out, (status::OK, 513));
    let mut got = vec![0u8; 512];
    r.mem.read_slice(&mut got, GuestAddress(DATA)).unwrap();
    assert_eq!(got, r.disk_bytes(2 * 512, 512));
    assert!(r.irq.queue.load(Ordering::SeqCst) >= 2);
    assert_eq!(r.block.stats().written_bytes.load(Ordering::Relaxed), 1024);
}

#[test]
fn requests_past_the_end_fail_and_leave_the_image_alone() {
    let mut r = rig(8, false);
    let before = r.disk_bytes(0, 8 * 512);
    r.header(req::OUT, 7);
    let out = r.submit(&[(HDR, 16, false), (DATA, 1024, false), (STATUS, 1, true)]);
    assert_eq!(out.0, status::IOERR);
    r.header(req::OUT, u64::MAX / 256);
    let out = r.submit(&[(HDR, 16, false), (DATA, 512, false), (STATUS, 1, true)]);
    assert_eq!(out.0, status::IOERR);
    r.header(req::IN, 8);
    let out = r.submit(&[(HDR, 16, false), (DATA, 512, true), (STATUS, 1, true)]);
    assert_eq!(out, (status::IOERR, 1));
    assert_eq!(r.disk_bytes(0, 8 * 512), before);
    assert_eq!(r.block.stats().errors.load(Ordering::Relaxed), 3);
}

#[test]
fn read_only_disks_refuse_writes_and_say_so() {
    let mut r = rig(8, true);
    assert_ne!(r.block.features() & super::feature::RO, 0);
    r.header(req::OUT, 0);
    let out = r.submit(&[(HDR, 16, false), (DATA, 512, false), (STATUS, 1, true)]);
    assert_eq!(out.0, status::IOERR);
    r.header(req::WRITE_ZEROES, 0);
    let out = r.submit(&[(HDR, 16, false), (DATA, 16, false), (STATUS, 1, true)]);
    assert_eq!(out.0, status::IOERR);
}

#[test]
fn flush_id_zeroes_and_unknown_requests() {
    let mut r = rig(8, false);
    r.header(req::FLUSH, 0);
    assert_eq!(
        r.submit(&[(HDR, 16, false), (STATUS, 1, true)]).0,
        status::OK
    );
    r.header(req::GET_ID, 0);
    let out = r.submit(&[(HDR, 16, false), (DATA, 20, true), (STATUS, 1, true)]);
    assert_eq!(out, (status::OK, 21));
    let mut id = [0u8; 15];
    r.mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
    assert_eq!(&id, b"popek-test-disk");
    // Write zeroes over sectors 1-2.
    let mut seg = [0u8; 16];
    seg[0..8].copy_from_slice(&1u64.to_le_bytes());
    seg[8..12].copy_from_slice(&2u32.to_le_bytes());
    r.mem.write_slice(&seg, GuestAddress(DATA)).unwrap();
    r.header(req::WRITE_ZEROES, 0);
    let out = r.submit(&[(HDR, 16, false), (DATA, 16, false), (STATUS, 1, true)]);
    assert_eq!(out.0, status::OK);
    assert_eq!(r.disk_bytes(512, 1024), vec![0; 1024]);
    assert_ne!(r.disk_bytes(3 * 512, 512), vec![0; 512]);
    // Unknown type.
    r.header(99, 0);
    assert_eq!(
        r.submit(&[(HDR, 16, false), (STATUS, 1, true)]).0,
        status::UNSUPP
    );
}

#[test]
fn malformed_chains_get_an_error_and_the_device_keeps_serving() {
    let mut r = rig(8, false);
    // No status byte at all: returned unused.
    r.header(req::IN, 0);
    assert_eq!(r.submit(&[(HDR, 16, false), (DATA, 512, false)]).1, 0);
    // A short header.
    r.header(req::IN, 0);
    assert_eq!(
        r.submit(&[(HDR, 8, false), (STATUS, 1, true)]).0,
        status::IOERR
    );
    // A buffer outside guest memory.
    r.header(req::IN, 0);
    assert_eq!(
        r.submit(&[
            (HDR, 16, false),
            (0xfff0_0000, 512, true),
            (STATUS, 1, true)
        ])
        .1,
        0
    );
    // Readable after writable.
    r.header(req::OUT, 0);
    assert_eq!(
        r.submit(&[(HDR, 16, false), (STATUS, 1, true), (DATA, 512, false)])
            .1,
        0
    );
    // A loop: descriptor 0 points at itself.
    let before = r.q.used_idx(&r.mem);
    r.q.put_desc(&r.mem, 12, HDR, 16, test_queue::NEXT, 12);
    r.q.publish(&r.mem, 12);
    r.worker.handle(0);
    assert_eq!(r.q.used_idx(&r.mem), before.wrapping_add(1));
    assert_eq!(r.q.used(&r.mem, before), (12, 0));
    // A head index out of range.
    r.q.publish(&r.mem, 200);
    r.worker.handle(0);
    assert_eq!(r.q.used_idx(&r.mem), before.wrapping_add(1));
    // Afterwards, a good request still works (the bad head was consumed as an error).
    r.header(req::FLUSH, 0);
    assert_eq!(
        r.submit(&[(HDR, 16, false), (STATUS, 1, true)]).0,
        status::OK
    );
    assert!(r.block.stats().errors.load(Ordering::Relaxed) >= 5);
}
