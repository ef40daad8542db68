//! The type-0 configuration header: IDs, command and status, BARs, the capability list and the
//! interrupt registers, with the write semantics a guest expects.
//!
//! Every register is a dword with a mask of the bits the guest may write and a mask of the bits a
//! guest write of 1 clears (the status register's error bits). Everything else is read-only, so
//! BAR sizing falls out of the masks: writing all-ones to a BAR reads back its size mask and
//! type bits. Accesses of any size and alignment are taken byte by byte; bytes past the 4 KiB
//! extended space read all-ones and ignore writes.

use super::PciError;

/// Size of a function's configuration space (PCI Express extended space).
pub const CONFIG_SPACE_SIZE: usize = 4096;
/// Size of the conventional configuration space, the part port 0xCF8 reaches.
pub const LEGACY_CONFIG_SPACE_SIZE: usize = 256;
/// Number of BARs in a type-0 header.
pub const NUM_BARS: usize = 6;

const DWORDS: usize = CONFIG_SPACE_SIZE / 4;
const BAR0: usize = 0x10;
const CAP_POINTER: usize = 0x34;
const FIRST_CAP: usize = 0x40;
const INTERRUPT_LINE: usize = 0x3c;

/// Command register bits.
pub mod command {
    /// I/O space decoding.
    pub const IO: u16 = 1 << 0;
    /// Memory space decoding.
    pub const MEMORY: u16 = 1 << 1;
    /// Bus mastering (DMA, MSI).
    pub const BUS_MASTER: u16 = 1 << 2;
    /// Parity error response.
    pub const PARITY: u16 = 1 << 6;
    /// SERR# enable.
    pub const SERR: u16 = 1 << 8;
    /// INTx emulation disable.
    pub const INTX_DISABLE: u16 = 1 << 10;
}

/// Status register: the capability list is present.
const STATUS_CAP_LIST: u32 = 1 << 4;
/// Status bits a guest clears by writing 1 (parity, aborts, SERR), in the upper half of dword 1.
const STATUS_W1C: u32 = 0xf900 << 16;
const COMMAND_WRITABLE: u32 = (command::IO
    | command::MEMORY
    | command::BUS_MASTER
    | command::PARITY
    | command::SERR
    | command::INTX_DISABLE) as u32;

/// What a BAR decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BarKind {
    /// I/O space.
    Io,
    /// Memory below 4 GiB (one register).
    Memory32,
    /// Memory anywhere (two registers: this one and the next).
    Memory64,
}

/// A BAR as the guest has currently programmed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bar {
    /// The BAR's index (0-5; the first register of a 64-bit BAR).
    pub index: usize,
    /// What it decodes.
    pub kind: BarKind,
    /// Its size in bytes (a power of two).
    pub size: u64,
    /// The address the guest wrote (during sizing, the size mask itself).
    pub addr: u64,
}

/// The identity registers of a function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PciHeader {
    /// Vendor ID.
    pub vendor_id: u16,
    /// Device ID.
    pub device_id: u16,
    /// Revision ID.
    pub revision: u8,
    /// Class code, subclass and programming interface (24 bits, e.g. 0x020000 for Ethernet).
    pub class_code: u32,
    /// Subsystem vendor ID.
    pub subsystem_vendor_id: u16,
    /// Subsystem ID.
    pub subsystem_id: u16,
    /// Interrupt pin: 0 none, 1-4 INTA-INTD.
    pub interrupt_pin: u8,
}

/// One function's configuration space.
pub struct PciConfiguration {
    pub(super) regs: Box<[u32; DWORDS]>,
    pub(super) writable: Box<[u32; DWORDS]>,
    pub(super) write_one_clears: Box<[u32; DWORDS]>,
    bars: [Option<(BarKind, u64)>; NUM_BARS],
    last_cap: Option<usize>,
    next_cap: usize,
}

impl PciConfiguration {
    /// A type-0 header with `header`'s IDs, no BARs and no capabilities.
    pub fn new(header: &PciHeader) -> Self {
        let mut c = Self {
            regs: Box::new([0; DWORDS]),
            writable: Box::new([0; DWORDS]),
            write_one_clears: Box::new([0; DWORDS]),
            bars: [None; NUM_BARS],
            last_cap: None,
            next_cap: FIRST_CAP,
        };
        c.regs[0] = u32::from(header.vendor_id) | u32::from(header.device_id) << 16;
        c.regs[1] = 0;
        c.writable[1] = COMMAND_WRITABLE;
        c.write_one_clears[1] = STATUS_W1C;
        c.regs[2] = u32::from(header.revision) | (header.class_code & 0xff_ffff) << 8;
        // Cache line size is read-write; latency timer, header type 0 (single function), BIST 0.
        c.writable[3] = 0xff;
        c.regs[0x2c / 4] =
            u32::from(header.subsystem_vendor_id) | u32::from(header.subsystem_id) << 16;
        c.regs[INTERRUPT_LINE / 4] = u32::from(header.interrupt_pin) << 8;
        c.writable[INTERRUPT_LINE / 4] = 0xff;
        c
    }

    /// Declares BAR `index` of `size` bytes. A 64-bit BAR takes registers `index` and
    /// `index + 1`. Sizes are powers of two: at least 16 bytes for memory, 4 for I/O (at most
    /// 256), and at most 2 GiB for a 32-bit memory BAR.
    pub fn add_bar(
        &mut self,
        index: usize,
        kind: BarKind,
        size: u64,
        prefetchable: bool,
    ) -> Result<(), PciError> {
        let regs = if kind == BarKind::Memory64 { 2 } else { 1 };
        let (min, max) = match kind {
            BarKind::Io => (4, 256),
            BarKind::Memory32 => (16, 1 << 31),
            BarKind::Memory64 => (16, 1 << 63),
        };
        if index + regs > NUM_BARS || self.bars[index..index + regs].iter().any(Option::is_some) {
            return Err(PciError::BarIndex(index));
        }
        if !size.is_power_of_two() || !(min..=max).contains(&size) {
            return Err(PciError::BarSize(size));
        }
        let reg = BAR0 / 4 + index;
        let mask = !(size - 1);
        let (flags, low_bits) = match kind {
            BarKind::Io => (0x1, 0x3),
            BarKind::Memory32 => (u32::from(prefetchable) << 3, 0xf),
            BarKind::Memory64 => (0x4 | u32::from(prefetchable) << 3, 0xf),
        };
        self.regs[reg] = flags;
        self.writable[reg] = mask as u32 & !low_bits;
        if kind == BarKind::Memory64 {
            self.regs[reg + 1] = 0;
            self.writable[reg + 1] = (mask >> 32) as u32;
        }
        self.bars[index] = Some((kind, size));
        if regs == 2 {
            // The upper register belongs to the BAR below it; mark it taken.
            self.bars[index + 1] = Some((BarKind::Memory64, 0));
        }
        Ok(())
    }

    /// BAR `index` as currently programmed, if the function has one there.
    pub fn bar(&self, index: usize) -> Option<Bar> {
        let (kind, size) = (*self.bars.get(index)?)?;
        if size == 0 {
            return None; // The upper half of a 64-bit BAR.
        }
        let low = self.regs[BAR0 / 4 + index];
        let addr = match kind {
            BarKind::Io => u64::from(low & !0x3),
            BarKind::Memory32 => u64::from(low & !0xf),
            BarKind::Memory64 => {
                u64::from(low & !0xf) | u64::from(self.regs[BAR0 / 4 + index + 1]) << 32
            }
        };
        Some(Bar {
            index,
            kind,
            size,
            addr,
        })
    }

    /// Appends a capability. `cap` is its whole body from the ID byte on (the next-pointer
    /// byte is filled in here); `writable` masks the bits a guest may change, byte for byte
    /// (shorter than `cap`: the rest is read-only). Returns its offset in configuration space.
    pub fn add_capability(&mut self, cap: &[u8], writable: &[u8]) -> Result<usize, PciError> {
        let offset = self.next_cap;
        if cap.len() < 2 || offset + cap.len() > LEGACY_CONFIG_SPACE_SIZE {
            return Err(PciError::CapabilitySpace);
        }
        for (i, &b) in cap.iter().enumerate() {
            let value = if i == 1 { 0 } else { b };
            self.set_byte(offset + i, value);
            // The list's links are the root's to write, never the guest's.
            let mask = if i < 2 {
                0
            } else {
                writable.get(i).copied().unwrap_or(0)
            };
            set_byte_in(&mut self.writable[..], offset + i, mask);
        }
        match self.last_cap {
            None => self.set_byte(CAP_POINTER, offset as u8),
            Some(last) => self.set_byte(last + 1, offset as u8),
        }
        self.regs[1] |= STATUS_CAP_LIST << 16;
        self.last_cap = Some(offset);
        self.next_cap = (offset + cap.len()).next_multiple_of(4);
        Ok(offset)
    }

    /// Reads `data.len()` bytes at `offset`, as the guest sees them.
    pub fn read(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = match byte_offset(offset, i) {
                Some(o) => self.byte(o),
                None => 0xff,
            };
        }
    }

    /// Writes `data` at `offset` as the guest does: read-only bits keep their value and
    /// write-one-to-clear bits clear where `data` has ones.
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        for (i, &value) in data.iter().enumerate() {
            let Some(o) = byte_offset(offset, i) else {
                return;
            };
            let (dword, shift) = (o / 4, (o % 4) * 8);
            let writable = (self.writable[dword] >> shift) as u8;
            let clears = (self.write_one_clears[dword] >> shift) as u8;
            let old = self.byte(o);
            let new = ((old & !writable) | (value & writable)) & !(value & clears);
            self.set_byte(o, new);
        }
    }

    /// Reads the dword at `offset` (rounded down to a multiple of 4).
    pub fn read_dword(&self, offset: usize) -> u32 {
        self.regs.get(offset / 4).copied().unwrap_or(u32::MAX)
    }

    /// Sets bytes at `offset` regardless of the write masks: the device's own view of its
    /// read-only registers. Bytes past the end are dropped.
    pub fn set_bytes(&mut self, offset: usize, data: &[u8]) {
        for (i, &b) in data.iter().enumerate() {
            if let Some(o) = offset.checked_add(i).filter(|&o| o < CONFIG_SPACE_SIZE) {
                self.set_byte(o, b);
            }
        }
    }

    /// The command register.
    pub fn command(&self) -> u16 {
        self.regs[1] as u16
    }

    /// Whether the function decodes its memory BARs.
    pub fn memory_enabled(&self) -> bool {
        self.command() & command::MEMORY != 0
    }

    /// Whether the guest disabled INTx.
    pub fn intx_disabled(&self) -> bool {
        self.command() & command::INTX_DISABLE != 0
    }

    /// Sets the interrupt line register (informative: which input the pin is wired to).
    pub fn set_interrupt_line(&mut self, line: u8) {
        self.set_byte(INTERRUPT_LINE, line);
    }

    fn byte(&self, offset: usize) -> u8 {
        (self.regs[offset / 4] >> ((offset % 4) * 8)) as u8
    }

    fn set_byte(&mut self, offset: usize, value: u8) {
        set_byte_in(&mut self.regs[..], offset, value);
    }
}

fn set_byte_in(regs: &mut [u32], offset: usize, value: u8) {
    let shift = (offset % 4) * 8;
    let r = &mut regs[offset / 4];
    *r = (*r & !(0xff << shift)) | u32::from(value) << shift;
}

/// The configuration-space offset of byte `i` of an access at `offset`, if inside the space.
fn byte_offset(offset: u64, i: usize) -> Option<usize> {
    let o = usize::try_from(offset).ok()?.checked_add(i)?;
    (o < CONFIG_SPACE_SIZE).then_some(o)
}

/// Walks the capability list of a configuration space read through `read`, returning each
/// capability's (offset, ID). Stops after 48 entries so a looping list cannot hang the caller.
pub fn capabilities(mut read: impl FnMut(usize) -> u8) -> Vec<(usize, u8)> {
    let mut caps = Vec::new();
    let mut next = usize::from(read(CAP_POINTER) & !3);
    while next >= FIRST_CAP && caps.len() < 48 {
        caps.push((next, read(next)));
        next = usize::from(read(next + 1) & !3);
    }
    caps
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> PciHeader {
        PciHeader {
            vendor_id: 0x1af4,
            device_id: 0x1042,
            revision: 1,
            class_code: 0x01_8000,
            subsystem_vendor_id: 0x1af4,
            subsystem_id: 0x1100,
            interrupt_pin: 1,
        }
    }

    fn read32(c: &PciConfiguration, offset: u64) -> u32 {
        let mut b = [0; 4];
        c.read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    fn write32(c: &mut PciConfiguration, offset: u64, v: u32) {
        c.write(offset, &v.to_le_bytes());
    }

    #[test]
    fn identity_registers_read_back_and_ignore_writes() {
        let mut c = PciConfiguration::new(&header());
        assert_eq!(read32(&c, 0), 0x1042_1af4);
        assert_eq!(read32(&c, 8), 0x0180_0001);
        assert_eq!(read32(&c, 0x2c), 0x1100_1af4);
        for off in [0u64, 8, 0x2c, 0x34] {
            write32(&mut c, off, 0xdead_beef);
        }
        assert_eq!(read32(&c, 0), 0x1042_1af4);
        assert_eq!(read32(&c, 8), 0x0180_0001);
        assert_eq!(read32(&c, 0x2c), 0x1100_1af4);
        // Interrupt line writable, pin read-only.
        write32(&mut c, 0x3c, 0xffff_ff0b);
        assert_eq!(read32(&c, 0x3c), 0x0000_010b);
    }

    #[test]
    fn command_is_masked_and_status_error_bits_clear_on_one() {
        let mut c = PciConfiguration::new(&header());
        c.write(4, &0xffffu16.to_le_bytes());
        assert_eq!(c.command(), 0x0547);
        assert!(c.memory_enabled() && c.intx_disabled());
        // Pretend the device latched a master abort (bit 13), then the guest clears it.
        c.set_bytes(6, &(1u16 << 13).to_le_bytes());
        c.write(6, &0u16.to_le_bytes());
        assert_eq!(read32(&c, 4) >> 16, 1 << 13, "writing 0 keeps the bit");
        c.write(6, &(1u16 << 13).to_le_bytes());
        assert_eq!(read32(&c, 4) >> 16, 0);
    }

    #[test]
    fn bar_sizing_reads_back_the_size_mask() {
        let mut c = PciConfiguration::new(&header());
        c.add_bar(1, BarKind::Memory32, 0x1000, false).unwrap();
        c.add_bar(5, BarKind::Io, 0x20, false).unwrap();
        write32(&mut c, 0x14, 0xffff_ffff);
        assert_eq!(read32(&c, 0x14), 0xffff_f000);
        write32(&mut c, 0x24, 0xffff_ffff);
        assert_eq!(read32(&c, 0x24), 0xffff_ffe1);
        // Absent BARs read zero whatever is written.
        write32(&mut c, 0x10, 0xffff_ffff);
        assert_eq!(read32(&c, 0x10), 0);
        write32(&mut c, 0x14, 0xc000_1234);
        assert_eq!(c.bar(1).unwrap().addr, 0xc000_1000);
        assert_eq!(c.bar(0), None);
    }

    #[test]
    fn sixty_four_bit_bar_spans_two_registers() {
        let mut c = PciConfiguration::new(&header());
        c.add_bar(0, BarKind::Memory64, 0x8000, true).unwrap();
        write32(&mut c, 0x10, 0xffff_ffff);
        write32(&mut c, 0x14, 0xffff_ffff);
        assert_eq!(read32(&c, 0x10), 0xffff_800c);
        assert_eq!(read32(&c, 0x14), 0xffff_ffff);
        write32(&mut c, 0x10, 0xc000_0000);
        write32(&mut c, 0x14, 0x1);
        let bar = c.bar(0).unwrap();
        assert_eq!(
            (bar.kind, bar.size, bar.addr),
            (BarKind::Memory64, 0x8000, 0x1_c000_0000)
        );
        assert_eq!(c.bar(1), None, "the upper register is not a BAR of its own");
        assert!(c.add_bar(1, BarKind::Memory32, 0x1000, false).is_err());
        assert!(c.add_bar(5, BarKind::Memory64, 0x1000, false).is_err());
        assert!(c.add_bar(2, BarKind::Memory32, 0x1001, false).is_err());
    }

    #[test]
    fn capability_list_walks_and_protects_read_only_bytes() {
        let mut c = PciConfiguration::new(&header());
        let a = c.add_capability(&[0x09, 0, 16, 1], &[]).unwrap();
        let b = c
            .add_capability(&[0x11, 0xaa, 0x03, 0x00, 0, 0, 0, 0], &[0, 0, 0, 0xc0])
            .unwrap();
        assert_eq!((a, b), (0x40, 0x44));
        assert_ne!(read32(&c, 4) & (STATUS_CAP_LIST << 16), 0);
        let caps = capabilities(|o| {
            let mut x = [0];
            c.read(o as u64, &mut x);
            x[0]
        });
        assert_eq!(caps, vec![(0x40, 0x09), (0x44, 0x11)]);
        write32(&mut c, 0x44, 0xffff_ffff);
        assert_eq!(read32(&c, 0x44), 0xc003_0011);
    }

    #[test]
    fn accesses_past_the_end_read_ones_and_do_not_panic() {
        let mut c = PciConfiguration::new(&header());
        let mut b = [0u8; 4];
        c.read(4094, &mut b);
        assert_eq!(&b[2..], &[0xff, 0xff]);
        c.write(4095, &[1, 2, 3, 4]);
        c.read(u64::MAX, &mut b);
        assert_eq!(b, [0xff; 4]);
        c.write(u64::MAX - 1, &[1, 2, 3]);
        c.set_bytes(usize::MAX, &[1, 2]);
    }
}
