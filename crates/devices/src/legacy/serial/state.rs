//! The UART's snapshot state: vm-superio's registers and receive FIFO, and the host input that
//! waits for room in the FIFO.
//!
//! The output writer and the IRQ line are the VMM's and are not part of the state. Restoring
//! raises no interrupt: one the UART had pending is already in the restored interrupt
//! controllers.

use std::sync::atomic::Ordering;

use serde::{Deserialize, Serialize};
use vm_superio::serial::{NoEvents, SerialState as UartState};

use super::{INPUT_BUFFER_LIMIT, IrqTrigger, Serial};
use crate::state::{StateError, ensure};

const DEVICE: &str = "serial";

/// A 16550A's state.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct SerialState {
    /// Divisor latch, low byte.
    pub divisor_low: u8,
    /// Divisor latch, high byte.
    pub divisor_high: u8,
    /// Interrupt enable register.
    pub ier: u8,
    /// Interrupt identification register.
    pub iir: u8,
    /// Line control register.
    pub lcr: u8,
    /// Line status register.
    pub lsr: u8,
    /// Modem control register.
    pub mcr: u8,
    /// Modem status register.
    pub msr: u8,
    /// Scratch register.
    pub scratch: u8,
    /// The receive FIFO, oldest byte first (at most 64 bytes).
    pub rx_fifo: Vec<u8>,
    /// Host input not yet in the FIFO, oldest first.
    pub pending_input: Vec<u8>,
}

impl Serial {
    /// The UART's state.
    pub fn save(&self) -> SerialState {
        let s = self.uart.state();
        SerialState {
            divisor_low: s.baud_divisor_low,
            divisor_high: s.baud_divisor_high,
            ier: s.interrupt_enable,
            iir: s.interrupt_identification,
            lcr: s.line_control,
            lsr: s.line_status,
            mcr: s.modem_control,
            msr: s.modem_status,
            scratch: s.scratch,
            rx_fifo: s.in_buffer,
            pending_input: self.pending.iter().copied().collect(),
        }
    }

    /// Restores `s`: the registers, the FIFO and the waiting input. The output keeps going to
    /// this UART's writer.
    pub fn restore(&mut self, s: &SerialState) -> Result<(), StateError> {
        ensure(s.rx_fifo.len() <= self.fifo_size, DEVICE, || {
            format!(
                "receive FIFO of {} bytes, the UART holds {}",
                s.rx_fifo.len(),
                self.fifo_size
            )
        })?;
        let buffered = s.rx_fifo.len() + s.pending_input.len();
        ensure(buffered <= INPUT_BUFFER_LIMIT, DEVICE, || {
            format!("{buffered} bytes of input, more than the limit of {INPUT_BUFFER_LIMIT}")
        })?;
        let state = UartState {
            baud_divisor_low: s.divisor_low,
            baud_divisor_high: s.divisor_high,
            interrupt_enable: s.ier,
            interrupt_identification: s.iir,
            line_control: s.lcr,
            line_status: s.lsr,
            modem_control: s.mcr,
            modem_status: s.msr,
            scratch: s.scratch,
            in_buffer: s.rx_fifo.clone(),
        };
        let trigger = IrqTrigger::new(self.uart.interrupt_evt().line.clone());
        trigger.muted.store(true, Ordering::Relaxed);
        let sink: Box<dyn std::io::Write + Send> = Box::new(std::io::sink());
        let mut uart =
            vm_superio::Serial::from_state(&state, trigger, NoEvents, sink).map_err(|e| {
                StateError::Invalid {
                    device: DEVICE,
                    what: format!("{e:?}"),
                }
            })?;
        uart.interrupt_evt().muted.store(false, Ordering::Relaxed);
        std::mem::swap(uart.writer_mut(), self.uart.writer_mut());
        self.uart = uart;
        self.pending = s.pending_input.iter().copied().collect();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::BusDevice;

    const RBR: u64 = 0;
    const IER: u64 = 1;
    const LCR: u64 = 3;
    const MCR: u64 = 4;
    const LSR: u64 = 5;
    const SCR: u64 = 7;

    use super::super::tests::{inb, serial};

    #[test]
    fn restore_keeps_registers_fifo_and_waiting_input() {
        let (mut a, _, _) = serial();
        a.write(LCR, &[0x80]);
        a.write(0, &[0x0c]);
        a.write(1, &[0x00]);
        a.write(LCR, &[0x1b]);
        a.write(IER, &[0x01]);
        a.write(MCR, &[0x0b]);
        a.write(SCR, &[0x5a]);
        let input: Vec<u8> = (0..100u8).collect();
        assert_eq!(a.enqueue_input(&input), 100);
        assert_eq!(inb(&mut a, RBR), 0);
        let saved = a.save();
        assert_eq!(saved.rx_fifo.len(), 63);
        assert_eq!(saved.pending_input.len(), 36);

        let (mut b, irq, out) = serial();
        b.restore(&saved).unwrap();
        assert_eq!(irq.rises(), 0, "restore must not raise the IRQ again");
        assert_eq!(b.save(), saved);
        assert_eq!(
            [inb(&mut b, LCR), inb(&mut b, IER), inb(&mut b, MCR)],
            [0x1b, 0x01, 0x0b]
        );
        assert_eq!(inb(&mut b, SCR), 0x5a);
        b.write(LCR, &[0x9b]);
        assert_eq!([inb(&mut b, 0), inb(&mut b, 1)], [0x0c, 0x00], "divisor");
        b.write(LCR, &[0x1b]);
        let mut got = Vec::new();
        while inb(&mut b, LSR) & 1 == 1 {
            got.push(inb(&mut b, RBR));
        }
        assert_eq!(
            got,
            (1..100u8).collect::<Vec<_>>(),
            "input continues in order"
        );
        b.write(RBR, b"x");
        assert_eq!(
            &*out.0.lock().unwrap(),
            b"x",
            "output goes to the new writer"
        );
    }

    #[test]
    fn oversized_fifo_or_input_is_refused_and_leaves_the_uart_alone() {
        let (mut s, _, out) = serial();
        s.write(SCR, &[0x42]);
        let mut bad = s.save();
        bad.rx_fifo = vec![0; 65];
        assert!(matches!(
            s.restore(&bad),
            Err(StateError::Invalid {
                device: "serial",
                ..
            })
        ));
        let mut bad = s.save();
        bad.pending_input = vec![0; INPUT_BUFFER_LIMIT + 1];
        assert!(s.restore(&bad).is_err());
        assert_eq!(inb(&mut s, SCR), 0x42);
        s.write(RBR, b"y");
        assert_eq!(&*out.0.lock().unwrap(), b"y");
    }

    #[test]
    fn any_register_values_restore_without_panicking() {
        let (mut s, _, _) = serial();
        let state = SerialState {
            divisor_low: 0xff,
            divisor_high: 0xff,
            ier: 0xff,
            iir: 0xff,
            lcr: 0xff,
            lsr: 0xff,
            mcr: 0xff,
            msr: 0xff,
            scratch: 0xff,
            rx_fifo: vec![1; 64],
            pending_input: vec![2; 10],
        };
        s.restore(&state).unwrap();
        for off in 0..8 {
            inb(&mut s, off);
            s.write(off, &[0xff]);
        }
        s.enqueue_input(b"more");
    }
}
