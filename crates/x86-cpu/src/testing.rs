//! A flat-memory bus for tests: RAM from address 0, I/O recorded, MMIO reading all ones.

#![allow(missing_docs)]

use crate::bus::CpuBus;
use crate::exec::Cpu;
use crate::state::{CpuState, SegReg, Segment, bits};

/// RAM at `[0, size)`; port writes are recorded; everything else reads as all ones.
pub struct FlatBus {
    pub mem: Vec<u8>,
    pub io_writes: Vec<(u16, Vec<u8>)>,
    pub tsc: u64,
    /// What RDRAND/RDSEED get.
    pub random: Option<u64>,
}

impl FlatBus {
    pub fn new(size: usize) -> Self {
        FlatBus {
            mem: vec![0; size],
            io_writes: Vec::new(),
            tsc: 0,
            random: None,
        }
    }
    pub fn write(&mut self, addr: u64, bytes: &[u8]) {
        self.mem[addr as usize..addr as usize + bytes.len()].copy_from_slice(bytes);
    }
    pub fn write_u64(&mut self, addr: u64, v: u64) {
        self.write(addr, &v.to_le_bytes());
    }
    pub fn write_u32(&mut self, addr: u64, v: u32) {
        self.write(addr, &v.to_le_bytes());
    }
    pub fn read_u64(&self, addr: u64) -> u64 {
        u64::from_le_bytes(
            self.mem[addr as usize..addr as usize + 8]
                .try_into()
                .unwrap(),
        )
    }
}

impl CpuBus for FlatBus {
    fn ram(&mut self, gpa: u64, len: usize) -> Option<&mut [u8]> {
        let start = usize::try_from(gpa).ok()?;
        let end = start.checked_add(len)?;
        self.mem.get_mut(start..end)
    }
    fn mmio_read(&mut self, _: u64, data: &mut [u8]) {
        data.fill(0xff);
    }
    fn mmio_write(&mut self, _: u64, _: &[u8]) {}
    fn io_read(&mut self, _: u16, data: &mut [u8]) {
        data.fill(0xff);
    }
    fn io_write(&mut self, port: u16, data: &[u8]) {
        self.io_writes.push((port, data.to_vec()));
    }
    fn cpuid(&mut self, leaf: u32, _: u32) -> [u32; 4] {
        match leaf {
            0 => [
                0xd,
                u32::from_le_bytes(*b"Genu"),
                u32::from_le_bytes(*b"ntel"),
                u32::from_le_bytes(*b"ineI"),
            ],
            _ => [0; 4],
        }
    }
    fn rdmsr(&mut self, _: u32) -> Option<u64> {
        None
    }
    fn wrmsr(&mut self, _: u32, _: u64) -> bool {
        false
    }
    fn tsc(&mut self) -> u64 {
        self.tsc += 1;
        self.tsc
    }
    fn random(&mut self) -> Option<u64> {
        self.random
    }
}

/// A 64-bit CPU at CPL 0 with the first 2 MiB identity-mapped (user-accessible, writable) by
/// page tables at 0x1000..0x4000, flat segments, RIP = 0x10000 and RSP = 0x8000.
pub fn long_mode_cpu(bus: &mut FlatBus) -> Cpu {
    bus.write_u64(0x1000, 0x2000 | 7);
    bus.write_u64(0x2000, 0x3000 | 7);
    bus.write_u64(0x3000, 0x87);
    let mut s = CpuState {
        cr0: bits::CR0_PE | bits::CR0_PG | bits::CR0_ET,
        cr4: bits::CR4_PAE,
        efer: bits::EFER_LME | bits::EFER_LMA,
        cr3: 0x1000,
        ..Default::default()
    };
    let code = Segment {
        selector: 8,
        type_: 0xb,
        s: true,
        present: true,
        l: true,
        g: true,
        limit: u32::MAX,
        ..Default::default()
    };
    let data = Segment {
        selector: 16,
        type_: 0x3,
        s: true,
        present: true,
        db: true,
        g: true,
        limit: u32::MAX,
        ..Default::default()
    };
    s.seg = [data; 6];
    s.seg[SegReg::Cs as usize] = code;
    s.rip = 0x10000;
    s.gpr[4] = 0x8000;
    Cpu::new(s)
}
