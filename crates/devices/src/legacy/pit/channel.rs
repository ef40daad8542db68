//! One 8254 counter: its programming state and, from a clock reading, its count and OUT.

use super::PIT_FREQUENCY_HZ;

const NS_PER_SEC: u64 = 1_000_000_000;

/// Ticks of the PIT clock in `ns` nanoseconds, rounded down.
pub(super) fn ticks(ns: u64) -> u64 {
    (u128::from(ns) * u128::from(PIT_FREQUENCY_HZ) / u128::from(NS_PER_SEC)) as u64
}

/// The nanoseconds after which `t` ticks have passed: the inverse of [`ticks`].
pub(super) fn ns_for_ticks(t: u64) -> u64 {
    let ns = (u128::from(t) * u128::from(NS_PER_SEC)).div_ceil(u128::from(PIT_FREQUENCY_HZ));
    u64::try_from(ns).unwrap_or(u64::MAX)
}

fn from_bcd(v: u16) -> u64 {
    // Digits above 9 are undefined on real hardware; clamp them.
    (0..4).rev().fold(0, |acc, i| {
        acc * 10 + u64::from((v >> (4 * i)) & 0xf).min(9)
    })
}

fn to_bcd(v: u64) -> u16 {
    (0..4).fold(0, |acc, i| {
        acc | (((v / 10u64.pow(i)) % 10) as u16) << (4 * i)
    })
}

/// Which byte the next data-port access reads or writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RwState {
    Lsb,
    Msb,
    /// Low byte of a low-then-high pair.
    Word0,
    /// High byte of a low-then-high pair.
    Word1,
}

impl RwState {
    pub(super) fn from_access(access: u8) -> Self {
        match access {
            1 => RwState::Lsb,
            2 => RwState::Msb,
            _ => RwState::Word0,
        }
    }
}

/// One counter.
#[derive(Debug, Clone)]
pub(super) struct Channel {
    /// The mode bits as written (0-7).
    pub(super) mode_bits: u8,
    /// Access mode: 1 = low byte, 2 = high byte, 3 = low then high.
    pub(super) access: u8,
    pub(super) bcd: bool,
    /// The count, 1..=modulus (a written 0 is the modulus).
    pub(super) count: u64,
    pub(super) read_state: RwState,
    pub(super) write_state: RwState,
    pub(super) write_latch: u8,
    pub(super) latched_count: Option<(u16, RwState)>,
    pub(super) latched_status: Option<u8>,
    pub(super) gate: bool,
    /// A count was written since the last control word.
    pub(super) loaded: bool,
    /// Modes 1 and 5: the gate has triggered counting.
    pub(super) triggered: bool,
    /// The gate is low and stops counting (modes 0, 2, 3, 4).
    pub(super) paused: bool,
    pub(super) start_ns: u64,
    /// Ticks counted before `start_ns`.
    pub(super) base_ticks: u64,
    pub(super) null_count: bool,
    /// The tick count at which OUT rises next and IRQ 0 fires (channel 0).
    pub(super) next_irq: Option<u64>,
}

impl Channel {
    /// A counter waiting for a control word, its gate at `gate`.
    pub(super) fn new(gate: bool) -> Self {
        Self {
            mode_bits: 0,
            access: 3,
            bcd: false,
            count: 65_536,
            read_state: RwState::Word0,
            write_state: RwState::Word0,
            write_latch: 0,
            latched_count: None,
            latched_status: None,
            gate,
            loaded: false,
            triggered: false,
            paused: false,
            start_ns: 0,
            base_ticks: 0,
            null_count: true,
            next_irq: None,
        }
    }

    pub(super) fn mode(&self) -> u8 {
        match self.mode_bits {
            6 => 2,
            7 => 3,
            m => m,
        }
    }

    pub(super) fn modulus(&self) -> u64 {
        if self.bcd { 10_000 } else { 65_536 }
    }

    pub(super) fn gate_triggered(&self) -> bool {
        matches!(self.mode(), 1 | 5)
    }

    pub(super) fn periodic(&self) -> bool {
        matches!(self.mode(), 2 | 3)
    }

    pub(super) fn counting(&self) -> bool {
        self.loaded && (!self.gate_triggered() || self.triggered)
    }

    pub(super) fn elapsed(&self, now: u64) -> u64 {
        match (self.counting(), self.paused) {
            (false, _) => 0,
            (true, true) => self.base_ticks,
            (true, false) => self
                .base_ticks
                .saturating_add(ticks(now.saturating_sub(self.start_ns))),
        }
    }

    pub(super) fn out(&self, now: u64) -> bool {
        if !self.loaded {
            return self.mode() != 0;
        }
        if !self.counting() || (self.paused && self.periodic()) {
            return true;
        }
        let (d, n) = (self.elapsed(now), self.count);
        match self.mode() {
            0 | 1 => d >= n,
            2 => n < 2 || d % n != n - 1,
            3 => d % n < n.div_ceil(2),
            _ => d != n,
        }
    }

    /// The counting element as the guest reads it.
    pub(super) fn counter(&self, now: u64) -> u16 {
        let (d, n, m) = (self.elapsed(now), self.count, self.modulus());
        let value = if !self.counting() {
            n % m
        } else {
            match self.mode() {
                2 => (n - d % n) % m,
                3 => (n - (2 * (d % n)) % n) % m,
                _ => (n % m + m - d % m) % m,
            }
        };
        if self.bcd {
            to_bcd(value)
        } else {
            value as u16
        }
    }

    pub(super) fn status(&self, now: u64) -> u8 {
        (u8::from(self.out(now)) << 7)
            | (u8::from(self.null_count) << 6)
            | (self.access << 4)
            | (self.mode_bits << 1)
            | u8::from(self.bcd)
    }

    /// The gate input.
    pub(super) fn gate(&self) -> bool {
        self.gate
    }

    /// Consumes the interrupt due at `now`, if OUT rose since the last one, and computes the
    /// next: one period after the last period boundary passed, however late `now` is.
    pub(super) fn take_irq(&mut self, now: u64) -> bool {
        let Some(edge) = self.next_irq.filter(|_| self.counting() && !self.paused) else {
            return false;
        };
        let d = self.elapsed(now);
        if d < edge {
            return false;
        }
        let n = self.count;
        self.next_irq = self.periodic().then(|| (d / n + 1).saturating_mul(n));
        true
    }

    /// The clock time of the next interrupt, if one is due.
    pub(super) fn irq_deadline(&self) -> Option<u64> {
        let edge = self.next_irq.filter(|_| self.counting() && !self.paused)?;
        Some(
            self.start_ns
                .saturating_add(ns_for_ticks(edge.saturating_sub(self.base_ticks))),
        )
    }

    /// Latches the status byte for the next read, unless one is already latched.
    pub(super) fn latch_status(&mut self, now: u64) {
        if self.latched_status.is_none() {
            self.latched_status = Some(self.status(now));
        }
    }

    pub(super) fn latch(&mut self, now: u64) {
        if self.latched_count.is_none() {
            self.latched_count = Some((self.counter(now), RwState::from_access(self.access)));
        }
    }

    pub(super) fn write_control(&mut self, v: u8) {
        *self = Self::new(self.gate);
        self.access = (v >> 4) & 3;
        self.mode_bits = (v >> 1) & 7;
        self.bcd = v & 1 != 0;
        self.read_state = RwState::from_access(self.access);
        self.write_state = self.read_state;
    }

    /// Starts (or restarts) counting from the count at `now`.
    pub(super) fn restart(&mut self, now: u64) {
        self.start_ns = now;
        self.base_ticks = 0;
        self.paused = !self.gate && !self.gate_triggered();
        self.next_irq = Some(match self.mode() {
            4 | 5 => self.count + 1,
            _ => self.count,
        });
    }

    pub(super) fn load(&mut self, raw: u16, now: u64) {
        let value = if self.bcd {
            from_bcd(raw)
        } else {
            u64::from(raw)
        };
        self.count = if value == 0 { self.modulus() } else { value };
        self.loaded = true;
        self.null_count = false;
        self.triggered = false;
        self.restart(now);
        if self.gate_triggered() {
            self.next_irq = None;
        }
    }

    /// Writes a data byte; returns whether a new count was loaded.
    pub(super) fn write_data(&mut self, v: u8, now: u64) -> bool {
        let raw = match self.write_state {
            RwState::Lsb => u16::from(v),
            RwState::Msb => u16::from(v) << 8,
            RwState::Word0 => {
                self.write_latch = v;
                self.write_state = RwState::Word1;
                return false;
            }
            RwState::Word1 => {
                self.write_state = RwState::Word0;
                u16::from_le_bytes([self.write_latch, v])
            }
        };
        self.load(raw, now);
        true
    }

    pub(super) fn read_data(&mut self, now: u64) -> u8 {
        if let Some(status) = self.latched_status.take() {
            return status;
        }
        let (value, state) = match self.latched_count {
            Some((value, state)) => {
                self.latched_count = match state {
                    RwState::Word0 => Some((value, RwState::Word1)),
                    _ => None,
                };
                (value, state)
            }
            None => {
                let state = self.read_state;
                self.read_state = match state {
                    RwState::Word0 => RwState::Word1,
                    RwState::Word1 => RwState::Word0,
                    s => s,
                };
                (self.counter(now), state)
            }
        };
        let [lo, hi] = value.to_le_bytes();
        match state {
            RwState::Lsb | RwState::Word0 => lo,
            RwState::Msb | RwState::Word1 => hi,
        }
    }

    pub(super) fn set_gate(&mut self, gate: bool, now: u64) {
        if gate == self.gate {
            return;
        }
        self.gate = gate;
        if !self.loaded {
            return;
        }
        match (gate, self.mode()) {
            // Falling gate stops counting in modes 0, 2, 3 and 4; it does not matter to 1, 5.
            (false, 1 | 5) => {}
            (false, _) => {
                self.base_ticks = self.elapsed(now);
                self.paused = true;
            }
            // Rising gate resumes counting in modes 0 and 4 ...
            (true, 0 | 4) => {
                self.start_ns = now;
                self.paused = false;
            }
            // ... and restarts it in the others.
            (true, _) => {
                self.triggered = true;
                self.restart(now);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ns_for_ticks_is_the_first_time_ticks_reaches_the_count() {
        for t in [0, 1, 2, 1193, 11_932, 65_536, 1 << 40] {
            let ns = ns_for_ticks(t);
            assert_eq!(ticks(ns), t);
            assert!(ns == 0 || ticks(ns - 1) < t);
        }
        assert_eq!(ns_for_ticks(u64::MAX), u64::MAX);
    }

    #[test]
    fn bcd_round_trips_and_clamps_garbage_digits() {
        assert_eq!(from_bcd(0x1234), 1234);
        assert_eq!(to_bcd(1234), 0x1234);
        assert_eq!(from_bcd(0xffff), 9999);
    }
}
