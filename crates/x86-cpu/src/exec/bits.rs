//! Bit instructions: `bt`, `bts`, `btr`, `btc`, `bsf`, `bsr`, and the three counts `tzcnt`,
//! `lzcnt` and `popcnt` (executed whenever decoded: the CPUID the guest sees decides whether it
//! uses them).
//!
//! Undefined flags: the bit tests leave OF, SF, AF and PF unchanged (ZF is defined as
//! unchanged). `bsf`/`bsr` with a non-zero source clear CF, OF, SF and AF and set PF from the
//! index found; with a zero source they set ZF and PF and clear the others (as AMD does).
//! `tzcnt`/`lzcnt` clear SF, AF and PF and leave OF unchanged (as AMD does).

use iced_x86::{Instruction, Mnemonic, OpKind, Register};

use super::basic::set_flags;
use super::{Cpu, ExecResult, Flow};
use crate::bus::CpuBus;
use crate::flags::{self, mask, sign_extend};
use crate::state::rflags::{CF, OF, PF, ZF};

/// Executes `insn` if it belongs to this family; `None` otherwise.
pub(crate) fn execute(
    cpu: &mut Cpu,
    bus: &mut dyn CpuBus,
    insn: &Instruction,
) -> Option<ExecResult> {
    let m = insn.mnemonic();
    Some(match m {
        Mnemonic::Bt | Mnemonic::Bts | Mnemonic::Btr | Mnemonic::Btc => bit_test(cpu, bus, insn, m),
        Mnemonic::Bsf | Mnemonic::Bsr => scan(cpu, bus, insn, m == Mnemonic::Bsf),
        Mnemonic::Tzcnt | Mnemonic::Lzcnt | Mnemonic::Popcnt => count(cpu, bus, insn, m),
        _ => return None,
    })
}

/// The mask of `insn`'s address size, found the way [`Cpu::ea`] finds it.
fn address_mask(cpu: &Cpu, insn: &Instruction) -> u64 {
    let base = insn.memory_base();
    let index = insn.memory_index();
    let size = if base == Register::RIP {
        8
    } else if base == Register::EIP {
        4
    } else if base != Register::None {
        base.size() as u32
    } else if index != Register::None {
        index.size() as u32
    } else {
        match insn.memory_displ_size() {
            2 => 2,
            4 => 4,
            8 => 8,
            _ => cpu.state.code_bits() / 8,
        }
    };
    mask(size)
}

/// The bit test family. A register bit offset on a memory operand is signed and may address
/// outside the operand: the operand-size unit `offset div width` away is accessed. An immediate
/// offset is taken modulo the width.
fn bit_test(cpu: &mut Cpu, bus: &mut dyn CpuBus, insn: &Instruction, m: Mnemonic) -> ExecResult {
    let size = cpu.op_size(insn, 0);
    let bits = u64::from(size * 8);
    let raw = cpu.read_op(bus, insn, 1)?;
    let modify = move |v: u64, bit: u64| match m {
        Mnemonic::Bts => v | 1 << bit,
        Mnemonic::Btr => v & !(1 << bit),
        Mnemonic::Btc => v ^ 1 << bit,
        _ => v,
    };
    let cf = if insn.op0_kind() == OpKind::Register {
        let r = insn.op0_register();
        let bit = raw & (bits - 1);
        let v = cpu.reg(r);
        if m != Mnemonic::Bt {
            cpu.set_reg(r, modify(v, bit));
        }
        (v >> bit) & 1
    } else {
        let seg = cpu.mem_seg(insn);
        let ea = cpu.ea(insn);
        let (addr, bit) = if insn.op1_kind() == OpKind::Register {
            let offset = sign_extend(raw, size) as i64;
            let unit = offset.div_euclid(bits as i64);
            let addr = ea.wrapping_add((unit * i64::from(size)) as u64) & address_mask(cpu, insn);
            (addr, offset.rem_euclid(bits as i64) as u64)
        } else {
            (ea, raw & (bits - 1))
        };
        let v = if m == Mnemonic::Bt {
            cpu.read_mem(bus, seg, addr, size)?
        } else {
            super::atomic::rmw(cpu, bus, seg, addr, size, &mut |v| {
                Some(u128::from(modify(v as u64, bit)))
            })? as u64
        };
        (v >> bit) & 1
    };
    set_flags(cpu, cf, CF);
    Ok(Flow::Next)
}

/// `bsf`/`bsr`. ZF is set when the source is zero, cleared otherwise. With a zero source the
/// destination is not written at all: even a 32-bit destination keeps bits 63:32. That is AMD's
/// behaviour, which the silicon the differential suite runs on shows (Intel's architects
/// describe a 32-bit destination as written back, losing bits 63:32).
///
/// The undefined flags follow AMD too: with a zero source CF, OF, SF and AF are cleared and PF
/// set (the flags of a zero result); otherwise they are those of a logical operation on the
/// index found (CF, OF and AF clear, SF clear, PF from the index).
fn scan(cpu: &mut Cpu, bus: &mut dyn CpuBus, insn: &Instruction, forward: bool) -> ExecResult {
    let size = cpu.op_size(insn, 0);
    let src = cpu.read_op(bus, insn, 1)? & mask(size);
    if src == 0 {
        set_flags(cpu, ZF | PF, flags::ALL);
    } else {
        let index = if forward {
            src.trailing_zeros()
        } else {
            63 - src.leading_zeros()
        };
        let index = u64::from(index);
        cpu.set_reg(insn.op0_register(), index);
        set_flags(cpu, flags::logic(index, size) & !ZF, flags::ALL);
    }
    Ok(Flow::Next)
}

/// `tzcnt`, `lzcnt`, `popcnt`.
fn count(cpu: &mut Cpu, bus: &mut dyn CpuBus, insn: &Instruction, m: Mnemonic) -> ExecResult {
    let size = cpu.op_size(insn, 0);
    let bits = size * 8;
    let src = cpu.read_op(bus, insn, 1)? & mask(size);
    let (result, f) = match m {
        Mnemonic::Popcnt => (src.count_ones(), if src == 0 { ZF } else { 0 }),
        _ => {
            let n = if src == 0 {
                bits
            } else if m == Mnemonic::Tzcnt {
                src.trailing_zeros()
            } else {
                src.leading_zeros() - (64 - bits)
            };
            let cf = if src == 0 { CF } else { 0 };
            (n, cf | if n == 0 { ZF } else { 0 })
        }
    };
    cpu.write_op(bus, insn, 0, u64::from(result))?;
    // `tzcnt` and `lzcnt` leave OF unchanged, as AMD's silicon does.
    let written = if m == Mnemonic::Popcnt {
        flags::ALL
    } else {
        flags::ALL & !OF
    };
    set_flags(cpu, f, written);
    Ok(Flow::Next)
}

#[cfg(test)]
mod tests {
    use iced_x86::code_asm::*;

    use crate::exec::alu::tests::run_asm;
    use crate::state::rflags::{CF, OF, ZF};

    #[test]
    fn bit_tests_on_registers_take_the_offset_modulo_the_width() {
        let (cpu, _) = run_asm(|a| {
            a.mov(eax, 0b1010)?;
            a.mov(ecx, 33)?;
            a.bts(eax, ecx)?; // bit 1: already set
            a.mov(rbx, 0u64)?;
            a.mov(edx, 0b1000)?;
            a.btc(edx, 3)?;
            a.btr(eax, 3)
        });
        assert_eq!(cpu.state.gpr[0], 0b0010);
        assert_eq!(cpu.state.gpr[2], 0);
        assert_eq!(cpu.state.rflags & CF, CF);
    }

    #[test]
    fn bit_tests_on_memory_reach_outside_the_operand() {
        let (cpu, bus) = run_asm(|a| {
            a.mov(ebx, 0x5000)?;
            // Bit 1000 = byte 125, bit 0.
            a.mov(ecx, 1000)?;
            a.bts(dword_ptr(rbx), ecx)?;
            // Bit -1 = the qword at 0x4ff8, bit 63.
            a.mov(rdx, -1i64)?;
            a.bts(qword_ptr(rbx), rdx)?;
            // A 16-bit offset is signed too: -17 = the word at 0x4ffc, bit 15.
            a.mov(si, -17i32)?;
            a.btc(word_ptr(rbx), si)?;
            // An immediate offset stays inside the operand: 35 % 32 = bit 3 of 0x5000.
            a.bts(dword_ptr(rbx), 35)?;
            a.bt(dword_ptr(rbx), ecx)
        });
        assert_eq!(bus.mem[0x5000 + 125], 1);
        assert_eq!(bus.mem[0x5000], 0b1000);
        assert_eq!(
            bus.read_u64(0x4ff8),
            0x8000_0000_0000_0000 | 0x8000_0000_0000
        );
        assert_eq!(cpu.state.rflags & CF, CF);
    }

    #[test]
    fn bsf_and_bsr_leave_the_whole_destination_on_a_zero_source() {
        let (cpu, _) = run_asm(|a| {
            a.mov(rax, -1i64)?;
            a.mov(rdx, -1i64)?;
            a.xor(ecx, ecx)?;
            a.bsf(rax, rcx)?;
            // AMD: a 32-bit destination keeps bits 63:32 too.
            a.bsr(edx, ecx)?;
            a.mov(ebx, 0x0001_0100)?;
            a.bsf(esi, ebx)?;
            a.bsr(edi, ebx)
        });
        assert_eq!(cpu.state.gpr[0], u64::MAX);
        assert_eq!(cpu.state.gpr[2], u64::MAX);
        assert_eq!((cpu.state.gpr[6], cpu.state.gpr[7]), (8, 16));
        assert_eq!(cpu.state.rflags & ZF, 0);
        let (cpu, _) = run_asm(|a| {
            a.xor(ecx, ecx)?;
            a.bsf(eax, ecx)
        });
        assert_eq!(cpu.state.rflags & ZF, ZF);
    }

    #[test]
    fn bsf_and_bsr_clear_zf_when_the_index_found_is_zero() {
        let (cpu, _) = run_asm(|a| {
            a.mov(ecx, 1)?;
            a.xor(eax, eax)?; // ZF = 1
            a.bsf(eax, ecx)
        });
        assert_eq!(cpu.state.gpr[0], 0);
        assert_eq!(cpu.state.rflags & ZF, 0);
        let (cpu, _) = run_asm(|a| {
            a.mov(ecx, 1)?;
            a.xor(eax, eax)?;
            a.bsr(rax, rcx)
        });
        assert_eq!(cpu.state.rflags & ZF, 0);
    }

    #[test]
    fn counts_of_zeros_and_ones() {
        let (cpu, _) = run_asm(|a| {
            a.mov(ecx, 0x0000_f000)?;
            a.tzcnt(eax, ecx)?;
            a.lzcnt(edx, ecx)?;
            a.popcnt(rbx, rcx)?;
            a.xor(ecx, ecx)?;
            a.lzcnt(si, cx)
        });
        assert_eq!(
            (cpu.state.gpr[0], cpu.state.gpr[2], cpu.state.gpr[3]),
            (12, 16, 4)
        );
        assert_eq!(cpu.state.gpr[6] & 0xffff, 16);
        assert_eq!(cpu.state.rflags & (CF | ZF), CF);
    }

    #[test]
    fn tzcnt_and_lzcnt_leave_of_unchanged() {
        let (cpu, _) = run_asm(|a| {
            a.mov(eax, 0x7fff_ffff)?;
            a.add(eax, 1)?; // OF = 1
            a.tzcnt(ecx, eax)?;
            a.lzcnt(edx, eax)
        });
        assert_eq!((cpu.state.gpr[1], cpu.state.gpr[2]), (31, 0));
        assert_eq!(cpu.state.rflags & (OF | ZF | CF), OF | ZF);
    }
}
