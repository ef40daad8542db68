//! Differential tests of popek's software x86-64 CPU against the silicon.
//!
//! The harness gives KVM and the software CPU (`x86-cpu`) the same registers and memory, runs
//! the same code on both, and compares the final states.

pub mod case;
pub mod compare;
pub mod flags;
pub mod generator;
pub mod handwritten;
pub mod kvm_side;
pub mod machine;
pub mod soft_side;
pub mod suite;
pub mod templates;
