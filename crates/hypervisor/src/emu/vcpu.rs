//! A vCPU on the software CPU: the instruction loop, interrupt delivery from its local APIC,
//! HLT as a sleep, and INIT/SIPI start-up.
//!
//! [`EmuVcpu::run`] executes instructions in runs of up to [`BATCH`], cut short by anything the
//! loop must look at: a port or MMIO access (a device may have changed an interrupt or a timer),
//! news from the APIC or a kick, a timer deadline, HLT. Between runs it fires due timers,
//! delivers the highest-priority interrupt the CPU can take (a PIC vector injected by the VMM
//! first, then the APIC's), and reports level-triggered EOIs. A halted vCPU sleeps on its
//! [`VcpuWaker`]; under the instruction clock, the last vCPU to fall asleep moves the clock to
//! the next timer deadline instead of waiting for the host's time.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use x86_cpu::state::{CpuState, MTRR_FIXED, SegReg};
use x86_cpu::{Cpu, StepExit};

use super::bus::{EmuBus, GuestRam};
use super::time::{ClockMode, EmuTime};
use super::{LocalInterruptController, VcpuWaker, convert};
use crate::snapshot::wrong_engine;
use crate::{
    CpuMode, CpuidEntry, EmuVcpuState, EmulationFailure, FpuState, HypervisorError, MsrEntry,
    Result, SpecialRegisters, StandardRegisters, Vcpu, VcpuKicker, VcpuSnapshot, VmExit, VmOps,
};

/// Most instructions executed between two looks at timers, kicks and the APIC.
const BATCH: u32 = 10_000;
/// Under the host clock, instructions between two readings of the host's time.
const HOST_TIME_CHECK_INTERVAL: u32 = 256;
/// Under the instruction clock, how many timer deadlines an idle VM may skip to in a row without
/// any vCPU waking: past that the guest is taken to be stopped for good (interrupts off, or
/// every source masked) and the vCPUs sleep until something from outside wakes them.
const MAX_IDLE_SKIPS: u32 = 100_000;

/// Everything a run of instructions borrows besides the CPU itself.
struct Context {
    ops: Arc<dyn VmOps>,
    ram_map: Arc<RwLock<Arc<GuestRam>>>,
    ram: Arc<GuestRam>,
    apic: Arc<dyn LocalInterruptController>,
    /// Where the APIC page is mapped, cached.
    apic_page: Option<u64>,
    cpuid: Vec<CpuidEntry>,
    /// MSRs the VMM set that the CPU does not own.
    msrs: BTreeMap<u32, u64>,
    time: Arc<EmuTime>,
}

impl Context {
    fn bus(&mut self) -> EmuBus<'_> {
        EmuBus {
            ram: &self.ram,
            ops: self.ops.as_ref(),
            apic: self.apic.as_ref(),
            apic_page: &mut self.apic_page,
            cpuid: &self.cpuid,
            msrs: &mut self.msrs,
            time: &self.time,
            unflushed_ns: 0,
            events: Default::default(),
        }
    }
}

/// A vCPU of an [`super::EmuVm`].
pub struct EmuVcpu {
    cpu: Cpu,
    ctx: Context,
    waker: VcpuWaker,
    /// A PIC vector the VMM injected, waiting for the CPU to be interruptible.
    ext_int: Option<u8>,
    /// The VMM wants [`VmExit::InterruptWindow`] when the CPU can take a PIC interrupt.
    window_requested: bool,
    /// The APIC may hold an interrupt above the processor priority.
    apic_dirty: bool,
    /// CR8 as last given to the APIC's TPR.
    synced_cr8: u64,
    /// Level-triggered EOIs not reported yet.
    eois: VecDeque<u8>,
}

impl EmuVcpu {
    /// vCPU `id`: 0 is the bootstrap processor, which runs from reset; the others wait for
    /// INIT and a start-up IPI.
    pub(super) fn new(
        id: u32,
        ops: Arc<dyn VmOps>,
        ram_map: Arc<RwLock<Arc<GuestRam>>>,
        apic: Arc<dyn LocalInterruptController>,
        waker: VcpuWaker,
        time: Arc<EmuTime>,
    ) -> Self {
        let ram = ram_map.read().unwrap_or_else(|p| p.into_inner()).clone();
        let apic_page = apic.mmio_base();
        let mut cpu = Cpu::new(CpuState::default());
        if id != 0 {
            // The bootstrap processor runs from reset; the others wait for INIT-SIPI-SIPI.
            cpu.init();
        }
        Self {
            cpu,
            ctx: Context {
                ops,
                ram_map,
                ram,
                apic,
                apic_page,
                cpuid: Vec::new(),
                msrs: BTreeMap::new(),
                time,
            },
            waker,
            ext_int: None,
            window_requested: false,
            apic_dirty: true,
            synced_cr8: 0,
            eois: VecDeque::new(),
        }
    }

    fn bus(&mut self) -> (&mut Cpu, EmuBus<'_>) {
        (&mut self.cpu, self.ctx.bus())
    }

    fn mode(&self) -> CpuMode {
        let sregs = convert::sregs_from_state(&self.cpu.state, 0);
        CpuMode::from_state(&sregs, self.cpu.state.rflags)
    }

    /// Turns the CPU's report of a step into an exit, if it is one.
    fn step_exit(&self, exit: StepExit) -> Option<VmExit> {
        match exit {
            StepExit::Continue | StepExit::Halted => None,
            StepExit::Shutdown => Some(VmExit::Shutdown),
            StepExit::Unimplemented(u) => {
                let cs_base = if self.cpu.state.code64() {
                    0
                } else {
                    self.cpu.state.seg(SegReg::Cs).base
                };
                Some(VmExit::EmulationFailure(EmulationFailure {
                    rip: u.rip,
                    linear_rip: cs_base.wrapping_add(u.rip),
                    bytes: u.bytes,
                    text: Some(u.text),
                    mode: self.mode(),
                }))
            }
        }
    }

    /// Takes what the waker recorded. Returns true if the VMM kicked.
    fn take_wake_flags(&mut self) -> bool {
        if !self.waker.inner.pending.load(Ordering::Acquire) {
            return false;
        }
        let mut flags = self.waker.inner.lock();
        self.waker.inner.pending.store(false, Ordering::Release);
        if std::mem::take(&mut flags.apic) {
            self.apic_dirty = true;
        }
        std::mem::take(&mut flags.kick)
    }

    /// INIT, start-up IPIs and NMIs from the APIC.
    fn service_apic_signals(&mut self) -> Option<VmExit> {
        let apic = self.ctx.apic.clone();
        if apic.take_init() {
            self.cpu.init();
            self.ext_int = None;
            self.synced_cr8 = 0;
        }
        if let Some(vector) = apic.take_sipi() {
            // A CPU that is not waiting ignores it (the second SIPI of INIT-SIPI-SIPI).
            self.cpu.sipi(vector);
        }
        if !self.cpu.state.wait_for_sipi && apic.take_nmi() {
            let (cpu, mut bus) = self.bus();
            let exit = cpu.inject_nmi(&mut bus);
            return self.step_exit(exit);
        }
        None
    }

    /// Delivers the interrupt the CPU should take now, if it can take one.
    fn deliver_interrupt(&mut self) -> Option<VmExit> {
        if !self.cpu.interrupts_enabled() {
            return None;
        }
        let vector = match self.ext_int.take() {
            Some(v) => v,
            None if self.apic_dirty => match self.ctx.apic.pending_interrupt() {
                Some(v) => {
                    self.ctx.apic.acknowledge(v);
                    v
                }
                None => {
                    self.apic_dirty = false;
                    return None;
                }
            },
            None => return None,
        };
        let (cpu, mut bus) = self.bus();
        let exit = cpu.inject_interrupt(&mut bus, vector);
        self.step_exit(exit)
    }

    /// Gives a CR8 written by the guest to the APIC.
    fn sync_tpr_to_apic(&mut self) {
        if self.cpu.state.cr8 != self.synced_cr8 {
            self.synced_cr8 = self.cpu.state.cr8;
            self.ctx.apic.set_tpr((self.synced_cr8 << 4) as u8);
            self.apic_dirty = true;
        }
    }

    fn can_take_ext_int(&self) -> bool {
        self.ext_int.is_none() && self.cpu.interrupts_enabled() && self.ctx.apic.accepts_ext_int()
    }

    /// Executes up to [`BATCH`] instructions.
    fn run_batch(&mut self) -> Option<VmExit> {
        let instruction_clock = matches!(self.ctx.time.mode(), ClockMode::Instructions(_));
        let time = self.ctx.time.clone();
        let Self {
            cpu,
            ctx,
            waker,
            ext_int,
            window_requested,
            apic_dirty,
            synced_cr8,
            ..
        } = self;
        let mut bus = ctx.bus();
        let mut result = None;
        for i in 0..BATCH {
            let before = cpu.instructions;
            let exit = cpu.step(&mut bus);
            bus.unflushed_ns += time.ns_for_instructions(cpu.instructions - before);
            match exit {
                StepExit::Continue => {}
                StepExit::Halted => break,
                other => {
                    result = Some(other);
                    break;
                }
            }
            if bus.events.device_access || bus.events.apic_written {
                break;
            }
            let due = if instruction_clock {
                time.maybe_due(time.now_ns().saturating_add(bus.unflushed_ns))
            } else {
                i % HOST_TIME_CHECK_INTERVAL == HOST_TIME_CHECK_INTERVAL - 1
                    && time.maybe_due(time.now_ns())
            };
            if due {
                break;
            }
            let interruptible = cpu.interrupts_enabled();
            if waker.inner.pending.load(Ordering::Relaxed)
                || cpu.state.cr8 != *synced_cr8
                || ((*apic_dirty || ext_int.is_some()) && interruptible)
                || (*window_requested
                    && interruptible
                    && ext_int.is_none()
                    && bus.apic.accepts_ext_int())
            {
                break;
            }
        }
        bus.flush_time();
        let events = std::mem::take(&mut bus.events);
        drop(bus);
        if events.apic_written {
            // The guest may have written the TPR, EOIed, or moved the page.
            let tpr = u64::from(self.ctx.apic.tpr() >> 4);
            self.cpu.state.cr8 = tpr;
            self.synced_cr8 = tpr;
            self.apic_dirty = true;
        }
        self.eois.extend(events.eois);
        result.and_then(|exit| self.step_exit(exit))
    }

    /// Sleeps until the APIC has news, the VMM kicks, or (host clock) a timer is due.
    fn sleep(&mut self) {
        let time = self.ctx.time.clone();
        let state = self.waker.inner.clone();
        let mut flags = state.lock();
        if flags.apic || flags.kick {
            return;
        }
        flags.sleeping = true;
        let last = time.vcpu_idle();
        drop(flags);
        if last {
            skip_idle_time(&time);
        }
        let mut flags = state.lock();
        while flags.sleeping {
            let timeout = match time.mode() {
                ClockMode::Host => time
                    .earliest_hint()
                    .map(|t| Duration::from_nanos(t.saturating_sub(time.now_ns()))),
                ClockMode::Instructions(_) => None,
            };
            match timeout {
                None => flags = state.cond.wait(flags).unwrap_or_else(|p| p.into_inner()),
                Some(d) if d.is_zero() => {
                    flags.sleeping = false;
                    time.vcpu_active();
                }
                Some(d) => {
                    flags = state
                        .cond
                        .wait_timeout(flags, d)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                }
            }
        }
        drop(flags);
        time.fire_due();
    }
}

/// Under the instruction clock, with every vCPU asleep: moves time to the next deadline and
/// fires it, until some vCPU has work.
fn skip_idle_time(time: &EmuTime) {
    for _ in 0..MAX_IDLE_SKIPS {
        if !time.all_idle() || !time.skip_to_next_deadline() {
            return;
        }
        time.fire_due();
    }
}

impl Vcpu for EmuVcpu {
    fn run(&mut self) -> Result<VmExit> {
        self.ctx.ram = self
            .ctx
            .ram_map
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        self.ctx.apic_page = self.ctx.apic.mmio_base();
        loop {
            if let Some(vector) = self.eois.pop_front() {
                return Ok(VmExit::IoapicEoi(vector));
            }
            if self.take_wake_flags() {
                return Ok(VmExit::Interrupted);
            }
            if self.apic_dirty
                && let Some(exit) = self.service_apic_signals()
            {
                return Ok(exit);
            }
            if self.cpu.state.wait_for_sipi {
                self.sleep();
                continue;
            }
            self.sync_tpr_to_apic();
            if let Some(exit) = self.deliver_interrupt() {
                return Ok(exit);
            }
            if self.window_requested && self.can_take_ext_int() {
                return Ok(VmExit::InterruptWindow);
            }
            if self.cpu.state.halted {
                self.sleep();
                continue;
            }
            if let Some(exit) = self.run_batch() {
                return Ok(exit);
            }
            if self.ctx.time.maybe_due(self.ctx.time.now_ns()) {
                self.ctx.time.fire_due();
            }
        }
    }

    fn regs(&self) -> Result<StandardRegisters> {
        Ok(convert::regs_from_state(&self.cpu.state))
    }

    fn set_regs(&mut self, regs: &StandardRegisters) -> Result<()> {
        convert::regs_into_state(regs, &mut self.cpu.state);
        Ok(())
    }

    fn sregs(&self) -> Result<SpecialRegisters> {
        Ok(convert::sregs_from_state(
            &self.cpu.state,
            self.ctx.apic.apic_base(),
        ))
    }

    fn set_sregs(&mut self, sregs: &SpecialRegisters) -> Result<()> {
        if sregs.apic_base != self.ctx.apic.apic_base() {
            if !self.ctx.apic.set_apic_base(sregs.apic_base) {
                return Err(HypervisorError::InvalidRegister {
                    register: "IA32_APIC_BASE",
                    value: sregs.apic_base,
                });
            }
            self.ctx.apic_page = self.ctx.apic.mmio_base();
        }
        convert::sregs_into_state(sregs, &mut self.cpu.state);
        self.ctx.apic.set_tpr((self.cpu.state.cr8 << 4) as u8);
        self.synced_cr8 = self.cpu.state.cr8;
        self.cpu.flush_tlb();
        Ok(())
    }

    fn set_fpu(&mut self, fpu: &FpuState) -> Result<()> {
        self.cpu.state.x87.fcw = fpu.fcw;
        self.cpu.state.mxcsr = fpu.mxcsr;
        Ok(())
    }

    fn set_msrs(&mut self, msrs: &[MsrEntry]) -> Result<()> {
        for m in msrs {
            if !set_cpu_msr(&mut self.cpu.state, m.index, m.data) {
                if m.index == 0x1b {
                    if !self.ctx.apic.set_apic_base(m.data) {
                        return Err(HypervisorError::InvalidRegister {
                            register: "IA32_APIC_BASE",
                            value: m.data,
                        });
                    }
                    self.ctx.apic_page = self.ctx.apic.mmio_base();
                } else if m.index == 0x10 {
                    // IA32_TSC: the offset that makes the guest's TSC read `data` now.
                    let now = self.ctx.time.now_ns();
                    self.cpu.state.msr.tsc_offset = m.data.wrapping_sub(now);
                } else {
                    self.ctx.msrs.insert(m.index, m.data);
                }
            }
        }
        Ok(())
    }

    fn set_cpuid(&mut self, entries: &[CpuidEntry]) -> Result<()> {
        self.ctx.cpuid = entries.to_vec();
        Ok(())
    }

    fn setup_local_apic(&mut self) -> Result<()> {
        self.ctx.apic.wire_legacy_lints();
        Ok(())
    }

    fn inject_external_interrupt(&mut self, vector: u8) -> Result<()> {
        self.ext_int = Some(vector);
        Ok(())
    }

    fn request_interrupt_window(&mut self, on: bool) {
        self.window_requested = on;
    }

    fn interrupt_window_open(&mut self) -> bool {
        self.can_take_ext_int()
    }

    fn kicker(&self) -> Arc<dyn VcpuKicker> {
        Arc::new(EmuKicker {
            waker: self.waker.clone(),
        })
    }

    fn snapshot(&self) -> Result<VcpuSnapshot> {
        Ok(VcpuSnapshot::Emu(EmuVcpuState {
            cpu: self.cpu.state.clone(),
            instructions: self.cpu.instructions,
            cpuid: self.ctx.cpuid.clone(),
            msrs: self
                .ctx
                .msrs
                .iter()
                .map(|(&index, &data)| MsrEntry { index, data })
                .collect(),
            pending_ext_int: self.ext_int,
            interrupt_window_requested: self.window_requested,
            synced_cr8: self.synced_cr8,
            pending_eois: self.eois.iter().copied().collect(),
        }))
    }

    fn restore(&mut self, snapshot: &VcpuSnapshot) -> Result<()> {
        let s = match snapshot {
            VcpuSnapshot::Emu(s) => s,
            other => return Err(wrong_engine("vCPU", other.engine(), "emu")),
        };
        self.cpu.state = s.cpu.clone();
        self.cpu.instructions = s.instructions;
        self.cpu.flush_tlb();
        self.ctx.cpuid = s.cpuid.clone();
        self.ctx.msrs = s.msrs.iter().map(|m| (m.index, m.data)).collect();
        self.ctx.apic_page = self.ctx.apic.mmio_base();
        self.ext_int = s.pending_ext_int;
        self.window_requested = s.interrupt_window_requested;
        self.synced_cr8 = s.synced_cr8;
        self.eois = s.pending_eois.iter().copied().collect();
        // Look at the (restored) APIC before the first instruction.
        self.apic_dirty = true;
        Ok(())
    }
}

/// Writes an MSR that lives in the CPU's state. Returns false for any other MSR.
fn set_cpu_msr(s: &mut CpuState, index: u32, data: u64) -> bool {
    let m = &mut s.msr;
    let slot = match index {
        0x174 => &mut m.sysenter_cs,
        0x175 => &mut m.sysenter_esp,
        0x176 => &mut m.sysenter_eip,
        0x1a0 => &mut m.misc_enable,
        0x277 => &mut m.pat,
        0x2ff => &mut m.mtrr_def_type,
        0x200..=0x20f => &mut m.mtrr_var[(index - 0x200) as usize],
        0xc000_0080 => &mut s.efer,
        0xc000_0081 => &mut m.star,
        0xc000_0082 => &mut m.lstar,
        0xc000_0083 => &mut m.cstar,
        0xc000_0084 => &mut m.sfmask,
        0xc000_0100 => &mut s.seg[SegReg::Fs as usize].base,
        0xc000_0101 => &mut s.seg[SegReg::Gs as usize].base,
        0xc000_0102 => &mut m.kernel_gs_base,
        0xc000_0103 => &mut m.tsc_aux,
        _ => match MTRR_FIXED.iter().position(|&f| f == index) {
            Some(i) => &mut m.mtrr_fixed[i],
            None => return false,
        },
    };
    *slot = data;
    true
}

/// Kicks an emulated vCPU out of [`EmuVcpu::run`], or out of its sleep.
struct EmuKicker {
    waker: VcpuWaker,
}

impl VcpuKicker for EmuKicker {
    fn bind_current_thread(&self) {}

    fn kick(&self) {
        self.waker.kick();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::mpsc;

    use super::*;
    use crate::emu::time::InstructionClock;
    use crate::emu::{EmuConfig, EmuHypervisor, EmuTimer, LocalApics};
    use crate::{Hypervisor, MemoryRegion};

    /// An APIC that holds one requested vector.
    #[derive(Default)]
    struct MockApic {
        pending: Mutex<Option<u8>>,
        acknowledged: Mutex<Vec<u8>>,
    }

    impl LocalInterruptController for MockApic {
        fn mmio_base(&self) -> Option<u64> {
            None
        }
        fn mmio_read(&self, _: u64, data: &mut [u8]) {
            data.fill(0);
        }
        fn mmio_write(&self, _: u64, _: &[u8]) -> Option<u8> {
            None
        }
        fn apic_base(&self) -> u64 {
            0
        }
        fn set_apic_base(&self, _: u64) -> bool {
            true
        }
        fn tpr(&self) -> u8 {
            0
        }
        fn set_tpr(&self, _: u8) {}
        fn pending_interrupt(&self) -> Option<u8> {
            *self.pending.lock().unwrap()
        }
        fn acknowledge(&self, vector: u8) {
            *self.pending.lock().unwrap() = None;
            self.acknowledged.lock().unwrap().push(vector);
        }
        fn take_nmi(&self) -> bool {
            false
        }
        fn take_init(&self) -> bool {
            false
        }
        fn take_sipi(&self) -> Option<u8> {
            None
        }
        fn accepts_ext_int(&self) -> bool {
            true
        }
        fn wire_legacy_lints(&self) {}
    }

    /// The mock APIC of vCPU 0, with a timer that requests vector 0x40 when it fires.
    struct MockApics {
        apic: Arc<MockApic>,
        time: Arc<EmuTime>,
        timer: Mutex<Option<EmuTimer>>,
    }

    impl LocalApics for MockApics {
        fn create(&self, _: u32, waker: VcpuWaker) -> Arc<dyn LocalInterruptController> {
            let apic = self.apic.clone();
            let timer = self.time.timer(Box::new(move || {
                *apic.pending.lock().unwrap() = Some(0x40);
                waker.wake();
            }));
            *self.timer.lock().unwrap() = Some(timer);
            self.apic.clone()
        }
        fn deliver_msi(&self, _: u64, _: u32) {}
    }

    /// Port writes, sent to the test thread.
    struct Ports(Mutex<mpsc::Sender<(u16, Vec<u8>)>>);

    impl VmOps for Ports {
        fn pio_read(&self, _: u16, data: &mut [u8]) {
            data.fill(0xff);
        }
        fn pio_write(&self, port: u16, data: &[u8]) {
            let _ = self.0.lock().unwrap().send((port, data.to_vec()));
        }
        fn mmio_read(&self, _: u64, data: &mut [u8]) {
            data.fill(0xff);
        }
        fn mmio_write(&self, _: u64, _: &[u8]) {}
    }

    struct Machine {
        vcpu: Box<dyn Vcpu>,
        ports: mpsc::Receiver<(u16, Vec<u8>)>,
        apics: Arc<MockApics>,
        time: Arc<EmuTime>,
        _ram: Box<[u8]>,
    }

    /// A real-mode vCPU 0 at 0000:1000 running `code`, with `handler` at 0000:2000 for vector
    /// 0x40, on the instruction clock.
    fn machine(code: &[u8], handler: &[u8]) -> Machine {
        let mut ram = vec![0u8; 0x1_0000].into_boxed_slice();
        ram[0x40 * 4..0x40 * 4 + 4].copy_from_slice(&[0x00, 0x20, 0x00, 0x00]);
        ram[0x1000..0x1000 + code.len()].copy_from_slice(code);
        ram[0x2000..0x2000 + handler.len()].copy_from_slice(handler);
        let time = Arc::new(EmuTime::new(ClockMode::Instructions(
            InstructionClock::default(),
        )));
        let apics = Arc::new(MockApics {
            apic: Arc::default(),
            time: time.clone(),
            timer: Mutex::new(None),
        });
        let engine = EmuHypervisor::new(EmuConfig {
            apics: apics.clone(),
            time: time.clone(),
        });
        let (tx, rx) = mpsc::channel();
        let vm = engine.create_vm(Arc::new(Ports(Mutex::new(tx)))).unwrap();
        let region = MemoryRegion {
            guest_addr: 0,
            size: ram.len() as u64,
            host_addr: ram.as_mut_ptr() as u64,
        };
        // SAFETY: `ram` lives in the returned machine as long as the VM does.
        unsafe { vm.map_memory(0, region) }.unwrap();
        let mut vcpu = vm.create_vcpu(0).unwrap();
        let mut sregs = vcpu.sregs().unwrap();
        sregs.cs.base = 0;
        sregs.cs.selector = 0;
        vcpu.set_sregs(&sregs).unwrap();
        let regs = StandardRegisters {
            rip: 0x1000,
            rsp: 0x8000,
            rflags: 2,
            ..Default::default()
        };
        vcpu.set_regs(&regs).unwrap();
        Machine {
            vcpu,
            ports: rx,
            apics,
            time,
            _ram: ram,
        }
    }

    const STI: u8 = 0xfb;
    const CLI: u8 = 0xfa;
    const HLT: u8 = 0xf4;

    #[test]
    fn halted_vcpu_sleeps_until_the_timer_interrupt_then_until_a_kick() {
        // sti; hlt. The handler: mov al, 0x42; out 0x80, al; cli; hlt.
        let m = machine(&[STI, HLT], &[0xb0, 0x42, 0xe6, 0x80, CLI, HLT]);
        m.apics
            .timer
            .lock()
            .unwrap()
            .as_ref()
            .unwrap()
            .arm(Some(1_000_000));
        let kicker = m.vcpu.kicker();
        let mut vcpu = m.vcpu;
        let runner = std::thread::spawn(move || vcpu.run());
        let (port, data) = m
            .ports
            .recv_timeout(Duration::from_secs(10))
            .expect("the handler ran");
        assert_eq!((port, data), (0x80, vec![0x42]));
        assert_eq!(*m.apics.apic.acknowledged.lock().unwrap(), vec![0x40]);
        // Idle time was skipped: the clock stands just past the deadline, not at host time.
        let now = m.time.now_ns();
        assert!((1_000_000..1_000_100).contains(&now), "{now}");
        kicker.kick();
        assert_eq!(runner.join().unwrap().unwrap(), VmExit::Interrupted);
    }

    #[test]
    fn interrupts_wait_for_sti() {
        // cli; out 0x80, al; sti; nop; hlt. The handler: out 0x81, al; cli; hlt.
        let m = machine(&[CLI, 0xe6, 0x80, STI, 0x90, HLT], &[0xe6, 0x81, CLI, HLT]);
        *m.apics.apic.pending.lock().unwrap() = Some(0x40);
        let kicker = m.vcpu.kicker();
        let mut vcpu = m.vcpu;
        let runner = std::thread::spawn(move || vcpu.run());
        let first = m.ports.recv_timeout(Duration::from_secs(10)).unwrap();
        let second = m.ports.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!((first.0, second.0), (0x80, 0x81));
        kicker.kick();
        assert_eq!(runner.join().unwrap().unwrap(), VmExit::Interrupted);
    }

    #[test]
    fn unimplemented_instruction_becomes_an_emulation_failure_with_its_text() {
        let m = machine(&[HLT], &[]);
        let apic: Arc<dyn LocalInterruptController> = m.apics.apic.clone();
        let (tx, _rx) = mpsc::channel();
        let vcpu = EmuVcpu::new(
            0,
            Arc::new(Ports(Mutex::new(tx))),
            Arc::default(),
            apic,
            VcpuWaker::new(m.time.clone()),
            m.time.clone(),
        );
        let exit = vcpu.step_exit(StepExit::Unimplemented(x86_cpu::Unimplemented {
            rip: 0xfff0,
            bytes: vec![0x0f, 0x01, 0xd0],
            text: "xgetbv".into(),
        }));
        let Some(VmExit::EmulationFailure(failure)) = exit else {
            panic!("{exit:?}");
        };
        assert_eq!(
            failure.to_string(),
            "emulation failure at RIP 0xfff0 (real mode): `xgetbv`, instruction bytes 0f 01 d0"
        );
        assert_eq!(failure.linear_rip, 0xffff_fff0);
    }
}
