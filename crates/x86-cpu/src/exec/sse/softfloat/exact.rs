//! The exact core every format computes with: values as sign, exponent and a 128-bit
//! significand, the basic operations computed exactly (what lies beyond 128 bits folded into a
//! sticky bit), and the one rounding routine that turns such a value into a value of a format
//! of some precision and exponent range, raising PE, UE and OE the way x86 does.
//!
//! x86 detects tininess after rounding: a result is tiny when, rounded to the destination's
//! precision with an unbounded exponent, it is below the smallest normal. With underflow
//! masked, UE is then set only if the result is also inexact (after denormalization).

use super::{IE, OE, Op, PE, Round, UE, ZE};

/// A finite non-zero value `sig / 2^127 * 2^exp` with bit 127 of `sig` set; bit 0 also stands
/// for everything below it (the sticky bit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Raw {
    pub sign: bool,
    pub exp: i32,
    pub sig: u128,
}

impl Raw {
    /// `sig / 2^127 * 2^exp` normalized; `sig` must be non-zero.
    pub(crate) fn new(sign: bool, exp: i32, sig: u128) -> Raw {
        let lz = sig.leading_zeros();
        Raw {
            sign,
            exp: exp - lz as i32,
            sig: sig << lz,
        }
    }

    /// The top 64 bits of the significand (all there is for values read from a format).
    fn top(self) -> u64 {
        (self.sig >> 64) as u64
    }
}

/// A value of any format before rounding, or the outcome of an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Num {
    Zero(bool),
    Inf(bool),
    Finite(Raw),
}

impl Num {
    pub(crate) fn sign(self) -> bool {
        match self {
            Num::Zero(s) | Num::Inf(s) => s,
            Num::Finite(r) => r.sign,
        }
    }

    pub(crate) fn negate(self) -> Num {
        match self {
            Num::Zero(s) => Num::Zero(!s),
            Num::Inf(s) => Num::Inf(!s),
            Num::Finite(r) => Num::Finite(Raw { sign: !r.sign, ..r }),
        }
    }

    /// `m * 2^(exp - 63)`.
    pub(crate) fn from_parts(sign: bool, exp: i32, m: u64) -> Num {
        if m == 0 {
            Num::Zero(sign)
        } else {
            Num::Finite(Raw::new(sign, exp + 64, u128::from(m)))
        }
    }
}

/// `sig >> n`, with any bit shifted out ORed into bit 0.
pub(crate) fn shift_right_jam(sig: u128, n: u32) -> u128 {
    if n == 0 {
        sig
    } else if n >= 128 {
        u128::from(sig != 0)
    } else {
        (sig >> n) | u128::from(sig << (128 - n) != 0)
    }
}

/// `a op b` (for `Sqrt`, the square root of `b`) computed exactly; an invalid operation
/// raises IE and gives `None` (the caller writes its default NaN), a division of a finite value
/// by zero raises ZE. An exact zero sum of opposite-signed operands is +0, or -0 when rounding
/// down. NaNs never get here.
pub(crate) fn compute(op: Op, a: Num, b: Num, rc: Round, flags: &mut u32) -> Option<Num> {
    use Num::{Finite, Inf, Zero};
    let invalid = |flags: &mut u32| {
        *flags |= IE;
        None
    };
    Some(match op {
        Op::Add | Op::Sub => {
            let b = if op == Op::Sub { b.negate() } else { b };
            match (a, b) {
                (Inf(x), Inf(y)) if x != y => return invalid(flags),
                (Inf(_), _) => a,
                (_, Inf(_)) => b,
                (Zero(x), Zero(y)) => Zero(if x == y { x } else { rc == Round::Down }),
                (Zero(_), _) => b,
                (_, Zero(_)) => a,
                (Finite(x), Finite(y)) => match add(x, y) {
                    Some(r) => Finite(r),
                    None => Zero(rc == Round::Down),
                },
            }
        }
        Op::Mul => {
            let sign = a.sign() != b.sign();
            match (a, b) {
                (Inf(_), Zero(_)) | (Zero(_), Inf(_)) => return invalid(flags),
                (Inf(_), _) | (_, Inf(_)) => Inf(sign),
                (Zero(_), _) | (_, Zero(_)) => Zero(sign),
                (Finite(x), Finite(y)) => {
                    let p = u128::from(x.top()) * u128::from(y.top());
                    Finite(Raw::new(sign, x.exp + y.exp + 1, p))
                }
            }
        }
        Op::Div => {
            let sign = a.sign() != b.sign();
            match (a, b) {
                (Inf(_), Inf(_)) | (Zero(_), Zero(_)) => return invalid(flags),
                (Inf(_), _) => Inf(sign),
                (_, Zero(_)) => {
                    *flags |= ZE;
                    Inf(sign)
                }
                (Zero(_), _) | (_, Inf(_)) => Zero(sign),
                (Finite(x), Finite(y)) => Finite(div(x, y)),
            }
        }
        Op::Sqrt => match b {
            Zero(_) => b,
            _ if b.sign() => return invalid(flags),
            Inf(_) => b,
            Finite(x) => Finite(sqrt(x)),
        },
    })
}

/// `x + y`, exact but for the sticky bit; `None` for an exact zero.
fn add(x: Raw, y: Raw) -> Option<Raw> {
    let (big, small) = if (x.exp, x.sig) >= (y.exp, y.sig) {
        (x, y)
    } else {
        (y, x)
    };
    // One bit of headroom for the carry; operands carry at most 64 significant bits, so the
    // shift loses nothing.
    let b = big.sig >> 1;
    let s = shift_right_jam(small.sig >> 1, (big.exp - small.exp) as u32);
    let sum = if big.sign == small.sign { b + s } else { b - s };
    (sum != 0).then(|| Raw::new(big.sign, big.exp + 1, sum))
}

/// `x / y`: 128 quotient bits and a sticky bit for the remainder.
fn div(x: Raw, y: Raw) -> Raw {
    let (a, b) = (u128::from(x.top()), u128::from(y.top()));
    let num = a << 63;
    let (q1, r1) = (num / b, num % b);
    let (q2, r2) = ((r1 << 64) / b, (r1 << 64) % b);
    let q = (q1 << 64) | q2 | u128::from(r2 != 0);
    Raw::new(x.sign != y.sign, x.exp - y.exp, q)
}

/// The square root of a positive `x`: 96 root bits and a sticky bit.
fn sqrt(x: Raw) -> Raw {
    // x = m * 2^(e - 126) with e even and m < 2^128.
    let (m, e) = if x.exp % 2 == 0 {
        (u128::from(x.top()) << 63, x.exp)
    } else {
        (u128::from(x.top()) << 64, x.exp - 1)
    };
    let mut root = m.isqrt();
    let mut rem = m - root * root;
    for _ in 0..32 {
        rem <<= 2;
        let trial = (root << 2) | 1;
        root <<= 1;
        if rem >= trial {
            rem -= trial;
            root |= 1;
        }
    }
    Raw::new(false, 32 + e / 2, root | u128::from(rem != 0))
}

/// A destination's precision and exponent range: `p` significand bits (with the integer bit),
/// normal exponents `emin..=emax`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Format {
    pub p: u32,
    pub emin: i32,
    pub emax: i32,
}

pub(crate) const SINGLE: Format = Format {
    p: 24,
    emin: -126,
    emax: 127,
};
pub(crate) const DOUBLE: Format = Format {
    p: 53,
    emin: -1022,
    emax: 1023,
};
pub(crate) const EXTENDED: Format = Format {
    p: 64,
    emin: -16382,
    emax: 16383,
};

/// A rounded value: `mant * 2^(exp - p + 1)`, `mant` below `2^p`; a normal has bit `p - 1` of
/// `mant` set, a denormal has `exp == emin` and that bit clear.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rounded {
    Zero(bool),
    Inf(bool),
    Finite { sign: bool, exp: i32, mant: u64 },
}

/// The outcome of rounding: the value, whether its magnitude grew (the x87's C1), and whether
/// it is tiny (for callers with underflow unmasked or flushing to zero).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Outcome {
    pub value: Rounded,
    pub up: bool,
    pub tiny: bool,
}

/// Keeps the top `p` bits of `sig` rounded by `rc` for sign `sign`: the kept bits (perhaps
/// `2^p` after a carry), whether bits were lost, and whether the kept value was incremented.
fn round_bits(sig: u128, p: u32, sign: bool, rc: Round) -> (u128, bool, bool) {
    let drop = 128 - p;
    let kept = sig >> drop;
    let rem = sig & ((1u128 << drop) - 1);
    let half = 1u128 << (drop - 1);
    let up = match rc {
        Round::Nearest => rem > half || (rem == half && kept & 1 != 0),
        Round::Up => rem != 0 && !sign,
        Round::Down => rem != 0 && sign,
        Round::Zero => false,
    };
    (kept + u128::from(up), rem != 0, up)
}

/// Rounds `v` to `f` by `rc`, raising PE, UE (tiny and inexact) and OE.
pub(crate) fn round(v: Num, f: Format, rc: Round, flags: &mut u32) -> Outcome {
    let plain = |value| Outcome {
        value,
        up: false,
        tiny: false,
    };
    let r = match v {
        Num::Zero(s) => return plain(Rounded::Zero(s)),
        Num::Inf(s) => return plain(Rounded::Inf(s)),
        Num::Finite(r) => r,
    };
    let (m, inexact, up) = round_bits(r.sig, f.p, r.sign, rc);
    let carry = m >> f.p != 0;
    let exp = r.exp + i32::from(carry);
    let tiny = exp < f.emin;
    if r.exp < f.emin {
        // Denormalize: the significand keeps its bits above 2^(emin - p + 1).
        let sig = shift_right_jam(r.sig, (f.emin - r.exp) as u32);
        let (m, inexact, up) = round_bits(sig, f.p, r.sign, rc);
        if inexact {
            *flags |= PE;
            if tiny {
                *flags |= UE;
            }
        }
        let value = if m == 0 {
            Rounded::Zero(r.sign)
        } else {
            Rounded::Finite {
                sign: r.sign,
                exp: f.emin,
                mant: m as u64,
            }
        };
        return Outcome { value, up, tiny };
    }
    if inexact {
        *flags |= PE;
    }
    if exp > f.emax {
        *flags |= OE | PE;
        let to_inf = match rc {
            Round::Nearest => true,
            Round::Zero => false,
            Round::Up => !r.sign,
            Round::Down => r.sign,
        };
        let value = if to_inf {
            Rounded::Inf(r.sign)
        } else {
            Rounded::Finite {
                sign: r.sign,
                exp: f.emax,
                mant: (u64::MAX) >> (64 - f.p),
            }
        };
        return Outcome {
            value,
            up: to_inf,
            tiny: false,
        };
    }
    let mant = (if carry { m >> 1 } else { m }) as u64;
    Outcome {
        value: Rounded::Finite {
            sign: r.sign,
            exp,
            mant,
        },
        up,
        tiny: false,
    }
}
