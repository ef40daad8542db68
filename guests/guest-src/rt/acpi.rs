//! Just enough ACPI: find the RSDP, walk the XSDT (or RSDT) to a table, and read the MADT.

use crate::boot::{read8, read32, read64};

const RSDP_SIGNATURE: u64 = u64::from_le_bytes(*b"RSD PTR ");

/// Scans the BIOS area 0xe0000-0xfffff on 16-byte boundaries for a valid RSDP.
pub fn scan_rsdp() -> Option<u64> {
    (0xe0000u64..0x100000)
        .step_by(16)
        // SAFETY: the first 4 GiB are identity mapped; this range is ROM or RAM on a PC.
        .find(|&a| unsafe { read64(a) } == RSDP_SIGNATURE && checksum(a, 20) == 0)
}

fn checksum(addr: u64, len: u64) -> u8 {
    // SAFETY: callers pass a range they found a table header for.
    (0..len).fold(0u8, |sum, i| sum.wrapping_add(unsafe { read8(addr + i) }))
}

/// Finds the table with `signature` through the RSDP at `rsdp` (XSDT if revision >= 2).
pub fn find_table(rsdp: u64, signature: &[u8; 4]) -> Option<u64> {
    let wanted = u32::from_le_bytes(*signature);
    // SAFETY: the RSDP address came from the VMM or a checksummed scan; tables live below 4 GiB
    // or wherever the VMM put them, and we read only within their stated lengths.
    unsafe {
        if read64(rsdp) != RSDP_SIGNATURE {
            return None;
        }
        let (root, entry_size) = if read8(rsdp + 15) >= 2 && read64(rsdp + 24) != 0 {
            (read64(rsdp + 24), 8)
        } else {
            (u64::from(read32(rsdp + 16)), 4)
        };
        let length = u64::from(read32(root + 4));
        let mut entry = root + 36;
        while entry + entry_size <= root + length {
            let table = if entry_size == 8 {
                read64(entry)
            } else {
                u64::from(read32(entry))
            };
            if table != 0 && read32(table) == wanted {
                return Some(table);
            }
            entry += entry_size;
        }
        None
    }
}

/// One entry of the MADT that the guests care about.
#[derive(Clone, Copy, Debug)]
pub enum MadtEntry {
    /// Type 0: a processor's local APIC.
    LocalApic {
        /// Its APIC ID.
        apic_id: u8,
        /// Flags bit 0.
        enabled: bool,
    },
    /// Type 1: an IOAPIC.
    IoApic {
        /// Its ID.
        id: u8,
        /// MMIO base.
        address: u32,
        /// First GSI it serves.
        gsi_base: u32,
    },
    /// Type 2: an ISA IRQ routed to another GSI.
    Override {
        /// ISA IRQ.
        source: u8,
        /// GSI it arrives on.
        gsi: u32,
        /// MPS INTI flags (polarity, trigger).
        flags: u16,
    },
    /// Any other type.
    Other(u8),
}

/// The MADT, located through the RSDP.
#[derive(Clone, Copy, Debug)]
pub struct Madt {
    address: u64,
    length: u64,
}

impl Madt {
    /// Finds the MADT ("APIC") through `rsdp`.
    pub fn find(rsdp: u64) -> Option<Self> {
        let address = find_table(rsdp, b"APIC")?;
        // SAFETY: `find_table` found a table header here.
        let length = u64::from(unsafe { read32(address + 4) });
        Some(Self { address, length })
    }

    /// Physical address of the local APIC.
    pub fn local_apic_address(&self) -> u32 {
        // SAFETY: within the table header.
        unsafe { read32(self.address + 36) }
    }

    /// The entries, in table order.
    pub fn entries(&self) -> impl Iterator<Item = MadtEntry> + '_ {
        let end = self.address + self.length;
        let mut at = self.address + 44;
        core::iter::from_fn(move || {
            if at + 2 > end {
                return None;
            }
            // SAFETY: within the table's stated length.
            unsafe {
                let kind = read8(at);
                let len = u64::from(read8(at + 1));
                if len < 2 || at + len > end {
                    return None;
                }
                let entry = match kind {
                    0 => MadtEntry::LocalApic {
                        apic_id: read8(at + 3),
                        enabled: read32(at + 4) & 1 != 0,
                    },
                    1 => MadtEntry::IoApic {
                        id: read8(at + 2),
                        address: read32(at + 4),
                        gsi_base: read32(at + 8),
                    },
                    2 => MadtEntry::Override {
                        source: read8(at + 3),
                        gsi: read32(at + 4),
                        flags: read8(at + 8) as u16 | (read8(at + 9) as u16) << 8,
                    },
                    other => MadtEntry::Other(other),
                };
                at += len;
                Some(entry)
            }
        })
    }

    /// The interrupt source override for ISA `irq`: the GSI it arrives on and its MPS INTI flags.
    /// `None` means the identity mapping (GSI = IRQ, ISA polarity and trigger).
    pub fn isa_irq_override(&self, irq: u8) -> Option<(u32, u16)> {
        self.entries().find_map(|e| match e {
            MadtEntry::Override { source, gsi, flags } if source == irq => Some((gsi, flags)),
            _ => None,
        })
    }

    /// MMIO base of the IOAPIC serving `gsi`, and that IOAPIC's first GSI.
    pub fn ioapic_for(&self, gsi: u32) -> Option<(u32, u32)> {
        self.entries()
            .filter_map(|e| match e {
                MadtEntry::IoApic {
                    address, gsi_base, ..
                } if gsi_base <= gsi => Some((address, gsi_base)),
                _ => None,
            })
            .max_by_key(|&(_, base)| base)
    }
}
