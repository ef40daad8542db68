//! Time for a VM on the software CPU, and the timers that fire in it.
//!
//! [`EmuTime`] is the VM's clock: host monotonic time, or (deterministic) a count of the
//! instructions the vCPUs retired, one [`InstructionClock::ns_per_instruction`] each, plus the
//! idle time skipped when every vCPU waits. The VMM reads it for its devices and arms
//! [`EmuTimer`]s on it; the vCPU threads fire the timers that are due between instructions, so
//! no host timer thread is needed. Under the instruction clock, a VM with one vCPU sees the
//! same time at the same instruction on every run.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;

use crate::EmuVmState;

/// What the VM's time follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ClockMode {
    /// The host's monotonic clock: guest time passes while the guest waits.
    Host,
    /// Instructions retired: deterministic.
    Instructions(InstructionClock),
}

/// The rate of the instruction clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct InstructionClock {
    /// Nanoseconds of guest time per retired instruction (at least 1).
    pub ns_per_instruction: u64,
}

impl Default for InstructionClock {
    /// One nanosecond per instruction: a 1 GHz machine that retires one instruction a cycle.
    fn default() -> Self {
        Self {
            ns_per_instruction: 1,
        }
    }
}

/// Something to run when a timer's deadline passes: it runs on a vCPU thread, with no lock of
/// the engine held, and may arm timers again.
pub type TimerCallback = Box<dyn Fn() + Send + Sync>;

struct TimerSlot {
    deadline: Mutex<Option<u64>>,
    callback: TimerCallback,
}

/// The VM's clock and its timers.
pub struct EmuTime {
    mode: ClockMode,
    origin: Instant,
    /// Guest nanoseconds under the instruction clock.
    virtual_ns: AtomicU64,
    /// Under the host clock, added (wrapping) to the time since `origin`: a restored clock
    /// continues from the snapshot's time.
    host_offset_ns: AtomicU64,
    /// A lower bound of the earliest armed deadline (`u64::MAX`: none): checking it is one
    /// atomic load, so vCPUs can look often.
    earliest: AtomicU64,
    timers: Mutex<Vec<Weak<TimerSlot>>>,
    /// vCPUs that are running or have work (under the instruction clock, time jumps ahead only
    /// when this is zero).
    active_vcpus: AtomicUsize,
    /// State of the generator behind RDRAND under the instruction clock.
    random_state: AtomicU64,
}

impl EmuTime {
    /// A clock in `mode`, starting at 0.
    pub fn new(mode: ClockMode) -> Self {
        let mode = match mode {
            ClockMode::Instructions(c) => ClockMode::Instructions(InstructionClock {
                ns_per_instruction: c.ns_per_instruction.max(1),
            }),
            host => host,
        };
        Self {
            mode,
            origin: Instant::now(),
            virtual_ns: AtomicU64::new(0),
            host_offset_ns: AtomicU64::new(0),
            earliest: AtomicU64::new(u64::MAX),
            timers: Mutex::new(Vec::new()),
            active_vcpus: AtomicUsize::new(0),
            random_state: AtomicU64::new(0x706f_7065_6b21_0001),
        }
    }

    /// 64 bits for RDRAND/RDSEED: the host's entropy under the host clock; under the
    /// instruction clock a fixed-seed SplitMix64 sequence, so that a deterministic run stays
    /// deterministic (such a guest's randomness is reproducible by design, never secret).
    pub(crate) fn random(&self) -> u64 {
        if let ClockMode::Host = self.mode {
            let mut buf = [0u8; 8];
            // SAFETY: getrandom writes at most `buf.len()` bytes into `buf`, which is valid for
            // writes.
            let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n == 8 {
                return u64::from_le_bytes(buf);
            }
        }
        let mut z = self
            .random_state
            .fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed)
            .wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// What the clock follows.
    pub fn mode(&self) -> ClockMode {
        self.mode
    }

    /// Nanoseconds since the VM's start.
    pub fn now_ns(&self) -> u64 {
        match self.mode {
            ClockMode::Host => (self.origin.elapsed().as_nanos() as u64)
                .wrapping_add(self.host_offset_ns.load(Ordering::Acquire)),
            ClockMode::Instructions(_) => self.virtual_ns.load(Ordering::Acquire),
        }
    }

    /// The clock's position, for a snapshot.
    pub(crate) fn snapshot(&self) -> EmuVmState {
        EmuVmState {
            mode: self.mode,
            now_ns: self.now_ns(),
            random_state: self.random_state.load(Ordering::Acquire),
        }
    }

    /// Moves the clock to a snapshot's position: it reads `state.now_ns` now and runs on from
    /// there, in its own mode. Timers keep their absolute deadlines.
    pub(crate) fn restore(&self, state: &EmuVmState) {
        match self.mode {
            ClockMode::Host => {
                let elapsed = self.origin.elapsed().as_nanos() as u64;
                self.host_offset_ns
                    .store(state.now_ns.wrapping_sub(elapsed), Ordering::Release);
            }
            ClockMode::Instructions(_) => {
                self.virtual_ns.store(state.now_ns, Ordering::Release);
            }
        }
        self.random_state
            .store(state.random_state, Ordering::Release);
    }

    /// Guest nanoseconds for `n` retired instructions (0 under the host clock, where the host
    /// measures time itself).
    pub(crate) fn ns_for_instructions(&self, n: u64) -> u64 {
        match self.mode {
            ClockMode::Host => 0,
            ClockMode::Instructions(c) => n.saturating_mul(c.ns_per_instruction),
        }
    }

    /// Moves the instruction clock forward by `ns`.
    pub(crate) fn advance(&self, ns: u64) {
        if ns != 0 {
            self.virtual_ns.fetch_add(ns, Ordering::AcqRel);
        }
    }

    /// Creates a timer that runs `callback` once its deadline passes.
    pub fn timer(self: &Arc<Self>, callback: TimerCallback) -> EmuTimer {
        let slot = Arc::new(TimerSlot {
            deadline: Mutex::new(None),
            callback,
        });
        lock(&self.timers).push(Arc::downgrade(&slot));
        EmuTimer {
            slot,
            time: Arc::downgrade(self),
        }
    }

    /// The earliest armed deadline, if any (may be earlier than the truth after a disarm; a
    /// check then finds nothing due and recomputes it).
    pub(crate) fn earliest_hint(&self) -> Option<u64> {
        match self.earliest.load(Ordering::Acquire) {
            u64::MAX => None,
            t => Some(t),
        }
    }

    /// Whether a timer may be due at `now`.
    pub(crate) fn maybe_due(&self, now: u64) -> bool {
        self.earliest.load(Ordering::Acquire) <= now
    }

    /// Runs the callbacks of every timer due at the current time and recomputes the earliest
    /// deadline. Returns true if any fired.
    pub(crate) fn fire_due(&self) -> bool {
        let mut fired = false;
        loop {
            let now = self.now_ns();
            let slots: Vec<Arc<TimerSlot>> = {
                let mut timers = lock(&self.timers);
                timers.retain(|w| w.strong_count() > 0);
                timers.iter().filter_map(Weak::upgrade).collect()
            };
            // Recompute before firing: a callback that re-arms lowers `earliest` again.
            self.earliest.store(u64::MAX, Ordering::Release);
            let mut due = Vec::new();
            for slot in &slots {
                let mut deadline = lock(&slot.deadline);
                match *deadline {
                    Some(t) if t <= now => {
                        *deadline = None;
                        due.push(slot.clone());
                    }
                    Some(t) => {
                        self.earliest.fetch_min(t, Ordering::AcqRel);
                    }
                    None => {}
                }
            }
            if due.is_empty() {
                return fired;
            }
            for slot in due {
                (slot.callback)();
            }
            fired = true;
            // A callback may have armed a deadline that is already due.
            if !self.maybe_due(self.now_ns()) {
                return fired;
            }
        }
    }

    /// Under the instruction clock, jumps to the earliest deadline if it lies ahead. Returns
    /// false if there is none to jump to.
    pub(crate) fn skip_to_next_deadline(&self) -> bool {
        if !matches!(self.mode, ClockMode::Instructions(_)) {
            return false;
        }
        let Some(next) = self.earliest_exact() else {
            return false;
        };
        self.virtual_ns.fetch_max(next, Ordering::AcqRel);
        true
    }

    /// The earliest armed deadline, computed from the timers themselves.
    fn earliest_exact(&self) -> Option<u64> {
        let timers = lock(&self.timers);
        timers
            .iter()
            .filter_map(Weak::upgrade)
            .filter_map(|slot| *lock(&slot.deadline))
            .min()
    }

    /// A vCPU starts running or finds work.
    pub(crate) fn vcpu_active(&self) {
        self.active_vcpus.fetch_add(1, Ordering::AcqRel);
    }

    /// A vCPU stops to wait. Returns true if it was the last one running.
    pub(crate) fn vcpu_idle(&self) -> bool {
        self.active_vcpus.fetch_sub(1, Ordering::AcqRel) == 1
    }

    /// Whether every vCPU waits.
    pub(crate) fn all_idle(&self) -> bool {
        self.active_vcpus.load(Ordering::Acquire) == 0
    }
}

/// A one-shot timer on an [`EmuTime`].
pub struct EmuTimer {
    slot: Arc<TimerSlot>,
    time: Weak<EmuTime>,
}

impl EmuTimer {
    /// Arms the timer for the absolute time `deadline_ns`, or disarms it with `None`. A new call
    /// replaces the previous deadline.
    pub fn arm(&self, deadline_ns: Option<u64>) {
        *lock(&self.slot.deadline) = deadline_ns;
        if let (Some(t), Some(time)) = (deadline_ns, self.time.upgrade()) {
            time.earliest.fetch_min(t, Ordering::AcqRel);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    fn counting(time: &Arc<EmuTime>) -> (EmuTimer, Arc<AtomicU32>) {
        let count = Arc::new(AtomicU32::new(0));
        let c = count.clone();
        let timer = time.timer(Box::new(move || {
            c.fetch_add(1, Ordering::SeqCst);
        }));
        (timer, count)
    }

    #[test]
    fn instruction_clock_advances_only_with_instructions() {
        let time = EmuTime::new(ClockMode::Instructions(InstructionClock {
            ns_per_instruction: 2,
        }));
        assert_eq!(time.now_ns(), 0);
        time.advance(time.ns_for_instructions(500));
        assert_eq!(time.now_ns(), 1000);
    }

    #[test]
    fn due_timers_fire_once_and_later_ones_wait() {
        let time = Arc::new(EmuTime::new(ClockMode::Instructions(
            InstructionClock::default(),
        )));
        let (a, a_count) = counting(&time);
        let (b, b_count) = counting(&time);
        a.arm(Some(100));
        b.arm(Some(300));
        assert!(!time.maybe_due(99));
        time.advance(150);
        assert!(time.maybe_due(time.now_ns()));
        assert!(time.fire_due());
        assert!(!time.fire_due());
        assert_eq!(a_count.load(Ordering::SeqCst), 1);
        assert_eq!(b_count.load(Ordering::SeqCst), 0);
        assert_eq!(time.earliest_hint(), Some(300));
    }

    #[test]
    fn idle_vm_skips_to_the_next_deadline() {
        let time = Arc::new(EmuTime::new(ClockMode::Instructions(
            InstructionClock::default(),
        )));
        let (a, count) = counting(&time);
        assert!(!time.skip_to_next_deadline());
        a.arm(Some(5_000_000));
        a.arm(Some(7_000_000));
        assert!(time.skip_to_next_deadline());
        assert_eq!(time.now_ns(), 7_000_000);
        time.fire_due();
        assert_eq!(count.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_restored_clock_continues_from_the_snapshot() {
        let old = EmuTime::new(ClockMode::Instructions(InstructionClock::default()));
        old.advance(5_000);
        let _ = old.random();
        let state = old.snapshot();
        assert_eq!(state.now_ns, 5_000);
        let new = EmuTime::new(ClockMode::Instructions(InstructionClock::default()));
        new.restore(&state);
        assert_eq!(new.now_ns(), 5_000);
        assert_eq!(new.random(), old.random());
        let host = EmuTime::new(ClockMode::Host);
        host.restore(&EmuVmState {
            now_ns: 10_000_000_000,
            ..state
        });
        let now = host.now_ns();
        assert!((10_000_000_000..11_000_000_000).contains(&now), "{now}");
    }

    #[test]
    fn dropped_timers_are_forgotten() {
        let time = Arc::new(EmuTime::new(ClockMode::Instructions(
            InstructionClock::default(),
        )));
        let (a, count) = counting(&time);
        a.arm(Some(10));
        drop(a);
        time.advance(20);
        assert!(!time.fire_due());
        assert_eq!(count.load(Ordering::SeqCst), 0);
    }
}
