//! The x87 environment and state images: FNSTENV/FLDENV and FNSAVE/FRSTOR (with their waiting
//! forms), in the protected-mode 16- and 32-bit layouts.

use iced_x86::{Instruction, Mnemonic};

use super::{X87, phys};
use crate::bus::CpuBus;
use crate::exec::{Cpu, ExecResult, Flow};
use crate::fault::Result;
use crate::mmu::Privilege;

/// Executes `insn` if it is one of the environment or state image instructions.
pub(super) fn execute(
    cpu: &mut Cpu,
    bus: &mut dyn CpuBus,
    insn: &Instruction,
) -> Option<ExecResult> {
    use Mnemonic as M;
    let m = insn.mnemonic();
    let r = match m {
        M::Fnstenv | M::Fstenv | M::Fnsave | M::Fsave => save(cpu, bus, insn),
        M::Fldenv | M::Frstor => restore(cpu, bus, insn),
        _ => return None,
    };
    Some(r.map(|()| Flow::Next).map_err(Into::into))
}

/// Whether the image uses the 32-bit layout (28-byte environment).
fn wide(insn: &Instruction) -> bool {
    matches!(insn.memory_size().size(), 28 | 108)
}

fn env_image(x: &X87, wide: bool) -> Vec<u8> {
    let fields = [
        u32::from(x.fcw),
        u32::from(x.fsw),
        u32::from(x.ftw),
        x.fip as u32,
        u32::from(x.fop) << 16,
        x.fdp as u32,
        0,
    ];
    let mut out = Vec::with_capacity(28);
    for f in fields {
        if wide {
            out.extend_from_slice(&f.to_le_bytes());
        } else {
            out.extend_from_slice(&(f as u16).to_le_bytes());
        }
    }
    if !wide {
        // The 16-bit layout keeps FOP nowhere and the selector in its own field.
        out[8..10].copy_from_slice(&0u16.to_le_bytes());
    }
    out
}

fn load_env(x: &mut X87, b: &[u8], wide: bool) {
    let field = |i: usize| -> u32 {
        if wide {
            u32::from_le_bytes(b[4 * i..4 * i + 4].try_into().unwrap())
        } else {
            u32::from(u16::from_le_bytes([b[2 * i], b[2 * i + 1]]))
        }
    };
    x.fcw = field(0) as u16;
    x.fsw = field(1) as u16;
    x.ftw = field(2) as u16;
    x.fip = u64::from(field(3));
    x.fop = if wide {
        (field(4) >> 16) as u16 & 0x7ff
    } else {
        0
    };
    x.fdp = u64::from(field(5));
}

fn save(cpu: &mut Cpu, bus: &mut dyn CpuBus, insn: &Instruction) -> Result<()> {
    let wide = wide(insn);
    let x = cpu.state.x87;
    let mut b = env_image(&x, wide);
    let full = matches!(insn.mnemonic(), Mnemonic::Fnsave | Mnemonic::Fsave);
    if full {
        for i in 0..8 {
            b.extend_from_slice(&x.regs[phys(&x, i)].to_le_bytes()[..10]);
        }
    }
    let lin = cpu.linear(cpu.mem_seg(insn), cpu.ea(insn), b.len() as u32, true)?;
    cpu.write_linear(bus, lin, &b, Privilege::Current)?;
    let x = &mut cpu.state.x87;
    if full {
        *x = X87 {
            regs: x.regs,
            ..X87::default()
        };
    } else {
        x.fcw |= 0x3f;
    }
    Ok(())
}

fn restore(cpu: &mut Cpu, bus: &mut dyn CpuBus, insn: &Instruction) -> Result<()> {
    let wide = wide(insn);
    let len = insn.memory_size().size();
    let lin = cpu.linear(cpu.mem_seg(insn), cpu.ea(insn), len as u32, false)?;
    let mut b = vec![0u8; len];
    cpu.read_linear(bus, lin, &mut b, Privilege::Current)?;
    let x = &mut cpu.state.x87;
    load_env(x, &b, wide);
    if insn.mnemonic() == Mnemonic::Frstor {
        let base = if wide { 28 } else { 14 };
        for i in 0..8 {
            let at = base + 10 * i;
            let mut v = [0u8; 16];
            v[..10].copy_from_slice(&b[at..at + 10]);
            let p = phys(x, i);
            x.regs[p] = u128::from_le_bytes(v);
        }
    }
    Ok(())
}
