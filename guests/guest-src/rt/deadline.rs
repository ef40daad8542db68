//! Timeouts for polling loops, measured with the PIT (channel 0 free-running in mode 2, read
//! with latch commands), so that a device that never answers ends in a message, not a hang.
//!
//! If the PIT's count never moves (no PIT), a deadline falls back to counting polls: each poll
//! costs at least a few port reads, so `POLLS_PER_SECOND_FALLBACK` polls take longer than a
//! second on any machine.

use crate::pit::FREQUENCY_HZ;
use crate::port::{inb, outb};

/// Polls per second assumed when the PIT does not count.
const POLLS_PER_SECOND_FALLBACK: u64 = 200_000;
/// Consecutive unchanged PIT reads after which the PIT is taken to be absent.
const STUCK_READS: u32 = 20_000;

/// Starts PIT channel 0 in mode 2 with the full 65536 period (about 55 ms per wrap).
pub fn start_clock() {
    outb(0x43, 0x34);
    outb(0x40, 0);
    outb(0x40, 0);
}

fn read_count0() -> u16 {
    outb(0x43, 0x00);
    let low = inb(0x40);
    let high = inb(0x40);
    u16::from(low) | u16::from(high) << 8
}

/// A point in time to give up at. Call [`Deadline::expired`] in every iteration of a polling
/// loop; it samples the PIT.
pub struct Deadline {
    /// PIT input clock ticks still to go.
    remaining: u64,
    /// Polls still allowed when the PIT does not count.
    polls_left: u64,
    last: u16,
    unchanged: u32,
    no_pit: bool,
}

impl Deadline {
    /// A deadline `millis` milliseconds from now. [`start_clock`] must have run.
    pub fn after_ms(millis: u64) -> Self {
        Self {
            remaining: u64::from(FREQUENCY_HZ) * millis / 1000,
            polls_left: (POLLS_PER_SECOND_FALLBACK * millis / 1000).max(1000),
            last: read_count0(),
            unchanged: 0,
            no_pit: false,
        }
    }

    /// Whether the time is up (samples the clock once).
    pub fn expired(&mut self) -> bool {
        if self.no_pit {
            self.polls_left = self.polls_left.saturating_sub(1);
            return self.polls_left == 0;
        }
        let now = read_count0();
        // The count runs down and wraps at 65536; polls are far closer together than that.
        let elapsed = u64::from(self.last.wrapping_sub(now));
        self.last = now;
        if elapsed == 0 {
            self.unchanged += 1;
            if self.unchanged >= STUCK_READS {
                self.no_pit = true;
            }
            return false;
        }
        self.unchanged = 0;
        self.remaining = self.remaining.saturating_sub(elapsed);
        self.remaining == 0
    }

    /// Whether the fallback (no counting PIT) is in use.
    pub fn without_pit(&self) -> bool {
        self.no_pit
    }
}

/// Busy-waits about `millis` milliseconds.
pub fn sleep_ms(millis: u64) {
    let mut d = Deadline::after_ms(millis);
    while !d.expired() {}
}
