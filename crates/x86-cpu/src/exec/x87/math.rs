//! The x87 instructions that work on ST(0) and perhaps ST(1): sign operations, square root,
//! rounding, scaling, extraction and remainders (exact, or rounded once in extended precision),
//! and the transcendental functions (computed in double precision).

use iced_x86::Mnemonic;

use super::softfloat::{
    self, F80, F80_INDEFINITE, IE, Op, PE, X87Value, ZE, f64_to_f80, f80_to_f64,
};
use super::{
    ONE, SW_C0, SW_C1, SW_C2, SW_C3, SW_CC, X87, arith, env, get, is_empty, pop, push, rc, screen,
    set, set_c1, signal, signal_result, stack_fault, unary,
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
    // Whether the ST(0) result was rounded up in magnitude (C1).
    let mut up = false;
    let mut rounded = |v: X87Value| {
        up = v.up;
        v.bits
    };
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
        M::Fsqrt => Out::St0(rounded(arith(Op::Sqrt, 0, a, x, false, &mut flags))),
        M::Frndint => Out::St0(match screen(&[a], false, &mut flags) {
            Err(r) => r,
            Ok(()) => rounded(softfloat::f80_round_int(a, round, &mut flags)),
        }),
        M::Fscale => Out::St0(rounded(scale(a, b, x, &mut flags))),
        M::Fprem | M::Fprem1 => {
            let (r, cc) = remainder(a, b, m == M::Fprem1, &mut flags);
            x.fsw = (x.fsw & !SW_CC) | cc;
            Out::St0(r)
        }
        M::Fxtract => match screen(&[a], false, &mut flags) {
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
            let r = match screen(&[b, a], false, &mut flags) {
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
    let write = if matches!(m, M::Fsqrt | M::Fscale) {
        signal_result(x, flags)
    } else {
        signal(x, flags)
    };
    if !write {
        return Ok(Flow::Next);
    }
    match out {
        Out::St0(v) => {
            set(x, 0, v);
            if !matches!(m, M::Fprem | M::Fprem1) {
                set_c1(x, up);
            }
        }
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

/// FSCALE: `a` times 2 to the power of `b` truncated, rounded to extended precision.
fn scale(a: u128, b: u128, x: &X87, flags: &mut u32) -> X87Value {
    let exact = |bits| X87Value { bits, up: false };
    if let Err(r) = screen(&[a, b], false, flags) {
        return exact(r);
    }
    let (fa, fb) = (F80::unpack(a), F80::unpack(b));
    if fb.is_inf() {
        // Scaling by infinity: 0 * 2^inf and inf * 2^-inf are invalid.
        if (fa.is_zero() && !fb.sign) || (fa.is_inf() && fb.sign) {
            *flags |= IE;
            return exact(F80_INDEFINITE);
        }
        let exp = if fa.is_zero() || fa.is_inf() {
            return exact(a);
        } else if fb.sign {
            0
        } else {
            0x7fff
        };
        let mant = if exp == 0 { 0 } else { 1 << 63 };
        return exact(
            F80 {
                sign: fa.sign,
                exp,
                mant,
            }
            .pack(),
        );
    }
    softfloat::f80_scale(a, b, env(x), flags)
}

/// FPREM/FPREM1: the exact (partial) remainder, with C2 set while the reduction is incomplete
/// and otherwise the three low quotient bits in C0, C3, C1.
fn remainder(a: u128, b: u128, ieee: bool, flags: &mut u32) -> (u128, u16) {
    if let Err(r) = screen(&[a, b], false, flags) {
        return (r, 0);
    }
    let (fa, fb) = (F80::unpack(a), F80::unpack(b));
    if fa.is_inf() || fb.is_zero() {
        *flags |= IE;
        return (F80_INDEFINITE, 0);
    }
    if fb.is_inf() {
        return (a, 0);
    }
    let (r, q, complete) = softfloat::f80_remainder(a, b, ieee);
    if !complete {
        return (r, SW_C2);
    }
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
    (r, cc)
}
