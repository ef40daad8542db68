//! Completing KVM with popek's software CPU.
//!
//! When `KVM_RUN` ends in an emulation failure (an instruction the host kernel cannot emulate:
//! on the paravirtual `kvm_pvm` hosts, `int3`, `lock cmpxchg16b` or SSE at CPL 0), the vCPU's
//! state is loaded into an `x86_cpu::Cpu`, that one instruction executes there (walking the
//! guest's page tables, delivering the exception if it raises one), and the state goes back to
//! KVM. Guest memory is reached through the host mappings the VM was given; ports and MMIO go to
//! the same [`VmOps`] callback as KVM's own exits.

use std::sync::Arc;

use kvm_bindings::{Msrs, kvm_fpu, kvm_msr_entry};
use kvm_ioctls::VcpuFd;
use x86_cpu::state::X87;
use x86_cpu::{Cpu, CpuBus, CpuState, StepExit};

use super::convert::{regs_from_kvm, regs_to_kvm, sregs_from_kvm, sregs_into_kvm};
use super::ioctl_err;
use crate::emu::convert::{regs_from_state, regs_into_state, sregs_from_state, sregs_into_state};
use crate::{CPUID_FLAG_SIGNIFICANT_INDEX, CpuidEntry, MemoryRegion, Result, VmOps};

/// MSRs the software CPU owns, with their place in its state.
const MSRS: [u32; 10] = [
    0xc000_0081, // STAR
    0xc000_0082, // LSTAR
    0xc000_0083, // CSTAR
    0xc000_0084, // SFMASK
    0xc000_0102, // KERNEL_GS_BASE
    0x174,       // SYSENTER_CS
    0x175,       // SYSENTER_ESP
    0x176,       // SYSENTER_EIP
    0xc000_0103, // TSC_AUX
    0x277,       // PAT
];

fn msr_slots(s: &mut CpuState) -> [&mut u64; 10] {
    let m = &mut s.msr;
    [
        &mut m.star,
        &mut m.lstar,
        &mut m.cstar,
        &mut m.sfmask,
        &mut m.kernel_gs_base,
        &mut m.sysenter_cs,
        &mut m.sysenter_esp,
        &mut m.sysenter_eip,
        &mut m.tsc_aux,
        &mut m.pat,
    ]
}

/// The guest as the software CPU sees it during one fallback.
struct FallbackBus<'a> {
    regions: &'a [MemoryRegion],
    ops: &'a dyn VmOps,
    cpuid: &'a [CpuidEntry],
}

impl CpuBus for FallbackBus<'_> {
    fn ram(&mut self, gpa: u64, len: usize) -> Option<&mut [u8]> {
        let r = self
            .regions
            .iter()
            .find(|r| gpa >= r.guest_addr && gpa - r.guest_addr < r.size)?;
        let offset = gpa - r.guest_addr;
        if offset.checked_add(len as u64)? > r.size {
            return None;
        }
        // SAFETY: `map_memory`'s contract keeps `[host_addr, host_addr + size)` mapped and
        // writable for the VM's lifetime, and the range checked above lies inside it. The
        // guest's other vCPUs may access the same bytes concurrently, exactly as they could on
        // hardware; the slice lives only for one access by this CPU.
        Some(unsafe { std::slice::from_raw_parts_mut((r.host_addr + offset) as *mut u8, len) })
    }
    fn mmio_read(&mut self, gpa: u64, data: &mut [u8]) {
        self.ops.mmio_read(gpa, data);
    }
    fn mmio_write(&mut self, gpa: u64, data: &[u8]) {
        self.ops.mmio_write(gpa, data);
    }
    fn io_read(&mut self, port: u16, data: &mut [u8]) {
        self.ops.pio_read(port, data);
    }
    fn io_write(&mut self, port: u16, data: &[u8]) {
        self.ops.pio_write(port, data);
    }
    fn cpuid(&mut self, leaf: u32, subleaf: u32) -> [u32; 4] {
        self.cpuid
            .iter()
            .find(|e| {
                e.function == leaf
                    && (e.flags & CPUID_FLAG_SIGNIFICANT_INDEX == 0 || e.index == subleaf)
            })
            .map_or([0; 4], |e| [e.eax, e.ebx, e.ecx, e.edx])
    }
    fn rdmsr(&mut self, _: u32) -> Option<u64> {
        None
    }
    fn wrmsr(&mut self, _: u32, _: u64) -> bool {
        false
    }
    fn tsc(&mut self) -> u64 {
        // SAFETY: rdtsc has no preconditions on x86-64.
        unsafe { core::arch::x86_64::_rdtsc() }
    }
}

fn fpu_into(f: &kvm_fpu, s: &mut CpuState) {
    let mut x87 = X87 {
        fcw: f.fcw,
        fsw: f.fsw,
        fop: f.last_opcode,
        fip: f.last_ip,
        fdp: f.last_dp,
        ..X87::default()
    };
    for (i, r) in f.fpr.iter().enumerate() {
        let mut b = [0u8; 16];
        b[..10].copy_from_slice(&r[..10]);
        x87.regs[i] = u128::from_le_bytes(b);
    }
    // KVM gives the abridged (FXSAVE) tag: one bit per register, set when not empty.
    x87.ftw = (0..8).fold(0u16, |t, i| {
        t | if f.ftwx & (1 << i) != 0 {
            0
        } else {
            3 << (2 * i)
        }
    });
    s.x87 = x87;
    for (i, x) in f.xmm.iter().enumerate() {
        s.xmm[i] = u128::from_le_bytes(*x);
    }
    s.mxcsr = f.mxcsr;
}

fn fpu_from(s: &CpuState) -> kvm_fpu {
    let mut f = kvm_fpu {
        fcw: s.x87.fcw,
        fsw: s.x87.fsw,
        last_opcode: s.x87.fop,
        last_ip: s.x87.fip,
        last_dp: s.x87.fdp,
        mxcsr: s.mxcsr,
        ..Default::default()
    };
    f.ftwx = (0..8).fold(0u8, |t, i| {
        t | if (s.x87.ftw >> (2 * i)) & 3 != 3 {
            1 << i
        } else {
            0
        }
    });
    for (i, r) in s.x87.regs.iter().enumerate() {
        f.fpr[i][..10].copy_from_slice(&r.to_le_bytes()[..10]);
    }
    for (i, x) in s.xmm.iter().enumerate() {
        f.xmm[i] = x.to_le_bytes();
    }
    f
}

/// What one fallback did.
pub(super) enum Outcome {
    /// The instruction executed; the vCPU continues.
    Done,
    /// The CPU shut down (triple fault).
    Shutdown,
    /// The software CPU does not implement the instruction either.
    Unimplemented(x86_cpu::Unimplemented),
}

/// Executes the instruction at the vCPU's RIP in the software CPU and writes the state back.
pub(super) fn emulate_one(
    fd: &VcpuFd,
    regions: &[MemoryRegion],
    ops: &Arc<dyn VmOps>,
    cpuid: &[CpuidEntry],
) -> Result<Outcome> {
    let regs = fd.get_regs().map_err(ioctl_err("KVM_GET_REGS"))?;
    let mut sregs = fd.get_sregs().map_err(ioctl_err("KVM_GET_SREGS"))?;
    let fpu = fd.get_fpu().map_err(ioctl_err("KVM_GET_FPU"))?;
    let entries: Vec<kvm_msr_entry> = MSRS
        .iter()
        .map(|&index| kvm_msr_entry {
            index,
            ..Default::default()
        })
        .collect();
    let mut msrs = Msrs::from_entries(&entries).map_err(|_| crate::HypervisorError::Ioctl {
        op: "KVM_GET_MSRS",
        source: std::io::Error::from_raw_os_error(libc::E2BIG),
    })?;
    let got = fd.get_msrs(&mut msrs).map_err(ioctl_err("KVM_GET_MSRS"))?;

    // KVM's layout goes through the neutral types, the same path the emu engine uses.
    let mut state = CpuState::default();
    regs_into_state(&regs_from_kvm(&regs), &mut state);
    sregs_into_state(&sregs_from_kvm(&sregs), &mut state);
    fpu_into(&fpu, &mut state);
    for (slot, e) in msr_slots(&mut state)
        .into_iter()
        .zip(msrs.as_slice())
        .take(got)
    {
        *slot = e.data;
    }
    let before = state.clone();

    let mut cpu = Cpu::new(state);
    let mut bus = FallbackBus {
        regions,
        ops: ops.as_ref(),
        cpuid,
    };
    let exit = cpu.step(&mut bus);
    let after = &cpu.state;
    match exit {
        StepExit::Unimplemented(u) => return Ok(Outcome::Unimplemented(u)),
        StepExit::Shutdown => return Ok(Outcome::Shutdown),
        StepExit::Continue | StepExit::Halted => {}
    }

    fd.set_regs(&regs_to_kvm(&regs_from_state(after)))
        .map_err(ioctl_err("KVM_SET_REGS"))?;
    if (after.seg, after.ldtr, after.tr, after.gdtr, after.idtr)
        != (before.seg, before.ldtr, before.tr, before.gdtr, before.idtr)
        || (
            after.cr0, after.cr2, after.cr3, after.cr4, after.cr8, after.efer,
        ) != (
            before.cr0,
            before.cr2,
            before.cr3,
            before.cr4,
            before.cr8,
            before.efer,
        )
    {
        sregs_into_kvm(&sregs_from_state(after, sregs.apic_base), &mut sregs);
        fd.set_sregs(&sregs).map_err(ioctl_err("KVM_SET_SREGS"))?;
    }
    if (after.x87, after.xmm, after.mxcsr) != (before.x87, before.xmm, before.mxcsr) {
        fd.set_fpu(&fpu_from(after))
            .map_err(ioctl_err("KVM_SET_FPU"))?;
    }
    if after.msr != before.msr {
        let mut changed = after.clone();
        let values: Vec<u64> = msr_slots(&mut changed).into_iter().map(|v| *v).collect();
        let entries: Vec<kvm_msr_entry> = MSRS
            .iter()
            .zip(values)
            .take(got)
            .map(|(&index, data)| kvm_msr_entry {
                index,
                data,
                ..Default::default()
            })
            .collect();
        if let Ok(m) = Msrs::from_entries(&entries) {
            fd.set_msrs(&m).map_err(ioctl_err("KVM_SET_MSRS"))?;
        }
    }
    if after.halted {
        let halted = kvm_bindings::kvm_mp_state {
            mp_state: kvm_bindings::KVM_MP_STATE_HALTED,
        };
        fd.set_mp_state(halted)
            .map_err(ioctl_err("KVM_SET_MP_STATE"))?;
    }
    Ok(Outcome::Done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::kvm_regs;

    #[test]
    fn register_orders_survive_a_round_trip() {
        let r = kvm_regs {
            rax: 1,
            rbx: 2,
            rcx: 3,
            rdx: 4,
            rsi: 5,
            rdi: 6,
            rsp: 7,
            rbp: 8,
            r8: 9,
            r9: 10,
            r10: 11,
            r11: 12,
            r12: 13,
            r13: 14,
            r14: 15,
            r15: 16,
            rip: 17,
            rflags: 0x202,
        };
        let mut s = CpuState::default();
        regs_into_state(&regs_from_kvm(&r), &mut s);
        assert_eq!(&s.gpr[..8], &[1, 3, 4, 2, 7, 8, 5, 6]);
        let back = regs_to_kvm(&regs_from_state(&s));
        assert_eq!(
            (back.rax, back.rbx, back.rsp, back.rdi, back.r15, back.rip),
            (1, 2, 7, 6, 16, 17)
        );
    }

    #[test]
    fn fpu_state_survives_a_round_trip() {
        let mut f = kvm_fpu {
            fcw: 0x27f,
            fsw: 0x3800,
            ftwx: 0b1000_0001,
            mxcsr: 0x1fa0,
            ..Default::default()
        };
        f.fpr[7][..10].copy_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 0x40]);
        f.xmm[15] = [0xab; 16];
        let mut s = CpuState::default();
        fpu_into(&f, &mut s);
        assert_eq!(s.x87.ftw, 0x3ffc, "registers 0 and 7 valid, the rest empty");
        let back = fpu_from(&s);
        assert_eq!(
            (back.fcw, back.fsw, back.ftwx, back.mxcsr),
            (0x27f, 0x3800, 0b1000_0001, 0x1fa0)
        );
        assert_eq!(back.fpr[7], f.fpr[7]);
        assert_eq!(back.xmm[15], [0xab; 16]);
    }
}
