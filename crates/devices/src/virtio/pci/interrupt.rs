//! How a virtio-pci device interrupts its driver: an MSI-X vector per queue and one for
//! configuration changes, or, while MSI-X is disabled, INTx with the ISR status register.
//!
//! This state is shared between the transport (vCPU threads: the driver programs vectors and
//! reads the ISR) and the device's worker (the device thread: it signals). It has locks of its
//! own, never the transport's, so a worker signalling while the transport waits for it to stop
//! cannot deadlock. Lock order: the MSI-X table, then the ISR, then the interrupt controllers.

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU16, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::interrupt::IrqLine;
use crate::pci::MsixConfig;
use crate::virtio::VirtioInterrupt;

/// "No vector": the event raises no MSI-X interrupt.
pub const NO_VECTOR: u16 = 0xffff;
/// ISR bit: a queue has used buffers.
pub(super) const ISR_QUEUE: u8 = 1;
/// ISR bit: the configuration changed.
pub(super) const ISR_CONFIG: u8 = 2;

/// The interrupt state of one virtio-pci device.
pub(super) struct Interrupts {
    msix: Mutex<MsixConfig>,
    pub(super) isr: Mutex<u8>,
    pub(super) intx: Arc<dyn IrqLine>,
    pub(super) intx_disabled: AtomicBool,
    pub(super) config_vector: AtomicU16,
    pub(super) queue_vectors: Vec<AtomicU16>,
    pub(super) config_generation: AtomicU8,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Interrupts {
    pub(super) fn new(msix: MsixConfig, intx: Arc<dyn IrqLine>, queues: usize) -> Self {
        Self {
            msix: Mutex::new(msix),
            isr: Mutex::new(0),
            intx,
            intx_disabled: AtomicBool::new(false),
            config_vector: AtomicU16::new(NO_VECTOR),
            queue_vectors: (0..queues).map(|_| AtomicU16::new(NO_VECTOR)).collect(),
            config_generation: AtomicU8::new(0),
        }
    }

    /// The MSI-X table, locked.
    pub(super) fn msix(&self) -> MutexGuard<'_, MsixConfig> {
        lock(&self.msix)
    }

    /// Reads the ISR: returns it, clears it and lowers the INTx line.
    pub(super) fn read_isr(&self) -> u8 {
        let mut isr = lock(&self.isr);
        let value = std::mem::take(&mut *isr);
        self.intx.set_level(false);
        value
    }

    /// The command register's INTx-disable bit changed: the line follows.
    pub(super) fn set_intx_disabled(&self, disabled: bool) {
        let isr = lock(&self.isr);
        if self.intx_disabled.swap(disabled, Ordering::SeqCst) != disabled {
            self.intx.set_level(!disabled && *isr != 0);
        }
    }

    /// Stores a vector the driver chose; one out of the table's range reads back as
    /// [`NO_VECTOR`], as the spec asks. Returns what was stored.
    fn checked(&self, vector: u16) -> u16 {
        if vector < self.msix().vectors() {
            vector
        } else {
            NO_VECTOR
        }
    }

    pub(super) fn set_config_vector(&self, vector: u16) {
        self.config_vector
            .store(self.checked(vector), Ordering::SeqCst);
    }

    pub(super) fn config_vector(&self) -> u16 {
        self.config_vector.load(Ordering::SeqCst)
    }

    pub(super) fn set_queue_vector(&self, queue: u16, vector: u16) {
        if let Some(v) = self.queue_vectors.get(usize::from(queue)) {
            v.store(self.checked(vector), Ordering::SeqCst);
        }
    }

    pub(super) fn queue_vector(&self, queue: u16) -> u16 {
        self.queue_vectors
            .get(usize::from(queue))
            .map_or(NO_VECTOR, |v| v.load(Ordering::SeqCst))
    }

    pub(super) fn config_generation(&self) -> u8 {
        self.config_generation.load(Ordering::SeqCst)
    }

    /// The device was reset: no vectors, nothing pending in the ISR, the line low. The MSI-X
    /// table belongs to the PCI function and stays as the driver programmed it.
    pub(super) fn reset(&self) {
        self.config_vector.store(NO_VECTOR, Ordering::SeqCst);
        for v in &self.queue_vectors {
            v.store(NO_VECTOR, Ordering::SeqCst);
        }
        *lock(&self.isr) = 0;
        self.intx.set_level(false);
    }

    /// Interrupts the driver through `vector` under MSI-X, or through `isr_bit` and INTx.
    fn signal(&self, vector: u16, isr_bit: u8) {
        {
            let mut msix = self.msix();
            if msix.enabled() {
                if vector != NO_VECTOR {
                    msix.signal(vector);
                }
                return;
            }
        }
        let mut isr = lock(&self.isr);
        *isr |= isr_bit;
        if !self.intx_disabled.load(Ordering::SeqCst) {
            self.intx.set_level(true);
        }
    }
}

impl VirtioInterrupt for Interrupts {
    fn signal_queue(&self, queue: u16) {
        if usize::from(queue) < self.queue_vectors.len() {
            self.signal(self.queue_vector(queue), ISR_QUEUE);
        }
    }

    fn signal_config(&self) {
        self.config_generation.fetch_add(1, Ordering::SeqCst);
        self.signal(self.config_vector(), ISR_CONFIG);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::{CONTROL_ENABLE, MsiAllocator};
    use crate::testing::{MockIrq, MockMsi};

    fn interrupts() -> (Interrupts, Arc<MockIrq>, Arc<MockMsi>) {
        let msi = Arc::new(MockMsi::default());
        let alloc = MsiAllocator::new(msi.clone(), 24, 100).unwrap();
        let irq = Arc::new(MockIrq::default());
        let i = Interrupts::new(alloc.allocate(3).unwrap(), irq.clone(), 2);
        (i, irq, msi)
    }

    #[test]
    fn intx_raises_until_the_isr_is_read() {
        let (i, irq, msi) = interrupts();
        i.signal_queue(1);
        assert!(irq.level());
        i.signal_config();
        assert_eq!(i.read_isr(), ISR_QUEUE | ISR_CONFIG);
        assert!(!irq.level());
        assert_eq!(i.read_isr(), 0);
        assert_eq!(i.config_generation(), 1);
        assert!(msi.take().is_empty());
    }

    #[test]
    fn intx_disable_lowers_the_line_and_keeps_the_isr() {
        let (i, irq, _) = interrupts();
        i.signal_queue(0);
        i.set_intx_disabled(true);
        assert!(!irq.level());
        i.signal_queue(0);
        assert!(!irq.level());
        i.set_intx_disabled(false);
        assert!(irq.level());
        assert_eq!(i.read_isr(), ISR_QUEUE);
    }

    #[test]
    fn msix_uses_the_queue_vector_and_skips_no_vector() {
        let (i, irq, msi) = interrupts();
        {
            let mut m = i.msix();
            m.set_control(CONTROL_ENABLE);
            m.write_table(2 * 16 + 8, &0x45u32.to_le_bytes());
            m.write_table(2 * 16 + 12, &0u32.to_le_bytes());
        }
        i.set_queue_vector(1, 2);
        i.set_queue_vector(0, 7);
        assert_eq!(i.queue_vector(0), NO_VECTOR, "out of the table's range");
        i.signal_queue(1);
        i.signal_queue(0);
        i.signal_queue(9);
        let got = msi.take();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].1.data, 0x45);
        assert!(!irq.level());
        assert_eq!(i.read_isr(), 0, "MSI-X leaves the ISR alone");
    }
}
