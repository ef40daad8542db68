//! MXCSR access and the state save areas: FXSAVE/FXRSTOR (the legacy 512-byte image) and the
//! XSAVE family for the x87 and SSE components (XCR0 bits 0 and 1).
//!
//! Not modelled: IA32_XSS (XSAVES/XRSTORS see supervisor components as absent) and every
//! component above SSE; a request that includes one (XCR0 & EDX:EAX beyond bit 1) stops the VM
//! as unimplemented. FCS/FDS are not tracked and save as zero. XSAVEOPT always writes what
//! XSAVE would (allowed: the init and modified optimisations are optional).

use iced_x86::{Instruction, Mnemonic};

use super::{check_sse, mxcsr};
use crate::bus::CpuBus;
use crate::exec::{Cpu, ExecResult, Flow, Stop};
use crate::fault::{Exception, Fault, Result};
use crate::mmu::Privilege;
use crate::state::X87;
use crate::state::bits::{CR0_EM, CR0_TS, CR4_OSXSAVE};

/// Size of the legacy region and of the XSAVE header that follows it.
const LEGACY: usize = 512;
const HEADER: usize = 64;
/// The components this CPU implements: x87 and SSE.
const SUPPORTED: u64 = 0b11;
/// The initial MXCSR.
const MXCSR_INIT: u32 = 0x1f80;

/// Executes `insn` if it is LDMXCSR, STMXCSR or a save-area instruction.
pub(super) fn execute(
    cpu: &mut Cpu,
    bus: &mut dyn CpuBus,
    insn: &Instruction,
) -> Option<ExecResult> {
    use Mnemonic as M;
    let m = insn.mnemonic();
    let r = match m {
        M::Ldmxcsr | M::Stmxcsr => mxcsr_access(cpu, bus, insn),
        M::Fxsave | M::Fxsave64 | M::Fxrstor | M::Fxrstor64 => fxsave(cpu, bus, insn),
        M::Xsave
        | M::Xsave64
        | M::Xsaveopt
        | M::Xsaveopt64
        | M::Xsavec
        | M::Xsavec64
        | M::Xsaves
        | M::Xsaves64 => xsave(cpu, bus, insn),
        M::Xrstor | M::Xrstor64 | M::Xrstors | M::Xrstors64 => xrstor(cpu, bus, insn),
        _ => return None,
    };
    Some(r)
}

fn mxcsr_access(cpu: &mut Cpu, bus: &mut dyn CpuBus, insn: &Instruction) -> ExecResult {
    check_sse(cpu)?;
    let (seg, off) = (cpu.mem_seg(insn), cpu.ea(insn));
    if insn.mnemonic() == Mnemonic::Stmxcsr {
        cpu.write_mem(bus, seg, off, 4, u64::from(cpu.state.mxcsr))?;
    } else {
        let v = cpu.read_mem(bus, seg, off, 4)? as u32;
        if v & !mxcsr::WRITABLE != 0 {
            return Err(Fault::gp(0).into());
        }
        cpu.state.mxcsr = v;
    }
    Ok(Flow::Next)
}

/// The linear address of a save area, checking its alignment and that it fits the segment.
fn area(cpu: &Cpu, insn: &Instruction, len: usize, align: u64, write: bool) -> Result<u64> {
    let linear = cpu.linear(cpu.mem_seg(insn), cpu.ea(insn), len as u32, write)?;
    if linear & (align - 1) != 0 {
        return Err(Fault::gp(0));
    }
    Ok(linear)
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}
fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// Number of XMM registers the legacy image holds: 16 in 64-bit mode, 8 elsewhere.
fn xmm_count(cpu: &Cpu) -> usize {
    if cpu.state.code64() { 16 } else { 8 }
}

/// Writes the x87 part of the legacy image (bytes 0..24 and 32..160); `wide` is the REX.W form
/// with 64-bit FIP/FDP.
fn put_x87(x: &X87, b: &mut [u8], wide: bool) {
    b[0..2].copy_from_slice(&x.fcw.to_le_bytes());
    b[2..4].copy_from_slice(&x.fsw.to_le_bytes());
    b[4] = x.abridged_tag();
    b[5] = 0;
    b[6..8].copy_from_slice(&x.fop.to_le_bytes());
    if wide {
        b[8..16].copy_from_slice(&x.fip.to_le_bytes());
        b[16..24].copy_from_slice(&x.fdp.to_le_bytes());
    } else {
        b[8..16].copy_from_slice(&(x.fip & 0xffff_ffff).to_le_bytes());
        b[16..24].copy_from_slice(&(x.fdp & 0xffff_ffff).to_le_bytes());
    }
    let top = x.top();
    for i in 0..8 {
        let at = 32 + 16 * i;
        b[at..at + 16]
            .copy_from_slice(&(x.regs[(top + i) & 7] & ((1u128 << 80) - 1)).to_le_bytes());
    }
}

/// Loads the x87 part of a legacy image.
fn get_x87(x: &mut X87, b: &[u8], wide: bool) {
    x.fcw = le16(b, 0);
    x.fsw = le16(b, 2);
    x.fop = le16(b, 6) & 0x7ff;
    if wide {
        x.fip = le64(b, 8);
        x.fdp = le64(b, 16);
    } else {
        x.fip = u64::from(le32(b, 8));
        x.fdp = u64::from(le32(b, 16));
    }
    let top = x.top();
    for i in 0..8 {
        let at = 32 + 16 * i;
        x.regs[(top + i) & 7] =
            u128::from_le_bytes(b[at..at + 16].try_into().unwrap()) & ((1u128 << 80) - 1);
    }
    x.ftw = x.tag_from_abridged(b[4]);
}

fn put_mxcsr(cpu: &Cpu, b: &mut [u8]) {
    b[24..28].copy_from_slice(&cpu.state.mxcsr.to_le_bytes());
    b[28..32].copy_from_slice(&mxcsr::WRITABLE.to_le_bytes());
}

fn put_xmm(cpu: &Cpu, b: &mut [u8]) {
    for i in 0..xmm_count(cpu) {
        let at = 160 + 16 * i;
        b[at..at + 16].copy_from_slice(&cpu.state.xmm[i].to_le_bytes());
    }
}

fn get_xmm(cpu: &mut Cpu, b: &[u8]) {
    for i in 0..xmm_count(cpu) {
        let at = 160 + 16 * i;
        cpu.state.xmm[i] = u128::from_le_bytes(b[at..at + 16].try_into().unwrap());
    }
}

/// The MXCSR of an image, or #GP if it sets reserved bits.
fn image_mxcsr(b: &[u8]) -> Result<u32> {
    let v = le32(b, 24);
    if v & !mxcsr::WRITABLE != 0 {
        return Err(Fault::gp(0));
    }
    Ok(v)
}

fn fxsave(cpu: &mut Cpu, bus: &mut dyn CpuBus, insn: &Instruction) -> ExecResult {
    if cpu.state.cr0 & (CR0_EM | CR0_TS) != 0 {
        return Err(Fault::new(Exception::DeviceNotAvailable).into());
    }
    let wide = matches!(insn.mnemonic(), Mnemonic::Fxsave64 | Mnemonic::Fxrstor64);
    let save = matches!(insn.mnemonic(), Mnemonic::Fxsave | Mnemonic::Fxsave64);
    let linear = area(cpu, insn, LEGACY, 16, save)?;
    // Bytes from the end of the XMM area to 511 are left to software.
    let used = 160 + 16 * xmm_count(cpu);
    let mut b = [0u8; LEGACY];
    if save {
        put_x87(&cpu.state.x87, &mut b, wide);
        put_mxcsr(cpu, &mut b);
        put_xmm(cpu, &mut b);
        cpu.write_linear(bus, linear, &b[..used], Privilege::Current)?;
    } else {
        cpu.read_linear(bus, linear, &mut b[..used], Privilege::Current)?;
        let m = image_mxcsr(&b)?;
        get_x87(&mut cpu.state.x87, &b, wide);
        cpu.state.mxcsr = m;
        get_xmm(cpu, &b);
    }
    Ok(Flow::Next)
}

/// Which of the supported components are not in their initial configuration (XINUSE).
fn in_use(cpu: &Cpu) -> u64 {
    let x = &cpu.state.x87;
    let x87 = *x != X87::default() || x.regs.iter().any(|&r| r != 0);
    let sse =
        cpu.state.xmm[..xmm_count(cpu)].iter().any(|&r| r != 0) || cpu.state.mxcsr != MXCSR_INIT;
    u64::from(x87) | (u64::from(sse) << 1)
}

/// The checks every XSAVE-family instruction makes, and its requested-feature bitmap.
fn xsave_checks(cpu: &Cpu, insn: &Instruction) -> core::result::Result<u64, Stop> {
    use Mnemonic as M;
    let s = &cpu.state;
    if s.cr4 & CR4_OSXSAVE == 0 {
        return Err(Fault::ud().into());
    }
    if s.cr0 & CR0_TS != 0 {
        return Err(Fault::new(Exception::DeviceNotAvailable).into());
    }
    let supervisor = matches!(
        insn.mnemonic(),
        M::Xsaves | M::Xsaves64 | M::Xrstors | M::Xrstors64
    );
    if supervisor && s.cpl() != 0 {
        return Err(Fault::gp(0).into());
    }
    let edx_eax = (s.gpr[2] << 32) | (s.gpr[0] & 0xffff_ffff);
    let rfbm = s.xcr0 & edx_eax;
    if rfbm & !SUPPORTED != 0 {
        return Err(Stop::Unimplemented);
    }
    Ok(rfbm)
}

fn xsave(cpu: &mut Cpu, bus: &mut dyn CpuBus, insn: &Instruction) -> ExecResult {
    use Mnemonic as M;
    let rfbm = xsave_checks(cpu, insn)?;
    let m = insn.mnemonic();
    let wide = matches!(m, M::Xsave64 | M::Xsaveopt64 | M::Xsavec64 | M::Xsaves64);
    let compact = matches!(m, M::Xsavec | M::Xsavec64 | M::Xsaves | M::Xsaves64);
    let linear = area(cpu, insn, LEGACY + HEADER, 64, true)?;
    // Read-modify-write the whole area so that a fault leaves it untouched.
    let mut b = [0u8; LEGACY + HEADER];
    cpu.read_linear(bus, linear, &mut b, Privilege::Current)?;
    let inuse = in_use(cpu);
    let saved = if compact { rfbm & inuse } else { rfbm };
    if saved & 1 != 0 {
        let mut legacy = [0u8; LEGACY];
        put_x87(&cpu.state.x87, &mut legacy, wide);
        b[..24].copy_from_slice(&legacy[..24]);
        b[32..160].copy_from_slice(&legacy[32..160]);
    }
    if rfbm & 2 != 0 {
        put_mxcsr(cpu, &mut b);
    }
    if saved & 2 != 0 {
        put_xmm(cpu, &mut b);
    }
    let bv = le64(&b, LEGACY);
    if compact {
        b[LEGACY..LEGACY + 8].copy_from_slice(&(rfbm & inuse).to_le_bytes());
        b[LEGACY + 8..LEGACY + 16].copy_from_slice(&((1u64 << 63) | rfbm).to_le_bytes());
    } else {
        let bv = (bv & !rfbm) | (rfbm & inuse);
        b[LEGACY..LEGACY + 8].copy_from_slice(&bv.to_le_bytes());
    }
    cpu.write_linear(bus, linear, &b, Privilege::Current)?;
    Ok(Flow::Next)
}

fn xrstor(cpu: &mut Cpu, bus: &mut dyn CpuBus, insn: &Instruction) -> ExecResult {
    use Mnemonic as M;
    let rfbm = xsave_checks(cpu, insn)?;
    let m = insn.mnemonic();
    let wide = matches!(m, M::Xrstor64 | M::Xrstors64);
    let supervisor = matches!(m, M::Xrstors | M::Xrstors64);
    let linear = area(cpu, insn, LEGACY + HEADER, 64, false)?;
    let mut b = [0u8; LEGACY + HEADER];
    cpu.read_linear(bus, linear, &mut b, Privilege::Current)?;
    let xstate_bv = le64(&b, LEGACY);
    let xcomp_bv = le64(&b, LEGACY + 8);
    let compact = xcomp_bv >> 63 != 0;
    let xcr0 = cpu.state.xcr0;
    let reserved_nonzero = b[LEGACY + 16..].iter().any(|&x| x != 0);
    let bad = if compact {
        let comp = xcomp_bv & !(1 << 63);
        comp & !xcr0 != 0 || xstate_bv & !comp != 0 || reserved_nonzero
    } else {
        supervisor || xcomp_bv != 0 || reserved_nonzero
    };
    if bad || xstate_bv & !xcr0 != 0 {
        return Err(Fault::gp(0).into());
    }
    let load_mxcsr = if compact {
        rfbm & xstate_bv & 2 != 0
    } else {
        rfbm & 2 != 0
    };
    let new_mxcsr = if load_mxcsr {
        Some(image_mxcsr(&b)?)
    } else {
        None
    };
    if rfbm & 1 != 0 {
        if xstate_bv & 1 != 0 {
            get_x87(&mut cpu.state.x87, &b, wide);
        } else {
            cpu.state.x87 = X87::default();
        }
    }
    if rfbm & 2 != 0 {
        if xstate_bv & 2 != 0 {
            get_xmm(cpu, &b);
        } else {
            let n = xmm_count(cpu);
            cpu.state.xmm[..n].fill(0);
            if compact {
                cpu.state.mxcsr = MXCSR_INIT;
            }
        }
    }
    if let Some(v) = new_mxcsr {
        cpu.state.mxcsr = v;
    }
    Ok(Flow::Next)
}
