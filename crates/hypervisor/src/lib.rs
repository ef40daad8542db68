//! The CPU engines of popek behind one set of traits.
//!
//! A [`Hypervisor`] creates a [`Vm`]; a [`Vm`] owns guest-physical memory mappings and creates
//! [`Vcpu`]s; a [`Vcpu`] runs guest code until something needs the VMM, which it reports as a
//! backend-neutral [`VmExit`]. Port and MMIO accesses never leave the backend as exits: they are
//! handed to the [`VmOps`] callback given at VM creation, the way Cloud Hypervisor's `VmOps` works.
//!
//! Two engines: [`kvm`] (hardware-assisted, through `/dev/kvm`) and [`emu`] (popek's software
//! CPU, `x86_cpu`).
//!
//! This crate knows nothing of devices or of the API: it only moves bytes between the guest and
//! the callback. The software CPU's local APICs, which KVM keeps in the kernel, come from the
//! VMM through the [`emu::LocalApics`] trait.

mod cpu;
pub mod emu;
mod exit;
pub mod kvm;
mod snapshot;

pub use cpu::{
    CPUID_FLAG_SIGNIFICANT_INDEX, CpuMode, CpuidEntry, FpuState, MsrEntry, SegmentRegister,
    SpecialRegisters, StandardRegisters, TableRegister,
};
pub use exit::{EmulationFailure, VmExit};
pub use snapshot::{
    EmuVcpuState, EmuVmState, KvmDebugRegs, KvmVcpuEvents, KvmVcpuState, KvmVmState, KvmXcr,
    MsiRoute, VcpuSnapshot, VmSnapshot,
};

use std::sync::Arc;

/// Errors of the CPU engines.
#[derive(Debug, thiserror::Error)]
pub enum HypervisorError {
    /// `/dev/kvm` does not exist.
    #[error(
        "/dev/kvm does not exist: this host offers no KVM (load the kvm module, or enable \
         virtualization in the firmware)"
    )]
    KvmMissing,
    /// `/dev/kvm` exists but the user may not open it.
    #[error(
        "/dev/kvm is not accessible to this user: add the user to the 'kvm' group or run as root"
    )]
    KvmPermission,
    /// `/dev/kvm` could not be opened for another reason.
    #[error("Cannot open /dev/kvm")]
    KvmOpen(#[source] std::io::Error),
    /// The kernel's KVM API is not the stable version 12.
    #[error("KVM API version {0} is not supported (popek needs version 12)")]
    KvmApiVersion(i32),
    /// The kernel lacks a KVM capability popek needs.
    #[error("KVM lacks the {0} capability, which popek needs")]
    MissingCapability(&'static str),
    /// A KVM ioctl failed.
    #[error("KVM {op} failed")]
    Ioctl {
        /// The operation that failed.
        op: &'static str,
        /// The error the kernel returned.
        #[source]
        source: std::io::Error,
    },
    /// The guest asked for more vCPUs than the engine supports.
    #[error("{requested} vCPUs requested, but this engine supports at most {max}")]
    TooManyVcpus {
        /// vCPUs asked for.
        requested: u32,
        /// The engine's limit.
        max: u32,
    },
    /// A register value the engine cannot take.
    #[error("Invalid {register} value {value:#x}")]
    InvalidRegister {
        /// The register.
        register: &'static str,
        /// The value refused.
        value: u64,
    },
    /// The engine cannot do this.
    #[error("{0}")]
    Unsupported(&'static str),
    /// A snapshot taken by one engine was given to the other.
    #[error("Cannot restore a {what} snapshot of the {found} engine on the {engine} engine")]
    SnapshotEngineMismatch {
        /// "vCPU" or "VM".
        what: &'static str,
        /// The engine that took the snapshot.
        found: &'static str,
        /// The engine asked to restore it.
        engine: &'static str,
    },
    /// A snapshot whose contents the engine cannot take.
    #[error("Invalid snapshot: {0}")]
    InvalidSnapshot(String),
}

/// Result of the CPU engines.
pub type Result<T> = std::result::Result<T, HypervisorError>;

/// The callback through which a running vCPU hands port and MMIO accesses to the VMM.
pub trait VmOps: Send + Sync {
    /// The guest reads `data.len()` bytes from I/O `port`.
    fn pio_read(&self, port: u16, data: &mut [u8]);
    /// The guest writes `data` to I/O `port`.
    fn pio_write(&self, port: u16, data: &[u8]);
    /// The guest reads `data.len()` bytes at guest-physical `addr`, which no RAM backs.
    fn mmio_read(&self, addr: u64, data: &mut [u8]);
    /// The guest writes `data` at guest-physical `addr`, which no RAM backs.
    fn mmio_write(&self, addr: u64, data: &[u8]);
}

/// A region of host memory that backs guest RAM.
#[derive(Debug, Clone, Copy)]
pub struct MemoryRegion {
    /// Guest-physical start.
    pub guest_addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// Host virtual address of the first byte.
    pub host_addr: u64,
}

/// A CPU engine.
pub trait Hypervisor: Send + Sync {
    /// A short name for reports ("kvm").
    fn name(&self) -> &'static str;
    /// The largest number of vCPUs a VM may have.
    fn max_vcpus(&self) -> u32;
    /// The CPUID leaves the engine can present to a guest, before any policy.
    fn supported_cpuid(&self) -> Result<Vec<CpuidEntry>>;
    /// Creates a VM whose vCPUs hand port and MMIO accesses to `ops`.
    fn create_vm(&self, ops: Arc<dyn VmOps>) -> Result<Arc<dyn Vm>>;
}

/// A virtual machine: guest memory and vCPUs, plus interrupt delivery into the local APICs.
pub trait Vm: Send + Sync {
    /// Makes `region` guest RAM.
    ///
    /// # Safety
    /// The host range `[host_addr, host_addr + size)` must be mapped, readable and writable, and
    /// stay so for as long as the VM exists.
    unsafe fn map_memory(&self, slot: u32, region: MemoryRegion) -> Result<()>;
    /// Creates vCPU `id` (its initial APIC ID). vCPU 0 is the bootstrap processor.
    fn create_vcpu(&self, id: u32) -> Result<Box<dyn Vcpu>>;
    /// Delivers a message-signalled interrupt produced by interrupt source `gsi` (an IOAPIC pin).
    /// The engine keeps `gsi`'s route so that the end of a level-triggered interrupt comes back as
    /// [`VmExit::IoapicEoi`].
    fn signal_msi(&self, gsi: u32, address: u64, data: u32) -> Result<()>;
    /// Makes guest writes of any width to the MMIO address `addr` signal `event` inside the
    /// engine, without a VM exit (KVM's ioeventfd). Returns false when the engine has no such
    /// path (the software CPU): the write then reaches [`VmOps::mmio_write`] as usual, and the
    /// device signals the event itself.
    fn register_ioevent(
        &self,
        _addr: u64,
        _event: &vmm_sys_util::eventfd::EventFd,
    ) -> Result<bool> {
        Ok(false)
    }
    /// Undoes [`Vm::register_ioevent`] for `addr` and `event`.
    fn unregister_ioevent(
        &self,
        _addr: u64,
        _event: &vmm_sys_util::eventfd::EventFd,
    ) -> Result<()> {
        Ok(())
    }
    /// The VM-wide engine state: KVM's clock and MSI routes; the software CPU's time base. Take
    /// it with every vCPU paused, after their [`Vcpu::snapshot`]s.
    fn snapshot(&self) -> Result<VmSnapshot>;
    /// Restores [`Vm::snapshot`]'s state on a freshly created VM of the same engine (a snapshot
    /// of the other engine is refused with [`HypervisorError::SnapshotEngineMismatch`]). Call it
    /// before restoring the vCPUs and the devices, whose timers count from the restored clock.
    fn restore(&self, snapshot: &VmSnapshot) -> Result<()>;
    /// Starts tracking the pages the guest writes, for diff snapshots, and forgets the writes
    /// before the call. Memory mapped later is tracked too. The software CPU has no such log:
    /// it returns [`HypervisorError::Unsupported`], and the VMM compares memory instead.
    fn start_dirty_log(&self) -> Result<()>;
    /// The pages written since [`Vm::start_dirty_log`] or the previous call, which this call
    /// forgets: for each memory region, its guest-physical base and a bitmap with one bit per
    /// 4 KiB page (bit `i % 64` of word `i / 64` for the page at `base + i * 4096`).
    fn dirty_pages(&self) -> Result<Vec<(u64, Vec<u64>)>>;
    /// Stops tracking written pages.
    fn stop_dirty_log(&self) -> Result<()>;
}

/// A virtual CPU. It is created on the VMM's thread and then moved to its own thread.
pub trait Vcpu: Send {
    /// Runs guest code until an exit that the VMM must see.
    fn run(&mut self) -> Result<VmExit>;
    /// General-purpose registers.
    fn regs(&self) -> Result<StandardRegisters>;
    /// Sets the general-purpose registers.
    fn set_regs(&mut self, regs: &StandardRegisters) -> Result<()>;
    /// Segment, control and descriptor-table registers.
    fn sregs(&self) -> Result<SpecialRegisters>;
    /// Sets segment, control and descriptor-table registers.
    fn set_sregs(&mut self, sregs: &SpecialRegisters) -> Result<()>;
    /// Sets the x87/SSE state.
    fn set_fpu(&mut self, fpu: &FpuState) -> Result<()>;
    /// Writes model-specific registers.
    fn set_msrs(&mut self, msrs: &[MsrEntry]) -> Result<()>;
    /// Sets the CPUID the guest sees.
    fn set_cpuid(&mut self, entries: &[CpuidEntry]) -> Result<()>;
    /// Wires the local APIC's LINT0 to the 8259 PIC (ExtINT) and LINT1 to NMI, as firmware does.
    fn setup_local_apic(&mut self) -> Result<()>;
    /// Presents an external (8259 PIC) interrupt with `vector`. Call only when
    /// [`Vcpu::interrupt_window_open`] is true.
    fn inject_external_interrupt(&mut self, vector: u8) -> Result<()>;
    /// Asks the engine to exit with [`VmExit::InterruptWindow`] as soon as the guest can take an
    /// external interrupt.
    fn request_interrupt_window(&mut self, on: bool);
    /// True when the guest can take an external interrupt now.
    fn interrupt_window_open(&mut self) -> bool;
    /// A handle that other threads use to make [`Vcpu::run`] return [`VmExit::Interrupted`].
    fn kicker(&self) -> Arc<dyn VcpuKicker>;
    /// The vCPU's counters.
    fn stats(&self) -> Arc<VcpuStats> {
        Arc::new(VcpuStats::default())
    }
    /// Everything needed to resume this vCPU. Call it while the vCPU is not running (paused
    /// between two [`Vcpu::run`]s); under KVM it first completes the port or MMIO access of the
    /// last exit, so the state is that of the next instruction.
    fn snapshot(&self) -> Result<VcpuSnapshot>;
    /// Restores [`Vcpu::snapshot`]'s state on a freshly created vCPU of the same engine (a
    /// snapshot of the other engine is refused with [`HypervisorError::SnapshotEngineMismatch`]).
    /// The CPUID comes back with it. Under the software CPU the local APIC is not part of it:
    /// the VMM restores it.
    fn restore(&mut self, snapshot: &VcpuSnapshot) -> Result<()>;
}

/// Counters of one vCPU, readable from any thread.
#[derive(Debug, Default)]
pub struct VcpuStats {
    /// Instructions the engine could not execute and popek's software CPU executed instead.
    pub emulated_instructions: std::sync::atomic::AtomicU64,
}

/// Makes a vCPU leave guest mode from another thread.
pub trait VcpuKicker: Send + Sync {
    /// Binds the kicker to the calling thread: call once on the vCPU's own thread before its
    /// first [`Vcpu::run`].
    fn bind_current_thread(&self);
    /// Makes the vCPU's current or next [`Vcpu::run`] return [`VmExit::Interrupted`].
    fn kick(&self);
}
