//! Delivery of exceptions and interrupts through the IVT (real mode) or the IDT (protected and
//! long mode): gate checks, the stack switch through the TSS (and the IST in long mode), error
//! codes, and the escalation of a fault during delivery to a double fault, then a triple fault.

use crate::bus::CpuBus;
use crate::exec::{Cpu, Stop};
use crate::fault::{Exception, Fault};
use crate::mmu::Privilege;
use crate::state::{SegReg, Segment, rflags};

/// What is being delivered: it decides privilege checks and the return address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EventKind {
    /// An exception raised by an instruction: returns to the faulting instruction.
    Fault,
    /// `int3` or `into`: checks the gate's DPL, returns after the instruction.
    SoftwareException,
    /// `int n`: checks the gate's DPL, returns after the instruction.
    SoftwareInterrupt,
    /// An external interrupt: no DPL check, returns to the interrupted instruction.
    External,
}

/// Exceptions that push an error code.
fn has_error_code(vector: u8) -> bool {
    matches!(vector, 8 | 10 | 11 | 12 | 13 | 14 | 17 | 21 | 29 | 30)
}

/// Contributory exceptions, for the double-fault rules.
fn contributory(v: u8) -> bool {
    matches!(v, 0 | 10 | 11 | 12 | 13)
}

/// Delivers an exception raised by an instruction at the current RIP, escalating faults during
/// delivery: contributory + contributory or page fault + (page fault or contributory) becomes a
/// double fault, and a fault while delivering a double fault shuts the CPU down.
pub(crate) fn deliver_exception(
    cpu: &mut Cpu,
    bus: &mut dyn CpuBus,
    fault: Fault,
) -> Result<(), Stop> {
    let mut current = fault;
    loop {
        if current.exception == Exception::PageFault
            && let Some(addr) = current.address
        {
            cpu.state.cr2 = addr;
        }
        let vector = current.exception as u8;
        let rip = cpu.state.rip;
        match deliver(cpu, bus, vector, current.error_code, EventKind::Fault, rip) {
            Ok(()) => return Ok(()),
            Err(Stop::Fault(second)) => {
                if vector == Exception::DoubleFault as u8 {
                    return Err(Stop::Shutdown);
                }
                let first = vector;
                let next = second.exception as u8;
                let double = (contributory(first) && contributory(next))
                    || (first == 14 && (next == 14 || contributory(next)));
                current = if double {
                    Fault::with_code(Exception::DoubleFault, 0)
                } else {
                    second
                };
            }
            Err(other) => return Err(other),
        }
    }
}

/// Delivers `vector`. `return_rip` is the RIP pushed as the return address.
pub(crate) fn deliver(
    cpu: &mut Cpu,
    bus: &mut dyn CpuBus,
    vector: u8,
    error_code: Option<u32>,
    kind: EventKind,
    return_rip: u64,
) -> Result<(), Stop> {
    let code = if kind == EventKind::Fault && has_error_code(vector) {
        error_code.or(Some(0))
    } else {
        None
    };
    cpu.state.halted = false;
    if !cpu.state.protected() {
        return deliver_real(cpu, bus, vector, return_rip);
    }
    if cpu.state.long_mode() {
        deliver_long(cpu, bus, vector, code, kind, return_rip)
    } else {
        deliver_protected(cpu, bus, vector, code, kind, return_rip)
    }
}

/// Error code naming an IDT entry: IDT bit set, EXT for external events.
fn idt_error(vector: u8, kind: EventKind) -> u32 {
    (u32::from(vector) << 3)
        | 2
        | u32::from(kind == EventKind::External || kind == EventKind::Fault)
}

fn read_system(
    cpu: &mut Cpu,
    bus: &mut dyn CpuBus,
    linear: u64,
    buf: &mut [u8],
) -> Result<(), Stop> {
    cpu.read_linear(bus, linear, buf, Privilege::System)
        .map_err(Stop::Fault)
}

fn deliver_real(
    cpu: &mut Cpu,
    bus: &mut dyn CpuBus,
    vector: u8,
    return_rip: u64,
) -> Result<(), Stop> {
    let entry = u64::from(vector) * 4;
    if entry + 3 > u64::from(cpu.state.idtr.limit) {
        return Err(Fault::gp(0).into());
    }
    let mut b = [0u8; 4];
    read_system(cpu, bus, cpu.state.idtr.base + entry, &mut b)?;
    let flags = cpu.state.rflags;
    let cs = cpu.state.seg(SegReg::Cs).selector;
    cpu.push(bus, flags & 0xffff, 2)?;
    cpu.push(bus, u64::from(cs), 2)?;
    cpu.push(bus, return_rip & 0xffff, 2)?;
    cpu.state.rflags &= !(rflags::IF | rflags::TF | rflags::AC);
    let selector = u16::from_le_bytes([b[2], b[3]]);
    cpu.state.seg[SegReg::Cs as usize] = Segment::real_mode(selector, true);
    cpu.state.rip = u64::from(u16::from_le_bytes([b[0], b[1]]));
    Ok(())
}

/// A decoded IDT gate.
struct Gate {
    selector: u16,
    offset: u64,
    type_: u8,
    dpl: u8,
    present: bool,
    ist: u8,
}

fn read_gate(
    cpu: &mut Cpu,
    bus: &mut dyn CpuBus,
    vector: u8,
    kind: EventKind,
    long: bool,
) -> Result<Gate, Stop> {
    let size = if long { 16 } else { 8 };
    let entry = u64::from(vector) * size;
    if entry + size - 1 > u64::from(cpu.state.idtr.limit) {
        return Err(Fault::gp(idt_error(vector, kind)).into());
    }
    let mut b = [0u8; 16];
    read_system(
        cpu,
        bus,
        cpu.state.idtr.base + entry,
        &mut b[..size as usize],
    )?;
    let lo = u64::from_le_bytes(b[..8].try_into().unwrap_or_default());
    let hi = u64::from_le_bytes(b[8..].try_into().unwrap_or_default());
    let mut offset = (lo & 0xffff) | ((lo >> 32) & 0xffff_0000);
    if long {
        offset |= (hi & 0xffff_ffff) << 32;
    }
    Ok(Gate {
        selector: (lo >> 16) as u16,
        offset,
        type_: ((lo >> 40) & 0xf) as u8,
        dpl: ((lo >> 45) & 3) as u8,
        present: (lo >> 47) & 1 == 1,
        ist: ((lo >> 32) & 7) as u8,
    })
}

/// Reads and unpacks the code-segment descriptor a gate names.
pub(crate) fn load_descriptor(
    cpu: &mut Cpu,
    bus: &mut dyn CpuBus,
    selector: u16,
) -> Result<(Segment, u64), Stop> {
    let index = u64::from(selector & !7);
    let table = if selector & 4 != 0 {
        (cpu.state.ldtr.base, u64::from(cpu.state.ldtr.limit))
    } else {
        (cpu.state.gdtr.base, u64::from(cpu.state.gdtr.limit))
    };
    if index + 7 > table.1 {
        return Err(Fault::gp(u32::from(selector & !3)).into());
    }
    let mut b = [0u8; 8];
    read_system(cpu, bus, table.0 + index, &mut b)?;
    let d = u64::from_le_bytes(b);
    let raw_limit = ((d & 0xffff) | ((d >> 32) & 0xf_0000)) as u32;
    let g = (d >> 55) & 1 == 1;
    let seg = Segment {
        selector,
        base: ((d >> 16) & 0xff_ffff) | ((d >> 32) & 0xff00_0000),
        limit: if g {
            (raw_limit << 12) | 0xfff
        } else {
            raw_limit
        },
        type_: ((d >> 40) & 0xf) as u8,
        s: (d >> 44) & 1 == 1,
        dpl: ((d >> 45) & 3) as u8,
        present: (d >> 47) & 1 == 1,
        avl: (d >> 52) & 1 == 1,
        l: (d >> 53) & 1 == 1,
        db: (d >> 54) & 1 == 1,
        g,
        unusable: false,
    };
    Ok((seg, d))
}

fn check_gate(cpu: &Cpu, gate: &Gate, vector: u8, kind: EventKind, long: bool) -> Result<(), Stop> {
    let valid_type = if long {
        matches!(gate.type_, 0xe | 0xf)
    } else {
        matches!(gate.type_, 0x6 | 0x7 | 0xe | 0xf)
    };
    if !valid_type {
        return Err(Fault::gp(idt_error(vector, kind)).into());
    }
    if matches!(
        kind,
        EventKind::SoftwareException | EventKind::SoftwareInterrupt
    ) && gate.dpl < cpu.state.cpl()
    {
        return Err(Fault::gp(idt_error(vector, kind)).into());
    }
    if !gate.present {
        return Err(Fault::with_code(Exception::SegmentNotPresent, idt_error(vector, kind)).into());
    }
    Ok(())
}

fn target_code_segment(
    cpu: &mut Cpu,
    bus: &mut dyn CpuBus,
    selector: u16,
) -> Result<Segment, Stop> {
    if selector & !3 == 0 {
        return Err(Fault::gp(0).into());
    }
    let (seg, _) = load_descriptor(cpu, bus, selector)?;
    if !seg.s || seg.type_ & 0x8 == 0 || seg.dpl > cpu.state.cpl() {
        return Err(Fault::gp(u32::from(selector & !3)).into());
    }
    if !seg.present {
        return Err(
            Fault::with_code(Exception::SegmentNotPresent, u32::from(selector & !3)).into(),
        );
    }
    Ok(seg)
}

fn deliver_long(
    cpu: &mut Cpu,
    bus: &mut dyn CpuBus,
    vector: u8,
    code: Option<u32>,
    kind: EventKind,
    return_rip: u64,
) -> Result<(), Stop> {
    let gate = read_gate(cpu, bus, vector, kind, true)?;
    check_gate(cpu, &gate, vector, kind, true)?;
    let mut cs = target_code_segment(cpu, bus, gate.selector)?;
    if !cs.l || cs.db {
        return Err(Fault::gp(u32::from(gate.selector & !3)).into());
    }
    let old_cpl = cpu.state.cpl();
    let new_cpl = if cs.type_ & 0x4 != 0 { old_cpl } else { cs.dpl };
    let old_ss = cpu.state.seg(SegReg::Ss).selector;
    let old_rsp = cpu.state.gpr[4];
    let old_cs = cpu.state.seg(SegReg::Cs).selector;
    let old_flags = cpu.state.rflags;
    // The new stack: an IST slot, or RSPn of the TSS on a privilege change, else the current
    // stack; always aligned down to 16 bytes in 64-bit mode.
    let tss = cpu.state.tr.base;
    let new_rsp = if gate.ist != 0 {
        Some(read_tss_u64(
            cpu,
            bus,
            tss + 0x24 + 8 * (u64::from(gate.ist) - 1),
        )?)
    } else if new_cpl < old_cpl {
        Some(read_tss_u64(cpu, bus, tss + 4 + 8 * u64::from(new_cpl))?)
    } else {
        None
    };
    let saved = (cpu.state.seg, cpu.state.gpr[4]);
    if new_cpl < old_cpl {
        // SS becomes a null selector with RPL = new CPL.
        cpu.state.seg[SegReg::Ss as usize] = Segment {
            selector: u16::from(new_cpl),
            dpl: new_cpl,
            unusable: true,
            db: false,
            l: false,
            ..*cpu.state.seg(SegReg::Ss)
        };
    }
    if let Some(rsp) = new_rsp {
        cpu.state.gpr[4] = rsp;
    }
    cpu.state.gpr[4] &= !0xf;
    cs.selector = (gate.selector & !3) | u16::from(new_cpl);
    cs.dpl = new_cpl;
    cpu.state.seg[SegReg::Cs as usize] = cs;
    let pushes = [
        u64::from(old_ss),
        old_rsp,
        old_flags,
        u64::from(old_cs),
        return_rip,
    ];
    let result = (|| -> Result<(), Fault> {
        for v in pushes {
            cpu.push(bus, v, 8)?;
        }
        if let Some(c) = code {
            cpu.push(bus, u64::from(c), 8)?;
        }
        Ok(())
    })();
    if let Err(f) = result {
        cpu.state.seg = saved.0;
        cpu.state.gpr[4] = saved.1;
        return Err(f.into());
    }
    finish(cpu, &gate, new_cpl < old_cpl);
    Ok(())
}

fn finish(cpu: &mut Cpu, gate: &Gate, _privilege_change: bool) {
    cpu.state.rip = gate.offset;
    let mut f = cpu.state.rflags & !(rflags::TF | rflags::NT | rflags::RF | rflags::VM);
    if gate.type_ & 1 == 0 {
        // Interrupt gate (not trap gate): interrupts off.
        f &= !rflags::IF;
    }
    cpu.state.rflags = f;
}

fn read_tss_u64(cpu: &mut Cpu, bus: &mut dyn CpuBus, linear: u64) -> Result<u64, Stop> {
    let mut b = [0u8; 8];
    read_system(cpu, bus, linear, &mut b)?;
    Ok(u64::from_le_bytes(b))
}

fn deliver_protected(
    cpu: &mut Cpu,
    bus: &mut dyn CpuBus,
    vector: u8,
    code: Option<u32>,
    kind: EventKind,
    return_rip: u64,
) -> Result<(), Stop> {
    let gate = read_gate(cpu, bus, vector, kind, false)?;
    check_gate(cpu, &gate, vector, kind, false)?;
    if gate.type_ & 0x7 == 0x5 {
        return Err(Stop::Unimplemented);
    }
    let gate32 = gate.type_ & 0x8 != 0;
    let size = if gate32 { 4 } else { 2 };
    let mut cs = target_code_segment(cpu, bus, gate.selector)?;
    let old_cpl = cpu.state.cpl();
    let new_cpl = if cs.type_ & 0x4 != 0 { old_cpl } else { cs.dpl };
    let old_ss = cpu.state.seg(SegReg::Ss).selector;
    let old_esp = cpu.state.gpr[4];
    let old_cs = cpu.state.seg(SegReg::Cs).selector;
    let old_flags = cpu.state.rflags;
    if cpu.state.v86() && new_cpl != 0 {
        return Err(Fault::gp(u32::from(gate.selector & !3)).into());
    }
    let saved = (cpu.state.seg, cpu.state.gpr[4]);
    if new_cpl < old_cpl {
        // SSn:ESPn from the 32-bit TSS.
        let tss = cpu.state.tr.base;
        let mut b = [0u8; 8];
        read_system(cpu, bus, tss + 4 + 8 * u64::from(new_cpl), &mut b)?;
        let esp = u64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
        let ss_sel = u16::from_le_bytes([b[4], b[5]]);
        let (ss, _) = load_descriptor(cpu, bus, ss_sel)?;
        if ss_sel & 3 != u16::from(new_cpl) || ss.dpl != new_cpl || !ss.s || ss.type_ & 0xa != 0x2 {
            return Err(Fault::with_code(Exception::InvalidTss, u32::from(ss_sel & !3)).into());
        }
        cpu.state.seg[SegReg::Ss as usize] = ss;
        cpu.state.gpr[4] = esp;
    }
    cs.selector = (gate.selector & !3) | u16::from(new_cpl);
    cs.dpl = new_cpl;
    cpu.state.seg[SegReg::Cs as usize] = cs;
    let mut pushes = Vec::with_capacity(6);
    if new_cpl < old_cpl {
        pushes.push(u64::from(old_ss));
        pushes.push(old_esp);
    }
    pushes.extend([old_flags, u64::from(old_cs), return_rip]);
    let result = (|| -> Result<(), Fault> {
        for v in pushes {
            cpu.push(bus, v, size)?;
        }
        if let Some(c) = code {
            cpu.push(bus, u64::from(c), size)?;
        }
        Ok(())
    })();
    if let Err(f) = result {
        cpu.state.seg = saved.0;
        cpu.state.gpr[4] = saved.1;
        return Err(f.into());
    }
    finish(cpu, &gate, new_cpl < old_cpl);
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::StepExit;
    use crate::testing::{FlatBus, long_mode_cpu};

    /// A GDT with a 64-bit code segment at 8 and an IDT whose vector 3 points at 0x11000.
    fn with_tables(bus: &mut FlatBus) -> crate::Cpu {
        let mut cpu = long_mode_cpu(bus);
        bus.write_u64(0x5000 + 8, 0x00af_9b00_0000_ffff);
        cpu.state.gdtr = crate::DescriptorTable {
            base: 0x5000,
            limit: 0x17,
        };
        // Interrupt gate, present, DPL 0, selector 8, offset 0x11000.
        let lo: u64 = 0x1000 | (8 << 16) | (0x8e << 40) | (0x0001 << 48);
        bus.write_u64(0x6000 + 3 * 16, lo);
        bus.write_u64(0x6000 + 3 * 16 + 8, 0);
        cpu.state.idtr = crate::DescriptorTable {
            base: 0x6000,
            limit: 0xfff,
        };
        cpu
    }

    #[test]
    fn int3_in_long_mode_pushes_a_frame_and_enters_the_handler() {
        let mut bus = FlatBus::new(0x20_0000);
        let mut cpu = with_tables(&mut bus);
        cpu.state.rflags |= crate::state::rflags::IF;
        bus.write(0x10000, &[0xcc]);
        assert_eq!(cpu.step(&mut bus), StepExit::Continue);
        assert_eq!(cpu.state.rip, 0x11000);
        assert_eq!(cpu.state.rflags & crate::state::rflags::IF, 0);
        let rsp = cpu.state.gpr[4];
        assert_eq!(rsp, 0x8000 - 40);
        assert_eq!(bus.read_u64(rsp), 0x10001, "return RIP after int3");
        assert_eq!(bus.read_u64(rsp + 8), 8, "old CS");
    }

    #[test]
    fn missing_idt_entry_escalates_to_triple_fault() {
        let mut bus = FlatBus::new(0x20_0000);
        let mut cpu = with_tables(&mut bus);
        cpu.state.idtr.limit = 0;
        bus.write(0x10000, &[0xcc]);
        assert_eq!(cpu.step(&mut bus), StepExit::Shutdown);
    }
}
