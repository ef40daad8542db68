//! The x87 floating-point unit.
//!
//! Registers hold 80-bit extended values. Loads, stores to memory, moves, exchanges, FCHS/FABS,
//! integer loads and stores, FXTRACT and comparisons are exact or rounded once; FADD, FSUB,
//! FMUL, FDIV (all forms) and FSQRT are computed exactly and rounded once under FCW.RC and
//! FCW.PC (24, 53 or 64 significand bits, extended exponent range), FSCALE, FRNDINT and
//! FPREM/FPREM1 in full extended precision (`sse::softfloat`). C1 reports a rounding up in
//! magnitude. A partial FPREM step reduces the exponent difference by `32 + difference % 32`
//! bits, which is what the AMD silicon we compare against does (the SDM leaves the amount
//! between 32 and 63).
//!
//! The transcendental instructions (FSIN, FCOS, FSINCOS, FPTAN, FPATAN, F2XM1, FYL2X, FYL2XP1)
//! are the approximation left: they compute in double precision, so their results carry at
//! most 53 significant bits and the double's exponent range (the low 11 significand bits
//! differ from hardware and values beyond about 1e308 overflow), always raise PE and leave C1
//! clear. FOP is not tracked (saves as zero) and FCS/FDS are not kept.
//!
//! Exceptions set their FSW flags; a masked one produces the architectural default (QNaN
//! indefinite, integer indefinite, infinity). An unmasked one sets FSW.ES and B and raises #MF on
//! the next waiting x87 instruction when CR0.NE is set (with CR0.NE clear the external FERR#
//! path is not modelled and nothing is raised). As on hardware, an unmasked invalid, denormal
//! or zero-divide exception leaves the registers and the stack alone; an unmasked overflow or
//! underflow delivers an arithmetic result with its exponent wrapped by 24576 but stores nothing
//! to memory; an unmasked precision exception still delivers the rounded result.
//!
//! FNSAVE/FRSTOR/FNSTENV/FLDENV use the protected-mode layouts (16- and 32-bit) in every mode.

mod env;
mod math;
mod value;

use iced_x86::{EncodingKind, Instruction, MemorySize, Mnemonic, OpKind, Register};

use super::sse::softfloat::{
    self, DE, Env, F80, F80_INDEFINITE, Fmt, IE, OE, Op, PE, Round, UE, X87Value, ZE,
};
use super::{Cpu, ExecResult, Flow};
use crate::bus::CpuBus;
use crate::exec::basic::set_flags;
use crate::fault::{Exception, Fault, Result};
use crate::flags::sign_extend;
use crate::state::X87;
use crate::state::bits::{CR0_EM, CR0_MP, CR0_NE, CR0_TS};
use crate::state::rflags::{AF, CF, OF, PF, SF, ZF};
use value::{arith, compare, is_denormal, screen, unary};

/// FSW bits.
const SW_SF: u16 = 1 << 6;
const SW_ES: u16 = 1 << 7;
const SW_C0: u16 = 1 << 8;
const SW_C1: u16 = 1 << 9;
const SW_C2: u16 = 1 << 10;
const SW_C3: u16 = 1 << 14;
const SW_B: u16 = 1 << 15;
const SW_CC: u16 = SW_C0 | SW_C1 | SW_C2 | SW_C3;

/// +1.0 in extended format.
const ONE: u128 = 0x3fff_8000_0000_0000_0000;

/// Executes `insn` if it belongs to this family; `None` otherwise.
pub(crate) fn execute(
    cpu: &mut Cpu,
    bus: &mut dyn CpuBus,
    insn: &Instruction,
) -> Option<ExecResult> {
    if insn.encoding() != EncodingKind::Legacy || !is_x87(insn.mnemonic()) {
        return None;
    }
    Some(run(cpu, bus, insn))
}

fn is_x87(m: Mnemonic) -> bool {
    let n = m as u32;
    (Mnemonic::F2xm1 as u32..=Mnemonic::Fyl2xp1 as u32).contains(&n)
        && !matches!(
            m,
            Mnemonic::Fxsave | Mnemonic::Fxsave64 | Mnemonic::Fxrstor | Mnemonic::Fxrstor64
        )
        || m == Mnemonic::Wait
        || m == Mnemonic::Emms
}

/// Instructions that do not wait for pending exceptions (the FN* forms).
fn non_waiting(m: Mnemonic) -> bool {
    matches!(
        m,
        Mnemonic::Fninit
            | Mnemonic::Fnclex
            | Mnemonic::Fnstsw
            | Mnemonic::Fnstcw
            | Mnemonic::Fnstenv
            | Mnemonic::Fnsave
            | Mnemonic::Fneni
            | Mnemonic::Fndisi
            | Mnemonic::Fnsetpm
    )
}

/// Control instructions leave FIP/FDP/FOP alone.
fn is_control(m: Mnemonic) -> bool {
    non_waiting(m)
        || matches!(
            m,
            Mnemonic::Finit
                | Mnemonic::Fclex
                | Mnemonic::Fstsw
                | Mnemonic::Fstcw
                | Mnemonic::Fstenv
                | Mnemonic::Fsave
                | Mnemonic::Fldcw
                | Mnemonic::Fldenv
                | Mnemonic::Frstor
                | Mnemonic::Wait
                | Mnemonic::Emms
        )
}

/// CR0 checks and pending unmasked exceptions.
fn availability(cpu: &Cpu, m: Mnemonic) -> Result<()> {
    let cr0 = cpu.state.cr0;
    if m == Mnemonic::Emms && cr0 & CR0_EM != 0 {
        return Err(Fault::ud());
    }
    if m == Mnemonic::Wait {
        if cr0 & (CR0_TS | CR0_MP) == CR0_TS | CR0_MP {
            return Err(Fault::new(Exception::DeviceNotAvailable));
        }
    } else if cr0 & (CR0_EM | CR0_TS) != 0 {
        return Err(Fault::new(Exception::DeviceNotAvailable));
    }
    if !non_waiting(m) && cpu.state.x87.fsw & SW_ES != 0 && cr0 & CR0_NE != 0 {
        return Err(Fault::new(Exception::FloatingPoint));
    }
    Ok(())
}

// --- The register stack ---------------------------------------------------------------------

fn phys(x: &X87, i: usize) -> usize {
    (x.top() + i) & 7
}

fn is_empty(x: &X87, i: usize) -> bool {
    (x.ftw >> (2 * phys(x, i))) & 3 == 3
}

/// ST(i), or `None` if it is empty.
fn get(x: &X87, i: usize) -> Option<u128> {
    (!is_empty(x, i)).then(|| x.regs[phys(x, i)])
}

fn set_tag(x: &mut X87, p: usize, tag: u16) {
    x.ftw = (x.ftw & !(3 << (2 * p))) | (tag << (2 * p));
}

/// Writes ST(i) and tags it by its contents.
fn set(x: &mut X87, i: usize, v: u128) {
    let p = phys(x, i);
    x.regs[p] = v;
    set_tag(x, p, X87::tag_of(v));
}

fn set_top(x: &mut X87, top: usize) {
    x.fsw = (x.fsw & !(7 << 11)) | ((top as u16 & 7) << 11);
}

/// Pushes `v`; on stack overflow writes the indefinite when IE is masked.
fn push(x: &mut X87, v: u128) {
    let top = (x.top() + 7) & 7;
    if (x.ftw >> (2 * top)) & 3 != 3 {
        if !stack_fault(x, true) {
            return;
        }
        set_top(x, top);
        set(x, 0, F80_INDEFINITE);
        return;
    }
    set_top(x, top);
    set(x, 0, v);
}

fn pop(x: &mut X87) {
    let p = x.top();
    set_tag(x, p, 3);
    set_top(x, p + 1);
}

/// Records a stack overflow or underflow; returns whether IE is masked (so the default result
/// is to be written).
fn stack_fault(x: &mut X87, overflow: bool) -> bool {
    x.fsw &= !SW_C1;
    if overflow {
        x.fsw |= SW_C1;
    }
    x.fsw |= SW_SF;
    signal(x, IE)
}

/// Records exception `flags`; returns whether the result is to be written: all of them are
/// masked, or the one unmasked is precision (the rounded result is then delivered as well).
fn signal(x: &mut X87, flags: u32) -> bool {
    x.fsw |= (flags & 0x3f) as u16;
    let unmasked = flags & !u32::from(x.fcw) & 0x3f;
    if unmasked != 0 {
        x.fsw |= SW_ES | SW_B;
    }
    unmasked & !PE == 0
}

/// Records exception `flags` of an arithmetic result bound for a register; returns whether it
/// is to be written: also when overflow or underflow is unmasked, the result then carrying a
/// wrapped exponent.
fn signal_result(x: &mut X87, flags: u32) -> bool {
    let pre = IE | DE | ZE;
    if flags & !u32::from(x.fcw) & pre != 0 {
        // An unmasked pre-computation exception stops the operation before its result exists.
        signal(x, flags & pre);
        return false;
    }
    signal(x, flags);
    true
}

fn rc(x: &X87) -> Round {
    Round::from_rc(u32::from(x.fcw >> 10))
}

/// The rounding environment FCW selects.
fn env(x: &X87) -> Env {
    Env {
        rc: rc(x),
        trap_underflow: x.fcw & UE as u16 == 0,
        trap_overflow: x.fcw & OE as u16 == 0,
        ..Env::default()
    }
}

/// The significand width of FADD/FSUB/FMUL/FDIV/FSQRT results under FCW.PC.
fn precision(x: &X87) -> u32 {
    softfloat::precision(x.fcw >> 8)
}

/// Sets C1, the rounding indicator: whether the last result was rounded up in magnitude.
fn set_c1(x: &mut X87, up: bool) {
    x.fsw &= !SW_C1;
    if up {
        x.fsw |= SW_C1;
    }
}

fn set_cc(x: &mut X87, cc: u16) {
    x.fsw = (x.fsw & !SW_CC) | cc;
}

/// The ST index of operand `i` (a register ST0..ST7).
fn st_index(insn: &Instruction, i: u32) -> usize {
    insn.op_register(i) as usize - Register::ST0 as usize
}

/// A memory operand read as an extended value (exact), and whether it was a denormal in its own
/// format (a single or double denormal is a normal extended value).
struct Loaded {
    v: u128,
    denormal: bool,
}

/// Reads a memory operand as an extended value, by the instruction's memory size.
fn load(cpu: &mut Cpu, bus: &mut dyn CpuBus, insn: &Instruction) -> Result<Loaded> {
    let (seg, off) = (cpu.mem_seg(insn), cpu.ea(insn));
    let ms = insn.memory_size();
    if ms == MemorySize::Float80 {
        let lin = cpu.linear(seg, off, 10, false)?;
        let mut b = [0u8; 16];
        cpu.read_linear(bus, lin, &mut b[..10], crate::mmu::Privilege::Current)?;
        let v = u128::from_le_bytes(b);
        let denormal = is_denormal(F80::unpack(v));
        return Ok(Loaded { v, denormal });
    }
    let size = ms.size() as u32;
    let v = cpu.read_mem(bus, seg, off, size)?;
    Ok(match ms {
        MemorySize::Float32 => Loaded {
            v: softfloat::ieee_to_f80(v, Fmt::S),
            denormal: Fmt::S.is_denormal(v),
        },
        MemorySize::Float64 => Loaded {
            v: softfloat::ieee_to_f80(v, Fmt::D),
            denormal: Fmt::D.is_denormal(v),
        },
        _ => Loaded {
            v: softfloat::int_to_f80(sign_extend(v, size) as i64),
            denormal: false,
        },
    })
}

/// Writes the low `size` bytes of `v` to the memory operand.
fn store(
    cpu: &mut Cpu,
    bus: &mut dyn CpuBus,
    insn: &Instruction,
    size: u32,
    v: u128,
) -> Result<()> {
    let (seg, off) = (cpu.mem_seg(insn), cpu.ea(insn));
    if size <= 8 {
        return cpu.write_mem(bus, seg, off, size, v as u64);
    }
    let lin = cpu.linear(seg, off, size, true)?;
    cpu.write_linear(
        bus,
        lin,
        &v.to_le_bytes()[..size as usize],
        crate::mmu::Privilege::Current,
    )
}

/// The extended constant `v` adjusted for directed rounding: `down` constants were rounded up
/// to nearest (their next bits are below half), so rounding down or to zero takes one off;
/// otherwise rounding up adds one.
fn constant(v: u128, rounded_down_to_nearest: bool, rc: Round) -> u128 {
    match (rounded_down_to_nearest, rc) {
        (false, Round::Down | Round::Zero) => v - 1,
        (true, Round::Up) => v + 1,
        _ => v,
    }
}

fn run(cpu: &mut Cpu, bus: &mut dyn CpuBus, insn: &Instruction) -> ExecResult {
    use Mnemonic as M;
    let m = insn.mnemonic();
    availability(cpu, m)?;
    if let Some(r) = env::execute(cpu, bus, insn) {
        return r;
    }
    let mem = insn.op_count() >= 1 && insn.op_kind(0) == OpKind::Memory;
    if !is_control(m) {
        cpu.state.x87.fip = cpu.state.rip;
        if mem {
            cpu.state.x87.fdp = cpu.ea(insn);
        }
    }
    if !is_control(m) {
        // Every other instruction writes C1: the rounding indicator, or 0 unless set below.
        cpu.state.x87.fsw &= !SW_C1;
    }
    let mut flags = 0u32;
    match m {
        M::Wait | M::Fnop | M::Fneni | M::Fndisi | M::Fnsetpm => {}
        // The one MMX instruction implemented: it only empties the register stack.
        M::Emms => cpu.state.x87.ftw = 0xffff,
        M::Fninit | M::Finit => {
            let x = &mut cpu.state.x87;
            *x = X87 {
                regs: x.regs,
                ..X87::default()
            };
        }
        M::Fnclex | M::Fclex => cpu.state.x87.fsw &= !(0xff | SW_B),
        M::Fnstsw | M::Fstsw => {
            let v = u64::from(cpu.state.x87.fsw);
            cpu.write_op(bus, insn, 0, v)?;
        }
        M::Fnstcw | M::Fstcw => {
            let v = u64::from(cpu.state.x87.fcw);
            cpu.write_op(bus, insn, 0, v)?;
        }
        M::Fldcw => {
            let v = cpu.read_op(bus, insn, 0)? as u16;
            let x = &mut cpu.state.x87;
            x.fcw = v | 0x40;
            // Unmasking a pending exception makes it pending for #MF.
            if x.fsw & 0x3f & !x.fcw != 0 {
                x.fsw |= SW_ES | SW_B;
            } else {
                x.fsw &= !(SW_ES | SW_B);
            }
        }
        M::Fld => {
            let v = if mem {
                let Loaded { v, denormal } = load(cpu, bus, insn)?;
                let f = F80::unpack(v);
                if denormal {
                    flags |= DE;
                }
                if f.is_snan() && insn.memory_size() != MemorySize::Float80 {
                    flags |= IE;
                    F80 {
                        mant: f.mant | 1 << 62,
                        ..f
                    }
                    .pack()
                } else {
                    v
                }
            } else {
                match get(&cpu.state.x87, st_index(insn, 0)) {
                    Some(v) => v,
                    None => {
                        if !stack_fault(&mut cpu.state.x87, false) {
                            return Ok(Flow::Next);
                        }
                        F80_INDEFINITE
                    }
                }
            };
            let x = &mut cpu.state.x87;
            if signal(x, flags) {
                push(x, v);
            }
        }
        M::Fild => {
            let v = load(cpu, bus, insn)?.v;
            push(&mut cpu.state.x87, v);
        }
        M::Fld1 => push(&mut cpu.state.x87, ONE),
        M::Fldz => push(&mut cpu.state.x87, 0),
        M::Fldpi | M::Fldl2e | M::Fldln2 | M::Fldl2t | M::Fldlg2 => {
            let (v, down) = match m {
                M::Fldpi => (0x4000_c90f_daa2_2168_c235, false),
                M::Fldl2e => (0x3fff_b8aa_3b29_5c17_f0bc, false),
                M::Fldln2 => (0x3ffe_b172_17f7_d1cf_79ac, false),
                M::Fldlg2 => (0x3ffd_9a20_9a84_fbcf_f799, false),
                _ => (0x4000_d49a_784b_cd1b_8afe, true),
            };
            let r = rc(&cpu.state.x87);
            push(&mut cpu.state.x87, constant(v, down, r));
        }
        M::Fst | M::Fstp | M::Fstpnce => {
            let pop_after = m != M::Fst;
            let x = &mut cpu.state.x87;
            let v = match get(x, 0) {
                Some(v) => Some(v),
                None => stack_fault(x, false).then_some(F80_INDEFINITE),
            };
            let Some(v) = v else {
                return Ok(Flow::Next);
            };
            if mem {
                let ((bits, up), size) = match insn.memory_size() {
                    MemorySize::Float32 => (softfloat::f80_to(v, Fmt::S, env(x), &mut flags), 4),
                    MemorySize::Float64 => (softfloat::f80_to(v, Fmt::D, env(x), &mut flags), 8),
                    _ => ((0, false), 10),
                };
                let out = if size == 10 { v } else { u128::from(bits) };
                if flags & !u32::from(x.fcw) & (OE | UE) != 0 {
                    // An unmasked overflow or underflow stores nothing, so nothing was inexact.
                    flags &= !PE;
                }
                if !signal(x, flags) {
                    return Ok(Flow::Next);
                }
                set_c1(x, up);
                store(cpu, bus, insn, size, out)?;
            } else {
                let i = st_index(insn, 0);
                set(x, i, v);
            }
            if pop_after {
                pop(&mut cpu.state.x87);
            }
        }
        M::Fist | M::Fistp | M::Fisttp => {
            let size = insn.memory_size().size() as u32;
            let x = &mut cpu.state.x87;
            let round = if m == M::Fisttp { Round::Zero } else { rc(x) };
            let (v, up) = match get(x, 0) {
                Some(v) => softfloat::f80_to_int(v, size * 8, round, &mut flags),
                None => {
                    if !stack_fault(x, false) {
                        return Ok(Flow::Next);
                    }
                    (1 << (size * 8 - 1), false)
                }
            };
            if !signal(x, flags) {
                return Ok(Flow::Next);
            }
            set_c1(x, up);
            let (seg, off) = (cpu.mem_seg(insn), cpu.ea(insn));
            cpu.write_mem(bus, seg, off, size, v)?;
            if m != M::Fist {
                pop(&mut cpu.state.x87);
            }
        }
        M::Fadd
        | M::Faddp
        | M::Fiadd
        | M::Fsub
        | M::Fsubp
        | M::Fisub
        | M::Fsubr
        | M::Fsubrp
        | M::Fisubr
        | M::Fmul
        | M::Fmulp
        | M::Fimul
        | M::Fdiv
        | M::Fdivp
        | M::Fidiv
        | M::Fdivr
        | M::Fdivrp
        | M::Fidivr => {
            let (op, reverse) = match m {
                M::Fadd | M::Faddp | M::Fiadd => (Op::Add, false),
                M::Fsub | M::Fsubp | M::Fisub => (Op::Sub, false),
                M::Fsubr | M::Fsubrp | M::Fisubr => (Op::Sub, true),
                M::Fmul | M::Fmulp | M::Fimul => (Op::Mul, false),
                M::Fdiv | M::Fdivp | M::Fidiv => (Op::Div, false),
                _ => (Op::Div, true),
            };
            let (dst, src) = if mem {
                (0, Some(load(cpu, bus, insn)?))
            } else {
                (st_index(insn, 0), None)
            };
            let x = &mut cpu.state.x87;
            let a = get(x, dst);
            let (b, denormal) = match src {
                Some(l) => (Some(l.v), l.denormal),
                None => (get(x, st_index(insn, 1)), false),
            };
            let r = match (a, b) {
                (Some(a), Some(b)) => {
                    let (l, r) = if reverse { (b, a) } else { (a, b) };
                    Some(arith(op, l, r, x, denormal, &mut flags))
                }
                _ => stack_fault(x, false).then_some(X87Value {
                    bits: F80_INDEFINITE,
                    up: false,
                }),
            };
            // An unmasked invalid, denormal or zero-divide exception leaves the stack alone,
            // the pop included.
            if let Some(r) = r
                && signal_result(x, flags)
            {
                set(x, dst, r.bits);
                set_c1(x, r.up);
                if matches!(
                    m,
                    M::Faddp | M::Fsubp | M::Fsubrp | M::Fmulp | M::Fdivp | M::Fdivrp
                ) {
                    pop(x);
                }
            }
        }
        M::Fcom
        | M::Fcomp
        | M::Fcompp
        | M::Fucom
        | M::Fucomp
        | M::Fucompp
        | M::Ficom
        | M::Ficomp
        | M::Ftst
        | M::Fcomi
        | M::Fcomip
        | M::Fucomi
        | M::Fucomip => {
            let src = if mem {
                Some(load(cpu, bus, insn)?)
            } else {
                None
            };
            let denormal = src.as_ref().is_some_and(|l| l.denormal);
            let src = src.map(|l| l.v);
            let x = &mut cpu.state.x87;
            let b = match (src, m) {
                (Some(v), _) => Some(v),
                (None, M::Ftst) => Some(0),
                (None, M::Fcompp | M::Fucompp) => get(x, 1),
                (None, _) if insn.op_count() >= 2 => get(x, st_index(insn, 1)),
                (None, _) => get(x, 1),
            };
            let quiet_ok = matches!(
                m,
                M::Fucom | M::Fucomp | M::Fucompp | M::Fucomi | M::Fucomip
            );
            let outcome = match (get(x, 0), b) {
                (Some(a), Some(b)) => {
                    let (fa, fb) = (F80::unpack(a), F80::unpack(b));
                    let unordered =
                        fa.is_nan() || fb.is_nan() || fa.is_unsupported() || fb.is_unsupported();
                    if fa.is_snan()
                        || fb.is_snan()
                        || fa.is_unsupported()
                        || fb.is_unsupported()
                        || (unordered && !quiet_ok)
                    {
                        flags |= IE;
                    } else if denormal || is_denormal(fa) || is_denormal(fb) {
                        flags |= DE;
                    }
                    signal(x, flags).then(|| compare(a, b))
                }
                _ => stack_fault(x, false).then_some(None),
            };
            if let Some(ord) = outcome {
                use core::cmp::Ordering;
                if matches!(m, M::Fcomi | M::Fcomip | M::Fucomi | M::Fucomip) {
                    x.fsw &= !SW_C1;
                    let f = match ord {
                        None => ZF | PF | CF,
                        Some(Ordering::Less) => CF,
                        Some(Ordering::Equal) => ZF,
                        Some(Ordering::Greater) => 0,
                    };
                    set_flags(cpu, f, ZF | PF | CF | OF | SF | AF);
                } else {
                    let cc = match ord {
                        None => SW_C3 | SW_C2 | SW_C0,
                        Some(Ordering::Less) => SW_C0,
                        Some(Ordering::Equal) => SW_C3,
                        Some(Ordering::Greater) => 0,
                    };
                    set_cc(x, cc);
                }
            }
            let x = &mut cpu.state.x87;
            match m {
                M::Fcomp | M::Fucomp | M::Ficomp | M::Fcomip | M::Fucomip => pop(x),
                M::Fcompp | M::Fucompp => {
                    pop(x);
                    pop(x);
                }
                _ => {}
            }
        }
        M::Fxam => {
            let x = &mut cpu.state.x87;
            let v = x.regs[phys(x, 0)];
            let f = F80::unpack(v);
            let class = if is_empty(x, 0) {
                SW_C3 | SW_C0
            } else if f.is_unsupported() {
                0
            } else if f.is_nan() {
                SW_C0
            } else if f.is_inf() {
                SW_C2 | SW_C0
            } else if f.is_zero() {
                SW_C3
            } else if f.exp == 0 {
                SW_C3 | SW_C2
            } else {
                SW_C2
            };
            set_cc(x, class | if f.sign { SW_C1 } else { 0 });
        }
        M::Fxch => {
            let i = if insn.op_count() >= 2 {
                st_index(insn, 1)
            } else {
                1
            };
            let x = &mut cpu.state.x87;
            let (a, b) = (get(x, 0), get(x, i));
            if a.is_none() || b.is_none() {
                if !stack_fault(x, false) {
                    return Ok(Flow::Next);
                }
            } else {
                x.fsw &= !SW_C1;
            }
            set(x, 0, b.unwrap_or(F80_INDEFINITE));
            set(x, i, a.unwrap_or(F80_INDEFINITE));
        }
        M::Ffree | M::Ffreep => {
            let x = &mut cpu.state.x87;
            let p = phys(x, st_index(insn, 0));
            set_tag(x, p, 3);
            if m == M::Ffreep {
                pop(x);
            }
        }
        M::Fincstp | M::Fdecstp => {
            let x = &mut cpu.state.x87;
            let t = x.top();
            set_top(x, if m == M::Fincstp { t + 1 } else { t + 7 });
            x.fsw &= !SW_C1;
        }
        M::Fcmovb
        | M::Fcmove
        | M::Fcmovbe
        | M::Fcmovu
        | M::Fcmovnb
        | M::Fcmovne
        | M::Fcmovnbe
        | M::Fcmovnu => {
            let f = cpu.state.rflags;
            let on = |b: u64| f & b != 0;
            let take = match m {
                M::Fcmovb => on(CF),
                M::Fcmove => on(ZF),
                M::Fcmovbe => on(CF) || on(ZF),
                M::Fcmovu => on(PF),
                M::Fcmovnb => !on(CF),
                M::Fcmovne => !on(ZF),
                M::Fcmovnbe => !on(CF) && !on(ZF),
                _ => !on(PF),
            };
            let x = &mut cpu.state.x87;
            let i = st_index(insn, 1);
            match (get(x, 0), get(x, i)) {
                (Some(_), Some(v)) => {
                    if take {
                        set(x, 0, v);
                    }
                }
                _ => {
                    if stack_fault(x, false) {
                        set(x, 0, F80_INDEFINITE);
                    }
                }
            }
        }
        _ => return math::execute(cpu, m),
    }
    Ok(Flow::Next)
}

#[cfg(test)]
mod tests;
