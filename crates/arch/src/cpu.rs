//! The boot CPU's initial state for each entry protocol, and the MSRs every vCPU starts with.

use hypervisor::{
    FpuState, MsrEntry, SegmentRegister, SpecialRegisters, StandardRegisters, TableRegister,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::boot::BootEntry;
use crate::layout::{BOOT_GDT, BOOT_IDT, BOOT_STACK, PD, PDPT, PML4, PVH_START_INFO, ZERO_PAGE};

const CR0_PE: u64 = 1;
const CR0_ET: u64 = 1 << 4;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// Selector of the boot code segment: 0x10, which Linux's boot protocol calls `__BOOT_CS`.
const CODE_SELECTOR: u16 = 0x10;
/// Selector of the boot data segment (`__BOOT_DS`).
const DATA_SELECTOR: u16 = 0x18;
/// Selector of the boot TSS.
const TSS_SELECTOR: u16 = 0x20;

/// Packs a GDT descriptor.
fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    (u64::from(base & 0xff00_0000) << 32)
        | (u64::from(flags & 0xf0ff) << 40)
        | (u64::from(limit & 0x000f_0000) << 32)
        | (u64::from(base & 0x00ff_ffff) << 16)
        | u64::from(limit & 0x0000_ffff)
}

/// Unpacks a GDT descriptor into the hidden part of a segment register.
fn segment_from_entry(entry: u64, selector: u16) -> SegmentRegister {
    let base = ((entry >> 16) & 0xff_ffff) | ((entry >> 32) & 0xff00_0000);
    let raw_limit = ((entry & 0xffff) | ((entry >> 32) & 0xf_0000)) as u32;
    let g = (entry >> 55) & 1 == 1;
    SegmentRegister {
        base,
        limit: if g {
            (raw_limit << 12) | 0xfff
        } else {
            raw_limit
        },
        selector,
        type_: ((entry >> 40) & 0xf) as u8,
        present: (entry >> 47) & 1 == 1,
        dpl: ((entry >> 45) & 3) as u8,
        db: (entry >> 54) & 1 == 1,
        s: (entry >> 44) & 1 == 1,
        l: (entry >> 53) & 1 == 1,
        g,
        avl: (entry >> 52) & 1 == 1,
        unusable: false,
    }
}

/// Errors of [`setup_boot_cpu`].
#[derive(Debug, thiserror::Error)]
#[error("Cannot write the boot CPU's tables to guest memory")]
pub struct CpuSetupError(#[source] vm_memory::GuestMemoryError);

/// The registers the boot CPU starts with.
#[derive(Debug, Clone, Copy)]
pub struct BootCpuState {
    /// General registers.
    pub regs: StandardRegisters,
    /// Segment and control registers.
    pub sregs: SpecialRegisters,
    /// x87/SSE state.
    pub fpu: FpuState,
}

/// Writes the boot GDT (and, for the 64-bit entry, an identity map of the first 4 GiB) and
/// returns the boot CPU's registers for `entry`. `base` is the vCPU's state after reset, whose
/// APIC base and other fields are kept.
pub fn setup_boot_cpu(
    mem: &GuestMemoryMmap,
    entry: BootEntry,
    base: SpecialRegisters,
) -> Result<BootCpuState, CpuSetupError> {
    let long = matches!(entry, BootEntry::Linux64 { .. });
    let code = if long {
        gdt_entry(0xa09b, 0, 0xfffff)
    } else {
        gdt_entry(0xc09b, 0, 0xfffff)
    };
    let data = gdt_entry(0xc093, 0, 0xfffff);
    let tss = gdt_entry(0x808b, 0, 0xfffff);
    let gdt = [0u64, 0, code, data, tss];
    for (i, e) in gdt.iter().enumerate() {
        mem.write_obj(*e, GuestAddress(BOOT_GDT + 8 * i as u64))
            .map_err(CpuSetupError)?;
    }
    mem.write_obj(0u64, GuestAddress(BOOT_IDT))
        .map_err(CpuSetupError)?;

    let mut sregs = base;
    sregs.gdt = TableRegister {
        base: BOOT_GDT,
        limit: (gdt.len() * 8 - 1) as u16,
    };
    sregs.idt = TableRegister {
        base: BOOT_IDT,
        limit: 7,
    };
    sregs.cs = segment_from_entry(code, CODE_SELECTOR);
    let data_seg = segment_from_entry(data, DATA_SELECTOR);
    sregs.ds = data_seg;
    sregs.es = data_seg;
    sregs.fs = data_seg;
    sregs.gs = data_seg;
    sregs.ss = data_seg;
    sregs.tr = segment_from_entry(tss, TSS_SELECTOR);

    let mut regs = StandardRegisters {
        rflags: 2,
        ..Default::default()
    };
    match entry {
        BootEntry::Linux64 { entry } => {
            write_identity_map(mem)?;
            sregs.cr3 = PML4;
            sregs.cr4 = CR4_PAE;
            sregs.cr0 = CR0_PE | CR0_ET | CR0_PG;
            sregs.efer = EFER_LME | EFER_LMA;
            regs.rip = entry.0;
            regs.rsi = ZERO_PAGE;
            regs.rsp = BOOT_STACK;
            regs.rbp = BOOT_STACK;
        }
        BootEntry::Pvh { entry } => {
            sregs.cr0 = CR0_PE | CR0_ET;
            sregs.cr4 = 0;
            sregs.efer = 0;
            regs.rip = entry.0;
            regs.rbx = PVH_START_INFO;
        }
    }
    Ok(BootCpuState {
        regs,
        sregs,
        fpu: FpuState::default(),
    })
}

/// Identity-maps the first 4 GiB with 2 MiB pages: PML4[0] -> PDPT[0..4] -> 4 page directories.
fn write_identity_map(mem: &GuestMemoryMmap) -> Result<(), CpuSetupError> {
    const PRESENT_RW: u64 = 0x3;
    const HUGE: u64 = 0x80;
    mem.write_obj(PDPT | PRESENT_RW, GuestAddress(PML4))
        .map_err(CpuSetupError)?;
    let mut pd = vec![0u8; 4 * 4096];
    for (i, chunk) in pd.chunks_mut(8).enumerate() {
        let entry = ((i as u64) << 21) | PRESENT_RW | HUGE;
        chunk.copy_from_slice(&entry.to_le_bytes());
    }
    for dir in 0..4u64 {
        let pd_addr = PD + dir * 4096;
        mem.write_obj(pd_addr | PRESENT_RW, GuestAddress(PDPT + dir * 8))
            .map_err(CpuSetupError)?;
    }
    mem.write_slice(&pd, GuestAddress(PD))
        .map_err(CpuSetupError)
}

/// MSRs every vCPU starts with: system-call MSRs cleared, fast strings on, MTRRs enabled with
/// write-back as the default memory type.
pub fn boot_msrs() -> Vec<MsrEntry> {
    const MSR_IA32_SYSENTER_CS: u32 = 0x174;
    const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
    const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
    const MSR_STAR: u32 = 0xc000_0081;
    const MSR_LSTAR: u32 = 0xc000_0082;
    const MSR_CSTAR: u32 = 0xc000_0083;
    const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
    const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
    const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
    const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
    const MISC_ENABLE_FAST_STRING: u64 = 1;
    const MTRR_ENABLE: u64 = 1 << 11;
    const MTRR_TYPE_WB: u64 = 6;
    [
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_LSTAR, 0),
        (MSR_CSTAR, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        (MSR_MTRR_DEF_TYPE, MTRR_ENABLE | MTRR_TYPE_WB),
    ]
    .into_iter()
    .map(|(index, data)| MsrEntry { index, data })
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap()
    }

    #[test]
    fn linux64_entry_is_long_mode_with_zero_page_in_rsi() {
        let m = mem();
        let s = setup_boot_cpu(
            &m,
            BootEntry::Linux64 {
                entry: GuestAddress(0x100_0000),
            },
            Default::default(),
        )
        .unwrap();
        assert_eq!(s.regs.rip, 0x100_0000);
        assert_eq!(s.regs.rsi, ZERO_PAGE);
        assert!(s.sregs.cs.l && !s.sregs.cs.db && s.sregs.cs.present);
        assert_eq!(s.sregs.cs.selector, 0x10);
        assert_eq!(s.sregs.efer & EFER_LMA, EFER_LMA);
        assert_eq!(s.sregs.cr0 & (CR0_PG | CR0_PE), CR0_PG | CR0_PE);
        // 3 GiB + 2 MiB maps to itself.
        let pde: u64 = m.read_obj(GuestAddress(PD + 3 * 4096 + 8)).unwrap();
        assert_eq!(pde & !0xfff, (3 << 30) + (2 << 20));
        let pdpte: u64 = m.read_obj(GuestAddress(PDPT + 3 * 8)).unwrap();
        assert_eq!(pdpte & !0xfff, PD + 3 * 4096);
    }

    #[test]
    fn pvh_entry_is_flat_32_bit_protected_mode_without_paging() {
        let s = setup_boot_cpu(
            &mem(),
            BootEntry::Pvh {
                entry: GuestAddress(0x10_0040),
            },
            Default::default(),
        )
        .unwrap();
        assert_eq!(s.regs.rbx, PVH_START_INFO);
        assert_eq!(s.regs.rip, 0x10_0040);
        assert!(s.sregs.cs.db && !s.sregs.cs.l);
        assert_eq!((s.sregs.cs.base, s.sregs.cs.limit), (0, 0xffff_ffff));
        assert_eq!(s.sregs.cr0 & CR0_PG, 0);
        assert_eq!(s.sregs.efer, 0);
    }
}
