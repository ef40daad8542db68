//! Paging: linear to physical translation for legacy (2-level), PAE and 4-level tables, with
//! accessed/dirty bits, NX, U/S, WP, SMEP and SMAP, behind a small direct-mapped TLB that CR3
//! writes and `invlpg` invalidate.

use crate::bus::CpuBus;
use crate::fault::{Fault, Result};
use crate::state::{CpuState, bits, rflags};

/// What an access does, for permission checks and the page-fault error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    Read,
    Write,
    Fetch,
}

/// Who makes an access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Privilege {
    /// The current CPL decides (user when CPL = 3).
    Current,
    /// An implicit supervisor access (descriptor tables, the TSS), whatever the CPL.
    System,
}

const PTE_P: u64 = 1 << 0;
const PTE_RW: u64 = 1 << 1;
const PTE_US: u64 = 1 << 2;
const PTE_A: u64 = 1 << 5;
const PTE_D: u64 = 1 << 6;
const PTE_PS: u64 = 1 << 7;
const PTE_G: u64 = 1 << 8;
const PTE_NX: u64 = 1 << 63;
/// Physical address bits of a PAE/4-level entry (52-bit physical addresses).
const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

const PF_P: u32 = 1 << 0;
const PF_W: u32 = 1 << 1;
const PF_U: u32 = 1 << 2;
const PF_I: u32 = 1 << 4;

const TLB_SIZE: usize = 512;

#[derive(Debug, Clone, Copy, Default)]
struct TlbEntry {
    /// Linear page number + 1 (0 = empty).
    tag: u64,
    /// Physical page address.
    page: u64,
    writable: bool,
    user: bool,
    nx: bool,
    /// The leaf's dirty bit is already set.
    dirty: bool,
    global: bool,
    /// The offset mask of the large page this 4 KiB slice belongs to (0 for a 4 KiB page).
    large_mask: u64,
}

/// The translation cache.
pub(crate) struct Tlb {
    entries: Box<[TlbEntry; TLB_SIZE]>,
    /// Some entry may hold a slice of a large page, so `flush_page` must look further than one
    /// slot.
    has_large: bool,
}

impl Default for Tlb {
    fn default() -> Self {
        Tlb {
            entries: Box::new([TlbEntry::default(); TLB_SIZE]),
            has_large: false,
        }
    }
}

impl Tlb {
    /// Drops every translation, or every non-global one.
    pub(crate) fn flush(&mut self, keep_global: bool) {
        for e in self.entries.iter_mut() {
            if !(keep_global && e.global) {
                e.tag = 0;
            }
        }
        if !keep_global {
            self.has_large = false;
        }
    }

    /// Drops the translation of the page holding `linear`, and every cached part of the large
    /// page holding it (`invlpg` on a large page invalidates all of it).
    pub(crate) fn flush_page(&mut self, linear: u64) {
        let vpn = linear >> 12;
        let e = &mut self.entries[(vpn as usize) % TLB_SIZE];
        if e.tag == vpn + 1 {
            e.tag = 0;
        }
        if self.has_large {
            for e in self.entries.iter_mut() {
                if e.tag != 0 && e.large_mask != 0 {
                    let page = (e.tag - 1) << 12;
                    if page & !e.large_mask == linear & !e.large_mask {
                        e.tag = 0;
                    }
                }
            }
        }
    }
}

/// Reads a physical range, from RAM or a device.
pub(crate) fn read_phys(bus: &mut dyn CpuBus, gpa: u64, buf: &mut [u8]) {
    match bus.ram(gpa, buf.len()) {
        Some(ram) => buf.copy_from_slice(ram),
        None => bus.mmio_read(gpa, buf),
    }
}

/// Writes a physical range, to RAM or a device.
pub(crate) fn write_phys(bus: &mut dyn CpuBus, gpa: u64, buf: &[u8]) {
    match bus.ram(gpa, buf.len()) {
        Some(ram) => ram.copy_from_slice(buf),
        None => bus.mmio_write(gpa, buf),
    }
}

fn read_entry(bus: &mut dyn CpuBus, gpa: u64, wide: bool) -> u64 {
    if wide {
        let mut b = [0u8; 8];
        read_phys(bus, gpa, &mut b);
        u64::from_le_bytes(b)
    } else {
        let mut b = [0u8; 4];
        read_phys(bus, gpa, &mut b);
        u64::from(u32::from_le_bytes(b))
    }
}

/// Sets bits in a paging-structure entry, as the processor does with a locked update.
fn set_entry_bits(bus: &mut dyn CpuBus, gpa: u64, old: u64, set: u64, wide: bool) {
    if old & set == set {
        return;
    }
    let new = old | set;
    if wide {
        write_phys(bus, gpa, &new.to_le_bytes());
    } else {
        write_phys(bus, gpa, &(new as u32).to_le_bytes());
    }
}

/// The result of a walk: the leaf's physical page and the combined permissions.
struct Walk {
    page: u64,
    page_mask: u64,
    writable: bool,
    user: bool,
    nx: bool,
    global: bool,
    leaf_gpa: u64,
    leaf: u64,
    wide: bool,
}

/// Walks the page tables for `linear`. Marks entries accessed; returns a not-present fault code
/// on a missing entry.
fn walk(state: &CpuState, bus: &mut dyn CpuBus, linear: u64) -> core::result::Result<Walk, ()> {
    let nxe = state.efer & bits::EFER_NXE != 0;
    let (mut table, levels, wide): (u64, u32, bool) = if state.long_mode() {
        (state.cr3 & ADDR_MASK, 4, true)
    } else if state.cr4 & bits::CR4_PAE != 0 {
        // The PDPTE: a 4-entry table indexed by bits 31:30; it has no RW/US/A bits.
        let pdpte = read_entry(
            bus,
            (state.cr3 & 0xffff_ffe0) + ((linear >> 30) & 3) * 8,
            true,
        );
        if pdpte & PTE_P == 0 {
            return Err(());
        }
        (pdpte & ADDR_MASK, 2, true)
    } else {
        (state.cr3 & 0xffff_f000, 2, false)
    };
    let (mut writable, mut user, mut nx) = (true, true, false);
    for level in (1..=levels).rev() {
        let (shift, index_bits) = if wide {
            (12 + 9 * (level - 1), 9)
        } else {
            (12 + 10 * (level - 1), 10)
        };
        let index = (linear >> shift) & ((1 << index_bits) - 1);
        let entry_size = if wide { 8 } else { 4 };
        let gpa = table + index * entry_size;
        let entry = read_entry(bus, gpa, wide);
        if entry & PTE_P == 0 {
            return Err(());
        }
        writable &= entry & PTE_RW != 0;
        user &= entry & PTE_US != 0;
        nx |= nxe && wide && entry & PTE_NX != 0;
        let large = level > 1
            && entry & PTE_PS != 0
            && (wide && level <= 3 || !wide && state.cr4 & bits::CR4_PSE != 0);
        if level == 1 || large {
            let page_mask: u64 = (1 << shift) - 1;
            let page = if !wide && large {
                // PSE-36: bits 20:13 of a 4 MiB PDE are physical address bits 39:32.
                (entry & 0xffc0_0000) | ((entry >> 13) & 0xff) << 32
            } else {
                entry & ADDR_MASK & !page_mask
            };
            return Ok(Walk {
                page,
                page_mask,
                writable,
                user,
                nx,
                global: entry & PTE_G != 0 && state.cr4 & bits::CR4_PGE != 0,
                leaf_gpa: gpa,
                leaf: entry,
                wide,
            });
        }
        set_entry_bits(bus, gpa, entry, PTE_A, wide);
        table = if wide {
            entry & ADDR_MASK
        } else {
            entry & 0xffff_f000
        };
    }
    Err(())
}

/// Translates `linear` for `access`, raising #PF as the hardware would.
pub(crate) fn translate(
    state: &CpuState,
    tlb: &mut Tlb,
    bus: &mut dyn CpuBus,
    linear: u64,
    access: Access,
    privilege: Privilege,
) -> Result<u64> {
    if state.cr0 & bits::CR0_PG == 0 {
        return Ok(linear & 0xffff_ffff);
    }
    let user_access = privilege == Privilege::Current && state.cpl() == 3;
    let vpn = linear >> 12;
    let slot = (vpn as usize) % TLB_SIZE;
    let cached = tlb.entries[slot];
    let entry = if cached.tag == vpn + 1 && (access != Access::Write || cached.dirty) {
        cached
    } else {
        let mut code = if user_access { PF_U } else { 0 };
        if access == Access::Write {
            code |= PF_W;
        }
        let fetch_code = if access == Access::Fetch
            && (state.efer & bits::EFER_NXE != 0 || state.cr4 & bits::CR4_SMEP != 0)
        {
            PF_I
        } else {
            0
        };
        let w = walk(state, bus, linear).map_err(|()| Fault::page(linear, code | fetch_code))?;
        let offset_in_large = linear & w.page_mask & !0xfff;
        let e = TlbEntry {
            tag: vpn + 1,
            page: w.page + offset_in_large,
            writable: w.writable,
            user: w.user,
            nx: w.nx,
            dirty: access == Access::Write,
            global: w.global,
            large_mask: if w.page_mask > 0xfff { w.page_mask } else { 0 },
        };
        // Permission checks before the accessed/dirty update: a faulting access sets neither.
        check(state, &e, access, user_access, linear)?;
        let set = if access == Access::Write {
            PTE_A | PTE_D
        } else {
            PTE_A
        };
        set_entry_bits(bus, w.leaf_gpa, w.leaf, set, w.wide);
        tlb.has_large |= e.large_mask != 0;
        tlb.entries[slot] = TlbEntry {
            dirty: w.leaf & PTE_D != 0 || access == Access::Write,
            ..e
        };
        return Ok(e.page | (linear & 0xfff));
    };
    if check(state, &entry, access, user_access, linear).is_err() {
        // A cached translation may be stale: guests upgrade permissions (read-only to
        // writable, say) without invalidating, relying on the processor dropping the TLB entry
        // of a faulting access. Drop it and walk again, so the fault is raised only if the page
        // tables still deny the access (otherwise the guest would fault on the same stale entry
        // forever).
        tlb.entries[slot].tag = 0;
        return translate(state, tlb, bus, linear, access, privilege);
    }
    Ok(entry.page | (linear & 0xfff))
}

fn check(
    state: &CpuState,
    e: &TlbEntry,
    access: Access,
    user_access: bool,
    linear: u64,
) -> Result<()> {
    let mut code = PF_P | if user_access { PF_U } else { 0 };
    if access == Access::Write {
        code |= PF_W;
    }
    let denied = match access {
        Access::Fetch => {
            code |= PF_I;
            e.nx || (user_access && !e.user)
                || (!user_access && e.user && state.cr4 & bits::CR4_SMEP != 0)
        }
        Access::Read | Access::Write => {
            let smap = !user_access
                && e.user
                && state.cr4 & bits::CR4_SMAP != 0
                && (state.cpl() < 3 && state.rflags & rflags::AC == 0);
            let write_denied = access == Access::Write
                && !e.writable
                && (user_access || state.cr0 & bits::CR0_WP != 0);
            (user_access && !e.user) || smap || write_denied
        }
    };
    if denied {
        Err(Fault::page(linear, code))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fault::Exception;
    use crate::testing::FlatBus;

    const PML4: u64 = 0x1000;

    /// Maps linear 0x40_0000 -> physical 0x9000 with `flags` on the leaf, through 4 levels.
    fn four_level(bus: &mut FlatBus, leaf_flags: u64) -> CpuState {
        bus.write_u64(PML4, 0x2000 | PTE_P | PTE_RW | PTE_US);
        bus.write_u64(0x2000, 0x3000 | PTE_P | PTE_RW | PTE_US);
        bus.write_u64(0x3000 + 2 * 8, 0x4000 | PTE_P | PTE_RW | PTE_US);
        bus.write_u64(0x4000, 0x9000 | leaf_flags);
        let mut s = CpuState::default();
        s.cr0 |= bits::CR0_PE | bits::CR0_PG | bits::CR0_WP;
        s.cr4 |= bits::CR4_PAE;
        s.efer |= bits::EFER_LME | bits::EFER_LMA | bits::EFER_NXE;
        s.cr3 = PML4;
        s
    }

    #[test]
    fn four_level_walk_translates_and_sets_accessed_and_dirty() {
        let mut bus = FlatBus::new(0x10000);
        let s = four_level(&mut bus, PTE_P | PTE_RW);
        let mut tlb = Tlb::default();
        let pa = translate(
            &s,
            &mut tlb,
            &mut bus,
            0x40_0123,
            Access::Read,
            Privilege::Current,
        )
        .unwrap();
        assert_eq!(pa, 0x9123);
        assert_eq!(bus.read_u64(0x4000) & (PTE_A | PTE_D), PTE_A);
        translate(
            &s,
            &mut tlb,
            &mut bus,
            0x40_0123,
            Access::Write,
            Privilege::Current,
        )
        .unwrap();
        assert_eq!(bus.read_u64(0x4000) & (PTE_A | PTE_D), PTE_A | PTE_D);
    }

    #[test]
    fn missing_page_faults_with_the_address_and_a_not_present_code() {
        let mut bus = FlatBus::new(0x10000);
        let s = four_level(&mut bus, PTE_P);
        let f = translate(
            &s,
            &mut Tlb::default(),
            &mut bus,
            0x80_0000,
            Access::Write,
            Privilege::Current,
        )
        .unwrap_err();
        assert_eq!(
            (f.exception, f.error_code, f.address),
            (Exception::PageFault, Some(PF_W), Some(0x80_0000))
        );
    }

    #[test]
    fn write_protect_nx_and_user_checks_fault() {
        let mut bus = FlatBus::new(0x10000);
        let mut s = four_level(&mut bus, PTE_P | PTE_NX);
        let mut tlb = Tlb::default();
        let w = translate(
            &s,
            &mut tlb,
            &mut bus,
            0x40_0000,
            Access::Write,
            Privilege::Current,
        )
        .unwrap_err();
        assert_eq!(w.error_code, Some(PF_P | PF_W));
        let x = translate(
            &s,
            &mut tlb,
            &mut bus,
            0x40_0000,
            Access::Fetch,
            Privilege::Current,
        )
        .unwrap_err();
        assert_eq!(x.error_code, Some(PF_P | PF_I));
        // CPL 3 on a supervisor page.
        s.seg[crate::SegReg::Cs as usize].dpl = 3;
        let u = translate(
            &s,
            &mut tlb,
            &mut bus,
            0x40_0000,
            Access::Read,
            Privilege::Current,
        )
        .unwrap_err();
        assert_eq!(u.error_code, Some(PF_P | PF_U));
    }

    #[test]
    fn tlb_keeps_a_stale_translation_until_invalidated() {
        let mut bus = FlatBus::new(0x10000);
        let s = four_level(&mut bus, PTE_P | PTE_RW);
        let mut tlb = Tlb::default();
        translate(
            &s,
            &mut tlb,
            &mut bus,
            0x40_0000,
            Access::Read,
            Privilege::Current,
        )
        .unwrap();
        bus.write_u64(0x4000, 0xa000 | PTE_P | PTE_RW);
        let stale = translate(
            &s,
            &mut tlb,
            &mut bus,
            0x40_0000,
            Access::Read,
            Privilege::Current,
        )
        .unwrap();
        assert_eq!(stale, 0x9000);
        tlb.flush_page(0x40_0000);
        let fresh = translate(
            &s,
            &mut tlb,
            &mut bus,
            0x40_0000,
            Access::Read,
            Privilege::Current,
        )
        .unwrap();
        assert_eq!(fresh, 0xa000);
    }

    #[test]
    fn a_permission_upgraded_without_invalidation_is_seen_on_the_next_access() {
        let mut bus = FlatBus::new(0x10000);
        // Dirty but read-only, as fork leaves a copy-on-write page.
        let s = four_level(&mut bus, PTE_P | PTE_D);
        let mut tlb = Tlb::default();
        translate(
            &s,
            &mut tlb,
            &mut bus,
            0x40_0000,
            Access::Read,
            Privilege::Current,
        )
        .unwrap();
        // The guest makes the page writable and does not invlpg, as Linux does after a fault.
        bus.write_u64(0x4000, 0x9000 | PTE_P | PTE_RW | PTE_D);
        let pa = translate(
            &s,
            &mut tlb,
            &mut bus,
            0x40_0000,
            Access::Write,
            Privilege::Current,
        );
        assert_eq!(
            pa,
            Ok(0x9000),
            "the stale read-only entry must not fault the write"
        );
    }

    #[test]
    fn legacy_two_level_with_4m_pages() {
        let mut bus = FlatBus::new(0x10000);
        // PDE 1 maps linear 4 MiB..8 MiB to physical 0xc0_0000 as a 4 MiB page.
        bus.write_u32(0x1000 + 4, 0x00c0_0000 | (PTE_P | PTE_RW | PTE_PS) as u32);
        let mut s = CpuState::default();
        s.cr0 |= bits::CR0_PE | bits::CR0_PG;
        s.cr4 |= bits::CR4_PSE;
        s.cr3 = 0x1000;
        let pa = translate(
            &s,
            &mut Tlb::default(),
            &mut bus,
            0x0045_6789,
            Access::Read,
            Privilege::Current,
        )
        .unwrap();
        assert_eq!(pa, 0x00c5_6789);
    }
}
