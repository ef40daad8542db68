//! virtio-rng: entropy from the host's `getrandom`.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use virtio_queue::{Queue, QueueState};
use vmm_sys_util::eventfd::EventFd;

use super::chain;
use super::{
    ActivateError, Activation, F_VERSION_1, GuestMemory, VirtioDevice, VirtioInterrupt,
    VirtioWorker, device_type,
};

/// Queue size offered to the driver.
const QUEUE_SIZE: u16 = 64;
/// Bytes handed out per request at most: more than any driver asks for, and a bound on what a
/// hostile chain can make the host generate.
const MAX_REQUEST: u64 = 64 << 10;

/// Counters of the entropy device.
#[derive(Debug, Default)]
pub struct RngStats {
    /// Requests completed.
    pub requests: AtomicU64,
    /// Bytes of entropy handed out.
    pub bytes: AtomicU64,
    /// Malformed requests.
    pub errors: AtomicU64,
}

/// A virtio entropy device.
#[derive(Default)]
pub struct Rng {
    stats: Arc<RngStats>,
}

impl Rng {
    /// A new entropy device.
    pub fn new() -> Self {
        Self::default()
    }

    /// The device's counters.
    pub fn stats(&self) -> Arc<RngStats> {
        self.stats.clone()
    }
}

impl VirtioDevice for Rng {
    fn name(&self) -> &'static str {
        "rng"
    }
    fn device_type(&self) -> u32 {
        device_type::RNG
    }
    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_SIZE]
    }
    fn features(&self) -> u64 {
        F_VERSION_1
    }
    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    fn activate(&mut self, a: Activation) -> Result<Box<dyn VirtioWorker>, ActivateError> {
        let q = a
            .queues
            .into_iter()
            .next()
            .ok_or(ActivateError::BadQueues {
                device: "rng",
                what: "the request queue is not enabled".into(),
            })?;
        Ok(Box::new(RngWorker {
            mem: a.mem,
            queue: q.queue,
            notify: q.notify,
            interrupt: a.interrupt,
            stats: self.stats.clone(),
        }))
    }
}

struct RngWorker {
    mem: GuestMemory,
    queue: Queue,
    notify: EventFd,
    interrupt: Arc<dyn VirtioInterrupt>,
    stats: Arc<RngStats>,
}

impl VirtioWorker for RngWorker {
    fn sources(&self) -> Vec<(RawFd, u64)> {
        vec![(self.notify.as_raw_fd(), 0)]
    }

    fn queue_states(&self) -> Vec<QueueState> {
        vec![self.queue.state()]
    }

    fn handle(&mut self, _token: u64) {
        let _ = self.notify.read();
        let mut notify = false;
        let mut buf = Vec::new();
        loop {
            let (head, len) = match chain::next_chain(&mut self.queue, &self.mem, MAX_REQUEST) {
                None => break,
                Some(Ok(c)) => {
                    buf.resize(c.writable_len() as usize, 0);
                    let n = if fill_random(&mut buf) {
                        c.write_at(&self.mem, 0, &buf)
                    } else {
                        0
                    };
                    self.stats.bytes.fetch_add(n as u64, Ordering::Relaxed);
                    (c.head, n as u32)
                }
                Some(Err((Some(head), _))) => {
                    self.stats.errors.fetch_add(1, Ordering::Relaxed);
                    (head, 0)
                }
                Some(Err((None, _))) => {
                    self.stats.errors.fetch_add(1, Ordering::Relaxed);
                    break;
                }
            };
            self.stats.requests.fetch_add(1, Ordering::Relaxed);
            match chain::complete(&mut self.queue, &self.mem, head, len) {
                Ok(n) => notify |= n,
                Err(_) => break,
            }
        }
        if notify {
            self.interrupt.signal_queue(0);
        }
    }
}

/// Fills `buf` from the kernel's entropy pool. False if it cannot (never on a running Linux).
fn fill_random(buf: &mut [u8]) -> bool {
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        // SAFETY: the pointer and length describe `rest`, a live, writable slice.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return false;
        }
        done += n as usize;
    }
    true
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use vm_memory::{Bytes, GuestAddress};

    use super::*;
    use crate::virtio::test_queue::{self, TestQueue};

    #[test]
    fn fills_buffers_and_refuses_oversized_chains() {
        let mem = test_queue::memory();
        let mut q = TestQueue::new(0x1_0000, 8);
        let mut rng = Rng::new();
        let irq = test_queue::interrupt();
        let mut w = rng
            .activate(Activation {
                mem: mem.clone(),
                features: F_VERSION_1,
                queues: vec![q.active(&mem)],
                interrupt: irq.clone(),
            })
            .unwrap();
        q.add(&mem, &[(0x8_0000, 64, true)]);
        // Two 48 KiB buffers: more than one request may ask for.
        q.add(
            &mem,
            &[(0x4_0000, 48 << 10, true), (0x5_0000, 48 << 10, true)],
        );
        // A device-readable buffer: nothing to fill.
        q.add(&mem, &[(0x8_1000, 64, false)]);
        q.add(&mem, &[(0x8_2000, 64, true)]);
        w.handle(0);
        assert_eq!(q.used_idx(&mem), 4);
        assert_eq!(q.used(&mem, 0), (0, 64));
        assert_eq!(q.used(&mem, 1).1, 0, "oversized chain");
        assert_eq!(q.used(&mem, 2).1, 0, "nothing writable");
        assert_eq!(q.used(&mem, 3).1, 64);
        let mut a = [0u8; 64];
        let mut b = [0u8; 64];
        mem.read_slice(&mut a, GuestAddress(0x8_0000)).unwrap();
        mem.read_slice(&mut b, GuestAddress(0x8_2000)).unwrap();
        assert_ne!(a, b);
        assert_eq!(rng.stats().errors.load(Ordering::Relaxed), 1);
        assert_eq!(irq.queue.load(Ordering::SeqCst), 1);
    }
}
