//! Snapshots: a paused VM written to a directory, and a VM restored from one.
//!
//! See `docs/snapshot-format.md` for the directory's layout.

pub mod format;
pub mod memory;

pub use format::{Kind, SnapshotError};
