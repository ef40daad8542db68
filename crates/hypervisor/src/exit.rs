//! Why a vCPU stopped running guest code.

use crate::CpuMode;

/// A vCPU exit that the VMM must handle. Port and MMIO accesses are not here: the engine hands
/// them to [`crate::VmOps`] and reports [`VmExit::Io`] only so that the VMM can look at pending
/// work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmExit {
    /// The engine handled the exit itself: a port or MMIO access through [`crate::VmOps`], or an
    /// instruction it emulated. The VMM looks at pending work and runs the vCPU again.
    Io,
    /// The guest executed `hlt` and the engine does not wait for interrupts itself.
    Halt,
    /// The guest can take an external interrupt now (see [`crate::Vcpu::request_interrupt_window`]).
    InterruptWindow,
    /// Another thread kicked the vCPU.
    Interrupted,
    /// The local APIC ended a level-triggered interrupt with this vector: the IOAPIC should clear
    /// its remote IRR.
    IoapicEoi(u8),
    /// The guest triple-faulted (a reset on real hardware).
    Shutdown,
    /// The guest asked for a reset through the engine (e.g. a PSCI-like system event).
    Reset,
    /// The guest asked to power off through the engine.
    PowerOff,
    /// The engine could not execute a guest instruction.
    EmulationFailure(EmulationFailure),
    /// An exit the engine does not know how to handle.
    Unhandled(String),
}

/// The report of an instruction the engine could not execute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmulationFailure {
    /// Guest RIP of the instruction.
    pub rip: u64,
    /// Linear address of the instruction (CS base + RIP).
    pub linear_rip: u64,
    /// The instruction bytes, when the engine provides them.
    pub bytes: Vec<u8>,
    /// The instruction in Intel syntax, when it could be decoded.
    pub text: Option<String>,
    /// The CPU mode at the time.
    pub mode: CpuMode,
}

impl std::fmt::Display for EmulationFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "emulation failure at RIP {:#x} ({}): ",
            self.rip, self.mode
        )?;
        if let Some(text) = &self.text {
            write!(f, "`{text}`, ")?;
        }
        if self.bytes.is_empty() {
            write!(f, "instruction bytes unavailable")
        } else {
            write!(f, "instruction bytes")?;
            for b in &self.bytes {
                write!(f, " {b:02x}")?;
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emulation_failure_report_names_rip_mode_and_bytes() {
        let failure = EmulationFailure {
            rip: 0xffff_ffff_8100_0000,
            linear_rip: 0xffff_ffff_8100_0000,
            bytes: vec![0xcc],
            text: None,
            mode: CpuMode::Long { cpl: 0 },
        };
        assert_eq!(
            failure.to_string(),
            "emulation failure at RIP 0xffffffff81000000 (64-bit long mode, CPL 0): \
             instruction bytes cc"
        );
        let named = EmulationFailure {
            text: Some("vzeroupper".into()),
            bytes: vec![0xc5, 0xf8, 0x77],
            ..failure
        };
        assert_eq!(
            named.to_string(),
            "emulation failure at RIP 0xffffffff81000000 (64-bit long mode, CPL 0): `vzeroupper`, \
             instruction bytes c5 f8 77"
        );
    }
}
