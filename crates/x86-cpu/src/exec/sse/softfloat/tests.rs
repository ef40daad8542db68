//! Tests of the floating-point rules.

use super::*;

fn env(rc: Round) -> Env {
    Env {
        rc,
        ..Env::default()
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
    let third = |rc| f64::from_bits(arith(Op::Div, one, 3f64.to_bits(), Fmt::D, env(rc), &mut 0));
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
        ..Env::default()
    };
    let r = arith(Op::Div, small, 3f32.to_bits().into(), Fmt::S, ftz, &mut 0);
    assert_eq!(r, 0);
}

#[test]
fn large_integers_round_once_to_single() {
    // 2^60 + 2^36 + 1 lies just above a midpoint between two singles.
    let i = (1i64 << 60) + (1 << 36) + 1;
    let r = f32::from_bits(from_int(i, Fmt::S, Env::default(), &mut 0) as u32);
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
    let (up, grew) = f80_to(v, Fmt::D, env(Round::Up), &mut 0);
    assert_eq!(f64::from_bits(up), 1f64.next_up());
    assert!(grew, "rounded up in magnitude");
    // Too large for a single: overflow to infinity.
    let mut flags = 0;
    let r = f80_to(f64_to_f80(1e300), Fmt::S, env(Round::Nearest), &mut flags);
    assert_eq!(r, (0x7f80_0000, true));
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
        f80_to(snan, Fmt::D, env(Round::Nearest), &mut flags).0,
        0x7ff8_0000_2000_0000
    );
    assert_eq!(flags, IE);
}

#[test]
fn extended_to_integer_rounding() {
    let v = |x: f64| f64_to_f80(x);
    let int = |x, bits, rc| f80_to_int(v(x), bits, rc, &mut 0).0;
    assert_eq!(int(2.5, 32, Round::Nearest), 2);
    assert_eq!(int(3.5, 32, Round::Nearest), 4);
    assert_eq!(int(-2.5, 32, Round::Down) as u32 as i32, -3);
    assert_eq!(int(0.75, 16, Round::Zero), 0);
    assert_eq!(int(-32768.0, 16, Round::Nearest), 0x8000);
    assert!(f80_to_int(v(-2.5), 32, Round::Down, &mut 0).1);
    assert!(!f80_to_int(v(2.5), 32, Round::Nearest, &mut 0).1);
    let mut flags = 0;
    assert_eq!(
        f80_to_int(v(32768.0), 16, Round::Nearest, &mut flags).0,
        0x8000
    );
    assert_eq!(flags, IE);
    let r = f80_round_int(v(-0.3), Round::Nearest, &mut 0);
    assert_eq!(r.bits, 1 << 79, "negative zero");
    let r = f80_round_int(v(7.5), Round::Nearest, &mut 0);
    assert_eq!((f80_to_f64(r.bits), r.up), (8.0, true));
}

#[test]
fn underflow_is_detected_after_rounding_and_needs_inexactness() {
    let d = |x: f64| x.to_bits();
    // Exactly the largest denormal: tiny but exact, so no UE while underflow is masked.
    let mut flags = 0;
    let r = arith(
        Op::Sub,
        d(f64::MIN_POSITIVE),
        d(5e-324),
        Fmt::D,
        env(Round::Nearest),
        &mut flags,
    );
    assert_eq!(r, 0x000f_ffff_ffff_ffff);
    assert_eq!(flags, DE, "only the denormal operand is reported");
    let trap = Env {
        trap_underflow: true,
        ..Env::default()
    };
    let mut flags = 0;
    arith(
        Op::Sub,
        d(f64::MIN_POSITIVE),
        d(5e-324),
        Fmt::D,
        trap,
        &mut flags,
    );
    assert_eq!(
        flags,
        DE | UE,
        "unmasked, a tiny exact result still underflows"
    );
    // (1 - 2^-60) * 2^-1022, just below the smallest normal, rounds up to it: not tiny.
    let x = 1.0 - 2f64.powi(-30);
    let y = (1.0 + 2f64.powi(-30)) * f64::MIN_POSITIVE;
    let mut flags = 0;
    let r = arith(Op::Mul, d(x), d(y), Fmt::D, env(Round::Nearest), &mut flags);
    assert_eq!(f64::from_bits(r), f64::MIN_POSITIVE);
    assert_eq!(flags, PE, "tininess is judged after rounding");
    // The product of the report (silicon MXCSR 0x1fb2): a denormal, inexact result.
    let mut flags = 0;
    arith(
        Op::Mul,
        d(1e-300),
        d(1e-10),
        Fmt::D,
        env(Round::Nearest),
        &mut flags,
    );
    assert_eq!(flags, UE | PE);
}

#[test]
fn invalid_and_zero_divide_hide_a_denormal_operand() {
    let denormal = 1u64;
    let mut flags = 0;
    arith(
        Op::Div,
        denormal,
        0,
        Fmt::S,
        env(Round::Nearest),
        &mut flags,
    );
    assert_eq!(flags, ZE);
    let mut flags = 0;
    arith(
        Op::Sqrt,
        0,
        0x8000_0001,
        Fmt::S,
        env(Round::Nearest),
        &mut flags,
    );
    assert_eq!(flags, IE);
    let mut flags = 0;
    arith(
        Op::Mul,
        denormal,
        0x7f80_0000,
        Fmt::S,
        env(Round::Nearest),
        &mut flags,
    );
    assert_eq!(flags, DE, "infinity times a denormal still reports it");
}

#[test]
fn daz_reads_denormals_as_zero_in_min_max_and_integer_conversions() {
    let daz = Env {
        daz: true,
        ..Env::default()
    };
    let (nan, denormal) = (0xffff_fffdu64, 0x42u64);
    assert_eq!(min_max(false, nan, denormal, Fmt::S, daz, &mut 0), 0);
    let up = Env {
        rc: Round::Up,
        ..daz
    };
    let mut flags = 0;
    assert_eq!(to_int(denormal, Fmt::S, 32, false, up, &mut flags), 0);
    assert_eq!(flags, 0, "a zero converts exactly");
}

#[test]
fn precision_control_rounds_the_significand_only() {
    let v = |x: f64| f64_to_f80(x);
    let near = Env::default();
    // 1 + 2^-30 fits 53 bits but not 24.
    let x = 1.0 + 2f64.powi(-30);
    let r = f80_arith(Op::Add, v(x), v(0.0), 24, near, &mut 0);
    assert_eq!(f80_to_f64(r.bits), 1.0);
    let up = Env {
        rc: Round::Up,
        ..near
    };
    let mut flags = 0;
    let r = f80_arith(Op::Add, v(x), v(0.0), 24, up, &mut flags);
    assert_eq!(f80_to_f64(r.bits), 1.0 + 2f64.powi(-23));
    assert!(r.up);
    assert_eq!(flags, PE);
    // Extended precision keeps what a double cannot: 1 + 2^-60.
    let r = f80_arith(Op::Add, v(1.0), v(2f64.powi(-60)), 64, near, &mut 0);
    assert_eq!(r.bits, 0x3fff_8000_0000_0000_0008);
    // The exponent range stays extended: 2^-1100 squared is normal.
    let r = f80_arith(
        Op::Mul,
        v(2f64.powi(-600)),
        v(2f64.powi(-600)),
        53,
        near,
        &mut 0,
    );
    assert_eq!(F80::unpack(r.bits).exp, (16383 - 1200) as u16);
}

#[test]
fn extended_division_and_square_root_round_correctly() {
    let v = |x: f64| f64_to_f80(x);
    let near = Env::default();
    let third = f80_arith(Op::Div, v(1.0), v(3.0), 64, near, &mut 0).bits;
    assert_eq!(third, 0x3ffd_aaaa_aaaa_aaaa_aaab);
    let mut flags = 0;
    let root = f80_arith(Op::Sqrt, 0, v(2.0), 64, near, &mut flags);
    assert_eq!(root.bits, 0x3fff_b504_f333_f9de_6484);
    assert_eq!((flags, root.up), (PE, false));
    let exact = f80_arith(Op::Sqrt, 0, v(6.25), 64, near, &mut 0).bits;
    assert_eq!(f80_to_f64(exact), 2.5);
}

#[test]
fn extended_stores_of_tiny_values_follow_the_rounding_mode() {
    // 2^-1074 * 1.5 between the smallest double denormal and twice it.
    let tiny = f64_to_f80(5e-324) + (1 << 62);
    let zero = Env {
        rc: Round::Zero,
        ..Env::default()
    };
    let mut flags = 0;
    assert_eq!(f80_to(tiny, Fmt::D, zero, &mut flags), (1, false));
    assert_eq!(flags, UE | PE);
    let up = Env {
        rc: Round::Up,
        ..zero
    };
    assert_eq!(f80_to(tiny, Fmt::D, up, &mut 0), (2, true));
    let neg = tiny | (1 << 79);
    assert_eq!(f80_to(neg, Fmt::D, zero, &mut 0).0, (1 << 63) | 1);
}

#[test]
fn extended_remainders_are_exact_and_partial_past_63_bits() {
    let v = |x: f64| f64_to_f80(x);
    let (r, q, done) = f80_remainder(v(23.5), v(3.0), false);
    assert_eq!((f80_to_f64(r), q, done), (2.5, 7, true));
    // FPREM1 rounds the quotient to nearest: 23.5 / 3 = 7.83 -> 8, remainder -0.5.
    let (r, q, _) = f80_remainder(v(23.5), v(3.0), true);
    assert_eq!((f80_to_f64(r), q), (-0.5, 0));
    let (_, _, done) = f80_remainder(v(1e30), v(3.0), false);
    assert!(
        !done,
        "an exponent difference of 98 needs more than one step"
    );
}

#[test]
fn unmasked_x87_overflow_and_underflow_wrap_the_exponent() {
    let v = |x: f64| f64_to_f80(x);
    let traps = Env {
        trap_underflow: true,
        trap_overflow: true,
        ..Env::default()
    };
    let huge = F80 {
        sign: false,
        exp: 0x7ffe,
        mant: 0xc000_0000_0000_0000,
    }
    .pack();
    let mut flags = 0;
    let r = f80_arith(Op::Add, huge, huge, 64, traps, &mut flags);
    assert_eq!(r.bits, 0x1fff_c000_0000_0000_0000);
    assert_eq!(flags, OE);
    let mut flags = 0;
    let r = f80_scale(v(1.5), v(-16383.0), traps, &mut flags);
    assert_eq!(r.bits, 0x6000_c000_0000_0000_0000);
    assert_eq!(flags, UE);
}
