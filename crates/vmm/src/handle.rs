//! A running VM's controls: pause, resume, stop, the power button, and its counters.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use devices::legacy::AcpiPm;
use hypervisor::VcpuStats;

use crate::control::{Control, VmOutcome};
use crate::vcpu::{PauseGate, VcpuCounters, VcpuHandle};
use crate::virtio_devices::DeviceStats;

/// How long a pause may take before it is reported as failed: vCPUs leave the engine on a kick
/// within microseconds, except under an instruction the software CPU is executing.
const PAUSE_TIMEOUT: Duration = Duration::from_secs(5);

/// The controls of one running VM, shared with whoever drives it (the API).
pub struct VmHandle {
    /// The engine's name.
    pub engine: &'static str,
    /// When the VM started.
    pub booted: Instant,
    /// Guest RAM in bytes.
    pub memory: u64,
    /// Per vCPU: exits and VMM time.
    pub counters: Vec<Arc<VcpuCounters>>,
    /// Per vCPU: the engine's own counters (KVM fallbacks).
    pub engine_stats: Vec<Arc<VcpuStats>>,
    /// Per device: its id and counters.
    pub devices: Vec<(String, DeviceStats)>,
    pub(crate) control: Arc<Control>,
    pub(crate) gate: Arc<PauseGate>,
    pub(crate) vcpus: Vec<VcpuHandle>,
    pub(crate) acpi_pm: Arc<Mutex<AcpiPm>>,
    pub(crate) parts: crate::snapshot::take::SnapshotParts,
}

impl VmHandle {
    /// Stops every vCPU between two instructions; returns once all have stopped. False if one
    /// did not stop in time (the pause stays requested).
    pub fn pause(&self) -> bool {
        self.gate.pause();
        for v in &self.vcpus {
            v.kick();
        }
        self.gate.wait_parked(self.vcpus.len(), PAUSE_TIMEOUT)
    }

    /// Lets the vCPUs run again.
    pub fn resume(&self) {
        self.gate.resume();
        for v in &self.vcpus {
            v.kick();
        }
    }

    /// Ends the VM at once with `outcome`.
    pub fn stop(&self, outcome: VmOutcome) {
        self.control.finish(outcome);
        self.gate.resume();
    }

    /// Presses the ACPI power button: a guest that listens shuts itself down.
    pub fn press_power_button(&self) {
        self.acpi_pm
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .press_power_button();
    }

    /// Writes the paused VM into `dir`: all of it, or with `diff` the pages written since the
    /// last snapshot of this VM.
    pub fn snapshot(
        &self,
        dir: &std::path::Path,
        diff: bool,
    ) -> Result<crate::snapshot::take::Taken, crate::snapshot::SnapshotError> {
        crate::snapshot::take::take(&self.parts, &self.gate, self.vcpus.len(), dir, diff)
    }

    /// Instructions each vCPU ran on the software CPU as KVM's fallback.
    pub fn fallbacks(&self) -> Vec<u64> {
        self.engine_stats
            .iter()
            .map(|s| s.emulated_instructions.load(Ordering::Relaxed))
            .collect()
    }
}

/// Told about a VM as it comes to life, before its vCPUs run.
pub trait RunObserver: Sync {
    /// The VM is built and about to run.
    fn started(&self, handle: Arc<VmHandle>);
}

/// An observer that ignores everything.
pub struct NoObserver;

impl RunObserver for NoObserver {
    fn started(&self, _handle: Arc<VmHandle>) {}
}
