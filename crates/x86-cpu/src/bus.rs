//! What the CPU needs from the machine around it.

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
}
