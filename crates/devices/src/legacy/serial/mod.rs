//! The COM1 16550A UART: vm-superio's model on eight ports, wired to an [`IrqLine`].
//!
//! The guest's output goes to a writer that is flushed after every byte, so the console is
//! interactive. Host input enters through [`Serial::enqueue_input`]: what does not fit in the
//! UART's 64-byte receive FIFO waits in a bounded buffer and moves into the FIFO whenever the
//! guest has drained it; input beyond that buffer is dropped, as a real UART drops bytes it
//! has no room for.
//!
//! Its snapshot state is [`SerialState`].

use std::collections::VecDeque;
use std::convert::Infallible;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use vm_superio::Trigger;
use vm_superio::serial::NoEvents;

use super::{read_bytes, write_bytes};
use crate::bus::BusDevice;
use crate::interrupt::IrqLine;

mod state;

pub use state::SerialState;

/// The I/O port of COM1.
pub const COM1_PORT: u64 = 0x3f8;
/// The ISA IRQ of COM1.
pub const COM1_IRQ: u8 = 4;
/// Number of ports of a 16550A.
pub const SERIAL_PORTS: u64 = 8;
/// Bytes of host input the UART holds, in its FIFO and waiting for room there.
pub const INPUT_BUFFER_LIMIT: usize = 4096;

/// The receiver buffer register, whose read takes a byte out of the FIFO.
const RBR: u64 = 0;

/// vm-superio's interrupt trigger: an edge on the UART's IRQ line.
struct IrqTrigger {
    line: Arc<dyn IrqLine>,
    /// Set while a restored UART is built: vm-superio raises the interrupts the state has
    /// pending, which the restored interrupt controllers already hold.
    muted: AtomicBool,
}

impl IrqTrigger {
    fn new(line: Arc<dyn IrqLine>) -> Self {
        Self {
            line,
            muted: AtomicBool::new(false),
        }
    }
}

impl Trigger for IrqTrigger {
    type E = Infallible;

    fn trigger(&self) -> Result<(), Infallible> {
        if !self.muted.load(Ordering::Relaxed) {
            self.line.pulse();
        }
        Ok(())
    }
}

/// A 16550A UART.
pub struct Serial {
    uart: vm_superio::Serial<IrqTrigger, NoEvents, Box<dyn Write + Send>>,
    fifo_size: usize,
    pending: VecDeque<u8>,
}

impl Serial {
    /// A UART raising `irq` (edges) and writing what the guest transmits to `out`.
    pub fn new(irq: Arc<dyn IrqLine>, out: Box<dyn Write + Send>) -> Self {
        let uart = vm_superio::Serial::new(IrqTrigger::new(irq), out);
        let fifo_size = uart.fifo_capacity();
        Self {
            uart,
            fifo_size,
            pending: VecDeque::new(),
        }
    }

    /// Queues host input for the guest to read. Returns how many bytes were accepted; the rest
    /// were dropped because both the FIFO and the waiting buffer are full.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        let in_fifo = self.fifo_size.saturating_sub(self.uart.fifo_capacity());
        let room = INPUT_BUFFER_LIMIT.saturating_sub(self.pending.len() + in_fifo);
        let accepted = bytes.len().min(room);
        self.pending.extend(bytes.iter().take(accepted));
        self.feed_fifo();
        accepted
    }

    /// Bytes of host input not yet in the FIFO.
    pub fn pending_input(&self) -> usize {
        self.pending.len()
    }

    /// Moves waiting input into the FIFO, once the guest has emptied it: refilling only an
    /// empty FIFO raises one receive interrupt per batch rather than one per byte read.
    fn feed_fifo(&mut self) {
        if self.pending.is_empty() || self.uart.fifo_capacity() != self.fifo_size {
            return;
        }
        let batch: Vec<u8> = self.pending.iter().take(self.fifo_size).copied().collect();
        // Loopback mode accepts nothing from the host; the bytes keep waiting.
        if let Ok(n) = self.uart.enqueue_raw_bytes(&batch) {
            self.pending.drain(..n.min(self.pending.len()));
        }
    }

    fn read_register(&mut self, offset: u64) -> u8 {
        let Ok(reg) = u8::try_from(offset) else {
            return 0xff;
        };
        if offset >= SERIAL_PORTS {
            return 0xff;
        }
        let value = self.uart.read(reg);
        if offset == RBR {
            self.feed_fifo();
        }
        value
    }

    fn write_register(&mut self, offset: u64, value: u8) {
        let Ok(reg) = u8::try_from(offset) else {
            return;
        };
        if offset < SERIAL_PORTS {
            // An output error loses the byte; a UART cannot make the guest wait, and the THR
            // empty interrupt has been raised anyway.
            let _ = self.uart.write(reg, value);
        }
    }
}

impl BusDevice for Serial {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        read_bytes(offset, data, |o| self.read_register(o));
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        write_bytes(offset, data, |o, v| self.write_register(o, v));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::testing::MockIrq;

    const IER: u64 = 1;
    const LSR: u64 = 5;
    const MCR: u64 = 4;

    /// The serial output, readable by the test.
    #[derive(Clone, Default)]
    pub(super) struct SharedOut(pub(super) Arc<Mutex<Vec<u8>>>);
    impl Write for SharedOut {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    pub(super) fn serial() -> (Serial, Arc<MockIrq>, SharedOut) {
        let irq = Arc::new(MockIrq::default());
        let out = SharedOut::default();
        (Serial::new(irq.clone(), Box::new(out.clone())), irq, out)
    }

    pub(super) fn inb(s: &mut Serial, offset: u64) -> u8 {
        let mut b = [0];
        s.read(offset, &mut b);
        b[0]
    }

    #[test]
    fn serial_echoes_guest_output() {
        let (mut s, _, out) = serial();
        for &b in b"hi\n" {
            s.write(0, &[b]);
        }
        assert_eq!(&*out.0.lock().unwrap(), b"hi\n");
    }

    #[test]
    fn input_raises_irq_when_rx_interrupt_enabled() {
        let (mut s, irq, _) = serial();
        s.write(IER, &[0x01]);
        assert_eq!(s.enqueue_input(b"a"), 1);
        assert_eq!(irq.rises(), 1);
        assert_eq!(inb(&mut s, LSR) & 1, 1);
        assert_eq!(inb(&mut s, RBR), b'a');
        assert_eq!(inb(&mut s, LSR) & 1, 0);
    }

    #[test]
    fn input_larger_than_fifo_arrives_in_order() {
        let (mut s, _, _) = serial();
        let input: Vec<u8> = (0..200u8).collect();
        assert_eq!(s.enqueue_input(&input), 200);
        let mut got = Vec::new();
        while inb(&mut s, LSR) & 1 == 1 {
            got.push(inb(&mut s, RBR));
        }
        assert_eq!(got, input);
        assert_eq!(s.pending_input(), 0);
    }

    #[test]
    fn input_beyond_buffer_limit_is_dropped() {
        let (mut s, _, _) = serial();
        let input = vec![b'x'; INPUT_BUFFER_LIMIT + 100];
        assert_eq!(s.enqueue_input(&input), INPUT_BUFFER_LIMIT);
        assert_eq!(s.enqueue_input(b"y"), 0);
    }

    #[test]
    fn loopback_mode_keeps_host_input_waiting() {
        let (mut s, _, _) = serial();
        s.write(MCR, &[0x10]);
        assert_eq!(s.enqueue_input(b"abc"), 3);
        assert_eq!(s.pending_input(), 3);
        s.write(MCR, &[0x00]);
        s.enqueue_input(&[]);
        assert_eq!(inb(&mut s, RBR), b'a');
    }

    #[test]
    fn hostile_offsets_and_widths_do_not_panic() {
        let (mut s, _, _) = serial();
        let mut buf = [0u8; 8];
        s.read(u64::MAX - 2, &mut buf);
        s.write(u64::MAX - 2, &[0xff; 8]);
        s.read(0x100, &mut buf);
        assert_eq!(buf, [0xff; 8]);
    }
}
