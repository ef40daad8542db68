//! SSE/SSE2 floating point: arithmetic, min/max, comparisons, logic, shuffles and conversions,
//! scalar and packed, single and double.
//!
//! Every operation goes through `softfloat`, so MXCSR's rounding mode, DAZ/FTZ and exception
//! flags apply; an unmasked exception suppresses the whole destination (see `super::raise`).

use iced_x86::{Instruction, Mnemonic, OpKind};

use super::softfloat::{self, Fmt, Op};
use super::{env, raise, set_xmm, src, xmm};
use crate::bus::CpuBus;
use crate::exec::basic::set_flags;
use crate::exec::{Cpu, ExecResult, Flow, Stop};
use crate::flags::sign_extend;
use crate::state::rflags::{AF, CF, OF, PF, SF, ZF};

/// Element `i` of `v` in format `fmt`.
fn get(v: u128, fmt: Fmt, i: u32) -> u64 {
    let w = fmt.bytes() * 8;
    let x = (v >> (i * w)) as u64;
    if w == 64 { x } else { x & 0xffff_ffff }
}

/// `v` with element `i` replaced by `x`.
fn put(v: u128, fmt: Fmt, i: u32, x: u64) -> u128 {
    let w = fmt.bytes() * 8;
    let m = if w == 64 {
        u128::from(u64::MAX)
    } else {
        0xffff_ffff
    } << (i * w);
    (v & !m) | ((u128::from(x) << (i * w)) & m)
}

/// What a two-operand float instruction does to each element.
#[derive(Clone, Copy)]
enum Kind {
    Arith(Op),
    MinMax(bool),
    Cmp,
    Recip(bool),
}

/// The kind, format and scalar-ness of the element-wise instructions.
fn classify(m: Mnemonic) -> Option<(Kind, Fmt, bool)> {
    use Fmt::{D, S};
    use Kind::*;
    use Mnemonic as M;
    Some(match m {
        M::Addss => (Arith(Op::Add), S, true),
        M::Addsd => (Arith(Op::Add), D, true),
        M::Addps => (Arith(Op::Add), S, false),
        M::Addpd => (Arith(Op::Add), D, false),
        M::Subss => (Arith(Op::Sub), S, true),
        M::Subsd => (Arith(Op::Sub), D, true),
        M::Subps => (Arith(Op::Sub), S, false),
        M::Subpd => (Arith(Op::Sub), D, false),
        M::Mulss => (Arith(Op::Mul), S, true),
        M::Mulsd => (Arith(Op::Mul), D, true),
        M::Mulps => (Arith(Op::Mul), S, false),
        M::Mulpd => (Arith(Op::Mul), D, false),
        M::Divss => (Arith(Op::Div), S, true),
        M::Divsd => (Arith(Op::Div), D, true),
        M::Divps => (Arith(Op::Div), S, false),
        M::Divpd => (Arith(Op::Div), D, false),
        M::Sqrtss => (Arith(Op::Sqrt), S, true),
        M::Sqrtsd => (Arith(Op::Sqrt), D, true),
        M::Sqrtps => (Arith(Op::Sqrt), S, false),
        M::Sqrtpd => (Arith(Op::Sqrt), D, false),
        M::Minss => (MinMax(false), S, true),
        M::Minsd => (MinMax(false), D, true),
        M::Minps => (MinMax(false), S, false),
        M::Minpd => (MinMax(false), D, false),
        M::Maxss => (MinMax(true), S, true),
        M::Maxsd => (MinMax(true), D, true),
        M::Maxps => (MinMax(true), S, false),
        M::Maxpd => (MinMax(true), D, false),
        M::Cmpss => (Cmp, S, true),
        M::Cmpsd => (Cmp, D, true),
        M::Cmpps => (Cmp, S, false),
        M::Cmppd => (Cmp, D, false),
        M::Rcpss => (Recip(false), S, true),
        M::Rcpps => (Recip(false), S, false),
        M::Rsqrtss => (Recip(true), S, true),
        M::Rsqrtps => (Recip(true), S, false),
        _ => return None,
    })
}

/// Executes `insn` if it is an SSE floating-point instruction.
pub(super) fn execute(
    cpu: &mut Cpu,
    bus: &mut dyn CpuBus,
    insn: &Instruction,
) -> Option<ExecResult> {
    let r = match classify(insn.mnemonic()) {
        Some((kind, fmt, scalar)) => elementwise(cpu, bus, insn, kind, fmt, scalar),
        None => other(cpu, bus, insn),
    };
    Some(r).filter(|r| *r != Err(Stop::Unimplemented))
}

fn elementwise(
    cpu: &mut Cpu,
    bus: &mut dyn CpuBus,
    insn: &Instruction,
    kind: Kind,
    fmt: Fmt,
    scalar: bool,
) -> ExecResult {
    let a = xmm(cpu, insn, 0);
    let b = src(cpu, bus, insn, 1)?;
    let env = env(cpu);
    let mut flags = 0;
    let n = if scalar { 1 } else { 16 / fmt.bytes() };
    let mut r = a;
    for i in 0..n {
        let (x, y) = (get(a, fmt, i), get(b, fmt, i));
        let v = match kind {
            Kind::Arith(op) => softfloat::arith(op, x, y, fmt, env, &mut flags),
            Kind::MinMax(max) => softfloat::min_max(max, x, y, fmt, env, &mut flags),
            Kind::Cmp => {
                let pred = insn.immediate8();
                if softfloat::compare(pred, x, y, fmt, env, &mut flags) {
                    u64::MAX
                } else {
                    0
                }
            }
            Kind::Recip(sqrt) => u64::from(softfloat::reciprocal(y as u32, sqrt)),
        };
        r = put(r, fmt, i, v);
    }
    raise(cpu, flags)?;
    set_xmm(cpu, insn, 0, r);
    Ok(Flow::Next)
}

/// Logic, shuffles, comparisons into RFLAGS and conversions.
fn other(cpu: &mut Cpu, bus: &mut dyn CpuBus, insn: &Instruction) -> ExecResult {
    use Fmt::{D, S};
    use Mnemonic as M;
    let m = insn.mnemonic();
    let env = env(cpu);
    let mut flags = 0;
    let result: u128 = match m {
        M::Andps | M::Andpd | M::Andnps | M::Andnpd | M::Orps | M::Orpd | M::Xorps | M::Xorpd => {
            let (a, b) = (xmm(cpu, insn, 0), src(cpu, bus, insn, 1)?);
            match m {
                M::Andps | M::Andpd => a & b,
                M::Andnps | M::Andnpd => !a & b,
                M::Orps | M::Orpd => a | b,
                _ => a ^ b,
            }
        }
        M::Comiss | M::Comisd | M::Ucomiss | M::Ucomisd => {
            let fmt = if matches!(m, M::Comiss | M::Ucomiss) {
                S
            } else {
                D
            };
            let (a, b) = (xmm(cpu, insn, 0), src(cpu, bus, insn, 1)?);
            let signal = matches!(m, M::Comiss | M::Comisd);
            let ord = softfloat::compare_ordered(
                get(a, fmt, 0),
                get(b, fmt, 0),
                fmt,
                env,
                signal,
                &mut flags,
            );
            raise(cpu, flags)?;
            let f = match ord {
                None => ZF | PF | CF,
                Some(core::cmp::Ordering::Less) => CF,
                Some(core::cmp::Ordering::Equal) => ZF,
                Some(core::cmp::Ordering::Greater) => 0,
            };
            set_flags(cpu, f, ZF | PF | CF | OF | SF | AF);
            return Ok(Flow::Next);
        }
        M::Shufps => {
            let (a, b) = (xmm(cpu, insn, 0), src(cpu, bus, insn, 1)?);
            let imm = u32::from(insn.immediate8());
            let mut r = 0;
            for i in 0..4 {
                let from = if i < 2 { a } else { b };
                r = put(r, S, i, get(from, S, (imm >> (2 * i)) & 3));
            }
            r
        }
        M::Shufpd => {
            let (a, b) = (xmm(cpu, insn, 0), src(cpu, bus, insn, 1)?);
            let imm = u32::from(insn.immediate8());
            put(get(a, D, imm & 1).into(), D, 1, get(b, D, (imm >> 1) & 1))
        }
        M::Unpcklps | M::Unpckhps => {
            let (a, b) = (xmm(cpu, insn, 0), src(cpu, bus, insn, 1)?);
            let base = if m == M::Unpcklps { 0 } else { 2 };
            let mut r = 0;
            for i in 0..2 {
                r = put(r, S, 2 * i, get(a, S, base + i));
                r = put(r, S, 2 * i + 1, get(b, S, base + i));
            }
            r
        }
        M::Unpcklpd | M::Unpckhpd => {
            let (a, b) = (xmm(cpu, insn, 0), src(cpu, bus, insn, 1)?);
            let i = u32::from(m == M::Unpckhpd);
            put(get(a, D, i).into(), D, 1, get(b, D, i))
        }
        M::Cvtsi2ss | M::Cvtsi2sd => {
            let fmt = if m == M::Cvtsi2ss { S } else { D };
            let size = cpu.op_size(insn, 1);
            let v = sign_extend(src(cpu, bus, insn, 1)? as u64, size) as i64;
            let r = softfloat::from_int(v, fmt, env, &mut flags);
            put(xmm(cpu, insn, 0), fmt, 0, r)
        }
        M::Cvtss2sd | M::Cvtsd2ss => {
            let (from, to) = if m == M::Cvtss2sd { (S, D) } else { (D, S) };
            let v = get(src(cpu, bus, insn, 1)?, from, 0);
            let r = softfloat::convert(v, from, to, env, &mut flags);
            put(xmm(cpu, insn, 0), to, 0, r)
        }
        M::Cvtss2si | M::Cvttss2si | M::Cvtsd2si | M::Cvttsd2si => {
            let fmt = if matches!(m, M::Cvtss2si | M::Cvttss2si) {
                S
            } else {
                D
            };
            let truncate = matches!(m, M::Cvttss2si | M::Cvttsd2si);
            let bits = cpu.op_size(insn, 0) * 8;
            let v = get(src(cpu, bus, insn, 1)?, fmt, 0);
            let r = softfloat::to_int(v, fmt, bits, truncate, env, &mut flags);
            raise(cpu, flags)?;
            cpu.set_reg(insn.op_register(0), r);
            return Ok(Flow::Next);
        }
        M::Cvtdq2ps => {
            let v = src(cpu, bus, insn, 1)?;
            lanes(4, |i| {
                let x = get(v, S, i) as u32 as i32;
                softfloat::from_int(x.into(), S, env, &mut flags)
            })
        }
        M::Cvtps2dq | M::Cvttps2dq => {
            let v = src(cpu, bus, insn, 1)?;
            let truncate = m == M::Cvttps2dq;
            lanes(4, |i| {
                softfloat::to_int(get(v, S, i), S, 32, truncate, env, &mut flags)
            })
        }
        M::Cvtdq2pd => {
            let v = src(cpu, bus, insn, 1)?;
            let x = |i| softfloat::from_int((get(v, S, i) as u32 as i32).into(), D, env, &mut 0);
            put(x(0).into(), D, 1, x(1))
        }
        M::Cvtpd2dq | M::Cvttpd2dq => {
            let v = src(cpu, bus, insn, 1)?;
            let truncate = m == M::Cvttpd2dq;
            lanes(2, |i| {
                softfloat::to_int(get(v, D, i), D, 32, truncate, env, &mut flags)
            })
        }
        M::Cvtps2pd => {
            let v = src(cpu, bus, insn, 1)?;
            let mut x = |i| softfloat::convert(get(v, S, i), S, D, env, &mut flags);
            let lo = x(0);
            put(lo.into(), D, 1, x(1))
        }
        M::Cvtpd2ps => {
            let v = src(cpu, bus, insn, 1)?;
            lanes(2, |i| {
                softfloat::convert(get(v, D, i), D, S, env, &mut flags)
            })
        }
        _ => return Err(Stop::Unimplemented),
    };
    raise(cpu, flags)?;
    if insn.op_kind(0) == OpKind::Register {
        set_xmm(cpu, insn, 0, result);
    }
    Ok(Flow::Next)
}

/// `n` 32-bit elements from `f`, the rest zero.
fn lanes(n: u32, mut f: impl FnMut(u32) -> u64) -> u128 {
    let mut r = 0;
    for i in 0..n {
        r = put(r, Fmt::S, i, f(i));
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn element_access_round_trips() {
        let v = put(0, Fmt::S, 2, 0xdead_beef);
        assert_eq!(get(v, Fmt::S, 2), 0xdead_beef);
        assert_eq!(get(v, Fmt::D, 1), 0xdead_beef);
        let v = put(u128::MAX, Fmt::D, 0, 1);
        assert_eq!(v, (u128::MAX << 64) | 1);
    }
}
