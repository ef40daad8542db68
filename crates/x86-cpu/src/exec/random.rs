//! RDRAND and RDSEED, with entropy from the bus.
//!
//! A guest kernel seeds its random-number generator from these at boot; without them it waits
//! for timer jitter, which under a software CPU (and a deterministic clock) takes very long.

use iced_x86::{Instruction, Mnemonic};

use super::{Cpu, ExecResult, Flow};
use crate::bus::CpuBus;
use crate::flags;
use crate::state::rflags::CF;

/// Executes `insn` if it is RDRAND or RDSEED; `None` otherwise.
pub(crate) fn execute(
    cpu: &mut Cpu,
    bus: &mut dyn CpuBus,
    insn: &Instruction,
) -> Option<ExecResult> {
    if !matches!(insn.mnemonic(), Mnemonic::Rdrand | Mnemonic::Rdseed) {
        return None;
    }
    let (value, cf) = match bus.random() {
        Some(v) => (v, CF),
        None => (0, 0),
    };
    if let Err(f) = cpu.write_op(bus, insn, 0, value) {
        return Some(Err(f.into()));
    }
    // CF tells success; OF, SF, ZF, AF and PF are cleared.
    cpu.state.rflags = flags::merge(cpu.state.rflags, cf, flags::ALL);
    Some(Ok(Flow::Next))
}

#[cfg(test)]
mod tests {
    use crate::StepExit;
    use crate::state::rflags::{CF, ZF};
    use crate::testing::{FlatBus, long_mode_cpu};

    #[test]
    fn rdrand_returns_bus_entropy_with_cf_set_or_fails_with_cf_clear() {
        let mut bus = FlatBus::new(0x20_0000);
        let mut cpu = long_mode_cpu(&mut bus);
        // rdrand rax; rdseed ecx
        bus.write(0x10000, &[0x48, 0x0f, 0xc7, 0xf0, 0x0f, 0xc7, 0xf9]);
        bus.random = Some(0x1122_3344_5566_7788);
        cpu.state.rflags |= ZF;
        assert_eq!(cpu.step(&mut bus), StepExit::Continue);
        assert_eq!(cpu.state.gpr[0], 0x1122_3344_5566_7788);
        assert_eq!(cpu.state.rflags & (CF | ZF), CF);
        bus.random = None;
        cpu.state.gpr[1] = u64::MAX;
        assert_eq!(cpu.step(&mut bus), StepExit::Continue);
        assert_eq!(cpu.state.gpr[1], 0, "a failed RDSEED writes zero");
        assert_eq!(cpu.state.rflags & CF, 0);
    }
}
