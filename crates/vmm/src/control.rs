//! How a VM ends: the first [`VmOutcome`] reported by a device or a vCPU wins, and wakes the
//! VMM's event loop.

use std::sync::Mutex;

use devices::interrupt::{VmControl, VmRequest};
use hypervisor::EmulationFailure;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

/// Why a VM stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmOutcome {
    /// The guest powered off (ACPI S5, or the engine's power-off event).
    PowerOff,
    /// The guest reset the machine (i8042, ACPI reset register).
    Reset,
    /// The guest triple-faulted, which real hardware treats as a reset.
    TripleFault,
    /// The guest wrote `status` to the debug-exit port.
    DebugExit(u8),
    /// The engine could not execute a guest instruction.
    EmulationFailure {
        /// The vCPU that stopped.
        cpu: u32,
        /// What it could not execute.
        failure: EmulationFailure,
    },
    /// The user quit from the console.
    Quit,
    /// Stopped through the API.
    Stopped,
    /// The VMM hit an error while the guest ran.
    Failed(String),
}

impl VmOutcome {
    /// The process exit status for this outcome: 0 for power-off and reset, the guest's status for
    /// the debug-exit port, 1 for failures.
    pub fn exit_status(&self) -> i32 {
        match self {
            VmOutcome::PowerOff
            | VmOutcome::Reset
            | VmOutcome::TripleFault
            | VmOutcome::Quit
            | VmOutcome::Stopped => 0,
            VmOutcome::DebugExit(status) => i32::from(*status),
            VmOutcome::EmulationFailure { .. } | VmOutcome::Failed(_) => 1,
        }
    }
}

impl std::fmt::Display for VmOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VmOutcome::PowerOff => write!(f, "guest powered off"),
            VmOutcome::Reset => write!(f, "guest reset the machine"),
            VmOutcome::TripleFault => write!(f, "guest triple-faulted (machine reset)"),
            VmOutcome::DebugExit(s) => write!(f, "guest wrote status {s} to the debug-exit port"),
            VmOutcome::EmulationFailure { cpu, failure } => {
                write!(f, "vCPU {cpu} stopped: {failure}")
            }
            VmOutcome::Quit => write!(f, "quit from the console"),
            VmOutcome::Stopped => write!(f, "stopped through the API"),
            VmOutcome::Failed(why) => write!(f, "VMM error: {why}"),
        }
    }
}

/// What a finished run reports: why the VM ended, and its counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunReport {
    /// Why the VM ended.
    pub outcome: VmOutcome,
    /// Per vCPU, the instructions the engine handed to popek's software CPU (KVM's emulation
    /// fallback). Always 0 under the emu engine, where every instruction is the software CPU's.
    pub fallback_instructions: Vec<u64>,
}

impl RunReport {
    /// The fallback count summed over the vCPUs.
    pub fn total_fallbacks(&self) -> u64 {
        self.fallback_instructions.iter().sum()
    }
}

/// Collects the VM's outcome and wakes the event loop.
pub struct Control {
    outcome: Mutex<Option<VmOutcome>>,
    event: EventFd,
}

impl Control {
    /// A control with no outcome yet.
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            outcome: Mutex::new(None),
            event: EventFd::new(EFD_NONBLOCK)?,
        })
    }

    /// Records `outcome` unless one was recorded before, and wakes the event loop.
    pub fn finish(&self, outcome: VmOutcome) {
        let mut slot = self.outcome.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            *slot = Some(outcome);
        }
        // The eventfd counter cannot overflow from a handful of writes; a failure here would
        // only delay the wake-up to the next event.
        let _ = self.event.write(1);
    }

    /// The outcome, once there is one.
    pub fn outcome(&self) -> Option<VmOutcome> {
        self.outcome
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The eventfd that becomes readable when the VM ends.
    pub fn event(&self) -> &EventFd {
        &self.event
    }
}

impl VmControl for Control {
    fn request(&self, request: VmRequest) {
        self.finish(match request {
            VmRequest::Reset => VmOutcome::Reset,
            VmRequest::PowerOff => VmOutcome::PowerOff,
            VmRequest::DebugExit(status) => VmOutcome::DebugExit(status),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_outcome_wins_and_sets_the_exit_status() {
        let c = Control::new().unwrap();
        assert_eq!(c.outcome(), None);
        c.request(VmRequest::DebugExit(7));
        c.request(VmRequest::PowerOff);
        assert_eq!(c.outcome(), Some(VmOutcome::DebugExit(7)));
        assert_eq!(c.outcome().unwrap().exit_status(), 7);
        assert_eq!(c.event().read().unwrap(), 2);
    }
}
