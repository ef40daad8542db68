//! Serving the vsock queues on the device thread.
//!
//! The tx queue carries the guest's packets to the muxer; the rx queue takes the muxer's packets
//! for the guest whenever the guest has given buffers; the event queue carries one event only,
//! the transport reset that a worker started after a snapshot restore sends (see `state.rs`).

use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use virtio_queue::{Queue, QueueOwnedT, QueueState};
use vmm_sys_util::eventfd::EventFd;

use super::device::VsockStats;
use super::muxer::{Muxer, TOKEN_LISTENER, TOKEN_WRITABLE};
use super::packet::{HEADER_LEN, Header};
use super::state::EventSent;
use super::{op, queue};
use crate::virtio::chain::{self, Chain};
use crate::virtio::{Activation, GuestMemory, VirtioInterrupt, VirtioWorker};

/// Source tokens of the queue notifications (the same as the queue indices).
pub(super) const TOKEN_RX: u64 = queue::RX as u64;
pub(super) const TOKEN_TX: u64 = queue::TX as u64;
pub(super) const TOKEN_EVENT: u64 = queue::EVENT as u64;

/// Most payload bytes in one packet, either way (Linux's VIRTIO_VSOCK_MAX_PKT_BUF_SIZE).
pub(super) const MAX_PAYLOAD: usize = 64 << 10;
/// The largest chain accepted: room for a maximal packet with slack for how a driver lays its
/// buffers out, and a bound on what a hostile chain can claim.
const MAX_CHAIN_BYTES: u64 = 4 * (HEADER_LEN + MAX_PAYLOAD) as u64;

/// The vsock device's queue server.
pub(super) struct VsockWorker {
    mem: GuestMemory,
    rx: Queue,
    tx: Queue,
    /// Only a transport reset after a restore is ever sent on it.
    event: Queue,
    rx_notify: EventFd,
    tx_notify: EventFd,
    event_notify: EventFd,
    interrupt: Arc<dyn VirtioInterrupt>,
    muxer: Muxer,
    stats: Arc<VsockStats>,
    /// The rx ring was found inconsistent: leave it until the driver notifies again.
    rx_broken: bool,
    /// Payload staging, both ways.
    scratch: Vec<u8>,
    /// The sources as last reported, to tell when they change.
    last_sources: Vec<(RawFd, u64)>,
    /// A transport reset waits for an event buffer.
    reset_pending: bool,
}

impl VsockWorker {
    /// A worker over the activation's three queues (the caller checked there are three). With
    /// `transport_reset` (after a restore), it first tells the guest that every connection it
    /// had is gone.
    pub fn new(
        a: Activation,
        cid: u64,
        path: PathBuf,
        listener: Arc<UnixListener>,
        stats: Arc<VsockStats>,
        transport_reset: bool,
    ) -> std::io::Result<Self> {
        let mut queues = a.queues.into_iter();
        let (Some(rx), Some(tx), Some(event)) = (queues.next(), queues.next(), queues.next())
        else {
            return Err(std::io::ErrorKind::InvalidInput.into());
        };
        let mut w = Self {
            mem: a.mem,
            rx: rx.queue,
            tx: tx.queue,
            event: event.queue,
            rx_notify: rx.notify,
            tx_notify: tx.notify,
            event_notify: event.notify,
            interrupt: a.interrupt,
            muxer: Muxer::new(cid, path, listener, stats.clone())?,
            stats,
            rx_broken: false,
            scratch: Vec::with_capacity(MAX_PAYLOAD),
            last_sources: Vec::new(),
            reset_pending: transport_reset,
        };
        w.send_transport_reset();
        w.last_sources = w.sources();
        Ok(w)
    }

    /// Sends a pending transport reset if the driver has given an event buffer.
    fn send_transport_reset(&mut self) {
        if !self.reset_pending {
            return;
        }
        let notify = match super::state::send_transport_reset(&mut self.event, &self.mem) {
            EventSent::Sent { notify } => {
                self.reset_pending = false;
                notify
            }
            EventSent::NoBuffer { notify } => notify,
            EventSent::Broken => {
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
                self.reset_pending = false;
                false
            }
        };
        if notify {
            self.interrupt.signal_queue(queue::EVENT as u16);
        }
    }

    /// Whether the guest has rx buffers the device can use.
    fn rx_ready(&self) -> bool {
        !self.rx_broken && chain::has_available(&self.rx, &self.mem)
    }

    /// Moves packets both ways until neither queue can make progress.
    fn pump(&mut self) {
        loop {
            let throttled = self.process_tx();
            let progressed = self.process_rx();
            if !(throttled && progressed) {
                break;
            }
        }
    }

    /// Serves the guest's packets. True when it stopped because too many answers wait for rx
    /// buffers.
    fn process_tx(&mut self) -> bool {
        let mut notify = false;
        let mut throttled = false;
        loop {
            if self.muxer.backlogged() {
                throttled = true;
                break;
            }
            let head = match chain::next_chain(&mut self.tx, &self.mem, MAX_CHAIN_BYTES) {
                None => break,
                Some(Ok(c)) => {
                    self.tx_packet(&c);
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
                Err(_) => {
                    self.stats.errors.fetch_add(1, Ordering::Relaxed);
                    break;
                }
            }
        }
        if notify {
            self.interrupt.signal_queue(queue::TX as u16);
        }
        throttled
    }

    /// Decodes one packet from the guest and hands it to the muxer.
    fn tx_packet(&mut self, c: &Chain) {
        let mut raw = [0u8; HEADER_LEN];
        if c.read_at(&self.mem, 0, &mut raw) != HEADER_LEN {
            // Too short to name a connection.
            self.stats.errors.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.stats.tx_packets.fetch_add(1, Ordering::Relaxed);
        let hdr = Header::parse(&raw);
        let mut len = 0;
        if hdr.op == op::RW {
            len = hdr.len as usize;
            if len > MAX_PAYLOAD || (HEADER_LEN + len) as u64 > c.readable_len() {
                self.muxer.reject(&hdr);
                return;
            }
            self.scratch.resize(len, 0);
            if c.read_at(&self.mem, HEADER_LEN as u64, &mut self.scratch) != len {
                self.muxer.reject(&hdr);
                return;
            }
            self.stats.tx_bytes.fetch_add(len as u64, Ordering::Relaxed);
        }
        self.muxer.guest_packet(&hdr, &self.scratch[..len]);
    }

    /// Fills the guest's rx buffers with what the muxer has for it. True if any buffer was used.
    fn process_rx(&mut self) -> bool {
        let mut notify = false;
        let mut progressed = false;
        while !self.rx_broken && self.muxer.has_rx_work() {
            let (head, used) = match chain::next_chain(&mut self.rx, &self.mem, MAX_CHAIN_BYTES) {
                None => break,
                Some(Ok(c)) => {
                    // A buffer must take a header and some data: one that cannot would stall
                    // every connection behind it.
                    if c.writable_len() <= HEADER_LEN as u64 {
                        self.stats.errors.fetch_add(1, Ordering::Relaxed);
                        (c.head, 0)
                    } else {
                        let cap = (c.writable_len() as usize - HEADER_LEN).min(MAX_PAYLOAD);
                        let Some(hdr) = self.muxer.fill_rx(&mut self.scratch, cap) else {
                            // Nothing after all: the buffer stays with the driver's ring.
                            self.rx.go_to_previous_position();
                            break;
                        };
                        (c.head, self.write_packet(&c, hdr))
                    }
                }
                Some(Err((Some(head), _))) => {
                    self.stats.errors.fetch_add(1, Ordering::Relaxed);
                    (head, 0)
                }
                Some(Err((None, _))) => {
                    self.stats.errors.fetch_add(1, Ordering::Relaxed);
                    self.rx_broken = true;
                    break;
                }
            };
            progressed = true;
            match chain::complete(&mut self.rx, &self.mem, head, used) {
                Ok(n) => notify |= n,
                Err(_) => {
                    self.stats.errors.fetch_add(1, Ordering::Relaxed);
                    self.rx_broken = true;
                    break;
                }
            }
        }
        if notify {
            self.interrupt.signal_queue(queue::RX as u16);
        }
        progressed
    }

    /// Writes `hdr` and the payload in `scratch` into an rx chain; returns the used length.
    fn write_packet(&mut self, c: &Chain, mut hdr: Header) -> u32 {
        hdr.len = self.scratch.len() as u32;
        let written = c.write_at(&self.mem, 0, &hdr.to_bytes())
            + c.write_at(&self.mem, HEADER_LEN as u64, &self.scratch);
        self.stats.rx_packets.fetch_add(1, Ordering::Relaxed);
        self.stats
            .rx_bytes
            .fetch_add(self.scratch.len() as u64, Ordering::Relaxed);
        written as u32
    }
}

impl VirtioWorker for VsockWorker {
    fn sources(&self) -> Vec<(RawFd, u64)> {
        let mut s = vec![
            (self.rx_notify.as_raw_fd(), TOKEN_RX),
            (self.tx_notify.as_raw_fd(), TOKEN_TX),
            (self.event_notify.as_raw_fd(), TOKEN_EVENT),
        ];
        self.muxer.sources(self.rx_ready(), &mut s);
        s
    }

    fn handle(&mut self, token: u64) {
        // Failed eventfd reads only mean the counter was already 0.
        match token {
            TOKEN_RX => {
                let _ = self.rx_notify.read();
                self.rx_broken = false;
            }
            TOKEN_TX => {
                let _ = self.tx_notify.read();
            }
            TOKEN_EVENT => {
                let _ = self.event_notify.read();
                self.send_transport_reset();
            }
            TOKEN_LISTENER => self.muxer.accept(),
            TOKEN_WRITABLE => self.muxer.flush_writable(),
            t => self.muxer.host_event(t),
        }
        self.pump();
    }

    fn sources_changed(&mut self) -> bool {
        let now = self.sources();
        if now == self.last_sources {
            return false;
        }
        self.last_sources = now;
        true
    }

    fn queue_states(&self) -> Vec<QueueState> {
        vec![self.rx.state(), self.tx.state(), self.event.state()]
    }
}
