//! The instruction templates the generator strings together, one class of instructions each.
//!
//! A template emits one instruction, or a few when the instruction needs a set-up (a string
//! operation sets RSI, RDI and RCX; a division makes its divisor non-zero). Templates use any
//! general register but RSP, R14 and R15 as destinations (RSP stays a stack pointer, R15 and R14
//! form the memory operands) and take memory operands from `Ctx::mem`. To add a class, write its
//! templates here and list them in [`all`].

use iced_x86::code_asm::asm_traits::*;
use iced_x86::code_asm::*;

use crate::generator::{Ctx, R15_BASE};
use crate::machine::{
    PAGE_NO_EXEC, PAGE_NOT_PRESENT, PAGE_READ_ONLY, PAGE_SUPERVISOR, SCRATCH, sel,
};

/// The instruction classes of the issue, for reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Class {
    /// Two-operand arithmetic and logic, inc/dec/neg/not.
    Alu,
    /// mul, imul, div, idiv.
    MulDiv,
    /// Shifts and rotates, shld/shrd.
    Shift,
    /// bt*, bsf/bsr, tzcnt/lzcnt/popcnt.
    Bit,
    /// setcc, cmovcc.
    Cond,
    /// xchg, xadd, cmpxchg, cmpxchg8b/16b, with and without lock.
    Exchange,
    /// mov, movzx/movsx/movsxd, lea, bswap, movbe, sign extensions.
    Move,
    /// push/pop, near call/ret, enter/leave, pushf/popf.
    Stack,
    /// jmp, jcc, loop, jrcxz.
    Branch,
    /// Flag operations, lahf/sahf.
    Flags,
    /// String instructions with rep/repe/repne.
    String,
    /// BMI1, BMI2, ADX.
    Bmi,
    /// SSE and SSE2.
    Sse,
    /// x87.
    X87,
    /// Instructions that must fault at CPL 3, and faulting memory accesses.
    Fault,
    /// Segment register loads and stores.
    Segment,
}

/// A host CPU feature a template needs (CPL-3 code runs natively, so the host must have it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feature {
    /// Always there on x86-64.
    None,
    /// BMI1 (andn, bextr, blsi, blsmsk, blsr, tzcnt).
    Bmi1,
    /// BMI2.
    Bmi2,
    /// LZCNT.
    Lzcnt,
    /// POPCNT.
    Popcnt,
    /// MOVBE.
    Movbe,
    /// ADX.
    Adx,
    /// CMPXCHG16B.
    Cx16,
}

impl Feature {
    /// Whether this host has the feature.
    pub fn present(self) -> bool {
        match self {
            Feature::None => true,
            Feature::Bmi1 => std::is_x86_feature_detected!("bmi1"),
            Feature::Bmi2 => std::is_x86_feature_detected!("bmi2"),
            Feature::Lzcnt => std::is_x86_feature_detected!("lzcnt"),
            Feature::Popcnt => std::is_x86_feature_detected!("popcnt"),
            Feature::Movbe => std::is_x86_feature_detected!("movbe"),
            Feature::Adx => std::is_x86_feature_detected!("adx"),
            Feature::Cx16 => std::is_x86_feature_detected!("cmpxchg16b"),
        }
    }
}

/// One template.
#[derive(Clone, Copy)]
pub struct Template {
    /// Name, for reports and the exclusion list.
    pub name: &'static str,
    /// Its class.
    pub class: Class,
    /// It reads status flags (the generator defines them first if they may be undefined).
    pub reads_flags: bool,
    /// The host feature it needs.
    pub feature: Feature,
    /// It cannot run faithfully on the paravirtual KVM of our hosts (which answers `int n` at
    /// CPL 3 with #UD, and runs user code on the host's segments).
    pub not_on_pvm: bool,
    /// Emits the instructions.
    pub emit: fn(&mut Ctx) -> Result<(), IcedError>,
}

/// Destination-capable 64-bit registers (not RSP, R14, R15).
pub const R64: [AsmRegister64; 13] = [
    rax, rcx, rdx, rbx, rbp, rsi, rdi, r8, r9, r10, r11, r12, r13,
];
const R32: [AsmRegister32; 13] = [
    eax, ecx, edx, ebx, ebp, esi, edi, r8d, r9d, r10d, r11d, r12d, r13d,
];
const R16: [AsmRegister16; 13] = [ax, cx, dx, bx, bp, si, di, r8w, r9w, r10w, r11w, r12w, r13w];
const R8: [AsmRegister8; 13] = [
    al, cl, dl, bl, bpl, sil, dil, r8b, r9b, r10b, r11b, r12b, r13b,
];
const XMM: [AsmRegisterXmm; 16] = [
    xmm0, xmm1, xmm2, xmm3, xmm4, xmm5, xmm6, xmm7, xmm8, xmm9, xmm10, xmm11, xmm12, xmm13, xmm14,
    xmm15,
];

/// Runs `$body` with `$r` a register picker, `$m` a sized memory-operand maker and `$i` an
/// immediate maker for one random operand size.
macro_rules! sized {
    ($c:ident, |$r:ident, $m:ident, $i:ident| $body:expr) => {{
        match $c.rng.below(4) {
            0 => {
                let $r = |c: &mut Ctx| c.rng.pick(&R8);
                let $m = |c: &mut Ctx| byte_ptr(c.mem());
                let $i = |c: &mut Ctx| c.rng.interesting() as i8 as i32;
                $body
            }
            1 => {
                let $r = |c: &mut Ctx| c.rng.pick(&R16);
                let $m = |c: &mut Ctx| word_ptr(c.mem());
                let $i = |c: &mut Ctx| c.rng.interesting() as i16 as i32;
                $body
            }
            2 => {
                let $r = |c: &mut Ctx| c.rng.pick(&R32);
                let $m = |c: &mut Ctx| dword_ptr(c.mem());
                let $i = |c: &mut Ctx| c.rng.interesting() as i32;
                $body
            }
            _ => {
                let $r = |c: &mut Ctx| c.rng.pick(&R64);
                let $m = |c: &mut Ctx| qword_ptr(c.mem());
                let $i = |c: &mut Ctx| c.rng.interesting() as i32;
                $body
            }
        }
    }};
}

/// Same, without 8-bit operands.
macro_rules! sized_wide {
    ($c:ident, |$r:ident, $m:ident| $body:expr) => {{
        match $c.rng.below(3) {
            0 => {
                let $r = |c: &mut Ctx| c.rng.pick(&R16);
                let $m = |c: &mut Ctx| word_ptr(c.mem());
                $body
            }
            1 => {
                let $r = |c: &mut Ctx| c.rng.pick(&R32);
                let $m = |c: &mut Ctx| dword_ptr(c.mem());
                $body
            }
            _ => {
                let $r = |c: &mut Ctx| c.rng.pick(&R64);
                let $m = |c: &mut Ctx| qword_ptr(c.mem());
                $body
            }
        }
    }};
}

/// Applies one of the two-operand ALU mnemonics to `$a, $b`.
macro_rules! alu_op {
    ($c:ident, [$($op:ident),*], $a:expr, $b:expr) => {{
        let ops: &[&str] = &[$(stringify!($op)),*];
        let k = $c.rng.below(ops.len() as u64) as usize;
        let mut i = 0;
        let mut r = Ok(());
        $(
            if i == k {
                r = $c.a.$op($a, $b);
            }
            i += 1;
        )*
        let _ = i;
        r
    }};
}

/// Applies one of the one-operand mnemonics to `$a`.
macro_rules! unary_op {
    ($c:ident, [$($op:ident),*], $a:expr) => {{
        let ops: &[&str] = &[$(stringify!($op)),*];
        let k = $c.rng.below(ops.len() as u64) as usize;
        let mut i = 0;
        let mut r = Ok(());
        $(
            if i == k {
                r = $c.a.$op($a);
            }
            i += 1;
        )*
        let _ = i;
        r
    }};
}

/// Applies one of the mnemonics taking no operands.
macro_rules! nullary_op {
    ($c:ident, [$($op:ident),*]) => {{
        let ops: &[&str] = &[$(stringify!($op)),*];
        let k = $c.rng.below(ops.len() as u64) as usize;
        let mut i = 0;
        let mut r = Ok(());
        $(
            if i == k {
                r = $c.a.$op();
            }
            i += 1;
        )*
        let _ = i;
        r
    }};
}

const fn t(
    name: &'static str,
    class: Class,
    emit: fn(&mut Ctx) -> Result<(), IcedError>,
) -> Template {
    Template {
        name,
        class,
        reads_flags: false,
        feature: Feature::None,
        not_on_pvm: false,
        emit,
    }
}

const fn reads(mut x: Template) -> Template {
    x.reads_flags = true;
    x
}

const fn needs(mut x: Template, f: Feature) -> Template {
    x.feature = f;
    x
}

/// Templates left out of the default run, with the reason: families the software CPU does not
/// implement yet (its `StepExit::Unimplemented`), and known mismatches waiting for a fix. This is
/// the one place to edit as `x86-cpu` grows; `POPEK_DIFF_ALL=1` runs them anyway.
pub const EXCLUDED: &[(&str, &str)] = &[
    // Known mismatches, reported to the owners of x86-cpu.
];

/// Every template.
pub fn all() -> Vec<Template> {
    let mut v = every_template();
    for t in &mut v {
        // The paravirtual KVM of our hosts runs CPL-3 code with the host's own user segments
        // (`mov r, cs` reads 0x33, a load of a guest selector reads the host's GDT), so segment
        // loads, stores and descriptor queries at CPL 3 do not show the guest's GDT there.
        if t.class == Class::Segment {
            t.not_on_pvm = true;
        }
    }
    v
}

fn every_template() -> Vec<Template> {
    use Class::*;
    vec![
        // Arithmetic and logic.
        t("alu_rr", Alu, |c| {
            sized!(c, |r, _m, _i| {
                let (a, b) = (r(c), r(c));
                alu_op!(c, [add, sub, and, or, xor, cmp, test], a, b)
            })
        }),
        reads(t("adc_sbb_rr", Alu, |c| {
            sized!(c, |r, _m, _i| {
                let (a, b) = (r(c), r(c));
                alu_op!(c, [adc, sbb], a, b)
            })
        })),
        t("alu_ri", Alu, |c| {
            sized!(c, |r, _m, i| {
                let (a, b) = (r(c), i(c));
                alu_op!(c, [add, sub, and, or, xor, cmp, test], a, b)
            })
        }),
        reads(t("adc_sbb_ri", Alu, |c| {
            sized!(c, |r, _m, i| {
                let (a, b) = (r(c), i(c));
                alu_op!(c, [adc, sbb], a, b)
            })
        })),
        t("alu_rm", Alu, |c| {
            sized!(c, |r, m, _i| {
                let (a, b) = (r(c), m(c));
                alu_op!(c, [add, sub, and, or, xor, cmp], a, b)
            })
        }),
        t("alu_mr", Alu, |c| {
            sized!(c, |r, m, _i| {
                let (a, b) = (m(c), r(c));
                if c.rng.one_in(3) {
                    let _ = c.a.lock();
                }
                alu_op!(c, [add, sub, and, or, xor], a, b)
            })
        }),
        t("alu_mi", Alu, |c| {
            sized!(c, |_r, m, i| {
                let (a, b) = (m(c), i(c));
                alu_op!(c, [add, sub, and, or, xor, cmp, test], a, b)
            })
        }),
        t("inc_dec_neg_not_r", Alu, |c| {
            sized!(c, |r, _m, _i| {
                let a = r(c);
                unary_op!(c, [inc, dec, neg, not], a)
            })
        }),
        t("inc_dec_neg_not_m", Alu, |c| {
            sized!(c, |_r, m, _i| {
                let a = m(c);
                if c.rng.one_in(3) {
                    let _ = c.a.lock();
                }
                unary_op!(c, [inc, dec, neg, not], a)
            })
        }),
        // Multiplication and division.
        t("mul_1op", MulDiv, |c| {
            sized!(c, |r, m, _i| {
                if c.rng.one_in(2) {
                    let a = r(c);
                    unary_op!(c, [mul, imul], a)
                } else {
                    let a = m(c);
                    unary_op!(c, [mul, imul], a)
                }
            })
        }),
        t("imul_2op_3op", MulDiv, |c| {
            sized_wide!(c, |r, m| {
                let (d, s) = (r(c), r(c));
                match c.rng.below(3) {
                    0 => c.a.imul_2(d, s),
                    1 => {
                        let mm = m(c);
                        c.a.imul_2(d, mm)
                    }
                    _ => {
                        let imm = c.rng.interesting() as i16 as i32;
                        c.a.imul_3(d, s, imm)
                    }
                }
            })
        }),
        t("div_idiv", MulDiv, div_no_fault),
        t("div_fault", MulDiv, |c| {
            // Division by zero or a quotient too large: #DE.
            if c.rng.one_in(2) {
                c.a.xor(ecx, ecx)?;
                unary_op!(c, [div, idiv], rcx)
            } else {
                c.a.mov(edx, 1)?;
                c.a.mov(ecx, 1)?;
                c.a.div(ecx)
            }
        }),
        // Shifts and rotates.
        reads(t("shift_imm", Shift, |c| {
            sized!(c, |r, _m, _i| {
                let a = r(c);
                let n = c
                    .rng
                    .pick(&[0, 1, 2, 3, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65]);
                shift(c, a, n)
            })
        })),
        t("shift_cl", Shift, |c| {
            sized!(c, |r, _m, _i| {
                let n = c.rng.pick(&[0, 1, 2, 7, 8, 9, 16, 17, 31, 32, 63, 200]);
                c.a.mov(cl, n)?;
                let a = r(c);
                shift_cl(c, a)
            })
        }),
        reads(t("shift_mem", Shift, |c| {
            sized!(c, |_r, m, _i| {
                let a = m(c);
                let n = c.rng.pick(&[1, 3, 8, 31]);
                shift(c, a, n)
            })
        })),
        t("shld_shrd", Shift, |c| {
            sized_wide!(c, |r, _m| {
                let (a, b) = (r(c), r(c));
                // Counts beyond a 16-bit operand leave the result undefined: stay within.
                let n = c.rng.below(17) as u32;
                if c.rng.one_in(2) {
                    c.a.shld(a, b, n)
                } else {
                    c.a.shrd(a, b, n)
                }
            })
        }),
        // Bit operations.
        t("bt_reg", Bit, |c| {
            sized_wide!(c, |r, _m| {
                let (a, b) = (r(c), r(c));
                alu_op!(c, [bt, bts, btr, btc], a, b)
            })
        }),
        t("bt_imm", Bit, |c| {
            sized_wide!(c, |r, m| {
                let n = c.rng.below(64) as i32;
                if c.rng.one_in(2) {
                    let a = r(c);
                    alu_op!(c, [bt, bts, btr, btc], a, n)
                } else {
                    let a = m(c);
                    if c.rng.one_in(3) {
                        let _ = c.a.lock();
                    }
                    alu_op!(c, [bts, btr, btc], a, n)
                }
            })
        }),
        t("bt_mem_reg", Bit, |c| {
            // A register bit offset reaches beyond the operand: keep it within ±512 bits.
            let off = c.rng.pick(&R64);
            let v = c.rng.below(1024) as i32 - 512;
            c.a.mov(off, v as i64)?;
            let m = qword_ptr(r15);
            alu_op!(c, [bt, bts, btr, btc], m, off)
        }),
        t("bsf_bsr", Bit, |c| {
            sized_wide!(c, |r, m| {
                let a = r(c);
                if c.rng.one_in(2) {
                    let b = r(c);
                    alu_op!(c, [bsf, bsr], a, b)
                } else {
                    let b = m(c);
                    alu_op!(c, [bsf, bsr], a, b)
                }
            })
        }),
        needs(
            t("tzcnt", Bit, |c| {
                sized_wide!(c, |r, _m| {
                    let (a, b) = (r(c), r(c));
                    c.a.tzcnt(a, b)
                })
            }),
            Feature::Bmi1,
        ),
        needs(
            t("lzcnt", Bit, |c| {
                sized_wide!(c, |r, _m| {
                    let (a, b) = (r(c), r(c));
                    c.a.lzcnt(a, b)
                })
            }),
            Feature::Lzcnt,
        ),
        needs(
            t("popcnt", Bit, |c| {
                sized_wide!(c, |r, _m| {
                    let (a, b) = (r(c), r(c));
                    c.a.popcnt(a, b)
                })
            }),
            Feature::Popcnt,
        ),
        // Conditions.
        reads(t("setcc", Cond, |c| {
            let d = c.rng.pick(&R8);
            unary_op!(
                c,
                [
                    seto, setno, setb, setae, sete, setne, setbe, seta, sets, setns, setp, setnp,
                    setl, setge, setle, setg
                ],
                d
            )
        })),
        reads(t("cmovcc", Cond, |c| {
            sized_wide!(c, |r, m| {
                let d = r(c);
                if c.rng.one_in(2) {
                    let s = r(c);
                    alu_op!(
                        c,
                        [
                            cmovo, cmovno, cmovb, cmovae, cmove, cmovne, cmovbe, cmova, cmovs,
                            cmovns, cmovp, cmovnp, cmovl, cmovge, cmovle, cmovg
                        ],
                        d,
                        s
                    )
                } else {
                    let s = m(c);
                    alu_op!(
                        c,
                        [
                            cmovo, cmovno, cmovb, cmovae, cmove, cmovne, cmovbe, cmova, cmovs,
                            cmovns, cmovp, cmovnp, cmovl, cmovge, cmovle, cmovg
                        ],
                        d,
                        s
                    )
                }
            })
        })),
        // Exchanges.
        t("xchg_rr", Exchange, |c| {
            sized!(c, |r, _m, _i| {
                let (a, b) = (r(c), r(c));
                c.a.xchg(a, b)
            })
        }),
        t("xchg_rm", Exchange, |c| {
            sized!(c, |r, m, _i| {
                let (a, b) = (m(c), r(c));
                c.a.xchg(a, b)
            })
        }),
        t("xadd", Exchange, |c| {
            sized!(c, |r, m, _i| {
                let b = r(c);
                if c.rng.one_in(2) {
                    let a = r(c);
                    c.a.xadd(a, b)
                } else {
                    let a = m(c);
                    if c.rng.one_in(2) {
                        let _ = c.a.lock();
                    }
                    c.a.xadd(a, b)
                }
            })
        }),
        t("cmpxchg", Exchange, |c| {
            sized!(c, |r, m, _i| {
                let b = r(c);
                if c.rng.one_in(2) {
                    let a = r(c);
                    c.a.cmpxchg(a, b)
                } else {
                    let a = m(c);
                    if c.rng.one_in(2) {
                        let _ = c.a.lock();
                    }
                    c.a.cmpxchg(a, b)
                }
            })
        }),
        t("cmpxchg8b", Exchange, |c| {
            let m = qword_ptr(c.mem());
            if c.rng.one_in(2) {
                let _ = c.a.lock();
            }
            c.a.cmpxchg8b(m)
        }),
        needs(
            t("cmpxchg16b", Exchange, |c| {
                // Equal halves now and then, so the exchange happens.
                if c.rng.one_in(2) {
                    c.a.mov(rax, qword_ptr(r15 + 0x40))?;
                    c.a.mov(rdx, qword_ptr(r15 + 0x48))?;
                }
                if c.rng.one_in(2) {
                    let _ = c.a.lock();
                }
                c.a.cmpxchg16b(xmmword_ptr(r15 + 0x40))
            }),
            Feature::Cx16,
        ),
        // Moves.
        t("mov", Move, |c| {
            sized!(c, |r, m, i| {
                match c.rng.below(4) {
                    0 => {
                        let (a, b) = (r(c), r(c));
                        c.a.mov(a, b)
                    }
                    1 => {
                        let (a, b) = (r(c), m(c));
                        c.a.mov(a, b)
                    }
                    2 => {
                        let (a, b) = (m(c), r(c));
                        c.a.mov(a, b)
                    }
                    _ => {
                        let (a, b) = (m(c), i(c));
                        c.a.mov(a, b)
                    }
                }
            })
        }),
        t("mov_imm64", Move, |c| {
            let d = c.rng.pick(&R64);
            let v = c.rng.interesting();
            c.a.mov(d, v)
        }),
        t("mov_high8", Move, |c| {
            let regs = [al, cl, dl, bl, ah, ch, dh, bh];
            let (a, b) = (c.rng.pick(&regs), c.rng.pick(&regs));
            c.a.mov(a, b)
        }),
        t("movzx_movsx", Move, |c| {
            let d = c.rng.pick(&R32);
            let q = c.rng.pick(&R64);
            let b = c.rng.pick(&R8);
            let w = c.rng.pick(&R16);
            match c.rng.below(6) {
                0 => c.a.movzx(d, b),
                1 => c.a.movsx(q, b),
                2 => c.a.movzx(q, w),
                3 => c.a.movsx(d, w),
                4 => c.a.movsxd(q, d),
                _ => {
                    let m = word_ptr(c.mem());
                    c.a.movsx(q, m)
                }
            }
        }),
        t("lea", Move, |c| {
            sized_wide!(c, |r, _m| {
                let d = r(c);
                let base = c.rng.pick(&R64);
                let index = c.rng.pick(&R64);
                let scale = c.rng.pick(&[1, 2, 4, 8]);
                let disp = c.rng.interesting() as i32;
                c.a.lea(d, qword_ptr(base + index * scale + disp))
            })
        }),
        t("bswap", Move, |c| {
            if c.rng.one_in(2) {
                let r = c.rng.pick(&R64);
                c.a.bswap(r)
            } else {
                let r = c.rng.pick(&R32);
                c.a.bswap(r)
            }
        }),
        needs(
            t("movbe", Move, |c| {
                sized_wide!(c, |r, m| {
                    let (a, b) = (r(c), m(c));
                    if c.rng.one_in(2) {
                        c.a.movbe(a, b)
                    } else {
                        c.a.movbe(b, a)
                    }
                })
            }),
            Feature::Movbe,
        ),
        t("sign_extend_acc", Move, |c| {
            nullary_op!(c, [cbw, cwde, cdqe, cwd, cdq, cqo])
        }),
        // Stack.
        t("push_pop", Stack, |c| match c.rng.below(6) {
            0 => {
                let r = c.rng.pick(&R64);
                c.a.push(r)
            }
            1 => {
                let r = c.rng.pick(&R64);
                c.a.pop(r)
            }
            2 => {
                let v = c.rng.interesting() as i32;
                c.a.push(v)
            }
            3 => {
                let m = qword_ptr(c.mem());
                c.a.push(m)
            }
            4 => {
                let m = qword_ptr(c.mem());
                c.a.pop(m)
            }
            _ => {
                let r = c.rng.pick(&R16);
                c.a.push(r)
            }
        }),
        t("call_ret", Stack, |c| call_ret(c, false)),
        t("call_ret_imm", Stack, |c| call_ret(c, true)),
        t("call_reg_mem", Stack, |c| {
            let mut f = c.a.create_label();
            let mut over = c.a.create_label();
            c.a.lea(rax, qword_ptr(f))?;
            if c.rng.one_in(2) {
                c.a.call(rax)?;
            } else {
                c.a.mov(qword_ptr(r15 + 0x10), rax)?;
                c.a.call(qword_ptr(r15 + 0x10))?;
            }
            c.a.jmp(over)?;
            c.a.set_label(&mut f)?;
            c.a.ret()?;
            c.a.set_label(&mut over)?;
            c.a.nop()
        }),
        t("enter_leave", Stack, |c| {
            let size = c.rng.below(64) as i32 * 8;
            let level = c.rng.below(3) as i32;
            c.a.enter(size, level)?;
            c.a.leave()
        }),
        reads(t("pushf_popf", Stack, |c| {
            c.a.pushfq()?;
            if c.rng.one_in(2) {
                // Flip the status flags and DF (IF and IOPL stay, at IOPL 0 popf leaves them).
                let v = c.rng.next_u64() as i32 & 0xcd5;
                c.a.xor(qword_ptr(rsp), v)?;
            }
            c.a.popfq()
        })),
        // Branches.
        t("jmp_skip", Branch, |c| {
            let mut l = c.a.create_label();
            c.a.jmp(l)?;
            c.a.ud2()?;
            c.a.set_label(&mut l)?;
            c.a.nop()
        }),
        reads(t("jcc_skip", Branch, |c| {
            let mut l = c.a.create_label();
            unary_op!(
                c,
                [
                    jo, jno, jb, jae, je, jne, jbe, ja, js, jns, jp, jnp, jl, jge, jle, jg
                ],
                l
            )?;
            c.skippable()?;
            c.a.set_label(&mut l)?;
            c.a.nop()
        })),
        t("loop", Branch, |c| {
            let n = c.rng.below(5) as u32;
            c.a.mov(ecx, n)?;
            let mut top = c.a.create_label();
            let mut done = c.a.create_label();
            c.a.jrcxz(done)?;
            c.a.set_label(&mut top)?;
            let r = c.rng.pick(&[rax, rdx, rbx, r8, r9]);
            c.a.add(r, 3)?;
            c.a.loop_(top)?;
            c.a.set_label(&mut done)?;
            c.a.nop()
        }),
        // Flags.
        t("flag_ops", Flags, |c| nullary_op!(c, [clc, stc, cld, std])),
        reads(t("cmc_lahf_sahf", Flags, |c| {
            nullary_op!(c, [cmc, lahf, sahf])
        })),
        // Strings.
        t("string", Class::String, string_op),
        // BMI and ADX.
        needs(
            t("bmi1", Bmi, |c| {
                let (a, b, d) = (c.rng.pick(&R64), c.rng.pick(&R64), c.rng.pick(&R64));
                match c.rng.below(5) {
                    0 => c.a.andn(d, a, b),
                    1 => c.a.bextr(d, a, b),
                    2 => c.a.blsi(d, a),
                    3 => c.a.blsmsk(d, a),
                    _ => c.a.blsr(d, a),
                }
            }),
            Feature::Bmi1,
        ),
        needs(
            t("bmi2", Bmi, |c| {
                let (a, b, d) = (c.rng.pick(&R64), c.rng.pick(&R64), c.rng.pick(&R64));
                match c.rng.below(7) {
                    0 => c.a.bzhi(d, a, b),
                    1 => c.a.pdep(d, a, b),
                    2 => c.a.pext(d, a, b),
                    3 => c.a.sarx(d, a, b),
                    4 => c.a.shlx(d, a, b),
                    5 => c.a.shrx(d, a, b),
                    _ => {
                        let n = c.rng.below(64) as u32;
                        c.a.rorx(d, a, n)
                    }
                }
            }),
            Feature::Bmi2,
        ),
        needs(
            reads(t("adx", Bmi, |c| {
                let (a, b) = (c.rng.pick(&R64), c.rng.pick(&R64));
                alu_op!(c, [adcx, adox], a, b)
            })),
            Feature::Adx,
        ),
        // SSE and SSE2.
        t("sse_move", Sse, sse_move),
        t("sse_int", Sse, |c| {
            let (a, b) = (c.rng.pick(&XMM), c.rng.pick(&XMM));
            alu_op!(
                c,
                [
                    paddb, paddw, paddd, paddq, psubb, psubw, psubd, psubq, paddsb, paddusw,
                    psubsw, psubusb, pmullw, pmulhw, pmulhuw, pmuludq, pmaddwd, pand, pandn, por,
                    pxor, pcmpeqb, pcmpeqw, pcmpeqd, pcmpgtb, pcmpgtw, pcmpgtd, pavgb, pavgw,
                    pmaxsw, pmaxub, pminsw, pminub, psadbw, packsswb, packssdw, packuswb,
                    punpcklbw, punpcklwd, punpckldq, punpcklqdq, punpckhbw, punpckhwd, punpckhdq,
                    punpckhqdq
                ],
                a,
                b
            )
        }),
        t("sse_shift", Sse, |c| {
            let a = c.rng.pick(&XMM);
            let n = c.rng.pick(&[0, 1, 7, 8, 15, 16, 31, 32, 63, 64, 200]);
            alu_op!(
                c,
                [
                    psllw, pslld, psllq, psrlw, psrld, psrlq, psraw, psrad, pslldq, psrldq
                ],
                a,
                n
            )
        }),
        t("sse_shuffle", Sse, |c| {
            let (a, b) = (c.rng.pick(&XMM), c.rng.pick(&XMM));
            let n = c.rng.below(256) as i32;
            match c.rng.below(5) {
                0 => c.a.pshufd(a, b, n),
                1 => c.a.pshuflw(a, b, n),
                2 => c.a.pshufhw(a, b, n),
                3 => c.a.shufps(a, b, n),
                _ => c.a.shufpd(a, b, n & 3),
            }
        }),
        t("sse_float", Sse, |c| {
            let (a, b) = (c.rng.pick(&XMM), c.rng.pick(&XMM));
            alu_op!(
                c,
                [
                    addps, addpd, addss, addsd, subps, subpd, subss, subsd, mulps, mulpd, mulss,
                    mulsd, divps, divpd, divss, divsd, minps, minpd, minss, minsd, maxps, maxpd,
                    maxss, maxsd, sqrtps, sqrtpd, sqrtss, sqrtsd, andps, andpd, andnps, orps,
                    xorps, xorpd, unpcklps, unpckhps, unpcklpd, unpckhpd
                ],
                a,
                b
            )
        }),
        t("sse_float_mem", Sse, |c| {
            let a = c.rng.pick(&XMM);
            if c.rng.one_in(2) {
                let m = qword_ptr(c.float_mem());
                alu_op!(c, [addsd, subsd, mulsd, divsd, minsd, maxsd, sqrtsd], a, m)
            } else {
                let m = dword_ptr(c.float_mem());
                alu_op!(c, [addss, subss, mulss, divss, minss, maxss, sqrtss], a, m)
            }
        }),
        t("sse_cmp", Sse, |c| {
            let (a, b) = (c.rng.pick(&XMM), c.rng.pick(&XMM));
            let p = c.rng.below(8) as i32;
            match c.rng.below(4) {
                0 => c.a.cmpps(a, b, p),
                1 => c.a.cmppd(a, b, p),
                2 => c.a.cmpss(a, b, p),
                _ => c.a.cmpsd_3(a, b, p),
            }
        }),
        t("sse_comis", Sse, |c| {
            let (a, b) = (c.rng.pick(&XMM), c.rng.pick(&XMM));
            alu_op!(c, [ucomiss, comiss, ucomisd, comisd], a, b)
        }),
        t("sse_convert", Sse, |c| {
            let (a, b) = (c.rng.pick(&XMM), c.rng.pick(&XMM));
            let q = c.rng.pick(&R64);
            let d = c.rng.pick(&R32);
            match c.rng.below(12) {
                0 => c.a.cvtsi2sd(a, q),
                1 => c.a.cvtsi2ss(a, d),
                2 => c.a.cvttsd2si(q, b),
                3 => c.a.cvtsd2si(d, b),
                4 => c.a.cvttss2si(d, b),
                5 => c.a.cvtss2si(q, b),
                6 => c.a.cvtsd2ss(a, b),
                7 => c.a.cvtss2sd(a, b),
                8 => c.a.cvtdq2ps(a, b),
                9 => c.a.cvtps2dq(a, b),
                10 => c.a.cvttpd2dq(a, b),
                _ => c.a.cvtdq2pd(a, b),
            }
        }),
        t("sse_gpr", Sse, |c| {
            let x = c.rng.pick(&XMM);
            let q = c.rng.pick(&R64);
            let d = c.rng.pick(&R32);
            match c.rng.below(7) {
                0 => c.a.movq(x, q),
                1 => c.a.movq(q, x),
                2 => c.a.movd(x, d),
                3 => c.a.movd(d, x),
                4 => c.a.pmovmskb(d, x),
                5 => c.a.movmskps(d, x),
                _ => {
                    let n = c.rng.below(8) as i32;
                    c.a.pextrw(d, x, n)
                }
            }
        }),
        // x87.
        t("x87_arith", X87, |c| {
            let m1 = qword_ptr(c.float_mem());
            let m2 = qword_ptr(c.float_mem());
            c.a.fld(m1)?;
            c.a.fld(m2)?;
            let (s0, s1) = (st0, st1);
            match c.rng.below(6) {
                0 => c.a.faddp(s1, s0)?,
                1 => c.a.fsubp(s1, s0)?,
                2 => c.a.fsubrp(s1, s0)?,
                3 => c.a.fmulp(s1, s0)?,
                4 => c.a.fdivp(s1, s0)?,
                _ => c.a.fdivrp(s1, s0)?,
            }
            let out = qword_ptr(c.mem());
            if c.rng.one_in(2) {
                c.a.fstp(out)
            } else {
                Ok(())
            }
        }),
        t("x87_unary", X87, |c| {
            let m = qword_ptr(c.float_mem());
            c.a.fld(m)?;
            nullary_op!(c, [fchs, fabs, fsqrt, frndint, fld1, fldz, fldpi])?;
            let out = qword_ptr(c.mem());
            c.a.fstp(out)
        }),
        t("x87_compare", X87, |c| {
            let m1 = qword_ptr(c.float_mem());
            let m2 = qword_ptr(c.float_mem());
            c.a.fld(m1)?;
            c.a.fld(m2)?;
            c.a.fcomip(st0, st1)?;
            c.a.fstp(st0)
        }),
        t("x87_integer", X87, |c| {
            let m = dword_ptr(c.mem());
            c.a.fild(m)?;
            let m2 = qword_ptr(c.float_mem());
            c.a.fadd(m2)?;
            let out = qword_ptr(c.mem());
            c.a.fistp(out)
        }),
        // Faults at CPL 3.
        t("privileged", Fault, |c| match c.rng.below(14) {
            0 => c.a.hlt(),
            1 => c.a.cli(),
            2 => c.a.sti(),
            3 => c.a.in_(al, 0x60),
            4 => c.a.out(dx, eax),
            5 => c.a.mov(rax, cr0),
            6 => c.a.mov(cr3, rax),
            7 => c.a.wrmsr(),
            8 => c.a.rdmsr(),
            9 => {
                let m = c.mem();
                c.a.lgdt(m)
            }
            10 => {
                let m = c.mem();
                c.a.lidt(m)
            }
            11 => {
                let m = c.mem();
                c.a.invlpg(m)
            }
            12 => c.a.clts(),
            _ => c.a.swapgs(),
        }),
        t("ud2_int3", Fault, |c| {
            if c.rng.one_in(2) {
                c.a.ud2()
            } else {
                c.a.int3()
            }
        }),
        Template {
            not_on_pvm: true,
            ..t("int_n", Fault, |c| {
                let v = c.rng.pick(&[0x40, 0x41, 0x20, 0x80, 3, 0xff]);
                c.a.int(v)
            })
        },
        t("memory_fault", Fault, |c| {
            let r = c.rng.pick(&[rax, rbx, rdx, r8]);
            let page = c
                .rng
                .pick(&[PAGE_NOT_PRESENT, PAGE_READ_ONLY, PAGE_SUPERVISOR]);
            let off = c.rng.below(0x1000) as i32;
            match c.rng.below(4) {
                0 => c.a.mov(r, qword_ptr(page as i32 + off)),
                1 => c.a.mov(qword_ptr(page as i32 + off), r),
                2 => {
                    // A non-canonical address: #GP(0), or #SS(0) through RSP/RBP.
                    c.a.mov(r, 0x8000_0000_0000_0000u64 | (page + off as u64))?;
                    if c.rng.one_in(2) {
                        c.a.mov(rcx, qword_ptr(r))
                    } else {
                        c.a.mov(rbp, r)?;
                        c.a.mov(rcx, qword_ptr(rbp))
                    }
                }
                _ => {
                    // An access that starts on a good page and ends on a missing one.
                    c.a.mov(r, PAGE_NOT_PRESENT - 4)?;
                    c.a.mov(rcx, qword_ptr(r))
                }
            }
        }),
        t("fetch_fault", Fault, |c| {
            let target = c
                .rng
                .pick(&[PAGE_NO_EXEC, PAGE_NOT_PRESENT, PAGE_SUPERVISOR, SCRATCH]);
            c.a.mov(rax, target)?;
            c.a.jmp(rax)
        }),
        // Segments.
        t("segment_load", Segment, |c| {
            let s = c.rng.pick(&[
                0,
                sel::USER_DATA,
                sel::USER_DATA_BASED,
                sel::KERNEL_DATA,
                sel::USER_CODE,
                sel::TSS,
                0x70 | 3,
                sel::USER_DATA & !3,
            ]);
            c.a.mov(ax, s as u32)?;
            match c.rng.below(5) {
                0 => c.a.mov(ds, ax),
                1 => c.a.mov(es, ax),
                2 => c.a.mov(fs, ax),
                3 => c.a.mov(gs, ax),
                _ => c.a.mov(ss, ax),
            }
        }),
        t("segment_store", Segment, |c| {
            let d = c.rng.pick(&R64);
            match c.rng.below(6) {
                0 => c.a.mov(d, cs),
                1 => c.a.mov(d, ss),
                2 => c.a.mov(d, ds),
                3 => c.a.push(fs),
                4 => c.a.pop(gs),
                _ => {
                    let m = word_ptr(c.mem());
                    c.a.mov(m, es)
                }
            }
        }),
        t("descriptor_query", Segment, |c| {
            let s = c
                .rng
                .pick(&[0u32, 0x08, 0x10, 0x1b, 0x23, 0x2b, 0x30, 0x43, 0x53, 0x70]);
            let d = c.rng.pick(&R32);
            c.a.mov(ecx, s)?;
            match c.rng.below(5) {
                0 => c.a.lar(d, ecx),
                1 => c.a.lsl(d, ecx),
                2 => c.a.verr(cx),
                3 => c.a.verw(cx),
                _ => {
                    let m = c.mem();
                    c.a.sgdt(m)
                }
            }
        }),
    ]
}

/// Whether `t` may sit in a block a branch skips: it neither branches nor faults nor reads
/// flags (which the static flag view could not guarantee defined there).
pub fn skippable(t: &Template) -> bool {
    matches!(
        t.class,
        Class::Alu | Class::Move | Class::Bit | Class::Shift
    ) && !t.reads_flags
        && t.feature == Feature::None
}

fn shift<T>(c: &mut Ctx, a: T, n: u32) -> Result<(), IcedError>
where
    CodeAssembler: CodeAsmShl<T, u32>
        + CodeAsmShr<T, u32>
        + CodeAsmSar<T, u32>
        + CodeAsmRol<T, u32>
        + CodeAsmRor<T, u32>
        + CodeAsmRcl<T, u32>
        + CodeAsmRcr<T, u32>,
{
    match c.rng.below(7) {
        0 => c.a.shl(a, n),
        1 => c.a.shr(a, n),
        2 => c.a.sar(a, n),
        3 => c.a.rol(a, n),
        4 => c.a.ror(a, n),
        // RCL and RCR read CF: the templates using this are marked as reading flags.
        5 => c.a.rcl(a, n),
        _ => c.a.rcr(a, n),
    }
}

fn shift_cl<T>(c: &mut Ctx, a: T) -> Result<(), IcedError>
where
    CodeAssembler: CodeAsmShl<T, AsmRegister8>
        + CodeAsmShr<T, AsmRegister8>
        + CodeAsmSar<T, AsmRegister8>
        + CodeAsmRol<T, AsmRegister8>
        + CodeAsmRor<T, AsmRegister8>,
{
    match c.rng.below(5) {
        0 => c.a.shl(a, cl),
        1 => c.a.shr(a, cl),
        2 => c.a.sar(a, cl),
        3 => c.a.rol(a, cl),
        _ => c.a.ror(a, cl),
    }
}

/// `call f; jmp over; f: inc r; ret; over:`, or with `ret 8` dropping a slot pushed before the
/// call.
fn call_ret(c: &mut Ctx, drop_slot: bool) -> Result<(), IcedError> {
    let mut f = c.a.create_label();
    let mut over = c.a.create_label();
    if drop_slot {
        c.a.push(rax)?;
    }
    c.a.call(f)?;
    c.a.jmp(over)?;
    c.a.set_label(&mut f)?;
    let inc = c.rng.pick(&R64);
    c.a.inc(inc)?;
    if drop_slot {
        c.a.ret_1(8)?;
    } else {
        c.a.ret()?;
    }
    c.a.set_label(&mut over)?;
    c.a.nop()
}

/// A division that does not fault: a non-zero divisor and a dividend whose quotient fits.
fn div_no_fault(c: &mut Ctx) -> Result<(), IcedError> {
    let signed = c.rng.one_in(2);
    let divisor = c.rng.pick(&[rbx, rsi, rdi, r8, r9]);
    let v = c.rng.interesting() | 1;
    c.a.mov(divisor, v)?;
    match c.rng.below(3) {
        0 => {
            // 64-bit: RDX:RAX with RDX the sign extension of RAX (or zero) always fits for
            // divisors other than 0 and -1 ... except idiv of MIN by -1; use a positive divisor.
            c.a.mov(divisor, (v & 0x7fff_ffff_ffff_ffff) | 1)?;
            if signed {
                c.a.cqo()?;
                c.a.idiv(divisor)
            } else {
                c.a.xor(edx, edx)?;
                c.a.div(divisor)
            }
        }
        1 => {
            let d32 = match divisor {
                x if x == rbx => ebx,
                x if x == rsi => esi,
                x if x == rdi => edi,
                x if x == r8 => r8d,
                _ => r9d,
            };
            c.a.mov(d32, ((v as u32) & 0x7fff_ffff) | 1)?;
            if signed {
                c.a.cdq()?;
                c.a.idiv(d32)
            } else {
                c.a.xor(edx, edx)?;
                c.a.div(d32)
            }
        }
        _ => {
            // 8-bit: AX / r8 with AH zeroed, divisor above AH.
            c.a.movzx(eax, al)?;
            c.a.mov(bl, i32::from((v as u8) | 1))?;
            if signed {
                c.a.cbw()?;
                c.a.and(bl, 0x7f)?;
                c.a.or(bl, 1)?;
                c.a.idiv(bl)
            } else {
                c.a.div(bl)
            }
        }
    }
}

/// A string instruction with its set-up: RSI and RDI in the scratch pages, a small RCX, DF either
/// way, and a prefix.
fn string_op(c: &mut Ctx) -> Result<(), IcedError> {
    let src = R15_BASE - 0x400 + c.rng.below(0x100);
    let dst = R15_BASE + 0x200 + c.rng.below(0x100);
    c.a.mov(rsi, src)?;
    c.a.mov(rdi, dst)?;
    let n = c.rng.below(20) as u32;
    c.a.mov(ecx, n)?;
    match c.rng.below(3) {
        0 => c.a.std()?,
        1 => c.a.cld()?,
        _ => {}
    }
    let size = c.rng.below(4);
    let prefix = c.rng.below(3);
    let op = c.rng.below(5);
    // movs, stos, lods take rep; cmps and scas take repe or repne.
    match (op, prefix) {
        (0..=2, 1) => {
            let _ = c.a.rep();
        }
        (3 | 4, 1) => {
            let _ = c.a.repe();
        }
        (3 | 4, 2) => {
            let _ = c.a.repne();
        }
        _ => {}
    }
    match (op, size) {
        (0, 0) => c.a.movsb(),
        (0, 1) => c.a.movsw(),
        (0, 2) => c.a.movsd(),
        (0, _) => c.a.movsq(),
        (1, 0) => c.a.stosb(),
        (1, 1) => c.a.stosw(),
        (1, 2) => c.a.stosd(),
        (1, _) => c.a.stosq(),
        (2, 0) => c.a.lodsb(),
        (2, 1) => c.a.lodsw(),
        (2, 2) => c.a.lodsd(),
        (2, _) => c.a.lodsq(),
        (3, 0) => c.a.cmpsb(),
        (3, 1) => c.a.cmpsw(),
        (3, 2) => c.a.cmpsd(),
        (3, _) => c.a.cmpsq(),
        (_, 0) => c.a.scasb(),
        (_, 1) => c.a.scasw(),
        (_, 2) => c.a.scasd(),
        (_, _) => c.a.scasq(),
    }
}

/// SSE moves between registers and memory.
fn sse_move(c: &mut Ctx) -> Result<(), IcedError> {
    let (a, b) = (c.rng.pick(&XMM), c.rng.pick(&XMM));
    match c.rng.below(10) {
        0 => c.a.movdqa(a, b),
        1 => {
            let m = xmmword_ptr(c.mem_aligned(16));
            c.a.movdqa(a, m)
        }
        2 => {
            let m = xmmword_ptr(c.mem());
            c.a.movdqu(m, a)
        }
        3 => {
            let m = xmmword_ptr(c.mem());
            c.a.movups(a, m)
        }
        4 => {
            let m = xmmword_ptr(c.mem_aligned(16));
            c.a.movaps(m, a)
        }
        5 => {
            // Misaligned movdqa: #GP(0).
            let m = xmmword_ptr(c.mem_aligned(16) + 8);
            c.a.movdqa(a, m)
        }
        6 => c.a.movsd_2(a, b),
        7 => {
            let m = qword_ptr(c.float_mem());
            c.a.movsd_2(a, m)
        }
        8 => {
            let m = dword_ptr(c.mem());
            c.a.movss(m, a)
        }
        _ => c.a.movq(a, b),
    }
}
