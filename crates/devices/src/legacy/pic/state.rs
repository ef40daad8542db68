//! The PIC pair's snapshot state: each chip's registers, initialisation progress and input
//! levels.
//!
//! Restore the interrupt controllers before the devices that drive their inputs: a device that
//! drives its restored level again then makes no new edge. A restored pair whose INTR output is
//! high tells its [`ExtIntSink`](crate::interrupt::ExtIntSink) again, so the CPU comes to
//! acknowledge.

use serde::{Deserialize, Serialize};

use super::{Chip, Pic};
use crate::state::{StateError, ensure};

const DEVICE: &str = "pic";

/// One 8259A.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct PicChipState {
    /// Input levels as last driven, bit per input (for edge detection).
    pub input_levels: u8,
    /// Interrupt request register.
    pub irr: u8,
    /// Interrupt mask register.
    pub imr: u8,
    /// In-service register.
    pub isr: u8,
    /// Rotation: the lowest-priority input is `priority_add - 1` (0-7).
    pub priority_add: u8,
    /// ICW2: the vector base (a multiple of 8).
    pub irq_base: u8,
    /// OCW3: reads of the command port return the ISR (else the IRR).
    pub read_isr: bool,
    /// OCW3: the next read is a poll.
    pub poll: bool,
    /// OCW3: special mask mode.
    pub special_mask: bool,
    /// 0 = operational, 1-3 = waiting for ICW2-ICW4.
    pub init_state: u8,
    /// ICW1: an ICW4 follows.
    pub init4: bool,
    /// ICW1: single (no cascade).
    pub single_mode: bool,
    /// ICW4: automatic EOI.
    pub auto_eoi: bool,
    /// OCW2: rotate on automatic EOI.
    pub rotate_on_auto_eoi: bool,
    /// ICW4: special fully nested mode.
    pub special_fully_nested: bool,
    /// Edge/level control register (1 = level).
    pub elcr: u8,
}

/// The master/slave pair.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct PicState {
    /// The master (IRQs 0-7).
    pub master: PicChipState,
    /// The slave (IRQs 8-15).
    pub slave: PicChipState,
}

impl Chip {
    fn save(&self) -> PicChipState {
        PicChipState {
            input_levels: self.last_irr,
            irr: self.irr,
            imr: self.imr,
            isr: self.isr,
            priority_add: self.priority_add,
            irq_base: self.irq_base,
            read_isr: self.read_isr,
            poll: self.poll,
            special_mask: self.special_mask,
            init_state: self.init_state,
            init4: self.init4,
            single_mode: self.single_mode,
            auto_eoi: self.auto_eoi,
            rotate_on_auto_eoi: self.rotate_on_auto_eoi,
            special_fully_nested: self.special_fully_nested,
            elcr: self.elcr,
        }
    }

    /// The chip `s` describes, with this chip's wiring; checked, not applied.
    fn restored(&self, s: &PicChipState, name: &str) -> Result<Chip, StateError> {
        ensure(s.init_state <= 3, DEVICE, || {
            format!("{name} initialisation step {}", s.init_state)
        })?;
        ensure(s.priority_add <= 7, DEVICE, || {
            format!("{name} rotation {}", s.priority_add)
        })?;
        ensure(s.irq_base & 7 == 0, DEVICE, || {
            format!(
                "{name} vector base {:#x} is not a multiple of 8",
                s.irq_base
            )
        })?;
        ensure(s.elcr & !self.elcr_mask == 0, DEVICE, || {
            format!("{name} ELCR {:#04x} sets edge-only inputs", s.elcr)
        })?;
        Ok(Chip {
            last_irr: s.input_levels,
            irr: s.irr,
            imr: s.imr,
            isr: s.isr,
            priority_add: s.priority_add,
            irq_base: s.irq_base,
            read_isr: s.read_isr,
            poll: s.poll,
            special_mask: s.special_mask,
            init_state: s.init_state,
            init4: s.init4,
            single_mode: s.single_mode,
            auto_eoi: s.auto_eoi,
            rotate_on_auto_eoi: s.rotate_on_auto_eoi,
            special_fully_nested: s.special_fully_nested,
            elcr: s.elcr,
            elcr_mask: self.elcr_mask,
            is_master: self.is_master,
        })
    }
}

impl Pic {
    /// The pair's state.
    pub fn save(&self) -> PicState {
        PicState {
            master: self.chips[0].save(),
            slave: self.chips[1].save(),
        }
    }

    /// Restores `s`. If INTR is high afterwards, the sink is told, as when it rises.
    pub fn restore(&mut self, s: &PicState) -> Result<(), StateError> {
        let master = self.chips[0].restored(&s.master, "master")?;
        let slave = self.chips[1].restored(&s.slave, "slave")?;
        self.chips = [master, slave];
        self.output = false;
        self.update();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::testing::MockExtInt;

    fn pic() -> (Pic, Arc<MockExtInt>) {
        let intr = Arc::new(MockExtInt::default());
        (Pic::new(intr.clone()), intr)
    }

    /// Linux's initialisation: master at 0x30, slave at 0x38, all unmasked, normal EOI.
    fn init(p: &mut Pic) {
        for (chip, base, cascade) in [(0usize, 0x30, 0x04), (1, 0x38, 0x02)] {
            let c = &mut p.chips[chip];
            c.write_command(0x11);
            for v in [base, cascade, 0x01, 0x00] {
                c.write_data(v);
            }
        }
    }

    #[test]
    fn irq_waiting_behind_one_in_service_is_delivered_after_restore() {
        let (mut a, _) = pic();
        init(&mut a);
        a.chips[0].write_data(0x40); // Mask IRQ 6.
        a.set_irq(3, true).unwrap();
        assert_eq!(a.acknowledge(), Some(0x33));
        a.set_irq(5, true).unwrap();
        a.set_irq(6, true).unwrap();
        assert_eq!(a.acknowledge(), None, "IRQ 5 waits for IRQ 3's EOI");
        let saved = a.save();

        let (mut b, intr) = pic();
        b.restore(&saved).unwrap();
        assert_eq!(b.save(), saved);
        assert_eq!(intr.raises(), 0, "nothing to acknowledge yet");
        b.chips[0].write_command(0x20); // Non-specific EOI.
        b.update();
        assert_eq!(intr.raises(), 1);
        assert_eq!(b.acknowledge(), Some(0x35));
        b.set_irq(3, true).unwrap();
        assert_eq!(b.acknowledge(), None, "IRQ 3 held high makes no new edge");
    }

    #[test]
    fn pending_output_raises_the_sink_on_restore() {
        let (mut a, _) = pic();
        init(&mut a);
        a.set_irq(12, true).unwrap();
        let saved = a.save();
        let (mut b, intr) = pic();
        b.restore(&saved).unwrap();
        assert_eq!(intr.raises(), 1);
        assert!(b.has_interrupt());
        assert_eq!(b.acknowledge(), Some(0x3c));
    }

    #[test]
    fn out_of_range_fields_are_refused_and_change_nothing() {
        let (mut p, _) = pic();
        init(&mut p);
        let good = p.save();
        let cases: [fn(&mut PicState); 4] = [
            |s| s.master.init_state = 4,
            |s| s.slave.priority_add = 8,
            |s| s.master.irq_base = 0x31,
            |s| s.master.elcr = 0x01,
        ];
        for corrupt in cases {
            let mut bad = good.clone();
            corrupt(&mut bad);
            assert!(matches!(
                p.restore(&bad),
                Err(StateError::Invalid { device: "pic", .. })
            ));
        }
        assert_eq!(p.save(), good);
    }
}
