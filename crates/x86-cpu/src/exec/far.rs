//! Far control transfers and the flags instructions with privilege rules: `jmp far` and
//! `call far` (to code segments and through call gates, with the stack switch through the TSS),
//! `retf`, `iret` in every mode (real, virtual-8086, protected, long), `pushf`/`popf`, `int1`
//! and `into`.
//!
//! Task switches (task gates, TSS selectors, `iret` with NT set outside long mode) are refused
//! with `Stop::Unimplemented`: no guest we run uses hardware task switching.

use iced_x86::{Code, Instruction, MemorySize, Mnemonic, OpKind};

use super::segment::{
    Descriptor, null_segment, read_any_descriptor, read_descriptor, sel_code, set_accessed,
    tss_stack, tss64_stack, v86_segment,
};
use super::{Cpu, ExecResult, Flow, Stop};
use crate::bus::CpuBus;
use crate::fault::{Exception, Fault, Result};
use crate::flags::mask;
use crate::interrupt::{self, EventKind};
use crate::state::rflags::{
    AC, AF, CF, DF, FIXED, ID, IF, IOPL, NT, OF, PF, RF, SF, TF, VIF, VIP, VM, ZF,
};
use crate::state::{SegReg, Segment};

/// Every defined RFLAGS bit.
const DEFINED: u64 = 0x3f_7fd5;

/// A 64-bit address is canonical (48-bit linear addresses).
pub(crate) fn canonical(addr: u64) -> bool {
    ((addr as i64) << 16 >> 16) as u64 == addr
}

pub(crate) fn execute(
    cpu: &mut Cpu,
    bus: &mut dyn CpuBus,
    insn: &Instruction,
) -> Option<ExecResult> {
    Some(match insn.mnemonic() {
        Mnemonic::Jmp | Mnemonic::Call if is_far(insn) => far_jmp_call(cpu, bus, insn),
        Mnemonic::Retf => retf(cpu, bus, insn),
        Mnemonic::Iret | Mnemonic::Iretd | Mnemonic::Iretq => iret(cpu, bus, insn),
        Mnemonic::Pushf | Mnemonic::Pushfd | Mnemonic::Pushfq => pushf(cpu, bus, insn),
        Mnemonic::Popf | Mnemonic::Popfd | Mnemonic::Popfq => popf(cpu, bus, insn),
        Mnemonic::Int1 => interrupt::deliver(
            cpu,
            bus,
            Exception::Debug as u8,
            None,
            EventKind::Icebp,
            insn.next_ip(),
        )
        .map(|()| Flow::Jump),
        Mnemonic::Into => {
            if cpu.state.rflags & OF == 0 {
                Ok(Flow::Next)
            } else {
                interrupt::deliver(
                    cpu,
                    bus,
                    Exception::Overflow as u8,
                    None,
                    EventKind::SoftwareException,
                    insn.next_ip(),
                )
                .map(|()| Flow::Jump)
            }
        }
        _ => return None,
    })
}

/// A far jump or call: an immediate pointer or a pointer in memory.
fn is_far(insn: &Instruction) -> bool {
    matches!(insn.op0_kind(), OpKind::FarBranch16 | OpKind::FarBranch32)
        || (insn.op0_kind() == OpKind::Memory
            && matches!(
                insn.memory_size(),
                MemorySize::SegPtr16 | MemorySize::SegPtr32 | MemorySize::SegPtr64
            ))
}

/// What a far transfer may change, restored when it faults halfway.
struct Saved {
    seg: [Segment; 6],
    rsp: u64,
    rflags: u64,
}

/// Runs `f`, undoing its changes to the segments, RSP and RFLAGS if it fails.
fn guarded(cpu: &mut Cpu, f: impl FnOnce(&mut Cpu) -> ExecResult) -> ExecResult {
    let saved = Saved {
        seg: cpu.state.seg,
        rsp: cpu.state.gpr[4],
        rflags: cpu.state.rflags,
    };
    let result = f(cpu);
    if result.is_err() {
        cpu.state.seg = saved.seg;
        cpu.state.gpr[4] = saved.rsp;
        cpu.state.rflags = saved.rflags;
    }
    result
}

fn not_present(selector: u16) -> Fault {
    Fault::with_code(Exception::SegmentNotPresent, sel_code(selector))
}

/// Loads CS from `d` for code running at `cpl`. The cached DPL holds the CPL (they differ for
/// conforming code), which is where `CpuState::cpl` reads it.
fn load_cs(
    cpu: &mut Cpu,
    bus: &mut dyn CpuBus,
    d: &Descriptor,
    selector: u16,
    cpl: u8,
) -> Result<()> {
    set_accessed(cpu, bus, d)?;
    let mut cs = d.segment((selector & !3) | u16::from(cpl));
    cs.dpl = cpl;
    cpu.state.seg[SegReg::Cs as usize] = cs;
    Ok(())
}

/// In long mode a code segment may not have both L and D set.
fn check_code_bits(cpu: &Cpu, d: &Descriptor, selector: u16) -> Result<()> {
    if cpu.state.long_mode() && d.long() && d.big() {
        return Err(Fault::gp(sel_code(selector)));
    }
    Ok(())
}

/// The target offset must be canonical (64-bit code) or within the segment limit.
fn check_offset(cpu: &Cpu, d: &Descriptor, offset: u64) -> Result<()> {
    let ok = if cpu.state.long_mode() && d.long() {
        canonical(offset)
    } else {
        offset <= u64::from(d.limit())
    };
    if ok { Ok(()) } else { Err(Fault::gp(0)) }
}

/// Adds `n` to the stack pointer at the current stack size.
fn release(cpu: &mut Cpu, n: u64) {
    let m = mask(cpu.state.stack_bits() / 8);
    let rsp = cpu.state.gpr[4];
    cpu.state.gpr[4] = (rsp & !m) | (rsp.wrapping_add(n) & m);
}

/// Loads CS in real mode (selector and base only) or virtual-8086 mode.
fn load_cs_real(cpu: &mut Cpu, selector: u16) {
    if cpu.state.v86() {
        cpu.state.seg[SegReg::Cs as usize] = v86_segment(selector, true);
    } else {
        let cs = &mut cpu.state.seg[SegReg::Cs as usize];
        cs.selector = selector;
        cs.base = u64::from(selector) << 4;
    }
}

/// The selector, offset and operand size of a far jump or call.
fn far_pointer(cpu: &mut Cpu, bus: &mut dyn CpuBus, insn: &Instruction) -> Result<(u16, u64, u32)> {
    match insn.op0_kind() {
        OpKind::FarBranch16 => Ok((
            insn.far_branch_selector(),
            u64::from(insn.far_branch16()),
            2,
        )),
        OpKind::FarBranch32 => Ok((
            insn.far_branch_selector(),
            u64::from(insn.far_branch32()),
            4,
        )),
        _ => {
            let size = match insn.memory_size() {
                MemorySize::SegPtr16 => 2,
                MemorySize::SegPtr32 => 4,
                _ => 8,
            };
            let (seg, off) = (cpu.mem_seg(insn), cpu.ea(insn));
            let offset = cpu.read_mem(bus, seg, off, size)?;
            let sel = cpu.read_mem(bus, seg, off.wrapping_add(u64::from(size)), 2)? as u16;
            Ok((sel, offset, size))
        }
    }
}

fn far_jmp_call(cpu: &mut Cpu, bus: &mut dyn CpuBus, insn: &Instruction) -> ExecResult {
    let call = insn.mnemonic() == Mnemonic::Call;
    let (sel, offset, size) = far_pointer(cpu, bus, insn)?;
    let ret = insn.next_ip();
    guarded(cpu, |cpu| {
        if !cpu.state.protected() || cpu.state.v86() {
            if call {
                let cs = cpu.state.seg(SegReg::Cs).selector;
                cpu.push(bus, u64::from(cs), size)?;
                cpu.push(bus, ret, size)?;
            }
            load_cs_real(cpu, sel);
            cpu.state.rip = offset & mask(size);
            return Ok(Flow::Jump);
        }
        protected_far(cpu, bus, sel, offset, size, call, ret)
    })
}

fn protected_far(
    cpu: &mut Cpu,
    bus: &mut dyn CpuBus,
    sel: u16,
    offset: u64,
    size: u32,
    call: bool,
    ret: u64,
) -> ExecResult {
    if sel & !3 == 0 {
        return Err(Fault::gp(0).into());
    }
    let bad = Fault::gp(sel_code(sel));
    let d = read_any_descriptor(cpu, bus, sel)?.ok_or(bad)?;
    let (cpl, rpl) = (cpu.state.cpl(), (sel & 3) as u8);
    if d.is_code() {
        let allowed = if d.conforming() {
            d.dpl() <= cpl
        } else {
            rpl <= cpl && d.dpl() == cpl
        };
        if !allowed {
            return Err(bad.into());
        }
        if !d.present() {
            return Err(not_present(sel).into());
        }
        check_code_bits(cpu, &d, sel)?;
        check_offset(cpu, &d, offset)?;
        if call {
            let cs = cpu.state.seg(SegReg::Cs).selector;
            cpu.push(bus, u64::from(cs), size)?;
            cpu.push(bus, ret, size)?;
        }
        load_cs(cpu, bus, &d, sel, cpl)?;
        cpu.state.rip = offset;
        return Ok(Flow::Jump);
    }
    if d.s() {
        return Err(bad.into());
    }
    match (cpu.state.long_mode(), d.type_()) {
        (false, 4 | 0xc) | (true, 0xc) => call_gate(cpu, bus, &d, sel, call, ret),
        // A task gate or a TSS: a task switch.
        (false, 1 | 5 | 9) => Err(Stop::Unimplemented),
        _ => Err(bad.into()),
    }
}

fn call_gate(
    cpu: &mut Cpu,
    bus: &mut dyn CpuBus,
    gate: &Descriptor,
    gate_sel: u16,
    call: bool,
    ret: u64,
) -> ExecResult {
    let cpl = cpu.state.cpl();
    if gate.dpl() < cpl || gate.dpl() < (gate_sel & 3) as u8 {
        return Err(Fault::gp(sel_code(gate_sel)).into());
    }
    if !gate.present() {
        return Err(not_present(gate_sel).into());
    }
    let sel = gate.gate_selector();
    if sel & !3 == 0 {
        return Err(Fault::gp(0).into());
    }
    let bad = Fault::gp(sel_code(sel));
    let d = read_descriptor(cpu, bus, sel, false)?.ok_or(bad)?;
    if !d.is_code() || d.dpl() > cpl || (!call && !d.conforming() && d.dpl() != cpl) {
        return Err(bad.into());
    }
    if !d.present() {
        return Err(not_present(sel).into());
    }
    let long = cpu.state.long_mode();
    if long && (!d.long() || d.big()) {
        return Err(bad.into());
    }
    let (size, offset) = match gate.type_() {
        4 => (2, gate.gate_offset() & 0xffff),
        _ if long => (8, gate.gate_offset()),
        _ => (4, gate.gate_offset() & 0xffff_ffff),
    };
    check_offset(cpu, &d, offset)?;
    let old_cs = u64::from(cpu.state.seg(SegReg::Cs).selector);
    if call && !d.conforming() && d.dpl() < cpl {
        let new_cpl = d.dpl();
        let old_ss = u64::from(cpu.state.seg(SegReg::Ss).selector);
        let old_sp = cpu.state.gpr[4];
        // Parameters are copied from the caller's stack (not through 64-bit gates).
        let count = if long { 0 } else { gate.gate_params() as usize };
        let mut params = [0u64; 32];
        let sp_mask = mask(cpu.state.stack_bits() / 8);
        for (i, p) in params.iter_mut().enumerate().take(count) {
            let at = old_sp.wrapping_add((i as u64) * u64::from(size)) & sp_mask;
            *p = cpu.read_mem(bus, SegReg::Ss, at, size)?;
        }
        if long {
            let rsp = tss64_stack(cpu, bus, u64::from(new_cpl), 0)?;
            cpu.state.seg[SegReg::Ss as usize] = Segment {
                dpl: new_cpl,
                ..null_segment(u16::from(new_cpl))
            };
            cpu.state.gpr[4] = rsp;
        } else {
            let (ss, sp) = tss_stack(cpu, bus, new_cpl, 0)?;
            cpu.state.seg[SegReg::Ss as usize] = ss;
            cpu.state.gpr[4] = sp;
        }
        load_cs(cpu, bus, &d, sel, new_cpl)?;
        cpu.push(bus, old_ss, size)?;
        cpu.push(bus, old_sp, size)?;
        for p in params[..count].iter().rev() {
            cpu.push(bus, *p, size)?;
        }
        cpu.push(bus, old_cs, size)?;
        cpu.push(bus, ret, size)?;
    } else {
        // CS first: a 64-bit gate from compatibility mode pushes on a 64-bit stack.
        load_cs(cpu, bus, &d, sel, cpl)?;
        if call {
            cpu.push(bus, old_cs, size)?;
            cpu.push(bus, ret, size)?;
        }
    }
    cpu.state.rip = offset;
    Ok(Flow::Jump)
}

/// The stack segment a return to outer privilege `rpl` pops: null only for 64-bit code below
/// CPL 3.
fn outer_stack_segment(
    cpu: &mut Cpu,
    bus: &mut dyn CpuBus,
    selector: u16,
    rpl: u8,
    target64: bool,
) -> Result<Segment> {
    if selector & !3 == 0 {
        if target64 && rpl < 3 {
            return Ok(Segment {
                dpl: rpl,
                ..null_segment(selector)
            });
        }
        return Err(Fault::gp(0));
    }
    let bad = Fault::gp(sel_code(selector));
    let d = read_descriptor(cpu, bus, selector, false)?.ok_or(bad)?;
    if (selector & 3) as u8 != rpl || !d.writable_data() || d.dpl() != rpl {
        return Err(bad);
    }
    if !d.present() {
        return Err(Fault::ss(sel_code(selector)));
    }
    set_accessed(cpu, bus, &d)?;
    Ok(d.segment(selector))
}

/// After a return to outer privilege `cpl`, data segment registers the new CPL may not use are
/// nulled (the FS and GS bases are kept: in 64-bit mode they come from MSRs).
fn null_inaccessible_segments(cpu: &mut Cpu, cpl: u8) {
    for s in [SegReg::Es, SegReg::Ds, SegReg::Fs, SegReg::Gs] {
        let seg = &mut cpu.state.seg[s as usize];
        let data_or_nonconforming = seg.s && (seg.type_ & 8 == 0 || seg.type_ & 4 == 0);
        if !seg.unusable && data_or_nonconforming && seg.dpl < cpl {
            seg.selector = 0;
            seg.unusable = true;
        }
    }
}

/// Checks the code segment a `retf` or `iret` returns to.
fn return_code_segment(cpu: &mut Cpu, bus: &mut dyn CpuBus, sel: u16) -> Result<Descriptor> {
    if sel & !3 == 0 {
        return Err(Fault::gp(0));
    }
    let bad = Fault::gp(sel_code(sel));
    let d = read_descriptor(cpu, bus, sel, false)?.ok_or(bad)?;
    let (cpl, rpl) = (cpu.state.cpl(), (sel & 3) as u8);
    let dpl_ok = if d.conforming() {
        d.dpl() <= rpl
    } else {
        d.dpl() == rpl
    };
    if !d.is_code() || rpl < cpl || !dpl_ok {
        return Err(bad);
    }
    if !d.present() {
        return Err(not_present(sel));
    }
    check_code_bits(cpu, &d, sel)?;
    Ok(d)
}

fn retf(cpu: &mut Cpu, bus: &mut dyn CpuBus, insn: &Instruction) -> ExecResult {
    let size = match insn.code() {
        Code::Retfw | Code::Retfw_imm16 => 2,
        Code::Retfq | Code::Retfq_imm16 => 8,
        _ => 4,
    };
    let imm = if insn.op_count() == 1 {
        u64::from(insn.immediate16())
    } else {
        0
    };
    guarded(cpu, |cpu| {
        let ip = cpu.pop(bus, size)?;
        let sel = cpu.pop(bus, size)? as u16;
        if !cpu.state.protected() || cpu.state.v86() {
            load_cs_real(cpu, sel);
            release(cpu, imm);
            cpu.state.rip = ip;
            return Ok(Flow::Jump);
        }
        let d = return_code_segment(cpu, bus, sel)?;
        check_offset(cpu, &d, ip)?;
        let (cpl, rpl) = (cpu.state.cpl(), (sel & 3) as u8);
        release(cpu, imm);
        if rpl == cpl {
            load_cs(cpu, bus, &d, sel, cpl)?;
        } else {
            let sp = cpu.pop(bus, size)?;
            let ss_sel = cpu.pop(bus, size)? as u16;
            let target64 = cpu.state.long_mode() && d.long();
            let ss = outer_stack_segment(cpu, bus, ss_sel, rpl, target64)?;
            load_cs(cpu, bus, &d, sel, rpl)?;
            cpu.state.seg[SegReg::Ss as usize] = ss;
            cpu.state.gpr[4] = sp;
            release(cpu, imm);
            null_inaccessible_segments(cpu, rpl);
        }
        cpu.state.rip = ip;
        Ok(Flow::Jump)
    })
}

fn iret(cpu: &mut Cpu, bus: &mut dyn CpuBus, insn: &Instruction) -> ExecResult {
    let size = match insn.code() {
        Code::Iretw => 2,
        Code::Iretq => 8,
        _ => 4,
    };
    let flow = guarded(cpu, |cpu| {
        if !cpu.state.protected() {
            return iret_real(cpu, bus, size);
        }
        if cpu.state.v86() {
            return iret_v86(cpu, bus, size);
        }
        if cpu.state.rflags & NT != 0 {
            // A return from a nested task (a task switch); long mode has no tasks.
            return if cpu.state.long_mode() {
                Err(Fault::gp(0).into())
            } else {
                Err(Stop::Unimplemented)
            };
        }
        let ip = cpu.pop(bus, size)?;
        let sel = cpu.pop(bus, size)? as u16;
        let flags = cpu.pop(bus, size)?;
        // 64-bit mode always pops SS:RSP.
        let stack = if cpu.state.code64() {
            let sp = cpu.pop(bus, size)?;
            Some((sp, cpu.pop(bus, size)? as u16))
        } else {
            None
        };
        if !cpu.state.long_mode() && size == 4 && flags & VM != 0 && cpu.state.cpl() == 0 {
            return iret_to_v86(cpu, bus, ip, sel, flags);
        }
        protected_return(cpu, bus, ip, sel, flags, stack, size)
    })?;
    // IRET ends NMI blocking; an NMI that arrived meanwhile is taken at once.
    cpu.state.nmi_blocked = false;
    if cpu.state.nmi_pending {
        cpu.state.nmi_pending = false;
        cpu.state.nmi_blocked = true;
        let rip = cpu.state.rip;
        interrupt::deliver(
            cpu,
            bus,
            Exception::Nmi as u8,
            None,
            EventKind::External,
            rip,
        )?;
    }
    Ok(flow)
}

fn iret_real(cpu: &mut Cpu, bus: &mut dyn CpuBus, size: u32) -> ExecResult {
    let ip = cpu.pop(bus, size)?;
    let sel = cpu.pop(bus, size)? as u16;
    let flags = cpu.pop(bus, size)?;
    load_cs_real(cpu, sel);
    // VM, VIF and VIP do not change in real mode.
    let modifiable = if size == 2 { 0x7fd5 } else { 0x25_7fd5 };
    cpu.state.rflags = (cpu.state.rflags & !modifiable) | (flags & modifiable) | FIXED;
    cpu.state.rip = ip;
    Ok(Flow::Jump)
}

fn iret_v86(cpu: &mut Cpu, bus: &mut dyn CpuBus, size: u32) -> ExecResult {
    if cpu.state.rflags & IOPL != IOPL {
        return Err(Fault::gp(0).into());
    }
    let ip = cpu.pop(bus, size)?;
    let sel = cpu.pop(bus, size)? as u16;
    let flags = cpu.pop(bus, size)?;
    load_cs_real(cpu, sel);
    let modifiable = if size == 2 { 0x7fd5 } else { 0x25_7fd5 } & !IOPL;
    cpu.state.rflags = (cpu.state.rflags & !modifiable) | (flags & modifiable) | FIXED;
    cpu.state.rip = ip & 0xffff;
    Ok(Flow::Jump)
}

/// IRET at CPL 0 with VM set in the popped EFLAGS: the rest of the frame holds ESP, SS, ES,
/// DS, FS and GS.
fn iret_to_v86(cpu: &mut Cpu, bus: &mut dyn CpuBus, ip: u64, cs: u16, flags: u64) -> ExecResult {
    let mut v = [0u16; 5];
    let sp = cpu.pop(bus, 4)?;
    for s in &mut v {
        *s = cpu.pop(bus, 4)? as u16;
    }
    let [ss, es, ds, fs, gs] = v;
    cpu.state.rflags = (flags & DEFINED) | FIXED;
    cpu.state.seg[SegReg::Cs as usize] = v86_segment(cs, true);
    for (s, sel) in [
        (SegReg::Ss, ss),
        (SegReg::Es, es),
        (SegReg::Ds, ds),
        (SegReg::Fs, fs),
        (SegReg::Gs, gs),
    ] {
        cpu.state.seg[s as usize] = v86_segment(sel, false);
    }
    cpu.state.gpr[4] = sp & 0xffff_ffff;
    cpu.state.rip = ip & 0xffff;
    Ok(Flow::Jump)
}

/// The RFLAGS an `iret` at `cpl` loads: IOPL, VIF and VIP only at CPL 0, IF only when
/// CPL <= IOPL, VM never (returns to virtual-8086 mode take another path).
fn iret_flags(old: u64, popped: u64, size: u32, cpl: u8) -> u64 {
    let iopl = (old & IOPL) >> 12;
    let mut m = CF | PF | AF | ZF | SF | TF | DF | OF | NT | RF | AC | ID;
    if cpl == 0 {
        m |= IOPL | VIF | VIP;
    }
    if u64::from(cpl) <= iopl {
        m |= IF;
    }
    if size == 2 {
        m &= 0xffff;
    }
    (old & !m) | (popped & m) | FIXED
}

fn protected_return(
    cpu: &mut Cpu,
    bus: &mut dyn CpuBus,
    ip: u64,
    sel: u16,
    flags: u64,
    stack: Option<(u64, u16)>,
    size: u32,
) -> ExecResult {
    let d = return_code_segment(cpu, bus, sel)?;
    check_offset(cpu, &d, ip)?;
    let (cpl, rpl) = (cpu.state.cpl(), (sel & 3) as u8);
    let new_flags = iret_flags(cpu.state.rflags, flags, size, cpl);
    let outer = rpl > cpl;
    let stack = match stack {
        None if outer => {
            let sp = cpu.pop(bus, size)?;
            Some((sp, cpu.pop(bus, size)? as u16))
        }
        s => s,
    };
    if let Some((sp, ss_sel)) = stack {
        let target64 = cpu.state.long_mode() && d.long();
        let ss = outer_stack_segment(cpu, bus, ss_sel, rpl, target64)?;
        load_cs(cpu, bus, &d, sel, rpl)?;
        cpu.state.seg[SegReg::Ss as usize] = ss;
        cpu.state.gpr[4] = sp;
    } else {
        load_cs(cpu, bus, &d, sel, rpl)?;
    }
    cpu.state.rflags = new_flags;
    if outer {
        null_inaccessible_segments(cpu, rpl);
    }
    cpu.state.rip = ip;
    Ok(Flow::Jump)
}

fn flags_size(insn: &Instruction) -> u32 {
    match insn.code() {
        Code::Pushfw | Code::Popfw => 2,
        Code::Pushfq | Code::Popfq => 8,
        _ => 4,
    }
}

/// Virtual-8086 mode without VME: PUSHF, POPF (and INT n, IRET) need IOPL 3.
fn v86_iopl_check(cpu: &Cpu) -> Result<()> {
    if cpu.state.v86() && cpu.state.rflags & IOPL != IOPL {
        Err(Fault::gp(0))
    } else {
        Ok(())
    }
}

fn pushf(cpu: &mut Cpu, bus: &mut dyn CpuBus, insn: &Instruction) -> ExecResult {
    v86_iopl_check(cpu)?;
    let image = cpu.state.rflags & !(VM | RF);
    cpu.push(bus, image, flags_size(insn))?;
    Ok(Flow::Next)
}

fn popf(cpu: &mut Cpu, bus: &mut dyn CpuBus, insn: &Instruction) -> ExecResult {
    v86_iopl_check(cpu)?;
    let size = flags_size(insn);
    let iopl = (cpu.state.rflags & IOPL) >> 12;
    let cpl = cpu.state.cpl();
    let mut m = DEFINED & !(VM | VIP | VIF | RF);
    if cpu.state.v86() {
        m &= !IOPL;
    } else if cpl > 0 {
        m &= !IOPL;
        if u64::from(cpl) > iopl {
            m &= !IF;
        }
    }
    if size == 2 {
        m &= 0xffff;
    }
    let v = cpu.pop(bus, size)?;
    cpu.state.rflags = ((cpu.state.rflags & !m) | (v & m) | FIXED) & !RF;
    Ok(Flow::Next)
}

#[cfg(test)]
mod tests;
