//! The snapshot directory's files, their header, version and checksum.
//!
//! ```text
//! DIR/state.json   line 1: the header (JSON), line 2 on: the body (JSON)
//! DIR/memory       guest RAM, regions back to back, sparse where the guest never wrote
//! DIR/pages        (diff snapshots only) a bitmap of the pages `memory` holds, 1 bit per page
//! ```
//! The header names the format and its version, the popek version that wrote it, the kind
//! (full or diff), the memory file's size and a CRC-32 of the body. A reader refuses a newer or
//! older format version, a body whose checksum differs, and a memory file of the wrong size,
//! each with its own error.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize, de::DeserializeOwned};

/// The format's name in the header.
pub const FORMAT: &str = "popek-snapshot";
/// The format version this popek writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// The state file's name.
pub const STATE_FILE: &str = "state.json";
/// The memory file's name.
pub const MEMORY_FILE: &str = "memory";
/// The page bitmap of a diff snapshot.
pub const PAGES_FILE: &str = "pages";

/// Errors of reading or writing a snapshot: each names the file and what is wrong with it.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// A file could not be read or written.
    #[error("{}: {what}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What was being done.
        what: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Not a popek snapshot, or a header that does not parse.
    #[error("{}: not a popek snapshot ({why})", path.display())]
    NotASnapshot {
        /// The state file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// Written by a popek with another format version.
    #[error(
        "{}: snapshot format {found} (written by popek {writer}); this popek {ours} reads format {FORMAT_VERSION} only",
        path.display(), ours = env!("CARGO_PKG_VERSION")
    )]
    Version {
        /// The state file.
        path: PathBuf,
        /// Its format version.
        found: u32,
        /// The popek version that wrote it.
        writer: String,
    },
    /// The body does not match its checksum, or does not parse.
    #[error("{}: corrupt state ({why})", path.display())]
    Corrupt {
        /// The state file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// The memory file is shorter or longer than the header says.
    #[error(
        "{}: memory file is {found} bytes, the snapshot's VM has {expected} (truncated or replaced)",
        path.display()
    )]
    MemorySize {
        /// The memory file.
        path: PathBuf,
        /// Its size.
        found: u64,
        /// What it should be.
        expected: u64,
    },
    /// The snapshot cannot be used this way.
    #[error("{0}")]
    Unusable(String),
}

/// A full snapshot, or only what changed since a base.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Every page.
    Full,
    /// Pages written since the base; `pages` lists them.
    Diff,
}

/// The first line of the state file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Header {
    /// Always [`FORMAT`].
    pub format: String,
    /// [`FORMAT_VERSION`] when written.
    pub format_version: u32,
    /// The popek that wrote it.
    pub popek_version: String,
    /// Full or diff.
    pub kind: Kind,
    /// For a diff: the snapshot directory it applies to, as given when it was taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<String>,
    /// The memory file's size in bytes.
    pub memory_bytes: u64,
    /// CRC-32 (IEEE) of the body's bytes, as 8 hex digits.
    pub body_crc32: String,
}

fn io(path: &Path, what: &'static str) -> impl FnOnce(std::io::Error) -> SnapshotError {
    let path = path.to_path_buf();
    move |source| SnapshotError::Io { path, what, source }
}

/// Writes `DIR/state.json` from `header` (whose checksum is filled in here) and `body`.
pub fn write_state<T: Serialize>(
    dir: &Path,
    mut header: Header,
    body: &T,
) -> Result<(), SnapshotError> {
    let path = dir.join(STATE_FILE);
    let body = serde_json::to_vec(body).map_err(|e| SnapshotError::Corrupt {
        path: path.clone(),
        why: format!("cannot serialize the state: {e}"),
    })?;
    header.body_crc32 = format!("{:08x}", crc32fast::hash(&body));
    let mut out = serde_json::to_vec(&header).map_err(|e| SnapshotError::Corrupt {
        path: path.clone(),
        why: e.to_string(),
    })?;
    out.push(b'\n');
    out.extend_from_slice(&body);
    out.push(b'\n');
    // Written aside, then renamed: a crash never leaves a half-written state file.
    let tmp = dir.join(format!("{STATE_FILE}.tmp"));
    std::fs::write(&tmp, &out).map_err(io(&tmp, "cannot write"))?;
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(io(&tmp, "cannot sync"))?;
    std::fs::rename(&tmp, &path).map_err(io(&path, "cannot rename into place"))
}

/// Reads and checks `DIR/state.json`.
pub fn read_state<T: DeserializeOwned>(dir: &Path) -> Result<(Header, T), SnapshotError> {
    let path = dir.join(STATE_FILE);
    let bytes = std::fs::read(&path).map_err(io(&path, "cannot read"))?;
    let split =
        bytes
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| SnapshotError::NotASnapshot {
                path: path.clone(),
                why: "no header line".into(),
            })?;
    let (head, body) = (&bytes[..split], &bytes[split + 1..]);
    // The version fields first, so that a future header layout still gives a version error.
    let probe: serde_json::Value =
        serde_json::from_slice(head).map_err(|e| SnapshotError::NotASnapshot {
            path: path.clone(),
            why: format!("header: {e}"),
        })?;
    if probe.get("format").and_then(|f| f.as_str()) != Some(FORMAT) {
        return Err(SnapshotError::NotASnapshot {
            path,
            why: format!("the header does not say \"format\": \"{FORMAT}\""),
        });
    }
    let found = probe
        .get("format_version")
        .and_then(|v| v.as_u64())
        .unwrap_or(0) as u32;
    if found != FORMAT_VERSION {
        let writer = probe
            .get("popek_version")
            .and_then(|v| v.as_str())
            .unwrap_or("unknown")
            .to_string();
        return Err(SnapshotError::Version {
            path,
            found,
            writer,
        });
    }
    let header: Header =
        serde_json::from_value(probe).map_err(|e| SnapshotError::NotASnapshot {
            path: path.clone(),
            why: format!("header: {e}"),
        })?;
    let body = body.strip_suffix(b"\n").unwrap_or(body);
    let crc = format!("{:08x}", crc32fast::hash(body));
    if crc != header.body_crc32 {
        return Err(SnapshotError::Corrupt {
            path,
            why: format!("checksum {crc}, the header says {}", header.body_crc32),
        });
    }
    let state = serde_json::from_slice(body).map_err(|e| SnapshotError::Corrupt {
        path: path.clone(),
        why: e.to_string(),
    })?;
    Ok((header, state))
}

/// A fresh header for a snapshot of `memory_bytes` of RAM.
pub fn header(kind: Kind, base: Option<&Path>, memory_bytes: u64) -> Header {
    Header {
        format: FORMAT.into(),
        format_version: FORMAT_VERSION,
        popek_version: env!("CARGO_PKG_VERSION").into(),
        kind,
        base: base.map(|b| b.display().to_string()),
        memory_bytes,
        body_crc32: String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("popek-fmt-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn state_round_trips_and_each_damage_has_its_error() {
        let d = dir("rt");
        write_state(&d, header(Kind::Full, None, 4096), &vec![1u32, 2, 3]).unwrap();
        let (h, body): (Header, Vec<u32>) = read_state(&d).unwrap();
        assert_eq!((h.kind, body), (Kind::Full, vec![1, 2, 3]));

        let path = d.join(STATE_FILE);
        let good = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, good.replace("[1,2,3]", "[1,2,4]")).unwrap();
        let e = read_state::<Vec<u32>>(&d).unwrap_err();
        assert!(matches!(e, SnapshotError::Corrupt { .. }), "{e}");
        assert!(e.to_string().contains("checksum"), "{e}");

        std::fs::write(
            &path,
            good.replace("\"format_version\":1", "\"format_version\":7"),
        )
        .unwrap();
        let e = read_state::<Vec<u32>>(&d).unwrap_err();
        assert!(matches!(e, SnapshotError::Version { found: 7, .. }), "{e}");

        std::fs::write(&path, "hello\n").unwrap();
        assert!(matches!(
            read_state::<Vec<u32>>(&d).unwrap_err(),
            SnapshotError::NotASnapshot { .. }
        ));
        let _ = std::fs::remove_dir_all(d);
    }
}
