//! Random instruction sequences from a fixed seed: the PRNG, the initial state, and the driver
//! that strings templates together. The templates themselves are in `templates`.
//!
//! A case is a function of `(seed, index)` alone, so any case can be rebuilt by itself.

use iced_x86::code_asm::{AsmMemoryOperand, CodeAssembler, IcedError, r14, r15};
use iced_x86::{Formatter, Instruction, IntelFormatter};

use crate::case::{CaseInput, MAX_CODE, TEST_START};
use crate::flags::{self, rf};
use crate::machine::{self, SCRATCH, SCRATCH_SIZE};
use crate::templates::{Class, Template};

/// splitmix64: small, fast, and good enough to pick instructions.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// A number in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
    /// True with probability `1/n`.
    pub fn one_in(&mut self, n: u64) -> bool {
        self.below(n) == 0
    }
    /// One element of `items`.
    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }
    /// A value that exercises edge cases: zero, one, all ones, sign boundaries of every size,
    /// small numbers, and plain random bits.
    pub fn interesting(&mut self) -> u64 {
        const EDGES: [u64; 14] = [
            0,
            1,
            2,
            0x7f,
            0x80,
            0xff,
            0x7fff,
            0x8000,
            0xffff,
            0x7fff_ffff,
            0x8000_0000,
            0xffff_ffff,
            0x7fff_ffff_ffff_ffff,
            0x8000_0000_0000_0000,
        ];
        match self.below(8) {
            0 | 1 => self.pick(&EDGES),
            2 => u64::MAX - self.below(3),
            3 => self.below(70),
            4 => self
                .pick(&EDGES)
                .wrapping_add(self.below(3))
                .wrapping_sub(1),
            5 => self.next_u64() & 0xffff_ffff,
            _ => self.next_u64(),
        }
    }
}

/// Special floating-point bit patterns (double precision): zeros, infinities, NaNs (quiet and
/// signalling), denormals, the largest and smallest normals, one and friends.
pub const SPECIAL_F64: [u64; 14] = [
    0,
    0x8000_0000_0000_0000,
    0x7ff0_0000_0000_0000,
    0xfff0_0000_0000_0000,
    0x7ff8_0000_0000_0000,
    0x7ff4_0000_0000_0001,
    0xfff8_0000_0000_0000,
    0x0000_0000_0000_0001,
    0x000f_ffff_ffff_ffff,
    0x0010_0000_0000_0000,
    0x7fef_ffff_ffff_ffff,
    0x3ff0_0000_0000_0000,
    0xbff8_0000_0000_0000,
    0x4000_0000_0000_0000,
];

/// The same for single precision.
pub const SPECIAL_F32: [u32; 14] = [
    0,
    0x8000_0000,
    0x7f80_0000,
    0xff80_0000,
    0x7fc0_0000,
    0x7fa0_0001,
    0xffc0_0000,
    0x0000_0001,
    0x007f_ffff,
    0x0080_0000,
    0x7f7f_ffff,
    0x3f80_0000,
    0xbfc0_0000,
    0x4000_0000,
];

/// Scratch layout: `[SCRATCH, SCRATCH + FLOATS)` holds a table of floating-point values (special
/// and random); the rest is random bytes. R15 points into the middle of the scratch pages.
pub const FLOATS: u64 = 0x200;
/// R15's value in every generated case: memory operands are `[r15 + disp]` or
/// `[r15 + r14 * scale + disp]`.
pub const R15_BASE: u64 = SCRATCH + 0x1000;

/// What a template has at hand: the random source, the assembler, and the flag state so far.
pub struct Ctx<'a> {
    /// The random source.
    pub rng: &'a mut Rng,
    /// The code being built.
    pub a: CodeAssembler,
    /// Status flags that may be undefined at this point (static view of the sequence).
    undef: u64,
    /// Inside a block that may be skipped: flags may be left undefined but never defined.
    skippable: u32,
    /// Templates that may sit in a block a branch skips (see `templates::skippable`).
    skip_pool: Vec<Template>,
}

impl Ctx<'_> {
    /// A memory operand in the scratch pages, without size: `[r15 + disp]` or
    /// `[r15 + r14 * scale + disp]` (R14 holds 0..32 at the start; templates leave R14 and R15
    /// alone).
    pub fn mem(&mut self) -> AsmMemoryOperand {
        let disp = self.rng.below(0x600) as i32 - 0x300;
        if self.rng.one_in(2) {
            r15 + disp
        } else {
            let scale = self.rng.pick(&[1, 2, 4, 8]);
            r15 + r14 * scale + disp
        }
    }

    /// A memory operand aligned to `align` bytes.
    pub fn mem_aligned(&mut self, align: i32) -> AsmMemoryOperand {
        let disp = (self.rng.below(0x600) as i32 - 0x300) & !(align - 1);
        r15 + disp
    }

    /// A memory operand in the floating-point table.
    pub fn float_mem(&mut self) -> AsmMemoryOperand {
        let off = (self.rng.below(FLOATS / 8) * 8) as i64 - (R15_BASE - SCRATCH) as i64;
        r15 + off as i32
    }

    /// Emits `cmp` of two registers, which defines all six status flags: used before a template
    /// that reads flags when the sequence may have left some undefined.
    fn define_flags(&mut self) -> Result<(), IcedError> {
        let a = self.rng.pick(&crate::templates::R64);
        let b = self.rng.pick(&crate::templates::R64);
        self.a.cmp(a, b)
    }

    /// Emits a random template inside a block that a branch may skip.
    pub fn skippable(&mut self) -> Result<(), IcedError> {
        if self.skip_pool.is_empty() {
            return self.a.nop();
        }
        self.skippable += 1;
        let t = self.rng.pick(&self.skip_pool);
        let r = self.emit(&t);
        self.skippable -= 1;
        r
    }

    /// Emits `t`, first defining the flags if it reads some that may be undefined, then
    /// updating the static flag view from the instructions it added.
    pub fn emit(&mut self, t: &Template) -> Result<(), IcedError> {
        if t.reads_flags && self.undef != 0 {
            self.define_flags()?;
            self.undef = 0;
        }
        let before = self.a.instructions().len();
        (t.emit)(self)?;
        let dummy = x86_cpu::CpuState::default();
        let added: Vec<Instruction> = self.a.instructions()[before..].to_vec();
        for insn in &added {
            let e = flags::effect(insn, &dummy);
            let count_dependent = matches!(
                insn.mnemonic(),
                iced_x86::Mnemonic::Shl
                    | iced_x86::Mnemonic::Sal
                    | iced_x86::Mnemonic::Shr
                    | iced_x86::Mnemonic::Sar
                    | iced_x86::Mnemonic::Rol
                    | iced_x86::Mnemonic::Ror
                    | iced_x86::Mnemonic::Rcl
                    | iced_x86::Mnemonic::Rcr
                    | iced_x86::Mnemonic::Shld
                    | iced_x86::Mnemonic::Shrd
            ) || insn.has_rep_prefix()
                || insn.has_repne_prefix();
            let (defined, undefined) = if count_dependent {
                (0, rf::STATUS)
            } else {
                (e.defined, e.undefined)
            };
            if self.skippable == 0 {
                self.undef &= !defined;
            }
            self.undef |= undefined;
        }
        Ok(())
    }
}

/// One generated case: its input and the names of its templates.
pub struct Generated {
    /// The case.
    pub input: CaseInput,
    /// The classes of its templates.
    pub classes: Vec<Class>,
}

/// Builds case `index` of `seed` from templates in `pool`.
pub fn generate(seed: u64, index: u64, pool: &[Template]) -> Generated {
    // Each case has its own stream, so one case can be rebuilt without the others.
    let mut rng = Rng::new(seed ^ index.wrapping_mul(0xd6e8_feb8_6659_fd93));
    rng.next_u64();
    loop {
        if let Some(g) = try_generate(&mut rng, pool) {
            return g;
        }
    }
}

fn try_generate(rng: &mut Rng, pool: &[Template]) -> Option<Generated> {
    let n = 1 + rng.below(8);
    let mut names = Vec::new();
    let mut classes = Vec::new();
    let code = {
        let mut c = Ctx {
            rng,
            a: CodeAssembler::new(64).ok()?,
            undef: 0,
            skippable: 0,
            skip_pool: pool
                .iter()
                .filter(|t| crate::templates::skippable(t))
                .copied()
                .collect(),
        };
        for _ in 0..n {
            let t = c.rng.pick(pool);
            // A template may not fit the registers it drew (an encoding the assembler refuses):
            // then the whole case is drawn again.
            c.emit(&t).ok()?;
            names.push(t.name);
            classes.push(t.class);
        }
        c.a.assemble(TEST_START).ok()?
    };
    if code.len() > MAX_CODE {
        return None;
    }
    let mut input = CaseInput::new(names.join(" "), code);
    randomize_state(rng, &mut input);
    Some(Generated { input, classes })
}

/// Random registers, flags, memory and x87/SSE state.
fn randomize_state(rng: &mut Rng, c: &mut CaseInput) {
    for (i, r) in c.gpr.iter_mut().enumerate() {
        *r = match i {
            4 => machine::USTACK_RSP,
            14 => rng.below(32),
            15 => R15_BASE,
            _ => rng.interesting(),
        };
    }
    let status = rng.next_u64() & rf::STATUS;
    let df = if rng.one_in(4) { 1 << 10 } else { 0 };
    c.rflags = machine::RFLAGS_FIXED | machine::RFLAGS_IF | status | df;
    for chunk in c.scratch.chunks_mut(8) {
        chunk.copy_from_slice(&rng.interesting().to_le_bytes()[..chunk.len()]);
    }
    for i in 0..(FLOATS / 8) as usize {
        let v = match rng.below(4) {
            0 => rng.pick(&SPECIAL_F64),
            1 => u64::from(rng.pick(&SPECIAL_F32)) | (u64::from(rng.pick(&SPECIAL_F32)) << 32),
            2 => f64::to_bits((rng.below(2001) as f64 - 1000.0) / 8.0),
            _ => rng.next_u64(),
        };
        c.scratch[8 * i..8 * i + 8].copy_from_slice(&v.to_le_bytes());
    }
    for chunk in c.ustack.chunks_mut(8) {
        chunk.copy_from_slice(&rng.interesting().to_le_bytes());
    }
    for x in c.xmm.iter_mut() {
        let mut lanes = [0u64; 2];
        for l in lanes.iter_mut() {
            *l = match rng.below(4) {
                0 => rng.pick(&SPECIAL_F64),
                1 => u64::from(rng.pick(&SPECIAL_F32)) | (u64::from(rng.pick(&SPECIAL_F32)) << 32),
                2 => f64::to_bits((rng.below(2001) as f64 - 1000.0) / 4.0),
                _ => rng.interesting(),
            };
        }
        *x = u128::from(lanes[0]) | (u128::from(lanes[1]) << 64);
    }
    // Rounding mode, flush-to-zero and denormals-are-zero now and then; exceptions masked.
    c.mxcsr = 0x1f80;
    if rng.one_in(4) {
        c.mxcsr |= (rng.below(4) as u32) << 13;
    }
    if rng.one_in(8) {
        c.mxcsr |= 0x8040;
    }
    c.fcw = 0x37f;
    if rng.one_in(4) {
        c.fcw = 0x037f & !(3 << 8) | ((rng.below(4) as u16) << 8) | ((rng.below(4) as u16) << 10);
    }
    debug_assert_eq!(c.scratch.len(), SCRATCH_SIZE);
}

/// The case's code in Intel syntax, one instruction a line, with addresses.
pub fn disassemble(code: &[u8]) -> String {
    let mut out = String::new();
    let mut d = iced_x86::Decoder::with_ip(64, code, TEST_START, iced_x86::DecoderOptions::NONE);
    let mut f = IntelFormatter::new();
    while d.can_decode() {
        let insn = d.decode();
        let mut text = String::new();
        f.format(&insn, &mut text);
        let start = (insn.ip() - TEST_START) as usize;
        let bytes: Vec<String> = code[start..start + insn.len()]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        out.push_str(&format!(
            "    {:#x}: {:<32} {}\n",
            insn.ip(),
            text,
            bytes.join(" ")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_case_is_a_function_of_seed_and_index() {
        let pool = crate::templates::all();
        let a = generate(42, 7, &pool);
        let b = generate(42, 7, &pool);
        assert_eq!(a.input.code, b.input.code);
        assert_eq!(a.input.gpr, b.input.gpr);
        assert_eq!(a.input.scratch, b.input.scratch);
        let c = generate(42, 8, &pool);
        assert_ne!(a.input.gpr, c.input.gpr);
    }

    #[test]
    fn every_template_assembles() {
        let pool = crate::templates::all();
        let mut rng = Rng::new(1);
        for t in &pool {
            let mut ok = 0;
            for _ in 0..50 {
                let mut c = Ctx {
                    rng: &mut rng,
                    a: CodeAssembler::new(64).unwrap(),
                    undef: 0,
                    skippable: 0,
                    skip_pool: pool.clone(),
                };
                if c.emit(t).is_ok() && c.a.assemble(TEST_START).is_ok() {
                    ok += 1;
                }
            }
            assert!(
                ok >= 25,
                "template {} assembles only {ok} times in 50",
                t.name
            );
        }
    }

    #[test]
    fn excluded_names_exist() {
        let pool = crate::templates::all();
        let hand = crate::handwritten::all();
        for (name, _) in crate::templates::EXCLUDED {
            assert!(
                pool.iter().any(|t| t.name == *name) || hand.iter().any(|h| h.input.name == *name),
                "excluded name {name} is neither a template nor a hand-written case"
            );
        }
    }
}
