//! The 8259A programmable interrupt controller pair: a master at ports 0x20-0x21, a slave at
//! 0xa0-0xa1 cascaded on the master's IRQ 2, and the edge/level control registers (ELCR) at
//! 0x4d0-0x4d1.
//!
//! The model follows the datasheet as QEMU's i8259 does: ICW1-4 initialisation, OCW1 (mask),
//! OCW2 (specific and non-specific EOI, rotation), OCW3 (IRR/ISR read select, poll, special
//! mask mode), auto-EOI, special fully nested mode, edge or level inputs per the ELCR, and
//! spurious IRQ 7/15. ICW1's LTIM bit is ignored: the ELCR decides, as on PIIX chipsets.
//!
//! The state is one [`Pic`] shared behind a mutex; [`Pic::bus_entries`] gives the three port
//! ranges. The VMM drives inputs with [`Pic::set_irq`] (through an
//! [`IrqRouter`](super::IrqRouter)), is told through [`ExtIntSink::raise`] when the INTR output
//! rises, and answers the CPU's interrupt acknowledge with [`Pic::acknowledge`]. INTR may stay
//! high after an acknowledge (another interrupt pending): the VMM checks
//! [`Pic::has_interrupt`] again then rather than waiting for another raise.
//!
//! Its snapshot state is [`PicState`].

use std::sync::{Arc, Mutex};

use super::{BusEntry, lock, read_bytes, write_bytes};
use crate::bus::BusDevice;
use crate::interrupt::ExtIntSink;

mod state;

pub use state::{PicChipState, PicState};

/// Ports of the master.
pub const MASTER_PORT: u64 = 0x20;
/// Ports of the slave.
pub const SLAVE_PORT: u64 = 0xa0;
/// Ports of the ELCR (master's, then slave's).
pub const ELCR_PORT: u64 = 0x4d0;
/// Number of inputs of the pair.
pub const PIC_IRQS: u8 = 16;
/// The master's input the slave is cascaded on.
const CASCADE_IRQ: u8 = 2;

/// Errors of [`Pic`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PicError {
    /// There are only 16 inputs.
    #[error("PIC input {0} does not exist (0-15)")]
    InvalidIrq(u8),
}

/// One 8259A.
#[derive(Debug, Default, Clone)]
struct Chip {
    /// Input levels as last driven, for edge detection.
    last_irr: u8,
    irr: u8,
    imr: u8,
    isr: u8,
    /// The lowest-priority input is `priority_add - 1`; rotation moves it.
    priority_add: u8,
    irq_base: u8,
    read_isr: bool,
    poll: bool,
    special_mask: bool,
    /// 0 = operational, 1..=3 = waiting for ICW2..ICW4.
    init_state: u8,
    init4: bool,
    single_mode: bool,
    auto_eoi: bool,
    rotate_on_auto_eoi: bool,
    special_fully_nested: bool,
    elcr: u8,
    elcr_mask: u8,
    is_master: bool,
}

impl Chip {
    fn new(is_master: bool) -> Self {
        // IRQs 0, 1, 2 of the master and 8 and 13 of the slave are always edge-triggered.
        let elcr_mask = if is_master { 0xf8 } else { 0xde };
        Self {
            elcr_mask,
            is_master,
            ..Self::default()
        }
    }

    /// ICW1 resets everything but the input levels of level-triggered lines and the ELCR.
    fn init_reset(&mut self) {
        *self = Self {
            irr: self.irr & self.elcr,
            elcr: self.elcr,
            ..Self::new(self.is_master)
        };
    }

    /// The priority (0 = highest) of the highest-priority bit of `mask`, or 8 if none.
    fn priority(&self, mask: u8) -> u8 {
        (0..8u8)
            .find(|p| mask & (1 << ((p + self.priority_add) & 7)) != 0)
            .unwrap_or(8)
    }

    /// The input this chip would present now, if any beats the one in service.
    fn pending(&self) -> Option<u8> {
        let priority = self.priority(self.irr & !self.imr);
        if priority == 8 {
            return None;
        }
        let mut in_service = self.isr;
        if self.special_mask {
            in_service &= !self.imr;
        }
        if self.special_fully_nested && self.is_master {
            in_service &= !(1 << CASCADE_IRQ);
        }
        (priority < self.priority(in_service)).then_some((priority + self.priority_add) & 7)
    }

    fn set_input(&mut self, irq: u8, level: bool) {
        let mask = 1u8 << (irq & 7);
        if self.elcr & mask != 0 {
            if level {
                self.irr |= mask;
            } else {
                self.irr &= !mask;
            }
        } else if level && self.last_irr & mask == 0 {
            self.irr |= mask;
        }
        if level {
            self.last_irr |= mask;
        } else {
            self.last_irr &= !mask;
        }
    }

    fn intack(&mut self, irq: u8) {
        let mask = 1u8 << (irq & 7);
        if self.auto_eoi {
            if self.rotate_on_auto_eoi {
                self.priority_add = (irq + 1) & 7;
            }
        } else {
            self.isr |= mask;
        }
        // A level-triggered request stays in the IRR while its line is high.
        if self.elcr & mask == 0 {
            self.irr &= !mask;
        }
    }

    fn write_command(&mut self, v: u8) {
        if v & 0x10 != 0 {
            self.init_reset();
            self.init_state = 1;
            self.init4 = v & 0x01 != 0;
            self.single_mode = v & 0x02 != 0;
        } else if v & 0x08 != 0 {
            if v & 0x04 != 0 {
                self.poll = true;
            }
            if v & 0x02 != 0 {
                self.read_isr = v & 0x01 != 0;
            }
            if v & 0x40 != 0 {
                self.special_mask = v & 0x20 != 0;
            }
        } else {
            let irq = v & 7;
            match v >> 5 {
                0 => self.rotate_on_auto_eoi = false,
                4 => self.rotate_on_auto_eoi = true,
                cmd @ (1 | 5) => {
                    let priority = self.priority(self.isr);
                    if priority != 8 {
                        let irq = (priority + self.priority_add) & 7;
                        self.isr &= !(1 << irq);
                        if cmd == 5 {
                            self.priority_add = (irq + 1) & 7;
                        }
                    }
                }
                3 => self.isr &= !(1 << irq),
                6 => self.priority_add = (irq + 1) & 7,
                7 => {
                    self.isr &= !(1 << irq);
                    self.priority_add = (irq + 1) & 7;
                }
                _ => {}
            }
        }
    }

    fn write_data(&mut self, v: u8) {
        self.init_state = match self.init_state {
            1 => {
                self.irq_base = v & 0xf8;
                match (self.single_mode, self.init4) {
                    (false, _) => 2,
                    (true, true) => 3,
                    (true, false) => 0,
                }
            }
            2 => {
                if self.init4 {
                    3
                } else {
                    0
                }
            }
            3 => {
                self.special_fully_nested = v & 0x10 != 0;
                self.auto_eoi = v & 0x02 != 0;
                0
            }
            _ => {
                self.imr = v;
                0
            }
        };
    }

    fn read(&mut self, a0: bool) -> u8 {
        if self.poll {
            self.poll = false;
            return match self.pending() {
                Some(irq) => {
                    self.intack(irq);
                    0x80 | irq
                }
                None => 0,
            };
        }
        match (a0, self.read_isr) {
            (false, false) => self.irr,
            (false, true) => self.isr,
            (true, _) => self.imr,
        }
    }
}

/// The master/slave 8259A pair.
pub struct Pic {
    /// Master, slave.
    chips: [Chip; 2],
    output: bool,
    sink: Arc<dyn ExtIntSink>,
}

impl Pic {
    /// A pair whose INTR output goes to `sink`.
    pub fn new(sink: Arc<dyn ExtIntSink>) -> Self {
        Self {
            chips: [Chip::new(true), Chip::new(false)],
            output: false,
            sink,
        }
    }

    /// The bus entries of `pic`: master (0x20, 2 ports), slave (0xa0, 2), ELCR (0x4d0, 2).
    pub fn bus_entries(pic: &Arc<Mutex<Pic>>) -> Vec<BusEntry> {
        [
            (PicPortKind::Master, MASTER_PORT),
            (PicPortKind::Slave, SLAVE_PORT),
            (PicPortKind::Elcr, ELCR_PORT),
        ]
        .into_iter()
        .map(|(kind, base)| {
            BusEntry::new(
                PicPort {
                    pic: pic.clone(),
                    kind,
                },
                base,
                2,
            )
        })
        .collect()
    }

    /// Drives input `irq` (0-15) to `level`.
    pub fn set_irq(&mut self, irq: u8, level: bool) -> Result<(), PicError> {
        if irq >= PIC_IRQS {
            return Err(PicError::InvalidIrq(irq));
        }
        self.chips[usize::from(irq / 8)].set_input(irq % 8, level);
        self.update();
        Ok(())
    }

    /// Whether INTR is asserted: the CPU should acknowledge an interrupt.
    pub fn has_interrupt(&self) -> bool {
        self.output
    }

    /// The CPU's interrupt acknowledge: the vector to deliver, with the ISR and IRR updated.
    /// `None` if INTR is low. If the slave's request vanished between its raise and the
    /// acknowledge, the slave answers with its spurious vector (IRQ 15).
    pub fn acknowledge(&mut self) -> Option<u8> {
        let irq = self.chips[0].pending()?;
        let vector = if irq == CASCADE_IRQ {
            let slave = &mut self.chips[1];
            let slave_irq = match slave.pending() {
                Some(s) => {
                    slave.intack(s);
                    s
                }
                None => 7,
            };
            slave.irq_base | slave_irq
        } else {
            self.chips[0].irq_base | irq
        };
        self.chips[0].intack(irq);
        self.update();
        Some(vector)
    }

    /// The ELCR bits, master in the low byte.
    pub fn elcr(&self) -> u16 {
        u16::from_le_bytes([self.chips[0].elcr, self.chips[1].elcr])
    }

    /// Propagates the slave's output to the master's IRQ 2 and the master's to INTR.
    fn update(&mut self) {
        let slave_out = self.chips[1].pending().is_some();
        self.chips[0].set_input(CASCADE_IRQ, slave_out);
        let output = self.chips[0].pending().is_some();
        if output && !self.output {
            self.sink.raise();
        }
        self.output = output;
    }

    fn read_port(&mut self, kind: PicPortKind, offset: u64) -> u8 {
        let value = match (kind, offset) {
            (PicPortKind::Master, 0 | 1) => self.chips[0].read(offset == 1),
            (PicPortKind::Slave, 0 | 1) => self.chips[1].read(offset == 1),
            (PicPortKind::Elcr, 0 | 1) => self.chips[usize::from(offset == 1)].elcr,
            _ => return 0xff,
        };
        // A poll read acknowledges.
        self.update();
        value
    }

    fn write_port(&mut self, kind: PicPortKind, offset: u64, v: u8) {
        let chip = match (kind, offset) {
            (PicPortKind::Master, 0 | 1) => &mut self.chips[0],
            (PicPortKind::Slave, 0 | 1) => &mut self.chips[1],
            (PicPortKind::Elcr, 0 | 1) => {
                let chip = &mut self.chips[usize::from(offset == 1)];
                chip.elcr = v & chip.elcr_mask;
                return;
            }
            _ => return,
        };
        if offset == 0 {
            chip.write_command(v);
        } else {
            chip.write_data(v);
        }
        self.update();
    }
}

/// Which port range of the pair a [`PicPort`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PicPortKind {
    Master,
    Slave,
    Elcr,
}

/// One port range of the shared [`Pic`].
struct PicPort {
    pic: Arc<Mutex<Pic>>,
    kind: PicPortKind,
}

impl BusDevice for PicPort {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let mut pic = lock(&self.pic);
        read_bytes(offset, data, |o| pic.read_port(self.kind, o));
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let mut pic = lock(&self.pic);
        write_bytes(offset, data, |o, v| pic.write_port(self.kind, o, v));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::Bus;
    use crate::testing::MockExtInt;

    struct Machine {
        bus: Bus,
        pic: Arc<Mutex<Pic>>,
        intr: Arc<MockExtInt>,
    }

    impl Machine {
        fn new() -> Self {
            let intr = Arc::new(MockExtInt::default());
            let pic = Arc::new(Mutex::new(Pic::new(intr.clone())));
            let mut bus = Bus::new();
            for e in Pic::bus_entries(&pic) {
                bus.insert(e.device, e.base, e.len).unwrap();
            }
            Self { bus, pic, intr }
        }

        /// Linux's init sequence: master at 0x30, slave at 0x38, all unmasked.
        fn init(&self, icw4: u8) {
            for (port, base, cascade) in [(0x20, 0x30, 0x04), (0xa0, 0x38, 0x02)] {
                self.bus.write(port, &[0x11]);
                self.bus.write(port + 1, &[base]);
                self.bus.write(port + 1, &[cascade]);
                self.bus.write(port + 1, &[icw4]);
                self.bus.write(port + 1, &[0x00]);
            }
        }

        fn inb(&self, port: u64) -> u8 {
            let mut b = [0];
            self.bus.read(port, &mut b);
            b[0]
        }

        fn set_irq(&self, irq: u8, level: bool) {
            lock(&self.pic).set_irq(irq, level).unwrap();
        }

        fn ack(&self) -> Option<u8> {
            lock(&self.pic).acknowledge()
        }
    }

    #[test]
    fn master_irq_acknowledges_base_plus_irq_and_eoi_clears_isr() {
        let m = Machine::new();
        m.init(0x01);
        m.set_irq(1, true);
        assert_eq!(m.intr.raises(), 1);
        assert_eq!(m.ack(), Some(0x31));
        m.bus.write(0x20, &[0x0b]);
        assert_eq!(m.inb(0x20), 0x02, "ISR after acknowledge");
        m.bus.write(0x20, &[0x20]);
        assert_eq!(m.inb(0x20), 0x00, "ISR after EOI");
        assert!(!lock(&m.pic).has_interrupt());
    }

    #[test]
    fn slave_irq_cascades_through_irq2() {
        let m = Machine::new();
        m.init(0x01);
        m.set_irq(12, true);
        assert!(lock(&m.pic).has_interrupt());
        assert_eq!(m.ack(), Some(0x3c));
        m.bus.write(0xa0, &[0x0b]);
        m.bus.write(0x20, &[0x0b]);
        assert_eq!((m.inb(0xa0), m.inb(0x20)), (0x10, 0x04));
        m.bus.write(0xa0, &[0x20]);
        m.bus.write(0x20, &[0x20]);
        assert_eq!((m.inb(0xa0), m.inb(0x20)), (0, 0));
    }

    #[test]
    fn priority_and_in_service_block_lower_irqs() {
        let m = Machine::new();
        m.init(0x01);
        m.set_irq(3, true);
        m.set_irq(1, true);
        assert_eq!(m.ack(), Some(0x31));
        assert_eq!(m.ack(), None, "IRQ 3 must wait for IRQ 1's EOI");
        m.bus.write(0x20, &[0x61]); // Specific EOI for IRQ 1.
        assert_eq!(m.ack(), Some(0x33));
    }

    #[test]
    fn masked_irq_waits_for_unmask() {
        let m = Machine::new();
        m.init(0x01);
        m.bus.write(0x21, &[0x10]);
        m.set_irq(4, true);
        assert_eq!(m.ack(), None);
        assert_eq!(m.inb(0x21), 0x10);
        m.bus.write(0x21, &[0x00]);
        assert_eq!(m.ack(), Some(0x34));
    }

    #[test]
    fn edge_input_needs_a_new_edge_but_level_input_stays_pending() {
        let m = Machine::new();
        m.init(0x03); // Auto-EOI.
        m.set_irq(5, true);
        assert_eq!(m.ack(), Some(0x35));
        assert_eq!(m.ack(), None, "edge input held high fired twice");
        m.bus.write(0x4d0, &[0x20]);
        m.set_irq(5, true);
        assert_eq!(m.ack(), Some(0x35));
        assert_eq!(
            m.ack(),
            Some(0x35),
            "level input held high must stay pending"
        );
        m.set_irq(5, false);
        assert_eq!(m.ack(), None);
    }

    #[test]
    fn elcr_keeps_irq0_1_2_edge() {
        let m = Machine::new();
        m.bus.write(0x4d0, &[0xff, 0xff]);
        assert_eq!((m.inb(0x4d0), m.inb(0x4d1)), (0xf8, 0xde));
    }

    #[test]
    fn poll_mode_returns_and_acknowledges_the_irq() {
        let m = Machine::new();
        m.init(0x01);
        m.set_irq(6, true);
        m.bus.write(0x20, &[0x0c]);
        assert_eq!(m.inb(0x20), 0x86);
        m.bus.write(0x20, &[0x0c]);
        assert_eq!(m.inb(0x20), 0x00);
        m.bus.write(0x20, &[0x0b]);
        assert_eq!(m.inb(0x20), 0x40);
    }

    #[test]
    fn vanished_slave_request_gives_spurious_irq15() {
        let m = Machine::new();
        m.init(0x01);
        m.set_irq(9, true);
        // The guest masks the slave input after INTR rose but before the acknowledge.
        m.bus.write(0xa1, &[0x02]);
        assert_eq!(m.ack(), Some(0x3f));
        m.bus.write(0xa0, &[0x0b]);
        assert_eq!(
            m.inb(0xa0),
            0x00,
            "a spurious IRQ must not be put in service"
        );
    }

    #[test]
    fn rotation_on_eoi_changes_priority() {
        let m = Machine::new();
        m.init(0x01);
        m.set_irq(0, true);
        assert_eq!(m.ack(), Some(0x30));
        m.bus.write(0x20, &[0xa0]); // Rotate on non-specific EOI: IRQ 0 becomes lowest.
        m.set_irq(0, false);
        m.set_irq(0, true);
        m.set_irq(7, true);
        assert_eq!(m.ack(), Some(0x37));
    }

    #[test]
    fn garbage_writes_and_inputs_do_not_panic() {
        let m = Machine::new();
        for v in 0..=255u8 {
            for port in [0x20, 0x21, 0xa0, 0xa1, 0x4d0, 0x4d1] {
                m.bus.write(port, &[v]);
                m.inb(port);
            }
            m.ack();
        }
        m.bus.write(0x20, &[0xff, 0xff]);
        assert_eq!(
            lock(&m.pic).set_irq(16, true),
            Err(PicError::InvalidIrq(16))
        );
        let mut buf = [0; 4];
        lock(&m.pic).read_port(PicPortKind::Master, u64::MAX);
        m.bus.read(0x20, &mut buf[..2]);
    }
}
