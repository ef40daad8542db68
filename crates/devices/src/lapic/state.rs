//! The local APIC's snapshot state: every register, the 256-bit ISR, TMR and IRR, the pending
//! NMI, INIT and start-up IPI, and the timer.
//!
//! The timer is saved relative to the APIC's clock: the ticks counted since the initial count
//! was written and the nanoseconds until the next interrupt. A restored timer counts on from
//! there at the restoring clock's `now`, whatever that clock's origin, and the wake-up is armed
//! again.
//!
//! The outbox (IPIs and EOIs waiting for the owner) is not saved: the owner drains it after every
//! access, so it is empty once the vCPUs are paused. A restore empties it.

use serde::{Deserialize, Serialize};

use super::device::{
    BASE_ADDRESS, BASE_BSP, BASE_ENABLE, BASE_X2APIC, Bits256, ESR_ILLEGAL_REGISTER,
    ESR_RECEIVE_ILLEGAL_VECTOR, ESR_SEND_ILLEGAL_VECTOR, ICR_WRITABLE, LVT_COUNT, LVT_TIMER,
    LVT_WRITABLE, LocalApic, SVR_WRITABLE, TIMER_PERIODIC,
};
use super::timer::ApicTimer;
use crate::state::{StateError, ensure};

const DEVICE: &str = "lapic";
const ESR_BITS: u32 = ESR_SEND_ILLEGAL_VECTOR | ESR_RECEIVE_ILLEGAL_VECTOR | ESR_ILLEGAL_REGISTER;

/// The APIC timer, relative to the clock at the save.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct LapicTimerState {
    /// The initial count register (0: stopped).
    pub initial_count: u32,
    /// The divide configuration register (bits 0, 1 and 3).
    pub divide_config: u32,
    /// Ticks counted since the initial count was written (0 when stopped).
    pub counted_ticks: u64,
    /// Nanoseconds until the next interrupt is due (0: due already), if one is.
    pub next_irq_in_ns: Option<u64>,
}

/// One local APIC.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct LapicState {
    /// IA32_APIC_BASE.
    pub apic_base: u64,
    /// The ID register (ID in bits 31:24).
    pub id: u32,
    /// The task priority register.
    pub tpr: u32,
    /// The logical destination register (bits 31:24).
    pub ldr: u32,
    /// The destination format register (model in bits 31:28, the rest ones).
    pub dfr: u32,
    /// The spurious-interrupt vector register.
    pub svr: u32,
    /// The in-service register, eight 32-bit words, vector 0 in bit 0 of word 0.
    pub isr: [u32; 8],
    /// The trigger-mode register, as `isr`.
    pub tmr: [u32; 8],
    /// The interrupt request register, as `isr`.
    pub irr: [u32; 8],
    /// The error status register as last latched.
    pub esr: u32,
    /// Errors seen since the last latch.
    pub esr_pending: u32,
    /// The interrupt command register (high dword in bits 63:32).
    pub icr: u64,
    /// The six LVT entries: timer, thermal, performance counters, LINT0, LINT1, error.
    pub lvt: Vec<u32>,
    /// The timer.
    pub timer: LapicTimerState,
    /// An NMI waits for the CPU.
    pub nmi_pending: bool,
    /// An INIT waits for the CPU.
    pub init_pending: bool,
    /// A start-up IPI's vector waits for the CPU.
    pub sipi_vector: Option<u8>,
}

impl LocalApic {
    /// The APIC's state at its clock's current time.
    pub fn save(&self) -> LapicState {
        let now = self.clock.now_ns();
        let t = &self.timer;
        LapicState {
            apic_base: self.base,
            id: self.id,
            tpr: self.tpr,
            ldr: self.ldr,
            dfr: self.dfr,
            svr: self.svr,
            isr: self.isr.0,
            tmr: self.tmr.0,
            irr: self.irr.0,
            esr: self.esr,
            esr_pending: self.esr_pending,
            icr: self.icr,
            lvt: self.lvt.to_vec(),
            timer: LapicTimerState {
                initial_count: t.initial,
                divide_config: t.divide_config,
                counted_ticks: t.start_ns.map_or(0, |start| t.ticks(start, now)),
                next_irq_in_ns: t.next_irq_ns.map(|due| due.saturating_sub(now)),
            },
            nmi_pending: self.nmi_pending,
            init_pending: self.init_pending,
            sipi_vector: self.sipi_vector,
        }
    }

    /// Restores `s`: the timer counts on from the clock's current time and its wake-up is armed.
    /// Nothing is delivered.
    pub fn restore(&mut self, s: &LapicState) -> Result<(), StateError> {
        let allowed = BASE_ADDRESS | BASE_ENABLE | BASE_BSP;
        ensure(s.apic_base & !allowed == 0, DEVICE, || {
            let x2apic = if s.apic_base & BASE_X2APIC != 0 {
                " (x2APIC mode is not modelled)"
            } else {
                ""
            };
            format!(
                "IA32_APIC_BASE {:#x} sets reserved bits{x2apic}",
                s.apic_base
            )
        })?;
        for (name, v) in [("ID", s.id), ("LDR", s.ldr)] {
            ensure(v & 0x00ff_ffff == 0, DEVICE, || {
                format!("{name} {v:#010x} sets reserved bits")
            })?;
        }
        ensure(s.dfr | 0xf000_0000 == u32::MAX, DEVICE, || {
            format!("DFR {:#010x}: bits 27:0 read as ones", s.dfr)
        })?;
        ensure(s.tpr <= 0xff && s.svr & !SVR_WRITABLE == 0, DEVICE, || {
            format!("TPR {:#x} or SVR {:#x} sets reserved bits", s.tpr, s.svr)
        })?;
        ensure((s.esr | s.esr_pending) & !ESR_BITS == 0, DEVICE, || {
            format!("ESR {:#x}/{:#x}: errors never raised", s.esr, s.esr_pending)
        })?;
        let icr_ok = (s.icr as u32) & !ICR_WRITABLE == 0 && (s.icr >> 32) & 0x00ff_ffff == 0;
        ensure(icr_ok, DEVICE, || {
            format!("ICR {:#018x} sets reserved bits", s.icr)
        })?;
        for (name, bits) in [("ISR", &s.isr), ("TMR", &s.tmr), ("IRR", &s.irr)] {
            ensure(bits[0] & 0xffff == 0, DEVICE, || {
                format!("{name} holds vectors below 16, which are never accepted")
            })?;
        }
        let lvt: [u32; LVT_COUNT] =
            s.lvt
                .as_slice()
                .try_into()
                .map_err(|_| StateError::Invalid {
                    device: DEVICE,
                    what: format!("{} LVT entries, not {LVT_COUNT}", s.lvt.len()),
                })?;
        for (i, (&e, &writable)) in lvt.iter().zip(&LVT_WRITABLE).enumerate() {
            ensure(e & !writable == 0, DEVICE, || {
                format!("LVT entry {i} ({e:#010x}) sets reserved bits")
            })?;
        }
        let t = &s.timer;
        ensure(t.divide_config & !0xb == 0, DEVICE, || {
            format!("timer divide configuration {:#x}", t.divide_config)
        })?;
        ensure(
            t.initial_count != 0 || t.next_irq_in_ns.is_none(),
            DEVICE,
            || "a stopped timer has an interrupt due".into(),
        )?;

        let now = self.clock.now_ns();
        let running = t.initial_count != 0;
        self.base = s.apic_base;
        self.id = s.id;
        self.tpr = s.tpr;
        self.ldr = s.ldr;
        self.dfr = s.dfr;
        self.svr = s.svr;
        self.isr = Bits256(s.isr);
        self.tmr = Bits256(s.tmr);
        self.irr = Bits256(s.irr);
        self.esr = s.esr;
        self.esr_pending = s.esr_pending;
        self.icr = s.icr;
        self.lvt = lvt;
        self.timer = ApicTimer {
            initial: t.initial_count,
            divide_config: t.divide_config,
            periodic: lvt[LVT_TIMER] & TIMER_PERIODIC != 0,
            start_ns: running.then_some(now),
            base_ticks: if running { t.counted_ticks } else { 0 },
            next_irq_ns: t.next_irq_in_ns.map(|d| now.saturating_add(d)),
        };
        self.nmi_pending = s.nmi_pending;
        self.init_pending = s.init_pending;
        self.sipi_vector = s.sipi_vector;
        self.outbox.clear();
        self.rearm(now);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::bus::BusDevice;
    use crate::lapic::{DeliveryMode, Destination, Interrupt};
    use crate::testing::{MockClock, MockTimer};

    const T0: u64 = 5_000_000;
    /// The restoring process's clock: another origin.
    const T1: u64 = 123;

    fn apic(id: u8, now: u64) -> (LocalApic, Arc<MockClock>, Arc<MockTimer>) {
        let clock = Arc::new(MockClock::default());
        clock.set(now);
        let timer = Arc::new(MockTimer::default());
        (
            LocalApic::new(id, id == 0, clock.clone(), timer.clone()),
            clock,
            timer,
        )
    }

    fn rd(a: &mut LocalApic, reg: u64) -> u32 {
        let mut b = [0; 4];
        a.read(reg, &mut b);
        u32::from_le_bytes(b)
    }

    fn wr(a: &mut LocalApic, reg: u64, v: u32) {
        a.write(reg, &v.to_le_bytes());
    }

    fn fixed(vector: u8) -> Interrupt {
        Interrupt {
            vector,
            mode: DeliveryMode::Fixed,
            destination: Destination::Physical(1),
            level_triggered: false,
            assert: true,
            source: None,
        }
    }

    #[test]
    fn registers_vectors_and_a_running_timer_survive_restore() {
        let (mut a, clock, _) = apic(1, T0);
        wr(&mut a, 0xf0, 0x1ff);
        wr(&mut a, 0x80, 0x20);
        wr(&mut a, 0xd0, 0x0400_0000);
        wr(&mut a, 0x3e0, 0xb); // Divide by 1: one tick per nanosecond.
        wr(&mut a, 0x320, 0x40 | TIMER_PERIODIC);
        wr(&mut a, 0x380, 1_000_000);
        assert!(a.accept(&fixed(0x50)));
        a.acknowledge(0x50);
        assert!(a.accept(&fixed(0x61)));
        clock.set(T0 + 300_000);
        let saved = a.save();
        assert_eq!(saved.timer.counted_ticks, 300_000);
        assert_eq!(saved.timer.next_irq_in_ns, Some(700_000));

        let (mut b, clock, wakeup) = apic(1, T1);
        b.restore(&saved).unwrap();
        assert_eq!(b.save(), saved);
        assert_eq!(rd(&mut b, 0x390), 700_000, "current count");
        assert_eq!(wakeup.deadline(), Some(T1 + 700_000));
        assert_eq!(rd(&mut b, 0x80), 0x20);
        assert_eq!(rd(&mut b, 0xd0), 0x0400_0000);
        assert_eq!(
            b.pending_interrupt(),
            Some(0x61),
            "above the 0x50 in service"
        );
        clock.set(T1 + 700_000);
        assert!(b.expire(), "the timer fires on time");
        assert_eq!(
            wakeup.deadline(),
            Some(T1 + 1_700_000),
            "and stays periodic"
        );
        assert_eq!(rd(&mut b, 0x120), 1 << (0x50 - 64), "0x50 in service");
        wr(&mut b, 0xb0, 0); // EOI of 0x50.
        assert_eq!(rd(&mut b, 0x120), 0);
    }

    #[test]
    fn pending_init_and_startup_ipi_survive_restore() {
        let (mut a, _, _) = apic(2, T0);
        let mut init = fixed(0);
        init.mode = DeliveryMode::Init;
        init.destination = Destination::Physical(2);
        a.accept(&init);
        let mut sipi = init;
        sipi.mode = DeliveryMode::StartUp;
        sipi.vector = 0x9a;
        a.accept(&sipi);
        let saved = a.save();
        let (mut b, _, wakeup) = apic(2, T1);
        b.restore(&saved).unwrap();
        assert!(b.has_pending_init());
        assert_eq!(b.take_sipi(), Some(0x9a));
        assert_eq!(wakeup.deadline(), None, "no timer");
    }

    #[test]
    fn corrupt_states_are_refused_and_change_nothing() {
        let (mut a, _, _) = apic(0, T0);
        wr(&mut a, 0xf0, 0x1ff);
        let good = a.save();
        let cases: [fn(&mut LapicState); 11] = [
            |s| s.apic_base |= BASE_X2APIC,
            |s| s.apic_base |= 1 << 60,
            |s| s.id = 0x0100_0001,
            |s| s.dfr = 0,
            |s| s.svr = 0x1000,
            |s| s.esr = 1,
            |s| s.irr[0] = 1 << 3,
            |s| s.lvt[0] = 1 << 20,
            |s| s.lvt.push(0),
            |s| s.timer.divide_config = 4,
            |s| s.timer.next_irq_in_ns = Some(5),
        ];
        for corrupt in cases {
            let mut bad = good.clone();
            corrupt(&mut bad);
            assert!(matches!(
                a.restore(&bad),
                Err(StateError::Invalid {
                    device: "lapic",
                    ..
                })
            ));
        }
        assert_eq!(a.save(), good);
    }

    #[test]
    fn extreme_timer_values_do_not_panic() {
        let (mut a, clock, _) = apic(0, T0);
        let mut s = a.save();
        s.timer = LapicTimerState {
            initial_count: u32::MAX,
            divide_config: 0xa,
            counted_ticks: u64::MAX,
            next_irq_in_ns: Some(u64::MAX),
        };
        s.lvt[0] = TIMER_PERIODIC;
        a.restore(&s).unwrap();
        clock.set(u64::MAX);
        rd(&mut a, 0x390);
        a.expire();
        wr(&mut a, 0x3e0, 0x3);
    }
}
