//! Tests of far transfers, `iret` and the flags instructions.

use iced_x86::code_asm::*;

use crate::exec::system::fixtures::*;
use crate::state::{SegReg, rflags};
use crate::testing::FlatBus;

fn r32(bus: &FlatBus, a: u64) -> u32 {
    bus.read_u64(a) as u32
}

fn r16(bus: &FlatBus, a: u64) -> u16 {
    bus.read_u64(a) as u16
}

/// Long mode at CPL 0 about to `iretq` to user code at 0x10100 (stack 0x20000); the user
/// code does `int 0x80` (gate at 0x11000, DPL 3, IST `ist`), the handler `iretq`s back.
fn user_round_trip(ist: u8) -> (crate::Cpu, FlatBus) {
    let mut bus = FlatBus::new(0x20_0000);
    let mut cpu = long_mode_system(&mut bus);
    gate64(&mut bus, 0x80, 0x11000, 3, ist);
    let frame = [
        0x10100,
        u64::from(UCODE64),
        rflags::FIXED | rflags::IF,
        0x20000,
        u64::from(UDATA),
    ];
    for (i, v) in frame.iter().enumerate() {
        bus.write_u64(0x8000 - 40 + 8 * i as u64, *v);
    }
    cpu.state.gpr[4] = 0x8000 - 40;
    code(&mut bus, 64, 0x10000, |a| a.iretq());
    code(&mut bus, 64, 0x10100, |a| {
        a.int(0x80)?;
        a.mov(eax, 7)
    });
    code(&mut bus, 64, 0x11000, |a| a.iretq());
    (cpu, bus)
}

#[test]
fn iretq_to_cpl3_then_an_interrupt_returns_to_cpl0_on_rsp0() {
    let (mut cpu, mut bus) = user_round_trip(0);
    steps(&mut cpu, &mut bus, 1);
    let s = &cpu.state;
    assert_eq!((s.cpl(), s.rip, s.gpr[4]), (3, 0x10100, 0x20000));
    assert_eq!(s.seg(SegReg::Ss).selector, UDATA);
    assert!(
        s.seg(SegReg::Ds).unusable,
        "the DPL-0 data segment is nulled"
    );
    assert_ne!(s.rflags & rflags::IF, 0);
    steps(&mut cpu, &mut bus, 1);
    let s = &cpu.state;
    assert_eq!((s.cpl(), s.rip, s.gpr[4]), (0, 0x11000, RSP0 - 40));
    assert_eq!(s.seg(SegReg::Ss).selector, 0, "null SS on entry to CPL 0");
    assert_eq!(s.rflags & rflags::IF, 0);
    let top = RSP0 - 40;
    assert_eq!(bus.read_u64(top), 0x10102, "return RIP");
    assert_eq!(bus.read_u64(top + 8), u64::from(UCODE64));
    assert_eq!(bus.read_u64(top + 24), 0x20000, "user RSP");
    assert_eq!(bus.read_u64(top + 32), u64::from(UDATA));
    steps(&mut cpu, &mut bus, 2);
    let s = &cpu.state;
    assert_eq!(
        (s.cpl(), s.rip, s.gpr[4], s.gpr[0]),
        (3, 0x10107, 0x20000, 7)
    );
}

#[test]
fn an_interrupt_gate_with_an_ist_uses_that_stack() {
    let (mut cpu, mut bus) = user_round_trip(1);
    steps(&mut cpu, &mut bus, 2);
    assert_eq!((cpu.state.cpl(), cpu.state.gpr[4]), (0, IST1 - 40));
    // At CPL 0 the IST is used too, with the stack aligned to 16 bytes.
    let mut cpu = long_mode_system(&mut bus);
    cpu.state.gpr[4] = 0x7ff8;
    code(&mut bus, 64, 0x10000, |a| a.int(0x80));
    steps(&mut cpu, &mut bus, 1);
    assert_eq!(cpu.state.gpr[4], IST1 - 40);
    assert_eq!(bus.read_u64(IST1 - 16), 0x7ff8, "old RSP");
}

#[test]
fn call_gate_to_cpl0_switches_stacks_copies_parameters_and_retf_returns() {
    let mut bus = FlatBus::new(0x20_0000);
    let mut cpu = protected32(&mut bus);
    // A 32-bit call gate, DPL 3, two parameters, to KCODE32:0x11000.
    let gate = 0x11000u64 & 0xffff
        | (u64::from(KCODE32) << 16)
        | (2 << 32)
        | (0xecu64 << 40)
        | ((0x11000u64 >> 16) << 48);
    bus.write_u64(GDT + u64::from(FREE), gate);
    let s = &mut cpu.state;
    s.seg[SegReg::Cs as usize] = seg(&bus, UCODE32);
    s.seg[SegReg::Ss as usize] = seg(&bus, UDATA);
    s.seg[SegReg::Ds as usize] = seg(&bus, UDATA);
    s.gpr[4] = 0x20000;
    code(&mut bus, 32, 0x10000, |a| {
        a.push(0x1111)?;
        a.push(0x2222)?;
        a.call_far(FREE | 3, 0)?;
        a.hlt()
    });
    code(&mut bus, 32, 0x11000, |a| {
        a.mov(ax, KDATA as u32)?;
        a.mov(ds, ax)?;
        a.retf_1(8)
    });
    steps(&mut cpu, &mut bus, 3);
    let s = &cpu.state;
    assert_eq!((s.cpl(), s.rip), (0, 0x11000));
    assert_eq!(s.seg(SegReg::Ss).selector, KDATA);
    let top = s.gpr[4];
    assert_eq!(top, RSP0 - 24);
    let frame: Vec<u32> = (0..6).map(|i| r32(&bus, top + 4 * i)).collect();
    assert_eq!(
        frame,
        [
            0x10011,
            u32::from(UCODE32),
            0x2222,
            0x1111,
            0x20000 - 8,
            u32::from(UDATA)
        ]
    );
    steps(&mut cpu, &mut bus, 3);
    let s = &cpu.state;
    assert_eq!((s.cpl(), s.rip, s.gpr[4]), (3, 0x10011, 0x20000));
    assert_eq!(s.seg(SegReg::Ss).selector, UDATA);
    assert!(
        s.seg(SegReg::Ds).unusable,
        "DS with DPL 0 is nulled on return"
    );
}

#[test]
fn far_jump_to_a_more_privileged_segment_is_gp() {
    let mut bus = FlatBus::new(0x20_0000);
    let mut cpu = protected32(&mut bus);
    gate32(&mut bus, 13, KCODE32, 0x12000, 0xe, 0);
    cpu.state.seg[SegReg::Cs as usize] = seg(&bus, UCODE32);
    cpu.state.seg[SegReg::Ss as usize] = seg(&bus, UDATA);
    cpu.state.gpr[4] = 0x20000;
    code(&mut bus, 32, 0x10000, |a| a.jmp_far(KCODE32, 0x11000));
    steps(&mut cpu, &mut bus, 1);
    assert_eq!((cpu.state.cpl(), cpu.state.rip), (0, 0x12000));
    assert_eq!(
        r32(&bus, cpu.state.gpr[4]),
        u32::from(KCODE32),
        "#GP(selector)"
    );
}

#[test]
fn real_mode_int_10_goes_through_the_ivt_and_iret_returns() {
    let mut bus = FlatBus::new(0x20_0000);
    let mut cpu = real_mode();
    bus.write(0x40, &[0x20, 0x00, 0x00, 0x10]);
    cpu.state.rflags |= rflags::IF;
    code(&mut bus, 16, 0x7c00, |a| {
        a.int(0x10)?;
        a.hlt()
    });
    code(&mut bus, 16, 0x10020, |a| {
        a.mov(ax, 0x1234)?;
        a.iret()
    });
    steps(&mut cpu, &mut bus, 1);
    let s = &cpu.state;
    assert_eq!(
        (s.seg(SegReg::Cs).selector, s.seg(SegReg::Cs).base, s.rip),
        (0x1000, 0x10000, 0x20)
    );
    assert_eq!(s.rflags & rflags::IF, 0);
    assert_eq!(s.gpr[4], 0x7000 - 6);
    assert_eq!(r16(&bus, 0x7000 - 6), 0x7c02, "IP");
    assert_eq!(r16(&bus, 0x7000 - 4), 0, "CS");
    assert_eq!(u64::from(r16(&bus, 0x7000 - 2)) & rflags::IF, rflags::IF);
    steps(&mut cpu, &mut bus, 2);
    let s = &cpu.state;
    assert_eq!(
        (s.seg(SegReg::Cs).selector, s.rip, s.gpr[4]),
        (0, 0x7c02, 0x7000)
    );
    assert_eq!(s.gpr[0] & 0xffff, 0x1234);
    assert_ne!(s.rflags & rflags::IF, 0);
}

#[test]
fn popf_keeps_iopl_and_if_away_from_user_code() {
    let mut bus = FlatBus::new(0x20_0000);
    let mut cpu = long_mode_system(&mut bus);
    cpu.state.seg[SegReg::Cs as usize] = seg(&bus, UCODE64);
    cpu.state.seg[SegReg::Ss as usize] = seg(&bus, UDATA);
    cpu.state.rflags = rflags::FIXED | rflags::IF;
    code(&mut bus, 64, 0x10000, |a| {
        a.push(0x3000 | 0x400 | 0x1)?;
        a.popfq()?;
        a.pushfq()
    });
    steps(&mut cpu, &mut bus, 3);
    let f = cpu.state.rflags;
    assert_eq!(
        f & (rflags::IOPL | rflags::IF),
        rflags::IF,
        "IOPL and IF unchanged"
    );
    assert_eq!(f & (rflags::DF | rflags::CF), rflags::DF | rflags::CF);
    assert_eq!(bus.read_u64(cpu.state.gpr[4]), f);
    // At CPL 0 both change.
    let mut cpu = long_mode_system(&mut bus);
    steps(&mut cpu, &mut bus, 2);
    assert_eq!(cpu.state.rflags & (rflags::IOPL | rflags::IF), rflags::IOPL);
}
