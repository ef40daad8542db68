//! Snapshots: a paused VM written to a directory, and a VM restored from one.
//!
//! See `docs/snapshot-format.md` for the directory's layout.

pub mod format;
pub mod memory;
pub mod state;
pub mod take;

pub use format::{Kind, SnapshotError};

use std::path::Path;

use format::{MEMORY_FILE, PAGES_FILE};
use memory::{PAGE, Pages};

/// Makes the full snapshot `out` from the full snapshot `base` and the diff `diff` taken after
/// it: the diff's state, the base's memory with the diff's pages over it.
pub fn merge(base: &Path, diff: &Path, out: &Path) -> Result<(), SnapshotError> {
    let (bh, _): (format::Header, serde_json::Value) = format::read_state(base)?;
    let (dh, body): (format::Header, serde_json::Value) = format::read_state(diff)?;
    if bh.kind != Kind::Full {
        return Err(SnapshotError::Unusable(format!(
            "{} is not a full snapshot",
            base.display()
        )));
    }
    if dh.kind != Kind::Diff {
        return Err(SnapshotError::Unusable(format!(
            "{} is not a diff snapshot",
            diff.display()
        )));
    }
    if bh.memory_bytes != dh.memory_bytes {
        return Err(SnapshotError::Unusable(format!(
            "{} and {} are snapshots of VMs with different RAM sizes",
            base.display(),
            diff.display()
        )));
    }
    if out.exists() {
        return Err(SnapshotError::Unusable(format!(
            "{} exists: the merged snapshot needs a new directory",
            out.display()
        )));
    }
    std::fs::create_dir_all(out).map_err(|source| SnapshotError::Io {
        path: out.to_path_buf(),
        what: "cannot create",
        source,
    })?;
    let pages = Pages::load(
        &diff.join(PAGES_FILE),
        dh.memory_bytes.div_ceil(PAGE as u64),
    )?;
    memory::merge(
        &base.join(MEMORY_FILE),
        &diff.join(MEMORY_FILE),
        &pages,
        &out.join(MEMORY_FILE),
    )?;
    format::write_state(
        out,
        format::header(Kind::Full, None, dh.memory_bytes),
        &body,
    )
}
