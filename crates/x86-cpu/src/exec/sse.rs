//! SSE and SSE2, and the FXSAVE/XSAVE state instructions.

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
