//! Tests of the x87 family.

use iced_x86::code_asm::*;

use super::*;
use crate::exec::sse::tests::{DATA, exec, machine, run, run_asm};
use crate::state::rflags::{CF, PF, ZF};

fn st(cpu: &Cpu, i: usize) -> u128 {
    get(&cpu.state.x87, i).expect("register not empty")
}

#[test]
fn fld_fadd_fstp_double() {
    let (mut cpu, mut bus, n) = machine(|a| {
        a.mov(rsi, DATA)?;
        a.fld(qword_ptr(rsi))?;
        a.fadd(qword_ptr(rsi + 8))?;
        a.fstp(qword_ptr(rsi + 16))
    });
    bus.write_u64(DATA, 1.25f64.to_bits());
    bus.write_u64(DATA + 8, 2.5f64.to_bits());
    run(&mut cpu, &mut bus, n);
    assert_eq!(f64::from_bits(bus.read_u64(DATA + 16)), 3.75);
    assert_eq!(cpu.state.x87.ftw, 0xffff);
    assert_eq!(cpu.state.x87.top(), 0);
}

#[test]
fn extended_values_round_trip_exactly() {
    let (mut cpu, mut bus, n) = machine(|a| {
        a.mov(rsi, DATA)?;
        a.fld(tword_ptr(rsi))?;
        a.fld(st0)?;
        a.fxch(st0, st1)?;
        a.fstp(tword_ptr(rsi + 16))?;
        a.fchs()?;
        a.fstp(tword_ptr(rsi + 32))
    });
    // 1 + 2^-63: not representable as a double.
    let v: u128 = 0x3fff_8000_0000_0000_0001;
    bus.write(DATA, &v.to_le_bytes()[..10]);
    run(&mut cpu, &mut bus, n);
    let read = |at: u64| {
        let mut b = [0u8; 16];
        b[..10].copy_from_slice(&bus.mem[at as usize..at as usize + 10]);
        u128::from_le_bytes(b)
    };
    assert_eq!(read(DATA + 16), v);
    assert_eq!(read(DATA + 32), v | (1 << 79));
}

#[test]
fn fist_rounds_by_the_control_word_and_fisttp_truncates() {
    let (mut cpu, mut bus, _) = machine(|a| {
        a.mov(rsi, DATA)?;
        a.fld(qword_ptr(rsi))?;
        a.fist(dword_ptr(rsi + 16))?;
        a.fldcw(word_ptr(rsi + 8))?;
        a.fist(dword_ptr(rsi + 20))?;
        a.fisttp(dword_ptr(rsi + 24))?;
        a.fld(qword_ptr(rsi + 32))?;
        a.fistp(word_ptr(rsi + 28))
    });
    bus.write_u64(DATA, (-2.5f64).to_bits());
    bus.write_u64(DATA + 8, 0x037f | (2 << 10)); // round up
    bus.write_u64(DATA + 32, 1e6f64.to_bits());
    run(&mut cpu, &mut bus, 8);
    let m = |at: u64| bus.read_u64(at) as u32 as i32;
    assert_eq!(m(DATA + 16), -2, "nearest even");
    assert_eq!(m(DATA + 20), -2, "up");
    assert_eq!(m(DATA + 24), -2, "truncated");
    assert_eq!(bus.read_u64(DATA + 28) as u16, 0x8000, "integer indefinite");
    assert_eq!(cpu.state.x87.fsw & 0x21, 0x21);
}

#[test]
fn fild_fistp_of_64_bit_integers_is_exact() {
    let (mut cpu, mut bus, n) = machine(|a| {
        a.mov(rsi, DATA)?;
        a.fild(qword_ptr(rsi))?;
        a.fistp(qword_ptr(rsi + 8))
    });
    bus.write_u64(DATA, 0x7fff_ffff_ffff_fff3);
    run(&mut cpu, &mut bus, n);
    assert_eq!(bus.read_u64(DATA + 8), 0x7fff_ffff_ffff_fff3);
}

#[test]
fn fcomi_sets_eflags_and_fucomip_pops() {
    let (mut cpu, mut bus, n) = machine(|a| {
        a.fld1()?;
        a.fldz()?;
        a.fcomi(st0, st1)?;
        a.fucomip(st0, st1)
    });
    run(&mut cpu, &mut bus, 3);
    assert_eq!(cpu.state.rflags & (ZF | PF | CF), CF, "0 < 1");
    run(&mut cpu, &mut bus, n - 3);
    assert_eq!(cpu.state.x87.top(), 7);
    assert_eq!(st(&cpu, 0), ONE);
    // Against a NaN: unordered.
    let (mut cpu, mut bus, _) = machine(|a| {
        a.fucomi(st0, st1)?;
        a.fcom_2(st0, st1)
    });
    push(&mut cpu.state.x87, F80_INDEFINITE);
    push(&mut cpu.state.x87, ONE);
    run(&mut cpu, &mut bus, 2);
    assert_eq!(cpu.state.rflags & (ZF | PF | CF), ZF | PF | CF);
    assert_eq!(cpu.state.x87.fsw & SW_CC, SW_C3 | SW_C2 | SW_C0);
    assert_eq!(cpu.state.x87.fsw & 1, 1, "FCOM of a QNaN is invalid");
}

#[test]
fn stack_underflow_gives_the_indefinite() {
    let (cpu, _) = run_asm(|a| a.fadd_2(st0, st1));
    assert_eq!(cpu.state.x87.fsw & 0x7f, 0x41);
    assert_eq!(cpu.state.x87.fsw & SW_C1, 0);
    assert_eq!(st(&cpu, 0), F80_INDEFINITE);
}

#[test]
fn unmasked_exception_is_raised_on_the_next_waiting_instruction() {
    let (mut cpu, mut bus, _) = machine(|a| {
        a.fldz()?;
        a.fld1()?;
        a.fdivrp(st1, st0)?;
        a.fnstsw(ax)?;
        a.fld1()
    });
    cpu.state.x87.fcw = 0x037f & !4; // unmask ZE
    run(&mut cpu, &mut bus, 4);
    assert_eq!(cpu.state.gpr[0] as u16 & 0x8084, 0x8084);
    assert_eq!(
        exec(&mut cpu, &mut bus),
        Err(Fault::new(Exception::FloatingPoint).into())
    );
}

#[test]
fn ts_makes_x87_instructions_nm() {
    let (mut cpu, mut bus, _) = machine(|a| a.fld1());
    cpu.state.cr0 |= CR0_TS;
    assert_eq!(
        exec(&mut cpu, &mut bus),
        Err(Fault::new(Exception::DeviceNotAvailable).into())
    );
}

#[test]
fn transcendentals_and_square_root() {
    let (mut cpu, mut bus, n) = machine(|a| {
        a.mov(rsi, DATA)?;
        a.fld(qword_ptr(rsi))?;
        a.fsqrt()?;
        a.fstp(qword_ptr(rsi + 8))?;
        a.fld1()?;
        a.fld(qword_ptr(rsi))?;
        a.fyl2x()?;
        a.fstp(qword_ptr(rsi + 16))?;
        a.fldpi()?;
        a.fsin()?;
        a.fstp(qword_ptr(rsi + 24))?;
        a.fld(qword_ptr(rsi))?;
        a.fld1()?;
        a.fscale()?;
        a.fstp(qword_ptr(rsi + 32))
    });
    bus.write_u64(DATA, 16.0f64.to_bits());
    run(&mut cpu, &mut bus, n);
    assert_eq!(f64::from_bits(bus.read_u64(DATA + 8)), 4.0);
    assert_eq!(f64::from_bits(bus.read_u64(DATA + 16)), 4.0);
    assert!(f64::from_bits(bus.read_u64(DATA + 24)).abs() < 1e-15);
    assert_eq!(f64::from_bits(bus.read_u64(DATA + 32)), 65536.0);
}

#[test]
fn fprem_gives_the_remainder_and_quotient_bits() {
    let (mut cpu, mut bus, n) = machine(|a| {
        a.mov(rsi, DATA)?;
        a.fld(qword_ptr(rsi + 8))?;
        a.fld(qword_ptr(rsi))?;
        a.fprem()?;
        a.fstp(qword_ptr(rsi + 16))
    });
    bus.write_u64(DATA, 23.5f64.to_bits());
    bus.write_u64(DATA + 8, 3.0f64.to_bits());
    run(&mut cpu, &mut bus, n - 1);
    // Quotient 7: C0, C3, C1 all set, C2 clear (complete).
    assert_eq!(cpu.state.x87.fsw & SW_CC, SW_C0 | SW_C3 | SW_C1);
    run(&mut cpu, &mut bus, 1);
    assert_eq!(f64::from_bits(bus.read_u64(DATA + 16)), 2.5);
    assert_eq!(cpu.state.x87.fsw & SW_C1, 0, "the exact store clears C1");
}

#[test]
fn fnsave_frstor_round_trip() {
    let (mut cpu, mut bus, n) = machine(|a| {
        a.mov(rsi, DATA)?;
        a.fldpi()?;
        a.fld1()?;
        a.fnsave(ptr(rsi))?;
        a.frstor(ptr(rsi))
    });
    run(&mut cpu, &mut bus, 4);
    let saved = cpu.state.x87;
    assert_eq!(cpu.state.x87.ftw, 0xffff, "FNSAVE reinitialises");
    run(&mut cpu, &mut bus, n - 4);
    assert_eq!(cpu.state.x87.regs, saved.regs);
    assert_eq!(cpu.state.x87.ftw, 0x0fff);
    assert_eq!(cpu.state.x87.top(), 6);
    assert_eq!(st(&cpu, 0), ONE);
}

#[test]
fn rounding_up_sets_c1_and_exact_results_clear_it() {
    let (mut cpu, mut bus, _) = machine(|a| {
        a.mov(rsi, DATA)?;
        a.fild(dword_ptr(rsi))?;
        a.fadd(qword_ptr(rsi + 8))?;
        a.fistp(qword_ptr(rsi + 16))?;
        a.fld(qword_ptr(rsi + 8))?;
        a.fchs()
    });
    bus.write_u64(DATA, 1);
    bus.write_u64(DATA + 8, 0.5f64.to_bits());
    run(&mut cpu, &mut bus, 4);
    // 1.5 rounds to 2: up, inexact (the silicon's FSW 0x220 of the report).
    assert_eq!(bus.read_u64(DATA + 16), 2);
    assert_eq!(cpu.state.x87.fsw & (SW_C1 | 0x3f), SW_C1 | PE as u16);
    run(&mut cpu, &mut bus, 2);
    assert_eq!(cpu.state.x87.fsw & SW_C1, 0, "FLD and FCHS clear C1");
}

#[test]
fn precision_control_rounds_arithmetic_to_24_bits() {
    let (mut cpu, mut bus, n) = machine(|a| {
        a.mov(rsi, DATA)?;
        a.fldcw(word_ptr(rsi + 24))?;
        a.fild(dword_ptr(rsi))?;
        a.fadd(qword_ptr(rsi + 8))?;
        a.fistp(qword_ptr(rsi + 16))
    });
    bus.write_u64(DATA, 3);
    bus.write_u64(DATA + 8, 2f64.powi(30).to_bits());
    // PC = 24 bits, RC = up (FCW 0x87f, as in the report).
    bus.write_u64(DATA + 24, 0x87f);
    run(&mut cpu, &mut bus, n - 1);
    assert_eq!(cpu.state.x87.fsw & SW_C1, SW_C1, "the sum was rounded up");
    run(&mut cpu, &mut bus, 1);
    // 2^30 + 3 needs 31 bits; 24 keep multiples of 2^7.
    assert_eq!(bus.read_u64(DATA + 16), (1 << 30) + (1 << 7));
}

#[test]
fn denormal_memory_operands_raise_de() {
    let (mut cpu, mut bus, n) = machine(|a| {
        a.mov(rsi, DATA)?;
        a.fild(dword_ptr(rsi))?;
        a.fadd(qword_ptr(rsi + 8))
    });
    bus.write_u64(DATA, 7);
    bus.write_u64(DATA + 8, 1);
    run(&mut cpu, &mut bus, n);
    assert_eq!(cpu.state.x87.fsw & 0x3f, DE as u16 | PE as u16);
}

#[test]
fn nans_of_equal_significand_give_the_positive_one() {
    let (mut cpu, mut bus, n) = machine(|a| {
        a.mov(rsi, DATA)?;
        a.fld(qword_ptr(rsi))?;
        a.fadd(qword_ptr(rsi + 8))
    });
    bus.write_u64(DATA, 0xfff8_0000_0000_0000);
    bus.write_u64(DATA + 8, 0x7ff8_0000_0000_0000);
    run(&mut cpu, &mut bus, n);
    assert_eq!(st(&cpu, 0), 0x7fff_c000_0000_0000_0000);
}

#[test]
fn unmasked_zero_divide_leaves_the_stack_alone() {
    let (mut cpu, mut bus, n) = machine(|a| {
        a.mov(rsi, DATA)?;
        a.fldcw(word_ptr(rsi + 16))?;
        a.fld(qword_ptr(rsi))?;
        a.fld(qword_ptr(rsi + 8))?;
        a.fdivp(st1, st0)
    });
    bus.write_u64(DATA, 1f64.to_bits());
    bus.write_u64(DATA + 8, 0);
    bus.write_u64(DATA + 16, 0x37b);
    run(&mut cpu, &mut bus, n);
    assert_eq!(cpu.state.x87.top(), 6, "no pop");
    assert_eq!(st(&cpu, 1), ONE);
    assert_eq!(cpu.state.x87.fsw & (SW_ES | 0x3f), SW_ES | ZE as u16);
}
