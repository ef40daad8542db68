//! Moving frames between the virtqueues and the backend on the device thread.

use std::io::ErrorKind;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use virtio_queue::{Queue, QueueState, QueueT};
use vmm_sys_util::eventfd::EventFd;

use super::NET_HDR_LEN;
use super::backend::NetBackend;
use super::device::NetStats;
use crate::virtio::chain::{self, Chain};
use crate::virtio::{ActiveQueue, GuestMemory, VirtioInterrupt, VirtioWorker};

/// Tokens of the worker's fds.
const TOKEN_RX: u64 = 0;
const TOKEN_TX: u64 = 1;
const TOKEN_BACKEND: u64 = 2;
/// Queue indices.
const RX: u16 = 0;
const TX: u16 = 1;
/// The largest frame with its header: a 64 KiB TSO/UFO frame, an Ethernet and VLAN header, and
/// the virtio-net header.
const MAX_FRAME: usize = 65_550 + NET_HDR_LEN;
/// Offset of `num_buffers` in the header.
const NUM_BUFFERS: usize = 10;
/// Frames taken from the backend per wake-up before yielding to other devices.
const RX_BUDGET: usize = 256;

/// The NIC's queue server.
pub(super) struct NetWorker {
    mem: GuestMemory,
    rx: Queue,
    rx_notify: EventFd,
    tx: Queue,
    tx_notify: EventFd,
    interrupt: Arc<dyn VirtioInterrupt>,
    backend: Arc<dyn NetBackend>,
    mergeable: bool,
    stats: Arc<NetStats>,
    /// A frame read from the backend that the guest has no room for yet.
    pending: Option<usize>,
    frame: Vec<u8>,
    /// True while the guest has no receive buffers: the backend's fd is then not watched, or a
    /// level-triggered wait would spin on it.
    rx_blocked: bool,
    sources_changed: bool,
}

impl NetWorker {
    pub(super) fn new(
        mem: GuestMemory,
        rx: ActiveQueue,
        tx: ActiveQueue,
        interrupt: Arc<dyn VirtioInterrupt>,
        backend: Arc<dyn NetBackend>,
        mergeable: bool,
        stats: Arc<NetStats>,
    ) -> Self {
        Self {
            mem,
            rx: rx.queue,
            rx_notify: rx.notify,
            tx: tx.queue,
            tx_notify: tx.notify,
            interrupt,
            backend,
            mergeable,
            stats,
            pending: None,
            frame: vec![0; MAX_FRAME],
            rx_blocked: false,
            sources_changed: false,
        }
    }

    fn set_rx_blocked(&mut self, blocked: bool) {
        if self.rx_blocked != blocked {
            self.rx_blocked = blocked;
            self.sources_changed = true;
        }
    }

    /// Moves frames from the backend into the guest's receive buffers until either runs out.
    fn receive(&mut self) {
        let mut notify = false;
        for _ in 0..RX_BUDGET {
            let len = match self.pending.take() {
                Some(len) => len,
                None => match self.backend.read_frame(&mut self.frame) {
                    Ok(len) => len,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(_) => {
                        self.stats.errors.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                },
            };
            if len < NET_HDR_LEN {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            match self.deliver(len) {
                Deliver::Done(n) => notify |= n,
                Deliver::NoRoom => {
                    self.pending = Some(len);
                    self.set_rx_blocked(true);
                    break;
                }
                Deliver::Dropped(n) => {
                    notify |= n;
                    self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                }
                Deliver::Broken => {
                    self.stats.errors.fetch_add(1, Ordering::Relaxed);
                    self.set_rx_blocked(true);
                    break;
                }
            }
        }
        if notify {
            self.interrupt.signal_queue(RX);
        }
    }

    /// Copies the frame of `len` bytes into as many receive chains as it needs.
    fn deliver(&mut self, len: usize) -> Deliver {
        let start = self.rx.next_avail();
        let mut used: Vec<(u16, u32)> = Vec::new();
        let mut done = 0usize;
        while done < len {
            let c: Chain = match chain::next_chain(&mut self.rx, &self.mem, MAX_FRAME as u64 * 4) {
                None => {
                    // Not enough buffers yet: give back what was taken, keep the frame.
                    self.rx.set_next_avail(start);
                    return Deliver::NoRoom;
                }
                Some(Ok(c)) if !c.readable.is_empty() || c.writable_len() == 0 => {
                    self.stats.errors.fetch_add(1, Ordering::Relaxed);
                    used.push((c.head, 0));
                    continue;
                }
                Some(Ok(c)) => c,
                Some(Err((Some(head), _))) => {
                    self.stats.errors.fetch_add(1, Ordering::Relaxed);
                    used.push((head, 0));
                    continue;
                }
                Some(Err((None, _))) => return Deliver::Broken,
            };
            if !self.mergeable && c.writable_len() < len as u64 {
                // Without merged buffers, each chain must hold the whole frame.
                used.push((c.head, 0));
                return self.finish(&used, None);
            }
            let n = c.write_at(&self.mem, 0, &self.frame[done..len]);
            done += n;
            used.push((c.head, n as u32));
            if n == 0 {
                break;
            }
        }
        let buffers = used.iter().filter(|(_, n)| *n > 0).count() as u16;
        // `num_buffers` sits in the first chain that holds data.
        self.frame[NUM_BUFFERS..NUM_BUFFERS + 2].copy_from_slice(&buffers.to_le_bytes());
        self.finish(&used, Some(len))
    }

    /// Returns `used` chains to the guest; `len` is the frame delivered, if one was.
    fn finish(&mut self, used: &[(u16, u32)], len: Option<usize>) -> Deliver {
        let mut notify = false;
        let mut header_fixed = false;
        for &(head, n) in used {
            if let (Some(_), false, true) = (len, header_fixed, n > 0) {
                // Rewrite the header with the final buffer count.
                if let Some(Ok(c)) = self.chain_at(head) {
                    c.write_at(&self.mem, 0, &self.frame[..NET_HDR_LEN]);
                }
                header_fixed = true;
            }
            match chain::complete(&mut self.rx, &self.mem, head, n) {
                Ok(b) => notify |= b,
                Err(_) => return Deliver::Broken,
            }
        }
        match len {
            Some(len) => {
                self.stats.rx_frames.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .rx_bytes
                    .fetch_add((len - NET_HDR_LEN) as u64, Ordering::Relaxed);
                Deliver::Done(notify)
            }
            None => Deliver::Dropped(notify),
        }
    }

    /// Walks the chain at `head` again (to rewrite its header).
    fn chain_at(&self, head: u16) -> Option<Result<Chain, chain::ChainError>> {
        let table = vm_memory::GuestAddress(self.rx.desc_table());
        Some(Chain::walk(
            &self.mem,
            table,
            self.rx.size(),
            head,
            MAX_FRAME as u64 * 4,
        ))
    }

    /// Sends every frame the guest queued.
    fn transmit(&mut self) {
        let mut notify = false;
        loop {
            let head = match chain::next_chain(&mut self.tx, &self.mem, MAX_FRAME as u64) {
                None => break,
                Some(Ok(c)) => {
                    let len = c.readable_len() as usize;
                    if len < NET_HDR_LEN || !c.writable.is_empty() {
                        self.stats.errors.fetch_add(1, Ordering::Relaxed);
                    } else if c.read_at(&self.mem, 0, &mut self.frame[..len]) == len {
                        match self.backend.write_frame(&self.frame[..len]) {
                            Ok(_) => {
                                self.stats.tx_frames.fetch_add(1, Ordering::Relaxed);
                                self.stats
                                    .tx_bytes
                                    .fetch_add((len - NET_HDR_LEN) as u64, Ordering::Relaxed);
                            }
                            // A full or down tap drops the frame, as a cable would.
                            Err(_) => {
                                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    c.head
                }
                Some(Err((Some(head), _))) => {
                    self.stats.errors.fetch_add(1, Ordering::Relaxed);
                    head
                }
                Some(Err((None, _))) => {
                    self.stats.errors.fetch_add(1, Ordering::Relaxed);
                    break;
                }
            };
            match chain::complete(&mut self.tx, &self.mem, head, 0) {
                Ok(n) => notify |= n,
                Err(_) => break,
            }
        }
        if notify {
            self.interrupt.signal_queue(TX);
        }
    }
}

/// What became of one frame.
enum Deliver {
    /// Delivered; true if the driver wants an interrupt.
    Done(bool),
    /// The guest has no buffers for it now.
    NoRoom,
    /// It did not fit and was dropped; true if the driver wants an interrupt.
    Dropped(bool),
    /// The receive ring is unusable.
    Broken,
}

impl VirtioWorker for NetWorker {
    fn sources(&self) -> Vec<(RawFd, u64)> {
        let mut s = vec![
            (self.rx_notify.as_raw_fd(), TOKEN_RX),
            (self.tx_notify.as_raw_fd(), TOKEN_TX),
        ];
        if !self.rx_blocked {
            s.push((self.backend.raw_fd(), TOKEN_BACKEND));
        }
        s
    }

    fn handle(&mut self, token: u64) {
        match token {
            TOKEN_RX => {
                let _ = self.rx_notify.read();
                self.set_rx_blocked(false);
                self.receive();
            }
            TOKEN_TX => {
                let _ = self.tx_notify.read();
                self.transmit();
            }
            TOKEN_BACKEND => self.receive(),
            _ => {}
        }
    }

    fn sources_changed(&mut self) -> bool {
        std::mem::take(&mut self.sources_changed)
    }

    fn queue_states(&self) -> Vec<QueueState> {
        // Every chain taken from the rx ring is used or given back before `receive` returns
        // (unless the ring is found broken), so the positions hold no chain in flight.
        vec![self.rx.state(), self.tx.state()]
    }
}
