//! vCPU threads: each runs its vCPU until the VM ends, handling the exits that need the VMM.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{JoinHandle, Thread};
use std::time::{Duration, Instant};

use devices::legacy::{Ioapic, Pic};
use hypervisor::{Vcpu, VcpuKicker, VmExit};

use crate::control::{Control, VmOutcome};

/// Exit reasons as counted: the names metrics use.
pub const EXIT_REASONS: [&str; 10] = [
    "io",
    "interrupted",
    "interrupt_window",
    "ioapic_eoi",
    "halt",
    "shutdown",
    "reset",
    "power_off",
    "emulation_failure",
    "other",
];

/// Counters of one vCPU thread, readable from any thread.
#[derive(Debug, Default)]
pub struct VcpuCounters {
    /// Exits by reason, indexed as [`EXIT_REASONS`].
    pub exits: [AtomicU64; EXIT_REASONS.len()],
    /// Nanoseconds spent in the VMM between two runs of the engine.
    pub vmm_nanos: AtomicU64,
}

impl VcpuCounters {
    fn count(&self, exit: &Result<VmExit, hypervisor::HypervisorError>) {
        let i = match exit {
            Ok(VmExit::Io) => 0,
            Ok(VmExit::Interrupted) => 1,
            Ok(VmExit::InterruptWindow) => 2,
            Ok(VmExit::IoapicEoi(_)) => 3,
            Ok(VmExit::Halt) => 4,
            Ok(VmExit::Shutdown) => 5,
            Ok(VmExit::Reset) => 6,
            Ok(VmExit::PowerOff) => 7,
            Ok(VmExit::EmulationFailure(_)) => 8,
            _ => 9,
        };
        self.exits[i].fetch_add(1, Ordering::Relaxed);
    }
}

/// Stops and restarts every vCPU of a VM: pause waits until each has parked. Parked vCPUs
/// also answer requests for their state (snapshots), on their own threads.
#[derive(Default)]
pub struct PauseGate {
    /// Mirrors `paused`, read without the lock on every exit.
    requested: AtomicBool,
    paused: Mutex<bool>,
    changed: Condvar,
    parked: AtomicUsize,
    snapshots: Mutex<SnapshotRequest>,
    answered: Condvar,
}

/// The current request for vCPU states and the answers so far.
#[derive(Default)]
struct SnapshotRequest {
    generation: u64,
    answers: std::collections::BTreeMap<u32, Result<hypervisor::VcpuSnapshot, String>>,
}

impl PauseGate {
    /// Whether a pause is requested.
    pub fn is_paused(&self) -> bool {
        self.requested.load(Ordering::SeqCst)
    }

    /// Requests a pause; the caller kicks the vCPUs and waits with [`PauseGate::wait_parked`].
    pub fn pause(&self) {
        *self.paused.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.requested.store(true, Ordering::SeqCst);
    }

    /// Waits until `n` vCPUs have parked, or `timeout` passes. True if they all did.
    pub fn wait_parked(&self, n: usize, timeout: Duration) -> bool {
        let until = Instant::now() + timeout;
        while self.parked.load(Ordering::SeqCst) < n {
            if Instant::now() > until {
                return false;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        true
    }

    /// Lets the vCPUs go again.
    pub fn resume(&self) {
        *self.paused.lock().unwrap_or_else(|p| p.into_inner()) = false;
        self.requested.store(false, Ordering::SeqCst);
        self.changed.notify_all();
    }

    /// Asks every parked vCPU for its state; waits for `n` answers, in vCPU order.
    pub fn snapshot_vcpus(
        &self,
        n: usize,
        timeout: Duration,
    ) -> Result<Vec<hypervisor::VcpuSnapshot>, String> {
        let mut req = self.snapshots.lock().unwrap_or_else(|p| p.into_inner());
        req.generation += 1;
        req.answers.clear();
        self.changed.notify_all();
        let until = Instant::now() + timeout;
        while req.answers.len() < n {
            let left = until
                .checked_duration_since(Instant::now())
                .ok_or_else(|| "the vCPUs did not answer in time".to_string())?;
            req = self
                .answered
                .wait_timeout(req, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        std::mem::take(&mut req.answers)
            .into_values()
            .map(|r| r.map_err(|e| format!("vCPU state: {e}")))
            .collect()
    }

    /// Called by a vCPU thread: parks while paused (or until `stop` is set), answering
    /// requests for its state meanwhile.
    fn park_while_paused(&self, stop: &AtomicBool, id: u32, vcpu: &mut dyn Vcpu) {
        if !self.requested.load(Ordering::SeqCst) {
            return;
        }
        let mut paused = self.paused.lock().unwrap_or_else(|p| p.into_inner());
        if !*paused {
            return;
        }
        let mut answered = self
            .snapshots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .generation;
        self.parked.fetch_add(1, Ordering::SeqCst);
        while *paused && !stop.load(Ordering::SeqCst) {
            let generation = self
                .snapshots
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .generation;
            if generation != answered {
                drop(paused);
                let state = vcpu.snapshot().map_err(|e| e.to_string());
                let mut req = self.snapshots.lock().unwrap_or_else(|p| p.into_inner());
                if req.generation == generation {
                    req.answers.insert(id, state);
                }
                answered = generation;
                self.answered.notify_all();
                drop(req);
                paused = self.paused.lock().unwrap_or_else(|p| p.into_inner());
                continue;
            }
            paused = self
                .changed
                .wait_timeout(paused, Duration::from_millis(20))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        self.parked.fetch_sub(1, Ordering::SeqCst);
    }
}

/// State shared between a vCPU thread and the threads that poke it.
struct Shared {
    kicker: Arc<dyn VcpuKicker>,
    thread: Mutex<Option<Thread>>,
    /// Set by [`VcpuHandle::kick`]; cleared by the vCPU when it looks for work.
    kicked: AtomicBool,
}

/// A handle to wake a vCPU thread.
#[derive(Clone)]
pub struct VcpuHandle {
    shared: Arc<Shared>,
}

impl VcpuHandle {
    /// Makes the vCPU leave guest mode (or its halt) and look for pending work.
    pub fn kick(&self) {
        self.shared.kicked.store(true, Ordering::SeqCst);
        self.shared.kicker.kick();
        if let Some(t) = self
            .shared
            .thread
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            t.unpark();
        }
    }
}

/// Everything a vCPU thread needs.
pub struct VcpuRunner {
    /// The vCPU's index (and APIC ID).
    pub id: u32,
    /// The vCPU.
    pub vcpu: Box<dyn Vcpu>,
    /// The PIC, for the boot CPU only: it takes ExtINT interrupts.
    pub pic: Option<Arc<Mutex<Pic>>>,
    /// The IOAPIC, for level-triggered EOIs.
    pub ioapic: Arc<Mutex<Ioapic>>,
    /// Where the VM's end is reported.
    pub control: Arc<Control>,
    /// Set when the VM is stopping.
    pub stop: Arc<AtomicBool>,
    /// Pauses the vCPU between runs.
    pub gate: Arc<PauseGate>,
    /// The thread's counters.
    pub counters: Arc<VcpuCounters>,
}

impl VcpuRunner {
    /// A handle for waking this vCPU.
    pub fn handle(&self) -> VcpuHandle {
        VcpuHandle {
            shared: Arc::new(Shared {
                kicker: self.vcpu.kicker(),
                thread: Mutex::new(None),
                kicked: AtomicBool::new(false),
            }),
        }
    }

    /// Starts the vCPU's thread.
    pub fn spawn(self, handle: VcpuHandle) -> std::io::Result<JoinHandle<()>> {
        let shared = handle.shared.clone();
        let join = std::thread::Builder::new()
            .name(format!("vcpu{}", self.id))
            // The loop keeps little on its stack; the default 2 MiB would only reserve address space.
            .stack_size(256 << 10)
            .spawn(move || self.run(&shared))?;
        *handle
            .shared
            .thread
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(join.thread().clone());
        Ok(join)
    }

    /// Presents the PIC's interrupt to the boot CPU when it can take it, or asks to be told
    /// when it can.
    fn service_pic(&mut self) -> Result<(), hypervisor::HypervisorError> {
        let Some(pic) = &self.pic else { return Ok(()) };
        let mut pic = pic.lock().unwrap_or_else(|p| p.into_inner());
        if !pic.has_interrupt() {
            self.vcpu.request_interrupt_window(false);
            return Ok(());
        }
        if self.vcpu.interrupt_window_open() {
            if let Some(vector) = pic.acknowledge() {
                self.vcpu.inject_external_interrupt(vector)?;
            }
            self.vcpu.request_interrupt_window(pic.has_interrupt());
        } else {
            self.vcpu.request_interrupt_window(true);
        }
        Ok(())
    }

    fn run(mut self, shared: &Shared) {
        self.vcpu.kicker().bind_current_thread();
        let mut left_engine = Instant::now();
        let outcome = loop {
            if self.stop.load(Ordering::SeqCst) {
                return;
            }
            shared.kicked.store(false, Ordering::SeqCst);
            if let Err(e) = self.service_pic() {
                break VmOutcome::Failed(format!("vCPU {}: {e}", self.id));
            }
            self.counters
                .vmm_nanos
                .fetch_add(left_engine.elapsed().as_nanos() as u64, Ordering::Relaxed);
            self.gate
                .park_while_paused(&self.stop, self.id, self.vcpu.as_mut());
            let exit = self.vcpu.run();
            left_engine = Instant::now();
            self.counters.count(&exit);
            match exit {
                Ok(VmExit::Io | VmExit::Interrupted | VmExit::InterruptWindow) => {}
                Ok(VmExit::IoapicEoi(vector)) => {
                    self.ioapic
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .end_of_interrupt(vector);
                }
                Ok(VmExit::Halt) => {
                    // Only engines without an in-kernel local APIC exit on HLT: sleep until a
                    // kick brings an interrupt or the stop flag.
                    while !shared.kicked.load(Ordering::SeqCst)
                        && !self.stop.load(Ordering::SeqCst)
                        && !self.gate.is_paused()
                    {
                        std::thread::park();
                    }
                    left_engine = Instant::now();
                }
                Ok(VmExit::Shutdown) => break VmOutcome::TripleFault,
                Ok(VmExit::Reset) => break VmOutcome::Reset,
                Ok(VmExit::PowerOff) => break VmOutcome::PowerOff,
                Ok(VmExit::EmulationFailure(failure)) => {
                    break VmOutcome::EmulationFailure {
                        cpu: self.id,
                        failure,
                    };
                }
                Ok(VmExit::Unhandled(what)) => {
                    break VmOutcome::Failed(format!("vCPU {}: unhandled exit: {what}", self.id));
                }
                Err(e) => break VmOutcome::Failed(format!("vCPU {}: {e}", self.id)),
            }
        };
        self.control.finish(outcome);
    }
}
