//! Floating point the way x86 does it: the four rounding modes, the exception flags, DAZ/FTZ,
//! the SSE NaN rules, and conversions between single, double, the x87's 80-bit extended format
//! and integers.
//!
//! Every result is computed exactly (`exact`: 128-bit significands with a sticky bit) and
//! rounded once to its destination, with tininess detected after rounding as x86 does; the
//! extended format and the x87's precision control live in `extended`. RCPSS/RSQRTSS are the
//! one approximation: see [`reciprocal`].

mod exact;
mod extended;

pub(crate) use exact::{Format, Num, Rounded};
pub(crate) use extended::*;

/// A rounding mode, as encoded in MXCSR.RC and FCW.RC.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) enum Round {
    #[default]
    Nearest,
    Down,
    Up,
    Zero,
}

impl Round {
    /// The mode of a two-bit RC field.
    pub(crate) fn from_rc(rc: u32) -> Round {
        match rc & 3 {
            0 => Round::Nearest,
            1 => Round::Down,
            2 => Round::Up,
            _ => Round::Zero,
        }
    }
}

/// Exception flags, in the bit order MXCSR and the x87 status word share.
pub(crate) const IE: u32 = 1;
pub(crate) const DE: u32 = 2;
pub(crate) const ZE: u32 = 4;
pub(crate) const OE: u32 = 8;
pub(crate) const UE: u32 = 16;
pub(crate) const PE: u32 = 32;

/// The floating-point environment of one operation.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Env {
    pub rc: Round,
    /// Denormal inputs are read as zero.
    pub daz: bool,
    /// Tiny results are flushed to zero (when underflow is masked).
    pub ftz: bool,
    /// Underflow is unmasked: every tiny result, exact or not, raises UE (and the x87 delivers
    /// it with its exponent wrapped, see `extended`).
    pub trap_underflow: bool,
    /// Overflow is unmasked (the x87 then delivers the result with its exponent wrapped).
    pub trap_overflow: bool,
}

/// Single (32-bit) or double (64-bit) precision; values travel as raw bits in a `u64`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fmt {
    S,
    D,
}

impl Fmt {
    /// Width in bytes.
    pub(crate) fn bytes(self) -> u32 {
        match self {
            Fmt::S => 4,
            Fmt::D => 8,
        }
    }
    fn quiet_bit(self) -> u64 {
        match self {
            Fmt::S => 1 << 22,
            Fmt::D => 1 << 51,
        }
    }
    fn exp_mask(self) -> u64 {
        match self {
            Fmt::S => 0x7f80_0000,
            Fmt::D => 0x7ff0_0000_0000_0000,
        }
    }
    fn frac_mask(self) -> u64 {
        match self {
            Fmt::S => 0x007f_ffff,
            Fmt::D => 0x000f_ffff_ffff_ffff,
        }
    }
    fn sign_bit(self) -> u64 {
        match self {
            Fmt::S => 1 << 31,
            Fmt::D => 1 << 63,
        }
    }
    /// The default NaN ("QNaN floating-point indefinite").
    pub(crate) fn default_nan(self) -> u64 {
        match self {
            Fmt::S => 0xffc0_0000,
            Fmt::D => 0xfff8_0000_0000_0000,
        }
    }
    pub(crate) fn is_nan(self, v: u64) -> bool {
        v & self.exp_mask() == self.exp_mask() && v & self.frac_mask() != 0
    }
    pub(crate) fn is_snan(self, v: u64) -> bool {
        self.is_nan(v) && v & self.quiet_bit() == 0
    }
    pub(crate) fn is_denormal(self, v: u64) -> bool {
        v & self.exp_mask() == 0 && v & self.frac_mask() != 0
    }
    pub(crate) fn quiet(self, v: u64) -> u64 {
        v | self.quiet_bit()
    }
    /// The value as a double (exact).
    pub(crate) fn to_f64(self, v: u64) -> f64 {
        match self {
            Fmt::S => f64::from(f32::from_bits(v as u32)),
            Fmt::D => f64::from_bits(v),
        }
    }
    /// The precision and exponent range.
    fn format(self) -> Format {
        match self {
            Fmt::S => exact::SINGLE,
            Fmt::D => exact::DOUBLE,
        }
    }
    /// A value that is not a NaN, unpacked.
    pub(crate) fn unpack(self, v: u64) -> Num {
        let f = self.format();
        let frac_bits = f.p - 1;
        let sign = v & self.sign_bit() != 0;
        let e = ((v & self.exp_mask()) >> frac_bits) as i32;
        let frac = v & self.frac_mask();
        match e {
            0 => Num::from_parts(sign, f.emin - frac_bits as i32 + 63, frac),
            _ if v & self.exp_mask() == self.exp_mask() => Num::Inf(sign),
            _ => {
                let e = e - f.emax;
                Num::from_parts(sign, e - frac_bits as i32 + 63, frac | (1 << frac_bits))
            }
        }
    }
    /// The encoding of a rounded value.
    fn pack(self, r: Rounded) -> u64 {
        let frac_bits = self.format().p - 1;
        let sign = |s: bool| if s { self.sign_bit() } else { 0 };
        match r {
            Rounded::Zero(s) => sign(s),
            Rounded::Inf(s) => sign(s) | self.exp_mask(),
            Rounded::Finite { sign: s, exp, mant } => {
                let biased = if mant >> frac_bits != 0 {
                    (exp + self.format().emax) as u64
                } else {
                    0
                };
                sign(s) | (biased << frac_bits) | (mant & self.frac_mask())
            }
        }
    }
    /// Reads a denormal as a signed zero.
    fn flush(self, v: u64) -> u64 {
        if self.is_denormal(v) {
            v & self.sign_bit()
        } else {
            v
        }
    }
}

/// A basic arithmetic operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Add,
    Sub,
    Mul,
    Div,
    Sqrt,
}

/// Rounds `v` to `fmt` under `env`, raising OE/UE/PE; a tiny result is flushed to zero under
/// FTZ.
fn finish(v: Num, fmt: Fmt, env: Env, flags: &mut u32) -> u64 {
    let out = exact::round(v, fmt.format(), env.rc, flags);
    if out.tiny && env.ftz {
        *flags |= UE | PE;
        return fmt.pack(Rounded::Zero(v.sign()));
    }
    if out.tiny && env.trap_underflow {
        *flags |= UE;
    }
    fmt.pack(out.value)
}

/// Checks the operands of an arithmetic operation for NaNs (the SSE rule: the first NaN
/// operand, quieted) and denormals (DE, or zero under DAZ). Returns the NaN result if there is
/// one, else the operands to compute with.
fn prepare(a: u64, b: u64, fmt: Fmt, env: Env, flags: &mut u32) -> Result<(u64, u64), u64> {
    if fmt.is_nan(a) || fmt.is_nan(b) {
        if fmt.is_snan(a) || fmt.is_snan(b) {
            *flags |= IE;
        }
        return Err(fmt.quiet(if fmt.is_nan(a) { a } else { b }));
    }
    if env.daz {
        return Ok((fmt.flush(a), fmt.flush(b)));
    }
    if fmt.is_denormal(a) || fmt.is_denormal(b) {
        *flags |= DE;
    }
    Ok((a, b))
}

/// `a op b` in `fmt` (for `Sqrt`, the square root of `b`), with x86 NaN, flag and rounding rules.
/// An invalid operation or a division by zero hides a denormal operand (DE stays clear), as on
/// the silicon.
pub(crate) fn arith(op: Op, a: u64, b: u64, fmt: Fmt, env: Env, flags: &mut u32) -> u64 {
    let mut f = 0;
    let (a, b) = if op == Op::Sqrt {
        match prepare(b, b, fmt, env, &mut f) {
            Ok((_, b)) => (0, b),
            Err(nan) => {
                *flags |= f;
                return nan;
            }
        }
    } else {
        match prepare(a, b, fmt, env, &mut f) {
            Ok(x) => x,
            Err(nan) => {
                *flags |= f;
                return nan;
            }
        }
    };
    let (x, y) = (fmt.unpack(a), fmt.unpack(b));
    let r = exact::compute(op, x, y, env.rc, &mut f);
    if f & (IE | ZE) != 0 {
        f &= !DE;
    }
    *flags |= f;
    match r {
        Some(r) => finish(r, fmt, env, flags),
        None => fmt.default_nan(),
    }
}

/// MINSS/MAXSS and their packed forms: a NaN or two zeros give the second operand (read under
/// DAZ like any other).
pub(crate) fn min_max(max: bool, a: u64, b: u64, fmt: Fmt, env: Env, flags: &mut u32) -> u64 {
    if fmt.is_nan(a) || fmt.is_nan(b) {
        *flags |= IE;
        // The second operand as read: a denormal one is zero under DAZ.
        return if env.daz { fmt.flush(b) } else { b };
    }
    let (fa, fb) = if env.daz {
        (fmt.flush(a), fmt.flush(b))
    } else {
        if fmt.is_denormal(a) || fmt.is_denormal(b) {
            *flags |= DE;
        }
        (a, b)
    };
    let (x, y) = (fmt.to_f64(fa), fmt.to_f64(fb));
    let pick_a = if max { x > y } else { x < y };
    if pick_a { fa } else { fb }
}

/// The CMPPS predicates 0..7: the result and whether a QNaN operand signals invalid.
pub(crate) fn compare(pred: u8, a: u64, b: u64, fmt: Fmt, env: Env, flags: &mut u32) -> bool {
    let unordered = fmt.is_nan(a) || fmt.is_nan(b);
    let signalling_pred = matches!(pred & 7, 1 | 2 | 5 | 6);
    if fmt.is_snan(a) || fmt.is_snan(b) || (unordered && signalling_pred) {
        *flags |= IE;
    }
    let (a, b) = if env.daz {
        (fmt.flush(a), fmt.flush(b))
    } else {
        if !unordered && (fmt.is_denormal(a) || fmt.is_denormal(b)) {
            *flags |= DE;
        }
        (a, b)
    };
    let (x, y) = (fmt.to_f64(a), fmt.to_f64(b));
    match pred & 7 {
        0 => x == y,
        1 => x < y,
        2 => x <= y,
        3 => unordered,
        4 => x != y,
        5 => x.partial_cmp(&y) != Some(core::cmp::Ordering::Less),
        6 => !matches!(
            x.partial_cmp(&y),
            Some(core::cmp::Ordering::Less | core::cmp::Ordering::Equal)
        ),
        _ => !unordered,
    }
}

/// An ordered comparison's outcome (None = unordered), for COMISS and friends; `signal_qnan`
/// is COMIS* (any NaN is invalid) as opposed to UCOMIS* (only SNaN is).
pub(crate) fn compare_ordered(
    a: u64,
    b: u64,
    fmt: Fmt,
    env: Env,
    signal_qnan: bool,
    flags: &mut u32,
) -> Option<core::cmp::Ordering> {
    let unordered = fmt.is_nan(a) || fmt.is_nan(b);
    if fmt.is_snan(a) || fmt.is_snan(b) || (unordered && signal_qnan) {
        *flags |= IE;
    }
    if unordered {
        return None;
    }
    let (a, b) = if env.daz {
        (fmt.flush(a), fmt.flush(b))
    } else {
        if fmt.is_denormal(a) || fmt.is_denormal(b) {
            *flags |= DE;
        }
        (a, b)
    };
    fmt.to_f64(a).partial_cmp(&fmt.to_f64(b))
}

/// Float to float (single <-> double), with the NaN payload kept as far as it fits.
pub(crate) fn convert(v: u64, from: Fmt, to: Fmt, env: Env, flags: &mut u32) -> u64 {
    if from.is_nan(v) {
        if from.is_snan(v) {
            *flags |= IE;
        }
        let sign = v & from.sign_bit() != 0;
        return match (from, to) {
            (Fmt::S, Fmt::D) => {
                (u64::from(sign) << 63) | 0x7ff8_0000_0000_0000 | ((v & from.frac_mask()) << 29)
            }
            (Fmt::D, Fmt::S) => {
                (u64::from(sign) << 31) | 0x7fc0_0000 | ((v & from.frac_mask()) >> 29)
            }
            _ => from.quiet(v),
        };
    }
    let v = if env.daz {
        from.flush(v)
    } else {
        if from.is_denormal(v) {
            *flags |= DE;
        }
        v
    };
    finish(from.unpack(v), to, env, flags)
}

/// A signed integer to float, rounded by `env`.
pub(crate) fn from_int(i: i64, to: Fmt, env: Env, flags: &mut u32) -> u64 {
    finish(Num::from_parts(i < 0, 63, i.unsigned_abs()), to, env, flags)
}

/// Float to a signed integer of `bits` (32 or 64), rounding by `env.rc` or truncating; NaN and
/// out-of-range give the integer indefinite (the most negative value) and IE. Denormals never
/// raise DE here.
pub(crate) fn to_int(
    v: u64,
    from: Fmt,
    bits: u32,
    truncate: bool,
    env: Env,
    flags: &mut u32,
) -> u64 {
    let indefinite = 1u64 << (bits - 1);
    if from.is_nan(v) {
        *flags |= IE;
        return indefinite;
    }
    // DAZ applies here too: a denormal converts as zero, exactly.
    let v = if env.daz { from.flush(v) } else { v };
    let x = from.to_f64(v);
    let rc = if truncate { Round::Zero } else { env.rc };
    let r = match rc {
        Round::Nearest => x.round_ties_even(),
        Round::Down => x.floor(),
        Round::Up => x.ceil(),
        Round::Zero => x.trunc(),
    };
    let limit = 2f64.powi(bits as i32 - 1);
    if !(r >= -limit && r < limit) {
        *flags |= IE;
        return indefinite;
    }
    if r != x {
        *flags |= PE;
    }
    let i = r as i64 as u64;
    if bits == 32 { i & 0xffff_ffff } else { i }
}

/// RCPSS/RSQRTSS: computed exactly and rounded to single precision, which is within the
/// architectural 1.5 * 2^-12 relative error (hardware returns a cheaper approximation, so the
/// low bits differ). Denormal inputs count as zero; no flags are raised.
pub(crate) fn reciprocal(v: u32, sqrt: bool) -> u32 {
    let f = Fmt::S;
    let v64 = u64::from(v);
    if f.is_nan(v64) {
        return (f.quiet(v64)) as u32;
    }
    let x = f.to_f64(f.flush(v64));
    let negative_zero = x == 0.0 && x.is_sign_negative();
    let r = if sqrt {
        if x < 0.0 {
            return f.default_nan() as u32;
        }
        if negative_zero {
            f64::NEG_INFINITY
        } else {
            1.0 / x.sqrt()
        }
    } else {
        1.0 / x
    };
    let y = r as f32;
    // Hardware flushes results too small for a normal single to zero.
    if y != 0.0 && y.abs() < f32::MIN_POSITIVE {
        return y.to_bits() & 0x8000_0000;
    }
    y.to_bits()
}

#[cfg(test)]
mod tests;
