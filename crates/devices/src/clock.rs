//! Time as devices see it.
//!
//! Devices read time from a [`Clock`] and ask for a wake-up through a [`Timer`], so the engine
//! that runs the guest decides what time is: host monotonic time under KVM, or a deterministic
//! count (of instructions, say) under a software CPU.

use std::time::Instant;

/// A monotonic source of nanoseconds.
pub trait Clock: Send + Sync {
    /// Nanoseconds since an arbitrary, fixed origin.
    fn now_ns(&self) -> u64;
}

/// A one-shot wake-up that a device arms; the VMM calls the device back when it expires.
pub trait Timer: Send + Sync {
    /// Arms the timer for the absolute [`Clock`] time `deadline_ns`, or disarms it with `None`.
    /// A new call replaces the previous deadline.
    fn arm(&self, deadline_ns: Option<u64>);
}

/// The host's monotonic clock.
#[derive(Debug, Clone)]
pub struct HostClock {
    origin: Instant,
}

impl HostClock {
    /// A clock whose origin is now.
    pub fn new() -> Self {
        Self {
            origin: Instant::now(),
        }
    }
}

impl Default for HostClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for HostClock {
    fn now_ns(&self) -> u64 {
        self.origin.elapsed().as_nanos() as u64
    }
}
