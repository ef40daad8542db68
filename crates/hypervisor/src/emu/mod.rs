//! The software-CPU backend: `x86_cpu` runs the guest, one host thread per vCPU.
//!
//! Everything KVM keeps in the kernel lives here or is asked of the VMM:
//! - Guest RAM is the host memory given to [`crate::Vm::map_memory`]; the vCPUs read and write
//!   it in place, and locked instructions are host atomics on it, so vCPU threads can run
//!   side by side.
//! - Local APICs are devices, and this crate knows no devices: the VMM passes a
//!   [`LocalApics`] implementation (over `devices::lapic`) in [`EmuConfig`]. Each vCPU gets a
//!   [`LocalInterruptController`] from it; the engine serves the APIC page and IA32_APIC_BASE
//!   through it, asks it for the interrupt to take, and reports the EOIs of level-triggered
//!   vectors as [`crate::VmExit::IoapicEoi`], exactly as the KVM backend does.
//! - Time is an [`EmuTime`] in [`EmuConfig`]: host time, or instructions retired
//!   (deterministic). The vCPU threads fire its timers between instructions; a halted vCPU
//!   sleeps on a condition variable until an interrupt, a kick or a timer deadline.

mod bus;
pub mod convert;
mod cpuid;
mod time;
mod vcpu;
mod vm;

pub use time::{ClockMode, EmuTime, EmuTimer, InstructionClock, TimerCallback};
pub use vcpu::EmuVcpu;
pub use vm::EmuVm;

use std::sync::{Arc, Condvar, Mutex};

use crate::{CpuidEntry, Hypervisor, Result, Vm, VmOps};

/// The most vCPUs an emulated VM may have: APIC IDs are 8 bits and 255 is the broadcast ID.
pub const MAX_VCPUS: u32 = 254;

/// The local APIC of one vCPU, as the software CPU needs it. The VMM implements it over its
/// device model; every method may be called from any thread.
pub trait LocalInterruptController: Send + Sync {
    /// The guest-physical base of the register page, or `None` when the APIC is globally
    /// disabled.
    fn mmio_base(&self) -> Option<u64>;
    /// The guest reads the register page at `offset`.
    fn mmio_read(&self, offset: u64, data: &mut [u8]);
    /// The guest writes the register page at `offset`. Returns the vector whose end of
    /// interrupt must reach the IOAPIC (a level-triggered one), if any.
    fn mmio_write(&self, offset: u64, data: &[u8]) -> Option<u8>;
    /// IA32_APIC_BASE.
    fn apic_base(&self) -> u64;
    /// Writes IA32_APIC_BASE; false if the value is invalid (the CPU raises #GP).
    fn set_apic_base(&self, value: u64) -> bool;
    /// The task priority register (CR8 is its bits 7:4).
    fn tpr(&self) -> u8;
    /// Sets the task priority register.
    fn set_tpr(&self, tpr: u8);
    /// The vector the CPU should take next if its interrupts are enabled.
    fn pending_interrupt(&self) -> Option<u8>;
    /// The CPU takes `vector`.
    fn acknowledge(&self, vector: u8);
    /// Takes a pending NMI.
    fn take_nmi(&self) -> bool;
    /// Takes a pending INIT (the APIC resets itself).
    fn take_init(&self) -> bool;
    /// Takes the vector of a pending start-up IPI.
    fn take_sipi(&self) -> Option<u8>;
    /// Whether the 8259's interrupts reach the CPU (LINT0 in ExtINT mode).
    fn accepts_ext_int(&self) -> bool;
    /// Programs LINT0 as ExtINT and LINT1 as NMI, as firmware does.
    fn wire_legacy_lints(&self);
}

/// The local APICs of one emulated VM and the wiring between them, provided by the VMM.
pub trait LocalApics: Send + Sync {
    /// Creates the local APIC of vCPU `id` (its APIC ID; 0 is the bootstrap processor). The
    /// implementation calls `waker` whenever the APIC gains something for its vCPU: an
    /// interrupt, an NMI, INIT or a start-up IPI.
    fn create(&self, id: u32, waker: VcpuWaker) -> Arc<dyn LocalInterruptController>;
    /// Delivers a message-signalled interrupt to the APICs it addresses.
    fn deliver_msi(&self, address: u64, data: u32);
}

/// What an emulated VM needs beyond the [`VmOps`] callback.
#[derive(Clone)]
pub struct EmuConfig {
    /// The local APICs.
    pub apics: Arc<dyn LocalApics>,
    /// The VM's clock and timers, shared with the VMM's devices.
    pub time: Arc<EmuTime>,
}

/// The software-CPU engine. Each VM it creates uses the APICs and clock of its
/// [`EmuConfig`], so a VMM makes one `EmuHypervisor` per VM.
pub struct EmuHypervisor {
    config: EmuConfig,
}

impl EmuHypervisor {
    /// The engine for one VM.
    pub fn new(config: EmuConfig) -> Self {
        Self { config }
    }
}

impl Hypervisor for EmuHypervisor {
    fn name(&self) -> &'static str {
        "emu"
    }

    fn max_vcpus(&self) -> u32 {
        MAX_VCPUS
    }

    fn supported_cpuid(&self) -> Result<Vec<CpuidEntry>> {
        Ok(cpuid::supported())
    }

    fn create_vm(&self, ops: Arc<dyn VmOps>) -> Result<Arc<dyn Vm>> {
        Ok(Arc::new(EmuVm::new(ops, self.config.clone())))
    }
}

/// Wakes one software vCPU: from a halt, from waiting for a start-up IPI, or out of its
/// instruction loop to look at its APIC.
#[derive(Clone)]
pub struct VcpuWaker {
    inner: Arc<WakeState>,
}

/// What a vCPU thread waits on.
struct WakeState {
    flags: Mutex<WakeFlags>,
    cond: Condvar,
    /// Set with `flags` held, read without it between instructions.
    pending: std::sync::atomic::AtomicBool,
    time: Arc<EmuTime>,
}

#[derive(Default)]
struct WakeFlags {
    /// The APIC has something new.
    apic: bool,
    /// The VMM kicked the vCPU: `run` must return.
    kick: bool,
    /// The vCPU sleeps and is not counted as active.
    sleeping: bool,
}

impl VcpuWaker {
    /// A waker for a vCPU of a VM on `time` (the engine makes one per vCPU; tests of
    /// [`LocalApics`] implementations make their own).
    pub fn new(time: Arc<EmuTime>) -> Self {
        Self {
            inner: Arc::new(WakeState {
                flags: Mutex::new(WakeFlags::default()),
                cond: Condvar::new(),
                pending: std::sync::atomic::AtomicBool::new(false),
                time,
            }),
        }
    }

    /// The vCPU's local APIC has something new for it.
    pub fn wake(&self) {
        self.signal(|f| f.apic = true);
    }

    fn kick(&self) {
        self.signal(|f| f.kick = true);
    }

    fn signal(&self, set: impl FnOnce(&mut WakeFlags)) {
        let mut flags = self.inner.lock();
        set(&mut flags);
        self.inner
            .pending
            .store(true, std::sync::atomic::Ordering::Release);
        if flags.sleeping {
            // Counted as active from now on, before the waker returns: a vCPU that jumps the
            // instruction clock ahead must see that this one has work.
            flags.sleeping = false;
            self.inner.time.vcpu_active();
        }
        drop(flags);
        self.inner.cond.notify_all();
    }
}

impl WakeState {
    fn lock(&self) -> std::sync::MutexGuard<'_, WakeFlags> {
        self.flags.lock().unwrap_or_else(|p| p.into_inner())
    }
}
