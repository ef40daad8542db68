//! The guest-physical memory layout and the e820 map.
//!
//! ```text
//! 0x0000_0000  RAM ......................... real-mode IVT, boot structures below
//!   0x500        boot GDT       0x520  boot IDT (empty)
//!   0x6000       PVH start_info, module list and memory map
//!   0x7000       Linux zero page (boot_params)
//!   0x8ff0       boot stack top (64-bit entry)
//!   0x9000       PML4, 0xa000 PDPT, 0xb000..0xf000 four page directories (identity, 4 GiB)
//!   0x2_0000     kernel command line
//! 0x0009_fc00  reserved (EBDA)
//! 0x000e_0000  reserved: ACPI tables (RSDP at 0xe0000)
//! 0x0010_0000  RAM: kernel, then initrd at the top of low RAM
//! 0xc000_0000  32-bit MMIO hole:
//!   0xc000_0000  PCI MMIO window (BARs), 512 MiB
//!   0xe000_0000  PCI ECAM, bus 0 (1 MiB)
//!   0xfec0_0000  IOAPIC         0xfee0_0000  local APIC
//! 0x1_0000_0000 RAM above 4 GiB, when the guest has more than fits below the hole
//! ```

use vm_memory::GuestAddress;

/// Boot GDT.
pub const BOOT_GDT: u64 = 0x500;
/// Boot IDT (empty: the guest installs its own before it enables interrupts).
pub const BOOT_IDT: u64 = 0x520;
/// PVH `hvm_start_info`.
pub const PVH_START_INFO: u64 = 0x6000;
/// PVH module list (the initrd).
pub const PVH_MODLIST: u64 = 0x6040;
/// PVH memory map.
pub const PVH_MEMMAP: u64 = 0x6080;
/// Linux zero page.
pub const ZERO_PAGE: u64 = 0x7000;
/// Initial stack pointer for the 64-bit entry.
pub const BOOT_STACK: u64 = 0x8ff0;
/// Level-4 page table of the boot identity map.
pub const PML4: u64 = 0x9000;
/// Page-directory-pointer table of the boot identity map.
pub const PDPT: u64 = 0xa000;
/// First of four page directories (2 MiB pages) covering the first 4 GiB.
pub const PD: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE: u64 = 0x2_0000;
/// Largest command line, with its terminating NUL.
pub const CMDLINE_MAX: usize = 0x1_0000;
/// Start of the extended BIOS data area (reserved).
pub const EBDA: u64 = 0x9_fc00;
/// ACPI tables; the RSDP is the first of them.
pub const ACPI_TABLES: u64 = 0xe_0000;
/// End of the BIOS area.
pub const BIOS_END: u64 = 0x10_0000;
/// Where kernels are loaded.
pub const HIMEM: u64 = 0x10_0000;
/// Start of the 32-bit MMIO hole.
pub const MMIO_HOLE: u64 = 0xc000_0000;
/// End of the 32-bit MMIO hole: RAM continues here.
pub const RAM_ABOVE_4G: u64 = 0x1_0000_0000;
/// The PCI MMIO window: where BARs are placed, announced in the host bridge's `_CRS`.
pub const PCI_MMIO_BASE: u64 = MMIO_HOLE;
/// Size of the PCI MMIO window.
pub const PCI_MMIO_SIZE: u64 = 0x2000_0000;
/// PCI configuration space as memory (ECAM), announced by the MCFG.
pub const PCI_ECAM_BASE: u64 = 0xe000_0000;
/// Size of the ECAM range: bus 0 only.
pub const PCI_ECAM_SIZE: u64 = 1 << 20;
/// The IOAPIC's registers.
pub const IOAPIC_ADDR: u64 = 0xfec0_0000;
/// The local APICs' registers.
pub const LAPIC_ADDR: u64 = 0xfee0_0000;

/// Type of an e820 entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum E820Type {
    /// Usable RAM.
    Ram = 1,
    /// Reserved.
    Reserved = 2,
}

/// One e820 entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E820Entry {
    /// Start address.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// Kind of memory.
    pub kind: E820Type,
}

/// Where a guest's RAM lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryLayout {
    /// RAM size in bytes.
    pub size: u64,
}

impl MemoryLayout {
    /// The layout of a guest with `size` bytes of RAM.
    pub fn new(size: u64) -> Self {
        Self { size }
    }

    /// RAM below the MMIO hole, in bytes.
    pub fn below_4g(&self) -> u64 {
        self.size.min(MMIO_HOLE)
    }

    /// RAM from 4 GiB up, in bytes.
    pub fn above_4g(&self) -> u64 {
        self.size - self.below_4g()
    }

    /// The host-backed regions: `(start, length)`.
    pub fn ram_regions(&self) -> Vec<(GuestAddress, usize)> {
        let mut regions = vec![(GuestAddress(0), self.below_4g() as usize)];
        if self.above_4g() > 0 {
            regions.push((GuestAddress(RAM_ABOVE_4G), self.above_4g() as usize));
        }
        regions
    }

    /// The map the guest is given.
    pub fn e820(&self) -> Vec<E820Entry> {
        let mut map = vec![
            E820Entry {
                addr: 0,
                size: EBDA,
                kind: E820Type::Ram,
            },
            E820Entry {
                addr: EBDA,
                size: 0xa_0000 - EBDA,
                kind: E820Type::Reserved,
            },
            E820Entry {
                addr: ACPI_TABLES,
                size: BIOS_END - ACPI_TABLES,
                kind: E820Type::Reserved,
            },
            E820Entry {
                addr: HIMEM,
                size: self.below_4g() - HIMEM,
                kind: E820Type::Ram,
            },
        ];
        if self.above_4g() > 0 {
            map.push(E820Entry {
                addr: RAM_ABOVE_4G,
                size: self.above_4g(),
                kind: E820Type::Ram,
            });
        }
        map
    }
}

/// Smallest RAM popek accepts: room for the boot structures and a kernel.
pub const MIN_MEMORY: u64 = 16 << 20;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pci_ranges_sit_in_the_hole_clear_of_the_apics() {
        let ranges = [
            (PCI_MMIO_BASE, PCI_MMIO_SIZE),
            (PCI_ECAM_BASE, PCI_ECAM_SIZE),
            (IOAPIC_ADDR, 0x1000),
            (LAPIC_ADDR, 0x1000),
        ];
        for (i, &(base, size)) in ranges.iter().enumerate() {
            assert!(base >= MMIO_HOLE && base + size <= RAM_ABOVE_4G);
            for &(other, other_size) in &ranges[i + 1..] {
                assert!(base + size <= other || other + other_size <= base);
            }
        }
    }

    #[test]
    fn small_guest_has_all_ram_below_the_hole() {
        let l = MemoryLayout::new(512 << 20);
        assert_eq!(l.ram_regions(), vec![(GuestAddress(0), 512 << 20)]);
        let ram: u64 = l
            .e820()
            .iter()
            .filter(|e| e.kind == E820Type::Ram)
            .map(|e| e.size)
            .sum();
        assert_eq!(ram, (512 << 20) - (BIOS_END - EBDA));
    }

    #[test]
    fn five_gib_guest_splits_around_the_mmio_hole() {
        let l = MemoryLayout::new(5 << 30);
        assert_eq!(l.below_4g(), 3 << 30);
        assert_eq!(
            l.ram_regions(),
            vec![(GuestAddress(0), 3 << 30), (GuestAddress(4 << 30), 2 << 30)]
        );
        let last = *l.e820().last().unwrap();
        assert_eq!(
            last,
            E820Entry {
                addr: 4 << 30,
                size: 2 << 30,
                kind: E820Type::Ram
            }
        );
        // No RAM entry may reach into the hole.
        assert!(
            l.e820()
                .iter()
                .all(|e| e.addr >= RAM_ABOVE_4G || e.addr + e.size <= MMIO_HOLE)
        );
    }
}
