//! Machines for the system-family tests: a GDT laid out as Linux's, an IDT, a TSS, and CPUs in
//! real mode, 32-bit protected mode and long mode.

use iced_x86::IcedError;
use iced_x86::code_asm::CodeAssembler;

use crate::exec::segment::Descriptor;
use crate::state::{CpuState, DescriptorTable, SegReg, Segment, bits};
use crate::testing::{FlatBus, long_mode_cpu};
use crate::{Cpu, StepExit};

pub const GDT: u64 = 0x5000;
pub const IDT: u64 = 0x6000;
pub const TSS: u64 = 0x9000;
pub const KCODE32: u16 = 0x08;
pub const KCODE64: u16 = 0x10;
pub const KDATA: u16 = 0x18;
pub const UCODE32: u16 = 0x23;
pub const UDATA: u16 = 0x2b;
pub const UCODE64: u16 = 0x33;
pub const TSS_SEL: u16 = 0x38;
/// The first free GDT slot, for tests' own descriptors.
pub const FREE: u16 = 0x48;
pub const GDT_LIMIT: u16 = 0x7f;
pub const RSP0: u64 = 0x30000;
pub const IST1: u64 = 0x40000;

/// A code or data descriptor: `access` is the P/DPL/S/type byte, `flags` G/DB/L/AVL.
pub fn desc(base: u32, limit: u32, access: u8, flags: u8) -> u64 {
    let (b, l) = (u64::from(base), u64::from(limit));
    (l & 0xffff)
        | ((b & 0xff_ffff) << 16)
        | (u64::from(access) << 40)
        | (((l >> 16) & 0xf) << 48)
        | (u64::from(flags & 0xf) << 52)
        | ((b >> 24) << 56)
}

/// Writes the GDT; the TSS descriptor has type `tss_type`.
pub fn write_gdt(bus: &mut FlatBus, tss_type: u8) {
    let entries = [
        0,
        desc(0, 0xfffff, 0x9b, 0xc),
        desc(0, 0xfffff, 0x9b, 0xa),
        desc(0, 0xfffff, 0x93, 0xc),
        desc(0, 0xfffff, 0xfb, 0xc),
        desc(0, 0xfffff, 0xf3, 0xc),
        desc(0, 0xfffff, 0xfb, 0xa),
        desc(TSS as u32, 0x67, 0x80 | tss_type, 0),
        0,
    ];
    for (i, e) in entries.iter().enumerate() {
        bus.write_u64(GDT + 8 * i as u64, *e);
    }
}

/// The hidden part of a segment register holding fixture selector `sel`.
pub fn seg(bus: &FlatBus, sel: u16) -> Segment {
    let d = Descriptor {
        lo: bus.read_u64(GDT + u64::from(sel & !7)),
        hi: 0,
        addr: 0,
    };
    d.segment(sel)
}

/// A 64-bit interrupt gate (`trap` for a trap gate) to KCODE64:`handler`.
pub fn gate64(bus: &mut FlatBus, vector: u8, handler: u64, dpl: u8, ist: u8) {
    let lo = (handler & 0xffff)
        | (u64::from(KCODE64) << 16)
        | (u64::from(ist) << 32)
        | (u64::from(0x8e | (dpl << 5)) << 40)
        | (((handler >> 16) & 0xffff) << 48);
    let at = IDT + 16 * u64::from(vector);
    bus.write_u64(at, lo);
    bus.write_u64(at + 8, handler >> 32);
}

/// A 32-bit gate of `type_` (0xe interrupt, 0xf trap, 0x6 16-bit interrupt).
pub fn gate32(bus: &mut FlatBus, vector: u8, sel: u16, handler: u32, type_: u8, dpl: u8) {
    let h = u64::from(handler);
    let lo = (h & 0xffff)
        | (u64::from(sel) << 16)
        | (u64::from(0x80 | (dpl << 5) | type_) << 40)
        | ((h >> 16) << 48);
    bus.write_u64(IDT + 8 * u64::from(vector), lo);
}

/// 64-bit mode at CPL 0 on `long_mode_cpu`'s identity map, with the fixture GDT, an empty
/// IDT at `IDT`, and a 64-bit TSS with RSP0 and IST1.
pub fn long_mode_system(bus: &mut FlatBus) -> Cpu {
    let mut cpu = long_mode_cpu(bus);
    write_gdt(bus, 0x9);
    bus.write_u64(GDT + u64::from(TSS_SEL) + 8, 0);
    let s = &mut cpu.state;
    s.gdtr = DescriptorTable {
        base: GDT,
        limit: GDT_LIMIT,
    };
    s.idtr = DescriptorTable {
        base: IDT,
        limit: 0xfff,
    };
    s.seg = [seg(bus, KDATA); 6];
    s.seg[SegReg::Cs as usize] = seg(bus, KCODE64);
    s.tr = Segment {
        type_: 0xb,
        ..seg(bus, TSS_SEL)
    };
    bus.write_u64(TSS + 4, RSP0);
    bus.write_u64(TSS + 0x24, IST1);
    cpu
}

/// 32-bit protected mode at CPL 0 without paging: flat segments, a 32-bit TSS with
/// SS0:ESP0 = KDATA:RSP0, RIP = 0x10000, ESP = 0x8000.
pub fn protected32(bus: &mut FlatBus) -> Cpu {
    write_gdt(bus, 0x9);
    let mut s = CpuState {
        cr0: bits::CR0_PE | bits::CR0_ET,
        gdtr: DescriptorTable {
            base: GDT,
            limit: GDT_LIMIT,
        },
        idtr: DescriptorTable {
            base: IDT,
            limit: 0x7ff,
        },
        seg: [seg(bus, KDATA); 6],
        ..CpuState::default()
    };
    s.seg[SegReg::Cs as usize] = seg(bus, KCODE32);
    s.tr = Segment {
        type_: 0xb,
        ..seg(bus, TSS_SEL)
    };
    bus.write_u32(TSS + 4, RSP0 as u32);
    bus.write_u32(TSS + 8, u32::from(KDATA));
    s.rip = 0x10000;
    s.gpr[4] = 0x8000;
    Cpu::new(s)
}

/// Real mode after RESET, but at 0000:7C00 with SP = 0x7000.
pub fn real_mode() -> Cpu {
    let mut s = CpuState::default();
    s.seg[SegReg::Cs as usize] = Segment::real_mode(0, true);
    s.rip = 0x7c00;
    s.gpr[4] = 0x7000;
    Cpu::new(s)
}

/// Assembles `f` for `bitness` at `ip` and stores it there.
pub fn code(
    bus: &mut FlatBus,
    bitness: u32,
    ip: u64,
    f: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>,
) {
    let mut a = CodeAssembler::new(bitness).unwrap();
    f(&mut a).unwrap();
    let bytes = a.assemble(ip).unwrap();
    bus.write(ip, &bytes);
}

/// Runs `n` instructions that must all complete.
pub fn steps(cpu: &mut Cpu, bus: &mut FlatBus, n: usize) {
    for _ in 0..n {
        let rip = cpu.state.rip;
        assert_eq!(cpu.step(bus), StepExit::Continue, "at rip {rip:#x}");
    }
}

/// Runs until the CPU halts (at most `limit` instructions).
pub fn run_to_hlt(cpu: &mut Cpu, bus: &mut FlatBus, limit: usize) {
    for _ in 0..limit {
        let rip = cpu.state.rip;
        match cpu.step(bus) {
            StepExit::Continue => {}
            StepExit::Halted => return,
            other => panic!("{other:?} at rip {rip:#x}"),
        }
    }
    panic!(
        "no hlt within {limit} instructions, rip {:#x}",
        cpu.state.rip
    );
}
