//! The x87's 80-bit extended format (sign, 15-bit exponent with bias 16383, 64-bit significand
//! with an explicit integer bit, kept in the low 80 bits of a `u128`): its arithmetic under
//! precision control, and its conversions to and from single, double and integers.
//!
//! Precision control (FCW.PC) rounds the significand of FADD/FSUB/FMUL/FDIV/FSQRT results to 24,
//! 53 or 64 bits while keeping the extended exponent range; a denormal result keeps the bits
//! above the same position, as on hardware.

use super::exact::{self, EXTENDED, Format, Num, Raw, Rounded};
use super::{Env, Fmt, IE, OE, Op, PE, Round, UE};

/// The parts of an extended value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct F80 {
    pub sign: bool,
    pub exp: u16,
    pub mant: u64,
}

impl F80 {
    pub(crate) fn unpack(v: u128) -> F80 {
        F80 {
            sign: (v >> 79) & 1 != 0,
            exp: ((v >> 64) & 0x7fff) as u16,
            mant: v as u64,
        }
    }
    pub(crate) fn pack(self) -> u128 {
        (u128::from(self.sign) << 79) | (u128::from(self.exp) << 64) | u128::from(self.mant)
    }
    pub(crate) fn is_nan(self) -> bool {
        self.exp == 0x7fff && self.mant << 1 != 0
    }
    pub(crate) fn is_snan(self) -> bool {
        self.is_nan() && self.mant & (1 << 62) == 0
    }
    pub(crate) fn is_inf(self) -> bool {
        self.exp == 0x7fff && self.mant << 1 == 0
    }
    pub(crate) fn is_zero(self) -> bool {
        self.exp == 0 && self.mant == 0
    }
    /// The value of a supported encoding that is not a NaN.
    pub(crate) fn num(self) -> Num {
        if self.exp == 0x7fff {
            return Num::Inf(self.sign);
        }
        // Denormals and pseudo-denormals have the exponent of the smallest normal.
        Num::from_parts(self.sign, i32::from(self.exp.max(1)) - 16383, self.mant)
    }
    /// An unsupported encoding: an unnormal, pseudo-NaN or pseudo-infinity (integer bit clear
    /// with a non-zero exponent).
    pub(crate) fn is_unsupported(self) -> bool {
        self.exp != 0 && self.mant >> 63 == 0
    }
}

/// The x87's "real indefinite" QNaN.
pub(crate) const F80_INDEFINITE: u128 = 0xffff_c000_0000_0000_0000;

/// A single or double (raw bits) as an extended value, exactly: NaNs keep their payload and
/// their quiet bit (an SNaN stays signalling for the caller to report).
pub(crate) fn ieee_to_f80(v: u64, from: Fmt) -> u128 {
    if from.is_nan(v) {
        let p = from.format().p;
        let sign = v & from.sign_bit() != 0;
        return F80 {
            sign,
            exp: 0x7fff,
            mant: (1 << 63) | ((v & from.frac_mask()) << (64 - p)),
        }
        .pack();
    }
    pack_num(from.unpack(v))
}

/// A double as an extended value (exact).
pub(crate) fn f64_to_f80(x: f64) -> u128 {
    ieee_to_f80(x.to_bits(), Fmt::D)
}

/// An exactly representable value in extended format.
fn pack_num(v: Num) -> u128 {
    let out = exact::round(v, EXTENDED, Round::Nearest, &mut 0);
    pack(out.value, 64)
}

/// The encoding of a value rounded to the extended exponent range with `p` significand bits.
fn pack(r: Rounded, p: u32) -> u128 {
    let f = match r {
        Rounded::Zero(sign) => F80 {
            sign,
            exp: 0,
            mant: 0,
        },
        Rounded::Inf(sign) => F80 {
            sign,
            exp: 0x7fff,
            mant: 1 << 63,
        },
        Rounded::Finite { sign, exp, mant } => {
            let mant = mant << (64 - p);
            F80 {
                sign,
                exp: if mant >> 63 != 0 {
                    (exp + 16383) as u16
                } else {
                    0
                },
                mant,
            }
        }
    };
    f.pack()
}

/// FCW.PC's significand width: 24, 53 or 64 bits (the reserved encoding counts as 64).
pub(crate) fn precision(pc: u16) -> u32 {
    match pc & 3 {
        0 => 24,
        2 => 53,
        _ => 64,
    }
}

/// An x87 result: the encoding and whether rounding grew its magnitude (C1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct X87Value {
    pub bits: u128,
    pub up: bool,
}

/// How far an x87 result's exponent is wrapped when it overflows or underflows with that
/// exception unmasked (the result is then delivered, scaled into range).
const WRAP: i32 = 24576;

/// Rounds `v` to extended format with `p` significand bits under `env`. With underflow
/// unmasked every tiny result raises UE, and a tiny result (or, with overflow unmasked, one too
/// large) is delivered with its exponent wrapped by 24576 into range.
fn round_f80(v: Num, p: u32, env: Env, flags: &mut u32) -> X87Value {
    let f = Format { p, ..EXTENDED };
    let mut got = 0;
    let out = exact::round(v, f, env.rc, &mut got);
    let wrap = if out.tiny && env.trap_underflow {
        Some((WRAP, UE))
    } else if got & OE != 0 && env.trap_overflow {
        Some((-WRAP, OE))
    } else {
        None
    };
    if let (Some((by, flag)), Num::Finite(r)) = (wrap, v) {
        let mut got = 0;
        let scaled = Num::Finite(Raw {
            exp: r.exp + by,
            ..r
        });
        let out = exact::round(scaled, f, env.rc, &mut got);
        *flags |= (got & PE) | flag;
        return X87Value {
            bits: pack(out.value, p),
            up: out.up,
        };
    }
    *flags |= got;
    X87Value {
        bits: pack(out.value, p),
        up: out.up,
    }
}

/// `a op b` (for `Sqrt`, the square root of `b`) on supported operands that are not NaNs,
/// rounded to `p` bits; an invalid operation gives the real indefinite.
pub(crate) fn f80_arith(op: Op, a: u128, b: u128, p: u32, env: Env, flags: &mut u32) -> X87Value {
    let (x, y) = (F80::unpack(a).num(), F80::unpack(b).num());
    match exact::compute(op, x, y, env.rc, flags) {
        Some(r) => round_f80(r, p, env, flags),
        None => X87Value {
            bits: F80_INDEFINITE,
            up: false,
        },
    }
}

/// FSCALE on supported operands that are not NaNs, `b` finite: `a * 2^trunc(b)` rounded to
/// extended precision.
pub(crate) fn f80_scale(a: u128, b: u128, env: Env, flags: &mut u32) -> X87Value {
    let (fa, fb) = (F80::unpack(a), F80::unpack(b));
    // Beyond 2^17 every finite value overflows or underflows alike.
    let n = match split_int(fb) {
        Some((i, _)) => i.min(1 << 17) as i32,
        None => 1 << 17,
    };
    let n = if fb.sign { -n } else { n };
    let v = match fa.num() {
        Num::Finite(r) => Num::Finite(Raw {
            exp: r.exp + n,
            ..r
        }),
        other => other,
    };
    round_f80(v, 64, env, flags)
}

/// FPREM/FPREM1 on finite operands, `b` non-zero: the (partial) remainder, the low three bits of
/// the quotient, and whether the reduction is complete. A partial step reduces the exponent
/// difference by 32 to 63 bits, the way hardware does (the exact amount is implementation
/// specific; this one is `32 + difference % 32`).
pub(crate) fn f80_remainder(a: u128, b: u128, ieee: bool) -> (u128, u8, bool) {
    let (Num::Finite(x), Num::Finite(y)) = (F80::unpack(a).num(), F80::unpack(b).num()) else {
        // A zero dividend is its own remainder.
        return (a, 0, true);
    };
    let d = x.exp - y.exp;
    let min_d = if ieee { -1 } else { 0 };
    if d < min_d {
        return (a, 0, true);
    }
    let (d, complete) = if d >= 64 {
        (32 + d % 32, false)
    } else {
        (d, true)
    };
    // Both as integers in units of 2^u.
    let (xa, yb) = (x.sig >> 64, y.sig >> 64);
    let (num, den, u) = if d >= 0 {
        (xa << d, yb, x.exp - d - 63)
    } else {
        (xa, yb << 1, x.exp - 63)
    };
    let mut q = num / den;
    let mut r = num % den;
    let mut sign = x.sign;
    if ieee && complete && (2 * r > den || (2 * r == den && q & 1 != 0)) {
        r = den - r;
        q += 1;
        sign = !sign;
    }
    let v = if r == 0 {
        Num::Zero(x.sign)
    } else {
        Num::Finite(Raw::new(sign, u + 127, r))
    };
    (pack_num(v), (q & 7) as u8, complete)
}

/// An extended value rounded to single or double precision by `env`, raising IE for a signalling
/// NaN or an unsupported encoding, and OE/UE/PE; also whether rounding grew the magnitude.
pub(crate) fn f80_to(v: u128, to: Fmt, env: Env, flags: &mut u32) -> (u64, bool) {
    let f = F80::unpack(v);
    let sign_bit = if f.sign { to.sign_bit() } else { 0 };
    if f.is_unsupported() {
        *flags |= IE;
        return (to.default_nan(), false);
    }
    if f.is_nan() {
        if f.is_snan() {
            *flags |= IE;
        }
        let p = to.format().p;
        let payload = (f.mant >> (64 - p)) & to.frac_mask();
        return (sign_bit | to.exp_mask() | to.quiet_bit() | payload, false);
    }
    let out = exact::round(f.num(), to.format(), env.rc, flags);
    if out.tiny && env.trap_underflow {
        *flags |= UE;
    }
    (to.pack(out.value), out.up)
}

/// An extended value as a double, rounded to nearest.
pub(crate) fn f80_to_f64(v: u128) -> f64 {
    let env = Env {
        rc: Round::Nearest,
        ..Env::default()
    };
    f64::from_bits(f80_to(v, Fmt::D, env, &mut 0).0)
}

/// A signed integer as an extended value (exact).
pub(crate) fn int_to_f80(i: i64) -> u128 {
    pack_num(Num::from_parts(i < 0, 63, i.unsigned_abs()))
}

/// The integer part of an extended value and the fraction left, as a 64-bit binary fraction
/// (non-zero if anything was lost); `None` if the integer part does not fit 64 bits.
fn split_int(f: F80) -> Option<(u64, u64)> {
    let e = i32::from(f.exp.max(1)) - 16383;
    if e >= 64 {
        return None;
    }
    if e < -64 {
        return Some((0, u64::from(f.mant != 0)));
    }
    // value * 2^64 = mant * 2^(e + 1)
    let fixed = if e + 1 >= 0 {
        u128::from(f.mant) << (e + 1)
    } else {
        let s = (-(e + 1)) as u32;
        let lost = f.mant & ((1u64 << s) - 1) != 0;
        (u128::from(f.mant) >> s) | u128::from(lost)
    };
    Some(((fixed >> 64) as u64, fixed as u64))
}

/// Rounds the magnitude `int + frac/2^64` to an integer by `rc` for a value of sign `sign`:
/// the magnitude (`None` past 64 bits) and whether it was rounded up.
fn round_int(int: u64, frac: u64, sign: bool, rc: Round) -> (Option<u64>, bool) {
    let half = 1u64 << 63;
    let up = match rc {
        Round::Nearest => frac > half || (frac == half && int & 1 != 0),
        Round::Up => frac != 0 && !sign,
        Round::Down => frac != 0 && sign,
        Round::Zero => false,
    };
    (int.checked_add(u64::from(up)), up)
}

/// FIST/FISTTP: an extended value to a signed integer of `bits` (16, 32 or 64) rounded by `rc`,
/// and whether its magnitude was rounded up; NaN, infinity and out-of-range values give the
/// integer indefinite and IE.
pub(crate) fn f80_to_int(v: u128, bits: u32, rc: Round, flags: &mut u32) -> (u64, bool) {
    let mask = if bits == 64 {
        u64::MAX
    } else {
        (1u64 << bits) - 1
    };
    let indefinite = 1u64 << (bits - 1);
    let f = F80::unpack(v);
    let fail = |flags: &mut u32| {
        *flags |= IE;
        (indefinite, false)
    };
    if f.exp == 0x7fff || f.is_unsupported() {
        return fail(flags);
    }
    let Some((int, frac)) = split_int(f) else {
        return fail(flags);
    };
    let (Some(mag), up) = round_int(int, frac, f.sign, rc) else {
        return fail(flags);
    };
    let limit = 1u64 << (bits - 1);
    if (!f.sign && mag >= limit) || (f.sign && mag > limit) {
        return fail(flags);
    }
    if frac != 0 {
        *flags |= PE;
    }
    let i = if f.sign { mag.wrapping_neg() } else { mag };
    (i & mask, up)
}

/// FRNDINT: an extended value rounded to an integral value by `rc` (exact in 80 bits).
pub(crate) fn f80_round_int(v: u128, rc: Round, flags: &mut u32) -> X87Value {
    let f = F80::unpack(v);
    let same = X87Value { bits: v, up: false };
    if f.exp == 0x7fff || f.is_zero() {
        return same;
    }
    let Some((int, frac)) = split_int(f) else {
        return same;
    };
    if frac == 0 {
        return same;
    }
    *flags |= PE;
    let (mag, up) = round_int(int, frac, f.sign, rc);
    let bits = match mag {
        Some(m) => pack_num(Num::from_parts(f.sign, 63, m)),
        None => F80 {
            sign: f.sign,
            exp: 16383 + 64,
            mant: 1 << 63,
        }
        .pack(),
    };
    X87Value { bits, up }
}
