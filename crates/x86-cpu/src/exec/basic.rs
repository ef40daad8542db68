//! The core integer instructions: moves, two-operand arithmetic and logic, the stack, near
//! control transfers, flag operations, port I/O, `hlt`, `cpuid` and software interrupts.

use iced_x86::{ConditionCode, Instruction, Mnemonic, OpKind};

use super::{Cpu, ExecResult, Flow};
use crate::bus::CpuBus;
use crate::fault::{Exception, Fault};
use crate::flags::{self, mask, sign_extend};
use crate::interrupt::{self, EventKind};
use crate::state::rflags::{AF, CF, DF, IF, IOPL, OF, PF, SF, ZF};

/// Whether condition `cc` holds for `f`.
pub(crate) fn condition(cc: ConditionCode, f: u64) -> bool {
    let set = |bit: u64| f & bit != 0;
    match cc {
        ConditionCode::o => set(OF),
        ConditionCode::no => !set(OF),
        ConditionCode::b => set(CF),
        ConditionCode::ae => !set(CF),
        ConditionCode::e => set(ZF),
        ConditionCode::ne => !set(ZF),
        ConditionCode::be => set(CF) || set(ZF),
        ConditionCode::a => !set(CF) && !set(ZF),
        ConditionCode::s => set(SF),
        ConditionCode::ns => !set(SF),
        ConditionCode::p => set(PF),
        ConditionCode::np => !set(PF),
        ConditionCode::l => set(SF) != set(OF),
        ConditionCode::ge => set(SF) == set(OF),
        ConditionCode::le => set(ZF) || set(SF) != set(OF),
        ConditionCode::g => !set(ZF) && set(SF) == set(OF),
        ConditionCode::None => true,
    }
}

/// Sets the status flags in `which` from `status`.
pub(crate) fn set_flags(cpu: &mut Cpu, status: u64, which: u64) {
    cpu.state.rflags = flags::merge(cpu.state.rflags, status, which);
}

/// Two-operand ALU operations: returns (result, flags, writes-back).
fn alu(cpu: &Cpu, m: Mnemonic, a: u64, b: u64, size: u32) -> Option<(u64, u64, bool)> {
    let cf = cpu.state.rflags & CF;
    let mk = mask(size);
    Some(match m {
        Mnemonic::Add => {
            let r = a.wrapping_add(b) & mk;
            (r, flags::add(a, b, 0, r, size), true)
        }
        Mnemonic::Adc => {
            let r = a.wrapping_add(b).wrapping_add(cf) & mk;
            (r, flags::add(a, b, cf, r, size), true)
        }
        Mnemonic::Sub | Mnemonic::Cmp => {
            let r = a.wrapping_sub(b) & mk;
            (r, flags::sub(a, b, 0, r, size), m == Mnemonic::Sub)
        }
        Mnemonic::Sbb => {
            let r = a.wrapping_sub(b).wrapping_sub(cf) & mk;
            (r, flags::sub(a, b, cf, r, size), true)
        }
        Mnemonic::And | Mnemonic::Test => {
            let r = a & b & mk;
            (r, flags::logic(r, size), m == Mnemonic::And)
        }
        Mnemonic::Or => {
            let r = (a | b) & mk;
            (r, flags::logic(r, size), true)
        }
        Mnemonic::Xor => {
            let r = (a ^ b) & mk;
            (r, flags::logic(r, size), true)
        }
        _ => return None,
    })
}

/// The IOPL check for `in`/`out`/`cli`/`sti` in protected mode.
fn io_allowed(cpu: &Cpu) -> bool {
    !cpu.state.protected() || u64::from(cpu.state.cpl()) <= (cpu.state.rflags & IOPL) >> 12
}

pub(crate) fn execute(
    cpu: &mut Cpu,
    bus: &mut dyn CpuBus,
    insn: &Instruction,
) -> Option<ExecResult> {
    Some(run(cpu, bus, insn)).filter(|r| *r != Err(super::Stop::Unimplemented))
}

fn run(cpu: &mut Cpu, bus: &mut dyn CpuBus, insn: &Instruction) -> ExecResult {
    // This family handles general-purpose registers, memory and immediates only: moves to and
    // from segment, control and debug registers belong to the system family.
    if (0..insn.op_count())
        .any(|i| insn.op_kind(i) == OpKind::Register && !insn.op_register(i).is_gpr())
    {
        return Err(super::Stop::Unimplemented);
    }
    let m = insn.mnemonic();
    match m {
        Mnemonic::Nop
        | Mnemonic::Pause
        | Mnemonic::Endbr64
        | Mnemonic::Endbr32
        | Mnemonic::Lfence
        | Mnemonic::Sfence
        | Mnemonic::Mfence
        | Mnemonic::Prefetchnta
        | Mnemonic::Prefetcht0
        | Mnemonic::Prefetcht1
        | Mnemonic::Prefetcht2
        | Mnemonic::Prefetchw => Ok(Flow::Next),
        Mnemonic::Mov => {
            let v = cpu.read_op(bus, insn, 1)?;
            cpu.write_op(bus, insn, 0, v)?;
            Ok(Flow::Next)
        }
        Mnemonic::Movzx => {
            let v = cpu.read_op(bus, insn, 1)?;
            cpu.write_op(bus, insn, 0, v)?;
            Ok(Flow::Next)
        }
        Mnemonic::Movsx | Mnemonic::Movsxd => {
            let size = cpu.op_size(insn, 1);
            let v = sign_extend(cpu.read_op(bus, insn, 1)?, size);
            cpu.write_op(bus, insn, 0, v)?;
            Ok(Flow::Next)
        }
        Mnemonic::Lea => {
            let v = cpu.ea(insn);
            cpu.write_op(bus, insn, 0, v)?;
            Ok(Flow::Next)
        }
        Mnemonic::Add
        | Mnemonic::Adc
        | Mnemonic::Sub
        | Mnemonic::Sbb
        | Mnemonic::Cmp
        | Mnemonic::And
        | Mnemonic::Or
        | Mnemonic::Xor
        | Mnemonic::Test => {
            let size = cpu.op_size(insn, 0);
            let a = cpu.read_op(bus, insn, 0)?;
            let b = cpu.read_op(bus, insn, 1)? & mask(size);
            let (r, f, write) = alu(cpu, m, a, b, size).ok_or(super::Stop::Unimplemented)?;
            if write {
                cpu.write_op(bus, insn, 0, r)?;
            }
            set_flags(cpu, f, flags::ALL);
            Ok(Flow::Next)
        }
        Mnemonic::Inc | Mnemonic::Dec => {
            let size = cpu.op_size(insn, 0);
            let a = cpu.read_op(bus, insn, 0)?;
            let (r, f) = if m == Mnemonic::Inc {
                let r = a.wrapping_add(1) & mask(size);
                (r, flags::add(a, 1, 0, r, size))
            } else {
                let r = a.wrapping_sub(1) & mask(size);
                (r, flags::sub(a, 1, 0, r, size))
            };
            cpu.write_op(bus, insn, 0, r)?;
            // INC and DEC leave CF alone.
            set_flags(cpu, f, OF | SF | ZF | AF | PF);
            Ok(Flow::Next)
        }
        Mnemonic::Neg => {
            let size = cpu.op_size(insn, 0);
            let a = cpu.read_op(bus, insn, 0)?;
            let r = 0u64.wrapping_sub(a) & mask(size);
            cpu.write_op(bus, insn, 0, r)?;
            set_flags(cpu, flags::sub(0, a, 0, r, size), flags::ALL);
            Ok(Flow::Next)
        }
        Mnemonic::Not => {
            let a = cpu.read_op(bus, insn, 0)?;
            cpu.write_op(bus, insn, 0, !a)?;
            Ok(Flow::Next)
        }
        Mnemonic::Xchg => {
            let a = cpu.read_op(bus, insn, 0)?;
            let b = cpu.read_op(bus, insn, 1)?;
            cpu.write_op(bus, insn, 0, b)?;
            cpu.write_op(bus, insn, 1, a)?;
            Ok(Flow::Next)
        }
        Mnemonic::Push => {
            let size = cpu.stack_op_size(insn);
            let v = cpu.read_op(bus, insn, 0)?;
            cpu.push(bus, v, size)?;
            Ok(Flow::Next)
        }
        Mnemonic::Pop => {
            let size = cpu.stack_op_size(insn);
            let rsp = cpu.state.gpr[4];
            let v = cpu.pop(bus, size)?;
            // A faulting write must leave RSP as it was.
            if let Err(f) = cpu.write_op(bus, insn, 0, v) {
                cpu.state.gpr[4] = rsp;
                return Err(f.into());
            }
            Ok(Flow::Next)
        }
        Mnemonic::Jmp if !is_far(insn) => {
            let target = near_target(cpu, bus, insn)?;
            cpu.state.rip = cpu.near_branch(target)?;
            Ok(Flow::Jump)
        }
        Mnemonic::Call if !is_far(insn) => {
            let target = near_target(cpu, bus, insn)?;
            let target = cpu.near_branch(target)?;
            let size = cpu.stack_op_size(insn);
            cpu.push(bus, insn.next_ip(), size)?;
            cpu.state.rip = target;
            Ok(Flow::Jump)
        }
        Mnemonic::Ret => {
            let size = cpu.stack_op_size(insn);
            let rsp = cpu.state.gpr[4];
            let target = cpu.pop(bus, size)?;
            // A bad return address faults with RSP as it was.
            let target = cpu
                .near_branch(target)
                .inspect_err(|_| cpu.state.gpr[4] = rsp)?;
            if insn.op_count() == 1 {
                let extra = insn.immediate16();
                let m = mask(cpu.state.stack_bits() / 8);
                let rsp = cpu.state.gpr[4];
                cpu.state.gpr[4] = (rsp & !m) | (rsp.wrapping_add(u64::from(extra)) & m);
            }
            cpu.state.rip = target;
            Ok(Flow::Jump)
        }
        Mnemonic::Ja
        | Mnemonic::Jae
        | Mnemonic::Jb
        | Mnemonic::Jbe
        | Mnemonic::Je
        | Mnemonic::Jg
        | Mnemonic::Jge
        | Mnemonic::Jl
        | Mnemonic::Jle
        | Mnemonic::Jne
        | Mnemonic::Jno
        | Mnemonic::Jnp
        | Mnemonic::Jns
        | Mnemonic::Jo
        | Mnemonic::Jp
        | Mnemonic::Js => {
            if condition(insn.condition_code(), cpu.state.rflags) {
                cpu.state.rip = cpu.near_branch(insn.near_branch_target())?;
                Ok(Flow::Jump)
            } else {
                Ok(Flow::Next)
            }
        }
        Mnemonic::Loop
        | Mnemonic::Loope
        | Mnemonic::Loopne
        | Mnemonic::Jcxz
        | Mnemonic::Jecxz
        | Mnemonic::Jrcxz => {
            let creg = match insn.op_kind(0) {
                _ if matches!(m, Mnemonic::Jcxz) => iced_x86::Register::CX,
                _ if matches!(m, Mnemonic::Jecxz) => iced_x86::Register::ECX,
                _ if matches!(m, Mnemonic::Jrcxz) => iced_x86::Register::RCX,
                _ => counter_reg(insn),
            };
            let rcx = cpu.state.gpr[1];
            let old = cpu.reg(creg);
            let take = if matches!(m, Mnemonic::Jcxz | Mnemonic::Jecxz | Mnemonic::Jrcxz) {
                old == 0
            } else {
                let c = old.wrapping_sub(1);
                cpu.set_reg(creg, c);
                let z = cpu.state.rflags & ZF != 0;
                c & mask(creg.size() as u32) != 0
                    && match m {
                        Mnemonic::Loope => z,
                        Mnemonic::Loopne => !z,
                        _ => true,
                    }
            };
            if take {
                // A faulting LOOP leaves the counter as it was.
                cpu.state.rip = cpu
                    .near_branch(insn.near_branch_target())
                    .inspect_err(|_| cpu.state.gpr[1] = rcx)?;
                Ok(Flow::Jump)
            } else {
                Ok(Flow::Next)
            }
        }
        Mnemonic::Clc => flag(cpu, CF, false),
        Mnemonic::Stc => flag(cpu, CF, true),
        Mnemonic::Cmc => {
            cpu.state.rflags ^= CF;
            Ok(Flow::Next)
        }
        Mnemonic::Cld => flag(cpu, DF, false),
        Mnemonic::Std => flag(cpu, DF, true),
        Mnemonic::Cli | Mnemonic::Sti => {
            if !io_allowed(cpu) {
                return Err(Fault::gp(0).into());
            }
            if m == Mnemonic::Sti && cpu.state.rflags & IF == 0 {
                cpu.state.interrupt_shadow = true;
            }
            flag(cpu, IF, m == Mnemonic::Sti)
        }
        Mnemonic::Hlt => {
            if cpu.state.cpl() != 0 {
                return Err(Fault::gp(0).into());
            }
            Ok(Flow::Halt)
        }
        Mnemonic::In | Mnemonic::Out => {
            if !io_allowed(cpu) {
                return Err(Fault::gp(0).into());
            }
            let (port_op, data_op) = if m == Mnemonic::In { (1, 0) } else { (0, 1) };
            let port = cpu.read_op(bus, insn, port_op)? as u16;
            let size = cpu.op_size(insn, data_op) as usize;
            if m == Mnemonic::In {
                let mut b = [0u8; 8];
                bus.io_read(port, &mut b[..size]);
                cpu.write_op(bus, insn, 0, u64::from_le_bytes(b))?;
            } else {
                let v = cpu.read_op(bus, insn, 1)?;
                bus.io_write(port, &v.to_le_bytes()[..size]);
            }
            Ok(Flow::Next)
        }
        Mnemonic::Cpuid => {
            let [a, b, c, d] = bus.cpuid(cpu.state.gpr[0] as u32, cpu.state.gpr[1] as u32);
            cpu.state.gpr[0] = a.into();
            cpu.state.gpr[3] = b.into();
            cpu.state.gpr[1] = c.into();
            cpu.state.gpr[2] = d.into();
            Ok(Flow::Next)
        }
        Mnemonic::Int3 => {
            interrupt::deliver(
                cpu,
                bus,
                Exception::Breakpoint as u8,
                None,
                EventKind::SoftwareException,
                insn.next_ip(),
            )?;
            Ok(Flow::Jump)
        }
        Mnemonic::Int => {
            interrupt::deliver(
                cpu,
                bus,
                insn.immediate8(),
                None,
                EventKind::SoftwareInterrupt,
                insn.next_ip(),
            )?;
            Ok(Flow::Jump)
        }
        _ => Err(super::Stop::Unimplemented),
    }
}

fn flag(cpu: &mut Cpu, bit: u64, on: bool) -> ExecResult {
    if on {
        cpu.state.rflags |= bit;
    } else {
        cpu.state.rflags &= !bit;
    }
    Ok(Flow::Next)
}

/// A far (segment:offset) call or jump through memory.
fn is_far(insn: &Instruction) -> bool {
    matches!(insn.op0_kind(), OpKind::FarBranch16 | OpKind::FarBranch32)
        || (insn.op0_kind() == OpKind::Memory
            && matches!(
                insn.memory_size(),
                iced_x86::MemorySize::SegPtr16
                    | iced_x86::MemorySize::SegPtr32
                    | iced_x86::MemorySize::SegPtr64
            ))
}

/// The target of a near jump or call: immediate, register or memory.
fn near_target(cpu: &mut Cpu, bus: &mut dyn CpuBus, insn: &Instruction) -> Result<u64, Fault> {
    match insn.op0_kind() {
        OpKind::NearBranch16 | OpKind::NearBranch32 | OpKind::NearBranch64 => {
            Ok(insn.near_branch_target())
        }
        _ => cpu.read_op(bus, insn, 0),
    }
}

/// The counter register of LOOPcc: CX, ECX or RCX by address size.
fn counter_reg(insn: &Instruction) -> iced_x86::Register {
    use iced_x86::Code::*;
    match insn.code() {
        Loop_rel8_16_CX | Loop_rel8_32_CX | Loope_rel8_16_CX | Loope_rel8_32_CX
        | Loopne_rel8_16_CX | Loopne_rel8_32_CX => iced_x86::Register::CX,
        Loop_rel8_16_RCX | Loop_rel8_64_RCX | Loope_rel8_16_RCX | Loope_rel8_64_RCX
        | Loopne_rel8_16_RCX | Loopne_rel8_64_RCX => iced_x86::Register::RCX,
        _ => iced_x86::Register::ECX,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StepExit;
    use crate::testing::{FlatBus, long_mode_cpu};

    fn run_code(code: &[u8], steps: usize) -> (Cpu, FlatBus) {
        let mut bus = FlatBus::new(0x20_0000);
        let mut cpu = long_mode_cpu(&mut bus);
        bus.write(0x10000, code);
        for _ in 0..steps {
            assert_eq!(
                cpu.step(&mut bus),
                StepExit::Continue,
                "rip {:#x}",
                cpu.state.rip
            );
        }
        (cpu, bus)
    }

    #[test]
    fn mov_add_and_flags() {
        // mov eax, 0xffffffff; add eax, 1; mov rbx, rax
        let (cpu, _) = run_code(
            &[
                0xb8, 0xff, 0xff, 0xff, 0xff, 0x83, 0xc0, 0x01, 0x48, 0x89, 0xc3,
            ],
            3,
        );
        assert_eq!(cpu.state.gpr[0], 0);
        assert_eq!(cpu.state.gpr[3], 0);
        assert_eq!(cpu.state.rflags & (CF | ZF | PF | AF), CF | ZF | PF | AF);
    }

    #[test]
    fn call_push_pop_ret() {
        // call +5; jmp $; (target:) push 0x1234; pop rcx; ret
        let code = [
            0xe8, 0x02, 0, 0, 0, 0xeb, 0xfe, 0x68, 0x34, 0x12, 0, 0, 0x59, 0xc3,
        ];
        let (cpu, _) = run_code(&code, 4);
        assert_eq!(cpu.state.gpr[1], 0x1234);
        assert_eq!(cpu.state.rip, 0x10005);
        assert_eq!(cpu.state.gpr[4], 0x8000);
    }

    #[test]
    fn ret_imm16_pops_the_return_address_then_releases_the_bytes() {
        use iced_x86::code_asm::*;
        let code = crate::exec::alu::tests::asm(|a| {
            let mut f = a.create_label();
            a.push(rax)?;
            a.call(f)?;
            a.hlt()?;
            a.set_label(&mut f)?;
            a.ret_1(8)
        });
        let (cpu, _) = run_code(&code, 3);
        assert_eq!(cpu.state.gpr[4], 0x8000);
        assert_eq!(cpu.state.rip, 0x10006);
    }

    #[test]
    fn near_branches_to_non_canonical_targets_raise_gp_at_the_branch() {
        use iced_x86::code_asm::*;

        use crate::exec::Stop;
        use crate::exec::alu::tests::{asm, exec, machine};
        let code = asm(|a| {
            a.jmp(rax)?;
            a.call(rax)?;
            a.call(qword_ptr(0x5000))?;
            a.ret()
        });
        let (mut cpu, mut bus) = machine(&code);
        let bad = 0x0000_8000_0000_0000u64;
        cpu.state.gpr[0] = bad;
        bus.write_u64(0x5000, bad);
        bus.write_u64(0x7ff8, bad);
        let gp = Err(Stop::Fault(Fault::gp(0)));
        for rip in [0x10000, 0x10002, 0x10004, 0x1000b] {
            cpu.state.rip = rip;
            cpu.state.gpr[4] = if rip == 0x1000b { 0x7ff8 } else { 0x8000 };
            let stack = cpu.state.gpr[4];
            assert_eq!(exec(&mut cpu, &mut bus), gp, "at {rip:#x}");
            assert_eq!((cpu.state.rip, cpu.state.gpr[4]), (rip, stack));
        }
    }

    #[test]
    fn out_reaches_the_bus() {
        // mov al, 0x41; out 0xf4, al
        let (_, bus) = run_code(&[0xb0, 0x41, 0xe6, 0xf4], 2);
        assert_eq!(bus.io_writes, vec![(0xf4, vec![0x41])]);
    }

    #[test]
    fn high_byte_registers_and_32_bit_zero_extension() {
        // mov rax, -1; mov ah, 0x12; mov ecx, eax
        let code = [
            0x48, 0xc7, 0xc0, 0xff, 0xff, 0xff, 0xff, 0xb4, 0x12, 0x89, 0xc1,
        ];
        let (cpu, _) = run_code(&code, 3);
        assert_eq!(cpu.state.gpr[0], 0xffff_ffff_ffff_12ff);
        assert_eq!(cpu.state.gpr[1], 0xffff_12ff);
    }

    #[test]
    fn unimplemented_instruction_is_reported_with_bytes_and_text() {
        let mut bus = FlatBus::new(0x20_0000);
        let mut cpu = long_mode_cpu(&mut bus);
        // vzeroupper: an AVX instruction the interpreter will not implement.
        bus.write(0x10000, &[0xc5, 0xf8, 0x77]);
        match cpu.step(&mut bus) {
            StepExit::Unimplemented(u) => {
                assert_eq!(u.bytes, vec![0xc5, 0xf8, 0x77]);
                assert_eq!(u.text, "vzeroupper");
                assert_eq!(u.rip, 0x10000);
            }
            other => panic!("{other:?}"),
        }
    }
}
