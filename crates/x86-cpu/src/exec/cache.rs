//! Decoded instructions, cached by where they were fetched.
//!
//! Decoding is the largest cost of an interpreter step. A slot remembers the instruction decoded
//! at a RIP, with the physical address and the code size it was decoded for, and its bytes. A hit
//! compares those bytes with memory again, so code that was rewritten (self-modifying code, a
//! module loaded over an old one) is decoded anew without any tracking of writes.

use iced_x86::Instruction;

use crate::bus::CpuBus;

const SLOTS: usize = 4096;

#[derive(Clone, Copy, Default)]
struct Slot {
    rip: u64,
    pa: u64,
    bits: u32,
    /// 0 for an empty slot.
    len: u8,
    bytes: [u8; 15],
    insn: Instruction,
}

/// A direct-mapped cache of decoded instructions.
pub(crate) struct DecodeCache {
    slots: Box<[Slot]>,
}

impl Default for DecodeCache {
    fn default() -> Self {
        DecodeCache {
            slots: vec![Slot::default(); SLOTS].into_boxed_slice(),
        }
    }
}

fn index(rip: u64) -> usize {
    ((rip ^ (rip >> 12)) as usize) % SLOTS
}

impl DecodeCache {
    /// Copies into `out` the instruction decoded at `rip` from physical `pa` in `bits`-bit code,
    /// if its bytes are still the same in RAM; returns whether it did. (An out parameter rather
    /// than an `Option<Instruction>`: the option's layout puts the instruction at an odd offset,
    /// and the unaligned copy stalled every step.)
    pub(crate) fn lookup(
        &self,
        rip: u64,
        pa: u64,
        bits: u32,
        bus: &mut dyn CpuBus,
        out: &mut Instruction,
    ) -> bool {
        let s = &self.slots[index(rip)];
        if s.len == 0 || s.rip != rip || s.pa != pa || s.bits != bits {
            return false;
        }
        let len = usize::from(s.len);
        match bus.ram(pa, len) {
            Some(ram) if *ram == s.bytes[..len] => {
                *out = s.insn;
                true
            }
            _ => false,
        }
    }

    /// Remembers `insn`, decoded from `bytes` (which must lie in one page of RAM).
    pub(crate) fn insert(
        &mut self,
        rip: u64,
        pa: u64,
        bits: u32,
        bytes: &[u8],
        insn: &Instruction,
    ) {
        let len = bytes.len().min(15);
        let mut slot = Slot {
            rip,
            pa,
            bits,
            len: len as u8,
            insn: *insn,
            ..Default::default()
        };
        slot.bytes[..len].copy_from_slice(&bytes[..len]);
        self.slots[index(rip)] = slot;
    }
}

#[cfg(test)]
mod tests {
    use crate::StepExit;
    use crate::testing::{FlatBus, long_mode_cpu};

    #[test]
    fn rewritten_code_is_decoded_again() {
        let mut bus = FlatBus::new(0x20_0000);
        let mut cpu = long_mode_cpu(&mut bus);
        // mov eax, 1; jmp back to it (runs the cached mov twice), then the mov is rewritten.
        bus.write(0x10000, &[0xb8, 1, 0, 0, 0]);
        assert_eq!(cpu.step(&mut bus), StepExit::Continue);
        assert_eq!(cpu.state.gpr[0], 1);
        bus.write(0x10000, &[0xb8, 2, 0, 0, 0]);
        cpu.state.rip = 0x10000;
        assert_eq!(cpu.step(&mut bus), StepExit::Continue);
        assert_eq!(cpu.state.gpr[0], 2, "a stale decode would load 1 again");
    }
}
