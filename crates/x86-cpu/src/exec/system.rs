//! System instructions: control and debug registers, the descriptor-table registers,
//! `lmsw`/`smsw`/`clts`, TLB and cache maintenance, the time-stamp counter, `swapgs` and the
//! FS/GS base instructions, XCR0, `monitor`/`mwait`, `clac`/`stac` and the undefined opcodes.
//!
//! Segment loads and descriptor instructions live in `segment.rs`, far transfers and the flags
//! instructions in `far.rs`, MSRs and the fast system calls in `msr.rs`.
//!
//! TLB rules: a CR3 write drops the non-global translations (unless PCIDE and bit 63 ask to
//! keep them); changes of CR0.PG/WP/PE, CR4.PGE/PAE/PSE/PCIDE/SMEP/SMAP and EFER.NXE drop
//! everything; `invpcid` flushes per its type without tracking PCIDs (a single-context flush
//! drops every non-global translation).
//!
//! Not modelled: debug-register breakpoints and DR7.GD (the registers are stored only),
//! CR4.VME/PVI (stored; virtual-8086 mode behaves as without them). `monitor` and `mwait` are
//! hints: `mwait` returns at once, as a spurious wake-up would (#UD above CPL 0).

use iced_x86::{Code, Instruction, Mnemonic, OpKind, Register};

use super::far::canonical;
use super::segment::umip;
use super::{Cpu, ExecResult, Flow};
use crate::bus::CpuBus;
use crate::fault::{Fault, Result};
use crate::state::{SegReg, bits, rflags};

pub(crate) fn execute(
    cpu: &mut Cpu,
    bus: &mut dyn CpuBus,
    insn: &Instruction,
) -> Option<ExecResult> {
    let control = |i: u32| {
        insn.op_kind(i) == OpKind::Register && {
            let r = insn.op_register(i);
            r.is_cr() || r.is_dr()
        }
    };
    Some(match insn.mnemonic() {
        Mnemonic::Mov if insn.op_count() == 2 && (control(0) || control(1)) => {
            move_control(cpu, insn)
        }
        Mnemonic::Lgdt | Mnemonic::Lidt => load_table(cpu, bus, insn),
        Mnemonic::Sgdt | Mnemonic::Sidt => store_table(cpu, bus, insn),
        Mnemonic::Clts => require_cpl0(cpu)
            .map(|()| {
                cpu.state.cr0 &= !bits::CR0_TS;
                Flow::Next
            })
            .map_err(Into::into),
        Mnemonic::Lmsw => lmsw(cpu, bus, insn),
        Mnemonic::Smsw => umip(cpu)
            .and_then(|()| cpu.write_op(bus, insn, 0, cpu.state.cr0))
            .map(|()| Flow::Next)
            .map_err(Into::into),
        Mnemonic::Invlpg => invlpg(cpu, insn),
        Mnemonic::Invpcid => invpcid(cpu, bus, insn),
        Mnemonic::Wbinvd | Mnemonic::Invd | Mnemonic::Wbnoinvd => {
            require_cpl0(cpu).map(|()| Flow::Next).map_err(Into::into)
        }
        Mnemonic::Clflush | Mnemonic::Clflushopt | Mnemonic::Clwb => {
            // No caches to write back; only the address checks remain.
            let (seg, off) = (cpu.mem_seg(insn), cpu.ea(insn));
            cpu.linear(seg, off, 1, false)
                .map(|_| Flow::Next)
                .map_err(Into::into)
        }
        Mnemonic::Serialize => Ok(Flow::Next),
        Mnemonic::Rdtsc | Mnemonic::Rdtscp => rdtsc(cpu, bus, insn.mnemonic() == Mnemonic::Rdtscp),
        Mnemonic::Rdpid => {
            let aux = cpu.state.msr.tsc_aux;
            cpu.set_reg(insn.op0_register(), aux);
            Ok(Flow::Next)
        }
        Mnemonic::Swapgs => swapgs(cpu),
        Mnemonic::Rdfsbase | Mnemonic::Rdgsbase | Mnemonic::Wrfsbase | Mnemonic::Wrgsbase => {
            fs_gs_base(cpu, insn)
        }
        Mnemonic::Xgetbv => xgetbv(cpu),
        Mnemonic::Xsetbv => xsetbv(cpu, bus),
        Mnemonic::Monitor | Mnemonic::Mwait | Mnemonic::Monitorx | Mnemonic::Mwaitx => {
            if cpu.state.cpl() == 0 {
                Ok(Flow::Next)
            } else {
                Err(Fault::ud().into())
            }
        }
        Mnemonic::Clac | Mnemonic::Stac => {
            if cpu.state.cpl() != 0 {
                Err(Fault::ud().into())
            } else {
                if insn.mnemonic() == Mnemonic::Stac {
                    cpu.state.rflags |= rflags::AC;
                } else {
                    cpu.state.rflags &= !rflags::AC;
                }
                Ok(Flow::Next)
            }
        }
        Mnemonic::Ud0 | Mnemonic::Ud1 | Mnemonic::Ud2 => Err(Fault::ud().into()),
        _ => return None,
    })
}

/// #GP(0) above CPL 0 (and in virtual-8086 mode).
pub(crate) fn require_cpl0(cpu: &Cpu) -> Result<()> {
    if cpu.state.cpl() == 0 {
        Ok(())
    } else {
        Err(Fault::gp(0))
    }
}

/// `mov` to or from a control or debug register.
fn move_control(cpu: &mut Cpu, insn: &Instruction) -> ExecResult {
    require_cpl0(cpu)?;
    let (dst, src) = (insn.op0_register(), insn.op1_register());
    if dst.is_cr() {
        write_cr(cpu, dst as usize - Register::CR0 as usize, cpu.reg(src))?;
    } else if dst.is_dr() {
        write_dr(cpu, dst as usize - Register::DR0 as usize, cpu.reg(src))?;
    } else if src.is_cr() {
        let v = read_cr(cpu, src as usize - Register::CR0 as usize)?;
        cpu.set_reg(dst, v);
    } else {
        let v = read_dr(cpu, src as usize - Register::DR0 as usize)?;
        cpu.set_reg(dst, v);
    }
    Ok(Flow::Next)
}

fn read_cr(cpu: &Cpu, n: usize) -> Result<u64> {
    let s = &cpu.state;
    Ok(match n {
        0 => s.cr0,
        2 => s.cr2,
        3 => s.cr3,
        4 => s.cr4,
        8 => s.cr8,
        _ => return Err(Fault::ud()),
    })
}

/// The CR0 bits that exist: PE MP EM TS ET NE WP AM NW CD PG.
const CR0_DEFINED: u64 = 0xe005_003f;
/// The CR4 bits this CPU supports (LA57, VMXE, SMXE, PKE, CET and the rest are reserved).
const CR4_SUPPORTED: u64 = bits::CR4_VME
    | bits::CR4_PVI
    | bits::CR4_TSD
    | bits::CR4_DE
    | bits::CR4_PSE
    | bits::CR4_PAE
    | bits::CR4_MCE
    | bits::CR4_PGE
    | bits::CR4_PCE
    | bits::CR4_OSFXSR
    | bits::CR4_OSXMMEXCPT
    | bits::CR4_UMIP
    | bits::CR4_FSGSBASE
    | bits::CR4_PCIDE
    | bits::CR4_OSXSAVE
    | bits::CR4_SMEP
    | bits::CR4_SMAP;

/// Writes control register `n` with the architectural checks and TLB effects.
pub(crate) fn write_cr(cpu: &mut Cpu, n: usize, v: u64) -> Result<()> {
    let gp = Err(Fault::gp(0));
    match n {
        0 => {
            if v >> 32 != 0 {
                return gp;
            }
            let v = (v & CR0_DEFINED) | bits::CR0_ET;
            let old = cpu.state.cr0;
            if (v & bits::CR0_PG != 0 && v & bits::CR0_PE == 0)
                || (v & bits::CR0_NW != 0 && v & bits::CR0_CD == 0)
            {
                return gp;
            }
            let paging_on = old & bits::CR0_PG == 0 && v & bits::CR0_PG != 0;
            let paging_off = old & bits::CR0_PG != 0 && v & bits::CR0_PG == 0;
            let lme = cpu.state.efer & bits::EFER_LME != 0;
            if paging_on && lme {
                // Entering long mode needs PAE and leaves the CPU in compatibility mode.
                if cpu.state.cr4 & bits::CR4_PAE == 0 || cpu.state.seg(SegReg::Cs).l {
                    return gp;
                }
                cpu.state.efer |= bits::EFER_LMA;
            }
            if paging_off && cpu.state.long_mode() {
                // Long mode is left from compatibility mode only.
                if cpu.state.code64() {
                    return gp;
                }
                cpu.state.efer &= !bits::EFER_LMA;
            }
            cpu.state.cr0 = v;
            if (old ^ v) & (bits::CR0_PG | bits::CR0_WP | bits::CR0_PE) != 0 {
                cpu.tlb.flush(false);
            }
        }
        2 => cpu.state.cr2 = v,
        3 => {
            let pcide = cpu.state.cr4 & bits::CR4_PCIDE != 0;
            let keep = pcide && v >> 63 != 0;
            let v = if pcide { v & !(1 << 63) } else { v };
            if cpu.state.long_mode() && v >> 52 != 0 {
                return gp;
            }
            cpu.state.cr3 = if cpu.state.long_mode() {
                v
            } else {
                v & 0xffff_ffff
            };
            if !keep {
                cpu.tlb.flush(true);
            }
        }
        4 => {
            let old = cpu.state.cr4;
            if v & !CR4_SUPPORTED != 0
                || (cpu.state.long_mode() && v & bits::CR4_PAE == 0)
                || (old & bits::CR4_PCIDE == 0
                    && v & bits::CR4_PCIDE != 0
                    && (!cpu.state.long_mode() || cpu.state.cr3 & 0xfff != 0))
            {
                return gp;
            }
            cpu.state.cr4 = v;
            let flush = bits::CR4_PGE
                | bits::CR4_PAE
                | bits::CR4_PSE
                | bits::CR4_PCIDE
                | bits::CR4_SMEP
                | bits::CR4_SMAP;
            if (old ^ v) & flush != 0 {
                cpu.tlb.flush(false);
            }
        }
        // CR8 is the TPR; the local APIC reads it from `CpuState::cr8`.
        8 => {
            if v & !0xf != 0 {
                return gp;
            }
            cpu.state.cr8 = v;
        }
        _ => return Err(Fault::ud()),
    }
    Ok(())
}

/// DR4 and DR5 alias DR6 and DR7 unless CR4.DE makes them undefined.
fn dr_index(cpu: &Cpu, n: usize) -> Result<usize> {
    match n {
        4 | 5 if cpu.state.cr4 & bits::CR4_DE != 0 => Err(Fault::ud()),
        4 | 5 => Ok(n + 2),
        0..=7 => Ok(n),
        _ => Err(Fault::ud()),
    }
}

fn read_dr(cpu: &Cpu, n: usize) -> Result<u64> {
    Ok(cpu.state.dr[dr_index(cpu, n)?])
}

fn write_dr(cpu: &mut Cpu, n: usize, v: u64) -> Result<()> {
    let n = dr_index(cpu, n)?;
    if n >= 6 && v >> 32 != 0 {
        return Err(Fault::gp(0));
    }
    cpu.state.dr[n] = match n {
        6 => (v & 0xe00f) | 0xffff_0ff0,
        7 => (v & 0xffff_2bff) | 0x400,
        _ => v,
    };
    Ok(())
}

fn lmsw(cpu: &mut Cpu, bus: &mut dyn CpuBus, insn: &Instruction) -> ExecResult {
    require_cpl0(cpu)?;
    let v = cpu.read_op(bus, insn, 0)? & 0xf;
    // LMSW sets PE but never clears it.
    let cr0 = cpu.state.cr0;
    cpu.state.cr0 = (cr0 & !0xf) | v | (cr0 & bits::CR0_PE);
    Ok(Flow::Next)
}

/// `lgdt`/`lidt`: a 16-bit limit then a 24-, 32- or 64-bit base.
fn load_table(cpu: &mut Cpu, bus: &mut dyn CpuBus, insn: &Instruction) -> ExecResult {
    require_cpl0(cpu)?;
    if insn.op0_kind() != OpKind::Memory {
        return Err(Fault::ud().into());
    }
    let (seg, off) = (cpu.mem_seg(insn), cpu.ea(insn));
    let limit = cpu.read_mem(bus, seg, off, 2)? as u16;
    let base = match insn.code() {
        Code::Lgdt_m1664 | Code::Lidt_m1664 => {
            let b = cpu.read_mem(bus, seg, off.wrapping_add(2), 8)?;
            if !canonical(b) {
                return Err(Fault::gp(0).into());
            }
            b
        }
        Code::Lgdt_m1632_16 | Code::Lidt_m1632_16 => {
            cpu.read_mem(bus, seg, off.wrapping_add(2), 4)? & 0xff_ffff
        }
        _ => cpu.read_mem(bus, seg, off.wrapping_add(2), 4)?,
    };
    let table = crate::state::DescriptorTable { base, limit };
    if insn.mnemonic() == Mnemonic::Lgdt {
        cpu.state.gdtr = table;
    } else {
        cpu.state.idtr = table;
    }
    Ok(Flow::Next)
}

/// `sgdt`/`sidt`: the limit, then a 32-bit base (64-bit in 64-bit mode).
fn store_table(cpu: &mut Cpu, bus: &mut dyn CpuBus, insn: &Instruction) -> ExecResult {
    umip(cpu)?;
    if insn.op0_kind() != OpKind::Memory {
        return Err(Fault::ud().into());
    }
    let table = if insn.mnemonic() == Mnemonic::Sgdt {
        cpu.state.gdtr
    } else {
        cpu.state.idtr
    };
    let (seg, off) = (cpu.mem_seg(insn), cpu.ea(insn));
    let base_size = if cpu.state.code64() { 8 } else { 4 };
    // Check both parts before writing either.
    cpu.linear(seg, off, 2 + base_size, true)?;
    cpu.write_mem(bus, seg, off, 2, u64::from(table.limit))?;
    cpu.write_mem(bus, seg, off.wrapping_add(2), base_size, table.base)?;
    Ok(Flow::Next)
}

fn invlpg(cpu: &mut Cpu, insn: &Instruction) -> ExecResult {
    require_cpl0(cpu)?;
    let seg = cpu.mem_seg(insn);
    let off = cpu.ea(insn);
    let base = if cpu.state.code64() && !matches!(seg, SegReg::Fs | SegReg::Gs) {
        0
    } else {
        cpu.state.seg(seg).base
    };
    let mut linear = base.wrapping_add(off);
    if !cpu.state.code64() {
        linear &= 0xffff_ffff;
    }
    cpu.tlb.flush_page(linear);
    Ok(Flow::Next)
}

/// `invpcid`: PCIDs are not tracked, so every type flushes at least what it names.
fn invpcid(cpu: &mut Cpu, bus: &mut dyn CpuBus, insn: &Instruction) -> ExecResult {
    require_cpl0(cpu)?;
    let kind = cpu.reg(insn.op0_register());
    let (seg, off) = (cpu.mem_seg(insn), cpu.ea(insn));
    let pcid = cpu.read_mem(bus, seg, off, 8)?;
    let addr = cpu.read_mem(bus, seg, off.wrapping_add(8), 8)?;
    if pcid >> 12 != 0 {
        return Err(Fault::gp(0).into());
    }
    match kind {
        0 if !canonical(addr) => return Err(Fault::gp(0).into()),
        0 => cpu.tlb.flush_page(addr),
        1 | 3 => cpu.tlb.flush(true),
        2 => cpu.tlb.flush(false),
        _ => return Err(Fault::gp(0).into()),
    }
    Ok(Flow::Next)
}

fn rdtsc(cpu: &mut Cpu, bus: &mut dyn CpuBus, with_aux: bool) -> ExecResult {
    if cpu.state.cr4 & bits::CR4_TSD != 0 && cpu.state.cpl() > 0 {
        return Err(Fault::gp(0).into());
    }
    let tsc = bus.tsc().wrapping_add(cpu.state.msr.tsc_offset);
    cpu.state.gpr[0] = tsc & 0xffff_ffff;
    cpu.state.gpr[2] = tsc >> 32;
    if with_aux {
        cpu.state.gpr[1] = cpu.state.msr.tsc_aux & 0xffff_ffff;
    }
    Ok(Flow::Next)
}

fn swapgs(cpu: &mut Cpu) -> ExecResult {
    if !cpu.state.code64() {
        return Err(Fault::ud().into());
    }
    require_cpl0(cpu)?;
    let s = &mut cpu.state;
    std::mem::swap(
        &mut s.seg[SegReg::Gs as usize].base,
        &mut s.msr.kernel_gs_base,
    );
    Ok(Flow::Next)
}

fn fs_gs_base(cpu: &mut Cpu, insn: &Instruction) -> ExecResult {
    if !cpu.state.code64() || cpu.state.cr4 & bits::CR4_FSGSBASE == 0 {
        return Err(Fault::ud().into());
    }
    let seg = match insn.mnemonic() {
        Mnemonic::Rdfsbase | Mnemonic::Wrfsbase => SegReg::Fs,
        _ => SegReg::Gs,
    };
    let reg = insn.op0_register();
    if matches!(insn.mnemonic(), Mnemonic::Rdfsbase | Mnemonic::Rdgsbase) {
        let base = cpu.state.seg(seg).base;
        cpu.set_reg(reg, base);
    } else {
        let v = cpu.reg(reg);
        if !canonical(v) {
            return Err(Fault::gp(0).into());
        }
        cpu.state.seg[seg as usize].base = v;
    }
    Ok(Flow::Next)
}

fn xgetbv(cpu: &mut Cpu) -> ExecResult {
    if cpu.state.cr4 & bits::CR4_OSXSAVE == 0 {
        return Err(Fault::ud().into());
    }
    // XCR1 (XINUSE) may report every enabled component as in use.
    let v = match cpu.state.gpr[1] as u32 {
        0 | 1 => cpu.state.xcr0,
        _ => return Err(Fault::gp(0).into()),
    };
    cpu.state.gpr[0] = v & 0xffff_ffff;
    cpu.state.gpr[2] = v >> 32;
    Ok(Flow::Next)
}

/// XCR0 components: x87, SSE, AVX, the MPX pair and the AVX-512 triple.
const XCR0_X87: u64 = 1;
const XCR0_SSE: u64 = 2;
const XCR0_AVX: u64 = 4;
const XCR0_MPX: u64 = 0x18;
const XCR0_AVX512: u64 = 0xe0;

fn xsetbv(cpu: &mut Cpu, bus: &mut dyn CpuBus) -> ExecResult {
    if cpu.state.cr4 & bits::CR4_OSXSAVE == 0 {
        return Err(Fault::ud().into());
    }
    require_cpl0(cpu)?;
    let v = (cpu.state.gpr[2] << 32) | (cpu.state.gpr[0] & 0xffff_ffff);
    // The components CPUID leaf 0xd reports as supported (x87 always).
    let supported = if bus.cpuid(0, 0)[0] >= 0xd {
        let [eax, _, _, edx] = bus.cpuid(0xd, 0);
        u64::from(eax) | (u64::from(edx) << 32) | XCR0_X87
    } else {
        XCR0_X87
    };
    let partial = |group: u64| v & group != 0 && v & group != group;
    let invalid = cpu.state.gpr[1] as u32 != 0
        || v & XCR0_X87 == 0
        || v & !supported != 0
        || (v & XCR0_AVX != 0 && v & XCR0_SSE == 0)
        || partial(XCR0_MPX)
        || partial(XCR0_AVX512)
        || (v & XCR0_AVX512 != 0 && v & XCR0_AVX == 0);
    if invalid {
        return Err(Fault::gp(0).into());
    }
    cpu.state.xcr0 = v;
    Ok(Flow::Next)
}

/// Machines for the system-family tests.
#[cfg(test)]
pub(crate) mod fixtures;

#[cfg(test)]
mod tests {
    use iced_x86::code_asm::*;

    use super::fixtures::*;
    use crate::state::{SegReg, bits, rflags};
    use crate::testing::FlatBus;

    #[test]
    fn boot_stub_goes_from_real_mode_through_protected_mode_to_long_mode() {
        let mut bus = FlatBus::new(0x20_0000);
        let mut cpu = real_mode();
        write_gdt(&mut bus, 0x9);
        // The GDT pseudo-descriptor, and page tables identity-mapping the first 2 MiB.
        bus.write(0x500, &GDT_LIMIT.to_le_bytes());
        bus.write_u32(0x502, GDT as u32);
        bus.write_u64(0x1000, 0x2003);
        bus.write_u64(0x2000, 0x3003);
        bus.write_u64(0x3000, 0x83);
        code(&mut bus, 16, 0x7c00, |a| {
            a.cli()?;
            a.lgdt(ptr(0x500))?;
            a.mov(eax, cr0)?;
            a.or(eax, 1)?;
            a.mov(cr0, eax)?;
            a.jmp_far(KCODE32, 0x7d00)
        });
        code(&mut bus, 32, 0x7d00, |a| {
            a.mov(ax, KDATA as u32)?;
            a.mov(ds, ax)?;
            a.mov(ss, ax)?;
            a.mov(esp, 0x7000)?;
            a.mov(eax, cr4)?;
            a.or(eax, 0x20)?;
            a.mov(cr4, eax)?;
            a.mov(eax, 0x1000)?;
            a.mov(cr3, eax)?;
            a.mov(ecx, 0xc000_0080u32)?;
            a.rdmsr()?;
            a.or(eax, 0x100)?;
            a.wrmsr()?;
            a.mov(eax, cr0)?;
            a.or(eax, 0x8000_0000u32 as i32)?;
            a.mov(cr0, eax)?;
            a.jmp_far(KCODE64, 0x7e00)
        });
        code(&mut bus, 64, 0x7e00, |a| {
            a.mov(rax, 0x1_2345_6789u64)?;
            a.push(rax)?;
            a.hlt()
        });
        run_to_hlt(&mut cpu, &mut bus, 40);
        let s = &cpu.state;
        assert!(s.code64(), "64-bit code");
        assert_eq!(s.efer & bits::EFER_LMA, bits::EFER_LMA);
        assert_eq!(s.seg(SegReg::Cs).selector, KCODE64);
        assert_eq!(s.gpr[0], 0x1_2345_6789);
        assert_eq!(
            bus.read_u64(0x7000 - 8),
            0x1_2345_6789,
            "pushed on the 64-bit stack"
        );
        // The GDT entries the CPU loaded are marked accessed.
        assert_ne!(bus.read_u64(GDT + u64::from(KCODE32)) & (1 << 40), 0);
    }

    #[test]
    fn unknown_msr_read_raises_gp_through_the_idt() {
        let mut bus = FlatBus::new(0x20_0000);
        let mut cpu = long_mode_system(&mut bus);
        gate64(&mut bus, 13, 0x12000, 0, 0);
        code(&mut bus, 64, 0x10000, |a| {
            a.mov(ecx, 0x1234_5678)?;
            a.rdmsr()
        });
        steps(&mut cpu, &mut bus, 2);
        assert_eq!(cpu.state.rip, 0x12000);
        let top = cpu.state.gpr[4];
        assert_eq!(bus.read_u64(top), 0, "error code");
        assert_eq!(bus.read_u64(top + 8), 0x10005, "return RIP is the rdmsr");
        assert_ne!(
            bus.read_u64(top + 24) & rflags::RF,
            0,
            "RF in a fault's frame"
        );
    }

    #[test]
    fn mov_cr3_flushes_non_global_translations() {
        let mut bus = FlatBus::new(0x20_0000);
        let mut cpu = long_mode_system(&mut bus);
        // Two address spaces that both map linear 0x20_0000 (4 KiB page) differently.
        bus.write_u64(0x3000 + 8, 0x4000 | 3);
        bus.write_u64(0x4000, 0x50000 | 3);
        bus.write_u64(0x4000 + 8, 0x51000 | 3 | 0x100);
        bus.write_u64(0x20000, 0x21000 | 3);
        bus.write_u64(0x21000, 0x22000 | 3);
        bus.write_u64(0x22000, 0x87);
        bus.write_u64(0x22000 + 8, 0x23000 | 3);
        bus.write_u64(0x23000, 0x60000 | 3);
        bus.write_u64(0x23000 + 8, 0x61000 | 3 | 0x100);
        bus.write_u64(0x50000, 0x1111);
        bus.write_u64(0x60000, 0x2222);
        bus.write_u64(0x51000, 0x3333);
        bus.write_u64(0x61000, 0x4444);
        cpu.state.cr4 |= bits::CR4_PGE;
        code(&mut bus, 64, 0x10000, |a| {
            a.mov(rax, qword_ptr(0x20_0000))?;
            a.mov(rdx, qword_ptr(0x20_1000))?;
            a.mov(rbx, 0x20000u64)?;
            a.mov(cr3, rbx)?;
            a.mov(rcx, qword_ptr(0x20_0000))?;
            a.mov(rsi, qword_ptr(0x20_1000))
        });
        steps(&mut cpu, &mut bus, 6);
        assert_eq!(cpu.state.gpr[0], 0x1111);
        assert_eq!(
            cpu.state.gpr[1], 0x2222,
            "the CR3 write dropped the old translation"
        );
        assert_eq!(
            cpu.state.gpr[6], 0x3333,
            "a global page survives the CR3 write"
        );
    }

    #[test]
    fn invlpg_anywhere_in_a_large_page_drops_all_of_it() {
        let mut bus = FlatBus::new(0x40_0000);
        let mut cpu = long_mode_system(&mut bus);
        gate64(&mut bus, 14, 0x12000, 0, 0);
        bus.write_u64(0x3000 + 8, 0x20_0000 | 0x83);
        bus.write_u64(0x2f_f000, 0x5555);
        code(&mut bus, 64, 0x10000, |a| {
            a.mov(rax, qword_ptr(0x2f_f000))?;
            a.invlpg(ptr(0x20_0000))?;
            a.mov(rcx, qword_ptr(0x2f_f000))
        });
        steps(&mut cpu, &mut bus, 1);
        assert_eq!(cpu.state.gpr[0], 0x5555);
        bus.write_u64(0x3000 + 8, 0);
        steps(&mut cpu, &mut bus, 2);
        assert_eq!((cpu.state.rip, cpu.state.cr2), (0x12000, 0x2f_f000));
    }

    #[test]
    fn invalid_control_register_values_raise_gp() {
        let mut bus = FlatBus::new(0x20_0000);
        let mut cpu = long_mode_system(&mut bus);
        use super::write_cr;
        let gp = Err(crate::Fault::gp(0));
        assert_eq!(write_cr(&mut cpu, 4, bits::CR4_LA57 | bits::CR4_PAE), gp);
        assert_eq!(
            write_cr(&mut cpu, 4, 0),
            gp,
            "PAE may not go off in long mode"
        );
        assert_eq!(write_cr(&mut cpu, 0, bits::CR0_PG | bits::CR0_ET), gp);
        let old = cpu.state.cr0;
        assert_eq!(write_cr(&mut cpu, 0, 1 << 32 | old), gp);
        assert_eq!(
            write_cr(&mut cpu, 0, bits::CR0_PE),
            gp,
            "paging may not go off in 64-bit code"
        );
        assert_eq!(write_cr(&mut cpu, 8, 0x10), gp);
        assert_eq!(write_cr(&mut cpu, 8, 0xf), Ok(()));
        assert_eq!(cpu.state.cr8, 0xf);
        assert_eq!(
            write_cr(&mut cpu, 1, 0),
            Err(crate::Fault::ud()),
            "CR1 does not exist"
        );
    }

    #[test]
    fn control_registers_fault_above_cpl0_and_sgdt_honours_umip() {
        let mut bus = FlatBus::new(0x20_0000);
        let mut cpu = long_mode_system(&mut bus);
        gate64(&mut bus, 13, 0x12000, 0, 0);
        cpu.state.seg[SegReg::Cs as usize] = seg(&bus, UCODE64);
        cpu.state.seg[SegReg::Ss as usize] = seg(&bus, UDATA);
        code(&mut bus, 64, 0x10000, |a| {
            a.sgdt(ptr(0x20000))?;
            a.mov(rax, cr0)
        });
        steps(&mut cpu, &mut bus, 1);
        assert_eq!(
            bus.read_u64(0x20002),
            GDT,
            "sgdt works at CPL 3 without UMIP"
        );
        assert_eq!(bus.mem[0x20000], GDT_LIMIT as u8);
        steps(&mut cpu, &mut bus, 1);
        assert_eq!(cpu.state.rip, 0x12000, "mov from CR0 at CPL 3 is #GP");
        let mut cpu = long_mode_system(&mut bus);
        cpu.state.cr4 |= bits::CR4_UMIP;
        cpu.state.seg[SegReg::Cs as usize] = seg(&bus, UCODE64);
        cpu.state.seg[SegReg::Ss as usize] = seg(&bus, UDATA);
        steps(&mut cpu, &mut bus, 1);
        assert_eq!(cpu.state.rip, 0x12000, "sgdt with UMIP at CPL 3 is #GP");
    }

    #[test]
    fn rdtsc_adds_the_offset_a_tsc_write_sets() {
        let mut bus = FlatBus::new(0x20_0000);
        let mut cpu = long_mode_system(&mut bus);
        code(&mut bus, 64, 0x10000, |a| {
            a.mov(ecx, 0x10)?;
            a.mov(eax, 0)?;
            a.mov(edx, 1)?;
            a.wrmsr()?;
            a.rdtsc()
        });
        steps(&mut cpu, &mut bus, 5);
        // The bus clock advances by one per read: written at 1, read at 2.
        assert_eq!((cpu.state.gpr[2] << 32) | cpu.state.gpr[0], (1 << 32) + 1);
    }

    #[test]
    fn xsetbv_checks_xcr0_and_osxsave() {
        let mut bus = FlatBus::new(0x20_0000);
        let mut cpu = long_mode_system(&mut bus);
        gate64(&mut bus, 6, 0x12000, 0, 0);
        gate64(&mut bus, 13, 0x13000, 0, 0);
        code(&mut bus, 64, 0x10000, |a| a.xsetbv());
        cpu.state.gpr[0] = 1;
        steps(&mut cpu, &mut bus, 1);
        assert_eq!(cpu.state.rip, 0x12000, "#UD without CR4.OSXSAVE");
        let mut cpu = long_mode_system(&mut bus);
        cpu.state.cr4 |= bits::CR4_OSXSAVE;
        cpu.state.gpr[0] = 3;
        steps(&mut cpu, &mut bus, 1);
        assert_eq!(cpu.state.rip, 0x13000, "SSE state is not reported by CPUID");
        let mut cpu = long_mode_system(&mut bus);
        cpu.state.cr4 |= bits::CR4_OSXSAVE;
        cpu.state.gpr[0] = 1;
        steps(&mut cpu, &mut bus, 1);
        assert_eq!((cpu.state.rip, cpu.state.xcr0), (0x10003, 1));
    }

    #[test]
    fn swapgs_and_fsgsbase() {
        let mut bus = FlatBus::new(0x20_0000);
        let mut cpu = long_mode_system(&mut bus);
        cpu.state.cr4 |= bits::CR4_FSGSBASE;
        cpu.state.msr.kernel_gs_base = 0xffff_8000_0000_1000;
        code(&mut bus, 64, 0x10000, |a| {
            a.swapgs()?;
            a.rdgsbase(rax)?;
            a.mov(rbx, 0x1234u64)?;
            a.wrfsbase(rbx)
        });
        steps(&mut cpu, &mut bus, 4);
        assert_eq!(cpu.state.gpr[0], 0xffff_8000_0000_1000);
        assert_eq!(cpu.state.msr.kernel_gs_base, 0);
        assert_eq!(cpu.state.seg(SegReg::Fs).base, 0x1234);
    }
}
