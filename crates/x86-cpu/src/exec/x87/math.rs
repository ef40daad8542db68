//! The x87 instructions that work on ST(0) and perhaps ST(1): sign operations, square root,
//! rounding, scaling, extraction, remainders and the transcendental functions (computed in
//! double precision).

use iced_x86::Mnemonic;

use super::softfloat::{self, F80, F80_INDEFINITE, IE, Op, PE, Round, ZE, f64_to_f80, f80_to_f64};
use super::{
    ONE, SW_C0, SW_C1, SW_C2, SW_C3, SW_CC, arith, get, is_empty, pop, push, rc, screen, set,
    signal, stack_fault, unary,
};
use crate::exec::{Cpu, ExecResult, Flow, Stop};

/// The instructions working on ST(0) and perhaps ST(1): sign operations, square root,
/// rounding, scaling, remainders and the transcendental functions.
pub(super) fn execute(cpu: &mut Cpu, m: Mnemonic) -> ExecResult {
    use Mnemonic as M;
    let x = &mut cpu.state.x87;
    let needs_st1 = matches!(
        m,
        M::Fscale | M::Fprem | M::Fprem1 | M::Fpatan | M::Fyl2x | M::Fyl2xp1
    );
    let known = needs_st1
        || matches!(
            m,
            M::Fchs
                | M::Fabs
                | M::Fsqrt
                | M::Frndint
                | M::Fxtract
                | M::Fsin
                | M::Fcos
                | M::Fsincos
                | M::Fptan
                | M::F2xm1
        );
    if !known {
        return Err(Stop::Unimplemented);
    }
    let (Some(a), b) = (get(x, 0), get(x, 1)) else {
        if stack_fault(x, false) {
            set(x, 0, F80_INDEFINITE);
        }
        return Ok(Flow::Next);
    };
    let b = match (needs_st1, b) {
        (true, None) => {
            if stack_fault(x, false) {
                set(x, 0, F80_INDEFINITE);
            }
            return Ok(Flow::Next);
        }
        (_, b) => b.unwrap_or(0),
    };
    let mut flags = 0;
    let round = rc(x);
    let fa = F80::unpack(a);
    let sign = 1u128 << 79;
    // Results for ST(0) and, for the two-result instructions, ST(1) or a pushed value.
    enum Out {
        St0(u128),
        St1Pop(u128),
        Push(u128, u128),
        Nothing,
    }
    let out = match m {
        M::Fchs => Out::St0(a ^ sign),
        M::Fabs => Out::St0(a & !sign),
        M::Fsqrt => Out::St0(arith(Op::Sqrt, 0, a, round, &mut flags)),
        M::Frndint => Out::St0(match screen(&[a], &mut flags) {
            Err(r) => r,
            Ok(()) => softfloat::f80_round_int(a, round, &mut flags),
        }),
        M::Fscale => Out::St0(scale(a, b, &mut flags)),
        M::Fprem | M::Fprem1 => {
            let (r, cc) = remainder(a, b, m == M::Fprem1, &mut flags);
            x.fsw = (x.fsw & !SW_CC) | cc;
            Out::St0(r)
        }
        M::Fxtract => match screen(&[a], &mut flags) {
            Err(r) => Out::Push(r, r),
            Ok(()) if fa.is_zero() => {
                flags |= ZE;
                Out::Push(f64_to_f80(f64::NEG_INFINITY), a)
            }
            Ok(()) if fa.is_inf() => Out::Push(a, f64_to_f80(f64::INFINITY)),
            Ok(()) => {
                let lz = fa.mant.leading_zeros();
                let e = i64::from(fa.exp.max(1)) - 16383 - i64::from(lz);
                let sig = F80 {
                    sign: fa.sign,
                    exp: 16383,
                    mant: fa.mant << lz,
                }
                .pack();
                Out::Push(softfloat::int_to_f80(e), sig)
            }
        },
        M::Fsin | M::Fcos | M::Fptan | M::Fsincos => {
            if !fa.is_nan() && fa.exp != 0x7fff && fa.exp >= 16383 + 63 {
                // Out of range: C2 set, operand unchanged.
                x.fsw |= SW_C2;
                return Ok(Flow::Next);
            }
            x.fsw &= !SW_C2;
            match m {
                M::Fsin => Out::St0(unary(a, &mut flags, f64::sin)),
                M::Fcos => Out::St0(unary(a, &mut flags, f64::cos)),
                M::Fptan => Out::Push(unary(a, &mut flags, f64::tan), ONE),
                _ => {
                    let s = unary(a, &mut flags, f64::sin);
                    Out::Push(s, unary(a, &mut flags, f64::cos))
                }
            }
        }
        M::F2xm1 => Out::St0(unary(a, &mut flags, |v| {
            (v * core::f64::consts::LN_2).exp_m1()
        })),
        M::Fpatan | M::Fyl2x | M::Fyl2xp1 => {
            let r = match screen(&[b, a], &mut flags) {
                Err(r) => r,
                Ok(()) => {
                    let (y, xv) = (f80_to_f64(b), f80_to_f64(a));
                    let v = match m {
                        M::Fpatan => y.atan2(xv),
                        M::Fyl2x => {
                            if xv == 0.0 && y != 0.0 {
                                flags |= ZE;
                            }
                            y * xv.log2()
                        }
                        _ => y * xv.ln_1p() / core::f64::consts::LN_2,
                    };
                    if v.is_nan() {
                        flags |= IE;
                        F80_INDEFINITE
                    } else {
                        flags |= PE;
                        f64_to_f80(v)
                    }
                }
            };
            Out::St1Pop(r)
        }
        _ => Out::Nothing,
    };
    if !signal(x, flags) {
        return Ok(Flow::Next);
    }
    match out {
        Out::St0(v) => set(x, 0, v),
        Out::St1Pop(v) => {
            set(x, 1, v);
            pop(x);
        }
        Out::Push(st1, st0) => {
            if !is_empty(x, 7) {
                if stack_fault(x, true) {
                    set(x, 0, F80_INDEFINITE);
                    push(x, F80_INDEFINITE);
                }
                return Ok(Flow::Next);
            }
            set(x, 0, st1);
            push(x, st0);
        }
        Out::Nothing => {}
    }
    Ok(Flow::Next)
}

/// FSCALE: `a` times 2 to the power of `b` truncated, exact while the result stays normal.
fn scale(a: u128, b: u128, flags: &mut u32) -> u128 {
    if let Err(r) = screen(&[a, b], flags) {
        return r;
    }
    let (fa, fb) = (F80::unpack(a), F80::unpack(b));
    if fb.is_inf() {
        // Scaling by infinity: 0 * 2^inf and inf * 2^-inf are invalid.
        if (fa.is_zero() && !fb.sign) || (fa.is_inf() && fb.sign) {
            *flags |= IE;
            return F80_INDEFINITE;
        }
        return if fa.is_zero() || fa.is_inf() {
            a
        } else if fb.sign {
            F80 {
                sign: fa.sign,
                exp: 0,
                mant: 0,
            }
            .pack()
        } else {
            F80 {
                sign: fa.sign,
                exp: 0x7fff,
                mant: 1 << 63,
            }
            .pack()
        };
    }
    if fa.is_zero() || fa.is_inf() {
        return a;
    }
    let n = softfloat::f80_to_int(b, 64, Round::Zero, &mut 0) as i64;
    let e = i64::from(fa.exp);
    if fa.mant >> 63 != 0 && e + n > 0 && e + n < 0x7fff {
        return F80 {
            exp: (e + n) as u16,
            ..fa
        }
        .pack();
    }
    // Out of the simple range: through double precision.
    let x = f80_to_f64(a) * 2f64.powi(n.clamp(-3000, 3000) as i32);
    if x.is_infinite() {
        *flags |= softfloat::OE | PE;
    }
    f64_to_f80(x)
}

/// FPREM/FPREM1: the remainder (C2 clear: always complete) and the three low quotient bits in
/// C0, C3, C1.
fn remainder(a: u128, b: u128, ieee: bool, flags: &mut u32) -> (u128, u16) {
    if let Err(r) = screen(&[a, b], flags) {
        return (r, 0);
    }
    let (x, y) = (f80_to_f64(a), f80_to_f64(b));
    if x.is_infinite() || y == 0.0 {
        *flags |= IE;
        return (F80_INDEFINITE, 0);
    }
    if y.is_infinite() {
        return (a, 0);
    }
    let mut r = x % y;
    let mut q = ((x - r) / y).abs().round();
    if ieee {
        let half = y.abs() / 2.0;
        if r.abs() > half || (r.abs() == half && q % 2.0 == 1.0) {
            r -= y.abs().copysign(x);
            q += 1.0;
        }
    }
    let q = if q < 1.8e19 { q as u64 } else { 0 };
    let mut cc = 0;
    if q & 4 != 0 {
        cc |= SW_C0;
    }
    if q & 2 != 0 {
        cc |= SW_C3;
    }
    if q & 1 != 0 {
        cc |= SW_C1;
    }
    let r = if r == 0.0 { 0f64.copysign(x) } else { r };
    (f64_to_f80(r), cc)
}
