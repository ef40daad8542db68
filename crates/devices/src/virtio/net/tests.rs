//! The NIC against a hand-written driver, with a datagram socket pair as its backend.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use vm_memory::{Bytes, GuestAddress};

use super::{NET_HDR_LEN, Net, NetBackend, feature};
use crate::virtio::test_queue::{self, TestQueue};
use crate::virtio::{Activation, F_VERSION_1, GuestMemory, VirtioDevice, VirtioWorker};

struct Pair(UnixDatagram);

impl NetBackend for Pair {
    fn read_frame(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.recv(buf)
    }
    fn write_frame(&self, buf: &[u8]) -> io::Result<usize> {
        self.0.send(buf)
    }
    fn raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
    fn configure(&self, _guest_offloads: u64) -> io::Result<()> {
        self.0.set_nonblocking(true)
    }
}

const TOKEN_RX: u64 = 0;
const TOKEN_TX: u64 = 1;
const TOKEN_BACKEND: u64 = 2;

struct Rig {
    mem: GuestMemory,
    rx: TestQueue,
    tx: TestQueue,
    worker: Box<dyn VirtioWorker>,
    host: UnixDatagram,
    net: Net,
}

fn rig(features: u64) -> Rig {
    let mem = test_queue::memory();
    let (rx, tx) = (TestQueue::new(0x1_0000, 16), TestQueue::new(0x2_0000, 16));
    let (dev_side, host) = UnixDatagram::pair().unwrap();
    host.set_nonblocking(true).unwrap();
    let mut net = Net::new(Arc::new(Pair(dev_side)), [0x52, 0x54, 0, 1, 2, 3]);
    let worker = net
        .activate(Activation {
            mem: mem.clone(),
            features,
            queues: vec![rx.active(&mem), tx.active(&mem)],
            interrupt: test_queue::interrupt(),
        })
        .unwrap();
    Rig {
        mem,
        rx,
        tx,
        worker,
        host,
        net,
    }
}

fn frame(payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8; NET_HDR_LEN];
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&[0x52, 0x54, 0, 1, 2, 3]);
    f.extend_from_slice(&[0x88, 0xb5]);
    f.extend_from_slice(payload);
    f
}

#[test]
fn config_space_has_the_mac_and_link_up() {
    let r = rig(F_VERSION_1);
    let mut c = [0u8; 8];
    r.net.read_config(0, &mut c);
    assert_eq!(c, [0x52, 0x54, 0, 1, 2, 3, 1, 0]);
}

#[test]
fn transmitted_frames_reach_the_backend() {
    let mut r = rig(F_VERSION_1);
    let f = frame(b"hello host");
    r.mem.write_slice(&f, GuestAddress(0x5_0000)).unwrap();
    r.tx.add(
        &r.mem,
        &[
            (0x5_0000, 12, false),
            (0x5_000c, (f.len() - 12) as u32, false),
        ],
    );
    r.worker.handle(TOKEN_TX);
    let mut got = vec![0u8; 2048];
    let n = r.host.recv(&mut got).unwrap();
    assert_eq!(&got[..n], &f[..]);
    assert_eq!(r.tx.used_idx(&r.mem), 1);
    assert_eq!(r.net.stats().tx_frames.load(Ordering::Relaxed), 1);
}

#[test]
fn received_frames_fill_buffers_and_wait_for_them() {
    let mut r = rig(F_VERSION_1);
    let f = frame(b"hello guest");
    r.host.send(&f).unwrap();
    // No receive buffers yet: the frame waits and the backend's fd is no longer watched.
    r.worker.handle(TOKEN_BACKEND);
    assert!(r.worker.sources_changed());
    assert!(!r.worker.sources().iter().any(|(_, t)| *t == TOKEN_BACKEND));
    r.rx.add(&r.mem, &[(0x6_0000, 2048, true)]);
    r.worker.handle(TOKEN_RX);
    assert_eq!(r.rx.used_idx(&r.mem), 1);
    assert_eq!(r.rx.used(&r.mem, 0).1 as usize, f.len());
    let mut got = vec![0u8; f.len()];
    r.mem.read_slice(&mut got, GuestAddress(0x6_0000)).unwrap();
    assert_eq!(&got[NET_HDR_LEN..], &f[NET_HDR_LEN..]);
    assert_eq!(u16::from_le_bytes([got[10], got[11]]), 1, "num_buffers");
    assert!(r.worker.sources().iter().any(|(_, t)| *t == TOKEN_BACKEND));
}

#[test]
fn merged_buffers_carry_a_large_frame() {
    let mut r = rig(F_VERSION_1 | feature::MRG_RXBUF);
    let f = frame(&[7u8; 300]);
    for i in 0..4 {
        r.rx.add(&r.mem, &[(0x6_0000 + i * 0x1000, 128, true)]);
    }
    r.host.send(&f).unwrap();
    r.worker.handle(TOKEN_BACKEND);
    // 326 bytes in 128-byte buffers: three of them.
    assert_eq!(r.rx.used_idx(&r.mem), 3);
    let mut hdr = [0u8; NET_HDR_LEN];
    r.mem.read_slice(&mut hdr, GuestAddress(0x6_0000)).unwrap();
    assert_eq!(u16::from_le_bytes([hdr[10], hdr[11]]), 3);
    let total: u32 = (0..3).map(|i| r.rx.used(&r.mem, i).1).sum();
    assert_eq!(total as usize, f.len());
}

#[test]
fn without_merged_buffers_a_frame_too_large_is_dropped() {
    let mut r = rig(F_VERSION_1);
    r.rx.add(&r.mem, &[(0x6_0000, 64, true)]);
    r.host.send(&frame(&[1u8; 200])).unwrap();
    r.worker.handle(TOKEN_BACKEND);
    assert_eq!(r.rx.used(&r.mem, 0), (0, 0));
    assert_eq!(r.net.stats().dropped.load(Ordering::Relaxed), 1);
}

#[test]
fn malformed_chains_are_returned_and_counted() {
    let mut r = rig(F_VERSION_1);
    // A transmit chain with a writable buffer, one shorter than a header, one outside memory.
    r.tx.add(&r.mem, &[(0x5_0000, 64, true)]);
    r.tx.add(&r.mem, &[(0x5_0000, 4, false)]);
    r.tx.add(&r.mem, &[(0xffff_0000, 64, false)]);
    r.worker.handle(TOKEN_TX);
    assert_eq!(r.tx.used_idx(&r.mem), 3);
    assert_eq!(r.net.stats().errors.load(Ordering::Relaxed), 3);
    let mut buf = [0u8; 64];
    assert!(r.host.recv(&mut buf).is_err(), "nothing reached the host");
    // A readable receive buffer is an error; the frame goes to the next good one.
    r.rx.add(&r.mem, &[(0x6_0000, 2048, false)]);
    r.rx.add(&r.mem, &[(0x7_0000, 2048, true)]);
    r.host.send(&frame(b"x")).unwrap();
    r.worker.handle(TOKEN_BACKEND);
    assert_eq!(r.rx.used_idx(&r.mem), 2);
    assert_eq!(r.rx.used(&r.mem, 0), (0, 0));
    assert_eq!(r.rx.used(&r.mem, 1).0, 1);
}
