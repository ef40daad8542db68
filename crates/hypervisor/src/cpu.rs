//! Backend-neutral x86-64 CPU state.

use serde::{Deserialize, Serialize};

/// General-purpose registers, RIP and RFLAGS.
#[allow(missing_docs)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StandardRegisters {
    pub rax: u64,
    pub rbx: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub rsp: u64,
    pub rbp: u64,
    pub r8: u64,
    pub r9: u64,
    pub r10: u64,
    pub r11: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
    pub rip: u64,
    pub rflags: u64,
}

/// A segment register with its hidden descriptor cache.
#[allow(missing_docs)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentRegister {
    pub base: u64,
    pub limit: u32,
    pub selector: u16,
    /// Descriptor type field (4 bits).
    pub type_: u8,
    pub present: bool,
    pub dpl: u8,
    /// Default operation size (D/B bit).
    pub db: bool,
    /// Code or data segment (S bit), as opposed to a system segment.
    pub s: bool,
    /// 64-bit code segment (L bit).
    pub l: bool,
    /// Granularity: limit in 4 KiB units.
    pub g: bool,
    pub avl: bool,
    pub unusable: bool,
}

/// A descriptor-table register (GDTR, IDTR).
#[allow(missing_docs)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableRegister {
    pub base: u64,
    pub limit: u16,
}

/// Segment, control and descriptor-table registers.
#[allow(missing_docs)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpecialRegisters {
    pub cs: SegmentRegister,
    pub ds: SegmentRegister,
    pub es: SegmentRegister,
    pub fs: SegmentRegister,
    pub gs: SegmentRegister,
    pub ss: SegmentRegister,
    pub tr: SegmentRegister,
    pub ldt: SegmentRegister,
    pub gdt: TableRegister,
    pub idt: TableRegister,
    pub cr0: u64,
    pub cr2: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub cr8: u64,
    pub efer: u64,
    pub apic_base: u64,
}

/// x87 and SSE state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FpuState {
    /// x87 control word.
    pub fcw: u16,
    /// SSE control and status.
    pub mxcsr: u32,
}

impl Default for FpuState {
    /// The state after `fninit` and reset: all exceptions masked.
    fn default() -> Self {
        Self {
            fcw: 0x37f,
            mxcsr: 0x1f80,
        }
    }
}

/// One CPUID leaf (and subleaf) with its four output registers.
#[allow(missing_docs)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuidEntry {
    pub function: u32,
    pub index: u32,
    /// Engine flags: bit 0 means `index` is significant.
    pub flags: u32,
    pub eax: u32,
    pub ebx: u32,
    pub ecx: u32,
    pub edx: u32,
}

/// Flag of [`CpuidEntry::flags`]: the leaf has subleaves selected by ECX.
pub const CPUID_FLAG_SIGNIFICANT_INDEX: u32 = 1;

/// A model-specific register and its value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MsrEntry {
    /// MSR number.
    pub index: u32,
    /// Value.
    pub data: u64,
}

/// The operating mode of an x86 CPU, for reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuMode {
    /// Real mode (CR0.PE clear).
    Real,
    /// Virtual-8086 mode.
    Virtual8086,
    /// Protected mode with a 16- or 32-bit code segment.
    Protected {
        /// Code segment size in bits.
        bits: u8,
        /// Current privilege level.
        cpl: u8,
    },
    /// Compatibility mode: long mode with a 16/32-bit code segment.
    Compatibility {
        /// Current privilege level.
        cpl: u8,
    },
    /// 64-bit long mode.
    Long {
        /// Current privilege level.
        cpl: u8,
    },
}

impl CpuMode {
    /// Derives the mode from control registers, EFER, RFLAGS and CS.
    pub fn from_state(sregs: &SpecialRegisters, rflags: u64) -> Self {
        const CR0_PE: u64 = 1;
        const EFER_LMA: u64 = 1 << 10;
        const RFLAGS_VM: u64 = 1 << 17;
        if sregs.cr0 & CR0_PE == 0 {
            return CpuMode::Real;
        }
        if rflags & RFLAGS_VM != 0 {
            return CpuMode::Virtual8086;
        }
        let cpl = sregs.cs.dpl & 3;
        if sregs.efer & EFER_LMA != 0 {
            if sregs.cs.l {
                CpuMode::Long { cpl }
            } else {
                CpuMode::Compatibility { cpl }
            }
        } else {
            CpuMode::Protected {
                bits: if sregs.cs.db { 32 } else { 16 },
                cpl,
            }
        }
    }
}

impl std::fmt::Display for CpuMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CpuMode::Real => write!(f, "real mode"),
            CpuMode::Virtual8086 => write!(f, "virtual-8086 mode"),
            CpuMode::Protected { bits, cpl } => write!(f, "{bits}-bit protected mode, CPL {cpl}"),
            CpuMode::Compatibility { cpl } => write!(f, "compatibility mode, CPL {cpl}"),
            CpuMode::Long { cpl } => write!(f, "64-bit long mode, CPL {cpl}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_follows_cr0_efer_and_cs() {
        let mut s = SpecialRegisters::default();
        assert_eq!(CpuMode::from_state(&s, 2), CpuMode::Real);
        s.cr0 = 1;
        s.cs.db = true;
        assert_eq!(
            CpuMode::from_state(&s, 2),
            CpuMode::Protected { bits: 32, cpl: 0 }
        );
        assert_eq!(CpuMode::from_state(&s, 2 | 1 << 17), CpuMode::Virtual8086);
        s.efer = 1 << 10;
        s.cs.dpl = 3;
        assert_eq!(
            CpuMode::from_state(&s, 2),
            CpuMode::Compatibility { cpl: 3 }
        );
        s.cs.l = true;
        assert_eq!(CpuMode::from_state(&s, 2), CpuMode::Long { cpl: 3 });
    }
}
