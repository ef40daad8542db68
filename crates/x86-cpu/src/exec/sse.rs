//! SSE and SSE2 (legacy encodings only: VEX and EVEX forms are left unimplemented, as CPUID
//! hides AVX), and the FXSAVE/XSAVE state instructions.
//!
//! This file owns the availability checks, XMM operand access and the data-movement
//! instructions; `float` holds the floating-point arithmetic and conversions, `int` the packed
//! integer instructions, `save` MXCSR and the state save areas, and `softfloat` the x86
//! floating-point rules both SSE and the x87 compute with.
//!
//! MMX-register forms (including MOVQ2DQ/MOVDQ2Q) are not implemented: x86-64 Linux and glibc do
//! not use MMX, so they stop the VM as unimplemented instead of running half-emulated.

mod float;
mod int;
mod save;
pub(super) mod softfloat;

use iced_x86::{EncodingKind, Instruction, Mnemonic, OpKind, Register};

use super::{Cpu, ExecResult, Flow, Stop};
use crate::bus::CpuBus;
use crate::fault::{Exception, Fault, Result};
use crate::mmu::Privilege;
use crate::state::bits::{CR0_EM, CR0_TS, CR4_OSFXSR, CR4_OSXMMEXCPT};
use softfloat::{Env, Round};

/// MXCSR bits.
pub(crate) mod mxcsr {
    /// The six exception flags.
    pub const FLAGS: u32 = 0x3f;
    /// Denormals are zeros.
    pub const DAZ: u32 = 1 << 6;
    /// Shift of the six exception masks.
    pub const MASK_SHIFT: u32 = 7;
    /// Shift of the rounding control field.
    pub const RC_SHIFT: u32 = 13;
    /// Flush to zero.
    pub const FZ: u32 = 1 << 15;
    /// The bits software may set (MXCSR_MASK as FXSAVE reports it).
    pub const WRITABLE: u32 = 0xffff;
}

/// Executes `insn` if it belongs to this family; `None` otherwise.
pub(crate) fn execute(
    cpu: &mut Cpu,
    bus: &mut dyn CpuBus,
    insn: &Instruction,
) -> Option<ExecResult> {
    if insn.encoding() != EncodingKind::Legacy {
        return None;
    }
    if let Some(r) = save::execute(cpu, bus, insn) {
        return Some(r);
    }
    let regs = (0..insn.op_count())
        .filter(|&i| insn.op_kind(i) == OpKind::Register)
        .map(|i| insn.op_register(i));
    let mut xmm = false;
    for r in regs {
        if r.is_mm() {
            return None;
        }
        xmm |= r.is_xmm();
    }
    if insn.mnemonic() == Mnemonic::Movnti {
        // A general-register instruction: no CR0/CR4 checks.
        return Some(movnti(cpu, bus, insn));
    }
    if !xmm {
        return None;
    }
    if let Err(f) = check_sse(cpu) {
        return Some(Err(f.into()));
    }
    let r = moves(cpu, bus, insn)
        .or_else(|| float::execute(cpu, bus, insn))
        .or_else(|| int::execute(cpu, bus, insn))?;
    Some(r)
}

/// The checks every SSE instruction makes: CR0.EM or a clear CR4.OSFXSR is #UD, CR0.TS is #NM.
pub(super) fn check_sse(cpu: &Cpu) -> Result<()> {
    let s = &cpu.state;
    if s.cr0 & CR0_EM != 0 || s.cr4 & CR4_OSFXSR == 0 {
        return Err(Fault::ud());
    }
    if s.cr0 & CR0_TS != 0 {
        return Err(Fault::new(Exception::DeviceNotAvailable));
    }
    Ok(())
}

/// The environment MXCSR selects.
pub(super) fn env(cpu: &Cpu) -> Env {
    let m = cpu.state.mxcsr;
    Env {
        rc: Round::from_rc(m >> mxcsr::RC_SHIFT),
        daz: m & mxcsr::DAZ != 0,
        ftz: m & mxcsr::FZ != 0 && m & (softfloat::UE << mxcsr::MASK_SHIFT) != 0,
        trap_underflow: m & (softfloat::UE << mxcsr::MASK_SHIFT) == 0,
        trap_overflow: m & (softfloat::OE << mxcsr::MASK_SHIFT) == 0,
    }
}

/// Records exception `flags` in MXCSR; an unmasked one is #XM (#UD without CR4.OSXMMEXCPT), and
/// the caller must then leave the destination alone. Unlike hardware, a post-computation
/// exception (overflow, underflow, precision) also suppresses the write.
pub(super) fn raise(cpu: &mut Cpu, flags: u32) -> Result<()> {
    cpu.state.mxcsr |= flags & mxcsr::FLAGS;
    let masks = (cpu.state.mxcsr >> mxcsr::MASK_SHIFT) & mxcsr::FLAGS;
    if flags & !masks != 0 {
        return Err(if cpu.state.cr4 & CR4_OSXMMEXCPT != 0 {
            Fault::new(Exception::SimdFloatingPoint)
        } else {
            Fault::ud()
        });
    }
    Ok(())
}

/// Whether a 16-byte memory operand of `insn` must be 16-byte aligned (all legacy SSE
/// instructions but the explicitly unaligned moves).
fn needs_alignment(insn: &Instruction) -> bool {
    insn.memory_size().size() == 16
        && !matches!(
            insn.mnemonic(),
            Mnemonic::Movups | Mnemonic::Movupd | Mnemonic::Movdqu | Mnemonic::Lddqu
        )
}

/// The linear address of `insn`'s memory operand for `size` bytes, checking 16-byte alignment
/// for the aligned forms.
pub(super) fn mem_linear(cpu: &Cpu, insn: &Instruction, size: u32, write: bool) -> Result<u64> {
    let linear = cpu.linear(cpu.mem_seg(insn), cpu.ea(insn), size, write)?;
    if size == 16 && needs_alignment(insn) && linear & 15 != 0 {
        return Err(Fault::gp(0));
    }
    Ok(linear)
}

/// Reads `size` bytes of `insn`'s memory operand, zero-extended.
pub(super) fn read_m(
    cpu: &mut Cpu,
    bus: &mut dyn CpuBus,
    insn: &Instruction,
    size: u32,
) -> Result<u128> {
    let linear = mem_linear(cpu, insn, size, false)?;
    let mut b = [0u8; 16];
    cpu.read_linear(bus, linear, &mut b[..size as usize], Privilege::Current)?;
    Ok(u128::from_le_bytes(b))
}

/// Writes the low `size` bytes of `v` to `insn`'s memory operand.
pub(super) fn write_m(
    cpu: &mut Cpu,
    bus: &mut dyn CpuBus,
    insn: &Instruction,
    size: u32,
    v: u128,
) -> Result<()> {
    let linear = mem_linear(cpu, insn, size, true)?;
    cpu.write_linear(
        bus,
        linear,
        &v.to_le_bytes()[..size as usize],
        Privilege::Current,
    )
}

/// XMM register `r`'s index.
fn xmm_index(r: Register) -> usize {
    r.number()
}

/// Operand `i` as 128 bits: an XMM register, a general register or memory (of the instruction's
/// memory size, zero-extended), or an immediate.
pub(super) fn src(cpu: &mut Cpu, bus: &mut dyn CpuBus, insn: &Instruction, i: u32) -> Result<u128> {
    match insn.op_kind(i) {
        OpKind::Register => {
            let r = insn.op_register(i);
            Ok(if r.is_xmm() {
                cpu.state.xmm[xmm_index(r)]
            } else {
                u128::from(cpu.reg(r))
            })
        }
        OpKind::Memory => {
            let size = insn.memory_size().size() as u32;
            read_m(cpu, bus, insn, size)
        }
        _ => Ok(u128::from(insn.immediate(i))),
    }
}

/// The XMM register of operand `i`.
pub(super) fn xmm(cpu: &Cpu, insn: &Instruction, i: u32) -> u128 {
    cpu.state.xmm[xmm_index(insn.op_register(i))]
}

/// Sets the XMM register of operand `i`.
pub(super) fn set_xmm(cpu: &mut Cpu, insn: &Instruction, i: u32, v: u128) {
    cpu.state.xmm[xmm_index(insn.op_register(i))] = v;
}

/// Writes operand 0: the whole XMM register, a general register (zero-extending 32-bit
/// writes) or the low `size` bytes to memory.
fn dst(cpu: &mut Cpu, bus: &mut dyn CpuBus, insn: &Instruction, size: u32, v: u128) -> Result<()> {
    match insn.op_kind(0) {
        OpKind::Register => {
            let r = insn.op_register(0);
            if r.is_xmm() {
                cpu.state.xmm[xmm_index(r)] = v;
            } else {
                cpu.set_reg(r, v as u64);
            }
            Ok(())
        }
        _ => write_m(cpu, bus, insn, size, v),
    }
}

const LOW64: u128 = u64::MAX as u128;

/// MOVNTI: a non-temporal store of a general register.
fn movnti(cpu: &mut Cpu, bus: &mut dyn CpuBus, insn: &Instruction) -> ExecResult {
    let v = cpu.read_op(bus, insn, 1)?;
    cpu.write_op(bus, insn, 0, v)?;
    Ok(Flow::Next)
}

/// Data movement between XMM registers, general registers and memory.
fn moves(cpu: &mut Cpu, bus: &mut dyn CpuBus, insn: &Instruction) -> Option<ExecResult> {
    Some(moves_inner(cpu, bus, insn)).filter(|r| *r != Err(Stop::Unimplemented))
}

fn moves_inner(cpu: &mut Cpu, bus: &mut dyn CpuBus, insn: &Instruction) -> ExecResult {
    let to_xmm = insn.op_kind(0) == OpKind::Register && insn.op_register(0).is_xmm();
    let from_mem = insn.op_kind(1) == OpKind::Memory;
    match insn.mnemonic() {
        Mnemonic::Movaps
        | Mnemonic::Movups
        | Mnemonic::Movapd
        | Mnemonic::Movupd
        | Mnemonic::Movdqa
        | Mnemonic::Movdqu
        | Mnemonic::Movntps
        | Mnemonic::Movntpd
        | Mnemonic::Movntdq => {
            let v = src(cpu, bus, insn, 1)?;
            dst(cpu, bus, insn, 16, v)?;
        }
        m @ (Mnemonic::Movss | Mnemonic::Movsd) => {
            let size = if m == Mnemonic::Movss { 4 } else { 8 };
            let lane = (1u128 << (size * 8)) - 1;
            let v = src(cpu, bus, insn, 1)? & lane;
            if to_xmm && !from_mem {
                // Register to register merges the low element.
                let old = xmm(cpu, insn, 0);
                set_xmm(cpu, insn, 0, (old & !lane) | v);
            } else {
                dst(cpu, bus, insn, size, v)?;
            }
        }
        Mnemonic::Movd | Mnemonic::Movq => {
            let size = if insn.mnemonic() == Mnemonic::Movd {
                4
            } else {
                8
            };
            let lane = (1u128 << (size * 8)) - 1;
            let v = src(cpu, bus, insn, 1)? & lane;
            dst(cpu, bus, insn, size, v)?;
        }
        m @ (Mnemonic::Movhps | Mnemonic::Movhpd | Mnemonic::Movlps | Mnemonic::Movlpd) => {
            let high = matches!(m, Mnemonic::Movhps | Mnemonic::Movhpd);
            if to_xmm {
                let v = src(cpu, bus, insn, 1)? & LOW64;
                let old = xmm(cpu, insn, 0);
                let new = if high {
                    (old & LOW64) | (v << 64)
                } else {
                    (old & !LOW64) | v
                };
                set_xmm(cpu, insn, 0, new);
            } else {
                let v = xmm(cpu, insn, 1);
                write_m(cpu, bus, insn, 8, if high { v >> 64 } else { v })?;
            }
        }
        Mnemonic::Movhlps => {
            let (d, s) = (xmm(cpu, insn, 0), xmm(cpu, insn, 1));
            set_xmm(cpu, insn, 0, (d & !LOW64) | (s >> 64));
        }
        Mnemonic::Movlhps => {
            let (d, s) = (xmm(cpu, insn, 0), xmm(cpu, insn, 1));
            set_xmm(cpu, insn, 0, (d & LOW64) | (s << 64));
        }
        m @ (Mnemonic::Movmskps | Mnemonic::Movmskpd | Mnemonic::Pmovmskb) => {
            let v = xmm(cpu, insn, 1);
            let width = match m {
                Mnemonic::Movmskps => 4,
                Mnemonic::Movmskpd => 8,
                _ => 1,
            };
            let mut mask = 0u64;
            for i in 0..16 / width {
                let top = (v >> ((i + 1) * width * 8 - 1)) & 1;
                mask |= (top as u64) << i;
            }
            cpu.set_reg(insn.op_register(0), mask);
        }
        Mnemonic::Maskmovdqu => maskmovdqu(cpu, bus, insn)?,
        _ => return Err(Stop::Unimplemented),
    }
    Ok(Flow::Next)
}

/// MASKMOVDQU: stores the bytes of operand 0 whose mask byte (operand 1) has its top bit set,
/// at DS:rDI (segment overridable).
fn maskmovdqu(cpu: &mut Cpu, bus: &mut dyn CpuBus, insn: &Instruction) -> Result<()> {
    let (data, mask) = (xmm(cpu, insn, 1), xmm(cpu, insn, 2));
    let di = match insn.op_kind(0) {
        OpKind::MemorySegDI => cpu.reg(Register::DI),
        OpKind::MemorySegEDI => cpu.reg(Register::EDI),
        _ => cpu.reg(Register::RDI),
    };
    let seg = super::operand::seg_of(insn.memory_segment());
    // Check the whole 16 bytes first so a fault leaves memory untouched.
    cpu.linear(seg, di, 16, true)?;
    for i in 0..16u32 {
        if (mask >> (i * 8 + 7)) & 1 != 0 {
            let b = (data >> (i * 8)) as u64 & 0xff;
            cpu.write_mem(bus, seg, di.wrapping_add(u64::from(i)), 1, b)?;
        }
    }
    Ok(())
}

#[cfg(test)]
pub(super) mod tests;
