//! The APIC timer's count, computed from clock readings: no thread, no ticking.
//!
//! The timer counts down from the initial count at the bus clock (1 GHz, one tick per
//! nanosecond) divided by the divide configuration. One-shot mode stops at zero; periodic mode
//! reloads the initial count. The interrupt is due when the count reaches zero.

/// Nanoseconds per tick of the APIC bus clock (1 GHz, as KVM and QEMU emulate it).
const NS_PER_BUS_TICK: u64 = 1;

/// The divisor that a divide configuration register value selects (bits 0, 1 and 3).
pub(super) fn divisor(config: u32) -> u64 {
    let v = (config & 3) | ((config & 8) >> 1);
    if v == 7 { 1 } else { 2 << v }
}

/// The counter state.
#[derive(Debug, Clone, Default)]
pub(super) struct ApicTimer {
    /// The initial count register.
    pub(super) initial: u32,
    /// The divide configuration register (bits 0, 1 and 3).
    pub(super) divide_config: u32,
    /// Reload at zero.
    pub(super) periodic: bool,
    /// When counting at the current divisor began; `None` when the timer is stopped.
    pub(super) start_ns: Option<u64>,
    /// Ticks counted from the initial count before `start_ns` (at an earlier divisor).
    pub(super) base_ticks: u64,
    /// When the next interrupt is due.
    pub(super) next_irq_ns: Option<u64>,
}

impl ApicTimer {
    fn tick_ns(&self) -> u64 {
        divisor(self.divide_config) * NS_PER_BUS_TICK
    }

    /// Ticks counted from the initial count at time `now`.
    pub(super) fn ticks(&self, start: u64, now: u64) -> u64 {
        self.base_ticks
            .saturating_add(now.saturating_sub(start) / self.tick_ns())
    }

    /// The current count register.
    pub(super) fn current(&self, now: u64) -> u32 {
        let Some(start) = self.start_ns else { return 0 };
        if self.initial == 0 {
            return 0;
        }
        let ticks = self.ticks(start, now);
        let initial = u64::from(self.initial);
        if self.periodic {
            (initial - ticks % initial) as u32
        } else {
            initial.saturating_sub(ticks) as u32
        }
    }

    /// Writes the initial count: counting restarts from it now; 0 stops the timer.
    pub(super) fn set_initial(&mut self, count: u32, now: u64) {
        self.initial = count;
        self.start_ns = (count != 0).then_some(now);
        self.base_ticks = 0;
        self.recompute(now);
    }

    /// Writes the divide configuration; a running count continues from where it is.
    pub(super) fn set_divide(&mut self, config: u32, now: u64) {
        let config = config & 0xb;
        if config == self.divide_config {
            return;
        }
        if let Some(start) = self.start_ns {
            let mut counted = self.ticks(start, now);
            if self.periodic && self.initial != 0 {
                counted %= u64::from(self.initial);
            }
            self.base_ticks = counted;
            self.start_ns = Some(now);
        }
        self.divide_config = config;
        self.recompute(now);
    }

    /// Switches between one-shot and periodic mode (from the LVT timer entry).
    pub(super) fn set_periodic(&mut self, periodic: bool, now: u64) {
        if periodic != self.periodic {
            self.periodic = periodic;
            self.recompute(now);
        }
    }

    /// When the next interrupt is due, if the timer runs.
    pub(super) fn deadline(&self) -> Option<u64> {
        self.next_irq_ns
    }

    /// Whether the timer reloads (for rate limiting).
    pub(super) fn periodic(&self) -> bool {
        self.periodic
    }

    /// Consumes the interrupt due at or before `now`. If the host was late by several periods,
    /// one interrupt is reported and the next deadline stays in phase.
    pub(super) fn take_irq(&mut self, now: u64) -> bool {
        match self.next_irq_ns {
            Some(due) if due <= now => {
                self.next_irq_ns = if self.periodic {
                    self.next_zero_after(now)
                } else {
                    None
                };
                true
            }
            _ => false,
        }
    }

    /// The first time after `now` at which the count reaches zero.
    fn next_zero_after(&self, now: u64) -> Option<u64> {
        let start = self.start_ns?;
        let initial = u64::from(self.initial);
        if initial == 0 {
            return None;
        }
        let ticks = self.ticks(start, now);
        let target = if self.periodic {
            (ticks / initial + 1).checked_mul(initial)?
        } else if ticks < initial {
            initial
        } else {
            // A one-shot count that has run out stays at zero without firing again.
            return None;
        };
        let after_start = (target - self.base_ticks).checked_mul(self.tick_ns())?;
        start.checked_add(after_start)
    }

    /// Recomputes the next deadline after a change of count, divisor or mode.
    fn recompute(&mut self, now: u64) {
        self.next_irq_ns = self.next_zero_after(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn divide_configuration_encodings() {
        assert_eq!(divisor(0x0), 2);
        assert_eq!(divisor(0x1), 4);
        assert_eq!(divisor(0x2), 8);
        assert_eq!(divisor(0x3), 16);
        assert_eq!(divisor(0x8), 32);
        assert_eq!(divisor(0x9), 64);
        assert_eq!(divisor(0xa), 128);
        assert_eq!(divisor(0xb), 1);
    }

    #[test]
    fn one_shot_counts_down_to_zero_and_fires_once() {
        let mut t = ApicTimer::default();
        t.set_divide(0x3, 0);
        t.set_initial(1000, 100);
        assert_eq!(t.current(100), 1000);
        assert_eq!(t.current(100 + 16 * 250), 750);
        assert_eq!(t.deadline(), Some(100 + 16_000));
        assert!(!t.take_irq(100 + 15_999));
        assert!(t.take_irq(100 + 16_000));
        assert_eq!(t.current(100 + 16_000), 0);
        assert_eq!(t.deadline(), None);
    }

    #[test]
    fn periodic_reloads_and_stays_in_phase_when_late() {
        let mut t = ApicTimer::default();
        t.set_periodic(true, 0);
        t.set_divide(0xb, 0);
        t.set_initial(100, 0);
        assert_eq!(t.current(150), 50);
        assert!(t.take_irq(350));
        assert_eq!(t.deadline(), Some(400));
    }

    #[test]
    fn divide_change_keeps_the_count() {
        let mut t = ApicTimer::default();
        t.set_divide(0xb, 0);
        t.set_initial(1000, 0);
        t.set_divide(0x0, 400);
        assert_eq!(t.current(400), 600);
        assert_eq!(t.current(600), 500);
        assert_eq!(t.deadline(), Some(400 + 1200));
    }

    #[test]
    fn zero_count_stops() {
        let mut t = ApicTimer::default();
        t.set_initial(10, 0);
        t.set_initial(0, 5);
        assert_eq!(t.deadline(), None);
        assert_eq!(t.current(5), 0);
    }
}
