//! A KVM vCPU.

use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};

use kvm_bindings::{
    CpuId, KVM_INTERNAL_ERROR_EMULATION, KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES,
    KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN, KVMIO, Msrs, kvm_fpu, kvm_interrupt,
    kvm_msr_entry,
};
use kvm_ioctls::{VcpuExit, VcpuFd};
use vmm_sys_util::ioctl::ioctl_with_ref;
use vmm_sys_util::ioctl_iow_nr;

use super::convert::{cpuid_to_kvm, regs_from_kvm, regs_to_kvm, sregs_from_kvm, sregs_into_kvm};
use super::fallback::{self, Outcome};
use super::ioctl_err;
use super::kick::{self, Kicker};
use crate::{
    CpuMode, CpuidEntry, EmulationFailure, FpuState, HypervisorError, MemoryRegion, MsrEntry,
    Result, SpecialRegisters, StandardRegisters, Vcpu, VcpuKicker, VcpuStats, VmExit, VmOps,
};

// kvm-ioctls has no wrapper for KVM_INTERRUPT, which the split irqchip needs to inject the
// PIC's ExtINT vectors.
ioctl_iow_nr!(KVM_INTERRUPT, KVMIO, 0x86, kvm_interrupt);

/// Offsets of the LINT0 and LINT1 local vector table registers in the APIC page.
const APIC_LVT_LINT0: usize = 0x350;
const APIC_LVT_LINT1: usize = 0x360;
const APIC_DELIVERY_EXTINT: u32 = 0x700;
const APIC_DELIVERY_NMI: u32 = 0x400;

/// What `KVM_RUN` returned, detached from the borrow of the run structure.
enum RawExit {
    Done(VmExit),
    InternalError,
}

/// A vCPU of a [`super::KvmVm`].
pub struct KvmVcpu {
    fd: VcpuFd,
    ops: Arc<dyn VmOps>,
    kicker: Arc<Kicker>,
    /// Guest RAM, for the software CPU's fallback.
    regions: Arc<RwLock<Vec<MemoryRegion>>>,
    /// The CPUID given to KVM, which the fallback presents too.
    cpuid: Vec<CpuidEntry>,
    stats: Arc<VcpuStats>,
}

impl KvmVcpu {
    pub(super) fn new(
        fd: VcpuFd,
        ops: Arc<dyn VmOps>,
        regions: Arc<RwLock<Vec<MemoryRegion>>>,
    ) -> Self {
        Self {
            fd,
            ops,
            kicker: Arc::new(Kicker::default()),
            regions,
            cpuid: Vec::new(),
            stats: Arc::default(),
        }
    }

    /// Runs the instruction KVM could not in the software CPU. Returns the exit to report.
    fn fall_back(&mut self, failure: EmulationFailure) -> Result<VmExit> {
        let regions = self
            .regions
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        match fallback::emulate_one(&self.fd, &regions, &self.ops, &self.cpuid)? {
            Outcome::Done => {
                self.stats
                    .emulated_instructions
                    .fetch_add(1, Ordering::Relaxed);
                Ok(VmExit::Io)
            }
            Outcome::Shutdown => Ok(VmExit::Shutdown),
            Outcome::Unimplemented(u) => Ok(VmExit::EmulationFailure(EmulationFailure {
                text: Some(u.text),
                bytes: if u.bytes.is_empty() {
                    failure.bytes.clone()
                } else {
                    u.bytes
                },
                ..failure
            })),
        }
    }

    fn emulation_failure(&mut self) -> Result<VmExit> {
        let run = self.fd.get_kvm_run();
        // SAFETY: the exit reason is KVM_EXIT_INTERNAL_ERROR, so the `internal` member of the
        // union is the one KVM filled; `emulation_failure` overlays it with the same header.
        let (suberror, ndata, flags, size, raw) = unsafe {
            let e = &run.__bindgen_anon_1.emulation_failure;
            let insn = e.__bindgen_anon_1.__bindgen_anon_1;
            (
                e.suberror,
                e.ndata,
                e.flags,
                insn.insn_size,
                insn.insn_bytes,
            )
        };
        if suberror != KVM_INTERNAL_ERROR_EMULATION {
            return Ok(VmExit::Unhandled(format!(
                "KVM internal error, suberror {suberror}"
            )));
        }
        let has_bytes = ndata >= 3
            && flags & u64::from(KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES) != 0;
        let bytes = if has_bytes {
            raw[..usize::from(size).min(raw.len())].to_vec()
        } else {
            vec![]
        };
        let regs = self.regs()?;
        let sregs = self.sregs()?;
        let failure = EmulationFailure {
            rip: regs.rip,
            linear_rip: sregs.cs.base.wrapping_add(regs.rip),
            bytes,
            text: None,
            mode: CpuMode::from_state(&sregs, regs.rflags),
        };
        self.fall_back(failure)
    }
}

impl Drop for KvmVcpu {
    fn drop(&mut self) {
        // The kick handler must never write to this vCPU's run structure once it is unmapped.
        kick::set_current(std::ptr::null_mut());
    }
}

impl Vcpu for KvmVcpu {
    fn run(&mut self) -> Result<VmExit> {
        kick::set_current(self.fd.get_kvm_run());
        let raw = match self.fd.run() {
            Ok(exit) => match exit {
                VcpuExit::IoIn(port, data) => {
                    self.ops.pio_read(port, data);
                    RawExit::Done(VmExit::Io)
                }
                VcpuExit::IoOut(port, data) => {
                    self.ops.pio_write(port, data);
                    RawExit::Done(VmExit::Io)
                }
                VcpuExit::MmioRead(addr, data) => {
                    self.ops.mmio_read(addr, data);
                    RawExit::Done(VmExit::Io)
                }
                VcpuExit::MmioWrite(addr, data) => {
                    self.ops.mmio_write(addr, data);
                    RawExit::Done(VmExit::Io)
                }
                VcpuExit::Hlt => RawExit::Done(VmExit::Halt),
                VcpuExit::IrqWindowOpen => RawExit::Done(VmExit::InterruptWindow),
                VcpuExit::IoapicEoi(vector) => RawExit::Done(VmExit::IoapicEoi(vector)),
                VcpuExit::Shutdown => RawExit::Done(VmExit::Shutdown),
                VcpuExit::Intr => RawExit::Done(VmExit::Interrupted),
                VcpuExit::SystemEvent(kind, _) => RawExit::Done(match kind {
                    KVM_SYSTEM_EVENT_SHUTDOWN => VmExit::PowerOff,
                    KVM_SYSTEM_EVENT_RESET => VmExit::Reset,
                    other => VmExit::Unhandled(format!("KVM system event {other}")),
                }),
                VcpuExit::InternalError => RawExit::InternalError,
                VcpuExit::FailEntry(reason, cpu) => RawExit::Done(VmExit::Unhandled(format!(
                    "VM entry failed on CPU {cpu}, hardware reason {reason:#x}"
                ))),
                other => RawExit::Done(VmExit::Unhandled(format!("KVM exit {other:?}"))),
            },
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                RawExit::Done(VmExit::Interrupted)
            }
            Err(e) => return Err(ioctl_err("KVM_RUN")(e)),
        };
        // A kick only needs to end one KVM_RUN.
        self.fd.set_kvm_immediate_exit(0);
        match raw {
            RawExit::Done(exit) => Ok(exit),
            RawExit::InternalError => self.emulation_failure(),
        }
    }

    fn regs(&self) -> Result<StandardRegisters> {
        self.fd
            .get_regs()
            .map(|r| regs_from_kvm(&r))
            .map_err(ioctl_err("KVM_GET_REGS"))
    }

    fn set_regs(&mut self, regs: &StandardRegisters) -> Result<()> {
        self.fd
            .set_regs(&regs_to_kvm(regs))
            .map_err(ioctl_err("KVM_SET_REGS"))
    }

    fn sregs(&self) -> Result<SpecialRegisters> {
        self.fd
            .get_sregs()
            .map(|s| sregs_from_kvm(&s))
            .map_err(ioctl_err("KVM_GET_SREGS"))
    }

    fn set_sregs(&mut self, sregs: &SpecialRegisters) -> Result<()> {
        let mut k = self.fd.get_sregs().map_err(ioctl_err("KVM_GET_SREGS"))?;
        sregs_into_kvm(sregs, &mut k);
        self.fd.set_sregs(&k).map_err(ioctl_err("KVM_SET_SREGS"))
    }

    fn set_fpu(&mut self, fpu: &FpuState) -> Result<()> {
        let k = kvm_fpu {
            fcw: fpu.fcw,
            mxcsr: fpu.mxcsr,
            ..Default::default()
        };
        self.fd.set_fpu(&k).map_err(ioctl_err("KVM_SET_FPU"))
    }

    fn set_msrs(&mut self, msrs: &[MsrEntry]) -> Result<()> {
        let entries: Vec<kvm_msr_entry> = msrs
            .iter()
            .map(|m| kvm_msr_entry {
                index: m.index,
                data: m.data,
                ..Default::default()
            })
            .collect();
        let k = Msrs::from_entries(&entries).map_err(|_| HypervisorError::Ioctl {
            op: "KVM_SET_MSRS",
            source: std::io::Error::from_raw_os_error(libc::E2BIG),
        })?;
        let written = self.fd.set_msrs(&k).map_err(ioctl_err("KVM_SET_MSRS"))?;
        if written != entries.len() {
            let msr = entries[written].index;
            return Err(HypervisorError::Ioctl {
                op: "KVM_SET_MSRS",
                source: std::io::Error::other(format!("KVM refused MSR {msr:#x}")),
            });
        }
        Ok(())
    }

    fn set_cpuid(&mut self, entries: &[CpuidEntry]) -> Result<()> {
        let k: Vec<_> = entries.iter().map(cpuid_to_kvm).collect();
        let cpuid = CpuId::from_entries(&k).map_err(|_| HypervisorError::Ioctl {
            op: "KVM_SET_CPUID2",
            source: std::io::Error::from_raw_os_error(libc::E2BIG),
        })?;
        self.fd
            .set_cpuid2(&cpuid)
            .map_err(ioctl_err("KVM_SET_CPUID2"))?;
        self.cpuid = entries.to_vec();
        Ok(())
    }

    fn setup_local_apic(&mut self) -> Result<()> {
        let mut lapic = self.fd.get_lapic().map_err(ioctl_err("KVM_GET_LAPIC"))?;
        for (offset, mode) in [
            (APIC_LVT_LINT0, APIC_DELIVERY_EXTINT),
            (APIC_LVT_LINT1, APIC_DELIVERY_NMI),
        ] {
            let reg = &mut lapic.regs[offset..offset + 4];
            let mut bytes = [0u8; 4];
            for (b, r) in bytes.iter_mut().zip(reg.iter()) {
                *b = *r as u8;
            }
            // Keep everything but the delivery mode (bits 8..=10).
            let value = (u32::from_le_bytes(bytes) & !0x700) | mode;
            for (r, b) in reg.iter_mut().zip(value.to_le_bytes()) {
                *r = b as _;
            }
        }
        self.fd
            .set_lapic(&lapic)
            .map_err(ioctl_err("KVM_SET_LAPIC"))
    }

    fn inject_external_interrupt(&mut self, vector: u8) -> Result<()> {
        let irq = kvm_interrupt { irq: vector.into() };
        // SAFETY: KVM_INTERRUPT reads one kvm_interrupt, which `irq` is, from a vCPU fd.
        let ret = unsafe { ioctl_with_ref(&self.fd, KVM_INTERRUPT(), &irq) };
        if ret < 0 {
            return Err(HypervisorError::Ioctl {
                op: "KVM_INTERRUPT",
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    fn request_interrupt_window(&mut self, on: bool) {
        self.fd.get_kvm_run().request_interrupt_window = on.into();
    }

    fn interrupt_window_open(&mut self) -> bool {
        let run = self.fd.get_kvm_run();
        run.ready_for_interrupt_injection != 0 && run.if_flag != 0
    }

    fn kicker(&self) -> Arc<dyn VcpuKicker> {
        self.kicker.clone()
    }

    fn stats(&self) -> Arc<VcpuStats> {
        self.stats.clone()
    }
}
