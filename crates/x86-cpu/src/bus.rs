//! What the CPU needs from the machine around it.

use std::sync::atomic::AtomicU8;

/// The machine as the CPU sees it: physical memory, I/O ports, CPUID, and the MSRs that belong to
/// other devices (the local APIC's, say).
pub trait CpuBus {
    /// Guest RAM holding `[gpa, gpa + len)` as one host slice, or `None` if any of it is not RAM
    /// (then the access goes to [`CpuBus::mmio_read`]/[`CpuBus::mmio_write`]).
    fn ram(&mut self, gpa: u64, len: usize) -> Option<&mut [u8]>;
    /// Reads from a device at physical address `gpa`.
    fn mmio_read(&mut self, gpa: u64, data: &mut [u8]);
    /// Writes to a device at physical address `gpa`.
    fn mmio_write(&mut self, gpa: u64, data: &[u8]);
    /// `in` from `port`.
    fn io_read(&mut self, port: u16, data: &mut [u8]);
    /// `out` to `port`.
    fn io_write(&mut self, port: u16, data: &[u8]);
    /// CPUID leaf `leaf`, subleaf `subleaf`: EAX, EBX, ECX, EDX.
    fn cpuid(&mut self, leaf: u32, subleaf: u32) -> [u32; 4];
    /// An MSR the CPU does not implement itself; `None` raises #GP.
    fn rdmsr(&mut self, msr: u32) -> Option<u64>;
    /// Writes an MSR the CPU does not implement itself; `false` raises #GP.
    fn wrmsr(&mut self, msr: u32, value: u64) -> bool;
    /// The time-stamp counter before the guest's offset.
    fn tsc(&mut self) -> u64;

    /// Guest RAM holding `[gpa, gpa + len)` as atomic bytes, or `None` if any of it is not RAM.
    ///
    /// Locked read-modify-write instructions use this to run a host compare-exchange on guest
    /// memory, so that they stay atomic against other vCPUs running natively on the same RAM.
    /// The default views [`CpuBus::ram`]'s slice, which is right when that slice is the guest's
    /// RAM itself (a shared mapping); a bus that hands out copies must override this.
    fn ram_atomic(&mut self, gpa: u64, len: usize) -> Option<&[AtomicU8]> {
        let ram = self.ram(gpa, len)?;
        // SAFETY: `AtomicU8` has the size, alignment and bit validity of `u8`, and the exclusive
        // borrow of `ram` is what the returned shared borrow is derived from, so no other
        // reference to these bytes is usable while it lives.
        Some(unsafe { &*(ram as *mut [u8] as *const [AtomicU8]) })
    }
    /// 64 bits of entropy for RDRAND and RDSEED, or `None` when there is none to give (the
    /// instructions then report failure with CF clear, as hardware does when its source is
    /// exhausted).
    fn random(&mut self) -> Option<u64> {
        None
    }
}
