//! The machine as one software vCPU sees it: guest RAM in place, the local APIC's page and MSR,
//! everything else through [`VmOps`].

use std::collections::BTreeMap;

use x86_cpu::CpuBus;

use super::time::EmuTime;
use super::{LocalInterruptController, cpuid};
use crate::{CpuidEntry, MemoryRegion, VmOps};

/// IA32_APIC_BASE.
const MSR_APIC_BASE: u32 = 0x1b;
/// Read-only MSRs that operating systems read without checking CPUID first, with the values
/// this CPU presents: IA32_PLATFORM_ID, IA32_FEATURE_CONTROL (locked, VMX off) and
/// IA32_BIOS_SIGN_ID (no microcode).
const FIXED_MSRS: [(u32, u64); 3] = [(0x17, 0), (0x3a, 1), (0x8b, 0)];
/// The APIC page's length.
const APIC_PAGE: u64 = 0x1000;

/// What happened on the bus during a run of instructions that the vCPU loop must act on.
#[derive(Debug, Default)]
pub(super) struct BusEvents {
    /// A port or device access happened: a device may have changed a timer or an interrupt.
    pub(super) device_access: bool,
    /// The guest wrote the local APIC (TPR, EOI, ...): priorities may have changed.
    pub(super) apic_written: bool,
    /// Level-triggered vectors whose EOI the IOAPIC must see.
    pub(super) eois: Vec<u8>,
}

/// Guest RAM: the regions given to `map_memory`, with the last one hit remembered.
#[derive(Debug, Clone, Default)]
pub(super) struct GuestRam {
    regions: Vec<MemoryRegion>,
}

impl GuestRam {
    pub(super) fn new(regions: Vec<MemoryRegion>) -> Self {
        Self { regions }
    }

    /// The host address of `[gpa, gpa + len)` if one region holds all of it.
    fn host_address(&self, gpa: u64, len: usize) -> Option<u64> {
        let end = gpa.checked_add(len as u64)?;
        self.regions
            .iter()
            .find(|r| gpa >= r.guest_addr && end <= r.guest_addr + r.size)
            .map(|r| r.host_addr + (gpa - r.guest_addr))
    }
}

/// One vCPU's view of the machine, for one run of instructions.
pub(super) struct EmuBus<'a> {
    pub(super) ram: &'a GuestRam,
    pub(super) ops: &'a dyn VmOps,
    pub(super) apic: &'a dyn LocalInterruptController,
    /// Where the APIC page is, cached: it moves only through [`MSR_APIC_BASE`], which this bus
    /// serves.
    pub(super) apic_page: &'a mut Option<u64>,
    pub(super) cpuid: &'a [CpuidEntry],
    /// MSRs the VMM set that the CPU does not own.
    pub(super) msrs: &'a mut BTreeMap<u32, u64>,
    pub(super) time: &'a EmuTime,
    /// Guest time of retired instructions not yet added to the clock.
    pub(super) unflushed_ns: u64,
    pub(super) events: BusEvents,
}

impl EmuBus<'_> {
    /// Brings the clock up to date before anything that reads it.
    pub(super) fn flush_time(&mut self) {
        self.time.advance(std::mem::take(&mut self.unflushed_ns));
    }

    fn apic_offset(&self, gpa: u64) -> Option<u64> {
        let base = (*self.apic_page)?;
        (gpa >= base && gpa < base + APIC_PAGE).then(|| gpa - base)
    }
}

impl CpuBus for EmuBus<'_> {
    fn ram(&mut self, gpa: u64, len: usize) -> Option<&mut [u8]> {
        let host = self.ram.host_address(gpa, len)?;
        // SAFETY: `map_memory`'s caller guaranteed that every region is mapped, readable and
        // writable for the VM's lifetime, and `host_address` checked that the whole range lies
        // in one region. The bytes are guest RAM shared with the other vCPU threads (and with
        // devices): the guest orders its own concurrent accesses, and locked instructions go
        // through `ram_atomic` on the same bytes. The slice lives only until the CPU's next bus
        // call, as the `&mut self` borrow says.
        Some(unsafe { std::slice::from_raw_parts_mut(host as *mut u8, len) })
    }

    fn mmio_read(&mut self, gpa: u64, data: &mut [u8]) {
        self.flush_time();
        self.events.device_access = true;
        match self.apic_offset(gpa) {
            Some(offset) => self.apic.mmio_read(offset, data),
            None => self.ops.mmio_read(gpa, data),
        }
    }

    fn mmio_write(&mut self, gpa: u64, data: &[u8]) {
        self.flush_time();
        self.events.device_access = true;
        match self.apic_offset(gpa) {
            Some(offset) => {
                self.events.apic_written = true;
                if let Some(vector) = self.apic.mmio_write(offset, data) {
                    self.events.eois.push(vector);
                }
            }
            None => self.ops.mmio_write(gpa, data),
        }
    }

    fn io_read(&mut self, port: u16, data: &mut [u8]) {
        self.flush_time();
        self.events.device_access = true;
        self.ops.pio_read(port, data);
    }

    fn io_write(&mut self, port: u16, data: &[u8]) {
        self.flush_time();
        self.events.device_access = true;
        self.ops.pio_write(port, data);
    }

    fn cpuid(&mut self, leaf: u32, subleaf: u32) -> [u32; 4] {
        let mut r = cpuid::lookup(self.cpuid, leaf, subleaf);
        if leaf == 1 && self.apic_page.is_none() {
            // CPUID.1:EDX.APIC follows IA32_APIC_BASE's global enable.
            r[3] &= !(1 << 9);
        }
        r
    }

    fn rdmsr(&mut self, msr: u32) -> Option<u64> {
        if msr == MSR_APIC_BASE {
            return Some(self.apic.apic_base());
        }
        if let Some(&(_, v)) = FIXED_MSRS.iter().find(|(m, _)| *m == msr) {
            return Some(v);
        }
        self.msrs.get(&msr).copied()
    }

    fn wrmsr(&mut self, msr: u32, value: u64) -> bool {
        if msr == MSR_APIC_BASE {
            let ok = self.apic.set_apic_base(value);
            *self.apic_page = self.apic.mmio_base();
            self.events.apic_written = true;
            return ok;
        }
        if msr == 0x8b {
            // Writing IA32_BIOS_SIGN_ID starts a microcode signature read: nothing to do.
            return true;
        }
        match self.msrs.get_mut(&msr) {
            Some(v) => {
                *v = value;
                true
            }
            None => false,
        }
    }

    fn random(&mut self) -> Option<u64> {
        Some(self.time.random())
    }

    fn tsc(&mut self) -> u64 {
        // A 1 GHz TSC: one tick per nanosecond of the VM's clock.
        self.flush_time();
        self.time.now_ns()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ram_lookup_needs_the_whole_range_in_one_region() {
        let ram = GuestRam::new(vec![
            MemoryRegion {
                guest_addr: 0,
                size: 0x1000,
                host_addr: 0x10_0000,
            },
            MemoryRegion {
                guest_addr: 0x1_0000_0000,
                size: 0x2000,
                host_addr: 0x20_0000,
            },
        ]);
        assert_eq!(ram.host_address(0xff8, 8), Some(0x10_0ff8));
        assert_eq!(ram.host_address(0xffc, 8), None);
        assert_eq!(ram.host_address(0x1_0000_1000, 4), Some(0x20_1000));
        assert_eq!(ram.host_address(0x8000, 1), None);
        assert_eq!(ram.host_address(u64::MAX, 2), None);
    }
}
