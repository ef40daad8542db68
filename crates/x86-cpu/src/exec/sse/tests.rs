//! Tests of the SSE family, and the harness the x87 tests share.

use iced_x86::IcedError;
use iced_x86::code_asm::*;

use crate::exec::{Cpu, ExecResult, Flow, execute};
use crate::fault::{Exception, Fault};
use crate::state::bits::{CR0_NE, CR0_TS, CR4_OSFXSR, CR4_OSXMMEXCPT, CR4_OSXSAVE};
use crate::state::rflags::{AF, CF, OF, PF, SF, ZF};
use crate::testing::{FlatBus, long_mode_cpu};

/// Scratch memory the tests use for data.
pub(in crate::exec) const DATA: u64 = 0x9000;

/// A 64-bit CPU with SSE enabled (CR4.OSFXSR, OSXMMEXCPT, CR0.NE) and the code `f` assembles
/// at 0x10000; returns it with the number of instructions.
pub(in crate::exec) fn machine(
    f: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>,
) -> (Cpu, FlatBus, usize) {
    let mut a = CodeAssembler::new(64).unwrap();
    f(&mut a).unwrap();
    let n = a.instructions().len();
    let code = a.assemble(0x10000).unwrap();
    let mut bus = FlatBus::new(0x20_0000);
    let mut cpu = long_mode_cpu(&mut bus);
    cpu.state.cr4 |= CR4_OSFXSR | CR4_OSXMMEXCPT;
    cpu.state.cr0 |= CR0_NE;
    bus.write(0x10000, &code);
    (cpu, bus, n)
}

/// Executes one instruction without delivering a fault.
pub(in crate::exec) fn exec(cpu: &mut Cpu, bus: &mut FlatBus) -> ExecResult {
    let (insn, _, _) = cpu.fetch(bus).unwrap();
    let r = execute(cpu, bus, &insn);
    if r == Ok(Flow::Next) {
        cpu.state.rip = insn.next_ip();
    }
    r
}

/// Executes `n` instructions that must all complete.
pub(in crate::exec) fn run(cpu: &mut Cpu, bus: &mut FlatBus, n: usize) {
    for _ in 0..n {
        let rip = cpu.state.rip;
        let r = exec(cpu, bus);
        assert_eq!(r, Ok(Flow::Next), "at {rip:#x}");
    }
}

/// Assembles and runs all of `f`.
pub(in crate::exec) fn run_asm(
    f: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>,
) -> (Cpu, FlatBus) {
    let (mut cpu, mut bus, n) = machine(f);
    run(&mut cpu, &mut bus, n);
    (cpu, bus)
}

fn f64x2(lo: f64, hi: f64) -> u128 {
    u128::from(lo.to_bits()) | (u128::from(hi.to_bits()) << 64)
}

fn lo64(v: u128) -> f64 {
    f64::from_bits(v as u64)
}

#[test]
fn unaligned_copy_moves_32_bytes() {
    let (mut cpu, mut bus, n) = machine(|a| {
        a.mov(rsi, DATA + 3)?;
        a.mov(rdi, DATA + 0x101)?;
        a.movdqu(xmm0, ptr(rsi))?;
        a.movups(xmm1, ptr(rsi + 16))?;
        a.movdqu(ptr(rdi), xmm0)?;
        a.movups(ptr(rdi + 16), xmm1)
    });
    let bytes: Vec<u8> = (1..=32).collect();
    bus.write(DATA + 3, &bytes);
    run(&mut cpu, &mut bus, n);
    assert_eq!(
        &bus.mem[DATA as usize + 0x101..DATA as usize + 0x121],
        &bytes[..]
    );
}

#[test]
fn strlen_finds_the_terminator_with_pcmpeqb_and_pmovmskb() {
    let (mut cpu, mut bus, n) = machine(|a| {
        a.mov(rdi, DATA)?;
        a.pxor(xmm0, xmm0)?;
        a.movdqa(xmm1, ptr(rdi))?;
        a.pcmpeqb(xmm1, xmm0)?;
        a.pmovmskb(eax, xmm1)?;
        a.bsf(eax, eax)?;
        a.movdqa(xmm2, ptr(rdi))?;
        a.pminub(xmm2, ptr(rdi + 16))
    });
    bus.write(DATA, b"hello, world\0xyz");
    bus.write(DATA + 16, &[0x20; 16]);
    run(&mut cpu, &mut bus, 5);
    assert_eq!(cpu.state.gpr[0], 1 << 12);
    // BSF belongs to another family; check PMINUB instead.
    cpu.state.rip = 0x10000;
    for _ in 0..n {
        let (insn, _, _) = cpu.fetch(&mut bus).unwrap();
        if insn.mnemonic() != iced_x86::Mnemonic::Bsf {
            assert_eq!(execute(&mut cpu, &mut bus, &insn), Ok(Flow::Next));
        }
        cpu.state.rip = insn.next_ip();
    }
    assert_eq!(cpu.state.xmm[2] as u8, b' ');
    assert_eq!((cpu.state.xmm[2] >> 96) as u8, 0);
    assert_eq!((cpu.state.xmm[2] >> 104) as u8, 0x20);
}

#[test]
fn misaligned_movaps_is_gp_but_movups_is_not() {
    let (mut cpu, mut bus, _) = machine(|a| {
        a.mov(rsi, DATA + 8)?;
        a.movups(xmm0, ptr(rsi))?;
        a.movaps(xmm0, ptr(rsi))?;
        a.paddd(xmm0, ptr(rsi))
    });
    run(&mut cpu, &mut bus, 2);
    assert_eq!(exec(&mut cpu, &mut bus), Err(Fault::gp(0).into()));
    cpu.state.rip += cpu.fetch(&mut bus).unwrap().0.len() as u64;
    assert_eq!(exec(&mut cpu, &mut bus), Err(Fault::gp(0).into()));
}

#[test]
fn ts_is_nm_and_missing_osfxsr_is_ud() {
    let (mut cpu, mut bus, _) = machine(|a| a.addps(xmm0, xmm1));
    cpu.state.cr0 |= CR0_TS;
    assert_eq!(
        exec(&mut cpu, &mut bus),
        Err(Fault::new(Exception::DeviceNotAvailable).into())
    );
    cpu.state.cr0 &= !CR0_TS;
    cpu.state.cr4 &= !CR4_OSFXSR;
    assert_eq!(exec(&mut cpu, &mut bus), Err(Fault::ud().into()));
}

#[test]
fn movq_movd_and_scalar_moves_zero_or_merge() {
    let (cpu, _) = run_asm(|a| {
        a.mov(rax, 0x1122_3344_5566_7788u64)?;
        a.pcmpeqd(xmm0, xmm0)?;
        a.movq(xmm0, rax)?;
        a.pcmpeqd(xmm1, xmm1)?;
        a.movd(xmm1, eax)?;
        a.pcmpeqd(xmm2, xmm2)?;
        a.movss(xmm2, xmm1)?;
        a.movq(rbx, xmm0)?;
        a.movd(ecx, xmm2)
    });
    assert_eq!(cpu.state.xmm[0], 0x1122_3344_5566_7788);
    assert_eq!(cpu.state.xmm[1], 0x5566_7788);
    assert_eq!(cpu.state.xmm[2], (u128::MAX << 32) | 0x5566_7788);
    assert_eq!(cpu.state.gpr[3], 0x1122_3344_5566_7788);
    assert_eq!(cpu.state.gpr[1], 0x5566_7788);
}

#[test]
fn memset_broadcast_with_punpck_and_pshufd() {
    let (cpu, _) = run_asm(|a| {
        a.mov(eax, 0xab)?;
        a.movd(xmm0, eax)?;
        a.punpcklbw(xmm0, xmm0)?;
        a.punpcklwd(xmm0, xmm0)?;
        a.pshufd(xmm0, xmm0, 0)
    });
    assert_eq!(cpu.state.xmm[0], u128::from_le_bytes([0xab; 16]));
}

#[test]
fn double_arithmetic_with_zero_divide_and_invalid() {
    let (mut cpu, mut bus, n) = machine(|a| {
        a.addsd(xmm0, xmm1)?;
        a.divsd(xmm2, xmm3)?;
        a.sqrtsd(xmm4, xmm5)?;
        a.mulpd(xmm6, xmm7)
    });
    cpu.state.xmm[0] = f64x2(1.5, 7.0);
    cpu.state.xmm[1] = f64x2(2.25, 100.0);
    cpu.state.xmm[2] = f64x2(1.0, 0.0);
    cpu.state.xmm[3] = f64x2(-0.0, 0.0);
    cpu.state.xmm[5] = f64x2(-1.0, 0.0);
    cpu.state.xmm[6] = f64x2(3.0, f64::INFINITY);
    cpu.state.xmm[7] = f64x2(0.5, 0.0);
    run(&mut cpu, &mut bus, n);
    assert_eq!(cpu.state.xmm[0], f64x2(3.75, 7.0));
    assert_eq!(lo64(cpu.state.xmm[2]), f64::NEG_INFINITY);
    assert_eq!(cpu.state.xmm[4] as u64, 0xfff8_0000_0000_0000);
    assert_eq!(cpu.state.xmm[6] as u64, 1.5f64.to_bits());
    assert_eq!((cpu.state.xmm[6] >> 64) as u64, 0xfff8_0000_0000_0000);
    // IE (sqrt, inf * 0) and ZE.
    assert_eq!(cpu.state.mxcsr & 0x3f, 0b101);
}

#[test]
fn nan_operands_propagate_the_first_source_quieted() {
    let (mut cpu, mut bus, n) = machine(|a| {
        a.addps(xmm0, xmm1)?;
        a.maxss(xmm2, xmm3)
    });
    let qnan_a = 0x7fc0_1234u32;
    let snan_b = 0xff80_0001u32;
    cpu.state.xmm[0] = u128::from(qnan_a) | (u128::from(1.0f32.to_bits()) << 32);
    cpu.state.xmm[1] = u128::from(snan_b) | (u128::from(snan_b) << 32);
    cpu.state.xmm[2] = u128::from(0x7fc0_0000u32);
    cpu.state.xmm[3] = u128::from(2.0f32.to_bits());
    run(&mut cpu, &mut bus, n);
    assert_eq!(cpu.state.xmm[0] as u32, qnan_a);
    assert_eq!((cpu.state.xmm[0] >> 32) as u32, 0xffc0_0001);
    // MAXSS with a NaN returns the second operand.
    assert_eq!(cpu.state.xmm[2] as u32, 2.0f32.to_bits());
    assert_eq!(cpu.state.mxcsr & 1, 1);
}

#[test]
fn ucomisd_and_comisd_set_zf_pf_cf() {
    let (mut cpu, mut bus, _) = machine(|a| {
        a.ucomisd(xmm0, xmm1)?;
        a.comisd(xmm0, xmm2)?;
        a.comiss(xmm3, xmm4)
    });
    cpu.state.xmm[0] = f64x2(1.0, 0.0);
    cpu.state.xmm[1] = f64x2(f64::NAN, 0.0);
    cpu.state.xmm[2] = f64x2(2.0, 0.0);
    cpu.state.xmm[3] = u128::from(5.0f32.to_bits());
    cpu.state.xmm[4] = u128::from(5.0f32.to_bits());
    cpu.state.rflags |= OF | SF | AF;
    run(&mut cpu, &mut bus, 1);
    assert_eq!(
        cpu.state.rflags & (ZF | PF | CF | OF | SF | AF),
        ZF | PF | CF
    );
    assert_eq!(
        cpu.state.mxcsr & 1,
        0,
        "a QNaN does not make UCOMISD invalid"
    );
    run(&mut cpu, &mut bus, 1);
    assert_eq!(cpu.state.rflags & (ZF | PF | CF), CF);
    run(&mut cpu, &mut bus, 1);
    assert_eq!(cpu.state.rflags & (ZF | PF | CF), ZF);
}

#[test]
fn cmpps_predicates_give_masks() {
    let (mut cpu, mut bus, n) = machine(|a| {
        a.movaps(xmm2, xmm0)?;
        a.cmpps(xmm2, xmm1, 1)?;
        a.movaps(xmm3, xmm0)?;
        a.cmpps(xmm3, xmm1, 3)
    });
    let v = |f: [f32; 4]| {
        f.iter().enumerate().fold(0u128, |acc, (i, x)| {
            acc | (u128::from(x.to_bits()) << (32 * i))
        })
    };
    cpu.state.xmm[0] = v([1.0, 5.0, f32::NAN, -1.0]);
    cpu.state.xmm[1] = v([2.0, 5.0, 1.0, -2.0]);
    run(&mut cpu, &mut bus, n);
    assert_eq!(cpu.state.xmm[2], 0xffff_ffff);
    assert_eq!(cpu.state.xmm[3], 0xffff_ffff << 64);
}

#[test]
fn conversions_overflow_to_integer_indefinite() {
    let (mut cpu, mut bus, n) = machine(|a| {
        a.cvttsd2si(eax, xmm0)?;
        a.cvtsd2si(rbx, xmm1)?;
        a.cvttss2si(ecx, xmm2)?;
        a.cvtps2dq(xmm3, xmm4)
    });
    cpu.state.xmm[0] = f64x2(1e10, 0.0);
    cpu.state.xmm[1] = f64x2(f64::NAN, 0.0);
    cpu.state.xmm[2] = u128::from((-7.9f32).to_bits());
    cpu.state.xmm[4] = u128::from(2.5f32.to_bits()) | (u128::from(3e9f32.to_bits()) << 32);
    run(&mut cpu, &mut bus, n);
    assert_eq!(cpu.state.gpr[0], 0x8000_0000);
    assert_eq!(cpu.state.gpr[3], 0x8000_0000_0000_0000);
    assert_eq!(cpu.state.gpr[1], (-7i32) as u32 as u64);
    assert_eq!(cpu.state.xmm[3], 2 | (0x8000_0000u128 << 32));
    assert_eq!(cpu.state.mxcsr & 0x21, 0x21);
}

#[test]
fn conversions_follow_the_mxcsr_rounding_mode() {
    let (mut cpu, mut bus, n) = machine(|a| {
        a.cvtsd2si(eax, xmm0)?;
        a.cvtsi2ss(xmm1, rbx)?;
        a.cvtsd2ss(xmm2, xmm3)?;
        a.addsd(xmm4, xmm5)
    });
    cpu.state.mxcsr = 0x1f80 | (1 << 13); // round down
    cpu.state.xmm[0] = f64x2(-1.5, 0.0);
    cpu.state.gpr[3] = (1 << 24) + 1;
    cpu.state.xmm[3] = f64x2(0.1, 0.0);
    cpu.state.xmm[4] = f64x2(1.0, 0.0);
    cpu.state.xmm[5] = f64x2(-(2f64.powi(-60)), 0.0);
    run(&mut cpu, &mut bus, n);
    assert_eq!(cpu.state.gpr[0], (-2i32) as u32 as u64);
    assert_eq!(f32::from_bits(cpu.state.xmm[1] as u32), 16_777_216.0);
    assert_eq!(
        f32::from_bits(cpu.state.xmm[2] as u32),
        0.1f32.next_down().max(0.099_999_994)
    );
    assert_eq!(lo64(cpu.state.xmm[4]), 1.0f64.next_down());
    cpu.state.mxcsr = 0x1f80 | (2 << 13); // round up
    cpu.state.rip = 0x10000;
    run(&mut cpu, &mut bus, n);
    assert_eq!(cpu.state.gpr[0], (-1i32) as u32 as u64);
    assert_eq!(f32::from_bits(cpu.state.xmm[1] as u32), 16_777_218.0);
}

#[test]
fn unmasked_exception_is_xm_and_keeps_the_destination() {
    let (mut cpu, mut bus, _) = machine(|a| a.divss(xmm0, xmm1));
    cpu.state.mxcsr = 0x1f80 & !(1 << 9); // unmask divide-by-zero
    cpu.state.xmm[0] = u128::from(1.0f32.to_bits());
    assert_eq!(
        exec(&mut cpu, &mut bus),
        Err(Fault::new(Exception::SimdFloatingPoint).into())
    );
    assert_eq!(cpu.state.xmm[0], u128::from(1.0f32.to_bits()));
    assert_eq!(cpu.state.mxcsr & 0x3f, 4);
}

#[test]
fn ldmxcsr_rejects_reserved_bits() {
    let (mut cpu, mut bus, _) = machine(|a| {
        a.mov(rsi, DATA)?;
        a.ldmxcsr(ptr(rsi))?;
        a.stmxcsr(ptr(rsi + 4))
    });
    bus.write_u32(DATA, 0x1_1f80);
    run(&mut cpu, &mut bus, 1);
    assert_eq!(exec(&mut cpu, &mut bus), Err(Fault::gp(0).into()));
    bus.write_u32(DATA, 0x9fc0);
    cpu.state.rip = 0x10000;
    run(&mut cpu, &mut bus, 3);
    assert_eq!(cpu.state.mxcsr, 0x9fc0);
    assert_eq!(bus.read_u64(DATA + 4) as u32, 0x9fc0);
}

#[test]
fn integer_saturation_multiply_and_shifts() {
    let (mut cpu, mut bus, n) = machine(|a| {
        a.paddsw(xmm0, xmm1)?;
        a.psubusb(xmm2, xmm3)?;
        a.pmaddwd(xmm4, xmm5)?;
        a.psraw(xmm6, 15)?;
        a.psrldq(xmm7, 3)?;
        a.packuswb(xmm8, xmm9)?;
        a.pmuludq(xmm10, xmm11)?;
        a.psadbw(xmm12, xmm13)
    });
    let s = &mut cpu.state.xmm;
    s[0] = 0x7ff0;
    s[1] = 0x0100;
    s[2] = 0x0510;
    s[3] = 0x0620;
    s[4] = 0x0003_0002;
    s[5] = 0x0005_0004;
    s[6] = 0x8000_0001;
    s[7] = 0x1122_3344_5566;
    s[8] = 0x0100_ff80_0042;
    s[9] = 0;
    s[10] = 0xffff_ffff;
    s[11] = 0xffff_ffff;
    s[12] = 0x0a;
    s[13] = 0x03 | (0x10 << 8);
    run(&mut cpu, &mut bus, n);
    let s = &cpu.state.xmm;
    assert_eq!(s[0], 0x7fff);
    assert_eq!(s[2], 0);
    assert_eq!(s[4], 2 * 4 + 3 * 5);
    assert_eq!(s[6], 0xffff_0000);
    assert_eq!(s[7], 0x11_2233);
    assert_eq!(s[8], 0xff_00_42);
    assert_eq!(s[10], 0xffff_fffe_0000_0001);
    assert_eq!(s[12], 7 + 16);
}

#[test]
fn fxsave_fxrstor_round_trip() {
    let (mut cpu, mut bus, n) = machine(|a| {
        a.mov(rsi, DATA)?;
        a.fld1()?;
        a.fldpi()?;
        a.fxsave64(ptr(rsi))?;
        a.fninit()?;
        a.pxor(xmm15, xmm15)?;
        a.fxrstor64(ptr(rsi))
    });
    for (i, r) in cpu.state.xmm.iter_mut().enumerate() {
        *r = 0x0101_0101_0101_0101_0101_0101_0101_0101 * i as u128;
    }
    cpu.state.mxcsr = 0x1f80 | (1 << 13);
    run(&mut cpu, &mut bus, 4);
    let saved = cpu.state.clone();
    let base = DATA as usize;
    assert_eq!(bus.mem[base + 4], 0b1100_0000, "abridged tag");
    assert_eq!(
        u16::from_le_bytes([bus.mem[base + 2], bus.mem[base + 3]]) >> 11,
        6
    );
    assert_eq!(bus.read_u64(DATA + 24) as u32, cpu.state.mxcsr);
    assert_eq!(bus.read_u64(DATA + 160 + 16 * 15), 0x0f0f_0f0f_0f0f_0f0f);
    // ST(0) is pi, ST(1) is 1.
    assert_eq!(bus.read_u64(DATA + 32), 0xc90f_daa2_2168_c235);
    assert_eq!(bus.read_u64(DATA + 48), 0x8000_0000_0000_0000);
    run(&mut cpu, &mut bus, n - 4);
    assert_eq!(cpu.state.x87, saved.x87);
    assert_eq!(cpu.state.xmm, saved.xmm);
    assert_eq!(cpu.state.mxcsr, saved.mxcsr);
}

#[test]
fn fxsave_needs_16_byte_alignment() {
    let (mut cpu, mut bus, _) = machine(|a| {
        a.mov(rsi, DATA + 8)?;
        a.fxsave(ptr(rsi))
    });
    run(&mut cpu, &mut bus, 1);
    assert_eq!(exec(&mut cpu, &mut bus), Err(Fault::gp(0).into()));
}

fn xsave_machine(
    f: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>,
) -> (Cpu, FlatBus, usize) {
    let (mut cpu, bus, n) = machine(f);
    cpu.state.cr4 |= CR4_OSXSAVE;
    cpu.state.xcr0 = 3;
    cpu.state.gpr[0] = u64::MAX;
    cpu.state.gpr[2] = u64::MAX;
    (cpu, bus, n)
}

#[test]
fn xsave_xrstor_round_trip_and_init_from_xstate_bv() {
    let (mut cpu, mut bus, n) = xsave_machine(|a| {
        a.mov(rsi, DATA)?;
        a.xsave64(ptr(rsi))?;
        a.pxor(xmm3, xmm3)?;
        a.xrstor64(ptr(rsi))
    });
    cpu.state.xmm[3] = 0x1234;
    run(&mut cpu, &mut bus, n);
    // x87 untouched (init), SSE in use.
    assert_eq!(bus.read_u64(DATA + 512), 0b10);
    assert_eq!(cpu.state.xmm[3], 0x1234);
    // Clearing XSTATE_BV[1] makes XRSTOR load the initial SSE state.
    bus.write_u64(DATA + 512, 0);
    cpu.state.rip = {
        let mut a = CodeAssembler::new(64).unwrap();
        a.mov(rsi, DATA).unwrap();
        a.xsave64(ptr(rsi)).unwrap();
        a.pxor(xmm3, xmm3).unwrap();
        0x10000 + a.assemble(0x10000).unwrap().len() as u64
    };
    cpu.state.mxcsr = 0x1f80 | (3 << 13);
    run(&mut cpu, &mut bus, 1);
    assert_eq!(cpu.state.xmm[3], 0);
    assert_eq!(
        cpu.state.mxcsr, 0x1f80,
        "standard-form XRSTOR still loads MXCSR"
    );
}

#[test]
fn xsavec_writes_the_compacted_header_and_xrstor_checks_it() {
    let (mut cpu, mut bus, _) = xsave_machine(|a| {
        a.mov(rsi, DATA)?;
        a.xsavec64(ptr(rsi))?;
        a.xrstor64(ptr(rsi))?;
        a.xsave(ptr(rsi + 32))
    });
    cpu.state.x87.fcw = 0x27f;
    run(&mut cpu, &mut bus, 3);
    assert_eq!(bus.read_u64(DATA + 512), 0b01);
    assert_eq!(bus.read_u64(DATA + 520), (1 << 63) | 3);
    bus.write_u64(DATA + 512, 0b100);
    cpu.state.rip -= 4;
    assert_eq!(exec(&mut cpu, &mut bus), Err(Fault::gp(0).into()));
    cpu.state.rip += 4;
    assert_eq!(
        exec(&mut cpu, &mut bus),
        Err(Fault::gp(0).into()),
        "64-byte alignment"
    );
}

#[test]
fn xsave_without_osxsave_is_ud() {
    let (mut cpu, mut bus, _) = machine(|a| a.xsave(ptr(rsi)));
    assert_eq!(exec(&mut cpu, &mut bus), Err(Fault::ud().into()));
}

#[test]
fn tiny_inexact_products_set_ue_and_pe() {
    let (mut cpu, mut bus, n) = machine(|a| {
        a.mov(rsi, DATA)?;
        a.mulsd(xmm2, ptr(rsi))
    });
    bus.write_u64(DATA, 1e-10f64.to_bits());
    cpu.state.xmm[2] = f64x2(1e-300, 0.0);
    run(&mut cpu, &mut bus, n);
    assert_eq!(cpu.state.mxcsr, 0x1fb0);
    assert_eq!(lo64(cpu.state.xmm[2]), 1e-310);
}

#[test]
fn packed_division_by_zero_of_a_denormal_sets_ze_only() {
    let (mut cpu, mut bus, n) = machine(|a| a.divps(xmm0, xmm1));
    // Lanes: denormal / 0, 1 / 1, 0 / 1, 2 / 2.
    cpu.state.xmm[0] = 0x4000_0000_0000_0000_3f80_0000_0000_0001;
    cpu.state.xmm[1] = 0x4000_0000_3f80_0000_3f80_0000_0000_0000;
    run(&mut cpu, &mut bus, n);
    assert_eq!(cpu.state.mxcsr & 0x3f, 0x4);
    assert_eq!(cpu.state.xmm[0] as u32, 0x7f80_0000);
}
