//! A software x86-64 CPU.
//!
//! An interpreter: each step fetches the instruction at CS:RIP through the MMU, decodes it with
//! `iced-x86`, and executes it against [`CpuState`]. Memory, port I/O, CPUID and the MSRs the CPU
//! does not own leave the crate through the [`CpuBus`] trait, which the hypervisor backend
//! implements with the same callback the KVM backend uses.
//!
//! The crate knows nothing of KVM, devices or the VMM.
//!
//! Layout: [`state`] (architectural registers), [`bus`] (the outside world), [`fault`]
//! (exceptions as values), `mmu` (segmentation and paging, with a TLB), `exec/` (one file per
//! instruction family), `interrupt` (exception and interrupt delivery through the IDT, and the
//! CPU's event inputs: [`Cpu::inject_interrupt`], [`Cpu::inject_nmi`], [`Cpu::reset`],
//! [`Cpu::init`], [`Cpu::sipi`]).

pub mod bus;
mod exec;
pub mod fault;
mod flags;
mod interrupt;
mod mmu;
pub mod state;

pub use bus::CpuBus;
pub use exec::{Cpu, StepExit, Unimplemented};
pub use fault::{Exception, Fault};
pub use state::{CpuState, DescriptorTable, SegReg, Segment};

#[cfg(any(test, feature = "test-utils"))]
pub mod testing;
