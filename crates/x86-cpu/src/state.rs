//! The architectural state of one CPU.
//!
//! The state serializes with serde (for snapshots); the 128-bit registers are written as hex
//! strings, which every JSON reader can hold.

use serde::{Deserialize, Serialize};

/// The six segment registers, in their encoding order.
#[allow(missing_docs)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegReg {
    Es = 0,
    Cs = 1,
    Ss = 2,
    Ds = 3,
    Fs = 4,
    Gs = 5,
}

/// A segment register: the visible selector and the hidden descriptor cache.
#[allow(missing_docs)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segment {
    pub selector: u16,
    pub base: u64,
    /// Byte-granular limit (already scaled when the descriptor's G bit is set).
    pub limit: u32,
    /// Descriptor type (4 bits).
    pub type_: u8,
    /// Code/data (true) or system (false) descriptor.
    pub s: bool,
    pub dpl: u8,
    pub present: bool,
    pub avl: bool,
    /// 64-bit code segment.
    pub l: bool,
    /// Default operation size 32 (code) / big (stack).
    pub db: bool,
    pub g: bool,
    /// The register holds a null selector (protected mode) and may not be used.
    pub unusable: bool,
}

impl Segment {
    /// A real-mode segment for `selector`: base = selector * 16, 64 KiB limit, read/write.
    pub fn real_mode(selector: u16, code: bool) -> Self {
        Segment {
            selector,
            base: u64::from(selector) << 4,
            limit: 0xffff,
            type_: if code { 0xb } else { 0x3 },
            s: true,
            present: true,
            ..Default::default()
        }
    }
}

/// GDTR or IDTR.
#[allow(missing_docs)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DescriptorTable {
    pub base: u64,
    pub limit: u16,
}

/// x87 state. Registers are kept as 80-bit values in the low bytes of a `u128`.
#[allow(missing_docs)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct X87 {
    /// ST(i) storage, physical order R0..R7.
    #[serde(with = "u128_hex")]
    pub regs: [u128; 8],
    pub fcw: u16,
    pub fsw: u16,
    /// Full tag word (2 bits per register, 0b11 = empty).
    pub ftw: u16,
    pub fop: u16,
    pub fip: u64,
    pub fdp: u64,
}

impl Default for X87 {
    fn default() -> Self {
        X87 {
            regs: [0; 8],
            fcw: 0x37f,
            fsw: 0,
            ftw: 0xffff,
            fop: 0,
            fip: 0,
            fdp: 0,
        }
    }
}

impl X87 {
    /// TOP: the physical register that is ST(0).
    pub fn top(&self) -> usize {
        usize::from((self.fsw >> 11) & 7)
    }

    /// The abridged tag word FXSAVE stores: bit i set when physical register i is not empty.
    pub fn abridged_tag(&self) -> u8 {
        (0..8).fold(0, |acc, i| {
            if (self.ftw >> (2 * i)) & 3 == 3 {
                acc
            } else {
                acc | (1 << i)
            }
        })
    }

    /// The full tag word for an abridged one, classifying the registers' contents.
    pub fn tag_from_abridged(&self, abridged: u8) -> u16 {
        (0..8).fold(0, |acc, i| {
            let tag = if abridged & (1 << i) == 0 {
                3
            } else {
                Self::tag_of(self.regs[i])
            };
            acc | (tag << (2 * i))
        })
    }

    /// The tag a non-empty register holding `v` carries: 0 valid, 1 zero, 2 special (NaN,
    /// infinity, denormal or an unsupported encoding).
    pub fn tag_of(v: u128) -> u16 {
        let exp = (v >> 64) & 0x7fff;
        let mant = v as u64;
        match exp {
            0 if mant == 0 => 1,
            0 | 0x7fff => 2,
            _ if mant >> 63 == 0 => 2,
            _ => 0,
        }
    }
}

/// MSRs the CPU implements itself.
#[allow(missing_docs)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Msrs {
    pub star: u64,
    pub lstar: u64,
    pub cstar: u64,
    pub sfmask: u64,
    pub kernel_gs_base: u64,
    pub sysenter_cs: u64,
    pub sysenter_esp: u64,
    pub sysenter_eip: u64,
    pub tsc_aux: u64,
    pub pat: u64,
    pub misc_enable: u64,
    pub mtrr_def_type: u64,
    /// Fixed-range MTRRs, in the order of [`MTRR_FIXED`].
    pub mtrr_fixed: [u64; 11],
    /// Variable-range MTRRs: PHYSBASE0, PHYSMASK0, PHYSBASE1, ... (MSRs 0x200..0x20f).
    pub mtrr_var: [u64; 16],
    /// Added to the bus's TSC to give the guest's.
    pub tsc_offset: u64,
}

/// The fixed-range MTRR MSR numbers, in the order of [`Msrs::mtrr_fixed`].
pub const MTRR_FIXED: [u32; 11] = [
    0x250, 0x258, 0x259, 0x268, 0x269, 0x26a, 0x26b, 0x26c, 0x26d, 0x26e, 0x26f,
];

/// Everything a CPU holds between instructions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuState {
    /// RAX, RCX, RDX, RBX, RSP, RBP, RSI, RDI, R8..R15 (encoding order).
    pub gpr: [u64; 16],
    /// Instruction pointer.
    pub rip: u64,
    /// Flags, always kept materialised.
    pub rflags: u64,
    /// ES, CS, SS, DS, FS, GS.
    pub seg: [Segment; 6],
    /// Local descriptor table register.
    pub ldtr: Segment,
    /// Task register.
    pub tr: Segment,
    /// Global descriptor table register.
    pub gdtr: DescriptorTable,
    /// Interrupt descriptor table register.
    pub idtr: DescriptorTable,
    /// Control registers.
    pub cr0: u64,
    /// Page-fault linear address.
    pub cr2: u64,
    /// Page-table root.
    pub cr3: u64,
    /// Feature enables.
    pub cr4: u64,
    /// Task priority: CR8 holds the local APIC's TPR bits 7:4 in bits 3:0. `mov cr8` only
    /// updates this field; a software local APIC reads it from here (and writes its TPR back here)
    /// when it arbitrates interrupts, so the two views stay one register.
    pub cr8: u64,
    /// Extended feature enables.
    pub efer: u64,
    /// XSAVE feature mask.
    pub xcr0: u64,
    /// Debug registers DR0..DR7 (DR4/5 alias 6/7).
    pub dr: [u64; 8],
    /// MSRs the CPU owns.
    pub msr: Msrs,
    /// x87.
    pub x87: X87,
    /// XMM0..XMM15.
    #[serde(with = "u128_hex")]
    pub xmm: [u128; 16],
    /// SSE control and status.
    pub mxcsr: u32,
    /// Halted until an interrupt.
    pub halted: bool,
    /// Interrupts are inhibited for one instruction (after STI or a load of SS).
    pub interrupt_shadow: bool,
    /// NMIs are blocked: an NMI handler is running and has not executed IRET yet.
    pub nmi_blocked: bool,
    /// An NMI arrived while blocked; it is delivered by the IRET that unblocks NMIs.
    pub nmi_pending: bool,
    /// After INIT, an application processor waits for a startup IPI: it neither runs nor takes
    /// interrupts (`halted` is set too) until `Cpu::sipi`.
    pub wait_for_sipi: bool,
}

/// RFLAGS bits.
#[allow(missing_docs)]
pub mod rflags {
    pub const CF: u64 = 1 << 0;
    pub const FIXED: u64 = 1 << 1;
    pub const PF: u64 = 1 << 2;
    pub const AF: u64 = 1 << 4;
    pub const ZF: u64 = 1 << 6;
    pub const SF: u64 = 1 << 7;
    pub const TF: u64 = 1 << 8;
    pub const IF: u64 = 1 << 9;
    pub const DF: u64 = 1 << 10;
    pub const OF: u64 = 1 << 11;
    pub const IOPL: u64 = 3 << 12;
    pub const NT: u64 = 1 << 14;
    pub const RF: u64 = 1 << 16;
    pub const VM: u64 = 1 << 17;
    pub const AC: u64 = 1 << 18;
    pub const VIF: u64 = 1 << 19;
    pub const VIP: u64 = 1 << 20;
    pub const ID: u64 = 1 << 21;
    /// The arithmetic flags.
    pub const STATUS: u64 = CF | PF | AF | ZF | SF | OF;
}

/// Control register and EFER bits.
#[allow(missing_docs)]
pub mod bits {
    pub const CR0_PE: u64 = 1 << 0;
    pub const CR0_MP: u64 = 1 << 1;
    pub const CR0_EM: u64 = 1 << 2;
    pub const CR0_TS: u64 = 1 << 3;
    pub const CR0_ET: u64 = 1 << 4;
    pub const CR0_NE: u64 = 1 << 5;
    pub const CR0_WP: u64 = 1 << 16;
    pub const CR0_AM: u64 = 1 << 18;
    pub const CR0_NW: u64 = 1 << 29;
    pub const CR0_CD: u64 = 1 << 30;
    pub const CR0_PG: u64 = 1 << 31;
    pub const CR4_VME: u64 = 1 << 0;
    pub const CR4_PVI: u64 = 1 << 1;
    pub const CR4_TSD: u64 = 1 << 2;
    pub const CR4_DE: u64 = 1 << 3;
    pub const CR4_PSE: u64 = 1 << 4;
    pub const CR4_PAE: u64 = 1 << 5;
    pub const CR4_MCE: u64 = 1 << 6;
    pub const CR4_PGE: u64 = 1 << 7;
    pub const CR4_PCE: u64 = 1 << 8;
    pub const CR4_OSFXSR: u64 = 1 << 9;
    pub const CR4_OSXMMEXCPT: u64 = 1 << 10;
    pub const CR4_UMIP: u64 = 1 << 11;
    pub const CR4_LA57: u64 = 1 << 12;
    pub const CR4_FSGSBASE: u64 = 1 << 16;
    pub const CR4_PCIDE: u64 = 1 << 17;
    pub const CR4_OSXSAVE: u64 = 1 << 18;
    pub const CR4_SMEP: u64 = 1 << 20;
    pub const CR4_SMAP: u64 = 1 << 21;
    pub const EFER_SCE: u64 = 1 << 0;
    pub const EFER_LME: u64 = 1 << 8;
    pub const EFER_LMA: u64 = 1 << 10;
    pub const EFER_NXE: u64 = 1 << 11;
}

impl Default for CpuState {
    /// The state after RESET: real mode at F000:FFF0.
    fn default() -> Self {
        let mut seg = [Segment::real_mode(0, false); 6];
        seg[SegReg::Cs as usize] = Segment {
            base: 0xffff_0000,
            ..Segment::real_mode(0xf000, true)
        };
        CpuState {
            gpr: [0; 16],
            rip: 0xfff0,
            rflags: rflags::FIXED,
            seg,
            ldtr: Segment {
                type_: 2,
                present: true,
                limit: 0xffff,
                ..Default::default()
            },
            tr: Segment {
                type_: 11,
                present: true,
                limit: 0xffff,
                ..Default::default()
            },
            gdtr: DescriptorTable {
                base: 0,
                limit: 0xffff,
            },
            idtr: DescriptorTable {
                base: 0,
                limit: 0xffff,
            },
            cr0: bits::CR0_ET | (1 << 29) | (1 << 30),
            cr2: 0,
            cr3: 0,
            cr4: 0,
            cr8: 0,
            efer: 0,
            xcr0: 1,
            dr: [0, 0, 0, 0, 0xffff_0ff0, 0x400, 0xffff_0ff0, 0x400],
            msr: Msrs {
                pat: 0x0007_0406_0007_0406,
                ..Default::default()
            },
            x87: X87::default(),
            xmm: [0; 16],
            mxcsr: 0x1f80,
            halted: false,
            interrupt_shadow: false,
            nmi_blocked: false,
            nmi_pending: false,
            wait_for_sipi: false,
        }
    }
}

impl CpuState {
    /// Applies an INIT signal: the registers return to their RESET values except the x87 and
    /// SSE state, the MSRs the CPU owns (MTRRs, PAT, STAR...) and CR0.CD/NW, as the SDM's
    /// table 9-1 lists. EFER is cleared, so the CPU is back in real mode at F000:FFF0.
    pub fn apply_init(&mut self) {
        let keep_cache = self.cr0 & (bits::CR0_CD | bits::CR0_NW);
        let reset = CpuState {
            x87: self.x87,
            xmm: self.xmm,
            mxcsr: self.mxcsr,
            msr: self.msr,
            ..CpuState::default()
        };
        *self = reset;
        self.cr0 = (self.cr0 & !(bits::CR0_CD | bits::CR0_NW)) | keep_cache;
    }

    /// The segment register `s`.
    pub fn seg(&self, s: SegReg) -> &Segment {
        &self.seg[s as usize]
    }
    /// Long mode is active (EFER.LMA).
    pub fn long_mode(&self) -> bool {
        self.efer & bits::EFER_LMA != 0
    }
    /// Executing 64-bit code.
    pub fn code64(&self) -> bool {
        self.long_mode() && self.seg(SegReg::Cs).l
    }
    /// Protected mode is on (CR0.PE).
    pub fn protected(&self) -> bool {
        self.cr0 & bits::CR0_PE != 0
    }
    /// Virtual-8086 mode.
    pub fn v86(&self) -> bool {
        self.protected() && self.rflags & rflags::VM != 0
    }
    /// Current privilege level.
    pub fn cpl(&self) -> u8 {
        if !self.protected() {
            0
        } else if self.v86() {
            3
        } else {
            self.seg(SegReg::Cs).dpl & 3
        }
    }
    /// Default operand/address size of the current code segment, in bits.
    pub fn code_bits(&self) -> u32 {
        if self.code64() {
            64
        } else if self.protected() && !self.v86() && self.seg(SegReg::Cs).db {
            32
        } else {
            16
        }
    }
    /// Stack address size in bits.
    pub fn stack_bits(&self) -> u32 {
        if self.code64() {
            64
        } else if self.protected() && !self.v86() && self.seg(SegReg::Ss).db {
            32
        } else {
            16
        }
    }
}

/// Serde for arrays of 128-bit registers as hex strings ("0x..."): JSON numbers that large are
/// not portable.
mod u128_hex {
    use serde::de::Error;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer, const N: usize>(
        regs: &[u128; N],
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_seq(regs.iter().map(|r| format!("{r:#x}")))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>, const N: usize>(
        d: D,
    ) -> Result<[u128; N], D::Error> {
        let strings = Vec::<String>::deserialize(d)?;
        if strings.len() != N {
            return Err(D::Error::invalid_length(
                strings.len(),
                &format!("{N} registers").as_str(),
            ));
        }
        let mut regs = [0u128; N];
        for (reg, text) in regs.iter_mut().zip(&strings) {
            let digits = text
                .strip_prefix("0x")
                .ok_or_else(|| D::Error::custom(format!("register {text:?} lacks its 0x")))?;
            *reg = u128::from_str_radix(digits, 16)
                .map_err(|e| D::Error::custom(format!("register {text:?}: {e}")))?;
        }
        Ok(regs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_survives_json_with_wide_registers_as_hex() {
        let mut s = CpuState::default();
        s.xmm[3] = u128::MAX - 5;
        s.x87.regs[7] = 0x3fff_8000_0000_0000_0000;
        s.msr.mtrr_var[15] = 0xfff;
        s.wait_for_sipi = true;
        let json = serde_json::to_string(&s).unwrap();
        assert!(
            json.contains("\"0xfffffffffffffffffffffffffffffffa\""),
            "{json}"
        );
        let back: CpuState = serde_json::from_str(&json).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn malformed_registers_are_refused() {
        let json = serde_json::to_value(CpuState::default()).unwrap();
        let mut short = json.clone();
        short["xmm"] = serde_json::json!(["0x0"]);
        assert!(serde_json::from_value::<CpuState>(short).is_err());
        let mut bad = json;
        bad["xmm"][0] = serde_json::json!("12");
        assert!(serde_json::from_value::<CpuState>(bad).is_err());
    }
}
