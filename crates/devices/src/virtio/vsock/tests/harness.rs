//! A test driver for the vsock worker: guest memory, hand-written split queues, a counting
//! interrupt, and a loop that runs the worker the way the device thread does.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use crate::virtio::vsock::packet::{HEADER_LEN, Header};
use crate::virtio::vsock::{HOST_CID, QUEUE_SIZE, TYPE_STREAM, Vsock, VsockStats, op};
use crate::virtio::{
    Activation, ActiveQueue, F_VERSION_1, GuestMemory, VirtioDevice, VirtioInterrupt, VirtioWorker,
};

pub(crate) const GUEST_CID: u64 = 3;
pub(crate) const F_NEXT: u16 = 1;
pub(crate) const F_WRITE: u16 = 2;
/// Payload room of the rx buffers the test driver gives (as Linux does).
pub(crate) const RX_BUF: u32 = 4096;
/// Event buffers given at activation, and where the first one is (4 bytes each, 8 apart).
pub(crate) const EVENT_BUFFERS: u64 = 4;
pub(crate) const EVENT_BUF: u64 = 0x3_4000;

/// A scratch directory, removed at the end of the test.
pub(crate) struct TempDir(pub(crate) PathBuf);

impl TempDir {
    pub(crate) fn new() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("popek-vsock-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Counts interrupts per queue.
#[derive(Default)]
pub(crate) struct Irq(pub(crate) [AtomicU64; 3]);

impl VirtioInterrupt for Irq {
    fn signal_queue(&self, queue: u16) {
        self.0[usize::from(queue)].fetch_add(1, Ordering::Relaxed);
    }
    fn signal_config(&self) {}
}

/// The driver's side of one split queue: descriptor table, then avail and used rings, at `base`.
pub(crate) struct DriverQueue {
    pub(crate) base: u64,
    pub(crate) next_desc: u16,
    pub(crate) avail_idx: u16,
    pub(crate) used_idx: u16,
}

impl DriverQueue {
    pub(crate) fn new(base: u64) -> Self {
        Self {
            base,
            next_desc: 0,
            avail_idx: 0,
            used_idx: 0,
        }
    }

    pub(crate) fn avail(&self) -> u64 {
        self.base + 0x1000
    }

    pub(crate) fn used(&self) -> u64 {
        self.base + 0x2000
    }

    pub(crate) fn queue(&self) -> Queue {
        let mut q = Queue::new(QUEUE_SIZE).unwrap();
        q.set_size(QUEUE_SIZE);
        let split = |a: u64| (Some(a as u32), Some((a >> 32) as u32));
        let (lo, hi) = split(self.base);
        q.set_desc_table_address(lo, hi);
        let (lo, hi) = split(self.avail());
        q.set_avail_ring_address(lo, hi);
        let (lo, hi) = split(self.used());
        q.set_used_ring_address(lo, hi);
        q.set_ready(true);
        q
    }

    /// Writes descriptor `i`.
    pub(crate) fn put_desc(&self, mem: &GuestMemory, i: u16, d: Descriptor) {
        mem.write_obj(d, GuestAddress(self.base + u64::from(i) * 16))
            .unwrap();
    }

    /// Makes the chain at `head` available.
    pub(crate) fn publish(&mut self, mem: &GuestMemory, head: u16) {
        let slot = self.avail() + 4 + 2 * u64::from(self.avail_idx % QUEUE_SIZE);
        mem.write_obj(head, GuestAddress(slot)).unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        mem.write_obj(self.avail_idx, GuestAddress(self.avail() + 2))
            .unwrap();
    }

    /// Adds a chain of (address, length, device-writable) buffers; returns its head.
    pub(crate) fn add(&mut self, mem: &GuestMemory, bufs: &[(u64, u32, bool)]) -> u16 {
        let head = self.next_desc;
        for (i, &(addr, len, write)) in bufs.iter().enumerate() {
            let idx = (head + i as u16) % QUEUE_SIZE;
            let mut flags = if write { F_WRITE } else { 0 };
            if i + 1 < bufs.len() {
                flags |= F_NEXT;
            }
            let next = (idx + 1) % QUEUE_SIZE;
            self.put_desc(mem, idx, Descriptor::new(addr, len, flags, next));
        }
        self.next_desc = (head + bufs.len() as u16) % QUEUE_SIZE;
        self.publish(mem, head);
        head
    }

    /// The used elements (head, length) added since the last call.
    pub(crate) fn take_used(&mut self, mem: &GuestMemory) -> Vec<(u16, u32)> {
        let idx: u16 = mem.read_obj(GuestAddress(self.used() + 2)).unwrap();
        let mut out = Vec::new();
        while self.used_idx != idx {
            let at = self.used() + 4 + 8 * u64::from(self.used_idx % QUEUE_SIZE);
            let id: u32 = mem.read_obj(GuestAddress(at)).unwrap();
            let len: u32 = mem.read_obj(GuestAddress(at + 4)).unwrap();
            out.push((id as u16, len));
            self.used_idx = self.used_idx.wrapping_add(1);
        }
        out
    }
}

/// A vsock device, its worker, and a test driver for its queues.
pub(crate) struct Harness {
    /// Holds the socket files until the test ends.
    pub(crate) _dir: TempDir,
    pub(crate) dev: Vsock,
    pub(crate) mem: GuestMemory,
    pub(crate) worker: Box<dyn VirtioWorker>,
    pub(crate) rxq: DriverQueue,
    pub(crate) txq: DriverQueue,
    /// The event queue, with `event_buffers` buffers given at each activation.
    pub(crate) evq: DriverQueue,
    /// Event buffers to give at activation: [`EVENT_BUFFERS`], as Linux fills the queue.
    pub(crate) event_buffers: u64,
    pub(crate) kicks: Vec<EventFd>,
    pub(crate) irq: Arc<Irq>,
    /// Guest address of each outstanding rx buffer, by head.
    pub(crate) rx_bufs: HashMap<u16, u64>,
}

impl Harness {
    pub(crate) fn new() -> Self {
        let dir = TempDir::new();
        let dev = Vsock::new(GUEST_CID, dir.0.join("v.sock")).unwrap();
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 32 << 20)]).unwrap();
        let mut h = Self {
            _dir: dir,
            dev,
            mem,
            worker: Box::new(NoWorker),
            rxq: DriverQueue::new(0),
            txq: DriverQueue::new(0),
            evq: DriverQueue::new(0),
            event_buffers: EVENT_BUFFERS,
            kicks: Vec::new(),
            irq: Arc::default(),
            rx_bufs: HashMap::new(),
        };
        h.activate();
        h
    }

    /// (Re)activates the device on fresh queues, as after a driver reset.
    pub(crate) fn activate(&mut self) {
        self.worker = Box::new(NoWorker);
        // A driver re-initialises its rings after a reset.
        self.mem
            .write_slice(&[0u8; 0x30000], GuestAddress(0x10000))
            .unwrap();
        self.rxq = DriverQueue::new(0x10000);
        self.txq = DriverQueue::new(0x20000);
        self.evq = DriverQueue::new(0x30000);
        for i in 0..self.event_buffers {
            self.evq.add(&self.mem, &[(EVENT_BUF + 8 * i, 4, true)]);
        }
        self.rx_bufs.clear();
        self.kicks.clear();
        let mut queues = Vec::new();
        for q in [&self.rxq, &self.txq, &self.evq] {
            let notify = EventFd::new(EFD_NONBLOCK).unwrap();
            self.kicks.push(notify.try_clone().unwrap());
            queues.push(ActiveQueue {
                queue: q.queue(),
                notify,
            });
        }
        let a = Activation {
            mem: self.mem.clone(),
            features: F_VERSION_1,
            queues,
            interrupt: self.irq.clone(),
        };
        self.worker = self.dev.activate(a).unwrap();
    }

    pub(crate) fn path(&self) -> PathBuf {
        self.dev.path().to_path_buf()
    }

    pub(crate) fn stats(&self) -> Arc<VsockStats> {
        self.dev.stats()
    }

    pub(crate) fn errors(&self) -> u64 {
        self.stats().errors.load(Ordering::Relaxed)
    }

    /// Runs the worker the way the device thread does, until no source is readable. Panics if
    /// that never happens: a source that stays readable would make the real thread spin.
    pub(crate) fn settle(&mut self) {
        for _ in 0..64 {
            let epoll = Epoll::new().unwrap();
            for (fd, token) in self.worker.sources() {
                epoll
                    .ctl(
                        ControlOperation::Add,
                        fd,
                        EpollEvent::new(EventSet::IN, token),
                    )
                    .unwrap();
            }
            let mut events = [EpollEvent::default(); 64];
            let n = epoll.wait(0, &mut events).unwrap();
            if n == 0 {
                return;
            }
            for e in &events[..n] {
                self.worker.handle(e.data());
                self.worker.sources_changed();
            }
        }
        panic!("the worker's sources stay readable");
    }

    pub(crate) fn kick(&mut self, queue: usize) {
        self.kicks[queue].write(1).unwrap();
        self.settle();
    }

    /// The guest sends a packet (header and payload in separate buffers, as Linux does).
    pub(crate) fn send(&mut self, hdr: Header, payload: &[u8]) {
        let i = u64::from(self.txq.next_desc);
        let (ha, pa) = (0x40_0000 + i * 0x100, 0x80_0000 + i * 0x1_0000);
        self.mem
            .write_slice(&hdr.to_bytes(), GuestAddress(ha))
            .unwrap();
        let mut bufs = vec![(ha, HEADER_LEN as u32, false)];
        if !payload.is_empty() {
            self.mem.write_slice(payload, GuestAddress(pa)).unwrap();
            bufs.push((pa, payload.len() as u32, false));
        }
        self.txq.add(&self.mem, &bufs);
        self.kick(1);
    }

    /// The guest sends an RW packet.
    pub(crate) fn send_data(&mut self, src_port: u32, dst_port: u32, data: &[u8]) {
        let mut h = guest_hdr(op::RW, src_port, dst_port);
        h.len = data.len() as u32;
        self.send(h, data);
    }

    /// The guest gives `n` rx buffers.
    pub(crate) fn give_rx(&mut self, n: usize) {
        for _ in 0..n {
            let i = u64::from(self.rxq.next_desc);
            let addr = 0x180_0000 + i * 0x2000;
            let head = self
                .rxq
                .add(&self.mem, &[(addr, HEADER_LEN as u32 + RX_BUF, true)]);
            self.rx_bufs.insert(head, addr);
        }
        self.kick(0);
    }

    /// The packets the device put in the rx queue since the last call.
    pub(crate) fn recv(&mut self) -> Vec<(Header, Vec<u8>)> {
        let used = self.rxq.take_used(&self.mem);
        used.into_iter()
            .map(|(head, len)| {
                let addr = self.rx_bufs.remove(&head).unwrap();
                assert!(
                    len as usize >= HEADER_LEN,
                    "rx buffer used with {len} bytes"
                );
                let mut raw = [0u8; HEADER_LEN];
                self.mem.read_slice(&mut raw, GuestAddress(addr)).unwrap();
                let h = Header::parse(&raw);
                assert_eq!(h.len as usize, len as usize - HEADER_LEN);
                let mut data = vec![0u8; h.len as usize];
                self.mem
                    .read_slice(&mut data, GuestAddress(addr + HEADER_LEN as u64))
                    .unwrap();
                (h, data)
            })
            .collect()
    }

    /// Exactly one packet arrived; returns it.
    pub(crate) fn recv_one(&mut self) -> (Header, Vec<u8>) {
        let mut p = self.recv();
        assert_eq!(p.len(), 1, "expected one packet, got {p:?}");
        p.remove(0)
    }

    /// The guest connects from `guest_port` to host port `port`, where a test listener waits.
    /// Returns the host end.
    pub(crate) fn guest_connect(&mut self, guest_port: u32, port: u32) -> UnixStream {
        let l = UnixListener::bind(port_path(&self.path(), port)).unwrap();
        self.send(guest_hdr(op::REQUEST, guest_port, port), &[]);
        let (h, _) = self.recv_one();
        assert_eq!(h.op, op::RESPONSE);
        let (s, _) = l.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s
    }

    /// A host client connects to guest port `port`; the guest accepts. Returns the client and
    /// the host port the device chose.
    pub(crate) fn host_connect(&mut self, port: u32) -> (UnixStream, u32) {
        let mut c = UnixStream::connect(self.path()).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        c.write_all(format!("CONNECT {port}\n").as_bytes()).unwrap();
        self.settle();
        let (req, _) = self.recv_one();
        assert_eq!(req.op, op::REQUEST);
        self.send(guest_hdr(op::RESPONSE, port, req.src_port), &[]);
        assert_eq!(read_line(&mut c), format!("OK {}", req.src_port));
        (c, req.src_port)
    }
}

/// Stands in while a worker is replaced.
pub(crate) struct NoWorker;

impl VirtioWorker for NoWorker {
    fn sources(&self) -> Vec<(std::os::fd::RawFd, u64)> {
        Vec::new()
    }
    fn handle(&mut self, _token: u64) {}
    fn queue_states(&self) -> Vec<virtio_queue::QueueState> {
        Vec::new()
    }
}

/// A header from the guest with 64 KiB of credit.
pub(crate) fn guest_hdr(op: u16, src_port: u32, dst_port: u32) -> Header {
    Header {
        src_cid: GUEST_CID,
        dst_cid: HOST_CID,
        src_port,
        dst_port,
        kind: TYPE_STREAM,
        op,
        buf_alloc: 64 << 10,
        ..Header::default()
    }
}

pub(crate) fn port_path(path: &Path, port: u32) -> PathBuf {
    PathBuf::from(format!("{}_{port}", path.display()))
}

pub(crate) fn read_line(s: &mut UnixStream) -> String {
    let mut line = Vec::new();
    let mut b = [0u8];
    while s.read(&mut b).unwrap() == 1 && b[0] != b'\n' {
        line.push(b[0]);
    }
    String::from_utf8(line).unwrap()
}

/// Whether `s` has nothing to read right now (and is not at end of file).
pub(crate) fn nothing_to_read(s: &UnixStream) -> bool {
    s.set_nonblocking(true).unwrap();
    let r = (&*s).read(&mut [0u8; 16]);
    s.set_nonblocking(false).unwrap();
    matches!(r, Err(e) if e.kind() == ErrorKind::WouldBlock)
}
