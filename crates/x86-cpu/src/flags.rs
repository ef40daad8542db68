//! Arithmetic flags, computed eagerly from an operation's inputs and result.

use crate::state::rflags::{AF, CF, OF, PF, SF, STATUS, ZF};

/// Mask of an operand of `size` bytes.
pub(crate) const fn mask(size: u32) -> u64 {
    if size >= 8 {
        u64::MAX
    } else {
        (1u64 << (size * 8)) - 1
    }
}

/// Sign bit of an operand of `size` bytes.
pub(crate) const fn sign_bit(size: u32) -> u64 {
    1u64 << (size * 8 - 1)
}

/// Sign-extends the low `size` bytes of `v`.
pub(crate) const fn sign_extend(v: u64, size: u32) -> u64 {
    let shift = 64 - size * 8;
    (((v << shift) as i64) >> shift) as u64
}

fn parity(v: u64) -> u64 {
    if (v as u8).count_ones().is_multiple_of(2) {
        PF
    } else {
        0
    }
}

/// ZF, SF and PF of `result`.
pub(crate) fn szp(result: u64, size: u32) -> u64 {
    let r = result & mask(size);
    let mut f = parity(r);
    if r == 0 {
        f |= ZF;
    }
    if r & sign_bit(size) != 0 {
        f |= SF;
    }
    f
}

/// Flags of `a + b + carry_in` = `result`.
pub(crate) fn add(a: u64, b: u64, carry_in: u64, result: u64, size: u32) -> u64 {
    let m = mask(size);
    let (a, b, r) = (a & m, b & m, result & m);
    let mut f = szp(r, size);
    let wide = u128::from(a) + u128::from(b) + u128::from(carry_in);
    if wide > u128::from(m) {
        f |= CF;
    }
    if (a ^ b ^ r) & 0x10 != 0 {
        f |= AF;
    }
    if (!(a ^ b) & (a ^ r)) & sign_bit(size) != 0 {
        f |= OF;
    }
    f
}

/// Flags of `a - b - borrow_in` = `result`.
pub(crate) fn sub(a: u64, b: u64, borrow_in: u64, result: u64, size: u32) -> u64 {
    let m = mask(size);
    let (a, b, r) = (a & m, b & m, result & m);
    let mut f = szp(r, size);
    if u128::from(a) < u128::from(b) + u128::from(borrow_in) {
        f |= CF;
    }
    if (a ^ b ^ r) & 0x10 != 0 {
        f |= AF;
    }
    if ((a ^ b) & (a ^ r)) & sign_bit(size) != 0 {
        f |= OF;
    }
    f
}

/// Flags of a logical operation: CF and OF clear, AF undefined (cleared, as current CPUs do).
pub(crate) fn logic(result: u64, size: u32) -> u64 {
    szp(result, size)
}

/// Replaces the status flags in `rflags` with `status`, keeping the bits outside `which`.
pub(crate) fn merge(rflags: u64, status: u64, which: u64) -> u64 {
    (rflags & !which) | (status & which)
}

/// All six status flags.
pub(crate) const ALL: u64 = STATUS;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_sets_carry_overflow_and_adjust() {
        assert_eq!(add(0xff, 1, 0, 0x100, 1), CF | ZF | PF | AF);
        assert_eq!(add(0x7f, 1, 0, 0x80, 1), OF | SF | AF);
        assert_eq!(add(u64::MAX, 1, 0, 0, 8), CF | ZF | PF | AF);
    }

    #[test]
    fn sub_sets_borrow_and_overflow() {
        assert_eq!(sub(0, 1, 0, u64::MAX, 4), CF | SF | PF | AF);
        assert_eq!(sub(0x8000_0000, 1, 0, 0x7fff_ffff, 4), OF | PF | AF);
    }

    #[test]
    fn sign_extension_by_size() {
        assert_eq!(sign_extend(0x80, 1), 0xffff_ffff_ffff_ff80);
        assert_eq!(sign_extend(0x7fff, 2), 0x7fff);
    }
}
