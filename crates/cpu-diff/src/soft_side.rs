//! The software CPU's side: `x86_cpu::Cpu` over its own copy of the test machine's memory.
//!
//! It starts at the test code with the x87/SSE state the KVM side's prologue loads, and stops at
//! the epilogue (whose `fxsave` it does not need: it reads its state directly), at an exception
//! stub's port write, or after [`STEP_LIMIT`] instructions.

use hypervisor::emu::convert::{sregs_from_state, sregs_into_state};
use iced_x86::{Decoder, DecoderOptions};
use x86_cpu::state::X87;
use x86_cpu::{Cpu, CpuBus, CpuState, StepExit};

use crate::case::{CaseInput, End, FxState, Snapshot, TEST_START, compared_memory};
use crate::flags::{FlagTracker, Undefined};
use crate::machine::{self, MEM_SIZE, Machine};

/// Instructions a case may execute before the software side gives up.
pub const STEP_LIMIT: u64 = 100_000;

/// The software CPU's machine: RAM, and the last port written.
struct Bus {
    mem: Vec<u8>,
    last_port: Option<u16>,
}

impl CpuBus for Bus {
    fn ram(&mut self, gpa: u64, len: usize) -> Option<&mut [u8]> {
        let start = usize::try_from(gpa).ok()?;
        self.mem.get_mut(start..start.checked_add(len)?)
    }
    fn mmio_read(&mut self, _: u64, data: &mut [u8]) {
        data.fill(0xff);
    }
    fn mmio_write(&mut self, _: u64, _: &[u8]) {}
    fn io_read(&mut self, _: u16, data: &mut [u8]) {
        data.fill(0xff);
    }
    fn io_write(&mut self, port: u16, _: &[u8]) {
        self.last_port = Some(port);
    }
    fn cpuid(&mut self, leaf: u32, subleaf: u32) -> [u32; 4] {
        // The host's CPUID: the generator leaves CPUID out, since KVM here shows host bits the
        // VMM does not control.
        let r = std::arch::x86_64::__cpuid_count(leaf, subleaf);
        [r.eax, r.ebx, r.ecx, r.edx]
    }
    fn rdmsr(&mut self, _: u32) -> Option<u64> {
        None
    }
    fn wrmsr(&mut self, _: u32, _: u64) -> bool {
        false
    }
    fn tsc(&mut self) -> u64 {
        0
    }
}

/// The software side of the comparison.
pub struct SoftSide {
    bus: Bus,
}

impl Default for SoftSide {
    fn default() -> Self {
        Self::new()
    }
}

impl SoftSide {
    /// Builds the test machine in the software CPU's memory.
    pub fn new() -> Self {
        let mut mem = vec![0u8; MEM_SIZE];
        Machine::build(&mut mem);
        SoftSide {
            bus: Bus {
                mem,
                last_port: None,
            },
        }
    }

    /// Runs `case` and reports the final state and the status flags left undefined by the last
    /// instruction that wrote them. A panic of the software CPU is a finding like any other: it
    /// ends the run with [`End::Other`] naming the instruction.
    pub fn run(&mut self, case: &CaseInput) -> (Snapshot, Undefined) {
        let at = std::cell::Cell::new(0u64);
        let result =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.run_inner(case, &at)));
        match result {
            Ok(r) => r,
            Err(payload) => {
                let msg = payload
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                let mut snap = Snapshot {
                    end: End::Other(format!(
                        "the software CPU panicked at RIP {:#x}: {msg}",
                        at.get()
                    )),
                    regs: machine::user_regs(&case.gpr, at.get(), case.rflags),
                    sregs: case.sregs,
                    mem: compared_memory(&self.bus.mem),
                    fx: None,
                };
                snap.regs.rip = at.get();
                (snap, Undefined::default())
            }
        }
    }

    fn run_inner(&mut self, case: &CaseInput, at: &std::cell::Cell<u64>) -> (Snapshot, Undefined) {
        case.load(&mut self.bus.mem);
        self.bus.last_port = None;
        let mut cpu = Cpu::new(initial_state(case));
        let epilogue = case.epilogue();
        let mut tracker = FlagTracker::default();
        let end = loop {
            if cpu.state.rip == epilogue && cpu.state.cpl() == 3 {
                break End::Normal;
            }
            if cpu.instructions >= STEP_LIMIT {
                break End::Other(format!("no end after {STEP_LIMIT} instructions"));
            }
            at.set(cpu.state.rip);
            // A user instruction that faults (the step ends at CPL 0) changes no flag: the
            // tracker goes back to where it was before it.
            let before = tracker.clone();
            let user = cpu.state.cpl() == 3;
            if let Some(insn) = self.decode_at(&cpu) {
                tracker.before(&insn, &cpu.state);
            }
            match cpu.step(&mut self.bus) {
                StepExit::Continue => {}
                StepExit::Halted => break End::Other("halted".into()),
                StepExit::Shutdown => break End::Other("shutdown (triple fault)".into()),
                StepExit::Unimplemented(u) => break End::Unimplemented(u.to_string()),
            }
            if user && cpu.state.cpl() == 0 {
                tracker = before;
            }
            if let Some(port) = self.bus.last_port.take() {
                match machine::stub_vector(port) {
                    Some(v) => break End::Vector(v),
                    None => break End::Other(format!("write to unexpected port {port:#x}")),
                }
            }
        };
        let s = &cpu.state;
        let fx = (end == End::Normal).then(|| fx_of(s));
        let snap = Snapshot {
            end,
            regs: machine::user_regs(&s.gpr, s.rip, s.rflags),
            sregs: sregs_from_state(s, 0),
            mem: compared_memory(&self.bus.mem),
            fx,
        };
        (snap, tracker.undefined())
    }

    /// Decodes the instruction at RIP when it lies in the user code (for flag tracking).
    fn decode_at(&self, cpu: &Cpu) -> Option<iced_x86::Instruction> {
        let rip = cpu.state.rip;
        let code = machine::CODE..machine::CODE + machine::CODE_SIZE as u64;
        if !code.contains(&rip) || cpu.state.cpl() != 3 {
            return None;
        }
        let end = (rip + 15).min(code.end) as usize;
        let mut d = Decoder::with_ip(
            64,
            &self.bus.mem[rip as usize..end],
            rip,
            DecoderOptions::NONE,
        );
        Some(d.decode())
    }
}

/// The software CPU's state at the start of `case`: the KVM side's after its prologue.
fn initial_state(case: &CaseInput) -> CpuState {
    let mut s = CpuState {
        gpr: case.gpr,
        rip: TEST_START,
        rflags: case.rflags,
        ..CpuState::default()
    };
    sregs_into_state(&case.sregs, &mut s);
    s.xmm = case.xmm;
    s.mxcsr = case.mxcsr;
    s.x87 = X87 {
        fcw: case.fcw,
        ..X87::default()
    };
    s
}

/// The x87/SSE state in FXSAVE's terms: ST(i) in stack order, the abridged tag word.
fn fx_of(s: &CpuState) -> FxState {
    let top = (s.x87.fsw >> 11) & 7;
    let mut st = [0u128; 8];
    for (i, v) in st.iter_mut().enumerate() {
        *v = s.x87.regs[usize::from((top + i as u16) & 7)] & ((1u128 << 80) - 1);
    }
    let mut ftw = 0u8;
    for r in 0..8 {
        if (s.x87.ftw >> (2 * r)) & 3 != 3 {
            ftw |= 1 << r;
        }
    }
    FxState {
        fcw: s.x87.fcw,
        fsw: s.x87.fsw,
        ftw,
        mxcsr: s.mxcsr,
        st,
        xmm: s.xmm,
    }
}
