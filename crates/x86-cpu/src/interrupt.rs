//! Delivery of exceptions and interrupts through the IVT (real mode) or the IDT (protected and
//! long mode): gate checks, the stack switch through the TSS (and the IST in long mode), the
//! virtual-8086 exit to CPL 0, error codes with their EXT bit, and the escalation of a fault
//! during delivery to a double fault, then a triple fault.
//!
//! Also the CPU's event inputs: external interrupts, NMIs, RESET, INIT and startup IPIs
//! ([`Cpu::inject_interrupt`], [`Cpu::inject_nmi`], [`Cpu::reset`], [`Cpu::init`],
//! [`Cpu::sipi`]). Task gates in the IDT are refused with `Stop::Unimplemented`.

use crate::bus::CpuBus;
use crate::exec::segment::{
    Descriptor, null_segment, read_descriptor, sel_code, set_accessed, tss_stack, tss64_stack,
};
use crate::exec::{Cpu, StepExit, Stop, Unimplemented};
use crate::fault::{Exception, Fault};
use crate::mmu::Privilege;
use crate::state::{CpuState, SegReg, Segment, rflags};

/// What is being delivered: it decides privilege checks, error codes and the EXT bit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EventKind {
    /// An exception raised by an instruction: returns to the faulting instruction.
    Fault,
    /// `int3` or `into`: checks the gate's DPL, returns after the instruction.
    SoftwareException,
    /// `int n`: checks the gate's DPL (and IOPL in virtual-8086 mode), returns after the
    /// instruction.
    SoftwareInterrupt,
    /// `int1` (icebp): a debug trap with no DPL check, external for error codes.
    Icebp,
    /// An external interrupt or NMI: no DPL check, returns to the interrupted instruction.
    External,
}

/// Exceptions that push an error code.
fn has_error_code(vector: u8) -> bool {
    matches!(vector, 8 | 10 | 11 | 12 | 13 | 14 | 17 | 21 | 29 | 30)
}

/// Contributory exceptions, for the double-fault rules. Every other vector but #PF and #DF is
/// benign: a fault while delivering one is simply delivered next.
fn contributory(v: u8) -> bool {
    matches!(v, 0 | 10 | 11 | 12 | 13)
}

/// Fault-class exceptions: the RFLAGS image they push has RF set, so that the faulting
/// instruction restarts without re-triggering an instruction breakpoint.
fn fault_class(v: u8) -> bool {
    matches!(v, 0 | 5 | 6 | 7 | 10..=14 | 16 | 17 | 19 | 20 | 21)
}

/// The EXT bit of error codes raised while delivering an event of `kind`: set unless the
/// program itself asked for the event (`int n`, `int3`, `into`).
fn ext_bit(kind: EventKind) -> u32 {
    u32::from(matches!(
        kind,
        EventKind::Fault | EventKind::External | EventKind::Icebp
    ))
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
    // Without CR4.VME, INT n in virtual-8086 mode needs IOPL 3.
    if kind == EventKind::SoftwareInterrupt
        && cpu.state.v86()
        && cpu.state.rflags & rflags::IOPL != rflags::IOPL
    {
        return Err(Fault::gp(0).into());
    }
    cpu.state.halted = false;
    if !cpu.state.protected() {
        return deliver_real(cpu, bus, vector, return_rip);
    }
    let mut flags = cpu.state.rflags;
    if kind == EventKind::Fault && fault_class(vector) {
        flags |= rflags::RF;
    }
    let event = Event {
        vector,
        code,
        kind,
        return_rip,
        flags,
    };
    if cpu.state.long_mode() {
        deliver_long(cpu, bus, &event)
    } else {
        deliver_protected(cpu, bus, &event)
    }
}

/// An event on its way through the IDT.
struct Event {
    vector: u8,
    code: Option<u32>,
    kind: EventKind,
    return_rip: u64,
    /// The RFLAGS image to push.
    flags: u64,
}

impl Event {
    fn ext(&self) -> u32 {
        ext_bit(self.kind)
    }
    /// Error code naming the IDT entry: IDT bit set, EXT for external events.
    fn idt_error(&self) -> u32 {
        (u32::from(self.vector) << 3) | 2 | self.ext()
    }
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
    let sp = cpu.state.gpr[4];
    let pushed = (|| {
        cpu.push(bus, flags & 0xffff, 2)?;
        cpu.push(bus, u64::from(cs), 2)?;
        cpu.push(bus, return_rip & 0xffff, 2)
    })();
    if let Err(f) = pushed {
        cpu.state.gpr[4] = sp;
        return Err(f.into());
    }
    cpu.state.rflags &= !(rflags::IF | rflags::TF | rflags::AC | rflags::RF);
    // A real-mode CS load changes the selector and base only (limits stay, as in "unreal" mode).
    let selector = u16::from_le_bytes([b[2], b[3]]);
    let cs = &mut cpu.state.seg[SegReg::Cs as usize];
    cs.selector = selector;
    cs.base = u64::from(selector) << 4;
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

fn read_gate(cpu: &mut Cpu, bus: &mut dyn CpuBus, event: &Event, long: bool) -> Result<Gate, Stop> {
    let size = if long { 16 } else { 8 };
    let entry = u64::from(event.vector) * size;
    if entry + size - 1 > u64::from(cpu.state.idtr.limit) {
        return Err(Fault::gp(event.idt_error()).into());
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
    let type_ = ((lo >> 40) & 0xf) as u8;
    let mut offset = lo & 0xffff;
    if long || type_ & 8 != 0 {
        offset |= (lo >> 32) & 0xffff_0000;
    }
    if long {
        offset |= (hi & 0xffff_ffff) << 32;
    }
    Ok(Gate {
        selector: (lo >> 16) as u16,
        offset,
        type_,
        dpl: ((lo >> 45) & 3) as u8,
        present: (lo >> 47) & 1 == 1,
        ist: ((lo >> 32) & 7) as u8,
    })
}

fn check_gate(cpu: &Cpu, gate: &Gate, event: &Event, long: bool) -> Result<(), Stop> {
    let valid_type = if long {
        matches!(gate.type_, 0xe | 0xf)
    } else {
        matches!(gate.type_, 0x5 | 0x6 | 0x7 | 0xe | 0xf)
    };
    if !valid_type {
        return Err(Fault::gp(event.idt_error()).into());
    }
    if matches!(
        event.kind,
        EventKind::SoftwareException | EventKind::SoftwareInterrupt
    ) && gate.dpl < cpu.state.cpl()
    {
        return Err(Fault::gp(event.idt_error()).into());
    }
    if !gate.present {
        return Err(Fault::with_code(Exception::SegmentNotPresent, event.idt_error()).into());
    }
    Ok(())
}

/// The handler's code segment: present code at DPL <= CPL.
fn target_code_segment(
    cpu: &mut Cpu,
    bus: &mut dyn CpuBus,
    selector: u16,
    ext: u32,
) -> Result<Descriptor, Stop> {
    if selector & !3 == 0 {
        return Err(Fault::gp(ext).into());
    }
    let bad = Fault::gp(sel_code(selector) | ext);
    let d = read_descriptor(cpu, bus, selector, false)?.ok_or(bad)?;
    if !d.is_code() || d.dpl() > cpu.state.cpl() {
        return Err(bad.into());
    }
    if !d.present() {
        return Err(
            Fault::with_code(Exception::SegmentNotPresent, sel_code(selector) | ext).into(),
        );
    }
    Ok(d)
}

/// The handler's CS: the CPL in the cached DPL (they differ for conforming code).
fn handler_cs(d: &Descriptor, selector: u16, cpl: u8) -> Segment {
    let mut cs = d.segment((selector & !3) | u16::from(cpl));
    cs.dpl = cpl;
    cs
}

/// Pushes `values` (then the error code, if any) on the new stack, undoing the register
/// changes made so far if a push faults.
fn push_frame(
    cpu: &mut Cpu,
    bus: &mut dyn CpuBus,
    values: &[u64],
    code: Option<u32>,
    size: u32,
    saved: ([Segment; 6], u64, u64),
) -> Result<(), Stop> {
    let result = (|| -> Result<(), Fault> {
        for &v in values {
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
        cpu.state.rflags = saved.2;
        return Err(f.into());
    }
    Ok(())
}

fn deliver_long(cpu: &mut Cpu, bus: &mut dyn CpuBus, event: &Event) -> Result<(), Stop> {
    let ext = event.ext();
    let gate = read_gate(cpu, bus, event, true)?;
    check_gate(cpu, &gate, event, true)?;
    let d = target_code_segment(cpu, bus, gate.selector, ext)?;
    if !d.long() || d.big() {
        return Err(Fault::gp(sel_code(gate.selector) | ext).into());
    }
    if !crate::exec::far::canonical(gate.offset) {
        return Err(Fault::gp(ext).into());
    }
    let old_cpl = cpu.state.cpl();
    let new_cpl = if d.conforming() { old_cpl } else { d.dpl() };
    let old_ss = cpu.state.seg(SegReg::Ss).selector;
    let old_rsp = cpu.state.gpr[4];
    let old_cs = cpu.state.seg(SegReg::Cs).selector;
    // The new stack: an IST slot, or RSPn of the TSS on a privilege change, else the current
    // stack; always aligned down to 16 bytes in 64-bit mode.
    let new_rsp = if gate.ist != 0 {
        Some(tss64_stack(cpu, bus, 2 + u64::from(gate.ist), ext)?)
    } else if new_cpl < old_cpl {
        Some(tss64_stack(cpu, bus, u64::from(new_cpl), ext)?)
    } else {
        None
    };
    set_accessed(cpu, bus, &d)?;
    let saved = (cpu.state.seg, cpu.state.gpr[4], cpu.state.rflags);
    if new_cpl < old_cpl {
        // SS becomes a null selector with RPL = new CPL.
        cpu.state.seg[SegReg::Ss as usize] = Segment {
            dpl: new_cpl,
            ..null_segment(u16::from(new_cpl))
        };
    }
    if let Some(rsp) = new_rsp {
        cpu.state.gpr[4] = rsp;
    }
    cpu.state.gpr[4] &= !0xf;
    cpu.state.seg[SegReg::Cs as usize] = handler_cs(&d, gate.selector, new_cpl);
    let frame = [
        u64::from(old_ss),
        old_rsp,
        event.flags,
        u64::from(old_cs),
        event.return_rip,
    ];
    push_frame(cpu, bus, &frame, event.code, 8, saved)?;
    finish(cpu, &gate);
    Ok(())
}

/// Enters the handler: RIP, and the flags an interrupt clears.
fn finish(cpu: &mut Cpu, gate: &Gate) {
    cpu.state.rip = gate.offset;
    let mut f = cpu.state.rflags & !(rflags::TF | rflags::NT | rflags::RF | rflags::VM);
    if gate.type_ & 1 == 0 {
        // Interrupt gate (not trap gate): interrupts off.
        f &= !rflags::IF;
    }
    cpu.state.rflags = f;
}

fn deliver_protected(cpu: &mut Cpu, bus: &mut dyn CpuBus, event: &Event) -> Result<(), Stop> {
    let ext = event.ext();
    let gate = read_gate(cpu, bus, event, false)?;
    check_gate(cpu, &gate, event, false)?;
    if gate.type_ == 0x5 {
        return Err(Stop::Unimplemented);
    }
    let gate32 = gate.type_ & 0x8 != 0;
    let size = if gate32 { 4 } else { 2 };
    let d = target_code_segment(cpu, bus, gate.selector, ext)?;
    if gate.offset > u64::from(d.limit()) {
        return Err(Fault::gp(ext).into());
    }
    let from_v86 = cpu.state.v86();
    let old_cpl = cpu.state.cpl();
    let new_cpl = if d.conforming() { old_cpl } else { d.dpl() };
    // Virtual-8086 mode leaves only for CPL 0, through a 32-bit gate.
    if from_v86 && (new_cpl != 0 || !gate32) {
        return Err(Fault::gp(sel_code(gate.selector) | ext).into());
    }
    let old_ss = cpu.state.seg(SegReg::Ss).selector;
    let old_esp = cpu.state.gpr[4];
    let old_cs = cpu.state.seg(SegReg::Cs).selector;
    let new_stack = if new_cpl < old_cpl {
        Some(tss_stack(cpu, bus, new_cpl, ext)?)
    } else {
        None
    };
    set_accessed(cpu, bus, &d)?;
    let saved = (cpu.state.seg, cpu.state.gpr[4], cpu.state.rflags);
    if let Some((ss, esp)) = new_stack {
        cpu.state.seg[SegReg::Ss as usize] = ss;
        cpu.state.gpr[4] = esp;
    }
    cpu.state.seg[SegReg::Cs as usize] = handler_cs(&d, gate.selector, new_cpl);
    let mut frame = [0u64; 9];
    let mut n = 0;
    let mut put = |v: u64| {
        frame[n] = v;
        n += 1;
    };
    if from_v86 {
        // Leave virtual-8086 mode before pushing: the frame goes on the protected-mode stack.
        cpu.state.rflags &= !rflags::VM;
        for s in [SegReg::Gs, SegReg::Fs, SegReg::Ds, SegReg::Es] {
            put(u64::from(saved.0[s as usize].selector));
        }
    }
    if new_stack.is_some() {
        put(u64::from(old_ss));
        put(old_esp);
    }
    put(event.flags);
    put(u64::from(old_cs));
    put(event.return_rip);
    push_frame(cpu, bus, &frame[..n], event.code, size, saved)?;
    if from_v86 {
        for s in [SegReg::Gs, SegReg::Fs, SegReg::Ds, SegReg::Es] {
            cpu.state.seg[s as usize] = null_segment(0);
        }
    }
    finish(cpu, &gate);
    Ok(())
}

impl Cpu {
    /// Whether an external interrupt may be delivered now: RFLAGS.IF is set, no instruction
    /// (STI, MOV SS, POP SS) holds interrupts off for one more instruction, and the CPU is not
    /// waiting for a startup IPI.
    pub fn interrupts_enabled(&self) -> bool {
        self.state.rflags & rflags::IF != 0
            && !self.state.interrupt_shadow
            && !self.state.wait_for_sipi
    }

    /// Delivers external interrupt `vector` between instructions, through the IVT or IDT, and
    /// wakes a halted CPU. The caller (the local APIC or PIC logic) checks
    /// [`Cpu::interrupts_enabled`] first; this does not look at IF again. A fault during
    /// delivery is delivered in turn (with EXT set in its error code). A CPU waiting for a
    /// startup IPI ignores interrupts and reports [`StepExit::Halted`].
    pub fn inject_interrupt(&mut self, bus: &mut dyn CpuBus, vector: u8) -> StepExit {
        if self.state.wait_for_sipi {
            return StepExit::Halted;
        }
        self.state.interrupt_shadow = false;
        let rip = self.state.rip;
        let result = deliver(self, bus, vector, None, EventKind::External, rip);
        self.event_exit(bus, result, vector)
    }

    /// Delivers an NMI (vector 2, whatever IF says) and wakes a halted CPU. NMIs are then
    /// blocked until the next IRET; one arriving meanwhile is held and taken right after that
    /// IRET.
    pub fn inject_nmi(&mut self, bus: &mut dyn CpuBus) -> StepExit {
        if self.state.wait_for_sipi {
            return StepExit::Halted;
        }
        if self.state.nmi_blocked {
            self.state.nmi_pending = true;
            return if self.state.halted {
                StepExit::Halted
            } else {
                StepExit::Continue
            };
        }
        self.state.nmi_blocked = true;
        let rip = self.state.rip;
        let result = deliver(
            self,
            bus,
            Exception::Nmi as u8,
            None,
            EventKind::External,
            rip,
        );
        self.event_exit(bus, result, Exception::Nmi as u8)
    }

    fn event_exit(
        &mut self,
        bus: &mut dyn CpuBus,
        result: Result<(), Stop>,
        vector: u8,
    ) -> StepExit {
        let unimplemented = |cpu: &Cpu, what: String| {
            StepExit::Unimplemented(Unimplemented {
                rip: cpu.state.rip,
                bytes: vec![],
                text: what,
            })
        };
        match result {
            Ok(()) => StepExit::Continue,
            Err(Stop::Fault(f)) => match deliver_exception(self, bus, f) {
                Ok(()) => StepExit::Continue,
                Err(Stop::Unimplemented) => {
                    unimplemented(self, format!("delivery of exception {:?}", f.exception))
                }
                Err(_) => StepExit::Shutdown,
            },
            Err(Stop::Shutdown) => StepExit::Shutdown,
            Err(Stop::Unimplemented) => unimplemented(
                self,
                format!("delivery of vector {vector} through a task gate"),
            ),
        }
    }

    /// RESET: the power-on state, real mode at F000:FFF0, running (the bootstrap processor's
    /// start).
    pub fn reset(&mut self) {
        self.state = CpuState::default();
        self.tlb.flush(false);
    }

    /// INIT: the registers as after INIT (real mode at F000:FFF0; x87, SSE and the owned MSRs
    /// kept), then the wait for a startup IPI that an application processor enters: the CPU
    /// reports [`StepExit::Halted`] and ignores interrupts and NMIs until [`Cpu::sipi`].
    pub fn init(&mut self) {
        self.state.apply_init();
        self.state.wait_for_sipi = true;
        self.state.halted = true;
        self.tlb.flush(false);
    }

    /// A startup IPI with `vector`: a CPU waiting after INIT starts in real mode at
    /// CS = vector << 8, IP = 0 and `true` is returned. A CPU not waiting ignores it (the
    /// second SIPI of the usual INIT-SIPI-SIPI sequence) and `false` is returned.
    pub fn sipi(&mut self, vector: u8) -> bool {
        if !self.state.wait_for_sipi {
            return false;
        }
        let selector = u16::from(vector) << 8;
        self.state.seg[SegReg::Cs as usize] = Segment::real_mode(selector, true);
        self.state.rip = 0;
        self.state.wait_for_sipi = false;
        self.state.halted = false;
        true
    }
}

#[cfg(test)]
mod tests {
    use iced_x86::code_asm::*;

    use crate::StepExit;
    use crate::exec::system::fixtures::*;
    use crate::state::{SegReg, rflags};
    use crate::testing::{FlatBus, long_mode_cpu};

    fn user(cpu: &mut crate::Cpu, bus: &FlatBus) {
        cpu.state.seg[SegReg::Cs as usize] = seg(bus, UCODE64);
        cpu.state.seg[SegReg::Ss as usize] = seg(bus, UDATA);
        cpu.state.gpr[4] = 0x20000;
    }

    #[test]
    fn page_fault_from_user_mode_pushes_its_error_code_and_sets_cr2() {
        let mut bus = FlatBus::new(0x20_0000);
        let mut cpu = long_mode_system(&mut bus);
        gate64(&mut bus, 14, 0x12000, 0, 0);
        user(&mut cpu, &bus);
        code(&mut bus, 64, 0x10000, |a| {
            a.mov(rax, 0x40_0008u64)?;
            a.mov(qword_ptr(rax), rcx)
        });
        steps(&mut cpu, &mut bus, 2);
        let s = &cpu.state;
        assert_eq!((s.rip, s.cr2, s.cpl()), (0x12000, 0x40_0008, 0));
        let top = s.gpr[4];
        assert_eq!(top, RSP0 - 48);
        assert_eq!(bus.read_u64(top), 0b110, "not present, write, user");
        assert_eq!(bus.read_u64(top + 8), 0x1000a, "the faulting instruction");
        assert_ne!(bus.read_u64(top + 24) & rflags::RF, 0);
        assert_eq!(bus.read_u64(top + 32), 0x20000);
    }

    #[test]
    fn int_n_through_a_kernel_only_gate_is_gp_naming_the_idt_entry() {
        let mut bus = FlatBus::new(0x20_0000);
        let mut cpu = long_mode_system(&mut bus);
        gate64(&mut bus, 0x30, 0x11000, 0, 0);
        gate64(&mut bus, 13, 0x12000, 0, 0);
        user(&mut cpu, &bus);
        code(&mut bus, 64, 0x10000, |a| a.int(0x30));
        steps(&mut cpu, &mut bus, 1);
        assert_eq!(cpu.state.rip, 0x12000);
        assert_eq!(bus.read_u64(cpu.state.gpr[4]), (0x30 << 3) | 2);
    }

    #[test]
    fn a_fault_delivering_a_contributory_fault_becomes_a_double_fault() {
        let mut bus = FlatBus::new(0x20_0000);
        let mut cpu = long_mode_system(&mut bus);
        gate64(&mut bus, 8, 0x18000, 0, 1);
        gate64(&mut bus, 13, 0x12000, 0, 0);
        // Mark the #GP gate not present: delivering #GP raises #NP.
        bus.mem[(IDT + 13 * 16 + 5) as usize] &= 0x7f;
        code(&mut bus, 64, 0x10000, |a| a.mov(rax, cr0));
        user(&mut cpu, &bus);
        steps(&mut cpu, &mut bus, 1);
        assert_eq!(cpu.state.rip, 0x18000);
        assert_eq!(cpu.state.gpr[4], IST1 - 48);
        assert_eq!(bus.read_u64(IST1 - 48), 0, "#DF pushes 0");
        // Without a #DF handler the CPU shuts down.
        bus.mem[(IDT + 8 * 16 + 5) as usize] &= 0x7f;
        let mut cpu = long_mode_system(&mut bus);
        user(&mut cpu, &bus);
        assert_eq!(cpu.step(&mut bus), StepExit::Shutdown);
    }

    #[test]
    fn external_interrupt_wakes_a_halted_cpu_and_nmis_wait_for_iret() {
        let mut bus = FlatBus::new(0x20_0000);
        let mut cpu = long_mode_system(&mut bus);
        gate64(&mut bus, 0x40, 0x11000, 0, 0);
        gate64(&mut bus, 2, 0x12000, 0, 0);
        code(&mut bus, 64, 0x10000, |a| {
            a.sti()?;
            a.hlt()
        });
        code(&mut bus, 64, 0x11000, |a| a.iretq());
        code(&mut bus, 64, 0x12000, |a| a.iretq());
        assert_eq!(cpu.step(&mut bus), StepExit::Continue);
        assert!(!cpu.interrupts_enabled(), "the STI shadow");
        assert_eq!(cpu.step(&mut bus), StepExit::Halted);
        assert!(cpu.interrupts_enabled());
        assert_eq!(cpu.inject_interrupt(&mut bus, 0x40), StepExit::Continue);
        assert!(!cpu.state.halted);
        assert_eq!(cpu.state.rip, 0x11000);
        assert_eq!(
            bus.read_u64(cpu.state.gpr[4]),
            0x10002,
            "returns after the hlt"
        );
        // An NMI in the handler, then another while the first is being handled.
        assert_eq!(cpu.inject_nmi(&mut bus), StepExit::Continue);
        assert_eq!(cpu.state.rip, 0x12000);
        assert_eq!(cpu.inject_nmi(&mut bus), StepExit::Continue);
        assert_eq!(cpu.state.rip, 0x12000, "held while blocked");
        // The NMI handler's iretq unblocks and the held NMI is taken at once.
        steps(&mut cpu, &mut bus, 1);
        assert_eq!(cpu.state.rip, 0x12000);
        assert!(!cpu.state.nmi_pending);
        assert_eq!(bus.read_u64(cpu.state.gpr[4]), 0x11000);
        steps(&mut cpu, &mut bus, 2);
        assert_eq!(cpu.state.rip, 0x10002);
        assert!(!cpu.state.nmi_blocked);
    }

    #[test]
    fn init_then_sipi_starts_an_application_processor_in_real_mode() {
        let mut bus = FlatBus::new(0x20_0000);
        let mut cpu = long_mode_system(&mut bus);
        cpu.state.msr.pat = 0x0606;
        cpu.init();
        assert_eq!(cpu.step(&mut bus), StepExit::Halted);
        assert_eq!(cpu.inject_interrupt(&mut bus, 0x40), StepExit::Halted);
        assert!(!cpu.state.protected() && cpu.state.efer == 0);
        assert_eq!(cpu.state.msr.pat, 0x0606, "INIT keeps the MSRs");
        code(&mut bus, 16, 0x9a000, |a| a.mov(ax, 0x55aa));
        assert!(cpu.sipi(0x9a));
        assert!(!cpu.sipi(0x9b), "a second SIPI is ignored");
        steps(&mut cpu, &mut bus, 1);
        assert_eq!(cpu.state.seg(SegReg::Cs).base, 0x9a000);
        assert_eq!((cpu.state.rip, cpu.state.gpr[0]), (3, 0x55aa));
        cpu.reset();
        assert_eq!(
            (cpu.state.rip, cpu.state.seg(SegReg::Cs).base),
            (0xfff0, 0xffff_0000)
        );
    }

    #[test]
    fn an_interrupt_in_virtual_8086_mode_saves_the_segments_and_iret_goes_back() {
        let mut bus = FlatBus::new(0x20_0000);
        let mut cpu = protected32(&mut bus);
        gate32(&mut bus, 0x20, KCODE32, 0x11000, 0xe, 0);
        code(&mut bus, 32, 0x11000, |a| a.iretd());
        // The CPL-0 code irets to 2000:0010 in virtual-8086 mode with SS:SP = 3000:0100.
        let frame: [u32; 9] = [
            0x10,
            0x2000,
            (rflags::VM | rflags::IF | rflags::FIXED) as u32,
            0x100,
            0x3000,
            0x4000,
            0x5000,
            0x6000,
            0x7000,
        ];
        for (i, v) in frame.iter().enumerate() {
            bus.write_u32(0x8000 - 36 + 4 * i as u64, *v);
        }
        cpu.state.gpr[4] = 0x8000 - 36;
        code(&mut bus, 32, 0x10000, |a| a.iretd());
        code(&mut bus, 16, 0x20010, |a| a.nop());
        steps(&mut cpu, &mut bus, 1);
        let s = &cpu.state;
        assert!(s.v86());
        assert_eq!((s.cpl(), s.seg(SegReg::Cs).base, s.rip), (3, 0x20000, 0x10));
        assert_eq!(s.seg(SegReg::Ds).base, 0x50000);
        assert_eq!(cpu.inject_interrupt(&mut bus, 0x20), StepExit::Continue);
        let s = &cpu.state;
        assert!(!s.v86());
        assert_eq!((s.cpl(), s.rip, s.gpr[4]), (0, 0x11000, RSP0 - 36));
        assert!(s.seg(SegReg::Ds).unusable, "data segments are nulled");
        let pushed: Vec<u32> = (0..9)
            .map(|i| bus.read_u64(RSP0 - 36 + 4 * i) as u32)
            .collect();
        assert_eq!(pushed, frame, "EIP CS EFLAGS ESP SS ES DS FS GS");
        steps(&mut cpu, &mut bus, 1);
        let s = &cpu.state;
        assert!(s.v86());
        assert_eq!(
            (s.rip, s.seg(SegReg::Gs).base, s.gpr[4]),
            (0x10, 0x70000, 0x100)
        );
    }

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
        let top = cpu.state.gpr[4];
        assert_eq!(top, 0x8000 - 40);
        assert_eq!(bus.read_u64(top), 0x10001, "return RIP after int3");
        assert_eq!(bus.read_u64(top + 8), 8, "old CS");
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
