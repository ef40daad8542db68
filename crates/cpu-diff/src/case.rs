//! One differential case (initial state and code) and the final state each side reports.

use hypervisor::{SpecialRegisters, StandardRegisters};

use crate::machine::{self, CODE, CODE_SIZE, FX_IN, FX_OUT, SCRATCH_SIZE};

/// Where the test code starts: after the KVM side's 16-byte prologue (`fxrstor64 [FX_IN]`).
pub const TEST_START: u64 = CODE + 16;

/// Largest test code, leaving room for the epilogue.
pub const MAX_CODE: usize = CODE_SIZE - 16 - EPILOGUE_LEN;

/// `fxsave64 [FX_OUT]; int3`: the KVM side's end. An `out` at CPL 3 cannot end the run, since
/// the paravirtual KVM of our hosts forces IOPL 0 in user mode; the `int3` is told from one in the
/// test code by the return address in its frame.
pub const EPILOGUE_LEN: usize = 10;

/// Everything a case sets before it runs.
#[derive(Debug, Clone)]
pub struct CaseInput {
    /// A short name: the template names of a generated sequence, or a hand-written case's name.
    pub name: String,
    /// RAX..R15 in encoding order.
    pub gpr: [u64; 16],
    /// Initial RFLAGS (IF and bit 1 included).
    pub rflags: u64,
    /// The test code, assembled to run at [`TEST_START`].
    pub code: Vec<u8>,
    /// Initial contents of the scratch pages.
    pub scratch: Vec<u8>,
    /// Initial contents of the user stack page.
    pub ustack: Vec<u8>,
    /// XMM0..XMM15.
    pub xmm: [u128; 16],
    /// MXCSR (exceptions masked).
    pub mxcsr: u32,
    /// x87 control word.
    pub fcw: u16,
    /// Segment and control registers; [`machine::user_sregs`] unless the case needs others.
    pub sregs: SpecialRegisters,
}

impl CaseInput {
    /// A case with zeroed state: CPL 3, IOPL 0, RSP in the middle of the user stack.
    pub fn new(name: impl Into<String>, code: Vec<u8>) -> Self {
        let mut gpr = [0; 16];
        gpr[4] = machine::USTACK_RSP;
        CaseInput {
            name: name.into(),
            gpr,
            rflags: machine::RFLAGS_FIXED | machine::RFLAGS_IF,
            code,
            scratch: vec![0; SCRATCH_SIZE],
            ustack: vec![0; 0x1000],
            xmm: [0; 16],
            mxcsr: 0x1f80,
            fcw: 0x37f,
            sregs: machine::user_sregs(),
        }
    }

    /// Address of the epilogue, where a run that raised nothing ends.
    pub fn epilogue(&self) -> u64 {
        TEST_START + self.code.len() as u64
    }

    /// Writes the case's parts of guest memory: code page with prologue and epilogue, scratch,
    /// stacks and the FXSAVE image.
    pub fn load(&self, mem: &mut [u8]) {
        assert!(self.code.len() <= MAX_CODE, "test code too long");
        let code = &mut mem[CODE as usize..CODE as usize + CODE_SIZE];
        // Everything the test code does not cover is ud2, so a stray jump raises #UD.
        for pair in code.chunks_mut(2) {
            pair.copy_from_slice(&[0x0f, 0x0b][..pair.len()]);
        }
        let mut prologue = vec![0x48, 0x0f, 0xae, 0x0c, 0x25];
        prologue.extend_from_slice(&(FX_IN as u32).to_le_bytes());
        prologue.resize(16, 0x90);
        code[..16].copy_from_slice(&prologue);
        let start = 16;
        code[start..start + self.code.len()].copy_from_slice(&self.code);
        let mut epilogue = vec![0x48, 0x0f, 0xae, 0x04, 0x25];
        epilogue.extend_from_slice(&(FX_OUT as u32).to_le_bytes());
        epilogue.push(0xcc);
        debug_assert_eq!(epilogue.len(), EPILOGUE_LEN);
        let at = start + self.code.len();
        code[at..at + EPILOGUE_LEN].copy_from_slice(&epilogue);
        let s = machine::SCRATCH as usize;
        mem[s..s + SCRATCH_SIZE].copy_from_slice(&self.scratch);
        let u = machine::USTACK as usize;
        mem[u..u + 0x1000].copy_from_slice(&self.ustack);
        let k = machine::KSTACK as usize;
        mem[k..k + 0x1000].fill(0);
        let fx = FxState {
            fcw: self.fcw,
            fsw: 0,
            ftw: 0,
            mxcsr: self.mxcsr,
            st: [0; 8],
            xmm: self.xmm,
        };
        let f = FX_IN as usize;
        mem[f..f + 512].copy_from_slice(&fx.to_image());
        mem[FX_OUT as usize..FX_OUT as usize + 512].fill(0);
    }
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// The code reached the epilogue.
    Normal,
    /// An exception or interrupt reached the stub of this vector.
    Vector(u8),
    /// The software CPU does not implement an instruction.
    Unimplemented(String),
    /// Anything else: shutdown, an emulation failure, a port nobody expects, a time-out.
    Other(String),
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            End::Normal => write!(f, "reached the epilogue"),
            End::Vector(v) => write!(f, "vector {v} ({})", vector_name(*v)),
            End::Unimplemented(s) => write!(f, "unimplemented: {s}"),
            End::Other(s) => write!(f, "{s}"),
        }
    }
}

/// The mnemonic of an exception vector.
pub fn vector_name(v: u8) -> &'static str {
    const NAMES: [&str; 22] = [
        "#DE", "#DB", "NMI", "#BP", "#OF", "#BR", "#UD", "#NM", "#DF", "?", "#TS", "#NP", "#SS",
        "#GP", "#PF", "?", "#MF", "#AC", "#MC", "#XM", "#VE", "#CP",
    ];
    NAMES.get(usize::from(v)).copied().unwrap_or("int n")
}

/// x87 and SSE state as FXSAVE lays it out (the parts compared).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FxState {
    /// Control word.
    pub fcw: u16,
    /// Status word.
    pub fsw: u16,
    /// Abridged tag word: bit i set when physical register i is valid.
    pub ftw: u8,
    /// MXCSR.
    pub mxcsr: u32,
    /// ST(0)..ST(7), 80 bits each.
    pub st: [u128; 8],
    /// XMM0..XMM15.
    pub xmm: [u128; 16],
}

impl FxState {
    /// The 512-byte FXSAVE image (64-bit format).
    pub fn to_image(&self) -> [u8; 512] {
        let mut b = [0u8; 512];
        b[0..2].copy_from_slice(&self.fcw.to_le_bytes());
        b[2..4].copy_from_slice(&self.fsw.to_le_bytes());
        b[4] = self.ftw;
        b[24..28].copy_from_slice(&self.mxcsr.to_le_bytes());
        b[28..32].copy_from_slice(&0xffffu32.to_le_bytes());
        for (i, st) in self.st.iter().enumerate() {
            b[32 + 16 * i..32 + 16 * i + 10].copy_from_slice(&st.to_le_bytes()[..10]);
        }
        for (i, x) in self.xmm.iter().enumerate() {
            b[160 + 16 * i..176 + 16 * i].copy_from_slice(&x.to_le_bytes());
        }
        b
    }

    /// Reads a 512-byte FXSAVE image.
    pub fn from_image(b: &[u8]) -> Self {
        let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
        let mut st = [0u128; 8];
        for (i, s) in st.iter_mut().enumerate() {
            let mut v = [0u8; 16];
            v[..10].copy_from_slice(&b[32 + 16 * i..42 + 16 * i]);
            *s = u128::from_le_bytes(v);
        }
        let mut xmm = [0u128; 16];
        for (i, x) in xmm.iter_mut().enumerate() {
            let mut v = [0u8; 16];
            v.copy_from_slice(&b[160 + 16 * i..176 + 16 * i]);
            *x = u128::from_le_bytes(v);
        }
        FxState {
            fcw: u16_at(0),
            fsw: u16_at(2),
            ftw: b[4],
            mxcsr: u32::from_le_bytes([b[24], b[25], b[26], b[27]]),
            st,
            xmm,
        }
    }
}

/// The final state of one side.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// How the run ended.
    pub end: End,
    /// General registers, RIP (the epilogue's address when the run ended normally) and RFLAGS.
    pub regs: StandardRegisters,
    /// Segment, control and table registers.
    pub sregs: SpecialRegisters,
    /// The compared memory ranges ([`machine::COMPARED`]), one after another.
    pub mem: Vec<u8>,
    /// x87 and SSE state, when the run ended normally (the KVM side saves it in the epilogue).
    pub fx: Option<FxState>,
}

/// Copies the compared ranges of `mem`.
pub fn compared_memory(mem: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for (at, len) in machine::COMPARED {
        out.extend_from_slice(&mem[at as usize..at as usize + len]);
    }
    out
}

/// The guest-physical address of byte `i` of [`Snapshot::mem`].
pub fn compared_address(mut i: usize) -> u64 {
    for (at, len) in machine::COMPARED {
        if i < len {
            return at + i as u64;
        }
        i -= len;
    }
    u64::MAX
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fx_image_round_trips() {
        let mut fx = FxState {
            fcw: 0x27f,
            fsw: 0x3800,
            ftw: 0x81,
            mxcsr: 0x9fc0,
            ..Default::default()
        };
        fx.st[1] = 0x3fff_8000_0000_0000_0000;
        fx.xmm[15] = u128::MAX - 5;
        assert_eq!(FxState::from_image(&fx.to_image()), fx);
    }
}
