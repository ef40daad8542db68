//! Operand access: registers by iced's names, effective addresses, segmented and paged memory,
//! and the stack.

use iced_x86::{Instruction, OpKind, Register};

use super::Cpu;
use crate::bus::CpuBus;
use crate::fault::{Fault, Result};
use crate::flags::mask;
use crate::mmu::{Access, Privilege, read_phys, translate, write_phys};
use crate::state::SegReg;

/// The segment register iced names.
pub(crate) fn seg_of(r: Register) -> SegReg {
    match r {
        Register::ES => SegReg::Es,
        Register::CS => SegReg::Cs,
        Register::SS => SegReg::Ss,
        Register::FS => SegReg::Fs,
        Register::GS => SegReg::Gs,
        _ => SegReg::Ds,
    }
}

fn canonical(addr: u64) -> bool {
    ((addr as i64) << 16 >> 16) as u64 == addr
}

impl Cpu {
    /// Reads a general-purpose register of any size.
    pub(crate) fn reg(&self, r: Register) -> u64 {
        match r {
            Register::AH | Register::CH | Register::DH | Register::BH => {
                (self.state.gpr[r as usize - Register::AH as usize] >> 8) & 0xff
            }
            _ => {
                let v = self.state.gpr[r.full_register().number()];
                v & mask(r.size() as u32)
            }
        }
    }

    /// Writes a general-purpose register of any size: 32-bit writes zero the upper half,
    /// 8- and 16-bit writes keep the rest.
    pub(crate) fn set_reg(&mut self, r: Register, v: u64) {
        match r {
            Register::AH | Register::CH | Register::DH | Register::BH => {
                let g = &mut self.state.gpr[r as usize - Register::AH as usize];
                *g = (*g & !0xff00) | ((v & 0xff) << 8);
            }
            _ => {
                let size = r.size() as u32;
                let g = &mut self.state.gpr[r.full_register().number()];
                *g = match size {
                    8 => v,
                    4 => v & 0xffff_ffff,
                    _ => (*g & !mask(size)) | (v & mask(size)),
                };
            }
        }
    }

    /// The effective address (offset into its segment) of `insn`'s memory operand.
    pub(crate) fn ea(&self, insn: &Instruction) -> u64 {
        let base = insn.memory_base();
        if base == Register::RIP {
            return insn.memory_displacement64();
        }
        if base == Register::EIP {
            return insn.memory_displacement64() & 0xffff_ffff;
        }
        let index = insn.memory_index();
        let mut addr = insn.memory_displacement64();
        if base != Register::None {
            addr = addr.wrapping_add(self.reg(base));
        }
        if index != Register::None {
            addr = addr.wrapping_add(
                self.reg(index)
                    .wrapping_mul(u64::from(insn.memory_index_scale())),
            );
        }
        let size = if base != Register::None {
            base.size()
        } else if index != Register::None {
            index.size()
        } else {
            match insn.memory_displ_size() {
                2 => 2,
                4 => 4,
                8 => 8,
                _ => (self.state.code_bits() / 8) as usize,
            }
        };
        addr & mask(size as u32)
    }

    /// The segment of `insn`'s memory operand.
    pub(crate) fn mem_seg(&self, insn: &Instruction) -> SegReg {
        seg_of(insn.memory_segment())
    }

    /// Applies segmentation to `offset`: base, limit and type checks (not in 64-bit mode,
    /// where only FS and GS have a base and the address must be canonical).
    pub(crate) fn linear(&self, seg: SegReg, offset: u64, size: u32, write: bool) -> Result<u64> {
        let fault = |code| {
            if seg == SegReg::Ss {
                Fault::ss(code)
            } else {
                Fault::gp(code)
            }
        };
        if self.state.code64() {
            let base = match seg {
                SegReg::Fs | SegReg::Gs => self.state.seg(seg).base,
                _ => 0,
            };
            let linear = base.wrapping_add(offset);
            if !canonical(linear) || !canonical(linear.wrapping_add(u64::from(size) - 1)) {
                return Err(fault(0));
            }
            return Ok(linear);
        }
        let s = self.state.seg(seg);
        if self.state.protected() && !self.state.v86() {
            if s.unusable {
                return Err(fault(0));
            }
            let code = s.type_ & 0x8 != 0;
            if write && (code || s.type_ & 0x2 == 0) {
                return Err(fault(0));
            }
            if !write && code && s.type_ & 0x2 == 0 {
                return Err(fault(0));
            }
        }
        let last = offset.wrapping_add(u64::from(size) - 1);
        let expand_down = s.s && s.type_ & 0xc == 0x4;
        let in_limit = if expand_down {
            let upper = if s.db { 0xffff_ffff } else { 0xffff };
            offset > u64::from(s.limit) && last <= upper
        } else {
            last <= u64::from(s.limit)
        };
        if !in_limit {
            return Err(fault(0));
        }
        Ok(s.base.wrapping_add(offset) & 0xffff_ffff)
    }

    /// Reads `buf.len()` bytes at a linear address.
    pub(crate) fn read_linear(
        &mut self,
        bus: &mut dyn CpuBus,
        linear: u64,
        buf: &mut [u8],
        privilege: Privilege,
    ) -> Result<()> {
        let mut done = 0;
        while done < buf.len() {
            let addr = linear.wrapping_add(done as u64);
            let chunk = (0x1000 - (addr & 0xfff) as usize).min(buf.len() - done);
            let pa = translate(
                &self.state,
                &mut self.tlb,
                bus,
                addr,
                Access::Read,
                privilege,
            )?;
            read_phys(bus, pa, &mut buf[done..done + chunk]);
            done += chunk;
        }
        Ok(())
    }

    /// Writes `buf` at a linear address; every page is checked before any byte is written.
    pub(crate) fn write_linear(
        &mut self,
        bus: &mut dyn CpuBus,
        linear: u64,
        buf: &[u8],
        privilege: Privilege,
    ) -> Result<()> {
        let first_len = (0x1000 - (linear & 0xfff) as usize).min(buf.len());
        let pa1 = translate(
            &self.state,
            &mut self.tlb,
            bus,
            linear,
            Access::Write,
            privilege,
        )?;
        let pa2 = if first_len < buf.len() {
            Some(translate(
                &self.state,
                &mut self.tlb,
                bus,
                linear.wrapping_add(first_len as u64),
                Access::Write,
                privilege,
            )?)
        } else {
            None
        };
        write_phys(bus, pa1, &buf[..first_len]);
        if let Some(pa2) = pa2 {
            write_phys(bus, pa2, &buf[first_len..]);
        }
        Ok(())
    }

    /// Reads a little-endian value of `size` bytes (1, 2, 4 or 8) at seg:offset.
    pub(crate) fn read_mem(
        &mut self,
        bus: &mut dyn CpuBus,
        seg: SegReg,
        offset: u64,
        size: u32,
    ) -> Result<u64> {
        let linear = self.linear(seg, offset, size, false)?;
        let mut b = [0u8; 8];
        self.read_linear(bus, linear, &mut b[..size as usize], Privilege::Current)?;
        Ok(u64::from_le_bytes(b))
    }

    /// Writes a little-endian value of `size` bytes at seg:offset.
    pub(crate) fn write_mem(
        &mut self,
        bus: &mut dyn CpuBus,
        seg: SegReg,
        offset: u64,
        size: u32,
        v: u64,
    ) -> Result<()> {
        let linear = self.linear(seg, offset, size, true)?;
        self.write_linear(
            bus,
            linear,
            &v.to_le_bytes()[..size as usize],
            Privilege::Current,
        )
    }

    /// Size in bytes of operand `i`.
    pub(crate) fn op_size(&self, insn: &Instruction, i: u32) -> u32 {
        match insn.op_kind(i) {
            OpKind::Register => insn.op_register(i).size() as u32,
            OpKind::Memory => insn.memory_size().size() as u32,
            OpKind::Immediate8 => 1,
            OpKind::Immediate16 | OpKind::Immediate8to16 => 2,
            OpKind::Immediate32 | OpKind::Immediate8to32 => 4,
            _ => 8,
        }
    }

    /// Reads operand `i` (register, memory or immediate), zero-extended to 64 bits.
    pub(crate) fn read_op(
        &mut self,
        bus: &mut dyn CpuBus,
        insn: &Instruction,
        i: u32,
    ) -> Result<u64> {
        match insn.op_kind(i) {
            OpKind::Register => Ok(self.reg(insn.op_register(i))),
            OpKind::Memory => {
                let size = insn.memory_size().size() as u32;
                let (seg, off) = (self.mem_seg(insn), self.ea(insn));
                self.read_mem(bus, seg, off, size.min(8))
            }
            _ => Ok(insn.immediate(i)),
        }
    }

    /// Writes operand `i` (register or memory).
    pub(crate) fn write_op(
        &mut self,
        bus: &mut dyn CpuBus,
        insn: &Instruction,
        i: u32,
        v: u64,
    ) -> Result<()> {
        match insn.op_kind(i) {
            OpKind::Register => {
                self.set_reg(insn.op_register(i), v);
                Ok(())
            }
            OpKind::Memory => {
                let size = insn.memory_size().size() as u32;
                let (seg, off) = (self.mem_seg(insn), self.ea(insn));
                self.write_mem(bus, seg, off, size.min(8), v)
            }
            _ => Err(Fault::ud()),
        }
    }

    /// The stack pointer, sized by SS (or 64-bit in 64-bit mode).
    fn sp_mask(&self) -> u64 {
        mask(self.state.stack_bits() / 8)
    }

    /// Pushes `size` bytes.
    pub(crate) fn push(&mut self, bus: &mut dyn CpuBus, v: u64, size: u32) -> Result<()> {
        let m = self.sp_mask();
        let rsp = self.state.gpr[4];
        let new = rsp.wrapping_sub(u64::from(size)) & m;
        self.write_mem(bus, SegReg::Ss, new, size, v)?;
        self.state.gpr[4] = (rsp & !m) | new;
        Ok(())
    }

    /// Pops `size` bytes.
    pub(crate) fn pop(&mut self, bus: &mut dyn CpuBus, size: u32) -> Result<u64> {
        let m = self.sp_mask();
        let rsp = self.state.gpr[4];
        let v = self.read_mem(bus, SegReg::Ss, rsp & m, size)?;
        self.state.gpr[4] = (rsp & !m) | (rsp.wrapping_add(u64::from(size)) & m);
        Ok(v)
    }

    /// The RIP a near control transfer (jmp, call, ret, jcc, loop) to `target` sets, or #GP(0):
    /// in 64-bit mode when the target is not canonical, elsewhere when it lies beyond the CS
    /// limit. The silicon faults at the branch itself (RIP still at it), before the stack
    /// access of a call; it never fetches at the target.
    pub(crate) fn near_branch(&self, target: u64) -> Result<u64> {
        let target = self.mask_ip(target);
        let fits = if self.state.code64() {
            canonical(target)
        } else {
            target <= u64::from(self.state.seg(SegReg::Cs).limit)
        };
        if fits { Ok(target) } else { Err(Fault::gp(0)) }
    }

    /// The operand size of a stack instruction: 8 in 64-bit mode unless 16, else 2 or 4.
    pub(crate) fn stack_op_size(&self, insn: &Instruction) -> u32 {
        use iced_x86::Code;
        // `ret imm16` also releases imm16 bytes, so its stack pointer increment is not its size.
        match insn.code() {
            Code::Retnw | Code::Retnw_imm16 => return 2,
            Code::Retnd | Code::Retnd_imm16 => return 4,
            Code::Retnq | Code::Retnq_imm16 => return 8,
            _ => {}
        }
        let s = insn.stack_pointer_increment().unsigned_abs();
        if s == 0 {
            self.state.code_bits() / 8
        } else {
            s
        }
    }
}
