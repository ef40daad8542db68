//! System instructions: segment loads, far transfers, iret, descriptor tables, control and debug registers, MSRs, the TSC, syscall/sysret/sysenter/sysexit, swapgs, flags with IOPL rules.

use iced_x86::Instruction;

use super::{Cpu, ExecResult};
use crate::bus::CpuBus;

/// Executes `insn` if it belongs to this family; `None` otherwise.
pub(crate) fn execute(
    _cpu: &mut Cpu,
    _bus: &mut dyn CpuBus,
    _insn: &Instruction,
) -> Option<ExecResult> {
    None
}
