//! Shifts and rotates: `shl`/`sal`, `shr`, `sar`, `rol`, `ror`, `rcl`, `rcr`, `shld`, `shrd`.
//!
//! The count is masked to 5 bits (6 for 64-bit operands); `rcl`/`rcr` on 8- and 16-bit
//! operands then rotate by the count modulo 9 or 17. A masked count of zero changes no flag,
//! but a 32-bit register destination is still written (its bits 63:32 cleared), as on
//! hardware.
//!
//! Undefined results and flags (the differential tests mask the flags):
//! - OF for counts other than 1 uses the 1-bit formula on the final result: left shifts and
//!   rotates `MSB(result) ^ CF`; `shr`, `shrd`, `ror` and `rcr` the XOR of the result's two top
//!   bits (0 for `shr` by more than 1); `sar` 0 (what Intel cores are reported to produce, and
//!   Bochs).
//! - AF after a shift by a non-zero count is 1, as AMD's silicon (the differential suite's
//!   host) produces; Intel cores clear it. Rotates leave it (and SF, ZF, PF) alone.
//! - `shl`/`shr` by at least the operand width (8/16-bit operands): CF is the last bit shifted
//!   out of the zero-extended operand, 0 once the count exceeds the width.
//! - `shld`/`shrd` on 16-bit operands with a count above 16: the destination is shifted out
//!   entirely and the source comes in twice, so the result is the source rotated by the count
//!   minus 16. That is AMD's behaviour, which the suite's silicon shows (Intel shifts the 48-bit
//!   `dest:src:dest`). CF is the last bit shifted out of that 48-bit value.

use iced_x86::{Instruction, Mnemonic, OpKind};

use super::basic::set_flags;
use super::{Cpu, ExecResult, Flow};
use crate::bus::CpuBus;
use crate::flags::{self, mask, sign_bit, sign_extend, szp};
use crate::state::rflags::{AF, CF, OF};

/// Executes `insn` if it belongs to this family; `None` otherwise.
pub(crate) fn execute(
    cpu: &mut Cpu,
    bus: &mut dyn CpuBus,
    insn: &Instruction,
) -> Option<ExecResult> {
    let m = insn.mnemonic();
    Some(match m {
        Mnemonic::Shl
        | Mnemonic::Sal
        | Mnemonic::Shr
        | Mnemonic::Sar
        | Mnemonic::Rol
        | Mnemonic::Ror
        | Mnemonic::Rcl
        | Mnemonic::Rcr => shift(cpu, bus, insn, m),
        Mnemonic::Shld | Mnemonic::Shrd => double_shift(cpu, bus, insn, m == Mnemonic::Shld),
        _ => return None,
    })
}

/// The count mask: 6 bits for 64-bit operands, else 5.
fn count_mask(size: u32) -> u64 {
    if size == 8 { 63 } else { 31 }
}

/// Bit `i` of `v` as 0 or 1 (0 when `i` is out of range).
fn bit(v: u64, i: u32) -> u64 {
    if i < 64 { (v >> i) & 1 } else { 0 }
}

/// The result of `m` on `a` (masked to `size`) by the non-zero masked `count`, with the
/// status flags and which of them it writes. `None` when a rotate-through-carry's count is a
/// multiple of the width plus one: nothing changes.
fn compute(m: Mnemonic, a: u64, count: u32, cf_in: u64, size: u32) -> Option<(u64, u64, u64)> {
    let bits = size * 8;
    let mk = mask(size);
    let msb = |v: u64| bit(v, bits - 1);
    // OF as the XOR of the result's top two bits (right shifts and rotates).
    let top2 = |r: u64| msb(r) ^ bit(r, bits - 2);
    let of = |x: u64| if x != 0 { OF } else { 0 };
    Some(match m {
        Mnemonic::Shl | Mnemonic::Sal => {
            let r = if count >= 64 { 0 } else { (a << count) & mk };
            let cf = if count <= bits {
                bit(a, bits - count)
            } else {
                0
            };
            let f = szp(r, size) | cf | of(msb(r) ^ cf) | AF;
            (r, f, flags::ALL)
        }
        Mnemonic::Shr => {
            let r = a >> count;
            let cf = bit(a, count - 1);
            (r, szp(r, size) | cf | of(top2(r)) | AF, flags::ALL)
        }
        Mnemonic::Sar => {
            let s = sign_extend(a, size) as i64;
            let r = (s >> count.min(63)) as u64 & mk;
            let cf = ((s >> (count - 1).min(63)) & 1) as u64;
            (r, szp(r, size) | cf | AF, flags::ALL)
        }
        Mnemonic::Rol => {
            let c = count % bits;
            let r = if c == 0 {
                a
            } else {
                ((a << c) | (a >> (bits - c))) & mk
            };
            let cf = r & 1;
            (r, cf | of(msb(r) ^ cf), CF | OF)
        }
        Mnemonic::Ror => {
            let c = count % bits;
            let r = if c == 0 {
                a
            } else {
                ((a >> c) | (a << (bits - c))) & mk
            };
            (r, msb(r) | of(top2(r)), CF | OF)
        }
        // Rcl, Rcr: rotate the (bits + 1)-bit value CF:a.
        _ => {
            let c = count % (bits + 1);
            if c == 0 {
                return None;
            }
            let wide_mask = (1u128 << (bits + 1)) - 1;
            let v = u128::from(cf_in) << bits | u128::from(a);
            let rotated = if m == Mnemonic::Rcl {
                (v << c | v >> (bits + 1 - c)) & wide_mask
            } else {
                (v >> c | v << (bits + 1 - c)) & wide_mask
            };
            let r = rotated as u64 & mk;
            let cf = (rotated >> bits) as u64 & 1;
            let o = if m == Mnemonic::Rcl {
                msb(r) ^ cf
            } else {
                top2(r)
            };
            (r, cf | of(o), CF | OF)
        }
    })
}

fn shift(cpu: &mut Cpu, bus: &mut dyn CpuBus, insn: &Instruction, m: Mnemonic) -> ExecResult {
    let size = cpu.op_size(insn, 0);
    let count = (cpu.read_op(bus, insn, 1)? & count_mask(size)) as u32;
    let a = cpu.read_op(bus, insn, 0)? & mask(size);
    let cf_in = cpu.state.rflags & CF;
    let done = if count == 0 {
        None
    } else {
        compute(m, a, count, cf_in, size)
    };
    match done {
        Some((r, f, which)) => {
            cpu.write_op(bus, insn, 0, r)?;
            set_flags(cpu, f, which);
        }
        // A zero count (or a whole-cycle rotate through carry): no flag changes, but a register
        // destination is written back, which zero-extends a 32-bit one.
        None => {
            if insn.op0_kind() == OpKind::Register {
                cpu.set_reg(insn.op0_register(), a);
            }
        }
    }
    Ok(Flow::Next)
}

/// `shld dest, src, count` / `shrd dest, src, count` for a non-zero masked `count`: the
/// result, CF, and OF.
fn double(left: bool, a: u64, b: u64, count: u32, size: u32) -> (u64, u64, u64) {
    let bits = size * 8;
    let mk = mask(size);
    let (a, b) = (u128::from(a & mk), u128::from(b & mk));
    // The bits that take part, most significant first: dest:src (shld) or src:dest (shrd),
    // and dest:src:src / src:src:dest for 16-bit operands, where the count may exceed 16 (AMD).
    let (r, cf) = if left {
        let (t, top) = if size == 2 {
            (a << 32 | b << 16 | b, 48)
        } else {
            (a << bits | b, 2 * bits)
        };
        let r = (t << count >> (top - bits)) as u64 & mk;
        (r, (t >> (top - count)) as u64 & 1)
    } else {
        let t = if size == 2 {
            b << 32 | b << 16 | a
        } else {
            b << bits | a
        };
        ((t >> count) as u64 & mk, (t >> (count - 1)) as u64 & 1)
    };
    let msb = |v: u64| v & sign_bit(size) != 0;
    let of = if left {
        msb(r) ^ (cf != 0)
    } else {
        msb(r) ^ (r & (sign_bit(size) >> 1) != 0)
    };
    (r, cf, if of { OF } else { 0 })
}

fn double_shift(cpu: &mut Cpu, bus: &mut dyn CpuBus, insn: &Instruction, left: bool) -> ExecResult {
    let size = cpu.op_size(insn, 0);
    let count = (cpu.read_op(bus, insn, 2)? & count_mask(size)) as u32;
    let a = cpu.read_op(bus, insn, 0)? & mask(size);
    if count == 0 {
        if insn.op0_kind() == OpKind::Register {
            cpu.set_reg(insn.op0_register(), a);
        }
        return Ok(Flow::Next);
    }
    let b = cpu.read_op(bus, insn, 1)?;
    let (r, cf, of) = double(left, a, b, count, size);
    cpu.write_op(bus, insn, 0, r)?;
    // AF is undefined: set, as for the single shifts (AMD).
    set_flags(cpu, szp(r, size) | cf | of | AF, flags::ALL);
    Ok(Flow::Next)
}

#[cfg(test)]
mod tests {
    use iced_x86::code_asm::*;

    use super::*;
    use crate::exec::alu::tests::{STATUS, run_asm};
    use crate::state::rflags::{PF, SF, ZF};

    #[test]
    fn zero_count_keeps_flags_but_clears_upper_half_of_32_bit_register() {
        let (cpu, _) = run_asm(|a| {
            a.mov(rax, -1i64)?;
            a.stc()?;
            a.xor(ecx, ecx)?;
            a.stc()?;
            a.shl(eax, cl)
        });
        assert_eq!(cpu.state.gpr[0], 0xffff_ffff);
        // The flags of `xor ecx, ecx` and `stc` survive.
        assert_eq!(cpu.state.rflags & STATUS, CF | ZF | PF);
    }

    #[test]
    fn shl_by_one_sets_carry_and_overflow() {
        let (cpu, _) = run_asm(|a| {
            a.mov(al, 0x40)?;
            a.shl(al, 1)
        });
        assert_eq!(cpu.state.gpr[0] & 0xff, 0x80);
        assert_eq!(cpu.state.rflags & STATUS, OF | SF | AF);
        let (cpu, _) = run_asm(|a| {
            a.mov(eax, 0x8000_0001u32)?;
            a.shl(eax, 1)
        });
        assert_eq!(cpu.state.gpr[0], 2);
        assert_eq!(cpu.state.rflags & (CF | OF | ZF), CF | OF);
    }

    #[test]
    fn shifts_by_n_take_the_last_bit_out_into_carry() {
        // shl al, 8: every bit leaves; CF is the old bit 0.
        let (cpu, _) = run_asm(|a| {
            a.mov(al, 0x81)?;
            a.mov(cl, 8)?;
            a.shl(al, cl)
        });
        assert_eq!(cpu.state.gpr[0] & 0xff, 0);
        assert_eq!(
            cpu.state.rflags & (CF | ZF | PF | SF | AF),
            CF | ZF | PF | AF
        );
        // shr rax, 63 and a masked count of 64 (= 0 for 64-bit: no change).
        let (cpu, _) = run_asm(|a| {
            a.mov(rax, 0x8000_0000_0000_0000u64)?;
            a.shr(rax, 63)?;
            a.mov(cl, 64)?;
            a.shr(rax, cl)
        });
        assert_eq!(cpu.state.gpr[0], 1);
        assert_eq!(cpu.state.rflags & (CF | ZF), 0);
        // sar keeps the sign and shifts it into CF once the count passes the width.
        let (cpu, _) = run_asm(|a| {
            a.mov(ax, 0x8000)?;
            a.sar(ax, 4)?;
            a.mov(bx, 0x8000)?;
            a.mov(cl, 20)?;
            a.sar(bx, cl)
        });
        assert_eq!(cpu.state.gpr[0] & 0xffff, 0xf800);
        assert_eq!(cpu.state.gpr[3] & 0xffff, 0xffff);
        assert_eq!(cpu.state.rflags & (CF | SF | OF), CF | SF);
        // shr by one: OF is the old sign bit.
        let (cpu, _) = run_asm(|a| {
            a.mov(eax, 0x8000_0000u32)?;
            a.shr(eax, 1)
        });
        assert_eq!(cpu.state.rflags & (CF | OF), OF);
    }

    #[test]
    fn rotates_touch_only_carry_and_overflow() {
        let (cpu, _) = run_asm(|a| {
            a.xor(eax, eax)?;
            a.mov(al, 0x81)?;
            a.rol(al, 1)
        });
        assert_eq!(cpu.state.gpr[0] & 0xff, 0x03);
        // ZF and PF stay from the xor.
        assert_eq!(cpu.state.rflags & STATUS, CF | OF | ZF | PF);
        let (cpu, _) = run_asm(|a| {
            a.mov(eax, 1)?;
            a.ror(eax, 1)
        });
        assert_eq!(cpu.state.gpr[0], 0x8000_0000);
        assert_eq!(cpu.state.rflags & (CF | OF), CF | OF);
        // rol by a multiple of the width leaves the value but sets CF from bit 0.
        let (cpu, _) = run_asm(|a| {
            a.mov(ax, 0x0001)?;
            a.mov(cl, 16)?;
            a.rol(ax, cl)
        });
        assert_eq!(cpu.state.gpr[0] & 0xffff, 1);
        assert_eq!(cpu.state.rflags & CF, CF);
    }

    #[test]
    fn rcl_and_rcr_rotate_through_carry_modulo_width_plus_one() {
        // rcl al, 1 with CF = 1: 0x80 -> 0x01, CF = 1.
        let (cpu, _) = run_asm(|a| {
            a.mov(al, 0x80)?;
            a.stc()?;
            a.rcl(al, 1)
        });
        assert_eq!(cpu.state.gpr[0] & 0xff, 0x01);
        assert_eq!(cpu.state.rflags & (CF | OF), CF | OF);
        // rcl al, 9 is a whole cycle through CF: nothing changes.
        let (cpu, _) = run_asm(|a| {
            a.mov(al, 0x5a)?;
            a.clc()?;
            a.mov(cl, 9)?;
            a.rcl(al, cl)
        });
        assert_eq!(cpu.state.gpr[0] & 0xff, 0x5a);
        assert_eq!(cpu.state.rflags & CF, 0);
        // rcr ax, 17 + 3 = rcr ax, 3.
        let (cpu, _) = run_asm(|a| {
            a.mov(ax, 0x0005)?;
            a.stc()?;
            a.mov(cl, 20)?;
            a.rcr(ax, cl)
        });
        // CF:AX = 1:0000000000000101 rotated right by 3: AX = 0b101 << 14 | 1 << 13 | 0,
        // CF = bit 2 of the old AX.
        assert_eq!(cpu.state.gpr[0] & 0xffff, 0b0110_0000_0000_0000);
        assert_eq!(cpu.state.rflags & CF, CF);
        // 64-bit rcr by 1 moves CF into bit 63.
        let (cpu, _) = run_asm(|a| {
            a.xor(eax, eax)?;
            a.stc()?;
            a.rcr(rax, 1)
        });
        assert_eq!(cpu.state.gpr[0], 1 << 63);
        assert_eq!(cpu.state.rflags & (CF | OF), OF);
    }

    #[test]
    fn double_shifts_take_bits_from_the_source() {
        let (cpu, _) = run_asm(|a| {
            a.mov(eax, 0x1234_5678)?;
            a.mov(ebx, 0x9abc_def0u32)?;
            a.shld(eax, ebx, 8)?;
            a.mov(ecx, 0x1234_5678)?;
            a.shrd(ecx, ebx, 8)
        });
        assert_eq!(cpu.state.gpr[0], 0x3456_789a);
        assert_eq!(cpu.state.gpr[1], 0xf012_3456);
        assert_eq!(cpu.state.rflags & CF, 0);
        // A 16-bit count above 16 rotates the source by the count minus 16 (AMD).
        assert_eq!(double(true, 0x1234, 0x5678, 20, 2).0, 0x6785);
        assert_eq!(double(false, 0x1234, 0x5678, 20, 2).0, 0x8567);
        // 64-bit shld by 4 and its carry.
        let (r, cf, _) = double(true, 0xf000_0000_0000_0001, 0xa000_0000_0000_0000, 4, 8);
        assert_eq!((r, cf), (0x0000_0000_0000_001a, 1));
    }

    #[test]
    fn sixteen_bit_double_shifts_past_16_rotate_the_source() {
        let (cpu, _) = run_asm(|a| {
            a.mov(ecx, 0x1234)?;
            a.mov(eax, 0x5678)?;
            a.mov(edx, 0x1234)?;
            a.shld(cx, ax, 20)?;
            a.shrd(dx, ax, 20)
        });
        assert_eq!(cpu.state.gpr[1], 0x6785);
        assert_eq!(cpu.state.gpr[2], 0x8567);
    }

    #[test]
    fn shifts_by_a_non_zero_count_set_af() {
        let (cpu, _) = run_asm(|a| {
            a.mov(eax, 6)?;
            a.shr(eax, 1)
        });
        assert_eq!(cpu.state.rflags & AF, AF);
    }
}
