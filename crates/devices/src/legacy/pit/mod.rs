//! The 8254 programmable interval timer (ports 0x40-0x43) and system control port B (0x61).
//!
//! Three channels count down at 1.193182 MHz. Counter values and OUT levels are computed from
//! a [`Clock`] when the guest reads them: there is no thread and no busy loop. Channel 0's OUT
//! drives ISA IRQ 0: the PIT arms a [`Timer`] for its next rising edge, and the VMM calls
//! [`Pit::expire`] when the deadline passes; the PIT pulses the IRQ line and arms the timer for
//! the next edge. If the host was late by several periods, one interrupt is delivered and the
//! next deadline stays in phase with the programmed period. Periodic interrupts are spaced at
//! least [`MIN_IRQ_INTERVAL_NS`] apart, so a guest cannot make the host fire a timer every
//! 838 ns (as KVM's PIT also limits).
//!
//! Modes 0-5 are modelled, with 6 and 7 as aliases of 2 and 3; BCD counting is supported. A
//! new count takes effect immediately in every mode (the datasheet defers it to the end of the
//! period in modes 2 and 3). Channels 0 and 1 have their gate tied high; channel 2's gate is
//! bit 0 of port 0x61, whose bit 5 reads channel 2's OUT exactly as the [`Clock`] says, which
//! Linux relies on to calibrate the TSC. Bit 4 of port 0x61 (the DRAM refresh toggle) flips on
//! every read.
//!
//! Its snapshot state is [`PitState`], with times relative to the clock: a restored channel
//! continues counting from the count it had.

use std::sync::{Arc, Mutex};

mod channel;
mod state;

use channel::Channel;
#[cfg(test)]
use channel::ns_for_ticks;
pub use state::{PitByte, PitChannelState, PitLatch, PitState};

use super::{BusEntry, lock, read_bytes, write_bytes};
use crate::bus::BusDevice;
use crate::clock::{Clock, Timer};
use crate::interrupt::IrqLine;

/// The PIT's first port.
pub const PIT_PORT: u64 = 0x40;
/// The PIT's number of ports.
pub const PIT_LEN: u64 = 4;
/// System control port B.
pub const PORT_B: u64 = 0x61;
/// The PIT's input clock.
pub const PIT_FREQUENCY_HZ: u64 = 1_193_182;
/// The shortest interval between two periodic IRQ 0 interrupts.
pub const MIN_IRQ_INTERVAL_NS: u64 = 50_000;

const CONTROL: u64 = 3;

/// The 8254 PIT and port 0x61.
pub struct Pit {
    channels: [Channel; 3],
    /// Port 0x61 bits 1-3 as written (speaker data, parity and channel check disables).
    port_b: u8,
    refresh: bool,
    clock: Arc<dyn Clock>,
    timer: Arc<dyn Timer>,
    irq0: Arc<dyn IrqLine>,
}

impl Pit {
    /// A PIT reading time from `clock`, arming `timer` for channel 0's next interrupt and
    /// pulsing `irq0` then.
    pub fn new(clock: Arc<dyn Clock>, timer: Arc<dyn Timer>, irq0: Arc<dyn IrqLine>) -> Self {
        // Channels 0 and 1 have their gate tied high; channel 2's starts low (port 0x61 = 0).
        let channels = [Channel::new(true), Channel::new(true), Channel::new(false)];
        Self {
            channels,
            port_b: 0,
            refresh: false,
            clock,
            timer,
            irq0,
        }
    }

    /// The bus entries of `pit`: the PIT at 0x40 (4 ports) and port B at 0x61 (1 port).
    pub fn bus_entries(pit: &Arc<Mutex<Pit>>) -> Vec<BusEntry> {
        vec![
            BusEntry::new(
                PitPort {
                    pit: pit.clone(),
                    port_b: false,
                },
                PIT_PORT,
                PIT_LEN,
            ),
            BusEntry::new(
                PitPort {
                    pit: pit.clone(),
                    port_b: true,
                },
                PORT_B,
                1,
            ),
        ]
    }

    /// Called by the VMM when the deadline given to the [`Timer`] has passed: pulses IRQ 0 if
    /// channel 0's OUT rose since the last interrupt, and arms the timer for the next one.
    /// Calling it early or twice is harmless.
    pub fn expire(&mut self) {
        let now = self.clock.now_ns();
        if self.channels[0].take_irq(now) {
            self.irq0.pulse();
        }
        self.rearm(now);
    }

    fn rearm(&self, now: u64) {
        let ch = &self.channels[0];
        let deadline = ch.irq_deadline().map(|at| {
            if ch.periodic() {
                at.max(now.saturating_add(MIN_IRQ_INTERVAL_NS))
            } else {
                at
            }
        });
        self.timer.arm(deadline);
    }

    fn read_port(&mut self, offset: u64) -> u8 {
        let now = self.clock.now_ns();
        match self.channels.get_mut(offset as usize) {
            Some(ch) if offset < CONTROL => ch.read_data(now),
            _ => 0xff,
        }
    }

    fn write_port(&mut self, offset: u64, v: u8) {
        let now = self.clock.now_ns();
        match offset {
            0..=2 => {
                let loaded = self.channels[offset as usize].write_data(v, now);
                if loaded && offset == 0 {
                    self.rearm(now);
                }
            }
            CONTROL => self.write_control(v, now),
            _ => {}
        }
    }

    fn write_control(&mut self, v: u8, now: u64) {
        let select = usize::from(v >> 6);
        if select == 3 {
            // Read-back: bit 5 clear latches counts, bit 4 clear latches status.
            for (i, ch) in self.channels.iter_mut().enumerate() {
                if v & (2 << i) == 0 {
                    continue;
                }
                if v & 0x20 == 0 {
                    ch.latch(now);
                }
                if v & 0x10 == 0 {
                    ch.latch_status(now);
                }
            }
        } else if v & 0x30 == 0 {
            self.channels[select].latch(now);
        } else {
            self.channels[select].write_control(v);
            if select == 0 {
                self.rearm(now);
            }
        }
    }

    fn read_port_b(&mut self) -> u8 {
        let now = self.clock.now_ns();
        self.refresh = !self.refresh;
        u8::from(self.channels[2].gate())
            | self.port_b
            | (u8::from(self.refresh) << 4)
            | (u8::from(self.channels[2].out(now)) << 5)
    }

    fn write_port_b(&mut self, v: u8) {
        let now = self.clock.now_ns();
        self.port_b = v & 0x0e;
        self.channels[2].set_gate(v & 1 != 0, now);
    }
}

/// One port range of the shared [`Pit`].
struct PitPort {
    pit: Arc<Mutex<Pit>>,
    port_b: bool,
}

impl BusDevice for PitPort {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let mut pit = lock(&self.pit);
        read_bytes(offset, data, |o| match (self.port_b, o) {
            (true, 0) => pit.read_port_b(),
            (true, _) => 0xff,
            (false, o) => pit.read_port(o),
        });
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let mut pit = lock(&self.pit);
        write_bytes(offset, data, |o, v| match (self.port_b, o) {
            (true, 0) => pit.write_port_b(v),
            (true, _) => {}
            (false, o) => pit.write_port(o, v),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::Bus;
    use crate::testing::{MockClock, MockIrq, MockTimer};

    /// A PIT on a port bus, with a mock clock, timer and IRQ line.
    pub(in crate::legacy::pit) struct Machine {
        pub(in crate::legacy::pit) bus: Bus,
        pub(in crate::legacy::pit) pit: Arc<Mutex<Pit>>,
        pub(in crate::legacy::pit) clock: Arc<MockClock>,
        pub(in crate::legacy::pit) timer: Arc<MockTimer>,
        pub(in crate::legacy::pit) irq: Arc<MockIrq>,
    }

    impl Machine {
        fn new() -> Self {
            Self::at(1_000_000_000)
        }

        /// A PIT whose clock starts at `origin`.
        pub(in crate::legacy::pit) fn at(origin: u64) -> Self {
            let clock = Arc::new(MockClock::default());
            clock.set(origin);
            let timer = Arc::new(MockTimer::default());
            let irq = Arc::new(MockIrq::default());
            let pit = Arc::new(Mutex::new(Pit::new(
                clock.clone(),
                timer.clone(),
                irq.clone(),
            )));
            let mut bus = Bus::new();
            for e in Pit::bus_entries(&pit) {
                bus.insert(e.device, e.base, e.len).unwrap();
            }
            Self {
                bus,
                pit,
                clock,
                timer,
                irq,
            }
        }

        pub(in crate::legacy::pit) fn outb(&self, port: u64, v: u8) {
            self.bus.write(port, &[v]);
        }

        pub(in crate::legacy::pit) fn inb(&self, port: u64) -> u8 {
            let mut b = [0];
            self.bus.read(port, &mut b);
            b[0]
        }

        /// Programs `channel` in `mode`, low-then-high access, with `count`.
        pub(in crate::legacy::pit) fn program(&self, channel: u8, mode: u8, count: u16) {
            self.outb(0x43, (channel << 6) | 0x30 | (mode << 1));
            let [lo, hi] = count.to_le_bytes();
            self.outb(0x40 + u64::from(channel), lo);
            self.outb(0x40 + u64::from(channel), hi);
        }

        pub(in crate::legacy::pit) fn read_count(&self, channel: u8) -> u16 {
            self.outb(0x43, channel << 6);
            let port = 0x40 + u64::from(channel);
            u16::from_le_bytes([self.inb(port), self.inb(port)])
        }

        fn expire_at(&self, ns: u64) {
            self.clock.set(ns);
            lock(&self.pit).expire();
        }
    }

    const T0: u64 = 1_000_000_000;

    #[test]
    fn mode2_arms_timer_one_period_ahead_and_expire_pulses_irq0() {
        let m = Machine::new();
        m.program(0, 2, 11932);
        let deadline = m.timer.deadline().expect("timer armed");
        assert!(
            (T0 + 10_000_000..T0 + 10_001_000).contains(&deadline),
            "{deadline}"
        );
        m.expire_at(deadline - 1);
        assert_eq!(m.irq.rises(), 0, "fired before the period ended");
        m.expire_at(deadline);
        assert_eq!(m.irq.rises(), 1);
        assert!(!m.irq.level(), "IRQ 0 must be pulsed, not left high");
        assert_eq!(m.timer.deadline(), Some(T0 + ns_for_ticks(2 * 11932)));
    }

    #[test]
    fn late_expire_coalesces_and_stays_in_phase() {
        let m = Machine::new();
        m.program(0, 2, 11932);
        m.expire_at(T0 + 55_000_000);
        assert_eq!(m.irq.rises(), 1);
        assert_eq!(m.timer.deadline(), Some(T0 + ns_for_ticks(6 * 11932)));
    }

    #[test]
    fn divisor_zero_means_65536() {
        let m = Machine::new();
        m.program(0, 3, 0);
        assert_eq!(m.timer.deadline(), Some(T0 + ns_for_ticks(65_536)));
        assert_eq!(m.read_count(0), 0);
    }

    #[test]
    fn mode0_fires_once_and_disarms() {
        let m = Machine::new();
        m.program(0, 0, 1193);
        let deadline = m.timer.deadline().unwrap();
        m.expire_at(deadline + 5_000_000);
        assert_eq!(m.irq.rises(), 1);
        assert_eq!(m.timer.deadline(), None);
        m.expire_at(deadline + 50_000_000);
        assert_eq!(m.irq.rises(), 1);
    }

    #[test]
    fn control_word_stops_channel0_interrupts() {
        let m = Machine::new();
        m.program(0, 2, 1000);
        m.outb(0x43, 0x34);
        assert_eq!(m.timer.deadline(), None);
    }

    #[test]
    fn counter_counts_down_with_the_clock_and_latch_freezes_it() {
        let m = Machine::new();
        m.program(0, 2, 1000);
        m.clock.set(T0 + ns_for_ticks(100));
        m.outb(0x43, 0x00);
        m.clock.set(T0 + ns_for_ticks(300));
        assert_eq!(u16::from_le_bytes([m.inb(0x40), m.inb(0x40)]), 900);
        assert_eq!(m.read_count(0), 700);
        m.clock.set(T0 + ns_for_ticks(1250));
        assert_eq!(m.read_count(0), 750, "mode 2 reloads");
    }

    #[test]
    fn read_back_latches_status_then_count() {
        let m = Machine::new();
        m.program(2, 0, 500);
        m.outb(0x61, 0x01);
        m.outb(0x43, 0xc8); // Latch count and status of channel 2.
        assert_eq!(m.inb(0x42), 0x30, "OUT low, count loaded, lohi, mode 0");
        assert_eq!(u16::from_le_bytes([m.inb(0x42), m.inb(0x42)]), 500);
    }

    #[test]
    fn channel2_out_on_port_0x61_rises_after_the_count() {
        let m = Machine::new();
        // Linux's TSC calibration: gate high, speaker off, mode 0.
        m.outb(0x61, 0x01);
        m.program(2, 0, 1193);
        assert_eq!(m.inb(0x61) & 0x20, 0);
        m.clock.set(T0 + ns_for_ticks(1193) - 1);
        assert_eq!(m.inb(0x61) & 0x20, 0, "OUT rose early");
        m.clock.set(T0 + ns_for_ticks(1193));
        assert_eq!(m.inb(0x61) & 0x20, 0x20);
        assert_eq!(m.irq.rises(), 0, "channel 2 must not drive IRQ 0");
    }

    #[test]
    fn channel2_gate_low_holds_the_count() {
        let m = Machine::new();
        m.program(2, 0, 1000);
        m.clock.set(T0 + ns_for_ticks(500));
        assert_eq!(m.read_count(2), 1000, "counted with gate low");
        m.outb(0x61, 0x01);
        m.clock.set(T0 + ns_for_ticks(800));
        assert_eq!(m.read_count(2), 700);
    }

    #[test]
    fn square_wave_out_is_high_half_the_period() {
        let m = Machine::new();
        m.outb(0x61, 0x01);
        m.program(2, 3, 1000);
        m.clock.set(T0 + ns_for_ticks(499));
        assert_eq!(m.inb(0x61) & 0x20, 0x20);
        m.clock.set(T0 + ns_for_ticks(500));
        assert_eq!(m.inb(0x61) & 0x20, 0);
        m.clock.set(T0 + ns_for_ticks(1000));
        assert_eq!(m.inb(0x61) & 0x20, 0x20);
    }

    #[test]
    fn port_0x61_refresh_bit_toggles_and_keeps_written_bits() {
        let m = Machine::new();
        m.outb(0x61, 0x03);
        let (a, b) = (m.inb(0x61), m.inb(0x61));
        assert_eq!(a & 0x03, 0x03);
        assert_ne!(a & 0x10, b & 0x10);
    }

    #[test]
    fn mode6_is_mode2_and_bcd_counts_decimal() {
        let m = Machine::new();
        m.outb(0x43, 0x3c);
        m.outb(0x40, 0xe8);
        m.outb(0x40, 0x03);
        assert_eq!(m.timer.deadline(), Some(T0 + ns_for_ticks(1000)));
        m.outb(0x43, 0x35); // BCD, mode 2.
        m.outb(0x40, 0x00);
        m.outb(0x40, 0x10);
        m.clock.set(T0 + ns_for_ticks(1));
        assert_eq!(m.read_count(0), 0x0999);
    }

    #[test]
    fn mode1_one_shot_is_triggered_by_the_gate() {
        let m = Machine::new();
        m.program(2, 1, 100);
        assert_eq!(m.inb(0x61) & 0x20, 0x20);
        m.outb(0x61, 0x01);
        assert_eq!(m.inb(0x61) & 0x20, 0);
        m.clock.set(T0 + ns_for_ticks(100));
        assert_eq!(m.inb(0x61) & 0x20, 0x20);
    }

    #[test]
    fn tiny_periods_are_rate_limited() {
        let m = Machine::new();
        m.program(0, 2, 1);
        m.expire_at(T0 + 1_000);
        assert_eq!(m.timer.deadline(), Some(T0 + 1_000 + MIN_IRQ_INTERVAL_NS));
    }

    #[test]
    fn hostile_writes_do_not_panic() {
        let m = Machine::new();
        for v in 0..=255u8 {
            for port in [0x40, 0x41, 0x42, 0x43, 0x61] {
                m.outb(port, v);
                m.inb(port);
                m.outb(port, 0);
            }
            m.clock.advance(12_345);
            lock(&m.pit).expire();
        }
        let mut buf = [0; 8];
        m.bus.read(0x40, &mut buf[..4]);
        lock(&m.pit).read_port(u64::MAX);
        lock(&m.pit).write_port(u64::MAX, 0xff);
        m.clock.set(u64::MAX);
        m.inb(0x40);
        lock(&m.pit).expire();
    }
}
