//! Read-modify-write instructions that must stay atomic against other vCPUs: every `lock`ed
//! instruction, `xchg` with memory (implicitly locked), and `xadd`, `cmpxchg`, `cmpxchg8b`,
//! `cmpxchg16b` with or without `lock`.
//!
//! The interpreter may run one vCPU while the others run natively on the same guest RAM, so a
//! locked operation on RAM is a host compare-exchange loop on the guest's memory itself
//! ([`CpuBus::ram_atomic`]): 1, 2, 4 and 8 bytes through the std atomics, 16 bytes through
//! `lock cmpxchg16b`. An operand that is not naturally aligned but lies inside one aligned 8- or
//! 16-byte word is updated through that wider word, which is atomic just the same. What is left
//! (an operand that crosses a 16-byte boundary, a page, or is not RAM) takes the plain path:
//! read, then write. On hardware such a split lock is a bus lock; a software CPU cannot stop the
//! natively running vCPUs, so it is **not** atomic here. Linux does not issue split locks (and
//! modern kernels treat them as a bug).
//!
//! This family runs before the basic one so that `lock add [mem], reg` and friends, which the
//! basic family would run as plain read and write, come here.

use std::sync::atomic::{AtomicU8, AtomicU16, AtomicU32, AtomicU64, Ordering};

use iced_x86::{Instruction, Mnemonic, OpKind, Register};

use super::basic::set_flags;
use super::{Cpu, ExecResult, Flow};
use crate::bus::CpuBus;
use crate::fault::{Fault, Result};
use crate::flags::{self, mask};
use crate::mmu::{Access, Privilege, read_phys, translate, write_phys};
use crate::state::SegReg;
use crate::state::rflags::{AF, CF, OF, PF, SF, ZF};

/// Executes `insn` if it belongs to this family; `None` otherwise.
pub(crate) fn execute(
    cpu: &mut Cpu,
    bus: &mut dyn CpuBus,
    insn: &Instruction,
) -> Option<ExecResult> {
    let m = insn.mnemonic();
    let mem0 = insn.op0_kind() == OpKind::Memory;
    Some(match m {
        Mnemonic::Xadd => xadd(cpu, bus, insn),
        Mnemonic::Cmpxchg => cmpxchg(cpu, bus, insn),
        Mnemonic::Cmpxchg8b | Mnemonic::Cmpxchg16b => cmpxchg_wide(cpu, bus, insn),
        Mnemonic::Xchg if mem0 || insn.op1_kind() == OpKind::Memory => xchg(cpu, bus, insn),
        Mnemonic::Add
        | Mnemonic::Adc
        | Mnemonic::Sub
        | Mnemonic::Sbb
        | Mnemonic::And
        | Mnemonic::Or
        | Mnemonic::Xor
        | Mnemonic::Inc
        | Mnemonic::Dec
        | Mnemonic::Not
        | Mnemonic::Neg
            if mem0 && insn.has_lock_prefix() =>
        {
            locked_alu(cpu, bus, insn)
        }
        _ => return None,
    })
}

/// The accumulator of `size` bytes: AL, AX, EAX or RAX.
pub(crate) fn accumulator(size: u32) -> Register {
    match size {
        1 => Register::AL,
        2 => Register::AX,
        4 => Register::EAX,
        _ => Register::RAX,
    }
}

/// The result and status flags of a lockable one- or two-operand ALU instruction; the third
/// value says which flags it writes.
fn alu_op(m: Mnemonic, a: u64, b: u64, cf: u64, size: u32) -> (u64, u64, u64) {
    let mk = mask(size);
    let a = a & mk;
    match m {
        Mnemonic::Add => {
            let r = a.wrapping_add(b) & mk;
            (r, flags::add(a, b, 0, r, size), flags::ALL)
        }
        Mnemonic::Adc => {
            let r = a.wrapping_add(b).wrapping_add(cf) & mk;
            (r, flags::add(a, b, cf, r, size), flags::ALL)
        }
        Mnemonic::Sub => {
            let r = a.wrapping_sub(b) & mk;
            (r, flags::sub(a, b, 0, r, size), flags::ALL)
        }
        Mnemonic::Sbb => {
            let r = a.wrapping_sub(b).wrapping_sub(cf) & mk;
            (r, flags::sub(a, b, cf, r, size), flags::ALL)
        }
        Mnemonic::And => (a & b, flags::logic(a & b, size), flags::ALL),
        Mnemonic::Or => ((a | b) & mk, flags::logic(a | b, size), flags::ALL),
        Mnemonic::Xor => ((a ^ b) & mk, flags::logic(a ^ b, size), flags::ALL),
        Mnemonic::Inc => {
            let r = a.wrapping_add(1) & mk;
            (r, flags::add(a, 1, 0, r, size), OF | SF | ZF | AF | PF)
        }
        Mnemonic::Dec => {
            let r = a.wrapping_sub(1) & mk;
            (r, flags::sub(a, 1, 0, r, size), OF | SF | ZF | AF | PF)
        }
        Mnemonic::Not => (!a & mk, 0, 0),
        // Neg.
        _ => {
            let r = 0u64.wrapping_sub(a) & mk;
            (r, flags::sub(0, a, 0, r, size), flags::ALL)
        }
    }
}

fn locked_alu(cpu: &mut Cpu, bus: &mut dyn CpuBus, insn: &Instruction) -> ExecResult {
    let m = insn.mnemonic();
    let size = cpu.op_size(insn, 0);
    let b = if insn.op_count() > 1 {
        cpu.read_op(bus, insn, 1)? & mask(size)
    } else {
        0
    };
    let cf = cpu.state.rflags & CF;
    let (seg, off) = (cpu.mem_seg(insn), cpu.ea(insn));
    let old = rmw(cpu, bus, seg, off, size, &mut |a| {
        Some(u128::from(alu_op(m, a as u64, b, cf, size).0))
    })?;
    let (_, f, which) = alu_op(m, old as u64, b, cf, size);
    set_flags(cpu, f, which);
    Ok(Flow::Next)
}

fn xchg(cpu: &mut Cpu, bus: &mut dyn CpuBus, insn: &Instruction) -> ExecResult {
    let reg_op = if insn.op0_kind() == OpKind::Memory {
        1
    } else {
        0
    };
    let r = insn.op_register(reg_op);
    let size = r.size() as u32;
    let v = u128::from(cpu.reg(r));
    let (seg, off) = (cpu.mem_seg(insn), cpu.ea(insn));
    let old = rmw(cpu, bus, seg, off, size, &mut |_| Some(v))?;
    cpu.set_reg(r, old as u64);
    Ok(Flow::Next)
}

fn xadd(cpu: &mut Cpu, bus: &mut dyn CpuBus, insn: &Instruction) -> ExecResult {
    let size = cpu.op_size(insn, 0);
    let mk = mask(size);
    let src_reg = insn.op1_register();
    let src = cpu.reg(src_reg);
    let old = if insn.op0_kind() == OpKind::Register {
        let dst_reg = insn.op0_register();
        let d = cpu.reg(dst_reg);
        // The source receives the old destination first, so `xadd eax, eax` leaves the sum.
        cpu.set_reg(src_reg, d);
        cpu.set_reg(dst_reg, d.wrapping_add(src) & mk);
        d
    } else {
        let (seg, off) = (cpu.mem_seg(insn), cpu.ea(insn));
        let old = rmw(cpu, bus, seg, off, size, &mut |d| {
            Some(u128::from((d as u64).wrapping_add(src) & mk))
        })? as u64;
        cpu.set_reg(src_reg, old);
        old
    };
    let sum = old.wrapping_add(src) & mk;
    set_flags(cpu, flags::add(old, src, 0, sum, size), flags::ALL);
    Ok(Flow::Next)
}

fn cmpxchg(cpu: &mut Cpu, bus: &mut dyn CpuBus, insn: &Instruction) -> ExecResult {
    let size = cpu.op_size(insn, 0);
    let acc_reg = accumulator(size);
    let acc = cpu.reg(acc_reg);
    let src = cpu.reg(insn.op1_register());
    let old = if insn.op0_kind() == OpKind::Register {
        let dst_reg = insn.op0_register();
        let d = cpu.reg(dst_reg);
        // On a mismatch the destination register is not written: a 32-bit destination keeps
        // bits 63:32. That is AMD's behaviour, which the silicon the differential suite runs on
        // shows (Intel cores write the value back, zero-extending it).
        if d == acc {
            cpu.set_reg(dst_reg, src);
        }
        d
    } else {
        let (seg, off) = (cpu.mem_seg(insn), cpu.ea(insn));
        rmw(cpu, bus, seg, off, size, &mut |d| {
            (d as u64 == acc).then_some(u128::from(src))
        })? as u64
    };
    // The accumulator is written only on a mismatch: on success RAX keeps bits 63:32 even
    // with a 32-bit operand, as on hardware.
    if old != acc {
        cpu.set_reg(acc_reg, old);
    }
    let diff = acc.wrapping_sub(old) & mask(size);
    set_flags(cpu, flags::sub(acc, old, 0, diff, size), flags::ALL);
    Ok(Flow::Next)
}

fn cmpxchg_wide(cpu: &mut Cpu, bus: &mut dyn CpuBus, insn: &Instruction) -> ExecResult {
    let wide = insn.mnemonic() == Mnemonic::Cmpxchg16b;
    let (seg, off) = (cpu.mem_seg(insn), cpu.ea(insn));
    let g = cpu.state.gpr;
    let (size, expected, new) = if wide {
        if cpu.linear(seg, off, 16, true)? & 15 != 0 {
            return Err(Fault::gp(0).into());
        }
        let join = |lo: u64, hi: u64| u128::from(lo) | u128::from(hi) << 64;
        (16, join(g[0], g[2]), join(g[3], g[1]))
    } else {
        let join = |lo: u64, hi: u64| u128::from(lo as u32) | u128::from(hi as u32) << 32;
        (8, join(g[0], g[2]), join(g[3], g[1]))
    };
    let old = rmw(cpu, bus, seg, off, size, &mut |v| {
        (v == expected).then_some(new)
    })?;
    if old == expected {
        cpu.state.rflags |= ZF;
    } else {
        cpu.state.rflags &= !ZF;
        if wide {
            cpu.state.gpr[0] = old as u64;
            cpu.state.gpr[2] = (old >> 64) as u64;
        } else {
            // 32-bit register writes: bits 63:32 of RAX and RDX are cleared.
            cpu.state.gpr[0] = u64::from(old as u32);
            cpu.state.gpr[2] = u64::from((old >> 32) as u32);
        }
    }
    Ok(Flow::Next)
}

/// Replaces the `size`-byte value (1..=16) at `seg:offset` with `op(old)` and returns the old
/// value; `op` returning `None` stores nothing (a failed compare-exchange). Atomic against other
/// threads on the same RAM where the module documentation says so; `op` may run several times
/// and must depend on its argument only.
pub(crate) fn rmw(
    cpu: &mut Cpu,
    bus: &mut dyn CpuBus,
    seg: SegReg,
    offset: u64,
    size: u32,
    op: &mut dyn FnMut(u128) -> Option<u128>,
) -> Result<u128> {
    let len = size as usize;
    let linear = cpu.linear(seg, offset, size, true)?;
    let mut b = [0u8; 16];
    if (linear & 0xfff) as usize + len > 0x1000 {
        // A page-crossing split lock: both pages are checked for writing before any byte is
        // written, but the update is not atomic.
        cpu.read_linear(bus, linear, &mut b[..len], Privilege::Current)?;
        let old = u128::from_le_bytes(b);
        let new = op(old).unwrap_or(old);
        cpu.write_linear(bus, linear, &new.to_le_bytes()[..len], Privilege::Current)?;
        return Ok(old);
    }
    let pa = translate(
        &cpu.state,
        &mut cpu.tlb,
        bus,
        linear,
        Access::Write,
        Privilege::Current,
    )?;
    let window = if pa % size as u64 == 0 {
        Some((pa, len))
    } else if (pa & 7) as usize + len <= 8 {
        Some((pa & !7, 8))
    } else if (pa & 15) as usize + len <= 16 {
        Some((pa & !15, 16))
    } else {
        None
    };
    if let Some((base, width)) = window
        && let Some(cells) = bus.ram_atomic(base, width)
        && let Some(old) = host_rmw(cells, (pa - base) as u32 * 8, len, op)
    {
        return Ok(old);
    }
    // Not RAM (a device sees one read and one write), or a split lock inside a page.
    read_phys(bus, pa, &mut b[..len]);
    let old = u128::from_le_bytes(b);
    let new = op(old).unwrap_or(old);
    write_phys(bus, pa, &new.to_le_bytes()[..len]);
    Ok(old)
}

fn mask128(len: usize) -> u128 {
    if len >= 16 {
        u128::MAX
    } else {
        (1u128 << (len * 8)) - 1
    }
}

/// A compare-exchange loop on the atomic `$a` of integer type `$int`, applying `$op` to whole
/// words; evaluates to the word before the update.
macro_rules! cas_loop {
    ($a:expr, $int:ty, $op:expr) => {{
        let a = $a;
        let mut cur = a.load(Ordering::SeqCst);
        loop {
            let Some(new) = $op(u128::from(cur)) else {
                break u128::from(cur);
            };
            match a.compare_exchange_weak(cur, new as $int, Ordering::SeqCst, Ordering::SeqCst) {
                Ok(_) => break u128::from(cur),
                Err(actual) => cur = actual,
            }
        }
    }};
}

/// Runs `op` on the `len`-byte field at bit `shift` of the aligned word `cells` as one atomic
/// host operation. `None` if the host cannot: a host address not aligned to the word, or a
/// 16-byte word on a host without `cmpxchg16b`.
fn host_rmw(
    cells: &[AtomicU8],
    shift: u32,
    len: usize,
    op: &mut dyn FnMut(u128) -> Option<u128>,
) -> Option<u128> {
    let width = cells.len();
    let ptr = cells.as_ptr().cast::<u8>().cast_mut();
    if !(ptr as usize).is_multiple_of(width) {
        return None;
    }
    let field = mask128(len);
    let mut word_op = |word: u128| {
        let new = op((word >> shift) & field)?;
        Some((word & !(field << shift)) | ((new & field) << shift))
    };
    let word = match width {
        1 => cas_loop!(&cells[0], u8, word_op),
        // For the arms below: `ptr` addresses `width` bytes of guest RAM that the bus lends as
        // atomics for the borrow of `cells`, so it is valid for reads and writes and only ever
        // accessed atomically from Rust; it is aligned to `width` (checked above). Other vCPUs
        // may access the same bytes with other widths: guest RAM is shared with code outside
        // Rust, and x86 makes every aligned locked access atomic whatever its width.
        2 => {
            // SAFETY: valid and 2-byte aligned, as said above.
            let a = unsafe { AtomicU16::from_ptr(ptr.cast()) };
            cas_loop!(a, u16, word_op)
        }
        4 => {
            // SAFETY: valid and 4-byte aligned, as said above.
            let a = unsafe { AtomicU32::from_ptr(ptr.cast()) };
            cas_loop!(a, u32, word_op)
        }
        8 => {
            // SAFETY: valid and 8-byte aligned, as said above.
            let a = unsafe { AtomicU64::from_ptr(ptr.cast()) };
            cas_loop!(a, u64, word_op)
        }
        #[cfg(target_arch = "x86_64")]
        16 => {
            let p = ptr.cast::<u128>();
            // SAFETY: valid as said above, and 16-byte aligned as `cmpxchg16b` requires. A
            // compare-exchange of 0 with 0 is an atomic 16-byte read (it may store the same
            // zero back, as the instruction does on hardware).
            let mut cur = unsafe { cmpxchg16b(p, 0, 0) };
            loop {
                let Some(new) = word_op(cur) else {
                    break cur;
                };
                // SAFETY: as above.
                let prev = unsafe { cmpxchg16b(p, cur, new) };
                if prev == cur {
                    break cur;
                }
                cur = prev;
            }
        }
        _ => return None,
    };
    Some((word >> shift) & field)
}

/// `lock cmpxchg16b [ptr]`: stores `new` if `*ptr == expected`; returns the previous value.
///
/// # Safety
/// `ptr` must be valid for 16-byte reads and writes, 16-byte aligned, and accessed concurrently
/// only by atomic operations.
#[cfg(target_arch = "x86_64")]
unsafe fn cmpxchg16b(ptr: *mut u128, expected: u128, new: u128) -> u128 {
    let mut lo = expected as u64;
    let mut hi = (expected >> 64) as u64;
    // SAFETY: the caller guarantees `ptr` is valid and aligned. LLVM reserves RBX, so the low
    // half of `new` travels in a scratch register and is swapped into RBX around the
    // instruction; RBX is restored before the block ends. Every x86-64 host the VMM runs on has
    // CMPXCHG16B (it is required by the x86-64-v2 baseline and by KVM's Linux guests).
    unsafe {
        core::arch::asm!(
            "xchg {tmp}, rbx",
            "lock cmpxchg16b xmmword ptr [{ptr}]",
            "mov rbx, {tmp}",
            ptr = in(reg) ptr,
            tmp = inout(reg) new as u64 => _,
            inout("rax") lo,
            inout("rdx") hi,
            in("rcx") (new >> 64) as u64,
            options(nostack),
        );
    }
    u128::from(lo) | u128::from(hi) << 64
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::AtomicU64;

    use iced_x86::code_asm::*;

    use super::*;
    use crate::exec::alu::tests::{asm, exec, machine, run, run_asm};
    use crate::testing::FlatBus;

    #[test]
    fn xadd_exchanges_and_adds_in_registers_and_memory() {
        let (cpu, bus) = run_asm(|a| {
            a.mov(qword_ptr(0x5000), 40)?;
            a.mov(ecx, 2)?;
            a.lock().xadd(qword_ptr(0x5000), rcx)?;
            a.mov(eax, 3)?;
            a.xadd(eax, eax)
        });
        assert_eq!(bus.read_u64(0x5000), 42);
        assert_eq!(cpu.state.gpr[1], 40);
        assert_eq!(cpu.state.gpr[0], 6);
    }

    #[test]
    fn cmpxchg_writes_the_accumulator_only_on_mismatch() {
        let (cpu, bus) = run_asm(|a| {
            a.mov(dword_ptr(0x5000), 7)?;
            a.mov(rax, 0xdead_0000_0000_0007u64)?;
            a.mov(ecx, 9)?;
            // Match: memory = 9, RAX untouched (bits 63:32 too).
            a.lock().cmpxchg(dword_ptr(0x5000), ecx)?;
            a.mov(rbx, rax)?;
            // Mismatch: EAX = 9, zero-extended.
            a.cmpxchg(dword_ptr(0x5000), ecx)
        });
        assert_eq!(bus.read_u64(0x5000) as u32, 9);
        assert_eq!(cpu.state.gpr[3], 0xdead_0000_0000_0007);
        assert_eq!(cpu.state.gpr[0], 9);
        // The last compare was 7 - 9.
        assert_eq!(cpu.state.rflags & (ZF | CF), CF);
    }

    #[test]
    fn failing_cmpxchg_keeps_the_upper_half_of_a_32_bit_register_destination() {
        let (cpu, _) = run_asm(|a| {
            a.mov(rbx, 0xdead_beef_0000_0005u64)?;
            a.mov(rax, 0xffff_ffff_0000_0007u64)?;
            a.mov(ecx, 9)?;
            // Mismatch (5 != 7): EBX is not written, EAX receives 5 zero-extended.
            a.cmpxchg(ebx, ecx)?;
            // Match: EDX = ECX, zero-extended.
            a.mov(rdx, 0xffff_ffff_0000_0005u64)?;
            a.cmpxchg(edx, ecx)
        });
        assert_eq!(cpu.state.gpr[3], 0xdead_beef_0000_0005);
        assert_eq!(cpu.state.gpr[0], 5);
        assert_eq!(cpu.state.gpr[2], 9);
        assert_eq!(cpu.state.rflags & ZF, ZF);
    }

    #[test]
    fn cmpxchg8b_compares_edx_eax() {
        let (cpu, bus) = run_asm(|a| {
            a.mov(qword_ptr(0x5000), 0x1111_2222)?;
            a.mov(eax, 0x1111_2222)?;
            a.xor(edx, edx)?;
            a.mov(ebx, 0x3333_4444)?;
            a.mov(ecx, 0x5555_6666)?;
            a.lock().cmpxchg8b(qword_ptr(0x5000))
        });
        assert_eq!(bus.read_u64(0x5000), 0x5555_6666_3333_4444);
        assert_eq!(cpu.state.rflags & ZF, ZF);
    }

    #[test]
    fn cmpxchg16b_swaps_on_match_loads_on_mismatch_and_needs_alignment() {
        let code = asm(|a| {
            a.lock().cmpxchg16b(xmmword_ptr(rsi))?;
            a.lock().cmpxchg16b(xmmword_ptr(rsi))?;
            a.lock().cmpxchg16b(xmmword_ptr(rsi + 8))
        });
        let (mut cpu, mut bus) = machine(&code);
        bus.write_u64(0x5000, 1);
        bus.write_u64(0x5008, 2);
        let g = &mut cpu.state.gpr;
        (g[0], g[2], g[3], g[1], g[6]) = (1, 2, 3, 4, 0x5000);
        run(&mut cpu, &mut bus, 1);
        assert_eq!((bus.read_u64(0x5000), bus.read_u64(0x5008)), (3, 4));
        assert_eq!(cpu.state.rflags & ZF, ZF);
        // RDX:RAX is still 2:1, which no longer matches: it receives 4:3.
        run(&mut cpu, &mut bus, 1);
        assert_eq!((cpu.state.gpr[0], cpu.state.gpr[2]), (3, 4));
        assert_eq!(cpu.state.rflags & ZF, 0);
        assert_eq!(
            exec(&mut cpu, &mut bus),
            Err(super::super::Stop::Fault(Fault::gp(0)))
        );
    }

    #[test]
    fn host_cmpxchg16b_path_runs_on_ram() {
        let mut bus = FlatBus::new(0x1000);
        bus.write_u64(0x100, 5);
        let cells = bus.ram_atomic(0x100, 16).unwrap();
        let aligned = (cells.as_ptr() as usize).is_multiple_of(16);
        // FlatBus RAM is a Vec<u8>: the allocator decides its alignment. An unaligned word is
        // refused (the caller then takes the plain path).
        match host_rmw(cells, 0, 16, &mut |v| Some(v + (7 << 64))) {
            Some(old) => {
                assert!(aligned);
                assert_eq!(old, 5);
                assert_eq!(bus.read_u64(0x108), 7);
            }
            None => assert!(!aligned),
        }
    }

    #[test]
    fn locked_operations_inside_a_word_and_across_pages() {
        let (cpu, bus) = run_asm(|a| {
            a.mov(ecx, 0x0102_0304)?;
            // Misaligned but inside an aligned qword: done through that qword.
            a.lock().add(dword_ptr(0x5002), ecx)?;
            // Across a page boundary: the plain path.
            a.lock().add(dword_ptr(0x5ffe), ecx)?;
            a.lock().inc(byte_ptr(0x6001))?;
            a.lock().not(word_ptr(0x6004))?;
            a.lock().neg(qword_ptr(0x6008))?;
            a.mov(edx, 0xff)?;
            a.xchg(byte_ptr(0x6010), dl)
        });
        assert_eq!(&bus.mem[0x5002..0x5006], &[4, 3, 2, 1]);
        assert_eq!(&bus.mem[0x5ffe..0x6002], &[4, 3, 2, 2]);
        assert_eq!(&bus.mem[0x6004..0x6006], &[0xff, 0xff]);
        assert_eq!(bus.read_u64(0x6008), 0);
        assert_eq!((bus.mem[0x6010], cpu.state.gpr[2]), (0xff, 0));
        // neg of 0 clears CF.
        assert_eq!(cpu.state.rflags & (CF | ZF), ZF);
    }

    /// A bus whose page at `SHARED` is shared with another thread: reachable only as atomics.
    struct SharedBus {
        inner: FlatBus,
        shared: Arc<Vec<AtomicU64>>,
    }

    const SHARED: u64 = 0x5000;

    impl SharedBus {
        fn cells(&self) -> &[AtomicU8] {
            let words = &self.shared[..];
            // SAFETY: `AtomicU64` is 8 bytes of atomically accessed memory; viewing it as 8 times
            // as many `AtomicU8` keeps it valid, in bounds and atomic-only.
            unsafe { std::slice::from_raw_parts(words.as_ptr().cast(), words.len() * 8) }
        }
    }

    impl CpuBus for SharedBus {
        fn ram(&mut self, gpa: u64, len: usize) -> Option<&mut [u8]> {
            if gpa + len as u64 > SHARED && gpa < SHARED + 0x1000 {
                return None;
            }
            self.inner.ram(gpa, len)
        }
        fn ram_atomic(&mut self, gpa: u64, len: usize) -> Option<&[AtomicU8]> {
            let start = gpa.checked_sub(SHARED)? as usize;
            self.cells().get(start..start + len)
        }
        fn mmio_read(&mut self, gpa: u64, data: &mut [u8]) {
            let cells = self.cells();
            for (i, b) in data.iter_mut().enumerate() {
                *b = cells[(gpa - SHARED) as usize + i].load(Ordering::SeqCst);
            }
        }
        fn mmio_write(&mut self, gpa: u64, data: &[u8]) {
            let cells = self.cells();
            for (i, b) in data.iter().enumerate() {
                cells[(gpa - SHARED) as usize + i].store(*b, Ordering::SeqCst);
            }
        }
        fn io_read(&mut self, port: u16, data: &mut [u8]) {
            self.inner.io_read(port, data)
        }
        fn io_write(&mut self, port: u16, data: &[u8]) {
            self.inner.io_write(port, data)
        }
        fn cpuid(&mut self, leaf: u32, subleaf: u32) -> [u32; 4] {
            self.inner.cpuid(leaf, subleaf)
        }
        fn rdmsr(&mut self, msr: u32) -> Option<u64> {
            self.inner.rdmsr(msr)
        }
        fn wrmsr(&mut self, msr: u32, value: u64) -> bool {
            self.inner.wrmsr(msr, value)
        }
        fn tsc(&mut self) -> u64 {
            self.inner.tsc()
        }
    }

    #[test]
    fn lock_add_is_atomic_against_another_thread() {
        const N: u64 = 20_000;
        let code = asm(|a| {
            let mut top = a.create_label();
            a.mov(ebx, 1)?;
            a.mov(ecx, N as u32)?;
            a.set_label(&mut top)?;
            a.lock().add(qword_ptr(SHARED + 8), rbx)?;
            a.dec(ecx)?;
            a.jnz(top)?;
            a.hlt()
        });
        let (mut cpu, mut inner) = machine(&code);
        inner.write(0x10000, &code);
        let shared: Arc<Vec<AtomicU64>> = Arc::new((0..512).map(|_| AtomicU64::new(0)).collect());
        let mut bus = SharedBus {
            inner,
            shared: shared.clone(),
        };
        // The other "vCPU" adds 1 to the same qword for as long as the interpreter runs.
        let stop = Arc::new(AtomicU64::new(0));
        let other = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut added = 0;
                while stop.load(Ordering::Relaxed) == 0 || added == 0 {
                    shared[1].fetch_add(1, Ordering::SeqCst);
                    added += 1;
                }
                added
            })
        };
        while shared_value(&bus) == 0 {
            std::hint::spin_loop();
        }
        while cpu.step(&mut bus) == crate::StepExit::Continue {}
        stop.store(1, Ordering::Relaxed);
        let added = other.join().unwrap();
        assert_eq!(shared_value(&bus), N + added);
    }

    fn shared_value(bus: &SharedBus) -> u64 {
        bus.shared[1].load(Ordering::SeqCst)
    }
}
