//! Integer arithmetic beyond the basic set: multiply and divide, BCD adjustments, sign
//! extensions, conditional sets and moves, byte swaps, `lahf`/`sahf`, `xlat`, `bound` and
//! `enter`/`leave`.
//!
//! Shifts and rotates live in `shift.rs`, bit tests and scans in `bits.rs`, exchanges and
//! compare-exchanges in `atomic.rs`.
//!
//! Undefined flags: `mul` and `imul` produce what current Intel cores do: SF from the sign of the
//! (low half of the) result, PF from its low byte, ZF and AF clear. `div` and `idiv` leave every
//! flag unchanged. The BCD instructions' choices are noted at each one.

use iced_x86::{Code, Instruction, Mnemonic, Register};

use super::basic::{condition, set_flags};
use super::{Cpu, ExecResult, Flow, Stop};
use crate::bus::CpuBus;
use crate::fault::{Exception, Fault};
use crate::flags::{self, mask, sign_bit, sign_extend, szp};
use crate::state::SegReg;
use crate::state::rflags::{AF, CF, OF, PF, SF, ZF};

/// Executes `insn` if it belongs to this family; `None` otherwise.
pub(crate) fn execute(
    cpu: &mut Cpu,
    bus: &mut dyn CpuBus,
    insn: &Instruction,
) -> Option<ExecResult> {
    let m = insn.mnemonic();
    Some(match m {
        Mnemonic::Mul => mul(cpu, bus, insn, false),
        Mnemonic::Imul if insn.op_count() == 1 => mul(cpu, bus, insn, true),
        Mnemonic::Imul => imul(cpu, bus, insn),
        Mnemonic::Div | Mnemonic::Idiv => div(cpu, bus, insn, m == Mnemonic::Idiv),
        Mnemonic::Daa | Mnemonic::Das => decimal_adjust(cpu, m == Mnemonic::Das),
        Mnemonic::Aaa | Mnemonic::Aas => ascii_adjust(cpu, m == Mnemonic::Aas),
        Mnemonic::Aam => aam(cpu, insn),
        Mnemonic::Aad => aad(cpu, insn),
        Mnemonic::Cbw | Mnemonic::Cwde | Mnemonic::Cdqe => {
            let size = match m {
                Mnemonic::Cbw => 1,
                Mnemonic::Cwde => 2,
                _ => 4,
            };
            let v = sign_extend(cpu.state.gpr[0], size);
            cpu.set_reg(super::atomic::accumulator(size * 2), v);
            Ok(Flow::Next)
        }
        Mnemonic::Cwd | Mnemonic::Cdq | Mnemonic::Cqo => {
            let (size, rdx) = match m {
                Mnemonic::Cwd => (2, Register::DX),
                Mnemonic::Cdq => (4, Register::EDX),
                _ => (8, Register::RDX),
            };
            let negative = cpu.state.gpr[0] & sign_bit(size) != 0;
            cpu.set_reg(rdx, if negative { u64::MAX } else { 0 });
            Ok(Flow::Next)
        }
        Mnemonic::Lahf => {
            // AH = SF:ZF:0:AF:0:PF:1:CF.
            let f = (cpu.state.rflags & (SF | ZF | AF | PF | CF)) | 2;
            cpu.set_reg(Register::AH, f);
            Ok(Flow::Next)
        }
        Mnemonic::Sahf => {
            let ah = cpu.reg(Register::AH);
            set_flags(cpu, ah, SF | ZF | AF | PF | CF);
            Ok(Flow::Next)
        }
        Mnemonic::Xlatb => {
            // The operand is seg:[rBX + AL] with the address size's BX.
            let v = match cpu.read_op(bus, insn, 0) {
                Ok(v) => v,
                Err(f) => return Some(Err(f.into())),
            };
            cpu.set_reg(Register::AL, v);
            Ok(Flow::Next)
        }
        Mnemonic::Bound => bound(cpu, bus, insn),
        Mnemonic::Enter => enter(cpu, bus, insn),
        Mnemonic::Leave => leave(cpu, bus, insn),
        Mnemonic::Bswap => {
            let r = insn.op0_register();
            let v = cpu.reg(r);
            // A 16-bit BSWAP is undefined; current Intel and AMD cores clear the register.
            let swapped = match r.size() {
                8 => v.swap_bytes(),
                4 => u64::from((v as u32).swap_bytes()),
                _ => 0,
            };
            cpu.set_reg(r, swapped);
            Ok(Flow::Next)
        }
        Mnemonic::Movbe => movbe(cpu, bus, insn),
        Mnemonic::Seta
        | Mnemonic::Setae
        | Mnemonic::Setb
        | Mnemonic::Setbe
        | Mnemonic::Sete
        | Mnemonic::Setg
        | Mnemonic::Setge
        | Mnemonic::Setl
        | Mnemonic::Setle
        | Mnemonic::Setne
        | Mnemonic::Setno
        | Mnemonic::Setnp
        | Mnemonic::Setns
        | Mnemonic::Seto
        | Mnemonic::Setp
        | Mnemonic::Sets => {
            let v = u64::from(condition(insn.condition_code(), cpu.state.rflags));
            cpu.write_op(bus, insn, 0, v)
                .map(|()| Flow::Next)
                .map_err(Stop::from)
        }
        Mnemonic::Cmova
        | Mnemonic::Cmovae
        | Mnemonic::Cmovb
        | Mnemonic::Cmovbe
        | Mnemonic::Cmove
        | Mnemonic::Cmovg
        | Mnemonic::Cmovge
        | Mnemonic::Cmovl
        | Mnemonic::Cmovle
        | Mnemonic::Cmovne
        | Mnemonic::Cmovno
        | Mnemonic::Cmovnp
        | Mnemonic::Cmovns
        | Mnemonic::Cmovo
        | Mnemonic::Cmovp
        | Mnemonic::Cmovs => cmov(cpu, bus, insn),
        _ => return None,
    })
}

/// Flags of a multiply: CF = OF = `overflow`; SF and PF from `low`, ZF and AF clear (the SDM
/// leaves SF, ZF, AF and PF undefined; this is what Intel cores produce).
fn mul_flags(low: u64, size: u32, overflow: bool) -> u64 {
    let mut f = szp(low, size) & (SF | PF);
    if overflow {
        f |= CF | OF;
    }
    f
}

/// Writes a double-width result: AH:AL for bytes, else rDX:rAX.
fn set_wide(cpu: &mut Cpu, size: u32, low: u64, high: u64) {
    if size == 1 {
        cpu.set_reg(Register::AX, (high & 0xff) << 8 | (low & 0xff));
    } else {
        let rdx = match size {
            2 => Register::DX,
            4 => Register::EDX,
            _ => Register::RDX,
        };
        cpu.set_reg(super::atomic::accumulator(size), low);
        cpu.set_reg(rdx, high);
    }
}

/// One-operand `mul` and `imul`: rDX:rAX (AX for bytes) = rAX * r/m.
fn mul(cpu: &mut Cpu, bus: &mut dyn CpuBus, insn: &Instruction, signed: bool) -> ExecResult {
    let size = cpu.op_size(insn, 0);
    let m = mask(size);
    let src = cpu.read_op(bus, insn, 0)? & m;
    let acc = cpu.state.gpr[0] & m;
    let bits = size * 8;
    let (low, high, overflow) = if signed {
        let p =
            i128::from(sign_extend(acc, size) as i64) * i128::from(sign_extend(src, size) as i64);
        let low = p as u64 & m;
        (
            low,
            (p >> bits) as u64 & m,
            p != i128::from(sign_extend(low, size) as i64),
        )
    } else {
        let p = u128::from(acc) * u128::from(src);
        let high = (p >> bits) as u64 & m;
        (p as u64 & m, high, high != 0)
    };
    set_wide(cpu, size, low, high);
    set_flags(cpu, mul_flags(low, size, overflow), flags::ALL);
    Ok(Flow::Next)
}

/// Two- and three-operand `imul`: a register = r/m * (register or immediate), truncated.
fn imul(cpu: &mut Cpu, bus: &mut dyn CpuBus, insn: &Instruction) -> ExecResult {
    let size = cpu.op_size(insn, 0);
    let (a, b) = if insn.op_count() == 2 {
        (cpu.read_op(bus, insn, 0)?, cpu.read_op(bus, insn, 1)?)
    } else {
        (cpu.read_op(bus, insn, 1)?, cpu.read_op(bus, insn, 2)?)
    };
    let m = mask(size);
    let p =
        i128::from(sign_extend(a & m, size) as i64) * i128::from(sign_extend(b & m, size) as i64);
    let low = p as u64 & m;
    let overflow = p != i128::from(sign_extend(low, size) as i64);
    cpu.write_op(bus, insn, 0, low)?;
    set_flags(cpu, mul_flags(low, size, overflow), flags::ALL);
    Ok(Flow::Next)
}

/// `div` and `idiv`: rDX:rAX (AX for bytes) / r/m; #DE on a zero divisor or a quotient that
/// does not fit. The flags are undefined; they are left unchanged.
fn div(cpu: &mut Cpu, bus: &mut dyn CpuBus, insn: &Instruction, signed: bool) -> ExecResult {
    let size = cpu.op_size(insn, 0);
    let m = mask(size);
    let bits = size * 8;
    let divisor = cpu.read_op(bus, insn, 0)? & m;
    let de = || Stop::Fault(Fault::new(Exception::DivideError));
    if divisor == 0 {
        return Err(de());
    }
    let g = &cpu.state.gpr;
    let dividend: u128 = if size == 1 {
        u128::from(g[0] & 0xffff)
    } else {
        u128::from(g[2] & m) << bits | u128::from(g[0] & m)
    };
    let (q, r) = if signed {
        // Sign-extend the 2*bits-wide dividend to 128 bits.
        let shift = 128 - 2 * bits;
        let n = ((dividend << shift) as i128) >> shift;
        let d = i128::from(sign_extend(divisor, size) as i64);
        let q = n.checked_div(d).ok_or_else(de)?;
        let min = -(1i128 << (bits - 1));
        let max = (1i128 << (bits - 1)) - 1;
        if q < min || q > max {
            return Err(de());
        }
        (q as u64 & m, (n % d) as u64 & m)
    } else {
        let q = dividend / u128::from(divisor);
        if q > u128::from(m) {
            return Err(de());
        }
        (q as u64, (dividend % u128::from(divisor)) as u64)
    };
    set_wide(cpu, size, q, r);
    Ok(Flow::Next)
}

/// `daa` and `das`. OF is undefined; it is set as for the signed overflow of the adjustment
/// (AL changing from positive to negative for `daa`, the reverse for `das`), as Intel cores do.
fn decimal_adjust(cpu: &mut Cpu, sub: bool) -> ExecResult {
    let old_al = cpu.reg(Register::AL);
    let old_cf = cpu.state.rflags & CF != 0;
    let mut al = old_al;
    let mut f = 0;
    if al & 0xf > 9 || cpu.state.rflags & AF != 0 {
        al = if sub {
            al.wrapping_sub(6)
        } else {
            al.wrapping_add(6)
        } & 0xff;
        f |= AF;
    }
    if old_al > 0x99 || old_cf {
        al = if sub {
            al.wrapping_sub(0x60)
        } else {
            al.wrapping_add(0x60)
        } & 0xff;
        f |= CF;
    }
    let overflow = if sub {
        old_al & !al & 0x80
    } else {
        !old_al & al & 0x80
    };
    if overflow != 0 {
        f |= OF;
    }
    cpu.set_reg(Register::AL, al);
    set_flags(cpu, f | szp(al, 1), flags::ALL);
    Ok(Flow::Next)
}

/// `aaa` and `aas`. OF and SF are undefined (cleared here); ZF and PF, also undefined, follow
/// the final AL.
fn ascii_adjust(cpu: &mut Cpu, sub: bool) -> ExecResult {
    let ax = cpu.reg(Register::AX);
    let adjust = ax & 0xf > 9 || cpu.state.rflags & AF != 0;
    let mut ax = ax;
    if adjust {
        ax = if sub {
            // AX -= 6 (a borrow reaches AH), then AH -= 1.
            ax.wrapping_sub(6).wrapping_sub(0x100) & 0xffff
        } else {
            ax.wrapping_add(0x106)
        };
    }
    let al = ax & 0xf;
    cpu.set_reg(Register::AX, (ax & 0xff00) | al);
    let f = if adjust { AF | CF } else { 0 };
    set_flags(cpu, f | (szp(al, 1) & (ZF | PF)), flags::ALL);
    Ok(Flow::Next)
}

/// `aam imm8`: AH = AL / imm8, AL = AL % imm8; #DE if imm8 is 0. OF, AF and CF are undefined
/// (cleared here).
fn aam(cpu: &mut Cpu, insn: &Instruction) -> ExecResult {
    let base = u64::from(insn.immediate8());
    if base == 0 {
        return Err(Fault::new(Exception::DivideError).into());
    }
    let al = cpu.reg(Register::AL);
    let (q, r) = (al / base, al % base);
    cpu.set_reg(Register::AX, q << 8 | r);
    set_flags(cpu, szp(r, 1), flags::ALL);
    Ok(Flow::Next)
}

/// `aad imm8`: AL = AL + AH * imm8, AH = 0. OF, AF and CF are undefined (cleared here).
fn aad(cpu: &mut Cpu, insn: &Instruction) -> ExecResult {
    let base = u64::from(insn.immediate8());
    let ax = cpu.reg(Register::AX);
    let al = ((ax & 0xff) + (ax >> 8) * base) & 0xff;
    cpu.set_reg(Register::AX, al);
    set_flags(cpu, szp(al, 1), flags::ALL);
    Ok(Flow::Next)
}

/// `cmovcc`: the source is read whatever the condition; a 32-bit destination is zero-extended
/// even when the condition is false.
fn cmov(cpu: &mut Cpu, bus: &mut dyn CpuBus, insn: &Instruction) -> ExecResult {
    let v = cpu.read_op(bus, insn, 1)?;
    let r = insn.op0_register();
    let v = if condition(insn.condition_code(), cpu.state.rflags) {
        v
    } else {
        cpu.reg(r)
    };
    cpu.set_reg(r, v);
    Ok(Flow::Next)
}

fn movbe(cpu: &mut Cpu, bus: &mut dyn CpuBus, insn: &Instruction) -> ExecResult {
    let size = cpu.op_size(insn, 0);
    let v = cpu.read_op(bus, insn, 1)?;
    let swapped = v.swap_bytes() >> (64 - size * 8);
    cpu.write_op(bus, insn, 0, swapped)?;
    Ok(Flow::Next)
}

/// `bound reg, mem` (16/32-bit code only): #BR unless lower <= reg <= upper, signed, with
/// the bounds at `mem` and `mem + size`.
fn bound(cpu: &mut Cpu, bus: &mut dyn CpuBus, insn: &Instruction) -> ExecResult {
    let r = insn.op0_register();
    let size = r.size() as u32;
    let (seg, off) = (cpu.mem_seg(insn), cpu.ea(insn));
    let upper_off = off.wrapping_add(u64::from(size)) & 0xffff_ffff;
    let lower = sign_extend(cpu.read_mem(bus, seg, off, size)?, size) as i64;
    let upper = sign_extend(cpu.read_mem(bus, seg, upper_off, size)?, size) as i64;
    let index = sign_extend(cpu.reg(r), size) as i64;
    if index < lower || index > upper {
        return Err(Fault::new(Exception::BoundRange).into());
    }
    Ok(Flow::Next)
}

/// The operand size of `enter`/`leave` and the matching rBP.
fn frame_size(insn: &Instruction) -> (u32, Register) {
    match insn.code() {
        Code::Enterw_imm16_imm8 | Code::Leavew => (2, Register::BP),
        Code::Enterd_imm16_imm8 | Code::Leaved => (4, Register::EBP),
        _ => (8, Register::RBP),
    }
}

/// `leave`: rSP = rBP, then pop rBP. A faulting pop leaves rSP as it was.
fn leave(cpu: &mut Cpu, bus: &mut dyn CpuBus, insn: &Instruction) -> ExecResult {
    let (size, bp) = frame_size(insn);
    let sp_mask = mask(cpu.state.stack_bits() / 8);
    let rsp = cpu.state.gpr[4];
    cpu.state.gpr[4] = (rsp & !sp_mask) | (cpu.state.gpr[5] & sp_mask);
    match cpu.pop(bus, size) {
        Ok(v) => {
            cpu.set_reg(bp, v);
            Ok(Flow::Next)
        }
        Err(f) => {
            cpu.state.gpr[4] = rsp;
            Err(f.into())
        }
    }
}

/// `enter alloc, level`: push rBP, copy `level - 1` outer frame pointers, push the new frame
/// pointer, then reserve `alloc` bytes. A fault leaves rSP and rBP as they were.
fn enter(cpu: &mut Cpu, bus: &mut dyn CpuBus, insn: &Instruction) -> ExecResult {
    let (size, bp) = frame_size(insn);
    let (rsp, rbp) = (cpu.state.gpr[4], cpu.state.gpr[5]);
    let result = enter_frame(cpu, bus, insn, size, bp);
    if result.is_err() {
        cpu.state.gpr[4] = rsp;
        cpu.state.gpr[5] = rbp;
    }
    result
}

fn enter_frame(
    cpu: &mut Cpu,
    bus: &mut dyn CpuBus,
    insn: &Instruction,
    size: u32,
    bp: Register,
) -> ExecResult {
    let alloc = u64::from(insn.immediate16());
    let level = insn.immediate8_2nd() & 31;
    let sp_mask = mask(cpu.state.stack_bits() / 8);
    let old_bp = cpu.reg(bp);
    cpu.push(bus, old_bp, size)?;
    let frame = cpu.state.gpr[4] & sp_mask;
    if level > 0 {
        let mut ptr = cpu.state.gpr[5];
        for _ in 1..level {
            ptr = (ptr & !sp_mask) | (ptr.wrapping_sub(u64::from(size)) & sp_mask);
            let v = cpu.read_mem(bus, SegReg::Ss, ptr & sp_mask, size)?;
            cpu.push(bus, v, size)?;
        }
        cpu.push(bus, frame, size)?;
    }
    // Reserving the frame must not leave rSP outside the stack segment: probe its new top.
    let rsp = cpu.state.gpr[4];
    let new_sp = rsp.wrapping_sub(alloc) & sp_mask;
    if alloc != 0 {
        cpu.linear(SegReg::Ss, new_sp, 1, true)?;
    }
    cpu.set_reg(bp, frame);
    cpu.state.gpr[4] = (rsp & !sp_mask) | new_sp;
    Ok(Flow::Next)
}

/// Also the harness of the other integer families' tests.
#[cfg(test)]
pub(super) mod tests {
    use iced_x86::IcedError;
    use iced_x86::code_asm::*;

    use super::*;
    use crate::exec::Stop;
    use crate::testing::{FlatBus, long_mode_cpu};

    /// Assembles 64-bit code for address 0x10000.
    pub(in crate::exec) fn asm(
        f: impl FnOnce(&mut CodeAssembler) -> core::result::Result<(), IcedError>,
    ) -> Vec<u8> {
        let mut a = CodeAssembler::new(64).unwrap();
        f(&mut a).unwrap();
        a.assemble(0x10000).unwrap()
    }

    /// A 64-bit CPU at CPL 0 with `code` at 0x10000 and 2 MiB of RAM.
    pub(in crate::exec) fn machine(code: &[u8]) -> (Cpu, FlatBus) {
        let mut bus = FlatBus::new(0x20_0000);
        let cpu = long_mode_cpu(&mut bus);
        bus.write(0x10000, code);
        (cpu, bus)
    }

    /// Executes the instruction at RIP and returns its result without delivering a fault.
    pub(in crate::exec) fn exec(cpu: &mut Cpu, bus: &mut FlatBus) -> ExecResult {
        let (insn, _, _) = cpu.fetch(bus).unwrap();
        let r = crate::exec::execute(cpu, bus, &insn);
        if r == Ok(Flow::Next) {
            cpu.state.rip = insn.next_ip();
        }
        r
    }

    /// Executes `n` instructions, each of which must complete.
    pub(in crate::exec) fn run(cpu: &mut Cpu, bus: &mut FlatBus, n: usize) {
        for _ in 0..n {
            let rip = cpu.state.rip;
            let r = exec(cpu, bus);
            assert!(
                matches!(r, Ok(Flow::Next | Flow::Jump)),
                "{r:?} at {rip:#x}"
            );
        }
    }

    /// Assembles `f`, runs all of it and returns the machine.
    pub(in crate::exec) fn run_asm(
        f: impl FnOnce(&mut CodeAssembler) -> core::result::Result<(), IcedError>,
    ) -> (Cpu, FlatBus) {
        let mut a = CodeAssembler::new(64).unwrap();
        f(&mut a).unwrap();
        let n = a.instructions().len();
        let (mut cpu, mut bus) = machine(&a.assemble(0x10000).unwrap());
        run(&mut cpu, &mut bus, n);
        (cpu, bus)
    }

    pub(in crate::exec) const STATUS: u64 = flags::ALL;

    fn divide_error() -> ExecResult {
        Err(Stop::Fault(Fault::new(Exception::DivideError)))
    }

    #[test]
    fn mul_widens_and_reports_overflow_in_cf_of() {
        let (cpu, _) = run_asm(|a| {
            a.mov(rax, -1i64)?;
            a.mov(rcx, 2u64)?;
            a.mul(rcx)
        });
        assert_eq!((cpu.state.gpr[0], cpu.state.gpr[2]), (u64::MAX - 1, 1));
        assert_eq!(cpu.state.rflags & (CF | OF | ZF), CF | OF);

        let (cpu, _) = run_asm(|a| {
            a.mov(rdx, -1i64)?;
            a.mov(eax, 0x1234_0080)?;
            a.mov(cl, 2)?;
            a.mul(cl)
        });
        // AX = 0x100; the rest of RAX and all of RDX are untouched.
        assert_eq!(cpu.state.gpr[0], 0x1234_0100);
        assert_eq!(cpu.state.gpr[2], u64::MAX);
        assert_eq!(cpu.state.rflags & (CF | OF), CF | OF);
    }

    #[test]
    fn imul_forms_truncate_and_flag_signed_overflow() {
        // One operand, bytes: -2 * 3 = -6 fits in AL, so CF = OF = 0.
        let (cpu, _) = run_asm(|a| {
            a.mov(eax, 0xfe)?;
            a.mov(cl, 3)?;
            a.imul(cl)
        });
        assert_eq!(cpu.state.gpr[0] & 0xffff, 0xfffa);
        assert_eq!(cpu.state.rflags & (CF | OF), 0);
        // Two operands overflowing 32 bits: 0x10000 * 0x10000.
        let (cpu, _) = run_asm(|a| {
            a.mov(eax, 0x10000)?;
            a.mov(ecx, 0x10000)?;
            a.imul_2(eax, ecx)
        });
        assert_eq!(cpu.state.gpr[0], 0);
        assert_eq!(cpu.state.rflags & (CF | OF | ZF), CF | OF);
        // Three operands with a sign-extended immediate.
        let (cpu, _) = run_asm(|a| {
            a.mov(rcx, 7u64)?;
            a.imul_3(rdx, rcx, -3)
        });
        assert_eq!(cpu.state.gpr[2] as i64, -21);
        assert_eq!(cpu.state.rflags & (CF | OF | SF), SF);
    }

    #[test]
    fn div_and_idiv_give_quotient_and_remainder() {
        let (cpu, _) = run_asm(|a| {
            a.mov(edx, 1)?;
            a.mov(eax, 5)?;
            a.mov(rcx, 2u64)?;
            a.div(rcx)
        });
        assert_eq!(cpu.state.gpr[0], 0x8000_0000_0000_0002);
        assert_eq!(cpu.state.gpr[2], 1);
        // -7 / 2 = -3 remainder -1, in AL and AH.
        let (cpu, _) = run_asm(|a| {
            a.mov(eax, 0xfff9)?;
            a.mov(cl, 2)?;
            a.idiv(cl)
        });
        assert_eq!(cpu.state.gpr[0] & 0xffff, 0xfffd);
        // 32-bit results zero-extend into RAX and RDX.
        let (cpu, _) = run_asm(|a| {
            a.mov(rax, -100i64)?;
            a.cdq()?;
            a.mov(ecx, 7)?;
            a.idiv(ecx)
        });
        assert_eq!(cpu.state.gpr[0], (-14i32) as u32 as u64);
        assert_eq!(cpu.state.gpr[2], (-2i32) as u32 as u64);
    }

    #[test]
    fn divide_by_zero_and_quotient_overflow_raise_de() {
        let code = asm(|a| {
            a.div(ecx)?;
            a.div(cx)?;
            a.idiv(rcx)
        });
        let (mut cpu, mut bus) = machine(&code);
        cpu.state.gpr[0] = 1234;
        assert_eq!(exec(&mut cpu, &mut bus), divide_error());
        assert_eq!(cpu.state.gpr[0], 1234, "a faulting divide changes nothing");
        // DX:AX = 0x10000 / 1 does not fit in AX.
        cpu.state.rip = 0x10002;
        (cpu.state.gpr[0], cpu.state.gpr[1], cpu.state.gpr[2]) = (0, 1, 1);
        assert_eq!(exec(&mut cpu, &mut bus), divide_error());
        // The most negative 128-bit dividend over -1.
        cpu.state.rip = 0x10005;
        (cpu.state.gpr[0], cpu.state.gpr[1], cpu.state.gpr[2]) = (0, u64::MAX, 1 << 63);
        assert_eq!(exec(&mut cpu, &mut bus), divide_error());
    }

    #[test]
    fn setcc_and_cmovcc_follow_the_flags() {
        let (cpu, _) = run_asm(|a| {
            a.mov(rbx, -1i64)?;
            a.mov(rdx, -1i64)?;
            a.mov(ecx, 5)?;
            a.cmp(ecx, 7)?;
            a.setl(bl)?;
            a.setg(bh)?;
            // False condition: EDX keeps its value but bits 63:32 are cleared.
            a.cmovg(edx, ecx)?;
            a.cmovl(rsi, rcx)
        });
        assert_eq!(cpu.state.gpr[3], 0xffff_ffff_ffff_0001);
        assert_eq!(cpu.state.gpr[2], 0xffff_ffff);
        assert_eq!(cpu.state.gpr[6], 5);
    }

    #[test]
    fn sign_extensions_lahf_sahf_and_swaps() {
        let (cpu, _) = run_asm(|a| {
            a.mov(eax, 0x80)?;
            a.cbw()?;
            a.cwde()?;
            a.cdqe()?;
            a.cqo()?;
            a.mov(rcx, 0x0102_0304_0506_0708u64)?;
            a.bswap(rcx)?;
            a.mov(ebx, 0x1122_3344)?;
            a.bswap(ebx)?;
            a.stc()?;
            a.lahf()
        });
        assert_eq!(cpu.state.gpr[0] & !0xff00, 0xffff_ffff_ffff_0080);
        assert_eq!((cpu.state.gpr[0] >> 8) & 0xff, cpu.state.rflags & 0xd7);
        assert_eq!(cpu.state.gpr[2], u64::MAX);
        assert_eq!(cpu.state.gpr[1], 0x0807_0605_0403_0201);
        assert_eq!(cpu.state.gpr[3], 0x4433_2211);

        let (cpu, _) = run_asm(|a| {
            a.mov(ah, 0xd5)?;
            a.sahf()
        });
        assert_eq!(cpu.state.rflags & STATUS, STATUS & !OF);
    }

    #[test]
    fn movbe_and_xlat_access_memory() {
        let (cpu, bus) = run_asm(|a| {
            a.mov(ebx, 0x5000)?;
            a.mov(ecx, 0x1122_3344)?;
            a.movbe(dword_ptr(rbx), ecx)?;
            a.movbe(dx, word_ptr(rbx))?;
            a.mov(al, 2)?;
            a.xlatb()
        });
        assert_eq!(&bus.mem[0x5000..0x5004], &[0x11, 0x22, 0x33, 0x44]);
        assert_eq!(cpu.state.gpr[2] & 0xffff, 0x1122);
        assert_eq!(cpu.state.gpr[0] & 0xff, 0x33);
    }

    #[test]
    fn enter_builds_nested_frames_and_leave_unwinds_them() {
        let (cpu, bus) = run_asm(|a| {
            a.mov(rbp, 0x7000u64)?;
            a.mov(qword_ptr(0x6ff8), 0x1111)?;
            a.enter(0x20, 2)?;
            a.mov(rbx, rsp)?;
            a.mov(rcx, rbp)?;
            a.leave()
        });
        // push rbp (0x7ff8), copy [0x6ff8] (0x7ff0), push the frame pointer 0x7ff8 (0x7fe8).
        assert_eq!(cpu.state.gpr[1], 0x7ff8);
        assert_eq!(cpu.state.gpr[3], 0x7fe8 - 0x20);
        assert_eq!(bus.read_u64(0x7ff8), 0x7000);
        assert_eq!(bus.read_u64(0x7ff0), 0x1111);
        assert_eq!(bus.read_u64(0x7fe8), 0x7ff8);
        assert_eq!((cpu.state.gpr[4], cpu.state.gpr[5]), (0x8000, 0x7000));
    }

    /// Switches a long-mode CPU to 32-bit compatibility mode, where the BCD instructions exist.
    fn compat32(cpu: &mut Cpu) {
        let code = &mut cpu.state.seg[SegReg::Cs as usize];
        code.l = false;
        code.db = true;
    }

    fn run32(code: &[u8], setup: impl FnOnce(&mut Cpu)) -> Cpu {
        let (mut cpu, mut bus) = machine(code);
        compat32(&mut cpu);
        setup(&mut cpu);
        while cpu.state.rip < 0x10000 + code.len() as u64 {
            run(&mut cpu, &mut bus, 1);
        }
        cpu
    }

    #[test]
    fn decimal_and_ascii_adjustments() {
        // add al, 0x35; daa with AL = 0x79: 79 + 35 = 114.
        let cpu = run32(&[0x04, 0x35, 0x27], |c| c.state.gpr[0] = 0x79);
        assert_eq!(cpu.state.gpr[0] & 0xff, 0x14);
        assert_eq!(cpu.state.rflags & (CF | AF), CF | AF);
        // sub al, 0x29; das with AL = 0x12: 12 - 29 = -17 -> 83 borrow.
        let cpu = run32(&[0x2c, 0x29, 0x2f], |c| c.state.gpr[0] = 0x12);
        assert_eq!(cpu.state.gpr[0] & 0xff, 0x83);
        assert_eq!(cpu.state.rflags & CF, CF);
        // add al, 5; aaa with AX = 0x0006: 6 + 5 = 11 -> AH 1, AL 1.
        let cpu = run32(&[0x04, 0x05, 0x37], |c| c.state.gpr[0] = 6);
        assert_eq!(cpu.state.gpr[0] & 0xffff, 0x0101);
        assert_eq!(cpu.state.rflags & (CF | AF), CF | AF);
        // sub al, 5; aas with AX = 0x0102: 12 - 5 = 7 -> AH 0, AL 7.
        let cpu = run32(&[0x2c, 0x05, 0x3f], |c| c.state.gpr[0] = 0x0102);
        assert_eq!(cpu.state.gpr[0] & 0xffff, 0x0007);
        // aam with AL = 63; aad turns it back.
        let cpu = run32(&[0xd4, 0x0a], |c| c.state.gpr[0] = 63);
        assert_eq!(cpu.state.gpr[0] & 0xffff, 0x0603);
        let cpu = run32(&[0xd5, 0x0a], |c| c.state.gpr[0] = 0x0603);
        assert_eq!(cpu.state.gpr[0] & 0xffff, 63);
        // bound eax, [0x5000] with bounds -2..=5.
        let bound = [0x62, 0x05, 0x00, 0x50, 0x00, 0x00];
        for (index, ok) in [
            (5u64, true),
            (-2i64 as u64, true),
            (6, false),
            (-3i64 as u64, false),
        ] {
            let (mut cpu, mut bus) = machine(&bound);
            compat32(&mut cpu);
            bus.write_u64(0x5000, 0x0000_0005_ffff_fffe);
            cpu.state.gpr[0] = index & 0xffff_ffff;
            let expected = if ok {
                Ok(Flow::Next)
            } else {
                Err(Stop::Fault(Fault::new(Exception::BoundRange)))
            };
            assert_eq!(exec(&mut cpu, &mut bus), expected, "index {index:#x}");
        }
        // aam 0 is a divide error.
        let (mut cpu, mut bus) = machine(&[0xd4, 0x00]);
        compat32(&mut cpu);
        assert_eq!(exec(&mut cpu, &mut bus), divide_error());
    }
}
