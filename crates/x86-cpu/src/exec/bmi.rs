//! The bit-manipulation extensions on general registers: BMI1 (`andn`, `bextr`, `blsi`,
//! `blsmsk`, `blsr`; its `tzcnt` lives with the other counts in `bits.rs`), BMI2 (`bzhi`,
//! `pdep`, `pext`, `rorx`, `sarx`, `shlx`, `shrx`, `mulx`) and ADX (`adcx`, `adox`).
//!
//! All but ADX are VEX-encoded, which real and virtual-8086 mode do not know (#UD). Like the
//! other families they run whenever decoded: the CPUID the guest sees decides whether it uses
//! them. 32-bit forms zero-extend their destinations, as every 32-bit register write does.
//!
//! Undefined flags are what AMD's silicon (the differential suite's host) produces: AF and PF
//! of `andn`, `blsi`, `blsmsk`, `blsr` and `bzhi` are those of a logical operation on the
//! result (AF clear, PF from its low byte); `bextr` sets AF, clears SF and sets PF from the
//! result.

use iced_x86::{Instruction, Mnemonic, Register};

use super::basic::set_flags;
use super::{Cpu, ExecResult, Flow};
use crate::bus::CpuBus;
use crate::fault::Fault;
use crate::flags::{self, mask, sign_extend};
use crate::state::rflags::{AF, CF, OF, PF, ZF};

/// Executes `insn` if it belongs to this family; `None` otherwise.
pub(crate) fn execute(
    cpu: &mut Cpu,
    bus: &mut dyn CpuBus,
    insn: &Instruction,
) -> Option<ExecResult> {
    let m = insn.mnemonic();
    let vex = match m {
        Mnemonic::Andn
        | Mnemonic::Bextr
        | Mnemonic::Blsi
        | Mnemonic::Blsmsk
        | Mnemonic::Blsr
        | Mnemonic::Bzhi
        | Mnemonic::Pdep
        | Mnemonic::Pext
        | Mnemonic::Rorx
        | Mnemonic::Sarx
        | Mnemonic::Shlx
        | Mnemonic::Shrx
        | Mnemonic::Mulx => true,
        Mnemonic::Adcx | Mnemonic::Adox => false,
        _ => return None,
    };
    if vex && (!cpu.state.protected() || cpu.state.v86()) {
        return Some(Err(Fault::ud().into()));
    }
    Some(match m {
        Mnemonic::Adcx | Mnemonic::Adox => add_carry(cpu, bus, insn, m == Mnemonic::Adcx),
        Mnemonic::Mulx => mulx(cpu, bus, insn),
        Mnemonic::Blsi | Mnemonic::Blsmsk | Mnemonic::Blsr => lowest_bit(cpu, bus, insn, m),
        _ => three_operand(cpu, bus, insn, m),
    })
}

/// `bextr`'s field of `src`: `len` bits from bit `start`, each taken from the low byte and the
/// next one of `control`; a start beyond the operand gives 0, a length beyond it the rest.
fn bit_field(src: u64, control: u64, bits: u32) -> u64 {
    let start = (control & 0xff) as u32;
    let len = ((control >> 8) & 0xff) as u32;
    if start >= bits {
        return 0;
    }
    let shifted = src >> start;
    if len >= 64 {
        shifted
    } else {
        shifted & ((1u64 << len) - 1)
    }
}

/// `pdep`: the low bits of `src` deposited, in order, at the set bits of `sel`.
fn deposit(src: u64, mut sel: u64) -> u64 {
    let mut out = 0;
    let mut k = 0;
    while sel != 0 {
        let bit = sel & sel.wrapping_neg();
        if (src >> k) & 1 != 0 {
            out |= bit;
        }
        k += 1;
        sel &= sel - 1;
    }
    out
}

/// `pext`: the bits of `src` at the set bits of `sel`, packed, in order, into the low bits.
fn extract(src: u64, mut sel: u64) -> u64 {
    let mut out = 0;
    let mut k = 0;
    while sel != 0 {
        let bit = sel & sel.wrapping_neg();
        if src & bit != 0 {
            out |= 1 << k;
        }
        k += 1;
        sel &= sel - 1;
    }
    out
}

/// The instructions of form `dest, src1, src2` (`rorx`: `dest, src, imm8`), with their flags:
/// `None` for the BMI2 ones that leave the flags alone.
fn three_operand(
    cpu: &mut Cpu,
    bus: &mut dyn CpuBus,
    insn: &Instruction,
    m: Mnemonic,
) -> ExecResult {
    let size = cpu.op_size(insn, 0);
    let bits = size * 8;
    let mk = mask(size);
    let a = cpu.read_op(bus, insn, 1)? & mk;
    let b = cpu.read_op(bus, insn, 2)? & mk;
    // Shift and rotate counts are taken modulo the operand width.
    let count = (b as u32) & (bits - 1);
    let (r, f) = match m {
        // ANDN: SF and ZF from the result, OF and CF clear.
        Mnemonic::Andn => {
            let r = !a & b & mk;
            (r, Some(flags::logic(r, size)))
        }
        // BEXTR: ZF from the result, CF and OF clear.
        Mnemonic::Bextr => {
            let r = bit_field(a, b, bits);
            (r, Some(AF | (flags::logic(r, size) & (ZF | PF))))
        }
        // BZHI: the bits from index b[7:0] up cleared; CF when the index is past the operand.
        Mnemonic::Bzhi => {
            let n = (b & 0xff) as u32;
            let (r, cf) = if n < bits {
                (a & ((1u64 << n) - 1), 0)
            } else {
                (a, CF)
            };
            (r, Some(flags::logic(r, size) | cf))
        }
        Mnemonic::Pdep => (deposit(a, b), None),
        Mnemonic::Pext => (extract(a, b), None),
        Mnemonic::Shlx => ((a << count) & mk, None),
        Mnemonic::Shrx => (a >> count, None),
        Mnemonic::Sarx => ((sign_extend(a, size) as i64 >> count) as u64 & mk, None),
        // Rorx: the count is the immediate, read as operand 2.
        _ => {
            let r = if bits == 64 {
                a.rotate_right(count)
            } else {
                u64::from((a as u32).rotate_right(count))
            };
            (r, None)
        }
    };
    cpu.set_reg(insn.op0_register(), r);
    if let Some(f) = f {
        set_flags(cpu, f, flags::ALL);
    }
    Ok(Flow::Next)
}

/// `blsi` (isolate), `blsmsk` (mask up to) and `blsr` (reset) the lowest set bit. SF and ZF from
/// the result, OF clear; CF is set when the source is not zero for `blsi`, when it is zero for
/// the other two.
fn lowest_bit(cpu: &mut Cpu, bus: &mut dyn CpuBus, insn: &Instruction, m: Mnemonic) -> ExecResult {
    let size = cpu.op_size(insn, 0);
    let mk = mask(size);
    let src = cpu.read_op(bus, insn, 1)? & mk;
    let (r, carry) = match m {
        Mnemonic::Blsi => (src & src.wrapping_neg() & mk, src != 0),
        Mnemonic::Blsmsk => ((src ^ src.wrapping_sub(1)) & mk, src == 0),
        _ => (src & src.wrapping_sub(1), src == 0),
    };
    cpu.set_reg(insn.op0_register(), r);
    let cf = if carry { CF } else { 0 };
    set_flags(cpu, flags::logic(r, size) | cf, flags::ALL);
    Ok(Flow::Next)
}

/// `mulx hi, lo, src`: the unsigned product of rDX and `src`, no flags. The low half is written
/// first, so when both destinations are one register it receives the high half.
fn mulx(cpu: &mut Cpu, bus: &mut dyn CpuBus, insn: &Instruction) -> ExecResult {
    let size = cpu.op_size(insn, 0);
    let mk = mask(size);
    let src = cpu.read_op(bus, insn, 2)? & mk;
    let rdx = if size == 8 {
        Register::RDX
    } else {
        Register::EDX
    };
    let p = u128::from(cpu.reg(rdx)) * u128::from(src);
    cpu.set_reg(insn.op1_register(), p as u64 & mk);
    cpu.set_reg(insn.op0_register(), (p >> (size * 8)) as u64 & mk);
    Ok(Flow::Next)
}

/// `adcx` (carry in and out through CF) and `adox` (through OF): an unsigned add that touches
/// no other flag.
fn add_carry(cpu: &mut Cpu, bus: &mut dyn CpuBus, insn: &Instruction, cf: bool) -> ExecResult {
    let size = cpu.op_size(insn, 0);
    let mk = mask(size);
    let flag = if cf { CF } else { OF };
    let carry_in = u128::from(cpu.state.rflags & flag != 0);
    let a = cpu.read_op(bus, insn, 0)? & mk;
    let b = cpu.read_op(bus, insn, 1)? & mk;
    let sum = u128::from(a) + u128::from(b) + carry_in;
    cpu.set_reg(insn.op0_register(), sum as u64 & mk);
    let carry_out = if sum > u128::from(mk) { flag } else { 0 };
    set_flags(cpu, carry_out, flag);
    Ok(Flow::Next)
}

#[cfg(test)]
mod tests {
    use iced_x86::code_asm::*;

    use super::*;
    use crate::exec::Stop;
    use crate::exec::alu::tests::{exec, machine, run_asm};
    use crate::state::rflags::SF;

    const STATUS: u64 = flags::ALL;

    #[test]
    fn andn_and_bextr_select_bits_and_set_zf_from_the_result() {
        let (cpu, _) = run_asm(|a| {
            a.mov(rcx, 0xff00_ff00_ff00_ff00u64)?;
            a.mov(rdx, -1i64)?;
            a.andn(rax, rcx, rdx)?;
            // 12 bits from bit 4 of 0xabcd_ef12.
            a.mov(esi, 0xabcd_ef12u32)?;
            a.mov(edi, 0x0c04)?;
            a.bextr(ebx, esi, edi)?;
            // A start past the operand gives 0, a length past it the rest.
            a.mov(edi, 0xff08)?;
            a.bextr(r8, rdx, rdi)?;
            a.mov(edi, 0x0120)?;
            a.bextr(r9d, edx, edi)
        });
        assert_eq!(cpu.state.gpr[0], 0x00ff_00ff_00ff_00ff);
        assert_eq!(cpu.state.gpr[3], 0xef1);
        assert_eq!(cpu.state.gpr[8], 0x00ff_ffff_ffff_ffff);
        assert_eq!(cpu.state.gpr[9], 0);
        assert_eq!(cpu.state.rflags & STATUS, ZF | AF | PF);
    }

    #[test]
    fn blsi_blsmsk_blsr_work_on_the_lowest_set_bit() {
        let (cpu, _) = run_asm(|a| {
            a.mov(rcx, 0b1011_0000u64)?;
            a.blsi(rax, rcx)?;
            a.blsmsk(rbx, rcx)?;
            a.blsr(rdx, rcx)?;
            a.mov(r8, -1i64)?;
            a.xor(ecx, ecx)?;
            // A zero source: BLSMSK gives all ones and sets CF; the 32-bit form zero-extends.
            a.blsmsk(r8d, ecx)
        });
        assert_eq!(cpu.state.gpr[0], 0b1_0000);
        assert_eq!(cpu.state.gpr[3], 0b1_1111);
        assert_eq!(cpu.state.gpr[2], 0b1010_0000);
        assert_eq!(cpu.state.gpr[8], 0xffff_ffff);
        assert_eq!(cpu.state.rflags & STATUS, CF | SF | PF);
    }

    #[test]
    fn blsi_sets_cf_for_a_non_zero_source() {
        let (cpu, _) = run_asm(|a| {
            a.mov(ecx, 0x100)?;
            a.blsi(eax, ecx)
        });
        assert_eq!(cpu.state.gpr[0], 0x100);
        assert_eq!(cpu.state.rflags & (CF | ZF), CF);
    }

    #[test]
    fn bzhi_clears_from_the_index_and_flags_an_index_past_the_operand() {
        let (cpu, _) = run_asm(|a| {
            a.mov(rcx, -1i64)?;
            a.mov(edx, 0x110)?; // index 0x10: only the low byte counts
            a.bzhi(rax, rcx, rdx)?;
            a.mov(edx, 40)?;
            a.bzhi(ebx, ecx, edx)
        });
        assert_eq!(cpu.state.gpr[0], 0xffff);
        assert_eq!(cpu.state.gpr[3], 0xffff_ffff);
        assert_eq!(cpu.state.rflags & (CF | SF | ZF | OF), CF | SF);
    }

    #[test]
    fn pdep_and_pext_scatter_and_gather_bits() {
        let (cpu, _) = run_asm(|a| {
            a.mov(rcx, 0b1011u64)?;
            a.mov(rdx, 0xf0f0_0000_0000_0001u64)?;
            a.pdep(rax, rcx, rdx)?;
            a.pext(rbx, rax, rdx)?;
            a.mov(esi, 0x8000_0001u32)?;
            a.mov(edi, 0xc000_0003u32)?;
            a.pext(r8d, esi, edi)
        });
        assert_eq!(cpu.state.gpr[0], 0x0050_0000_0000_0001);
        assert_eq!(cpu.state.gpr[3], 0b1011);
        assert_eq!(cpu.state.gpr[8], 0b1001);
    }

    #[test]
    fn shlx_shrx_sarx_rorx_mask_the_count_and_leave_the_flags() {
        let (cpu, _) = run_asm(|a| {
            a.stc()?;
            a.mov(rcx, 0x8000_0000_0000_0010u64)?;
            a.mov(edx, 65)?;
            a.shlx(rax, rcx, rdx)?;
            a.shrx(rbx, rcx, rdx)?;
            a.sarx(rsi, rcx, rdx)?;
            a.mov(r8d, 0x8000_0001u32)?;
            a.mov(edx, 33)?;
            a.sarx(r9d, r8d, edx)?;
            a.rorx(r10, rcx, 4)?;
            a.rorx(r11d, r8d, 1)
        });
        assert_eq!(cpu.state.gpr[0], 0x20);
        assert_eq!(cpu.state.gpr[3], 0x4000_0000_0000_0008);
        assert_eq!(cpu.state.gpr[6], 0xc000_0000_0000_0008);
        assert_eq!(cpu.state.gpr[9], 0xc000_0000);
        assert_eq!(cpu.state.gpr[10], 0x0800_0000_0000_0001);
        assert_eq!(cpu.state.gpr[11], 0xc000_0000);
        assert_eq!(cpu.state.rflags & CF, CF);
    }

    #[test]
    fn mulx_multiplies_rdx_without_flags_and_same_destination_gets_the_high_half() {
        let (cpu, _) = run_asm(|a| {
            a.mov(rdx, -1i64)?;
            a.mov(rcx, 3u64)?;
            a.mulx(rax, rbx, rcx)?;
            a.mulx(rsi, rsi, rcx)?;
            a.mov(edx, 0x8000_0000u32)?;
            a.mov(ecx, 4)?;
            a.mulx(r8d, r9d, ecx)
        });
        assert_eq!((cpu.state.gpr[0], cpu.state.gpr[3]), (2, u64::MAX - 2));
        assert_eq!(cpu.state.gpr[6], 2);
        assert_eq!((cpu.state.gpr[8], cpu.state.gpr[9]), (2, 0));
    }

    #[test]
    fn adcx_and_adox_carry_through_their_own_flag_only() {
        let (cpu, _) = run_asm(|a| {
            a.mov(rax, -1i64)?;
            a.mov(rcx, 1u64)?;
            a.xor(edx, edx)?; // CF = OF = 0, ZF = 1
            a.adcx(rax, rcx)?; // 0, CF = 1
            a.mov(rbx, 5u64)?;
            a.adcx(rbx, rcx)?; // 5 + 1 + 1, CF = 0
            a.mov(esi, 0xffff_ffffu32)?;
            a.adox(esi, ecx)?; // 0, OF = 1
            a.adox(edx, ecx) // 0 + 1 + 1
        });
        assert_eq!(cpu.state.gpr[0], 0);
        assert_eq!(cpu.state.gpr[3], 7);
        assert_eq!(cpu.state.gpr[6], 0);
        assert_eq!(cpu.state.gpr[2], 2);
        assert_eq!(cpu.state.rflags & STATUS, ZF | PF);
    }

    #[test]
    fn bmi_reads_memory_operands() {
        let (cpu, _) = run_asm(|a| {
            a.mov(qword_ptr(0x5000), 0x70)?;
            a.blsr(rax, qword_ptr(0x5000))?;
            a.mov(rcx, 0x0fu64)?;
            a.andn(rbx, rcx, qword_ptr(0x5000))
        });
        assert_eq!(cpu.state.gpr[0], 0x60);
        assert_eq!(cpu.state.gpr[3], 0x70);
    }

    #[test]
    fn vex_bmi_is_undefined_in_real_mode() {
        // andn eax, eax, eax.
        let (mut cpu, mut bus) = machine(&[0xc4, 0xe2, 0x78, 0xf2, 0xc0]);
        cpu.state.cr0 = crate::state::bits::CR0_ET;
        cpu.state.efer = 0;
        cpu.state.seg[crate::state::SegReg::Cs as usize] =
            crate::state::Segment::real_mode(0x1000, true);
        cpu.state.rip = 0;
        assert_eq!(exec(&mut cpu, &mut bus), Err(Stop::Fault(Fault::ud())));
    }
}
