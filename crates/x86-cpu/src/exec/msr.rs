//! Model-specific registers and the fast system calls: `rdmsr`/`wrmsr` for the MSRs the CPU
//! owns (EFER, the SYSCALL and SYSENTER MSRs, the FS/GS bases, TSC, TSC_AUX, PAT, MISC_ENABLE and
//! the MTRRs), everything else forwarded to the bus; `syscall`/`sysret` and `sysenter`/`sysexit`.
//!
//! `syscall` from compatibility mode follows AMD (it enters 64-bit mode at CSTAR; Intel raises
//! #UD); outside long mode both `syscall` and `sysret` are #UD, as on Intel.

use iced_x86::{Instruction, Mnemonic};

use super::far::canonical;
use super::{Cpu, ExecResult, Flow};
use crate::bus::CpuBus;
use crate::fault::{Fault, Result};
use crate::state::rflags::{FIXED, IF, RF, VM};
use crate::state::{MTRR_FIXED, SegReg, Segment, bits};

/// MSR numbers.
pub(crate) mod index {
    pub const TSC: u32 = 0x10;
    pub const MTRR_CAP: u32 = 0xfe;
    pub const SYSENTER_CS: u32 = 0x174;
    pub const SYSENTER_ESP: u32 = 0x175;
    pub const SYSENTER_EIP: u32 = 0x176;
    pub const MISC_ENABLE: u32 = 0x1a0;
    pub const MTRR_PHYS_FIRST: u32 = 0x200;
    pub const MTRR_PHYS_LAST: u32 = 0x20f;
    pub const PAT: u32 = 0x277;
    pub const MTRR_DEF_TYPE: u32 = 0x2ff;
    pub const EFER: u32 = 0xc000_0080;
    pub const STAR: u32 = 0xc000_0081;
    pub const LSTAR: u32 = 0xc000_0082;
    pub const CSTAR: u32 = 0xc000_0083;
    pub const FMASK: u32 = 0xc000_0084;
    pub const FS_BASE: u32 = 0xc000_0100;
    pub const GS_BASE: u32 = 0xc000_0101;
    pub const KERNEL_GS_BASE: u32 = 0xc000_0102;
    pub const TSC_AUX: u32 = 0xc000_0103;
}

/// MTRRcap: 8 variable ranges, fixed ranges and write-combining supported.
const MTRR_CAP_VALUE: u64 = 0x508;

pub(crate) fn execute(
    cpu: &mut Cpu,
    bus: &mut dyn CpuBus,
    insn: &Instruction,
) -> Option<ExecResult> {
    Some(match insn.mnemonic() {
        Mnemonic::Rdmsr => rdmsr(cpu, bus),
        Mnemonic::Wrmsr => wrmsr(cpu, bus),
        Mnemonic::Syscall => syscall(cpu, insn),
        Mnemonic::Sysret | Mnemonic::Sysretq => sysret(cpu, insn.mnemonic() == Mnemonic::Sysretq),
        Mnemonic::Sysenter => sysenter(cpu),
        Mnemonic::Sysexit | Mnemonic::Sysexitq => {
            sysexit(cpu, insn.mnemonic() == Mnemonic::Sysexitq)
        }
        _ => return None,
    })
}

fn require_cpl0(cpu: &Cpu) -> Result<()> {
    if cpu.state.cpl() == 0 {
        Ok(())
    } else {
        Err(Fault::gp(0))
    }
}

fn rdmsr(cpu: &mut Cpu, bus: &mut dyn CpuBus) -> ExecResult {
    require_cpl0(cpu)?;
    let v = read_msr(cpu, bus, cpu.state.gpr[1] as u32)?;
    cpu.state.gpr[0] = v & 0xffff_ffff;
    cpu.state.gpr[2] = v >> 32;
    Ok(Flow::Next)
}

fn wrmsr(cpu: &mut Cpu, bus: &mut dyn CpuBus) -> ExecResult {
    require_cpl0(cpu)?;
    let v = (cpu.state.gpr[2] << 32) | (cpu.state.gpr[0] & 0xffff_ffff);
    write_msr(cpu, bus, cpu.state.gpr[1] as u32, v)?;
    Ok(Flow::Next)
}

fn fixed_mtrr(msr: u32) -> Option<usize> {
    MTRR_FIXED.iter().position(|&m| m == msr)
}

/// Reads MSR `msr`: the CPU's own, or the bus's (`None` from the bus is #GP(0)).
pub(crate) fn read_msr(cpu: &mut Cpu, bus: &mut dyn CpuBus, msr: u32) -> Result<u64> {
    use index::*;
    let m = &cpu.state.msr;
    Ok(match msr {
        TSC => bus.tsc().wrapping_add(m.tsc_offset),
        MTRR_CAP => MTRR_CAP_VALUE,
        SYSENTER_CS => m.sysenter_cs,
        SYSENTER_ESP => m.sysenter_esp,
        SYSENTER_EIP => m.sysenter_eip,
        MISC_ENABLE => m.misc_enable,
        MTRR_PHYS_FIRST..=MTRR_PHYS_LAST => m.mtrr_var[(msr - MTRR_PHYS_FIRST) as usize],
        PAT => m.pat,
        MTRR_DEF_TYPE => m.mtrr_def_type,
        EFER => cpu.state.efer,
        STAR => m.star,
        LSTAR => m.lstar,
        CSTAR => m.cstar,
        FMASK => m.sfmask,
        FS_BASE => cpu.state.seg(SegReg::Fs).base,
        GS_BASE => cpu.state.seg(SegReg::Gs).base,
        KERNEL_GS_BASE => m.kernel_gs_base,
        TSC_AUX => m.tsc_aux,
        _ => match fixed_mtrr(msr) {
            Some(i) => m.mtrr_fixed[i],
            None => bus.rdmsr(msr).ok_or(Fault::gp(0))?,
        },
    })
}

/// Writes MSR `msr` with the reserved-bit checks of the ones the CPU owns.
pub(crate) fn write_msr(cpu: &mut Cpu, bus: &mut dyn CpuBus, msr: u32, v: u64) -> Result<()> {
    use index::*;
    let gp = Err(Fault::gp(0));
    let need_canonical = matches!(
        msr,
        SYSENTER_ESP | SYSENTER_EIP | LSTAR | CSTAR | FS_BASE | GS_BASE | KERNEL_GS_BASE
    );
    if need_canonical && !canonical(v) {
        return gp;
    }
    let m = &mut cpu.state.msr;
    match msr {
        TSC => m.tsc_offset = v.wrapping_sub(bus.tsc()),
        MTRR_CAP => return gp,
        SYSENTER_CS => m.sysenter_cs = v,
        SYSENTER_ESP => m.sysenter_esp = v,
        SYSENTER_EIP => m.sysenter_eip = v,
        MISC_ENABLE => m.misc_enable = v,
        MTRR_PHYS_FIRST..=MTRR_PHYS_LAST => m.mtrr_var[(msr - MTRR_PHYS_FIRST) as usize] = v,
        PAT => {
            // Each of the eight entries must name a memory type: UC, WC, WT, WP, WB or UC-.
            if v.to_le_bytes().iter().any(|&t| !matches!(t, 0 | 1 | 4..=7)) {
                return gp;
            }
            m.pat = v;
        }
        MTRR_DEF_TYPE => {
            if v & !0xcff != 0 {
                return gp;
            }
            m.mtrr_def_type = v;
        }
        EFER => return write_efer(cpu, v),
        STAR => m.star = v,
        LSTAR => m.lstar = v,
        CSTAR => m.cstar = v,
        FMASK => m.sfmask = v & 0xffff_ffff,
        FS_BASE => cpu.state.seg[SegReg::Fs as usize].base = v,
        GS_BASE => cpu.state.seg[SegReg::Gs as usize].base = v,
        KERNEL_GS_BASE => m.kernel_gs_base = v,
        TSC_AUX => {
            if v >> 32 != 0 {
                return gp;
            }
            m.tsc_aux = v;
        }
        _ => match fixed_mtrr(msr) {
            Some(i) => m.mtrr_fixed[i] = v,
            None if bus.wrmsr(msr, v) => {}
            None => return gp,
        },
    }
    Ok(())
}

/// EFER: SCE, LME and NXE are writable, LMA is read-only (writes ignored); LME may not change
/// while paging is on.
fn write_efer(cpu: &mut Cpu, v: u64) -> Result<()> {
    let writable = bits::EFER_SCE | bits::EFER_LME | bits::EFER_NXE;
    let old = cpu.state.efer;
    if v & !(writable | bits::EFER_LMA) != 0 {
        return Err(Fault::gp(0));
    }
    if cpu.state.cr0 & bits::CR0_PG != 0 && (v ^ old) & bits::EFER_LME != 0 {
        return Err(Fault::gp(0));
    }
    let new = (v & writable) | (old & bits::EFER_LMA);
    if (new ^ old) & bits::EFER_NXE != 0 {
        cpu.tlb.flush(false);
    }
    cpu.state.efer = new;
    Ok(())
}

/// A flat 4 GiB code segment at `dpl`, 64-bit (`long`) or 32-bit.
pub(crate) fn flat_code(selector: u16, dpl: u8, long: bool) -> Segment {
    Segment {
        selector,
        base: 0,
        limit: u32::MAX,
        type_: 0xb,
        s: true,
        dpl,
        present: true,
        avl: false,
        l: long,
        db: !long,
        g: true,
        unusable: false,
    }
}

/// A flat 4 GiB writable stack segment at `dpl`.
pub(crate) fn flat_stack(selector: u16, dpl: u8) -> Segment {
    Segment {
        type_: 0x3,
        l: false,
        db: true,
        ..flat_code(selector, dpl, false)
    }
}

fn syscall(cpu: &mut Cpu, insn: &Instruction) -> ExecResult {
    let s = &mut cpu.state;
    if !s.long_mode() || s.efer & bits::EFER_SCE == 0 {
        return Err(Fault::ud().into());
    }
    let target = if s.code64() { s.msr.lstar } else { s.msr.cstar };
    s.gpr[1] = insn.next_ip();
    s.gpr[11] = s.rflags & !RF;
    s.rflags = (s.rflags & !s.msr.sfmask & !(RF | VM)) | FIXED;
    let sel = (s.msr.star >> 32) as u16;
    s.seg[SegReg::Cs as usize] = flat_code(sel & !3, 0, true);
    s.seg[SegReg::Ss as usize] = flat_stack(sel.wrapping_add(8), 0);
    s.rip = target;
    Ok(Flow::Jump)
}

fn sysret(cpu: &mut Cpu, to64: bool) -> ExecResult {
    let s = &mut cpu.state;
    if !s.code64() || s.efer & bits::EFER_SCE == 0 {
        return Err(Fault::ud().into());
    }
    if s.cpl() != 0 || (to64 && !canonical(s.gpr[1])) {
        return Err(Fault::gp(0).into());
    }
    let base = (s.msr.star >> 48) as u16;
    if to64 {
        s.seg[SegReg::Cs as usize] = flat_code(base.wrapping_add(16) | 3, 3, true);
        s.rip = s.gpr[1];
    } else {
        s.seg[SegReg::Cs as usize] = flat_code(base | 3, 3, false);
        s.rip = s.gpr[1] & 0xffff_ffff;
    }
    s.seg[SegReg::Ss as usize] = flat_stack(base.wrapping_add(8) | 3, 3);
    s.rflags = (s.gpr[11] & 0x3c_7fd7) | FIXED;
    Ok(Flow::Jump)
}

fn sysenter(cpu: &mut Cpu) -> ExecResult {
    let s = &mut cpu.state;
    let cs = (s.msr.sysenter_cs as u16) & !3;
    if !s.protected() || cs == 0 {
        return Err(Fault::gp(0).into());
    }
    let long = s.long_mode();
    s.rflags &= !(VM | IF | RF);
    s.seg[SegReg::Cs as usize] = flat_code(cs, 0, long);
    s.seg[SegReg::Ss as usize] = flat_stack(cs.wrapping_add(8), 0);
    let m = if long { u64::MAX } else { 0xffff_ffff };
    s.gpr[4] = s.msr.sysenter_esp & m;
    s.rip = s.msr.sysenter_eip & m;
    Ok(Flow::Jump)
}

fn sysexit(cpu: &mut Cpu, to64: bool) -> ExecResult {
    let s = &mut cpu.state;
    let cs = (s.msr.sysenter_cs as u16) & !3;
    if !s.protected() || s.v86() || cs == 0 || s.cpl() != 0 {
        return Err(Fault::gp(0).into());
    }
    if to64 {
        if !canonical(s.gpr[2]) || !canonical(s.gpr[1]) {
            return Err(Fault::gp(0).into());
        }
        s.seg[SegReg::Cs as usize] = flat_code(cs.wrapping_add(32) | 3, 3, true);
        s.seg[SegReg::Ss as usize] = flat_stack(cs.wrapping_add(40) | 3, 3);
        s.gpr[4] = s.gpr[1];
        s.rip = s.gpr[2];
    } else {
        s.seg[SegReg::Cs as usize] = flat_code(cs.wrapping_add(16) | 3, 3, false);
        s.seg[SegReg::Ss as usize] = flat_stack(cs.wrapping_add(24) | 3, 3);
        s.gpr[4] = s.gpr[1] & 0xffff_ffff;
        s.rip = s.gpr[2] & 0xffff_ffff;
    }
    Ok(Flow::Jump)
}

#[cfg(test)]
mod tests {
    use iced_x86::code_asm::*;

    use super::index;
    use crate::exec::system::fixtures::*;
    use crate::state::{SegReg, bits, rflags};
    use crate::testing::FlatBus;

    #[test]
    fn syscall_and_sysretq_round_trip_with_sfmask() {
        let mut bus = FlatBus::new(0x20_0000);
        let mut cpu = long_mode_system(&mut bus);
        let s = &mut cpu.state;
        s.efer |= bits::EFER_SCE;
        s.msr.star = (u64::from(UCODE32) << 48) | (u64::from(KCODE64) << 32);
        s.msr.lstar = 0x11000;
        s.msr.sfmask = rflags::IF | rflags::DF | rflags::TF;
        s.seg[SegReg::Cs as usize] = seg(&bus, UCODE64);
        s.seg[SegReg::Ss as usize] = seg(&bus, UDATA);
        s.rflags = rflags::FIXED | rflags::IF | rflags::DF | rflags::CF;
        code(&mut bus, 64, 0x10000, |a| {
            a.syscall()?;
            a.hlt()
        });
        code(&mut bus, 64, 0x11000, |a| {
            a.mov(rax, 42u64)?;
            a.sysretq()
        });
        steps(&mut cpu, &mut bus, 1);
        let s = &cpu.state;
        assert_eq!((s.cpl(), s.rip, s.gpr[1]), (0, 0x11000, 0x10002));
        assert_eq!(
            s.gpr[11],
            rflags::FIXED | rflags::IF | rflags::DF | rflags::CF
        );
        assert_eq!(
            s.rflags,
            rflags::FIXED | rflags::CF,
            "SFMASK cleared IF and DF"
        );
        assert_eq!(
            (s.seg(SegReg::Cs).selector, s.seg(SegReg::Ss).selector),
            (KCODE64, KDATA)
        );
        steps(&mut cpu, &mut bus, 2);
        let s = &cpu.state;
        assert_eq!((s.cpl(), s.rip, s.gpr[0]), (3, 0x10002, 42));
        assert!(s.code64());
        assert_eq!(
            (s.seg(SegReg::Cs).selector, s.seg(SegReg::Ss).selector),
            (UCODE64, UDATA)
        );
        assert_eq!(
            s.rflags,
            rflags::FIXED | rflags::IF | rflags::DF | rflags::CF
        );
    }

    #[test]
    fn sysretq_to_a_non_canonical_rip_is_gp_and_syscall_needs_sce() {
        let mut bus = FlatBus::new(0x20_0000);
        let mut cpu = long_mode_system(&mut bus);
        gate64(&mut bus, 6, 0x12000, 0, 0);
        gate64(&mut bus, 13, 0x13000, 0, 0);
        code(&mut bus, 64, 0x10000, |a| a.syscall());
        steps(&mut cpu, &mut bus, 1);
        assert_eq!(cpu.state.rip, 0x12000, "#UD without EFER.SCE");
        let mut cpu = long_mode_system(&mut bus);
        cpu.state.efer |= bits::EFER_SCE;
        cpu.state.gpr[1] = 0x0000_8000_0000_0000;
        code(&mut bus, 64, 0x10000, |a| a.sysretq());
        steps(&mut cpu, &mut bus, 1);
        assert_eq!(cpu.state.rip, 0x13000, "#GP on a non-canonical RCX");
        assert_eq!(cpu.state.cpl(), 0);
    }

    #[test]
    fn efer_rules_and_owned_msrs() {
        let mut bus = FlatBus::new(0x20_0000);
        let mut cpu = long_mode_system(&mut bus);
        let gp = Err(crate::Fault::gp(0));
        // LME may not change while paging is on; LMA writes are ignored.
        assert_eq!(super::write_msr(&mut cpu, &mut bus, index::EFER, 0), gp);
        assert_eq!(
            super::write_msr(
                &mut cpu,
                &mut bus,
                index::EFER,
                bits::EFER_LME | bits::EFER_NXE
            ),
            Ok(())
        );
        assert_eq!(
            cpu.state.efer,
            bits::EFER_LME | bits::EFER_LMA | bits::EFER_NXE
        );
        assert_eq!(super::write_msr(&mut cpu, &mut bus, index::PAT, 0x0202), gp);
        assert_eq!(
            super::write_msr(&mut cpu, &mut bus, index::LSTAR, 1 << 60),
            gp
        );
        super::write_msr(&mut cpu, &mut bus, 0x250, 0x0606_0606_0606_0606).unwrap();
        super::write_msr(&mut cpu, &mut bus, 0x201, 0xf_f000_0800).unwrap();
        assert_eq!(
            super::read_msr(&mut cpu, &mut bus, 0x250),
            Ok(0x0606_0606_0606_0606)
        );
        assert_eq!(
            super::read_msr(&mut cpu, &mut bus, 0x201),
            Ok(0xf_f000_0800)
        );
        super::write_msr(&mut cpu, &mut bus, index::GS_BASE, 0x7000).unwrap();
        assert_eq!(cpu.state.seg(SegReg::Gs).base, 0x7000);
        // The APIC base is the bus's; this bus has none.
        assert_eq!(
            super::read_msr(&mut cpu, &mut bus, 0x1b),
            Err(crate::Fault::gp(0))
        );
    }

    #[test]
    fn sysenter_and_sysexit_in_32_bit_protected_mode() {
        let mut bus = FlatBus::new(0x20_0000);
        let mut cpu = protected32(&mut bus);
        cpu.state.msr.sysenter_cs = u64::from(KCODE32);
        cpu.state.msr.sysenter_esp = 0x30000;
        cpu.state.msr.sysenter_eip = 0x11000;
        cpu.state.seg[SegReg::Cs as usize] = seg(&bus, UCODE32);
        cpu.state.seg[SegReg::Ss as usize] = seg(&bus, UDATA);
        cpu.state.rflags |= rflags::IF;
        code(&mut bus, 32, 0x10000, |a| a.sysenter());
        code(&mut bus, 32, 0x11000, |a| {
            a.mov(ecx, 0x20000)?;
            a.mov(edx, 0x10002)?;
            a.sysexit()
        });
        steps(&mut cpu, &mut bus, 1);
        let s = &cpu.state;
        assert_eq!((s.cpl(), s.rip, s.gpr[4]), (0, 0x11000, 0x30000));
        assert_eq!(s.rflags & rflags::IF, 0);
        steps(&mut cpu, &mut bus, 3);
        let s = &cpu.state;
        assert_eq!((s.cpl(), s.rip, s.gpr[4]), (3, 0x10002, 0x20000));
        assert_eq!(
            (s.seg(SegReg::Cs).selector, s.seg(SegReg::Ss).selector),
            (KCODE32 + 16 + 3, KCODE32 + 24 + 3)
        );
    }
}
