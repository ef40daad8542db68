//! Integer arithmetic beyond the basic set: multiply and divide, shifts and rotates, bit operations, conditional moves and sets, exchanges and compare-exchanges, sign extensions, BCD.

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
