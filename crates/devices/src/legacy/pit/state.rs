//! The PIT's snapshot state: each channel's programming, latches and count, and port 0x61.
//!
//! Time is saved relative to the PIT's clock: a channel keeps the ticks it has counted since its
//! count was loaded, and a restored channel counts on from there at the restoring clock's
//! `now`, whatever that clock's origin. The next interrupt is a tick count too, so channel 0
//! fires in phase with its period after a restore.

use serde::{Deserialize, Serialize};

use super::Pit;
use super::channel::{Channel, RwState};
use crate::state::{StateError, ensure};

const DEVICE: &str = "pit";

/// Which byte of a 16-bit value the next data-port access reads or writes.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum PitByte {
    /// Access mode 1: the low byte only.
    Lsb,
    /// Access mode 2: the high byte only.
    Msb,
    /// Access mode 3: the low byte, then the high.
    Low,
    /// Access mode 3: the high byte, after the low.
    High,
}

impl From<RwState> for PitByte {
    fn from(s: RwState) -> Self {
        match s {
            RwState::Lsb => PitByte::Lsb,
            RwState::Msb => PitByte::Msb,
            RwState::Word0 => PitByte::Low,
            RwState::Word1 => PitByte::High,
        }
    }
}

impl From<PitByte> for RwState {
    fn from(b: PitByte) -> Self {
        match b {
            PitByte::Lsb => RwState::Lsb,
            PitByte::Msb => RwState::Msb,
            PitByte::Low => RwState::Word0,
            PitByte::High => RwState::Word1,
        }
    }
}

/// A count latched for reading.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct PitLatch {
    /// The latched counter value (BCD-encoded in BCD mode).
    pub value: u16,
    /// The byte the next read returns.
    pub next: PitByte,
}

/// One counter.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct PitChannelState {
    /// The mode bits of the control word (0-7; 6 and 7 are 2 and 3).
    pub mode: u8,
    /// Access mode: 1 = low byte, 2 = high byte, 3 = low then high.
    pub access: u8,
    /// BCD counting.
    pub bcd: bool,
    /// The count, 1 to 65536 (1 to 10000 in BCD mode).
    pub count: u32,
    /// The byte the next unlatched read returns.
    pub read_byte: PitByte,
    /// The byte the next write sets.
    pub write_byte: PitByte,
    /// The low byte written, waiting for the high one.
    pub write_latch: u8,
    /// A latched count, if any.
    pub latched_count: Option<PitLatch>,
    /// A latched status byte, if any.
    pub latched_status: Option<u8>,
    /// The gate input (always high on channels 0 and 1).
    pub gate: bool,
    /// A count was written since the last control word.
    pub loaded: bool,
    /// Modes 1 and 5: the gate has triggered counting.
    pub triggered: bool,
    /// The gate is low and holds the count (modes 0, 2, 3 and 4).
    pub paused: bool,
    /// Ticks counted since the count was loaded or counting restarted.
    pub counted_ticks: u64,
    /// The status byte's null-count bit.
    pub null_count: bool,
    /// The tick (of `counted_ticks`) at which OUT next rises and channel 0 interrupts.
    pub next_irq_tick: Option<u64>,
}

/// The 8254 and port 0x61.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct PitState {
    /// Channels 0, 1 and 2.
    pub channels: Vec<PitChannelState>,
    /// Port 0x61 bits 1-3 as written.
    pub port_b: u8,
    /// The refresh toggle of port 0x61 (bit 4).
    pub refresh: bool,
}

impl Channel {
    fn save(&self, now: u64) -> PitChannelState {
        PitChannelState {
            mode: self.mode_bits,
            access: self.access,
            bcd: self.bcd,
            count: u32::try_from(self.count).unwrap_or(u32::MAX),
            read_byte: self.read_state.into(),
            write_byte: self.write_state.into(),
            write_latch: self.write_latch,
            latched_count: self.latched_count.map(|(value, next)| PitLatch {
                value,
                next: next.into(),
            }),
            latched_status: self.latched_status,
            gate: self.gate,
            loaded: self.loaded,
            triggered: self.triggered,
            paused: self.paused,
            counted_ticks: self.elapsed(now),
            null_count: self.null_count,
            next_irq_tick: self.next_irq,
        }
    }

    /// The channel `s` describes, counting on from `now`; checked, not applied.
    fn restored(s: &PitChannelState, index: usize, now: u64) -> Result<Self, StateError> {
        ensure(s.mode <= 7, DEVICE, || {
            format!("channel {index} mode {}", s.mode)
        })?;
        ensure((1..=3).contains(&s.access), DEVICE, || {
            format!("channel {index} access mode {}", s.access)
        })?;
        let modulus = if s.bcd { 10_000 } else { 65_536 };
        ensure((1..=modulus).contains(&s.count), DEVICE, || {
            format!("channel {index} count {} outside 1..={modulus}", s.count)
        })?;
        let bytes = |b: PitByte| match s.access {
            1 => b == PitByte::Lsb,
            2 => b == PitByte::Msb,
            _ => matches!(b, PitByte::Low | PitByte::High),
        };
        let latched = s.latched_count.is_none_or(|l| bytes(l.next));
        ensure(
            bytes(s.read_byte) && bytes(s.write_byte) && latched,
            DEVICE,
            || {
                format!(
                    "channel {index} byte order disagrees with access mode {}",
                    s.access
                )
            },
        )?;
        ensure(index == 2 || s.gate, DEVICE, || {
            format!("channel {index} gate is tied high")
        })?;
        Ok(Channel {
            mode_bits: s.mode,
            access: s.access,
            bcd: s.bcd,
            count: u64::from(s.count),
            read_state: s.read_byte.into(),
            write_state: s.write_byte.into(),
            write_latch: s.write_latch,
            latched_count: s.latched_count.map(|l| (l.value, l.next.into())),
            latched_status: s.latched_status,
            gate: s.gate,
            loaded: s.loaded,
            triggered: s.triggered,
            paused: s.paused,
            start_ns: now,
            base_ticks: s.counted_ticks,
            null_count: s.null_count,
            next_irq: s.next_irq_tick,
        })
    }
}

impl Pit {
    /// The PIT's state at the clock's current time.
    pub fn save(&self) -> PitState {
        let now = self.clock.now_ns();
        PitState {
            channels: self.channels.iter().map(|c| c.save(now)).collect(),
            port_b: self.port_b,
            refresh: self.refresh,
        }
    }

    /// Restores `s`: the channels count on from the clock's current time, and the timer is
    /// armed for channel 0's next interrupt.
    pub fn restore(&mut self, s: &PitState) -> Result<(), StateError> {
        let now = self.clock.now_ns();
        let [c0, c1, c2] = s.channels.as_slice() else {
            return Err(StateError::Invalid {
                device: DEVICE,
                what: format!("{} channels, not 3", s.channels.len()),
            });
        };
        let channels = [
            Channel::restored(c0, 0, now)?,
            Channel::restored(c1, 1, now)?,
            Channel::restored(c2, 2, now)?,
        ];
        ensure(s.port_b & !0x0e == 0, DEVICE, || {
            format!("port 0x61 bits {:#04x} are not stored", s.port_b)
        })?;
        self.channels = channels;
        self.port_b = s.port_b;
        self.refresh = s.refresh;
        self.rearm(now);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::channel::ns_for_ticks;
    use super::*;
    use crate::legacy::lock;

    use super::super::tests::Machine;

    /// A PIT whose clock starts at `origin`.
    fn machine(origin: u64) -> Machine {
        Machine::at(origin)
    }

    impl Machine {
        fn save(&self) -> PitState {
            lock(&self.pit).save()
        }
        fn restore(&self, s: &PitState) -> Result<(), StateError> {
            lock(&self.pit).restore(s)
        }
    }

    const T0: u64 = 1_000_000_000;
    /// The restoring process's clock: another origin altogether.
    const T1: u64 = 7_000;

    #[test]
    fn restored_channel_counts_down_from_the_same_count_and_fires_in_phase() {
        let a = machine(T0);
        a.program(0, 2, 1000);
        a.clock.set(T0 + ns_for_ticks(300));
        let saved = a.save();

        let b = machine(T1);
        b.restore(&saved).unwrap();
        assert_eq!(b.read_count(0), 700);
        let deadline = b.timer.deadline().expect("channel 0 armed");
        assert!(deadline.abs_diff(T1 + ns_for_ticks(700)) <= 1, "{deadline}");
        b.clock.set(T1 + ns_for_ticks(500));
        assert_eq!(b.read_count(0), 200);
        b.clock.set(deadline);
        lock(&b.pit).expire();
        assert_eq!(b.irq.rises(), 1);
        assert_eq!(b.read_count(0), 1000, "reloaded at the period boundary");
    }

    #[test]
    fn paused_channel_latches_and_port_b_survive() {
        let a = machine(T0);
        a.program(2, 0, 1000);
        a.outb(0x61, 0x03);
        a.clock.set(T0 + ns_for_ticks(400));
        a.outb(0x61, 0x02); // Gate low: channel 2 holds 600.
        a.outb(0x43, 0x80); // Latch channel 2, then read half of it.
        assert_eq!(a.inb(0x42), 600u16.to_le_bytes()[0]);
        let saved = a.save();

        let b = machine(T1);
        b.restore(&saved).unwrap();
        assert_eq!(b.inb(0x42), 600u16.to_le_bytes()[1], "rest of the latch");
        b.clock.set(T1 + ns_for_ticks(5000));
        assert_eq!(b.read_count(2), 600, "gate low holds the count");
        assert_eq!(b.inb(0x61) & 0x0f, 0x02);
        b.outb(0x61, 0x03);
        b.clock.set(T1 + ns_for_ticks(5100));
        assert_eq!(b.read_count(2), 500);
        assert_eq!(b.timer.deadline(), None, "channel 0 was never programmed");
    }

    #[test]
    fn out_of_range_states_are_refused_and_change_nothing() {
        let m = machine(T0);
        m.program(0, 3, 500);
        let good = m.save();
        let cases: [fn(&mut PitState); 9] = [
            |s| s.channels[0].count = 0,
            |s| s.channels[0].count = 65_537,
            |s| {
                s.channels[1].bcd = true;
                s.channels[1].count = 10_001;
            },
            |s| s.channels[0].mode = 8,
            |s| s.channels[0].access = 0,
            |s| s.channels[0].read_byte = PitByte::Lsb,
            |s| s.channels[1].gate = false,
            |s| s.channels.truncate(2),
            |s| s.port_b = 0x01,
        ];
        for corrupt in cases {
            let mut bad = good.clone();
            corrupt(&mut bad);
            assert!(matches!(
                m.restore(&bad),
                Err(StateError::Invalid { device: "pit", .. })
            ));
        }
        assert_eq!(m.save(), good);
    }

    #[test]
    fn extreme_tick_counts_do_not_panic() {
        let m = machine(T0);
        m.program(0, 2, 3);
        let mut s = m.save();
        s.channels[0].counted_ticks = u64::MAX;
        s.channels[0].next_irq_tick = Some(u64::MAX);
        m.restore(&s).unwrap();
        m.clock.set(u64::MAX);
        m.read_count(0);
        lock(&m.pit).expire();
        m.inb(0x61);
    }
}
