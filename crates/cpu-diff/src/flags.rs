//! Flags the silicon leaves undefined, per instruction, and their tracking along a run.
//!
//! [`effect`] says, for one instruction about to execute in a given state, which status flags it
//! defines and which it leaves undefined (the SDM's "undefined" entries; each is documented in
//! the table below, next to its instruction). [`FlagTracker`] follows a run: a flag is masked in
//! the final comparison when the last instruction that wrote it left it undefined, so a later
//! `add` that defines a flag an earlier `mul` left undefined makes it compared again. The same
//! is done for the x87 condition codes C0..C3 of the status word.

use iced_x86::{Instruction, Mnemonic, OpKind, Register, RflagsBits};
use x86_cpu::CpuState;

/// RFLAGS bits.
pub mod rf {
    /// Carry.
    pub const CF: u64 = 1 << 0;
    /// Parity.
    pub const PF: u64 = 1 << 2;
    /// Adjust.
    pub const AF: u64 = 1 << 4;
    /// Zero.
    pub const ZF: u64 = 1 << 6;
    /// Sign.
    pub const SF: u64 = 1 << 7;
    /// Overflow.
    pub const OF: u64 = 1 << 11;
    /// The six status flags.
    pub const STATUS: u64 = CF | PF | AF | ZF | SF | OF;
}

/// x87 status-word condition codes.
pub mod fsw {
    /// C0.
    pub const C0: u16 = 1 << 8;
    /// C1.
    pub const C1: u16 = 1 << 9;
    /// C2.
    pub const C2: u16 = 1 << 10;
    /// C3.
    pub const C3: u16 = 1 << 14;
}

use rf::{AF, CF, OF, PF, SF, STATUS, ZF};

/// What one instruction does to the flags, for undefined-flag tracking.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Effect {
    /// Status flags written with a defined value.
    pub defined: u64,
    /// Status flags left undefined.
    pub undefined: u64,
    /// Status flags read.
    pub read: u64,
    /// x87 condition codes written with a defined value.
    pub fsw_defined: u16,
    /// x87 condition codes left undefined.
    pub fsw_undefined: u16,
}

/// The undefined status flags of an instruction whose effect does not depend on its operands'
/// values. Each entry quotes the SDM's "Flags Affected" section.
fn static_undefined(m: Mnemonic) -> u64 {
    match m {
        // AND, OR, XOR, TEST: "The OF and CF flags are cleared; the SF, ZF, and PF flags are set
        // according to the result. The state of the AF flag is undefined."
        Mnemonic::And | Mnemonic::Or | Mnemonic::Xor | Mnemonic::Test => AF,
        // MUL, IMUL: "The OF and CF flags are set ...; the SF, ZF, AF, and PF flags are
        // undefined."
        Mnemonic::Mul | Mnemonic::Imul => SF | ZF | AF | PF,
        // DIV, IDIV: "The CF, OF, SF, ZF, AF, and PF flags are undefined."
        Mnemonic::Div | Mnemonic::Idiv => STATUS,
        // BSF, BSR: "The ZF flag is set to 1 if the source operand is 0; otherwise, the ZF flag
        // is cleared. The CF, OF, SF, AF, and PF flags are undefined."
        Mnemonic::Bsf | Mnemonic::Bsr => CF | OF | SF | AF | PF,
        // BT, BTS, BTR, BTC: "The CF flag contains the value of the selected bit. The ZF flag is
        // unaffected. The OF, SF, AF, and PF flags are undefined."
        Mnemonic::Bt | Mnemonic::Bts | Mnemonic::Btr | Mnemonic::Btc => OF | SF | AF | PF,
        // TZCNT, LZCNT: "ZF is set to 1 in case of zero output ..., CF is set to 1 if the
        // input was zero ... The OF, SF, PF and AF flags are undefined."
        Mnemonic::Tzcnt | Mnemonic::Lzcnt => OF | SF | PF | AF,
        // ANDN: "SF and ZF are updated based on result. OF and CF flags are cleared. AF and PF
        // flags are undefined."
        Mnemonic::Andn => AF | PF,
        // BLSI, BLSMSK, BLSR: "ZF and SF are updated ..., CF is set ..., OF is cleared. AF and PF
        // are undefined."
        Mnemonic::Blsi | Mnemonic::Blsmsk | Mnemonic::Blsr => AF | PF,
        // BEXTR: "ZF is updated based on the result. AF, SF, and PF are undefined. All other
        // flags are cleared."
        Mnemonic::Bextr => AF | SF | PF,
        // BZHI: "ZF, CF and SF flags are updated based on the result. OF flag is cleared. AF and
        // PF flags are undefined."
        Mnemonic::Bzhi => AF | PF,
        // AAA, AAS, DAA, DAS, AAM, AAD are invalid in 64-bit mode, where all the cases run.
        _ => 0,
    }
}

/// The count operand of a shift or rotate, as the CPU masks it (5 bits, 6 for 64-bit operands).
fn masked_count(insn: &Instruction, count_op: u32, state: &CpuState, size: u32) -> u32 {
    let raw = match insn.op_kind(count_op) {
        OpKind::Register if insn.op_register(count_op) == Register::CL => state.gpr[1] as u8,
        OpKind::Immediate8 => insn.immediate8(),
        // The one-bit forms (`shl r/m, 1`) have an implicit immediate 1.
        _ => 1,
    };
    u32::from(raw) & if size == 8 { 0x3f } else { 0x1f }
}

/// Undefined flags of a shift, rotate or double shift, which depend on the masked count.
fn shift_effect(insn: &Instruction, state: &CpuState) -> Option<(u64, u64)> {
    let m = insn.mnemonic();
    let size = operand_size(insn);
    let bits = size * 8;
    let (count_op, all_written) = match m {
        Mnemonic::Shl | Mnemonic::Sal | Mnemonic::Shr | Mnemonic::Sar => (1, STATUS),
        Mnemonic::Rol | Mnemonic::Ror | Mnemonic::Rcl | Mnemonic::Rcr => (1, CF | OF),
        Mnemonic::Shld | Mnemonic::Shrd => (2, STATUS),
        _ => return None,
    };
    let op_count = if insn.op_count() > count_op {
        count_op
    } else {
        u32::MAX
    };
    let c = if op_count == u32::MAX {
        1
    } else {
        masked_count(insn, count_op, state, size)
    };
    // "If the count is 0, the flags are not affected" (all shifts and rotates).
    if c == 0 {
        return Some((0, 0));
    }
    let undefined = match m {
        // SAL/SAR/SHL/SHR: "The OF flag is affected only on 1-bit shifts. For left shifts, the
        // OF flag is set to 0 if ... For right shifts ... The CF flag contains the value of the
        // last bit shifted out ... For SHL and SHR instructions where count >= the destination
        // operand size, CF is undefined. ... The AF flag is undefined for a non-zero count."
        // (Also: "the OF flag is undefined for multi-bit shifts".)
        Mnemonic::Shl | Mnemonic::Sal | Mnemonic::Shr | Mnemonic::Sar => {
            let mut u = AF;
            if c > 1 {
                u |= OF;
            }
            if c >= bits && m != Mnemonic::Sar {
                u |= CF;
            }
            u
        }
        // ROL/ROR/RCL/RCR: "If the masked count is 0, the flags are not affected. If the masked
        // count is 1, then the OF flag is affected, otherwise (masked count is greater than 1)
        // the OF flag is undefined."
        Mnemonic::Rol | Mnemonic::Ror | Mnemonic::Rcl | Mnemonic::Rcr => {
            if c > 1 {
                OF
            } else {
                0
            }
        }
        // SHLD/SHRD: "For a 1-bit shift, the OF flag is set if a sign change occurred;
        // otherwise, it is cleared. For shifts greater than 1 bit, the OF flag is undefined. If a
        // shift occurs, the AF flag is undefined. If the count operand is 0, the flags are not
        // affected. If the count is greater than the operand size, the flags are undefined."
        _ => {
            if c > bits {
                STATUS
            } else if c > 1 {
                AF | OF
            } else {
                AF
            }
        }
    };
    Some((all_written & !undefined, undefined))
}

/// Operand size in bytes of the first operand.
fn operand_size(insn: &Instruction) -> u32 {
    match insn.op0_kind() {
        OpKind::Register => insn.op0_register().size() as u32,
        _ => insn.memory_size().size() as u32,
    }
}

/// Converts iced's flag bits to RFLAGS bits.
fn from_iced(bits: u32) -> u64 {
    let mut f = 0;
    for (i, r) in [
        (RflagsBits::OF, OF),
        (RflagsBits::SF, SF),
        (RflagsBits::ZF, ZF),
        (RflagsBits::AF, AF),
        (RflagsBits::CF, CF),
        (RflagsBits::PF, PF),
    ] {
        if bits & i != 0 {
            f |= r;
        }
    }
    f
}

/// Converts iced's x87 condition-code bits to status-word bits.
fn fsw_from_iced(bits: u32) -> u16 {
    let mut f = 0;
    for (i, c) in [
        (RflagsBits::C0, fsw::C0),
        (RflagsBits::C1, fsw::C1),
        (RflagsBits::C2, fsw::C2),
        (RflagsBits::C3, fsw::C3),
    ] {
        if bits & i != 0 {
            f |= c;
        }
    }
    f
}

/// The x87 condition codes an instruction leaves undefined. Each entry quotes the SDM's "FPU
/// Flags Affected".
fn x87_undefined(m: Mnemonic) -> Option<u16> {
    use fsw::{C0, C1, C2, C3};
    Some(match m {
        // FLD, FILD, FLDZ, FLD1, FST(P), FIST(P), FADD(P), FIADD, FSUB(R)(P), FMUL(P), FDIV(R)(P),
        // FSQRT, FXCH, FCHS, FABS, FRNDINT, FSCALE, FXTRACT, FSIN ...: "C1 Set to 0 if stack
        // underflow occurred ... / rounding indicator. C0, C2, C3 Undefined."
        Mnemonic::Fld
        | Mnemonic::Fild
        | Mnemonic::Fldz
        | Mnemonic::Fld1
        | Mnemonic::Fldpi
        | Mnemonic::Fst
        | Mnemonic::Fstp
        | Mnemonic::Fist
        | Mnemonic::Fistp
        | Mnemonic::Fisttp
        | Mnemonic::Fadd
        | Mnemonic::Faddp
        | Mnemonic::Fiadd
        | Mnemonic::Fsub
        | Mnemonic::Fsubp
        | Mnemonic::Fsubr
        | Mnemonic::Fsubrp
        | Mnemonic::Fmul
        | Mnemonic::Fmulp
        | Mnemonic::Fimul
        | Mnemonic::Fdiv
        | Mnemonic::Fdivp
        | Mnemonic::Fdivr
        | Mnemonic::Fdivrp
        | Mnemonic::Fsqrt
        | Mnemonic::Fxch
        | Mnemonic::Fchs
        | Mnemonic::Fabs
        | Mnemonic::Frndint
        | Mnemonic::Fscale
        | Mnemonic::Fxtract
        | Mnemonic::Fincstp
        | Mnemonic::Fdecstp
        | Mnemonic::Ffree => C0 | C2 | C3,
        // FCOMI, FUCOMI (and the popping forms): "C1 Set to 0 if stack underflow occurred;
        // otherwise, set to 0. C0, C2, C3 Not affected." (Not affected: nothing to mask.)
        Mnemonic::Fcomi | Mnemonic::Fcomip | Mnemonic::Fucomi | Mnemonic::Fucomip => 0,
        // FLDCW, FNSTCW, FNCLEX, FNSTENV: "The C0, C1, C2, and C3 flags are undefined."
        Mnemonic::Fldcw | Mnemonic::Fnstcw | Mnemonic::Fnclex | Mnemonic::Fnstenv => {
            C0 | C1 | C2 | C3
        }
        _ => return None,
    })
}

/// The flag effect of `insn` about to execute in `state`.
pub fn effect(insn: &Instruction, state: &CpuState) -> Effect {
    // A repeated string instruction with a zero count does nothing at all, flags included.
    if (insn.has_rep_prefix() || insn.has_repne_prefix()) && insn.is_string_instruction() {
        let a32 = (0..insn.op_count())
            .any(|i| matches!(insn.op_kind(i), OpKind::MemorySegESI | OpKind::MemoryESEDI));
        let count = if a32 {
            state.gpr[1] & 0xffff_ffff
        } else {
            state.gpr[1]
        };
        if count == 0 {
            return Effect::default();
        }
    }
    let modified = from_iced(insn.rflags_modified());
    let read = from_iced(insn.rflags_read());
    let (defined, undefined) = match shift_effect(insn, state) {
        Some(x) => x,
        None => {
            let u = static_undefined(insn.mnemonic());
            (modified & !u, u & modified)
        }
    };
    let fsw_modified = fsw_from_iced(insn.rflags_modified());
    let fsw_undefined = x87_undefined(insn.mnemonic()).unwrap_or(0);
    Effect {
        defined,
        undefined,
        read,
        fsw_defined: fsw_modified & !fsw_undefined,
        fsw_undefined,
    }
}

/// Flags and condition codes that the last writer left undefined, at the end of a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Undefined {
    /// RFLAGS status bits not to compare.
    pub rflags: u64,
    /// x87 status-word condition codes not to compare.
    pub fsw: u16,
    /// An instruction read a flag that was undefined: its result may legitimately differ, so
    /// the case cannot be compared (the generator avoids this; it is counted if it happens).
    pub tainted: bool,
}

/// Follows the undefined flags along a run.
#[derive(Debug, Default, Clone)]
pub struct FlagTracker {
    now: Undefined,
}

impl FlagTracker {
    /// Accounts for `insn`, about to execute in `state`.
    pub fn before(&mut self, insn: &Instruction, state: &CpuState) {
        let e = effect(insn, state);
        if e.read & self.now.rflags != 0 {
            self.now.tainted = true;
        }
        self.now.rflags = (self.now.rflags & !e.defined) | e.undefined;
        self.now.fsw = (self.now.fsw & !e.fsw_defined) | e.fsw_undefined;
    }

    /// The undefined flags now.
    pub fn undefined(&self) -> Undefined {
        self.now
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use iced_x86::code_asm::*;

    fn decode(f: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>) -> Instruction {
        let mut a = CodeAssembler::new(64).unwrap();
        f(&mut a).unwrap();
        a.instructions()[0]
    }

    #[test]
    fn a_later_add_defines_what_mul_left_undefined() {
        let s = CpuState::default();
        let mut t = FlagTracker::default();
        t.before(&decode(|a| a.mul(rcx)), &s);
        assert_eq!(t.undefined().rflags, SF | ZF | AF | PF);
        t.before(&decode(|a| a.xor(eax, ecx)), &s);
        assert_eq!(t.undefined().rflags, AF);
        t.before(&decode(|a| a.add(eax, ecx)), &s);
        assert_eq!(t.undefined().rflags, 0);
        assert!(!t.undefined().tainted);
    }

    #[test]
    fn shift_flags_depend_on_the_masked_count() {
        let mut s = CpuState::default();
        let shl = decode(|a| a.shl(eax, cl));
        s.gpr[1] = 32; // masked to 0: nothing changes
        assert_eq!(effect(&shl, &s).undefined, 0);
        assert_eq!(effect(&shl, &s).defined, 0);
        s.gpr[1] = 1;
        assert_eq!(effect(&shl, &s).undefined, AF);
        s.gpr[1] = 3;
        assert_eq!(effect(&shl, &s).undefined, AF | OF);
        let shl8 = decode(|a| a.shl(al, cl));
        s.gpr[1] = 9;
        assert_eq!(effect(&shl8, &s).undefined, AF | OF | CF);
    }

    #[test]
    fn reading_an_undefined_flag_taints_the_run() {
        let s = CpuState::default();
        let mut t = FlagTracker::default();
        t.before(&decode(|a| a.imul_2(eax, ecx)), &s);
        t.before(&decode(|a| a.sete(al)), &s);
        assert!(t.undefined().tainted);
    }

    #[test]
    fn our_table_agrees_with_iced_on_static_entries() {
        // iced's own tables are an independent reading of the SDM.
        let s = CpuState::default();
        for insn in [
            decode(|a| a.and(eax, ecx)),
            decode(|a| a.mul(rcx)),
            decode(|a| a.div(rcx)),
            decode(|a| a.bsf(eax, ecx)),
            decode(|a| a.bt(eax, ecx)),
            decode(|a| a.tzcnt(eax, ecx)),
        ] {
            assert_eq!(
                effect(&insn, &s).undefined,
                from_iced(insn.rflags_undefined()),
                "{insn}"
            );
        }
    }
}
