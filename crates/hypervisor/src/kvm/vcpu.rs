//! A KVM vCPU.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use kvm_bindings::{
    CpuId, KVM_INTERNAL_ERROR_EMULATION, KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES,
    KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN, KVM_VCPUEVENT_VALID_NMI_PENDING,
    KVM_VCPUEVENT_VALID_SIPI_VECTOR, KVMIO, Msrs, Xsave, kvm_debugregs, kvm_fpu, kvm_interrupt,
    kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_run, kvm_sregs, kvm_vcpu_events, kvm_xcr,
    kvm_xcrs, kvm_xsave,
};
use kvm_ioctls::{VcpuExit, VcpuFd};
use vmm_sys_util::ioctl::{ioctl, ioctl_with_ref};
use vmm_sys_util::{ioctl_io_nr, ioctl_iow_nr};

use super::convert::{cpuid_to_kvm, regs_from_kvm, regs_to_kvm, sregs_from_kvm, sregs_into_kvm};
use super::fallback::{self, Outcome};
use super::ioctl_err;
use super::kick::{self, Kicker};
use crate::snapshot::wrong_engine;
use crate::{
    CpuMode, CpuidEntry, EmulationFailure, FpuState, HypervisorError, KvmDebugRegs, KvmVcpuEvents,
    KvmVcpuState, KvmXcr, MemoryRegion, MsrEntry, Result, SpecialRegisters, StandardRegisters,
    Vcpu, VcpuKicker, VcpuSnapshot, VcpuStats, VmExit, VmOps,
};

// kvm-ioctls has no wrapper for KVM_INTERRUPT, which the split irqchip needs to inject the
// PIC's ExtINT vectors.
ioctl_iow_nr!(KVM_INTERRUPT, KVMIO, 0x86, kvm_interrupt);
// KVM_RUN, for completing an exit's I/O from `&self` before a snapshot (kvm-ioctls' `run`
// needs the vCPU mutably).
ioctl_io_nr!(KVM_RUN, KVMIO, 0x80);

/// Bytes of the classic `kvm_xsave` area.
const XSAVE_LEGACY_SIZE: usize = std::mem::size_of::<kvm_xsave>();
/// Bytes of the APIC page `KVM_GET_LAPIC` returns.
const LAPIC_SIZE: usize = 1024;
/// MSRs read or written per ioctl.
const MSR_BATCH: usize = 64;
/// TSC frequencies this close (parts per million) are the same: hosts calibrate differently.
const TSC_KHZ_TOLERANCE_PPM: u64 = 250;

/// What a VM knows that its vCPUs need for snapshots.
#[derive(Debug, Default)]
pub(super) struct SnapshotSupport {
    /// MSRs to save: `KVM_GET_MSR_INDEX_LIST` plus the MTRRs and TSC_AUX.
    pub(super) msrs: Vec<u32>,
    /// Bytes of the XSAVE area (`KVM_CAP_XSAVE2`; 0 without it, for the classic 4 KiB).
    pub(super) xsave_size: usize,
    /// `KVM_CAP_XCRS`.
    pub(super) xcrs: bool,
}

/// The vCPU's mmap'ed `kvm_run`.
struct RunPtr(*mut kvm_run);

// SAFETY: the pointer is the vCPU's own `kvm_run` mapping, which lives as long as the `VcpuFd`
// next to it and moves with it between threads; it is only written by the thread that owns the
// vCPU (`&self` of a `Send`, non-`Sync` vCPU).
unsafe impl Send for RunPtr {}

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
    run_ptr: RunPtr,
    /// The last exit was a port or MMIO access, which KVM completes at the next `KVM_RUN`.
    io_pending: AtomicBool,
    support: Arc<SnapshotSupport>,
}

impl KvmVcpu {
    pub(super) fn new(
        mut fd: VcpuFd,
        ops: Arc<dyn VmOps>,
        regions: Arc<RwLock<Vec<MemoryRegion>>>,
        support: Arc<SnapshotSupport>,
    ) -> Self {
        let run_ptr = RunPtr(fd.get_kvm_run());
        Self {
            fd,
            ops,
            kicker: Arc::new(Kicker::default()),
            regions,
            cpuid: Vec::new(),
            stats: Arc::default(),
            run_ptr,
            io_pending: AtomicBool::new(false),
            support,
        }
    }

    /// Lets KVM finish the port or MMIO access of the last exit (an OUT's RIP is advanced, an
    /// IN's or MMIO read's data lands in the register) without running guest code: `KVM_RUN`
    /// with `immediate_exit` set, as KVM's API documentation prescribes before saving state.
    fn complete_pending_io(&self) -> Result<()> {
        if !self.io_pending.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        let run = self.run_ptr.0;
        // SAFETY: `run` is this vCPU's kvm_run mapping, alive as long as `self.fd`; the vCPU is
        // not running (the caller holds it). The only other writer is the kick handler, with the
        // same volatile byte store.
        unsafe { std::ptr::addr_of_mut!((*run).immediate_exit).write_volatile(1) };
        // SAFETY: KVM_RUN takes no argument; `self.fd` is a vCPU fd.
        let ret = unsafe { ioctl(&self.fd, KVM_RUN()) };
        let err = std::io::Error::last_os_error();
        // SAFETY: as above.
        unsafe { std::ptr::addr_of_mut!((*run).immediate_exit).write_volatile(0) };
        match ret {
            0 => Err(HypervisorError::Ioctl {
                op: "KVM_RUN (completing I/O before a snapshot)",
                source: std::io::Error::other(
                    "the access needs another exit (a split MMIO access): run the vCPU on, then \
                     take the snapshot",
                ),
            }),
            _ if matches!(err.raw_os_error(), Some(libc::EINTR) | Some(libc::EAGAIN)) => Ok(()),
            _ => Err(HypervisorError::Ioctl {
                op: "KVM_RUN (completing I/O before a snapshot)",
                source: err,
            }),
        }
    }

    /// The XSAVE area, as many bytes as KVM keeps.
    fn xsave_bytes(&self) -> Result<Vec<u8>> {
        let size = self.support.xsave_size;
        if size <= XSAVE_LEGACY_SIZE {
            let x = self.fd.get_xsave().map_err(ioctl_err("KVM_GET_XSAVE"))?;
            return Ok(words_to_bytes(&x.region));
        }
        let mut x = Xsave::new((size - XSAVE_LEGACY_SIZE).div_ceil(4)).map_err(|_| {
            HypervisorError::Ioctl {
                op: "KVM_GET_XSAVE2",
                source: std::io::Error::from_raw_os_error(libc::E2BIG),
            }
        })?;
        // SAFETY: `x` holds the `kvm_xsave` header area and enough words after it for the
        // `size` bytes KVM_CAP_XSAVE2 reported, which is what KVM_GET_XSAVE2 writes.
        unsafe { self.fd.get_xsave2(&mut x) }.map_err(ioctl_err("KVM_GET_XSAVE2"))?;
        let mut bytes = words_to_bytes(&x.as_fam_struct_ref().xsave.region);
        bytes.extend(words_to_bytes(x.as_slice()));
        bytes.truncate(size);
        Ok(bytes)
    }

    fn set_xsave_bytes(&self, bytes: &[u8]) -> Result<()> {
        // KVM reads as many bytes as its own area has, whatever the snapshot holds.
        let size = bytes
            .len()
            .max(self.support.xsave_size)
            .max(XSAVE_LEGACY_SIZE);
        let mut words = vec![0u32; size.div_ceil(4)];
        for (w, chunk) in words.iter_mut().zip(bytes.chunks(4)) {
            let mut b = [0u8; 4];
            b[..chunk.len()].copy_from_slice(chunk);
            *w = u32::from_le_bytes(b);
        }
        let (head, extra) = words.split_at(XSAVE_LEGACY_SIZE / 4);
        if extra.is_empty() {
            let mut x = kvm_xsave::default();
            x.region.copy_from_slice(head);
            // SAFETY: KVM reads at most its XSAVE area's size, which KVM_CAP_XSAVE2 reported as
            // no more than the 4096 bytes of `x`.
            return unsafe { self.fd.set_xsave(&x) }.map_err(ioctl_err("KVM_SET_XSAVE"));
        }
        let mut x = Xsave::new(extra.len()).map_err(|_| HypervisorError::Ioctl {
            op: "KVM_SET_XSAVE",
            source: std::io::Error::from_raw_os_error(libc::E2BIG),
        })?;
        // SAFETY: the wrapper owns the header and `extra.len()` words after it; we only write
        // plain integers into them.
        unsafe { x.as_mut_fam_struct() }
            .xsave
            .region
            .copy_from_slice(head);
        x.as_mut_slice().copy_from_slice(extra);
        // SAFETY: `x` holds at least the KVM_CAP_XSAVE2 size, all KVM reads.
        unsafe { self.fd.set_xsave2(&x) }.map_err(ioctl_err("KVM_SET_XSAVE"))
    }

    /// Reads the MSRs to save, skipping those KVM refuses to read.
    fn read_msrs(&self) -> Result<Vec<MsrEntry>> {
        let list = &self.support.msrs;
        let mut out = Vec::with_capacity(list.len());
        let mut next = 0;
        while next < list.len() {
            let chunk = &list[next..(next + MSR_BATCH).min(list.len())];
            let entries: Vec<kvm_msr_entry> = chunk
                .iter()
                .map(|&index| kvm_msr_entry {
                    index,
                    ..Default::default()
                })
                .collect();
            let mut msrs = Msrs::from_entries(&entries).map_err(|_| HypervisorError::Ioctl {
                op: "KVM_GET_MSRS",
                source: std::io::Error::from_raw_os_error(libc::E2BIG),
            })?;
            let read = self
                .fd
                .get_msrs(&mut msrs)
                .map_err(ioctl_err("KVM_GET_MSRS"))?;
            out.extend(msrs.as_slice()[..read].iter().map(|m| MsrEntry {
                index: m.index,
                data: m.data,
            }));
            // KVM stops at the first MSR it cannot read: leave that one out.
            next += read + usize::from(read < chunk.len());
        }
        Ok(out)
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
        self.io_pending.store(false, Ordering::Relaxed);
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
        if matches!(raw, RawExit::Done(VmExit::Io)) {
            self.io_pending.store(true, Ordering::Relaxed);
        }
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

    fn snapshot(&self) -> Result<VcpuSnapshot> {
        // Order, as Firecracker and Cloud Hypervisor take it: the I/O of the last exit done
        // first; MP state before the rest (reading it lets the APIC accept pending INIT/SIPI);
        // the events last, since the other reads may still move state into them.
        self.complete_pending_io()?;
        let mp_state = self
            .fd
            .get_mp_state()
            .map_err(ioctl_err("KVM_GET_MP_STATE"))?
            .mp_state;
        let regs = self.fd.get_regs().map_err(ioctl_err("KVM_GET_REGS"))?;
        let sregs = self.fd.get_sregs().map_err(ioctl_err("KVM_GET_SREGS"))?;
        let xsave = self.xsave_bytes()?;
        let (xcrs, xcrs_flags) = if self.support.xcrs {
            let k = self.fd.get_xcrs().map_err(ioctl_err("KVM_GET_XCRS"))?;
            let n = (k.nr_xcrs as usize).min(k.xcrs.len());
            let list = k.xcrs[..n]
                .iter()
                .map(|x| KvmXcr {
                    xcr: x.xcr,
                    value: x.value,
                })
                .collect();
            (list, k.flags)
        } else {
            (Vec::new(), 0)
        };
        let d = self
            .fd
            .get_debug_regs()
            .map_err(ioctl_err("KVM_GET_DEBUGREGS"))?;
        let lapic = self.fd.get_lapic().map_err(ioctl_err("KVM_GET_LAPIC"))?;
        let tsc_khz = self.fd.get_tsc_khz().ok();
        let msrs = self.read_msrs()?;
        let events = self
            .fd
            .get_vcpu_events()
            .map_err(ioctl_err("KVM_GET_VCPU_EVENTS"))?;
        Ok(VcpuSnapshot::Kvm(KvmVcpuState {
            mp_state,
            regs: regs_from_kvm(&regs),
            sregs: sregs_from_kvm(&sregs),
            interrupt_bitmap: sregs.interrupt_bitmap,
            xsave,
            xcrs,
            xcrs_flags,
            debug_regs: KvmDebugRegs {
                db: d.db,
                dr6: d.dr6,
                dr7: d.dr7,
                flags: d.flags,
            },
            lapic: lapic.regs.iter().map(|&b| b as u8).collect(),
            msrs,
            events: events_from_kvm(&events),
            tsc_khz,
            cpuid: self.cpuid.clone(),
        }))
    }

    fn restore(&mut self, snapshot: &VcpuSnapshot) -> Result<()> {
        let s = match snapshot {
            VcpuSnapshot::Kvm(s) => s,
            other => return Err(wrong_engine("vCPU", other.engine(), "kvm")),
        };
        if s.lapic.len() != LAPIC_SIZE {
            return Err(HypervisorError::InvalidSnapshot(format!(
                "the local APIC page has {} bytes, not {LAPIC_SIZE}",
                s.lapic.len()
            )));
        }
        let mut xcrs = kvm_xcrs::default();
        if s.xcrs.len() > xcrs.xcrs.len() {
            return Err(HypervisorError::InvalidSnapshot(format!(
                "{} extended control registers, KVM has room for {}",
                s.xcrs.len(),
                xcrs.xcrs.len()
            )));
        }
        // Order (Firecracker's, after QEMU's): the TSC rate before anything counts in it; CPUID
        // before what depends on the features; registers before the events, since KVM_SET_REGS
        // drops pending exceptions; SREGS (IA32_APIC_BASE) before the APIC; the APIC before the
        // MSRs (the TSC deadline needs it); the events last.
        if let Some(khz) = s.tsc_khz {
            let same = self.fd.get_tsc_khz().ok().is_some_and(|current| {
                u64::from(current.abs_diff(khz)) * 1_000_000
                    <= u64::from(khz) * TSC_KHZ_TOLERANCE_PPM
            });
            if !same {
                self.fd
                    .set_tsc_khz(khz)
                    .map_err(ioctl_err("KVM_SET_TSC_KHZ (the snapshot's TSC rate)"))?;
            }
        }
        if !s.cpuid.is_empty() {
            self.set_cpuid(&s.cpuid)?;
        }
        self.fd
            .set_mp_state(kvm_mp_state {
                mp_state: s.mp_state,
            })
            .map_err(ioctl_err("KVM_SET_MP_STATE"))?;
        self.fd
            .set_regs(&regs_to_kvm(&s.regs))
            .map_err(ioctl_err("KVM_SET_REGS"))?;
        let mut sregs = kvm_sregs::default();
        sregs_into_kvm(&s.sregs, &mut sregs);
        sregs.interrupt_bitmap = s.interrupt_bitmap;
        self.fd
            .set_sregs(&sregs)
            .map_err(ioctl_err("KVM_SET_SREGS"))?;
        self.set_xsave_bytes(&s.xsave)?;
        if !s.xcrs.is_empty() {
            xcrs.nr_xcrs = s.xcrs.len() as u32;
            xcrs.flags = s.xcrs_flags;
            for (k, x) in xcrs.xcrs.iter_mut().zip(&s.xcrs) {
                *k = kvm_xcr {
                    xcr: x.xcr,
                    reserved: 0,
                    value: x.value,
                };
            }
            self.fd.set_xcrs(&xcrs).map_err(ioctl_err("KVM_SET_XCRS"))?;
        }
        let d = &s.debug_regs;
        self.fd
            .set_debug_regs(&kvm_debugregs {
                db: d.db,
                dr6: d.dr6,
                dr7: d.dr7,
                flags: d.flags,
                ..Default::default()
            })
            .map_err(ioctl_err("KVM_SET_DEBUGREGS"))?;
        let mut lapic = kvm_lapic_state::default();
        for (r, &b) in lapic.regs.iter_mut().zip(&s.lapic) {
            *r = b as _;
        }
        self.fd
            .set_lapic(&lapic)
            .map_err(ioctl_err("KVM_SET_LAPIC"))?;
        for chunk in s.msrs.chunks(MSR_BATCH) {
            self.set_msrs(chunk)?;
        }
        self.fd
            .set_vcpu_events(&events_to_kvm(&s.events))
            .map_err(ioctl_err("KVM_SET_VCPU_EVENTS"))?;
        self.io_pending.store(false, Ordering::Relaxed);
        Ok(())
    }
}

fn words_to_bytes(words: &[u32]) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}

fn events_from_kvm(e: &kvm_vcpu_events) -> KvmVcpuEvents {
    KvmVcpuEvents {
        exception_injected: e.exception.injected,
        exception_nr: e.exception.nr,
        exception_has_error_code: e.exception.has_error_code,
        exception_pending: e.exception.pending,
        exception_error_code: e.exception.error_code,
        exception_has_payload: e.exception_has_payload,
        exception_payload: e.exception_payload,
        interrupt_injected: e.interrupt.injected,
        interrupt_nr: e.interrupt.nr,
        interrupt_soft: e.interrupt.soft,
        interrupt_shadow: e.interrupt.shadow,
        nmi_injected: e.nmi.injected,
        nmi_pending: e.nmi.pending,
        nmi_masked: e.nmi.masked,
        sipi_vector: e.sipi_vector,
        flags: e.flags,
        smi_smm: e.smi.smm,
        smi_pending: e.smi.pending,
        smi_smm_inside_nmi: e.smi.smm_inside_nmi,
        smi_latched_init: e.smi.latched_init,
        triple_fault_pending: e.triple_fault.pending,
    }
}

fn events_to_kvm(e: &KvmVcpuEvents) -> kvm_vcpu_events {
    let mut k = kvm_vcpu_events::default();
    k.exception.injected = e.exception_injected;
    k.exception.nr = e.exception_nr;
    k.exception.has_error_code = e.exception_has_error_code;
    k.exception.pending = e.exception_pending;
    k.exception.error_code = e.exception_error_code;
    k.exception_has_payload = e.exception_has_payload;
    k.exception_payload = e.exception_payload;
    k.interrupt.injected = e.interrupt_injected;
    k.interrupt.nr = e.interrupt_nr;
    k.interrupt.soft = e.interrupt_soft;
    k.interrupt.shadow = e.interrupt_shadow;
    k.nmi.injected = e.nmi_injected;
    k.nmi.pending = e.nmi_pending;
    k.nmi.masked = e.nmi_masked;
    k.sipi_vector = e.sipi_vector;
    // KVM reports neither flag, but both fields hold the saved state.
    k.flags = e.flags | KVM_VCPUEVENT_VALID_NMI_PENDING | KVM_VCPUEVENT_VALID_SIPI_VECTOR;
    k.smi.smm = e.smi_smm;
    k.smi.pending = e.smi_pending;
    k.smi.smm_inside_nmi = e.smi_smm_inside_nmi;
    k.smi.latched_init = e.smi_latched_init;
    k.triple_fault.pending = e.triple_fault_pending;
    k
}
