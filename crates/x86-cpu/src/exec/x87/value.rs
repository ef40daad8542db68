//! The x87's value rules: denormal and NaN screening of operands, the NaN propagation rule,
//! arithmetic under FCW, the double-precision core of the transcendental functions, and the
//! exact comparison of extended values.

use super::softfloat::{self, DE, F80, F80_INDEFINITE, IE, Op, PE, X87Value, ZE, f80_to_f64};
use super::{X87, env, precision};

pub(super) fn is_denormal(f: F80) -> bool {
    f.exp == 0 && f.mant != 0
}

/// The x87 NaN rule: of two NaNs the one with the larger significand (a QNaN over an SNaN, the
/// positive one of equal significands), quieted.
pub(super) fn propagate_nan(a: F80, b: F80, flags: &mut u32) -> u128 {
    if a.is_snan() || b.is_snan() {
        *flags |= IE;
    }
    let quiet = |f: F80| {
        F80 {
            mant: f.mant | (3 << 62),
            ..f
        }
        .pack()
    };
    match (a.is_nan(), b.is_nan()) {
        (true, true) => {
            if a.is_snan() != b.is_snan() {
                quiet(if a.is_snan() { b } else { a })
            } else if (b.mant << 1, !b.sign) > (a.mant << 1, !a.sign) {
                quiet(b)
            } else {
                quiet(a)
            }
        }
        (true, false) => quiet(a),
        _ => quiet(b),
    }
}

/// Checks operands for NaNs, unsupported encodings and denormals (`denormal`: a memory operand
/// was denormal in its own format): `Err` is the result to use.
pub(super) fn screen(
    vals: &[u128],
    denormal: bool,
    flags: &mut u32,
) -> core::result::Result<(), u128> {
    let f = [
        F80::unpack(vals[0]),
        F80::unpack(*vals.get(1).unwrap_or(&vals[0])),
    ];
    if f.iter().any(|f| f.is_unsupported()) {
        *flags |= IE;
        return Err(F80_INDEFINITE);
    }
    if f.iter().any(|f| f.is_nan()) {
        return Err(propagate_nan(f[0], f[1], flags));
    }
    if denormal || f.iter().any(|&f| is_denormal(f)) {
        *flags |= DE;
    }
    Ok(())
}

/// `a op b` (for `Sqrt`, the square root of `b`) in extended precision, rounded under FCW's
/// rounding and precision control. An invalid operation or a division by zero hides a denormal
/// operand (DE stays clear), as on the silicon.
pub(super) fn arith(
    op: Op,
    a: u128,
    b: u128,
    x: &X87,
    denormal: bool,
    flags: &mut u32,
) -> X87Value {
    let mut f = 0;
    let r = match screen(&[a, b], denormal, &mut f) {
        Err(bits) => X87Value { bits, up: false },
        Ok(()) => softfloat::f80_arith(op, a, b, precision(x), env(x), &mut f),
    };
    if f & (IE | ZE) != 0 {
        f &= !DE;
    }
    *flags |= f;
    r
}

/// A function of one value computed in double precision (the transcendental instructions).
pub(super) fn unary(v: u128, flags: &mut u32, f: impl Fn(f64) -> f64) -> u128 {
    if let Err(r) = screen(&[v], false, flags) {
        return r;
    }
    let r = f(f80_to_f64(v));
    if r.is_nan() {
        *flags |= IE;
        return F80_INDEFINITE;
    }
    *flags |= PE;
    softfloat::f64_to_f80(r)
}

/// Compares two extended values exactly; `None` if unordered.
pub(super) fn compare(a: u128, b: u128) -> Option<core::cmp::Ordering> {
    use core::cmp::Ordering;
    let (fa, fb) = (F80::unpack(a), F80::unpack(b));
    if fa.is_nan() || fb.is_nan() || fa.is_unsupported() || fb.is_unsupported() {
        return None;
    }
    let zero = |f: F80| f.mant == 0 && f.exp != 0x7fff;
    if zero(fa) && zero(fb) {
        return Some(Ordering::Equal);
    }
    let key = |f: F80| {
        if zero(f) {
            (0, 0)
        } else {
            (f.exp.max(1), f.mant)
        }
    };
    let mag = key(fa).cmp(&key(fb));
    Some(match (fa.sign && !zero(fa), fb.sign && !zero(fb)) {
        (false, false) => mag,
        (true, true) => mag.reverse(),
        (false, true) => Ordering::Greater,
        (true, false) => Ordering::Less,
    })
}
