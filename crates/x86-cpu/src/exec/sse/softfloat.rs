//! Floating point the way x86 does it, on top of the host's IEEE double arithmetic: the four
//! rounding modes, the exception flags, DAZ/FTZ, the SSE NaN rules, and conversions between
//! single, double, the x87's 80-bit extended format and integers.
//!
//! Directed rounding comes from error-free transformations: every basic operation is computed
//! rounded to nearest together with the sign of its rounding error (TwoSum for add/sub, a fused
//! multiply-add for the residue of mul/div/sqrt), and the result is then stepped one ulp when
//! the mode asks for it. This is exact except for results deep in the subnormal range, where a
//! residue can itself underflow to zero (the result is then the round-to-nearest one).

/// A rounding mode, as encoded in MXCSR.RC and FCW.RC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Round {
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

/// The floating-point environment of one SSE operation.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Env {
    pub rc: Round,
    /// Denormal inputs are read as zero.
    pub daz: bool,
    /// Tiny results are flushed to zero (when underflow is masked).
    pub ftz: bool,
}

impl Env {
    /// Round to nearest, no flushing: the x87's environment for the f64 core.
    pub(crate) fn nearest() -> Env {
        Env {
            rc: Round::Nearest,
            daz: false,
            ftz: false,
        }
    }
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
    /// Reads a denormal as a signed zero.
    fn flush(self, v: u64) -> u64 {
        if self.is_denormal(v) {
            v & self.sign_bit()
        } else {
            v
        }
    }
}

/// The sign of `x` as -1, 0 or 1 (NaN counts as 0).
fn sgn(x: f64) -> i8 {
    if x > 0.0 {
        1
    } else if x < 0.0 {
        -1
    } else {
        0
    }
}

/// Steps `r`, the round-to-nearest result, to the result of mode `rc`, given the sign of
/// (exact - r).
fn direct64(r: f64, cmp: i8, rc: Round) -> f64 {
    match rc {
        Round::Nearest => r,
        Round::Down if cmp < 0 => r.next_down(),
        Round::Up if cmp > 0 => r.next_up(),
        Round::Zero if (cmp < 0 && r > 0.0) || (cmp > 0 && r < 0.0) => {
            if r > 0.0 {
                r.next_down()
            } else {
                r.next_up()
            }
        }
        Round::Zero if r == 0.0 && cmp != 0 => r,
        _ => r,
    }
}

fn direct32(r: f32, cmp: i8, rc: Round) -> f32 {
    match rc {
        Round::Nearest => r,
        Round::Down if cmp < 0 => r.next_down(),
        Round::Up if cmp > 0 => r.next_up(),
        Round::Zero if cmp < 0 && r > 0.0 => r.next_down(),
        Round::Zero if cmp > 0 && r < 0.0 => r.next_up(),
        _ => r,
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

/// `a op b` rounded to nearest, with the sign of (exact - rounded).
fn exact(op: Op, a: f64, b: f64) -> (f64, i8) {
    let (r, cmp) = match op {
        Op::Add | Op::Sub => {
            let b = if op == Op::Sub { -b } else { b };
            let s = a + b;
            let bb = s - a;
            let err = (a - (s - bb)) + (b - bb);
            (s, sgn(err))
        }
        Op::Mul => {
            let p = a * b;
            (p, sgn(a.mul_add(b, -p)))
        }
        Op::Div => {
            let q = a / b;
            let rem = (-q).mul_add(b, a);
            (q, sgn(rem) * sgn(b))
        }
        Op::Sqrt => {
            let s = b.sqrt();
            (s, sgn((-s).mul_add(s, b)))
        }
    };
    let finite_in = a.is_finite() && b.is_finite();
    if r.is_infinite() && finite_in && !(op == Op::Div && b == 0.0) {
        // Overflow: the exact value is finite, so below +inf or above -inf.
        return (r, -sgn(r));
    }
    if !r.is_finite() {
        return (r, 0);
    }
    (r, cmp)
}

/// Rounds `r` (round-to-nearest double, with `cmp` = sign of exact - r) to `fmt` under `env`,
/// raising OE/UE/PE; `finite_in` says the operands were finite (so an infinity overflowed).
fn finish(r: f64, cmp: i8, fmt: Fmt, env: Env, finite_in: bool, flags: &mut u32) -> u64 {
    let (bits, cmp, inf, tiny) = match fmt {
        Fmt::D => {
            let v = direct64(r, cmp, env.rc);
            (
                v.to_bits(),
                cmp,
                r.is_infinite(),
                v != 0.0 && v.abs() < f64::MIN_POSITIVE,
            )
        }
        Fmt::S => {
            let mut y = r as f32;
            if cmp != 0 && y.is_finite() && f64::from(y) != r {
                // `r` may sit exactly between two singles although the exact value does not
                // (a double rounding): the exact value then decides.
                let other = if f64::from(y) < r {
                    y.next_up()
                } else {
                    y.next_down()
                };
                if other.is_finite() && (f64::from(y) + f64::from(other)) / 2.0 == r {
                    let up = f64::from(other) > f64::from(y);
                    if up == (cmp > 0) {
                        y = other;
                    }
                }
            }
            let c = if f64::from(y) != r {
                sgn(r - f64::from(y))
            } else {
                cmp
            };
            let c = if y.is_infinite() && r.is_finite() {
                -sgn(r)
            } else {
                c
            };
            let v = direct32(y, c, env.rc);
            (
                u64::from(v.to_bits()),
                c,
                y.is_infinite(),
                v != 0.0 && v.abs() < f32::MIN_POSITIVE,
            )
        }
    };
    if inf && finite_in {
        *flags |= OE | PE;
        return bits;
    }
    if tiny && env.ftz {
        *flags |= UE | PE;
        return bits & fmt.sign_bit();
    }
    if cmp != 0 {
        *flags |= PE;
        if tiny {
            *flags |= UE;
        }
    }
    bits
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
pub(crate) fn arith(op: Op, a: u64, b: u64, fmt: Fmt, env: Env, flags: &mut u32) -> u64 {
    let (a, b) = if op == Op::Sqrt {
        match prepare(b, b, fmt, env, flags) {
            Ok((_, b)) => (0, b),
            Err(nan) => return nan,
        }
    } else {
        match prepare(a, b, fmt, env, flags) {
            Ok(x) => x,
            Err(nan) => return nan,
        }
    };
    let (x, y) = (fmt.to_f64(a), fmt.to_f64(b));
    let invalid = match op {
        Op::Add => x.is_infinite() && y.is_infinite() && x != y,
        Op::Sub => x.is_infinite() && y.is_infinite() && x == y,
        Op::Mul => (x == 0.0 && y.is_infinite()) || (x.is_infinite() && y == 0.0),
        Op::Div => (x == 0.0 && y == 0.0) || (x.is_infinite() && y.is_infinite()),
        Op::Sqrt => y < 0.0,
    };
    if invalid {
        *flags |= IE;
        return fmt.default_nan();
    }
    if op == Op::Div && y == 0.0 && x.is_finite() {
        *flags |= ZE;
    }
    let (r, cmp) = exact(op, x, y);
    let mut r = r;
    if (op == Op::Add || op == Op::Sub) && r == 0.0 && cmp == 0 {
        // An exact zero sum of opposite-signed operands is +0, or -0 when rounding down.
        let opposite = (x.is_sign_negative() != y.is_sign_negative()) == (op == Op::Add);
        if opposite {
            r = if env.rc == Round::Down { -0.0 } else { 0.0 };
        }
    }
    let finite_in = x.is_finite() && y.is_finite() && !(op == Op::Div && y == 0.0);
    finish(r, cmp, fmt, env, finite_in, flags)
}

/// MINSS/MAXSS and their packed forms: a NaN or two zeros give the second operand.
pub(crate) fn min_max(max: bool, a: u64, b: u64, fmt: Fmt, env: Env, flags: &mut u32) -> u64 {
    if fmt.is_nan(a) || fmt.is_nan(b) {
        *flags |= IE;
        return b;
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
    let x = from.to_f64(v);
    finish(x, 0, to, env, x.is_finite(), flags)
}

/// A signed integer to float, rounded by `env`.
pub(crate) fn from_int(i: i64, to: Fmt, env: Env, flags: &mut u32) -> u64 {
    let r = i as f64;
    let cmp = match i128::from(i).cmp(&(r as i128)) {
        core::cmp::Ordering::Less => -1,
        core::cmp::Ordering::Equal => 0,
        core::cmp::Ordering::Greater => 1,
    };
    finish(r, cmp, to, env, true, flags)
}

/// Float to a signed integer of `bits` (32 or 64), rounding by `env.rc` or truncating; NaN and
/// out-of-range give the integer indefinite (the most negative value) and IE.
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

// ---------------------------------------------------------------------------------------------
// The x87's 80-bit extended format: sign, 15-bit exponent (bias 16383), 64-bit significand with
// an explicit integer bit, kept in the low 80 bits of a u128.

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
    /// An unsupported encoding: an unnormal, pseudo-NaN or pseudo-infinity (integer bit clear
    /// with a non-zero exponent).
    pub(crate) fn is_unsupported(self) -> bool {
        self.exp != 0 && self.mant >> 63 == 0
    }
}

/// The x87's "real indefinite" QNaN.
pub(crate) const F80_INDEFINITE: u128 = 0xffff_c000_0000_0000_0000;

/// A double as an extended value (exact).
pub(crate) fn f64_to_f80(x: f64) -> u128 {
    let bits = x.to_bits();
    let sign = bits >> 63 != 0;
    let e = ((bits >> 52) & 0x7ff) as u16;
    let frac = bits & 0x000f_ffff_ffff_ffff;
    let f = match e {
        0 if frac == 0 => F80 {
            sign,
            exp: 0,
            mant: 0,
        },
        0 => {
            // A double denormal is a normal extended value.
            let lz = frac.leading_zeros();
            F80 {
                sign,
                exp: (16383 - 1022 - (lz as i32 - 11)) as u16,
                mant: frac << lz,
            }
        }
        0x7ff => F80 {
            sign,
            exp: 0x7fff,
            mant: (1 << 63) | (frac << 11),
        },
        _ => F80 {
            sign,
            exp: e + (16383 - 1023),
            mant: (1 << 63) | (frac << 11),
        },
    };
    f.pack()
}

/// Rounds a significand `mant` (integer bit at 63, value mant * 2^(e - 63)) to an IEEE format
/// of `p` significand bits (24 or 53) and exponent bias `bias`; returns the encoding without the
/// sign and raises OE/UE/PE.
fn round_to(sign: bool, e: i32, mant: u64, p: u32, bias: i32, rc: Round, flags: &mut u32) -> u64 {
    let emin = 1 - bias;
    let max_biased = (2 * bias + 1) as u64;
    let frac_bits = p - 1;
    let sub_shift = if e < emin { (emin - e) as u32 } else { 0 };
    let drop = 64 - p + sub_shift;
    let (kept, rem, half) = if drop > 64 {
        // Everything is below half an ulp.
        (0u64, u128::from(mant != 0), 2u128)
    } else {
        let m = u128::from(mant);
        (
            (m >> drop) as u64,
            m & ((1u128 << drop) - 1),
            1u128 << (drop - 1),
        )
    };
    let up = match rc {
        Round::Nearest => rem > half || (rem == half && kept & 1 != 0),
        Round::Up => rem != 0 && !sign,
        Round::Down => rem != 0 && sign,
        Round::Zero => false,
    };
    if rem != 0 {
        *flags |= PE;
    }
    let kept = kept + u64::from(up);
    if sub_shift > 0 {
        if rem != 0 {
            *flags |= UE;
        }
        // Exponent field 0; a carry into the integer bit makes it the smallest normal.
        return kept;
    }
    // The integer bit sits at frac_bits: adding the biased exponent minus one carries naturally.
    let enc = ((e + bias - 1) as u64) << frac_bits;
    let enc = enc + kept;
    if enc >> frac_bits >= max_biased {
        *flags |= OE | PE;
        let to_max = match rc {
            Round::Nearest => false,
            Round::Zero => true,
            Round::Up => sign,
            Round::Down => !sign,
        };
        return if to_max {
            (max_biased << frac_bits) - 1
        } else {
            max_biased << frac_bits
        };
    }
    enc
}

/// An extended value rounded to single or double precision by `rc`, raising IE for a signalling
/// NaN or an unsupported encoding, and OE/UE/PE.
pub(crate) fn f80_to(v: u128, to: Fmt, rc: Round, flags: &mut u32) -> u64 {
    let f = F80::unpack(v);
    let sign_bit = u64::from(f.sign) << (to.bytes() * 8 - 1);
    if f.is_unsupported() {
        *flags |= IE;
        return to.default_nan();
    }
    if f.is_nan() {
        if f.is_snan() {
            *flags |= IE;
        }
        let p = match to {
            Fmt::S => 24,
            Fmt::D => 53,
        };
        let payload = (f.mant >> (64 - p)) & to.frac_mask();
        return sign_bit | to.exp_mask() | to.quiet_bit() | payload;
    }
    if f.is_inf() {
        return sign_bit | to.exp_mask();
    }
    if f.mant == 0 {
        return sign_bit;
    }
    // Denormals and pseudo-denormals (exponent 0) have the exponent of the smallest normal.
    let e = i32::from(f.exp.max(1)) - 16383;
    let lz = f.mant.leading_zeros();
    let (p, bias) = match to {
        Fmt::S => (24, 127),
        Fmt::D => (53, 1023),
    };
    sign_bit | round_to(f.sign, e - lz as i32, f.mant << lz, p, bias, rc, flags)
}

/// An extended value as a double, rounded to nearest.
pub(crate) fn f80_to_f64(v: u128) -> f64 {
    f64::from_bits(f80_to(v, Fmt::D, Round::Nearest, &mut 0))
}

/// A signed integer as an extended value (exact).
pub(crate) fn int_to_f80(i: i64) -> u128 {
    let sign = i < 0;
    let m = i.unsigned_abs();
    unsigned_to_f80(sign, m)
}

fn unsigned_to_f80(sign: bool, m: u64) -> u128 {
    if m == 0 {
        return F80 {
            sign,
            exp: 0,
            mant: 0,
        }
        .pack();
    }
    let lz = m.leading_zeros();
    F80 {
        sign,
        exp: (16383 + 63 - lz) as u16,
        mant: m << lz,
    }
    .pack()
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

/// Rounds the magnitude `int + frac/2^64` to an integer by `rc` for a value of sign `sign`.
fn round_int(int: u64, frac: u64, sign: bool, rc: Round) -> Option<u64> {
    let half = 1u64 << 63;
    let up = match rc {
        Round::Nearest => frac > half || (frac == half && int & 1 != 0),
        Round::Up => frac != 0 && !sign,
        Round::Down => frac != 0 && sign,
        Round::Zero => false,
    };
    int.checked_add(u64::from(up))
}

/// FIST/FISTTP: an extended value to a signed integer of `bits` (16, 32 or 64) rounded by `rc`;
/// NaN, infinity and out-of-range values give the integer indefinite and IE.
pub(crate) fn f80_to_int(v: u128, bits: u32, rc: Round, flags: &mut u32) -> u64 {
    let mask = if bits == 64 {
        u64::MAX
    } else {
        (1u64 << bits) - 1
    };
    let indefinite = 1u64 << (bits - 1);
    let f = F80::unpack(v);
    let fail = |flags: &mut u32| {
        *flags |= IE;
        indefinite
    };
    if f.exp == 0x7fff || f.is_unsupported() {
        return fail(flags);
    }
    let Some((int, frac)) = split_int(f) else {
        return fail(flags);
    };
    let Some(mag) = round_int(int, frac, f.sign, rc) else {
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
    i & mask
}

/// FRNDINT: an extended value rounded to an integral value by `rc` (exact in 80 bits).
pub(crate) fn f80_round_int(v: u128, rc: Round, flags: &mut u32) -> u128 {
    let f = F80::unpack(v);
    if f.exp == 0x7fff || f.is_zero() {
        return v;
    }
    match split_int(f) {
        None => v,
        Some((int, frac)) => {
            if frac == 0 {
                return v;
            }
            *flags |= PE;
            match round_int(int, frac, f.sign, rc) {
                Some(m) => unsigned_to_f80(f.sign, m),
                None => F80 {
                    sign: f.sign,
                    exp: 16383 + 64,
                    mant: 1 << 63,
                }
                .pack(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(rc: Round) -> Env {
        Env {
            rc,
            ..Env::nearest()
        }
    }

    #[test]
    fn directed_rounding_of_basic_operations() {
        let one = 1f64.to_bits();
        let tiny = 2f64.powi(-70).to_bits();
        let add = |rc| f64::from_bits(arith(Op::Add, one, tiny, Fmt::D, env(rc), &mut 0));
        assert_eq!(add(Round::Nearest), 1.0);
        assert_eq!(add(Round::Up), 1f64.next_up());
        assert_eq!(add(Round::Down), 1.0);
        let third =
            |rc| f64::from_bits(arith(Op::Div, one, 3f64.to_bits(), Fmt::D, env(rc), &mut 0));
        assert!(third(Round::Up) > third(Round::Down));
        assert_eq!(third(Round::Zero), third(Round::Down));
        let two = 2f32.to_bits().into();
        let s = |rc| f32::from_bits(arith(Op::Sqrt, 0, two, Fmt::S, env(rc), &mut 0) as u32);
        assert_eq!(s(Round::Up), s(Round::Down).next_up());
    }

    #[test]
    fn exact_zero_sums_are_negative_only_when_rounding_down() {
        let (a, b) = (1f64.to_bits(), (-1f64).to_bits());
        assert_eq!(arith(Op::Add, a, b, Fmt::D, env(Round::Nearest), &mut 0), 0);
        assert_eq!(
            arith(Op::Add, a, b, Fmt::D, env(Round::Down), &mut 0),
            1 << 63
        );
    }

    #[test]
    fn overflow_and_underflow_flags() {
        let mut flags = 0;
        let big = f64::MAX.to_bits();
        let r = arith(
            Op::Mul,
            big,
            2f64.to_bits(),
            Fmt::D,
            env(Round::Zero),
            &mut flags,
        );
        assert_eq!(f64::from_bits(r), f64::MAX);
        assert_eq!(flags, OE | PE);
        let mut flags = 0;
        let small = f32::MIN_POSITIVE.to_bits().into();
        let r = arith(
            Op::Div,
            small,
            3f32.to_bits().into(),
            Fmt::S,
            env(Round::Nearest),
            &mut flags,
        );
        assert!(f32::from_bits(r as u32) > 0.0);
        assert_eq!(flags, UE | PE);
        let ftz = Env {
            ftz: true,
            ..Env::nearest()
        };
        let r = arith(Op::Div, small, 3f32.to_bits().into(), Fmt::S, ftz, &mut 0);
        assert_eq!(r, 0);
    }

    #[test]
    fn large_integers_round_once_to_single() {
        // 2^60 + 2^36 + 1 lies just above a midpoint between two singles.
        let i = (1i64 << 60) + (1 << 36) + 1;
        let r = f32::from_bits(from_int(i, Fmt::S, Env::nearest(), &mut 0) as u32);
        assert_eq!(r, ((1u64 << 60) + (1 << 37)) as f32);
    }

    #[test]
    fn extended_conversions() {
        for x in [0.0, -0.0, 1.5, -3.25e-310, f64::MAX, f64::INFINITY, 1e-300] {
            let v = f64_to_f80(x);
            assert_eq!(f80_to_f64(v).to_bits(), x.to_bits(), "{x}");
        }
        // The extended value 1 + 2^-63 rounds to 1 nearest, up to the next double.
        let v = 0x3fff_8000_0000_0000_0001u128;
        assert_eq!(f80_to_f64(v), 1.0);
        let up = f64::from_bits(f80_to(v, Fmt::D, Round::Up, &mut 0));
        assert_eq!(up, 1f64.next_up());
        // Too large for a single: overflow to infinity.
        let mut flags = 0;
        let r = f80_to(f64_to_f80(1e300), Fmt::S, Round::Nearest, &mut flags);
        assert_eq!(r, 0x7f80_0000);
        assert_eq!(flags, OE | PE);
        // An SNaN keeps its payload and becomes quiet.
        let mut flags = 0;
        let snan = F80 {
            sign: false,
            exp: 0x7fff,
            mant: (1 << 63) | (1 << 40),
        }
        .pack();
        assert_eq!(
            f80_to(snan, Fmt::D, Round::Nearest, &mut flags),
            0x7ff8_0000_2000_0000
        );
        assert_eq!(flags, IE);
    }

    #[test]
    fn extended_to_integer_rounding() {
        let v = |x: f64| f64_to_f80(x);
        assert_eq!(f80_to_int(v(2.5), 32, Round::Nearest, &mut 0), 2);
        assert_eq!(f80_to_int(v(3.5), 32, Round::Nearest, &mut 0), 4);
        assert_eq!(
            f80_to_int(v(-2.5), 32, Round::Down, &mut 0) as u32 as i32,
            -3
        );
        assert_eq!(f80_to_int(v(0.75), 16, Round::Zero, &mut 0), 0);
        assert_eq!(f80_to_int(v(-32768.0), 16, Round::Nearest, &mut 0), 0x8000);
        let mut flags = 0;
        assert_eq!(
            f80_to_int(v(32768.0), 16, Round::Nearest, &mut flags),
            0x8000
        );
        assert_eq!(flags, IE);
        let r = f80_round_int(v(-0.3), Round::Nearest, &mut 0);
        assert_eq!(r, 1 << 79, "negative zero");
        assert_eq!(
            f80_to_f64(f80_round_int(v(7.5), Round::Nearest, &mut 0)),
            8.0
        );
    }
}
