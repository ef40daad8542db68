//! String instructions (movs, stos, lods, cmps, scas, ins, outs) with rep prefixes and every
//! address size.
//!
//! The address size (and so SI/ESI/RSI, DI/EDI/RDI and CX/ECX/RCX) comes from the operand
//! kinds iced reports; the source segment may be overridden, the destination is always ES.
//! A `rep` instruction runs at most [`BUDGET`] units of work per step (1024 iterations, or
//! 64 KiB on the page-copy path) and then reports [`Flow::Repeat`] with RIP unchanged, so that
//! interrupts are taken between chunks. Registers are updated after every completed iteration
//! (or copied page chunk), so a fault leaves RSI, RDI and RCX describing the work done, as on
//! hardware.
//!
//! `rep movs` and `rep stos` with DF = 0 copy or fill whole runs of RAM at a time: each run
//! stays inside one page of the source and one of the destination, is translated once, and
//! falls back to single iterations for anything else (MMIO, an element crossing a page, a
//! segment limit, a fault, a destination that overlaps the source ahead of it).
//!
//! `ins` and `outs` check IOPL against CPL in protected mode as `in`/`out` do; the TSS I/O
//! permission bitmap is not consulted (a CPL 3 guest with IOPL < 3 gets #GP for every port).

use iced_x86::{Code, Instruction, OpKind, Register};

use super::basic::set_flags;
use super::operand::seg_of;
use super::{Cpu, ExecResult, Flow};
use crate::bus::CpuBus;
use crate::fault::{Fault, Result};
use crate::flags::{self, mask};
use crate::mmu::{Access, Privilege, translate};
use crate::state::SegReg;
use crate::state::rflags::{DF, IOPL, ZF};

/// Work allowed per step, in units: an iteration costs [`ITERATION_COST`], a bulk copy a unit
/// per byte.
const BUDGET: u64 = 64 * 1024;
/// Cost of one iteration on the element-at-a-time path (1024 of them per step).
const ITERATION_COST: u64 = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Movs,
    Cmps,
    Stos,
    Lods,
    Scas,
    Ins,
    Outs,
}

/// Executes `insn` if it belongs to this family; `None` otherwise.
pub(crate) fn execute(
    cpu: &mut Cpu,
    bus: &mut dyn CpuBus,
    insn: &Instruction,
) -> Option<ExecResult> {
    use Code::*;
    let (op, size) = match insn.code() {
        Movsb_m8_m8 => (Op::Movs, 1),
        Movsw_m16_m16 => (Op::Movs, 2),
        Movsd_m32_m32 => (Op::Movs, 4),
        Movsq_m64_m64 => (Op::Movs, 8),
        Cmpsb_m8_m8 => (Op::Cmps, 1),
        Cmpsw_m16_m16 => (Op::Cmps, 2),
        Cmpsd_m32_m32 => (Op::Cmps, 4),
        Cmpsq_m64_m64 => (Op::Cmps, 8),
        Stosb_m8_AL => (Op::Stos, 1),
        Stosw_m16_AX => (Op::Stos, 2),
        Stosd_m32_EAX => (Op::Stos, 4),
        Stosq_m64_RAX => (Op::Stos, 8),
        Lodsb_AL_m8 => (Op::Lods, 1),
        Lodsw_AX_m16 => (Op::Lods, 2),
        Lodsd_EAX_m32 => (Op::Lods, 4),
        Lodsq_RAX_m64 => (Op::Lods, 8),
        Scasb_AL_m8 => (Op::Scas, 1),
        Scasw_AX_m16 => (Op::Scas, 2),
        Scasd_EAX_m32 => (Op::Scas, 4),
        Scasq_RAX_m64 => (Op::Scas, 8),
        Insb_m8_DX => (Op::Ins, 1),
        Insw_m16_DX => (Op::Ins, 2),
        Insd_m32_DX => (Op::Ins, 4),
        Outsb_DX_m8 => (Op::Outs, 1),
        Outsw_DX_m16 => (Op::Outs, 2),
        Outsd_DX_m32 => (Op::Outs, 4),
        _ => return None,
    };
    Some(run(cpu, bus, &Ctx::new(cpu, insn, op, size)))
}

/// Everything an iteration needs, decided once per instruction.
struct Ctx {
    op: Op,
    /// Element size in bytes.
    size: u32,
    si: Register,
    di: Register,
    cx: Register,
    /// The address-size mask SI and DI wrap at.
    addr_mask: u64,
    /// The source segment (DS unless overridden).
    src_seg: SegReg,
    /// Added to SI/DI after each element: +size, or -size when DF is set.
    delta: u64,
    rep: bool,
    /// For cmps/scas under `rep`: stop when ZF differs from this.
    while_zf: bool,
}

impl Ctx {
    fn new(cpu: &Cpu, insn: &Instruction, op: Op, size: u32) -> Self {
        let addr_size = (0..insn.op_count())
            .find_map(|i| match insn.op_kind(i) {
                OpKind::MemorySegSI | OpKind::MemoryESDI => Some(2),
                OpKind::MemorySegESI | OpKind::MemoryESEDI => Some(4),
                OpKind::MemorySegRSI | OpKind::MemoryESRDI => Some(8),
                _ => None,
            })
            .unwrap_or(8);
        let (si, di, cx) = match addr_size {
            2 => (Register::SI, Register::DI, Register::CX),
            4 => (Register::ESI, Register::EDI, Register::ECX),
            _ => (Register::RSI, Register::RDI, Register::RCX),
        };
        let delta = if cpu.state.rflags & DF != 0 {
            0u64.wrapping_sub(u64::from(size))
        } else {
            u64::from(size)
        };
        Ctx {
            op,
            size,
            si,
            di,
            cx,
            addr_mask: mask(addr_size),
            src_seg: seg_of(insn.memory_segment()),
            delta,
            rep: insn.has_rep_prefix() || insn.has_repne_prefix(),
            while_zf: !insn.has_repne_prefix(),
        }
    }

    fn advance(&self, cpu: &mut Cpu, r: Register, bytes: u64) {
        let v = cpu.reg(r).wrapping_add(bytes) & self.addr_mask;
        cpu.set_reg(r, v);
    }
}

fn io_allowed(cpu: &Cpu) -> bool {
    !cpu.state.protected() || u64::from(cpu.state.cpl()) <= (cpu.state.rflags & IOPL) >> 12
}

fn run(cpu: &mut Cpu, bus: &mut dyn CpuBus, c: &Ctx) -> ExecResult {
    if matches!(c.op, Op::Ins | Op::Outs) && !io_allowed(cpu) {
        return Err(Fault::gp(0).into());
    }
    if !c.rep {
        once(cpu, bus, c)?;
        return Ok(Flow::Next);
    }
    let mut budget = BUDGET;
    loop {
        let count = cpu.reg(c.cx);
        if count == 0 {
            return Ok(Flow::Next);
        }
        if budget < ITERATION_COST {
            return Ok(Flow::Repeat);
        }
        let done = match bulk(cpu, bus, c, count, budget) {
            0 => {
                once(cpu, bus, c)?;
                budget -= ITERATION_COST;
                1
            }
            n => {
                budget = budget.saturating_sub(n * u64::from(c.size));
                n
            }
        };
        cpu.set_reg(c.cx, count - done);
        if matches!(c.op, Op::Cmps | Op::Scas) && (cpu.state.rflags & ZF != 0) != c.while_zf {
            return Ok(Flow::Next);
        }
    }
}

/// One iteration; SI and DI move only once it has completed.
fn once(cpu: &mut Cpu, bus: &mut dyn CpuBus, c: &Ctx) -> Result<()> {
    let size = c.size;
    let si = cpu.reg(c.si);
    let di = cpu.reg(c.di);
    let acc = super::atomic::accumulator(size);
    match c.op {
        Op::Movs => {
            let v = cpu.read_mem(bus, c.src_seg, si, size)?;
            cpu.write_mem(bus, SegReg::Es, di, size, v)?;
        }
        Op::Stos => {
            let v = cpu.reg(acc);
            cpu.write_mem(bus, SegReg::Es, di, size, v)?;
        }
        Op::Lods => {
            let v = cpu.read_mem(bus, c.src_seg, si, size)?;
            cpu.set_reg(acc, v);
        }
        Op::Cmps | Op::Scas => {
            let a = if c.op == Op::Cmps {
                cpu.read_mem(bus, c.src_seg, si, size)?
            } else {
                cpu.reg(acc)
            };
            let b = cpu.read_mem(bus, SegReg::Es, di, size)?;
            let r = a.wrapping_sub(b) & mask(size);
            set_flags(cpu, flags::sub(a, b, 0, r, size), flags::ALL);
        }
        Op::Ins => {
            // Check that the destination is writable before the port read, whose side effects
            // (a FIFO pop, say) cannot be undone.
            let linear = cpu.linear(SegReg::Es, di, size, true)?;
            for addr in [linear, linear.wrapping_add(u64::from(size) - 1)] {
                translate(
                    &cpu.state,
                    &mut cpu.tlb,
                    bus,
                    addr,
                    Access::Write,
                    Privilege::Current,
                )?;
            }
            let mut b = [0u8; 4];
            let port = cpu.state.gpr[2] as u16;
            bus.io_read(port, &mut b[..size as usize]);
            cpu.write_linear(bus, linear, &b[..size as usize], Privilege::Current)?;
        }
        Op::Outs => {
            let v = cpu.read_mem(bus, c.src_seg, si, size)?;
            bus.io_write(cpu.state.gpr[2] as u16, &v.to_le_bytes()[..size as usize]);
        }
    }
    if matches!(c.op, Op::Movs | Op::Cmps | Op::Lods | Op::Outs) {
        c.advance(cpu, c.si, c.delta);
    }
    if matches!(c.op, Op::Movs | Op::Cmps | Op::Stos | Op::Scas | Op::Ins) {
        c.advance(cpu, c.di, c.delta);
    }
    Ok(())
}

/// How many whole elements starting at `offset` fit before the end of the page holding
/// `linear` and before the offset wraps at the address size.
fn room(c: &Ctx, offset: u64, linear: u64) -> u64 {
    let size = u64::from(c.size);
    let in_page = (0x1000 - (linear & 0xfff)) / size;
    if c.addr_mask == u64::MAX {
        in_page
    } else {
        in_page.min((c.addr_mask - offset + 1) / size)
    }
}

/// The page-at-a-time path of `rep movs`/`rep stos` with DF = 0: returns how many elements it
/// did (all or nothing), 0 when the element-at-a-time path must take over.
fn bulk(cpu: &mut Cpu, bus: &mut dyn CpuBus, c: &Ctx, count: u64, budget: u64) -> u64 {
    if !matches!(c.op, Op::Movs | Op::Stos) || cpu.state.rflags & DF != 0 {
        return 0;
    }
    let size = u64::from(c.size);
    let di = cpu.reg(c.di);
    let Ok(dst_linear) = cpu.linear(SegReg::Es, di, c.size, true) else {
        return 0;
    };
    let mut n = count.min(budget / size).min(room(c, di, dst_linear));
    let mut src = None;
    if c.op == Op::Movs {
        let si = cpu.reg(c.si);
        let Ok(src_linear) = cpu.linear(c.src_seg, si, c.size, false) else {
            return 0;
        };
        n = n.min(room(c, si, src_linear));
        src = Some((si, src_linear));
    }
    if n == 0 {
        return 0;
    }
    // The whole run must pass the segment checks (a limit may cut it short).
    let len = n * size;
    if cpu.linear(SegReg::Es, di, len as u32, true).is_err() {
        return 0;
    }
    let mut buf = [0u8; 0x1000];
    match src {
        Some((si, src_linear)) => {
            if cpu.linear(c.src_seg, si, len as u32, false).is_err() {
                return 0;
            }
            let Some(src_pa) = translate_for(cpu, bus, src_linear, Access::Read) else {
                return 0;
            };
            let Some(dst_pa) = translate_for(cpu, bus, dst_linear, Access::Write) else {
                return 0;
            };
            // A destination just ahead of the source must see the bytes this run writes (the
            // classic pattern fill): copy only up to the start of the overlap.
            if dst_pa > src_pa && dst_pa < src_pa + len {
                n = (dst_pa - src_pa) / size;
                if n == 0 {
                    return 0;
                }
            }
            let len = (n * size) as usize;
            let Some(from) = bus.ram(src_pa, len) else {
                return 0;
            };
            buf[..len].copy_from_slice(from);
            let Some(to) = bus.ram(dst_pa, len) else {
                return 0;
            };
            to.copy_from_slice(&buf[..len]);
            c.advance(cpu, c.si, n * size);
        }
        None => {
            let Some(dst_pa) = translate_for(cpu, bus, dst_linear, Access::Write) else {
                return 0;
            };
            let value = cpu.state.gpr[0].to_le_bytes();
            let Some(to) = bus.ram(dst_pa, len as usize) else {
                return 0;
            };
            for chunk in to.chunks_exact_mut(c.size as usize) {
                chunk.copy_from_slice(&value[..c.size as usize]);
            }
        }
    }
    c.advance(cpu, c.di, n * size);
    n
}

fn translate_for(cpu: &mut Cpu, bus: &mut dyn CpuBus, linear: u64, access: Access) -> Option<u64> {
    translate(
        &cpu.state,
        &mut cpu.tlb,
        bus,
        linear,
        access,
        Privilege::Current,
    )
    .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StepExit;
    use crate::exec::Stop;
    use crate::exec::alu::tests::{asm, exec, machine, run};
    use crate::state::rflags::CF;

    fn set(cpu: &mut Cpu, src: u64, dst: u64, count: u64) {
        (cpu.state.gpr[6], cpu.state.gpr[7], cpu.state.gpr[1]) = (src, dst, count);
    }

    fn regs(cpu: &Cpu) -> (u64, u64, u64) {
        (cpu.state.gpr[6], cpu.state.gpr[7], cpu.state.gpr[1])
    }

    #[test]
    fn rep_movsb_copies_across_page_boundaries() {
        let (mut cpu, mut bus) = machine(&asm(|a| a.rep().movsb()));
        for i in 0..5000 {
            bus.mem[0x20_100 + i] = (i * 7) as u8;
        }
        set(&mut cpu, 0x20_100, 0x30_ffd, 5000);
        run(&mut cpu, &mut bus, 1);
        assert_eq!(regs(&cpu), (0x20_100 + 5000, 0x30_ffd + 5000, 0));
        assert_eq!(
            bus.mem[0x30_ffd..0x30_ffd + 5000],
            bus.mem[0x20_100..0x20_100 + 5000]
        );
        assert_eq!(cpu.state.rip, 0x10002);
    }

    #[test]
    fn rep_movsq_copies_elements_that_straddle_pages() {
        let (mut cpu, mut bus) = machine(&asm(|a| a.rep().movsq()));
        for i in 0..64 {
            bus.write_u64(0x20_ff0 + i * 8, i);
        }
        set(&mut cpu, 0x20_ff0, 0x31_ffc, 64);
        run(&mut cpu, &mut bus, 1);
        for i in 0..64 {
            assert_eq!(bus.read_u64(0x31_ffc + i * 8), i);
        }
    }

    #[test]
    fn rep_movsb_onto_the_next_byte_replicates_a_pattern() {
        let (mut cpu, mut bus) = machine(&asm(|a| a.rep().movsb()));
        bus.mem[0x20_000] = 0xab;
        set(&mut cpu, 0x20_000, 0x20_001, 100);
        run(&mut cpu, &mut bus, 1);
        assert!(bus.mem[0x20_000..0x20_065].iter().all(|&b| b == 0xab));
    }

    #[test]
    fn rep_stos_with_df_set_runs_downwards() {
        let (mut cpu, mut bus) = machine(&asm(|a| a.rep().stosd()));
        cpu.state.rflags |= DF;
        cpu.state.gpr[0] = 0x1122_3344;
        set(&mut cpu, 0, 0x20_00c, 4);
        run(&mut cpu, &mut bus, 1);
        assert_eq!(cpu.state.gpr[7], 0x1_fffc);
        for i in 0..4 {
            assert_eq!(bus.read_u64(0x20_000 + i * 4) as u32, 0x1122_3344);
        }
        assert_eq!(bus.mem[0x1_ffff], 0);
    }

    #[test]
    fn repe_cmpsb_stops_at_the_first_mismatch() {
        let (mut cpu, mut bus) = machine(&asm(|a| a.repe().cmpsb()));
        bus.write(0x20_000, b"hello, world");
        bus.write(0x21_000, b"hello, there");
        set(&mut cpu, 0x20_000, 0x21_000, 12);
        run(&mut cpu, &mut bus, 1);
        // 'w' vs 't' at index 7: eight compares, and 'w' > 't' so no borrow.
        assert_eq!(regs(&cpu), (0x20_008, 0x21_008, 4));
        assert_eq!(cpu.state.rflags & (ZF | CF), 0);
    }

    #[test]
    fn repne_scasb_finds_a_byte() {
        let (mut cpu, mut bus) = machine(&asm(|a| a.repne().scasb()));
        bus.write(0x20_000, b"abcdef\0");
        cpu.state.gpr[0] = 0;
        set(&mut cpu, 0, 0x20_000, u64::MAX);
        run(&mut cpu, &mut bus, 1);
        assert_eq!(cpu.state.gpr[7], 0x20_007);
        assert_eq!(!cpu.state.gpr[1] - 1, 6, "strlen by the classic idiom");
    }

    #[test]
    fn long_rep_returns_repeat_after_the_cap_with_rip_unchanged() {
        let (mut cpu, mut bus) = machine(&asm(|a| a.rep().stosb()));
        cpu.state.rflags |= DF;
        set(&mut cpu, 0, 0x30_000, 3000);
        assert_eq!(cpu.step(&mut bus), StepExit::Continue);
        assert_eq!((cpu.state.rip, cpu.state.gpr[1]), (0x10000, 3000 - 1024));
        assert_eq!(cpu.state.gpr[7], 0x30_000 - 1024);
        // The page-copy path stops after 64 KiB.
        let (mut cpu, mut bus) = machine(&asm(|a| a.rep().movsb()));
        set(&mut cpu, 0x20_000, 0x100_000, 0x20_000);
        assert_eq!(cpu.step(&mut bus), StepExit::Continue);
        assert_eq!(regs(&cpu), (0x30_000, 0x110_000, 0x10_000));
        assert_eq!(cpu.state.rip, 0x10000);
        assert_eq!(cpu.step(&mut bus), StepExit::Continue);
        assert_eq!((cpu.state.rip, cpu.state.gpr[1]), (0x10002, 0));
    }

    #[test]
    fn a_fault_mid_way_leaves_the_completed_iterations_in_the_registers() {
        let (mut cpu, mut bus) = machine(&asm(|a| a.rep().stosq()));
        // The first 2 MiB are mapped; 0x20_0000 is not.
        set(&mut cpu, 0, 0x1f_ffe0, 8);
        let r = exec(&mut cpu, &mut bus);
        assert!(
            matches!(r, Err(Stop::Fault(f)) if f.address == Some(0x20_0000)),
            "{r:?}"
        );
        assert_eq!(regs(&cpu), (0, 0x20_0000, 4));
    }

    #[test]
    fn string_op_with_32_bit_addresses_uses_esi_edi_ecx() {
        // addr32 rep movsb
        let (mut cpu, mut bus) = machine(&[0x67, 0xf3, 0xa4]);
        bus.write(0x20_000, b"abcd");
        set(&mut cpu, 0x1_0002_0000, 0xff_0003_0000, 0x7_0000_0004);
        run(&mut cpu, &mut bus, 1);
        assert_eq!(regs(&cpu), (0x2_0004, 0x3_0004, 0));
        assert_eq!(&bus.mem[0x30_000..0x30_004], b"abcd");
    }

    #[test]
    fn lods_and_outs_and_ins_move_data() {
        let (mut cpu, mut bus) = machine(&asm(|a| {
            a.lodsw()?;
            a.rep().outsb()?;
            a.insd()
        }));
        bus.write(0x20_000, &[0x34, 0x12, b'h', b'i']);
        cpu.state.gpr[2] = 0xe9;
        set(&mut cpu, 0x20_000, 0x21_000, 2);
        run(&mut cpu, &mut bus, 3);
        assert_eq!(cpu.state.gpr[0] & 0xffff, 0x1234);
        assert_eq!(bus.io_writes, vec![(0xe9, vec![b'h']), (0xe9, vec![b'i'])]);
        assert_eq!(bus.read_u64(0x21_000) as u32, 0xffff_ffff);
        assert_eq!(cpu.state.gpr[7], 0x21_004);
    }

    #[test]
    fn segment_override_selects_the_source() {
        // rep movsb with an FS override: the source is FS.base + RSI.
        let (mut cpu, mut bus) = machine(&[0x64, 0xf3, 0xa4]);
        cpu.state.seg[SegReg::Fs as usize].base = 0x40_000;
        bus.write(0x40_010, b"xyz");
        set(&mut cpu, 0x10, 0x20_000, 3);
        run(&mut cpu, &mut bus, 1);
        assert_eq!(&bus.mem[0x20_000..0x20_003], b"xyz");
    }
}
