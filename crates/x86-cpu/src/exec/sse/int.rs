//! SSE2 packed integer instructions on XMM registers: arithmetic (wrapping and saturating),
//! comparisons, multiplies, averages, min/max, shifts, unpacks, packs and shuffles.

use iced_x86::{Instruction, Mnemonic, OpKind};

use super::{set_xmm, src, xmm};
use crate::bus::CpuBus;
use crate::exec::{Cpu, ExecResult, Flow, Stop};
use crate::flags::{mask, sign_extend};

/// Element `i` of `w` bytes.
fn lane(v: u128, w: u32, i: u32) -> u64 {
    ((v >> (i * w * 8)) as u64) & mask(w)
}

/// Element `i` of `w` bytes, sign-extended.
fn slane(v: u128, w: u32, i: u32) -> i64 {
    sign_extend(lane(v, w, i), w) as i64
}

/// Builds a vector of `w`-byte elements from `f(i)`.
fn build(w: u32, mut f: impl FnMut(u32) -> u64) -> u128 {
    let mut r = 0;
    for i in 0..16 / w {
        r |= u128::from(f(i) & mask(w)) << (i * w * 8);
    }
    r
}

/// Applies `f` to each pair of `w`-byte elements.
fn map2(a: u128, b: u128, w: u32, f: impl Fn(u64, u64) -> u64) -> u128 {
    build(w, |i| f(lane(a, w, i), lane(b, w, i)))
}

/// Applies `f` to each pair of signed `w`-byte elements.
fn smap2(a: u128, b: u128, w: u32, f: impl Fn(i64, i64) -> i64) -> u128 {
    build(w, |i| f(slane(a, w, i), slane(b, w, i)) as u64)
}

/// Saturates `v` to a signed `w`-byte integer.
fn sat_s(v: i64, w: u32) -> i64 {
    let max = (1i64 << (w * 8 - 1)) - 1;
    v.clamp(-max - 1, max)
}

/// Saturates `v` to an unsigned `w`-byte integer.
fn sat_u(v: i64, w: u32) -> i64 {
    v.clamp(0, mask(w) as i64)
}

/// The element width of a mnemonic ending in b/w/d/q.
fn width(m: Mnemonic) -> u32 {
    use Mnemonic as M;
    match m {
        M::Paddb
        | M::Psubb
        | M::Paddsb
        | M::Psubsb
        | M::Paddusb
        | M::Psubusb
        | M::Pcmpeqb
        | M::Pcmpgtb
        | M::Pavgb => 1,
        M::Paddw
        | M::Psubw
        | M::Paddsw
        | M::Psubsw
        | M::Paddusw
        | M::Psubusw
        | M::Pcmpeqw
        | M::Pcmpgtw
        | M::Pavgw
        | M::Psllw
        | M::Psrlw
        | M::Psraw => 2,
        M::Paddd | M::Psubd | M::Pcmpeqd | M::Pcmpgtd | M::Pslld | M::Psrld | M::Psrad => 4,
        _ => 8,
    }
}

/// Executes `insn` if it is an SSE2 integer instruction.
pub(super) fn execute(
    cpu: &mut Cpu,
    bus: &mut dyn CpuBus,
    insn: &Instruction,
) -> Option<ExecResult> {
    Some(run(cpu, bus, insn)).filter(|r| *r != Err(Stop::Unimplemented))
}

fn run(cpu: &mut Cpu, bus: &mut dyn CpuBus, insn: &Instruction) -> ExecResult {
    use Mnemonic as M;
    let m = insn.mnemonic();
    // PEXTRW writes a general register (or memory), so it is not a two-vector operation.
    if m == M::Pextrw {
        let v = src(cpu, bus, insn, 1)?;
        let i = u32::from(insn.immediate8() & 7);
        let x = lane(v, 2, i);
        if insn.op_kind(0) == OpKind::Register {
            cpu.set_reg(insn.op_register(0), x);
        } else {
            super::write_m(cpu, bus, insn, 2, u128::from(x))?;
        }
        return Ok(Flow::Next);
    }
    let is_vector_op = matches!(
        m,
        M::Pxor
            | M::Por
            | M::Pand
            | M::Pandn
            | M::Paddb
            | M::Paddw
            | M::Paddd
            | M::Paddq
            | M::Psubb
            | M::Psubw
            | M::Psubd
            | M::Psubq
            | M::Paddsb
            | M::Paddsw
            | M::Psubsb
            | M::Psubsw
            | M::Paddusb
            | M::Paddusw
            | M::Psubusb
            | M::Psubusw
            | M::Pcmpeqb
            | M::Pcmpeqw
            | M::Pcmpeqd
            | M::Pcmpgtb
            | M::Pcmpgtw
            | M::Pcmpgtd
            | M::Pmullw
            | M::Pmulhw
            | M::Pmulhuw
            | M::Pmuludq
            | M::Pmaddwd
            | M::Psadbw
            | M::Pavgb
            | M::Pavgw
            | M::Pmaxub
            | M::Pminub
            | M::Pmaxsw
            | M::Pminsw
            | M::Psllw
            | M::Pslld
            | M::Psllq
            | M::Psrlw
            | M::Psrld
            | M::Psrlq
            | M::Psraw
            | M::Psrad
            | M::Pslldq
            | M::Psrldq
            | M::Punpcklbw
            | M::Punpcklwd
            | M::Punpckldq
            | M::Punpcklqdq
            | M::Punpckhbw
            | M::Punpckhwd
            | M::Punpckhdq
            | M::Punpckhqdq
            | M::Packsswb
            | M::Packuswb
            | M::Packssdw
            | M::Pshufd
            | M::Pshuflw
            | M::Pshufhw
            | M::Pinsrw
    );
    if !is_vector_op {
        return Err(Stop::Unimplemented);
    }
    let a = xmm(cpu, insn, 0);
    let b = src(cpu, bus, insn, 1)?;
    let r = compute(m, a, b, insn);
    set_xmm(cpu, insn, 0, r);
    Ok(Flow::Next)
}

/// The result of vector instruction `m` with destination `a` and source `b` (for the shifts by
/// immediate and the shuffles, `b` is the immediate or the shuffled source).
fn compute(m: Mnemonic, a: u128, b: u128, insn: &Instruction) -> u128 {
    use Mnemonic as M;
    match m {
        M::Pxor => a ^ b,
        M::Por => a | b,
        M::Pand => a & b,
        M::Pandn => !a & b,
        M::Paddb | M::Paddw | M::Paddd | M::Paddq => map2(a, b, width(m), u64::wrapping_add),
        M::Psubb | M::Psubw | M::Psubd | M::Psubq => map2(a, b, width(m), u64::wrapping_sub),
        M::Paddsb | M::Paddsw => {
            let w = width(m);
            smap2(a, b, w, |x, y| sat_s(x + y, w))
        }
        M::Psubsb | M::Psubsw => {
            let w = width(m);
            smap2(a, b, w, |x, y| sat_s(x - y, w))
        }
        M::Paddusb | M::Paddusw => {
            let w = width(m);
            map2(a, b, w, |x, y| sat_u(x as i64 + y as i64, w) as u64)
        }
        M::Psubusb | M::Psubusw => {
            let w = width(m);
            map2(a, b, w, |x, y| sat_u(x as i64 - y as i64, w) as u64)
        }
        M::Pcmpeqb | M::Pcmpeqw | M::Pcmpeqd => {
            map2(a, b, width(m), |x, y| if x == y { u64::MAX } else { 0 })
        }
        M::Pcmpgtb | M::Pcmpgtw | M::Pcmpgtd => {
            smap2(a, b, width(m), |x, y| if x > y { -1 } else { 0 })
        }
        M::Pmullw => smap2(a, b, 2, |x, y| x * y),
        M::Pmulhw => smap2(a, b, 2, |x, y| (x * y) >> 16),
        M::Pmulhuw => map2(a, b, 2, |x, y| (x * y) >> 16),
        M::Pmuludq => map2(a, b, 8, |x, y| (x & 0xffff_ffff) * (y & 0xffff_ffff)),
        M::Pmaddwd => build(4, |i| {
            let p = |j| slane(a, 2, j) * slane(b, 2, j);
            (p(2 * i) + p(2 * i + 1)) as u64
        }),
        M::Psadbw => build(8, |i| {
            (0..8)
                .map(|j| lane(a, 1, i * 8 + j).abs_diff(lane(b, 1, i * 8 + j)))
                .sum()
        }),
        M::Pavgb | M::Pavgw => map2(a, b, width(m), |x, y| (x + y + 1) >> 1),
        M::Pmaxub => map2(a, b, 1, u64::max),
        M::Pminub => map2(a, b, 1, u64::min),
        M::Pmaxsw => smap2(a, b, 2, i64::max),
        M::Pminsw => smap2(a, b, 2, i64::min),
        M::Psllw | M::Pslld | M::Psllq | M::Psrlw | M::Psrld | M::Psrlq | M::Psraw | M::Psrad => {
            // The count is the immediate or the whole low quadword of the source.
            let count = b as u64;
            let w = width(m);
            let bits = u64::from(w * 8);
            match m {
                M::Psllw | M::Pslld | M::Psllq => {
                    map2(a, 0, w, |x, _| if count >= bits { 0 } else { x << count })
                }
                M::Psrlw | M::Psrld | M::Psrlq => {
                    map2(a, 0, w, |x, _| if count >= bits { 0 } else { x >> count })
                }
                _ => smap2(a, 0, w, |x, _| x >> count.min(bits - 1)),
            }
        }
        M::Pslldq | M::Psrldq => {
            let n = b as u64;
            if n > 15 {
                0
            } else if m == M::Pslldq {
                a << (n * 8)
            } else {
                a >> (n * 8)
            }
        }
        M::Punpcklbw | M::Punpcklwd | M::Punpckldq | M::Punpcklqdq => interleave(a, b, m, 0),
        M::Punpckhbw | M::Punpckhwd | M::Punpckhdq | M::Punpckhqdq => interleave(a, b, m, 1),
        M::Packsswb | M::Packuswb | M::Packssdw => {
            let from = if m == M::Packssdw { 4 } else { 2 };
            let to = from / 2;
            let n = 16 / from;
            build(to, |i| {
                let x = if i < n {
                    slane(a, from, i)
                } else {
                    slane(b, from, i - n)
                };
                if m == M::Packuswb {
                    sat_u(x, to) as u64
                } else {
                    sat_s(x, to) as u64
                }
            })
        }
        M::Pshufd => {
            let imm = u32::from(insn.immediate8());
            build(4, |i| lane(b, 4, (imm >> (2 * i)) & 3))
        }
        M::Pshuflw | M::Pshufhw => {
            let imm = u32::from(insn.immediate8());
            let base = if m == M::Pshuflw { 0 } else { 4 };
            build(2, |i| {
                if (base..base + 4).contains(&i) {
                    lane(b, 2, base + ((imm >> (2 * (i - base))) & 3))
                } else {
                    lane(b, 2, i)
                }
            })
        }
        M::Pinsrw => {
            let i = u32::from(insn.immediate8() & 7);
            let m16 = 0xffffu128 << (i * 16);
            (a & !m16) | ((b & 0xffff) << (i * 16))
        }
        _ => unreachable!("filtered by the caller"),
    }
}

/// PUNPCKL*/PUNPCKH*: interleaves the low (`half` = 0) or high elements of `a` and `b`.
fn interleave(a: u128, b: u128, m: Mnemonic, half: u32) -> u128 {
    use Mnemonic as M;
    let w = match m {
        M::Punpcklbw | M::Punpckhbw => 1,
        M::Punpcklwd | M::Punpckhwd => 2,
        M::Punpckldq | M::Punpckhdq => 4,
        _ => 8,
    };
    let n = 16 / w;
    build(w, |i| {
        let src = if i % 2 == 0 { a } else { b };
        lane(src, w, half * n / 2 + i / 2)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn widths_come_from_the_mnemonic() {
        assert_eq!(width(Mnemonic::Paddb), 1);
        assert_eq!(width(Mnemonic::Psubusw), 2);
        assert_eq!(width(Mnemonic::Pcmpeqd), 4);
        assert_eq!(width(Mnemonic::Paddq), 8);
    }

    #[test]
    fn unpack_and_pack_bytes() {
        let a = 0x0f0e_0d0c_0b0a_0908_0706_0504_0302_0100u128;
        let b = 0x1f1e_1d1c_1b1a_1918_1716_1514_1312_1110u128;
        assert_eq!(
            interleave(a, b, Mnemonic::Punpcklbw, 0),
            0x1707_1606_1505_1404_1303_1202_1101_1000
        );
        assert_eq!(
            interleave(a, b, Mnemonic::Punpckhqdq, 1),
            0x1f1e_1d1c_1b1a_1918_0f0e_0d0c_0b0a_0908
        );
        assert_eq!(
            interleave(a, b, Mnemonic::Punpckldq, 0) as u64,
            0x1312_1110_0302_0100
        );
    }
}
