//! Segment descriptors and segment-register loads: reading the GDT and LDT, the protected-mode
//! checks of `mov sreg`, `pop sreg` and `lds`/`les`/`lfs`/`lgs`/`lss` (null selectors, type,
//! DPL/RPL/CPL, presence), the accessed and busy bits, the TSS stack lookup used by privilege
//! changes, and the descriptor instructions `lldt`, `sldt`, `ltr`, `str`, `lar`, `lsl`, `verr`,
//! `verw` and `arpl`.

use iced_x86::{Instruction, Mnemonic, OpKind, Register};

use super::operand::seg_of;
use super::{Cpu, ExecResult, Flow};
use crate::bus::CpuBus;
use crate::fault::{Exception, Fault, Result};
use crate::mmu::Privilege;
use crate::state::{SegReg, Segment, rflags};

/// The error code naming `selector`: its index and table bit, the RPL bits cleared.
pub(crate) fn sel_code(selector: u16) -> u32 {
    u32::from(selector & !3)
}

/// A descriptor as read from the GDT or LDT.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Descriptor {
    /// The first eight bytes.
    pub lo: u64,
    /// The second eight bytes of a 16-byte system descriptor in long mode, else 0.
    pub hi: u64,
    /// Linear address of the descriptor, for the accessed and busy bits.
    pub addr: u64,
}

impl Descriptor {
    pub fn type_(&self) -> u8 {
        ((self.lo >> 40) & 0xf) as u8
    }
    /// Code or data (not a system descriptor).
    pub fn s(&self) -> bool {
        (self.lo >> 44) & 1 == 1
    }
    pub fn dpl(&self) -> u8 {
        ((self.lo >> 45) & 3) as u8
    }
    pub fn present(&self) -> bool {
        (self.lo >> 47) & 1 == 1
    }
    pub fn is_code(&self) -> bool {
        self.s() && self.type_() & 8 != 0
    }
    pub fn is_data(&self) -> bool {
        self.s() && self.type_() & 8 == 0
    }
    pub fn conforming(&self) -> bool {
        self.is_code() && self.type_() & 4 != 0
    }
    /// Data, or readable code.
    pub fn readable(&self) -> bool {
        self.is_data() || (self.is_code() && self.type_() & 2 != 0)
    }
    pub fn writable_data(&self) -> bool {
        self.is_data() && self.type_() & 2 != 0
    }
    /// The L bit: 64-bit code.
    pub fn long(&self) -> bool {
        (self.lo >> 53) & 1 == 1
    }
    /// The D/B bit.
    pub fn big(&self) -> bool {
        (self.lo >> 54) & 1 == 1
    }
    /// The byte-granular limit.
    pub fn limit(&self) -> u32 {
        let raw = ((self.lo & 0xffff) | ((self.lo >> 32) & 0xf_0000)) as u32;
        if (self.lo >> 55) & 1 == 1 {
            (raw << 12) | 0xfff
        } else {
            raw
        }
    }
    /// The base, with bits 63:32 from a 16-byte system descriptor.
    pub fn base(&self) -> u64 {
        ((self.lo >> 16) & 0xff_ffff)
            | ((self.lo >> 32) & 0xff00_0000)
            | ((self.hi & 0xffff_ffff) << 32)
    }
    /// The hidden part of a segment register loaded with this descriptor.
    pub fn segment(&self, selector: u16) -> Segment {
        Segment {
            selector,
            base: self.base(),
            limit: self.limit(),
            type_: self.type_(),
            s: self.s(),
            dpl: self.dpl(),
            present: self.present(),
            avl: (self.lo >> 52) & 1 == 1,
            l: self.long(),
            db: self.big(),
            g: (self.lo >> 55) & 1 == 1,
            unusable: false,
        }
    }
    /// A call gate's target selector.
    pub fn gate_selector(&self) -> u16 {
        (self.lo >> 16) as u16
    }
    /// A call gate's target offset (bits 63:32 from the second half of a 64-bit gate).
    pub fn gate_offset(&self) -> u64 {
        (self.lo & 0xffff) | ((self.lo >> 32) & 0xffff_0000) | ((self.hi & 0xffff_ffff) << 32)
    }
    /// A call gate's parameter count.
    pub fn gate_params(&self) -> u32 {
        ((self.lo >> 32) & 0x1f) as u32
    }
}

/// Reads the descriptor `selector` names; `None` when it lies outside the GDT or LDT limit or
/// names an LDT that is not loaded. `wide` reads the 16 bytes of a long-mode system descriptor.
/// The selector is not checked for null.
pub(crate) fn read_descriptor(
    cpu: &mut Cpu,
    bus: &mut dyn CpuBus,
    selector: u16,
    wide: bool,
) -> Result<Option<Descriptor>> {
    let index = u64::from(selector & !7);
    let (base, limit) = if selector & 4 != 0 {
        let ldtr = cpu.state.ldtr;
        if ldtr.unusable || ldtr.selector & !7 == 0 {
            return Ok(None);
        }
        (ldtr.base, u64::from(ldtr.limit))
    } else {
        (cpu.state.gdtr.base, u64::from(cpu.state.gdtr.limit))
    };
    let size = if wide { 16 } else { 8 };
    if index + size - 1 > limit {
        return Ok(None);
    }
    let addr = base.wrapping_add(index);
    let mut b = [0u8; 16];
    cpu.read_linear(bus, addr, &mut b[..size as usize], Privilege::System)?;
    let lo = u64::from_le_bytes(b[..8].try_into().unwrap_or_default());
    let hi = u64::from_le_bytes(b[8..].try_into().unwrap_or_default());
    Ok(Some(Descriptor { lo, hi, addr }))
}

/// Reads a descriptor that may be a system descriptor: 16 bytes in long mode when it is one.
pub(crate) fn read_any_descriptor(
    cpu: &mut Cpu,
    bus: &mut dyn CpuBus,
    selector: u16,
) -> Result<Option<Descriptor>> {
    match read_descriptor(cpu, bus, selector, false)? {
        Some(d) if !d.s() && cpu.state.long_mode() => read_descriptor(cpu, bus, selector, true),
        other => Ok(other),
    }
}

/// Sets bits of a descriptor's type byte (accessed, busy) as the CPU does when it loads it.
fn set_type_bits(cpu: &mut Cpu, bus: &mut dyn CpuBus, d: &Descriptor, bits: u8) -> Result<()> {
    let access = (d.lo >> 40) as u8;
    if access & bits == bits {
        return Ok(());
    }
    cpu.write_linear(bus, d.addr + 5, &[access | bits], Privilege::System)
}

/// Marks a code or data descriptor accessed.
pub(crate) fn set_accessed(cpu: &mut Cpu, bus: &mut dyn CpuBus, d: &Descriptor) -> Result<()> {
    set_type_bits(cpu, bus, d, 1)
}

/// The segment a null selector loads: unusable, base and limit cleared.
pub(crate) fn null_segment(selector: u16) -> Segment {
    Segment {
        selector,
        unusable: true,
        ..Default::default()
    }
}

/// A virtual-8086 segment: base = selector * 16, 64 KiB, DPL 3.
pub(crate) fn v86_segment(selector: u16, code: bool) -> Segment {
    Segment {
        dpl: 3,
        ..Segment::real_mode(selector, code)
    }
}

/// Loads `seg` (not CS) with `selector` with the checks of the current mode: real mode changes
/// only the selector and base (keeping "unreal" limits), virtual-8086 mode loads a 64 KiB DPL-3
/// segment, protected and long mode read and check the descriptor.
pub(crate) fn load_segment(
    cpu: &mut Cpu,
    bus: &mut dyn CpuBus,
    seg: SegReg,
    selector: u16,
) -> Result<()> {
    let i = seg as usize;
    if !cpu.state.protected() {
        cpu.state.seg[i].selector = selector;
        cpu.state.seg[i].base = u64::from(selector) << 4;
        return Ok(());
    }
    if cpu.state.v86() {
        cpu.state.seg[i] = v86_segment(selector, false);
        return Ok(());
    }
    let cpl = cpu.state.cpl();
    let rpl = (selector & 3) as u8;
    if selector & !3 == 0 {
        if seg == SegReg::Ss {
            // Only 64-bit code below CPL 3 may run on a null SS, and only with RPL = CPL.
            if !(cpu.state.code64() && cpl < 3 && rpl == cpl) {
                return Err(Fault::gp(0));
            }
            cpu.state.seg[i] = Segment {
                dpl: cpl,
                ..null_segment(selector)
            };
        } else {
            // Intel clears the base of a null FS or GS; AMD keeps it.
            cpu.state.seg[i] = null_segment(selector);
        }
        return Ok(());
    }
    let d = read_descriptor(cpu, bus, selector, false)?.ok_or(Fault::gp(sel_code(selector)))?;
    if seg == SegReg::Ss {
        if rpl != cpl || !d.writable_data() || d.dpl() != cpl {
            return Err(Fault::gp(sel_code(selector)));
        }
        if !d.present() {
            return Err(Fault::ss(sel_code(selector)));
        }
    } else {
        let privileged = !d.conforming() && (rpl > d.dpl() || cpl > d.dpl());
        if !d.readable() || privileged {
            return Err(Fault::gp(sel_code(selector)));
        }
        if !d.present() {
            return Err(Fault::with_code(
                Exception::SegmentNotPresent,
                sel_code(selector),
            ));
        }
    }
    set_accessed(cpu, bus, &d)?;
    cpu.state.seg[i] = d.segment(selector);
    Ok(())
}

/// Checks and unpacks the stack segment `selector` for a stack switch to `cpl` read from the
/// TSS: #TS for a bad selector, #SS when not present. `ext` is the error code's EXT bit.
pub(crate) fn tss_stack_segment(
    cpu: &mut Cpu,
    bus: &mut dyn CpuBus,
    selector: u16,
    cpl: u8,
    ext: u32,
) -> Result<Segment> {
    let ts = |code| Fault::with_code(Exception::InvalidTss, code | ext);
    if selector & !3 == 0 {
        return Err(ts(0));
    }
    let d = read_descriptor(cpu, bus, selector, false)?.ok_or(ts(sel_code(selector)))?;
    if (selector & 3) as u8 != cpl || d.dpl() != cpl || !d.writable_data() {
        return Err(ts(sel_code(selector)));
    }
    if !d.present() {
        return Err(Fault::ss(sel_code(selector) | ext));
    }
    set_accessed(cpu, bus, &d)?;
    Ok(d.segment(selector))
}

/// Reads `buf.len()` bytes at `offset` in the current TSS, with its limit check (#TS).
pub(crate) fn read_tss(
    cpu: &mut Cpu,
    bus: &mut dyn CpuBus,
    offset: u64,
    buf: &mut [u8],
    ext: u32,
) -> Result<()> {
    let tr = cpu.state.tr;
    if offset + buf.len() as u64 - 1 > u64::from(tr.limit) {
        return Err(Fault::with_code(
            Exception::InvalidTss,
            sel_code(tr.selector) | ext,
        ));
    }
    cpu.read_linear(bus, tr.base.wrapping_add(offset), buf, Privilege::System)
}

/// The stack for privilege level `cpl` from a 16- or 32-bit TSS: SS (checked) and SP.
pub(crate) fn tss_stack(
    cpu: &mut Cpu,
    bus: &mut dyn CpuBus,
    cpl: u8,
    ext: u32,
) -> Result<(Segment, u64)> {
    let n = u64::from(cpl);
    let (sp, ss) = if cpu.state.tr.type_ & 8 != 0 {
        let mut b = [0u8; 6];
        read_tss(cpu, bus, 4 + 8 * n, &mut b, ext)?;
        let sp = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        (u64::from(sp), u16::from_le_bytes([b[4], b[5]]))
    } else {
        let mut b = [0u8; 4];
        read_tss(cpu, bus, 2 + 4 * n, &mut b, ext)?;
        (
            u64::from(u16::from_le_bytes([b[0], b[1]])),
            u16::from_le_bytes([b[2], b[3]]),
        )
    };
    let ss = tss_stack_segment(cpu, bus, ss, cpl, ext)?;
    Ok((ss, sp))
}

/// RSPn (`slot` 0..=2) or ISTn (`slot` 3 + n - 1) of the 64-bit TSS.
pub(crate) fn tss64_stack(cpu: &mut Cpu, bus: &mut dyn CpuBus, slot: u64, ext: u32) -> Result<u64> {
    let mut b = [0u8; 8];
    let offset = if slot < 3 {
        4 + 8 * slot
    } else {
        0x24 + 8 * (slot - 3)
    };
    read_tss(cpu, bus, offset, &mut b, ext)?;
    Ok(u64::from_le_bytes(b))
}

pub(crate) fn execute(
    cpu: &mut Cpu,
    bus: &mut dyn CpuBus,
    insn: &Instruction,
) -> Option<ExecResult> {
    let is_sreg = |i: u32| {
        insn.op_count() > i
            && insn.op_kind(i) == OpKind::Register
            && insn.op_register(i).is_segment_register()
    };
    Some(match insn.mnemonic() {
        Mnemonic::Mov if is_sreg(0) => mov_to_sreg(cpu, bus, insn),
        Mnemonic::Mov if is_sreg(1) => {
            let sel = cpu.state.seg(seg_of(insn.op1_register())).selector;
            cpu.write_op(bus, insn, 0, u64::from(sel))
                .map(|()| Flow::Next)
                .map_err(Into::into)
        }
        Mnemonic::Push if is_sreg(0) => {
            let sel = cpu.state.seg(seg_of(insn.op0_register())).selector;
            let size = cpu.stack_op_size(insn);
            cpu.push(bus, u64::from(sel), size)
                .map(|()| Flow::Next)
                .map_err(Into::into)
        }
        Mnemonic::Pop if is_sreg(0) => pop_sreg(cpu, bus, insn),
        Mnemonic::Lds | Mnemonic::Les | Mnemonic::Lfs | Mnemonic::Lgs | Mnemonic::Lss => {
            load_far_pointer(cpu, bus, insn)
        }
        Mnemonic::Lldt | Mnemonic::Ltr => load_system_register(cpu, bus, insn),
        Mnemonic::Sldt | Mnemonic::Str => {
            let result = protected_only(cpu).and_then(|()| umip(cpu)).and_then(|()| {
                let r = if insn.mnemonic() == Mnemonic::Sldt {
                    cpu.state.ldtr.selector
                } else {
                    cpu.state.tr.selector
                };
                cpu.write_op(bus, insn, 0, u64::from(r))
            });
            result.map(|()| Flow::Next).map_err(Into::into)
        }
        Mnemonic::Lar | Mnemonic::Lsl | Mnemonic::Verr | Mnemonic::Verw => {
            inspect_descriptor(cpu, bus, insn)
        }
        Mnemonic::Arpl => arpl(cpu, bus, insn),
        _ => return None,
    })
}

/// #UD outside protected mode (real and virtual-8086 mode).
pub(crate) fn protected_only(cpu: &Cpu) -> Result<()> {
    if cpu.state.protected() && !cpu.state.v86() {
        Ok(())
    } else {
        Err(Fault::ud())
    }
}

/// CR4.UMIP: the store-descriptor instructions are #GP above CPL 0.
pub(crate) fn umip(cpu: &Cpu) -> Result<()> {
    if cpu.state.cr4 & crate::state::bits::CR4_UMIP != 0 && cpu.state.cpl() > 0 {
        Err(Fault::gp(0))
    } else {
        Ok(())
    }
}

fn mov_to_sreg(cpu: &mut Cpu, bus: &mut dyn CpuBus, insn: &Instruction) -> ExecResult {
    let seg = seg_of(insn.op0_register());
    if insn.op0_register() == Register::CS {
        return Err(Fault::ud().into());
    }
    let sel = cpu.read_op(bus, insn, 1)? as u16;
    load_segment(cpu, bus, seg, sel)?;
    if seg == SegReg::Ss {
        cpu.state.interrupt_shadow = true;
    }
    Ok(Flow::Next)
}

fn pop_sreg(cpu: &mut Cpu, bus: &mut dyn CpuBus, insn: &Instruction) -> ExecResult {
    let seg = seg_of(insn.op0_register());
    let size = cpu.stack_op_size(insn);
    let rsp = cpu.state.gpr[4];
    let sel = cpu.pop(bus, size)? as u16;
    if let Err(f) = load_segment(cpu, bus, seg, sel) {
        cpu.state.gpr[4] = rsp;
        return Err(f.into());
    }
    if seg == SegReg::Ss {
        cpu.state.interrupt_shadow = true;
    }
    Ok(Flow::Next)
}

fn load_far_pointer(cpu: &mut Cpu, bus: &mut dyn CpuBus, insn: &Instruction) -> ExecResult {
    if insn.op1_kind() != OpKind::Memory {
        return Err(Fault::ud().into());
    }
    let target = match insn.mnemonic() {
        Mnemonic::Lds => SegReg::Ds,
        Mnemonic::Les => SegReg::Es,
        Mnemonic::Lfs => SegReg::Fs,
        Mnemonic::Lgs => SegReg::Gs,
        _ => SegReg::Ss,
    };
    let reg = insn.op0_register();
    let size = reg.size() as u32;
    let (seg, off) = (cpu.mem_seg(insn), cpu.ea(insn));
    let offset = cpu.read_mem(bus, seg, off, size)?;
    let sel = cpu.read_mem(bus, seg, off.wrapping_add(u64::from(size)), 2)? as u16;
    load_segment(cpu, bus, target, sel)?;
    cpu.set_reg(reg, offset);
    Ok(Flow::Next)
}

/// `lldt` and `ltr`.
fn load_system_register(cpu: &mut Cpu, bus: &mut dyn CpuBus, insn: &Instruction) -> ExecResult {
    protected_only(cpu)?;
    if cpu.state.cpl() != 0 {
        return Err(Fault::gp(0).into());
    }
    let sel = cpu.read_op(bus, insn, 0)? as u16;
    let ldt = insn.mnemonic() == Mnemonic::Lldt;
    if sel & !3 == 0 {
        if !ldt {
            return Err(Fault::gp(0).into());
        }
        cpu.state.ldtr = null_segment(sel);
        return Ok(Flow::Next);
    }
    let bad = Fault::gp(sel_code(sel));
    if sel & 4 != 0 {
        return Err(bad.into());
    }
    let d = read_descriptor(cpu, bus, sel, cpu.state.long_mode())?.ok_or(bad)?;
    let type_ok = if ldt {
        d.type_() == 2
    } else if cpu.state.long_mode() {
        d.type_() == 9
    } else {
        matches!(d.type_(), 1 | 9)
    };
    if d.s() || !type_ok {
        return Err(bad.into());
    }
    if !d.present() {
        return Err(Fault::with_code(Exception::SegmentNotPresent, sel_code(sel)).into());
    }
    let mut seg = d.segment(sel);
    if ldt {
        cpu.state.ldtr = seg;
    } else {
        set_type_bits(cpu, bus, &d, 2)?;
        seg.type_ |= 2;
        cpu.state.tr = seg;
    }
    Ok(Flow::Next)
}

/// What `lar`/`lsl`/`verr`/`verw` see of `sel`: the descriptor if it passes the instruction's
/// type and privilege checks.
fn visible_descriptor(
    cpu: &mut Cpu,
    bus: &mut dyn CpuBus,
    sel: u16,
    m: Mnemonic,
) -> Result<Option<Descriptor>> {
    if sel & !3 == 0 {
        return Ok(None);
    }
    let Some(d) = read_descriptor(cpu, bus, sel, false)? else {
        return Ok(None);
    };
    let long = cpu.state.long_mode();
    let type_ok = if d.s() {
        match m {
            Mnemonic::Verr => d.readable(),
            Mnemonic::Verw => d.writable_data(),
            _ => true,
        }
    } else {
        match m {
            Mnemonic::Lar if long => matches!(d.type_(), 2 | 9 | 0xb | 0xc),
            Mnemonic::Lar => matches!(d.type_(), 1..=5 | 9 | 0xb | 0xc),
            Mnemonic::Lsl if long => matches!(d.type_(), 2 | 9 | 0xb),
            Mnemonic::Lsl => matches!(d.type_(), 1..=3 | 9 | 0xb),
            _ => false,
        }
    };
    let (cpl, rpl) = (cpu.state.cpl(), (sel & 3) as u8);
    let privilege_ok = d.conforming() || (d.dpl() >= cpl && d.dpl() >= rpl);
    Ok((type_ok && privilege_ok).then_some(d))
}

fn inspect_descriptor(cpu: &mut Cpu, bus: &mut dyn CpuBus, insn: &Instruction) -> ExecResult {
    protected_only(cpu)?;
    let m = insn.mnemonic();
    let src = if matches!(m, Mnemonic::Verr | Mnemonic::Verw) {
        0
    } else {
        1
    };
    let sel = cpu.read_op(bus, insn, src)? as u16;
    let d = visible_descriptor(cpu, bus, sel, m)?;
    if let Some(d) = d {
        match m {
            Mnemonic::Lar => cpu.set_reg(insn.op0_register(), (d.lo >> 32) & 0x00f0_ff00),
            Mnemonic::Lsl => cpu.set_reg(insn.op0_register(), u64::from(d.limit())),
            _ => {}
        }
    }
    set_zf(cpu, d.is_some());
    Ok(Flow::Next)
}

fn arpl(cpu: &mut Cpu, bus: &mut dyn CpuBus, insn: &Instruction) -> ExecResult {
    protected_only(cpu)?;
    let dst = cpu.read_op(bus, insn, 0)?;
    let src = cpu.read_op(bus, insn, 1)?;
    let adjust = dst & 3 < src & 3;
    if adjust {
        cpu.write_op(bus, insn, 0, (dst & !3) | (src & 3))?;
    }
    set_zf(cpu, adjust);
    Ok(Flow::Next)
}

fn set_zf(cpu: &mut Cpu, on: bool) {
    if on {
        cpu.state.rflags |= rflags::ZF;
    } else {
        cpu.state.rflags &= !rflags::ZF;
    }
}

#[cfg(test)]
mod tests {
    use iced_x86::code_asm::*;

    use crate::exec::system::fixtures::*;
    use crate::state::{SegReg, rflags};
    use crate::testing::FlatBus;

    fn error_code(cpu: &crate::Cpu, bus: &FlatBus) -> u32 {
        bus.read_u64(cpu.state.gpr[4]) as u32
    }

    /// 32-bit protected mode with #GP, #NP and #SS handlers at 0x12000, 0x13000, 0x14000.
    fn machine() -> (crate::Cpu, FlatBus) {
        let mut bus = FlatBus::new(0x20_0000);
        let cpu = protected32(&mut bus);
        gate32(&mut bus, 13, KCODE32, 0x12000, 0xe, 0);
        gate32(&mut bus, 11, KCODE32, 0x13000, 0xe, 0);
        gate32(&mut bus, 12, KCODE32, 0x14000, 0xe, 0);
        (cpu, bus)
    }

    #[test]
    fn bad_segment_loads_raise_gp_or_np_with_the_selector() {
        for (sel, handler, code_) in [
            (0x80, 0x12000, 0x80),                 // beyond the GDT limit
            (TSS_SEL, 0x12000, TSS_SEL),           // a system descriptor
            (FREE, 0x13000, FREE),                 // not present
            (UCODE32 & !3, 0x12000, UCODE32 & !3), // execute-only code
        ] {
            let (mut cpu, mut bus) = machine();
            // FREE: a data segment marked not present; UCODE32 made execute-only.
            bus.write_u64(GDT + u64::from(FREE), desc(0, 0xfffff, 0x13, 0xc));
            bus.write_u64(GDT + u64::from(UCODE32 & !3), desc(0, 0xfffff, 0xf9, 0xc));
            code(&mut bus, 32, 0x10000, |a| {
                a.mov(ax, u32::from(sel))?;
                a.mov(es, ax)
            });
            steps(&mut cpu, &mut bus, 2);
            assert_eq!(cpu.state.rip, handler, "selector {sel:#x}");
            assert_eq!(error_code(&cpu, &bus), u32::from(code_));
            assert_eq!(cpu.state.seg(SegReg::Es).selector, KDATA, "ES unchanged");
        }
    }

    #[test]
    fn user_code_may_not_load_kernel_data_or_a_foreign_stack() {
        let (mut cpu, mut bus) = machine();
        cpu.state.seg[SegReg::Cs as usize] = seg(&bus, UCODE32);
        cpu.state.seg[SegReg::Ss as usize] = seg(&bus, UDATA);
        cpu.state.gpr[4] = 0x20000;
        code(&mut bus, 32, 0x10000, |a| {
            a.mov(ax, u32::from(KDATA))?;
            a.mov(ds, ax)
        });
        steps(&mut cpu, &mut bus, 2);
        assert_eq!(
            (cpu.state.rip, error_code(&cpu, &bus)),
            (0x12000, u32::from(KDATA))
        );
        // SS: a null selector is #GP(0) outside 64-bit mode.
        let (mut cpu, mut bus) = machine();
        code(&mut bus, 32, 0x10000, |a| {
            a.xor(eax, eax)?;
            a.mov(ss, ax)
        });
        steps(&mut cpu, &mut bus, 2);
        assert_eq!((cpu.state.rip, error_code(&cpu, &bus)), (0x12000, 0));
    }

    #[test]
    fn mov_ss_holds_interrupts_for_one_instruction_and_marks_the_descriptor_accessed() {
        let (mut cpu, mut bus) = machine();
        cpu.state.rflags |= rflags::IF;
        code(&mut bus, 32, 0x10000, |a| {
            a.mov(ax, u32::from(KDATA))?;
            a.mov(ss, ax)?;
            a.mov(esp, 0x7000)?;
            a.nop()
        });
        steps(&mut cpu, &mut bus, 2);
        assert!(!cpu.interrupts_enabled(), "shadow after mov ss");
        assert_ne!(
            bus.read_u64(GDT + u64::from(KDATA)) & (1 << 40),
            0,
            "accessed"
        );
        steps(&mut cpu, &mut bus, 1);
        assert!(cpu.interrupts_enabled());
    }

    #[test]
    fn null_data_selectors_load_as_unusable_and_pop_restores_on_fault() {
        let (mut cpu, mut bus) = machine();
        code(&mut bus, 32, 0x10000, |a| {
            a.push(0)?;
            a.pop(fs)?;
            a.push(0x80)?;
            a.pop(gs)
        });
        steps(&mut cpu, &mut bus, 2);
        let fs_ = *cpu.state.seg(SegReg::Fs);
        assert!(fs_.unusable && fs_.selector == 0);
        steps(&mut cpu, &mut bus, 2);
        assert_eq!(cpu.state.rip, 0x12000);
        // The #GP frame (error code, EIP, CS, EFLAGS) sits right below the 0x80 the failed pop
        // left in place.
        let top = cpu.state.gpr[4];
        assert_eq!(top, 0x8000 - 4 - 16);
        assert_eq!(bus.read_u64(top + 4) as u32, 0x10009, "EIP of pop gs");
        assert_eq!(bus.read_u64(top + 8) as u16, KCODE32);
        assert_eq!(bus.read_u64(0x8000 - 4) as u32, 0x80);
    }

    #[test]
    fn real_mode_loads_change_only_selector_and_base() {
        let mut bus = FlatBus::new(0x20_0000);
        let mut cpu = real_mode();
        cpu.state.seg[SegReg::Ds as usize].limit = 0xffff_ffff;
        bus.write(0x600, &[0x34, 0x12, 0x00, 0x20]);
        code(&mut bus, 16, 0x7c00, |a| {
            a.mov(ax, 0x1000)?;
            a.mov(ds, ax)
        });
        steps(&mut cpu, &mut bus, 2);
        let ds_ = *cpu.state.seg(SegReg::Ds);
        assert_eq!(
            (ds_.selector, ds_.base, ds_.limit),
            (0x1000, 0x10000, 0xffff_ffff)
        );
        let mut cpu = real_mode();
        code(&mut bus, 16, 0x7c00, |a| a.les(bx, ptr(0x600)));
        steps(&mut cpu, &mut bus, 1);
        assert_eq!(cpu.state.gpr[3] & 0xffff, 0x1234);
        assert_eq!(cpu.state.seg(SegReg::Es).base, 0x20000);
    }

    #[test]
    fn ltr_marks_the_tss_busy_and_lar_lsl_verw_inspect_descriptors() {
        let (mut cpu, mut bus) = machine();
        code(&mut bus, 32, 0x10000, |a| {
            a.mov(ax, u32::from(TSS_SEL))?;
            a.ltr(ax)?;
            a.str(ecx)?;
            a.mov(bx, u32::from(UCODE32))?;
            a.lar(edx, ebx)?;
            a.lsl(esi, ebx)?;
            a.verw(bx)
        });
        steps(&mut cpu, &mut bus, 7);
        let s = &cpu.state;
        assert_eq!(s.tr.type_, 0xb);
        assert_eq!(
            (bus.read_u64(GDT + u64::from(TSS_SEL)) >> 40) & 0xf,
            0xb,
            "busy in the GDT"
        );
        assert_eq!(s.gpr[1], u64::from(TSS_SEL));
        assert_eq!(
            s.gpr[2], 0x00c0_fb00,
            "flags and access byte, limit bits cleared"
        );
        assert_eq!(s.gpr[6], 0xffff_ffff);
        assert_eq!(s.rflags & rflags::ZF, 0, "code is not writable");
        // A busy TSS cannot be loaded again.
        let mut cpu = protected32(&mut bus);
        bus.write_u64(GDT + u64::from(TSS_SEL), desc(TSS as u32, 0x67, 0x8b, 0));
        gate32(&mut bus, 13, KCODE32, 0x12000, 0xe, 0);
        steps(&mut cpu, &mut bus, 2);
        assert_eq!(cpu.state.rip, 0x12000);
    }
}
