//! The interpreter loop: fetch through the MMU, decode with iced-x86, dispatch by instruction
//! family, deliver what faults.
//!
//! Each family lives in its own file and exposes `execute(cpu, bus, insn) -> Option<ExecResult>`
//! that returns `None` for instructions it does not handle; [`execute`] tries them in turn.

mod alu;
mod atomic;
mod basic;
mod bits;
mod bmi;
mod cache;
pub(crate) mod far;
mod msr;
mod operand;
mod random;
pub(crate) mod segment;
mod shift;
mod sse;
mod string;
pub(crate) mod system;
mod x87;

use iced_x86::{Decoder, DecoderError, DecoderOptions, Instruction};

use crate::bus::CpuBus;
use crate::fault::Fault;
use crate::mmu::{Access, Privilege, Tlb, translate};
use crate::state::{CpuState, SegReg};

/// What happens after an instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flow {
    /// Continue at the next instruction.
    Next,
    /// RIP was set by the instruction.
    Jump,
    /// The instruction is not finished (a long `rep` string operation): run it again.
    Repeat,
    /// `hlt`: wait for an interrupt, then continue at the next instruction.
    Halt,
}

/// Why an instruction did not complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    /// An exception to deliver.
    Fault(Fault),
    /// The interpreter does not implement this instruction.
    Unimplemented,
    /// The CPU shut down (triple fault).
    Shutdown,
}

impl From<Fault> for Stop {
    fn from(f: Fault) -> Self {
        Stop::Fault(f)
    }
}

/// Result of executing one instruction.
pub(crate) type ExecResult = Result<Flow, Stop>;

/// An instruction the interpreter does not implement: the VM must stop with this report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unimplemented {
    /// RIP of the instruction.
    pub rip: u64,
    /// Its bytes.
    pub bytes: Vec<u8>,
    /// Its mnemonic and operands, in Intel syntax.
    pub text: String,
}

impl std::fmt::Display for Unimplemented {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "unimplemented instruction `{}` at RIP {:#x}, bytes",
            self.text, self.rip
        )?;
        for b in &self.bytes {
            write!(f, " {b:02x}")?;
        }
        Ok(())
    }
}

/// What [`Cpu::step`] reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepExit {
    /// An instruction completed (or faulted and its exception was delivered).
    Continue,
    /// The CPU is halted until an interrupt.
    Halted,
    /// A triple fault: the machine resets.
    Shutdown,
    /// The instruction at RIP is not implemented.
    Unimplemented(Unimplemented),
}

/// A software CPU: architectural state plus the caches that speed it up.
pub struct Cpu {
    /// The architectural state.
    pub state: CpuState,
    pub(crate) tlb: Tlb,
    decoded: cache::DecodeCache,
    /// Instructions retired, for a deterministic clock.
    pub instructions: u64,
}

impl Cpu {
    /// A CPU in the given state.
    pub fn new(state: CpuState) -> Self {
        Cpu {
            state,
            tlb: Tlb::default(),
            decoded: cache::DecodeCache::default(),
            instructions: 0,
        }
    }

    /// Forgets cached translations; call after changing paging state from outside.
    pub fn flush_tlb(&mut self) {
        self.tlb.flush(false);
    }

    /// Fetches and decodes the instruction at CS:RIP.
    fn fetch_decoded(&mut self, bus: &mut dyn CpuBus, out: &mut Instruction) -> Result<(), Fault> {
        let rip = self.state.rip;
        let linear = self.code_linear(rip);
        let first = (0x1000 - (linear & 0xfff) as usize).min(15);
        let pa = translate(
            &self.state,
            &mut self.tlb,
            bus,
            linear,
            Access::Fetch,
            Privilege::Current,
        )?;
        let bits = self.state.code_bits();
        if self.decoded.lookup(rip, pa, bits, bus, out) {
            return Ok(());
        }
        let mut bytes = [0u8; 15];
        crate::mmu::read_phys(bus, pa, &mut bytes[..first]);
        let mut avail = first;
        let mut second_fault = None;
        if first < 15 {
            let next = linear.wrapping_add(first as u64);
            match translate(
                &self.state,
                &mut self.tlb,
                bus,
                next,
                Access::Fetch,
                Privilege::Current,
            ) {
                Ok(pa2) => {
                    crate::mmu::read_phys(bus, pa2, &mut bytes[first..]);
                    avail = 15;
                }
                Err(f) => second_fault = Some(f),
            }
        }
        let mut decoder = Decoder::with_ip(bits, &bytes[..avail], rip, DecoderOptions::NONE);
        let insn = decoder.decode();
        if decoder.last_error() == DecoderError::NoMoreBytes
            && let Some(f) = second_fault
        {
            return Err(f);
        }
        if !insn.is_invalid() && insn.len() <= first && bus.ram(pa, insn.len()).is_some() {
            self.decoded
                .insert(rip, pa, bits, &bytes[..insn.len()], &insn);
        }
        *out = insn;
        Ok(())
    }

    /// Fetches and decodes at CS:RIP, with the instruction's bytes: the form tests use.
    #[cfg(test)]
    pub(crate) fn fetch(
        &mut self,
        bus: &mut dyn CpuBus,
    ) -> Result<(Instruction, [u8; 15], usize), Fault> {
        let mut insn = Instruction::default();
        self.fetch_decoded(bus, &mut insn)?;
        let mut bytes = [0u8; 15];
        let raw = self.bytes_of(bus, &insn);
        bytes[..raw.len()].copy_from_slice(&raw);
        Ok((insn, bytes, raw.len()))
    }

    /// The linear address of `rip` in the code segment.
    fn code_linear(&self, rip: u64) -> u64 {
        let cs_base = if self.state.code64() {
            0
        } else {
            self.state.seg(SegReg::Cs).base
        };
        cs_base.wrapping_add(rip)
    }

    /// The bytes of `insn` as they are in memory now, for reports (empty if unreadable).
    fn bytes_of(&mut self, bus: &mut dyn CpuBus, insn: &Instruction) -> Vec<u8> {
        let mut bytes = vec![0u8; insn.len()];
        let linear = self.code_linear(insn.ip());
        match self.read_linear(bus, linear, &mut bytes, Privilege::Current) {
            Ok(()) => bytes,
            Err(_) => Vec::new(),
        }
    }

    /// Executes one instruction (or delivers one exception).
    pub fn step(&mut self, bus: &mut dyn CpuBus) -> StepExit {
        if self.state.halted {
            return StepExit::Halted;
        }
        let mut insn = Instruction::default();
        if let Err(fault) = self.fetch_decoded(bus, &mut insn) {
            return self.raise(bus, fault);
        }
        if insn.is_invalid() {
            return self.raise(bus, Fault::ud());
        }
        let shadow = self.state.interrupt_shadow;
        let result = execute(self, bus, &insn);
        if shadow {
            self.state.interrupt_shadow = false;
        }
        // RF suppresses instruction breakpoints for one instruction: it clears once an
        // instruction completes, except after the IRET that may have just set it.
        if matches!(result, Ok(Flow::Next | Flow::Jump | Flow::Halt))
            && !matches!(
                insn.mnemonic(),
                iced_x86::Mnemonic::Iret | iced_x86::Mnemonic::Iretd | iced_x86::Mnemonic::Iretq
            )
        {
            self.state.rflags &= !crate::state::rflags::RF;
        }
        match result {
            Ok(Flow::Next) => {
                self.state.rip = self.mask_ip(insn.next_ip());
                self.instructions += 1;
                StepExit::Continue
            }
            Ok(Flow::Jump) => {
                self.instructions += 1;
                StepExit::Continue
            }
            Ok(Flow::Repeat) => StepExit::Continue,
            Ok(Flow::Halt) => {
                self.state.rip = self.mask_ip(insn.next_ip());
                self.instructions += 1;
                self.state.halted = true;
                StepExit::Halted
            }
            Err(Stop::Fault(fault)) => self.raise(bus, fault),
            Err(Stop::Shutdown) => StepExit::Shutdown,
            Err(Stop::Unimplemented) => StepExit::Unimplemented(Unimplemented {
                rip: self.state.rip,
                bytes: self.bytes_of(bus, &insn),
                text: format_insn(&insn),
            }),
        }
    }

    /// Delivers `fault` through the IDT; a fault during delivery escalates as the CPU does.
    fn raise(&mut self, bus: &mut dyn CpuBus, fault: Fault) -> StepExit {
        match crate::interrupt::deliver_exception(self, bus, fault) {
            Ok(()) => StepExit::Continue,
            Err(Stop::Shutdown) => StepExit::Shutdown,
            Err(Stop::Unimplemented) => StepExit::Unimplemented(Unimplemented {
                rip: self.state.rip,
                bytes: vec![],
                text: format!("delivery of exception {:?}", fault.exception),
            }),
            Err(Stop::Fault(_)) => StepExit::Shutdown,
        }
    }

    /// Masks an instruction pointer to the current code size.
    pub(crate) fn mask_ip(&self, ip: u64) -> u64 {
        match self.state.code_bits() {
            64 => ip,
            32 => ip & 0xffff_ffff,
            _ => ip & 0xffff,
        }
    }
}

fn format_insn(insn: &Instruction) -> String {
    use iced_x86::{Formatter, IntelFormatter};
    let mut out = String::new();
    IntelFormatter::new().format(insn, &mut out);
    out
}

/// Executes `insn` by trying each instruction family in turn.
/// One instruction family: `Some` when it handled the instruction.
type Family = fn(&mut Cpu, &mut dyn CpuBus, &Instruction) -> Option<ExecResult>;

pub(crate) fn execute(cpu: &mut Cpu, bus: &mut dyn CpuBus, insn: &Instruction) -> ExecResult {
    let families: [Family; 14] = [
        // Locked read-modify-writes first: the basic family would run them as plain accesses.
        atomic::execute,
        basic::execute,
        alu::execute,
        shift::execute,
        bits::execute,
        bmi::execute,
        string::execute,
        system::execute,
        segment::execute,
        far::execute,
        msr::execute,
        sse::execute,
        x87::execute,
        random::execute,
    ];
    for family in families {
        if let Some(r) = family(cpu, bus, insn) {
            return r;
        }
    }
    Err(Stop::Unimplemented)
}
