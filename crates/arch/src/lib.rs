//! The x86-64 PC platform of a popek VM.
//!
//! Owns what a firmware and a boot loader would do on real hardware: the guest-physical memory
//! layout and its e820 map ([`layout`]), loading a kernel, initrd and command line under the Linux
//! 64-bit or the PVH boot protocol ([`boot`]), the boot CPU's initial state ([`cpu`]), the CPUID
//! the guest sees ([`cpuid`]), and the ACPI tables ([`acpi`]).
//!
//! It knows where the platform's devices sit (their addresses are part of the layout) but not
//! how they work.

pub mod acpi;
pub mod boot;
pub mod cpu;
pub mod cpuid;
pub mod layout;

pub use vm_memory::{GuestAddress, GuestMemoryMmap};
