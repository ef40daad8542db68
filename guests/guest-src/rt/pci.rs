//! PCI on bus 0: configuration space through ECAM (found in the ACPI MCFG table) or, without
//! one, configuration mechanism #1 (ports 0xCF8/0xCFC); function enumeration, capability lists,
//! memory BARs (sizing, and assigning the unassigned ones from a window of our own, since no
//! firmware ran) and an uncached identity mapping for MMIO.

use core::arch::asm;
use core::ptr::{read_volatile, write_volatile};

use crate::Global;
use crate::acpi::find_table;
use crate::boot::{read8, read32, read64};

/// Configuration space offsets.
pub mod cfg {
    /// Vendor ID (u16).
    pub const VENDOR: u16 = 0x00;
    /// Device ID (u16).
    pub const DEVICE: u16 = 0x02;
    /// Command (u16).
    pub const COMMAND: u16 = 0x04;
    /// Status (u16).
    pub const STATUS: u16 = 0x06;
    /// Revision ID (u8).
    pub const REVISION: u16 = 0x08;
    /// Header type (u8); bit 7 = multi-function.
    pub const HEADER_TYPE: u16 = 0x0e;
    /// First BAR.
    pub const BAR0: u16 = 0x10;
    /// Subsystem vendor ID (u16).
    pub const SUBSYSTEM_VENDOR: u16 = 0x2c;
    /// Subsystem ID (u16).
    pub const SUBSYSTEM: u16 = 0x2e;
    /// Capabilities pointer (u8).
    pub const CAP_PTR: u16 = 0x34;
}

/// Command register: memory space enable.
pub const CMD_MEMORY: u16 = 1 << 1;
/// Command register: bus master enable.
pub const CMD_BUS_MASTER: u16 = 1 << 2;
/// Command register: INTx disable.
pub const CMD_INTX_DISABLE: u16 = 1 << 10;
/// Status register: capability list present.
const STATUS_CAP_LIST: u16 = 1 << 4;

/// Where BARs that no firmware assigned go: [WINDOW_START, WINDOW_END).
pub const WINDOW_START: u64 = 0xc000_0000;
/// End of the BAR window.
pub const WINDOW_END: u64 = 0xe000_0000;

/// How configuration space is reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Memory-mapped (PCIe ECAM): the physical address of bus 0's 1 MiB.
    Ecam(u64),
    /// Configuration mechanism #1, ports 0xCF8 (address) and 0xCFC (data).
    Ports,
}

/// A function on bus 0 and the way to its configuration space.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Function {
    /// How to reach configuration space.
    pub access: Access,
    /// Device (slot) number, 0..32.
    pub slot: u8,
    /// Function number, 0..8.
    pub func: u8,
}

fn outl(port: u16, value: u32) {
    // SAFETY: port writes touch only devices; the guest owns the whole machine.
    unsafe {
        asm!("out dx, eax", in("dx") port, in("eax") value, options(nomem, nostack, preserves_flags))
    };
}

fn inl(port: u16) -> u32 {
    let value: u32;
    // SAFETY: as for `outl`.
    unsafe {
        asm!("in eax, dx", out("eax") value, in("dx") port, options(nomem, nostack, preserves_flags))
    };
    value
}

fn outw(port: u16, value: u16) {
    // SAFETY: as for `outl`.
    unsafe {
        asm!("out dx, ax", in("dx") port, in("ax") value, options(nomem, nostack, preserves_flags))
    };
}

fn inw(port: u16) -> u16 {
    let value: u16;
    // SAFETY: as for `outl`.
    unsafe {
        asm!("in ax, dx", out("ax") value, in("dx") port, options(nomem, nostack, preserves_flags))
    };
    value
}

fn outb(port: u16, value: u8) {
    crate::port::outb(port, value)
}

fn inb(port: u16) -> u8 {
    crate::port::inb(port)
}

impl Function {
    fn ecam_address(&self, base: u64, offset: u16) -> u64 {
        base + (u64::from(self.slot) << 15 | u64::from(self.func) << 12 | u64::from(offset & 0xfff))
    }

    fn select(&self, offset: u16) {
        outl(
            0xcf8,
            0x8000_0000
                | u32::from(self.slot) << 11
                | u32::from(self.func) << 8
                | u32::from(offset & 0xfc),
        );
    }

    /// Reads a u32 at `offset` (4-aligned).
    pub fn read32(&self, offset: u16) -> u32 {
        match self.access {
            // SAFETY: the ECAM page is mapped (uncached) by `init`; offsets stay within 4 KiB.
            Access::Ecam(base) => unsafe {
                read_volatile(self.ecam_address(base, offset & !3) as *const u32)
            },
            Access::Ports => {
                self.select(offset);
                inl(0xcfc)
            }
        }
    }

    /// Reads a u16 at `offset` (2-aligned).
    pub fn read16(&self, offset: u16) -> u16 {
        match self.access {
            // SAFETY: as for `read32`.
            Access::Ecam(base) => unsafe {
                read_volatile(self.ecam_address(base, offset & !1) as *const u16)
            },
            Access::Ports => {
                self.select(offset);
                inw(0xcfc + (offset & 2))
            }
        }
    }

    /// Reads a u8 at `offset`.
    pub fn read8(&self, offset: u16) -> u8 {
        match self.access {
            // SAFETY: as for `read32`.
            Access::Ecam(base) => unsafe {
                read_volatile(self.ecam_address(base, offset) as *const u8)
            },
            Access::Ports => {
                self.select(offset);
                inb(0xcfc + (offset & 3))
            }
        }
    }

    /// Writes a u32 at `offset` (4-aligned).
    pub fn write32(&self, offset: u16, value: u32) {
        match self.access {
            // SAFETY: as for `read32`.
            Access::Ecam(base) => unsafe {
                write_volatile(self.ecam_address(base, offset & !3) as *mut u32, value)
            },
            Access::Ports => {
                self.select(offset);
                outl(0xcfc, value)
            }
        }
    }

    /// Writes a u16 at `offset` (2-aligned).
    pub fn write16(&self, offset: u16, value: u16) {
        match self.access {
            // SAFETY: as for `read32`.
            Access::Ecam(base) => unsafe {
                write_volatile(self.ecam_address(base, offset & !1) as *mut u16, value)
            },
            Access::Ports => {
                self.select(offset);
                outw(0xcfc + (offset & 2), value)
            }
        }
    }

    /// Writes a u8 at `offset`.
    pub fn write8(&self, offset: u16, value: u8) {
        match self.access {
            // SAFETY: as for `read32`.
            Access::Ecam(base) => unsafe {
                write_volatile(self.ecam_address(base, offset) as *mut u8, value)
            },
            Access::Ports => {
                self.select(offset);
                outb(0xcfc + (offset & 3), value)
            }
        }
    }

    /// Vendor ID (0xffff: no function here).
    pub fn vendor(&self) -> u16 {
        self.read16(cfg::VENDOR)
    }

    /// Device ID.
    pub fn device(&self) -> u16 {
        self.read16(cfg::DEVICE)
    }

    /// Sets bits in the command register.
    pub fn enable(&self, bits: u16) {
        let command = self.read16(cfg::COMMAND);
        self.write16(cfg::COMMAND, command | bits);
    }

    /// The capability list: (capability ID, offset) pairs, at most 48 of them (a cycle in the
    /// list cannot hang us).
    pub fn capabilities(&self) -> impl Iterator<Item = (u8, u16)> + '_ {
        let mut next = if self.read16(cfg::STATUS) & STATUS_CAP_LIST != 0 {
            u16::from(self.read8(cfg::CAP_PTR) & 0xfc)
        } else {
            0
        };
        let mut budget = 48;
        core::iter::from_fn(move || {
            if next < 0x40 || budget == 0 {
                return None;
            }
            budget -= 1;
            let at = next;
            let id = self.read8(at);
            next = u16::from(self.read8(at + 1) & 0xfc);
            Some((id, at))
        })
    }

    /// Reads BAR `index` without touching it.
    pub fn bar(&self, index: u8) -> Option<Bar> {
        if index > 5 {
            return None;
        }
        let offset = cfg::BAR0 + 4 * u16::from(index);
        let low = self.read32(offset);
        if low & 1 != 0 {
            return Some(Bar::Io { port: low & !3 });
        }
        let is64 = (low >> 1) & 3 == 2;
        if is64 && index == 5 {
            return None;
        }
        let high = if is64 { self.read32(offset + 4) } else { 0 };
        Some(Bar::Memory {
            address: u64::from(low & !0xf) | u64::from(high) << 32,
            is64,
        })
    }

    /// Sizes memory BAR `index` (decoding off while the all-ones pattern is in it). 0 if the BAR
    /// is not implemented or is an I/O BAR.
    pub fn bar_size(&self, index: u8) -> u64 {
        let Some(Bar::Memory { is64, .. }) = self.bar(index) else {
            return 0;
        };
        let offset = cfg::BAR0 + 4 * u16::from(index);
        let command = self.read16(cfg::COMMAND);
        self.write16(cfg::COMMAND, command & !CMD_MEMORY);
        let low = self.read32(offset);
        self.write32(offset, 0xffff_ffff);
        let mask_low = self.read32(offset) & !0xf;
        self.write32(offset, low);
        let mut mask = u64::from(mask_low);
        if is64 {
            let high = self.read32(offset + 4);
            self.write32(offset + 4, 0xffff_ffff);
            let mask_high = self.read32(offset + 4);
            self.write32(offset + 4, high);
            mask |= u64::from(mask_high) << 32;
        } else {
            mask |= 0xffff_ffff_0000_0000;
        }
        self.write16(cfg::COMMAND, command);
        if mask_low == 0 && (!is64 || mask == 0) {
            return 0;
        }
        (!mask).wrapping_add(1)
    }

    /// Programs memory BAR `index` with `address` (decoding off meanwhile).
    pub fn set_bar(&self, index: u8, address: u64, is64: bool) {
        let offset = cfg::BAR0 + 4 * u16::from(index);
        let command = self.read16(cfg::COMMAND);
        self.write16(cfg::COMMAND, command & !CMD_MEMORY);
        self.write32(offset, address as u32);
        if is64 {
            self.write32(offset + 4, (address >> 32) as u32);
        }
        self.write16(cfg::COMMAND, command);
    }
}

/// What a BAR holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bar {
    /// An I/O port range.
    Io {
        /// First port.
        port: u32,
    },
    /// A memory range.
    Memory {
        /// Its address (0: not assigned).
        address: u64,
        /// Whether it is a 64-bit BAR (it then uses the next BAR slot too).
        is64: bool,
    },
}

/// The first MCFG allocation that covers segment 0, bus 0: the address of bus 0's ECAM and the
/// size of the whole allocation (1 MiB per bus).
pub fn ecam_from_mcfg(rsdp: u64) -> Option<(u64, u64)> {
    let mcfg = find_table(rsdp, b"MCFG")?;
    // SAFETY: `find_table` found a table header here; we stay within its stated length.
    unsafe {
        let length = u64::from(read32(mcfg + 4));
        let mut at = mcfg + 44;
        while at + 16 <= mcfg + length {
            let base = read64(at);
            let segment = u16::from(read8(at + 8)) | u16::from(read8(at + 9)) << 8;
            let start_bus = read8(at + 10);
            let end_bus = read8(at + 11);
            if segment == 0 && start_bus == 0 && base != 0 {
                return Some((base, (u64::from(end_bus) + 1) << 20));
            }
            at += 16;
        }
    }
    None
}

/// The ECAM base a host bridge in the DSDT declares with `_CBA` (PCI Firmware spec 4.1.5), for
/// machines without an MCFG (QEMU's microvm). The AML is not interpreted: this finds the name
/// `_CBA` either as `Name (_CBA, integer)` or as `Method (_CBA) { Return (integer) }`, the two
/// forms firmware uses, and reads the integer constant.
pub fn ecam_from_dsdt(rsdp: u64) -> Option<u64> {
    let fadt = find_table(rsdp, b"FACP")?;
    // SAFETY: `find_table` found the FADT header; fields are read only within its length, and
    // the DSDT only within its own.
    unsafe {
        let fadt_len = u64::from(read32(fadt + 4));
        let x_dsdt = if fadt_len >= 148 {
            read64(fadt + 140)
        } else {
            0
        };
        let dsdt = if x_dsdt != 0 {
            x_dsdt
        } else {
            u64::from(read32(fadt + 40))
        };
        if dsdt == 0 || read32(dsdt) != u32::from_le_bytes(*b"DSDT") {
            return None;
        }
        let end = dsdt + u64::from(read32(dsdt + 4));
        let name = u32::from_le_bytes(*b"_CBA");
        let integer = |at: u64| -> Option<u64> {
            match read8(at) {
                0x0a if at + 2 <= end => Some(u64::from(read8(at + 1))),
                0x0b if at + 3 <= end => {
                    Some(u64::from(read8(at + 1)) | u64::from(read8(at + 2)) << 8)
                }
                0x0c if at + 5 <= end => Some(u64::from(read32(at + 1))),
                0x0e if at + 9 <= end => Some(read64(at + 1)),
                _ => None,
            }
        };
        let mut at = dsdt + 36;
        while at + 6 <= end {
            if read32(at) == name {
                let found = if read8(at - 1) == 0x08 {
                    integer(at + 4) // Name (_CBA, integer)
                } else if read8(at + 5) == 0xa4 {
                    integer(at + 6) // Method (_CBA, flags) { Return (integer) }
                } else {
                    None
                };
                if let Some(base) = found.filter(|&b| b != 0 && b & 0xfffff == 0) {
                    return Some(base);
                }
            }
            at += 1;
        }
    }
    None
}

/// Where the ECAM the firmware tables describe is, if anywhere: the MCFG, else a host bridge's
/// `_CBA` in the DSDT. Returns (base, size to keep BARs away from).
pub fn find_ecam(rsdp: u64) -> Option<(u64, u64)> {
    ecam_from_mcfg(rsdp).or_else(|| ecam_from_dsdt(rsdp).map(|base| (base, 256 << 20)))
}

/// Chooses the configuration mechanism: ECAM if the MCFG (or a DSDT `_CBA`) names one and it
/// can be mapped, else ports 0xCF8/0xCFC.
pub fn init(rsdp: Option<u64>) -> Access {
    if let Some((base, size)) = rsdp.and_then(find_ecam)
        && map_uncached(base, 1 << 20)
    {
        claim(base, size);
        return Access::Ecam(base);
    }
    Access::Ports
}

/// Every function on bus 0: all 32 slots, function 0, and functions 1-7 of multi-function
/// devices.
pub fn functions(access: Access) -> impl Iterator<Item = Function> {
    let mut slot = 0u8;
    let mut func = 0u8;
    let mut multi = false;
    core::iter::from_fn(move || {
        while slot < 32 {
            let f = Function { access, slot, func };
            let vendor = f.vendor();
            let present = vendor != 0xffff && vendor != 0;
            if func == 0 {
                multi = present && f.read8(cfg::HEADER_TYPE) & 0x80 != 0;
            }
            if func == 0 && !multi || func == 7 {
                slot += 1;
                func = 0;
            } else {
                func += 1;
            }
            if present {
                return Some(f);
            }
        }
        None
    })
}

/// Address ranges the BAR allocator must avoid: [start, end).
const MAX_CLAIMS: usize = 64;
static CLAIMS: Global<([(u64, u64); MAX_CLAIMS], usize)> = Global::new(([(0, 0); MAX_CLAIMS], 0));

/// Tells the BAR allocator that [start, start + len) is taken (RAM, ECAM, assigned BARs).
pub fn claim(start: u64, len: u64) {
    // SAFETY: BSP only, no concurrent users.
    let (claims, n) = unsafe { &mut *CLAIMS.get() };
    if *n < MAX_CLAIMS && len != 0 {
        claims[*n] = (start, start.saturating_add(len));
        *n += 1;
    }
}

/// Claims every memory BAR already assigned on bus 0, and every e820 range, so that
/// [`allocate`] stays clear of them.
pub fn claim_existing(access: Access, e820: &[crate::E820Entry]) {
    for e in e820 {
        claim(e.addr, e.size);
    }
    for f in functions(access) {
        // Only type-0 headers have six BARs; bridges (type 1) have two.
        let bars = if f.read8(cfg::HEADER_TYPE) & 0x7f == 0 {
            6
        } else {
            2
        };
        let mut index = 0;
        while index < bars {
            let bar = f.bar(index);
            if let Some(Bar::Memory { address, .. }) = bar
                && address != 0
            {
                claim(address, f.bar_size(index).max(4096));
            }
            index += if let Some(Bar::Memory { is64: true, .. }) = bar {
                2
            } else {
                1
            };
        }
    }
}

static NEXT_BAR: Global<u64> = Global::new(WINDOW_START);

/// A naturally aligned `size`-byte range in the BAR window that overlaps no claim; claims it.
pub fn allocate(size: u64) -> Option<u64> {
    let size = size.max(4096);
    if !size.is_power_of_two() {
        return None;
    }
    // SAFETY: BSP only.
    let next = unsafe { &mut *NEXT_BAR.get() };
    let mut candidate = (*next + size - 1) & !(size - 1);
    // SAFETY: BSP only.
    let (claims, n) = unsafe { &*CLAIMS.get() };
    'search: while candidate + size <= WINDOW_END {
        for &(start, end) in &claims[..*n] {
            if candidate < end && start < candidate + size {
                candidate = (end + size - 1) & !(size - 1);
                continue 'search;
            }
        }
        *next = candidate + size;
        claim(candidate, size);
        return Some(candidate);
    }
    None
}

/// Page tables for MMIO above 4 GiB: PDPTs for PML4 slots past the first 512 GiB and page
/// directories (each maps 1 GiB with 2 MiB pages).
const SPARE_TABLES: usize = 8;
#[repr(C, align(4096))]
struct Table([u64; 512]);
static SPARE: Global<([Table; SPARE_TABLES], usize)> =
    Global::new(([const { Table([0; 512]) }; SPARE_TABLES], 0));

const PRESENT: u64 = 1;
const WRITABLE: u64 = 2;
const PWT: u64 = 1 << 3;
const PCD: u64 = 1 << 4;
const HUGE: u64 = 1 << 7;
const ADDRESS_MASK: u64 = 0x000f_ffff_ffff_f000;

/// A zeroed spare table, or None when they are used up.
///
/// # Safety
/// BSP only.
unsafe fn spare_table() -> Option<*mut u64> {
    // SAFETY: forwarded: only the BSP hands out spare tables.
    let (tables, used) = unsafe { &mut *SPARE.get() };
    let table = tables.get_mut(*used)?;
    *used += 1;
    table.0.fill(0);
    Some(table.0.as_mut_ptr())
}

/// Makes [addr, addr + len) an uncached identity mapping in the current page tables (the
/// runtime's: PML4 entry 0 -> PDPT -> 2 MiB pages for the first 4 GiB). Where 2 MiB pages exist
/// it sets PCD|PWT on them; elsewhere (above 4 GiB, up to 128 TiB) it adds page directories of
/// uncached 2 MiB pages, and PDPTs where needed, from a pool of eight tables. False if the range
/// cannot be mapped.
pub fn map_uncached(addr: u64, len: u64) -> bool {
    if len == 0 {
        return true;
    }
    let Some(end) = addr.checked_add(len) else {
        return false;
    };
    if end > 1 << 47 {
        return false;
    }
    let cr3: u64;
    // SAFETY: reading CR3 has no side effects.
    unsafe { asm!("mov {}, cr3", out(reg) cr3, options(nomem, nostack, preserves_flags)) };
    let pml4 = (cr3 & ADDRESS_MASK) as *mut u64;
    // SAFETY: the runtime's page tables are identity-mapped statics; we only change entries for
    // MMIO ranges (caching bits, or new tables in empty slots). BSP only.
    unsafe {
        let mut page = addr & !((2 << 20) - 1);
        while page < end {
            let pml4_index = ((page >> 39) & 511) as usize;
            let mut pml4e = read_volatile(pml4.add(pml4_index));
            if pml4e & PRESENT == 0 {
                let Some(table) = spare_table() else {
                    return false;
                };
                pml4e = table as u64 | PRESENT | WRITABLE;
                write_volatile(pml4.add(pml4_index), pml4e);
            }
            let pdpt = (pml4e & ADDRESS_MASK) as *mut u64;
            let pdpt_index = ((page >> 30) & 511) as usize;
            let mut pdpte = read_volatile(pdpt.add(pdpt_index));
            if pdpte & PRESENT == 0 {
                let Some(table) = spare_table() else {
                    return false;
                };
                let gib = page & !((1 << 30) - 1);
                for i in 0..512u64 {
                    *table.add(i as usize) =
                        (gib + (i << 21)) | PRESENT | WRITABLE | HUGE | PWT | PCD;
                }
                pdpte = table as u64 | PRESENT | WRITABLE;
                write_volatile(pdpt.add(pdpt_index), pdpte);
            } else if pdpte & HUGE != 0 {
                // A 1 GiB page: mark it uncached as a whole.
                write_volatile(pdpt.add(pdpt_index), pdpte | PWT | PCD);
                page = (page & !((1 << 30) - 1)) + (1 << 30);
                continue;
            }
            let pd = (pdpte & ADDRESS_MASK) as *mut u64;
            let index = ((page >> 21) & 511) as usize;
            let pde = read_volatile(pd.add(index));
            if pde & PRESENT == 0 || pde & HUGE == 0 {
                return false;
            }
            write_volatile(pd.add(index), pde | PWT | PCD);
            page += 2 << 20;
        }
        asm!("mov cr3, {}", in(reg) cr3, options(nostack, preserves_flags));
    }
    true
}
