//! Creating empty qcow2 images (optionally overlays on a backing file), and reading an image's
//! backing file without opening its chain.
//!
//! The layout is QEMU's for a fresh image: the header (with its extensions and the backing file
//! name) in cluster 0, the refcount table in cluster 1, the one refcount block in cluster 2 and
//! the L1 table from cluster 3, all with refcount 1. No L2 table exists yet: every cluster reads
//! from the backing file (or as zeroes) until it is written.

use std::ffi::OsStr;
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::header::{EXT_BACKING_FORMAT, MAX_BACKING_NAME, MAX_L1_BYTES};
use super::{MAX_CLUSTER_SIZE, QCOW2_MAGIC, Qcow2Header};
use crate::host::HostFile;
use crate::{Error, Format};

/// log2 of the cluster size of the images created here (64 KiB, QEMU's default).
pub const CREATE_CLUSTER_BITS: u32 = 16;
/// log2 of the refcount width of the images created here (16 bits, QEMU's default).
const REFCOUNT_ORDER: u32 = 4;
/// The version 3 header with the compression-type byte, padded: what QEMU writes.
const HEADER_LEN: usize = 112;

/// Creates a qcow2 version 3 image at `path` of `size` virtual bytes, every cluster
/// unallocated: it reads as zeroes, or as `backing` when one is given.
///
/// The backing file's name is stored as given (a relative name is resolved against the
/// directory of `path` when the image is opened) with its format in the backing-format header
/// extension, so it is never probed. The backing file is not opened here: callers pass its
/// virtual size as `size` when the overlay should match it.
///
/// Refuses to replace an existing file. The image is on stable storage when this returns; on
/// failure the partly written file is removed.
pub fn create_qcow2(path: &Path, size: u64, backing: Option<(&Path, Format)>) -> Result<(), Error> {
    let layout = Layout::new(path, size, backing)?;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o666)
        .open(path)
        .map_err(|source| Error::Create {
            path: path.to_owned(),
            source,
        })?;
    let result = layout.write(&file).map_err(|source| Error::Io {
        path: path.to_owned(),
        op: "Writing",
        source,
    });
    if result.is_err() {
        drop(file);
        let _ = std::fs::remove_file(path);
    }
    result
}

/// The backing file of the image at `path`, resolved against the image's directory, and its
/// format when the image names it; `None` for a qcow2 image without one and for any file that
/// does not start with the qcow2 magic (a raw image).
///
/// Only the header is read: the backing file itself is neither opened nor checked.
pub fn backing_file(path: &Path) -> Result<Option<(PathBuf, Option<Format>)>, Error> {
    let host = HostFile::open(path, true)?;
    let len = host.len()?;
    let mut first = vec![0u8; len.min(MAX_CLUSTER_SIZE) as usize];
    host.read_at(&mut first, 0)?;
    if !first.starts_with(&QCOW2_MAGIC) {
        return Ok(None);
    }
    let header = Qcow2Header::parse(&first).map_err(|source| Error::Header {
        path: path.to_owned(),
        source,
    })?;
    let Some(name) = header.backing_file else {
        return Ok(None);
    };
    let unsupported = |what: String| Error::Unsupported {
        path: path.to_owned(),
        what,
    };
    let backing = resolve_backing(path, &name).map_err(unsupported)?;
    let format = match header.backing_format.as_deref() {
        None => None,
        Some(name) => Some(
            name.parse::<Format>()
                .map_err(|_| unsupported(format!("backing file format \"{name}\"")))?,
        ),
    };
    Ok(Some((backing, format)))
}

/// Where the backing file `name` stored in the image at `image` is: relative names are
/// relative to the image's directory. Protocols and JSON descriptions are refused, as a noun
/// phrase for [`Error::Unsupported`].
pub(crate) fn resolve_backing(image: &Path, name: &[u8]) -> Result<PathBuf, String> {
    let name = Path::new(OsStr::from_bytes(name));
    let text = name.to_string_lossy();
    if text.starts_with("json:") || text.contains("://") {
        return Err(format!("backing file \"{text}\" (a protocol or JSON)"));
    }
    Ok(match image.parent() {
        Some(dir) if name.is_relative() => dir.join(name),
        _ => name.to_owned(),
    })
}

/// What a new image holds.
#[derive(Debug)]
struct Layout {
    /// Cluster 0: the header, its extensions and the backing file name.
    header: Vec<u8>,
    /// Clusters in use: header, refcount table, refcount block, L1 table.
    clusters: u64,
}

impl Layout {
    fn new(path: &Path, size: u64, backing: Option<(&Path, Format)>) -> Result<Self, Error> {
        let invalid = |what: String| Error::CannotCreate {
            path: path.to_owned(),
            what,
        };
        let cluster_size = 1u64 << CREATE_CLUSTER_BITS;
        // One L2 table maps cluster_size / 8 clusters.
        let l2_coverage = 1u64 << (2 * CREATE_CLUSTER_BITS - 3);
        let l1_size = size.div_ceil(l2_coverage);
        if size > i64::MAX as u64 || l1_size * 8 > MAX_L1_BYTES {
            return Err(invalid(format!(
                "a virtual size of {size} bytes is too large"
            )));
        }
        let l1_clusters = (l1_size * 8).div_ceil(cluster_size);
        let clusters = 3 + l1_clusters;

        let mut h = vec![0u8; HEADER_LEN];
        let put32 =
            |h: &mut [u8], at: usize, v: u32| h[at..at + 4].copy_from_slice(&v.to_be_bytes());
        let put64 =
            |h: &mut [u8], at: usize, v: u64| h[at..at + 8].copy_from_slice(&v.to_be_bytes());
        h[0..4].copy_from_slice(&QCOW2_MAGIC);
        put32(&mut h, 4, 3);
        put32(&mut h, 20, CREATE_CLUSTER_BITS);
        put64(&mut h, 24, size);
        put32(&mut h, 36, l1_size as u32);
        put64(&mut h, 40, 3 * cluster_size);
        put64(&mut h, 48, cluster_size);
        put32(&mut h, 56, 1);
        put32(&mut h, 96, REFCOUNT_ORDER);
        put32(&mut h, 100, HEADER_LEN as u32);
        if let Some((name, format)) = backing {
            let format = format.to_string();
            h.extend_from_slice(&EXT_BACKING_FORMAT.to_be_bytes());
            h.extend_from_slice(&(format.len() as u32).to_be_bytes());
            h.extend_from_slice(format.as_bytes());
            h.resize(h.len().next_multiple_of(8), 0);
            // The end of the extensions.
            h.extend_from_slice(&[0; 8]);
            let name = name.as_os_str().as_bytes();
            if name.is_empty() || name.len() > MAX_BACKING_NAME as usize || name.contains(&0) {
                return Err(invalid(format!(
                    "backing file name \"{}\" is empty, longer than {MAX_BACKING_NAME} bytes or \
                     holds a NUL",
                    String::from_utf8_lossy(name)
                )));
            }
            let name_offset = h.len() as u64;
            put64(&mut h, 8, name_offset);
            put32(&mut h, 16, name.len() as u32);
            h.extend_from_slice(name);
        } else {
            h.extend_from_slice(&[0; 8]);
        }
        Ok(Self {
            header: h,
            clusters,
        })
    }

    /// Writes the image into the empty `file` and puts it on stable storage.
    fn write(&self, file: &File) -> std::io::Result<()> {
        let cluster_size = 1u64 << CREATE_CLUSTER_BITS;
        // The refcount table's one entry: the block in cluster 2.
        file.write_all_at(&(2 * cluster_size).to_be_bytes(), cluster_size)?;
        // The block's 16-bit refcounts: 1 for every cluster of metadata.
        let refcounts: Vec<u8> = (0..self.clusters)
            .flat_map(|_| 1u16.to_be_bytes())
            .collect();
        file.write_all_at(&refcounts, 2 * cluster_size)?;
        // The L1 table is all zeroes: the file's length covers it without writing.
        file.set_len(self.clusters * cluster_size)?;
        // The header last, so that a file cut short is not a qcow2 image at all.
        file.write_all_at(&self.header, 0)?;
        file.sync_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_parses_back() {
        let size = (5 << 30) + 512;
        let layout = Layout::new(
            Path::new("x"),
            size,
            Some((Path::new("base.raw"), Format::Raw)),
        )
        .unwrap();
        let header = Qcow2Header::parse(&layout.header).unwrap();
        assert_eq!(header.version, 3);
        assert_eq!(header.size, size);
        assert_eq!(header.cluster_bits, CREATE_CLUSTER_BITS);
        assert_eq!(header.refcount_order, REFCOUNT_ORDER);
        assert_eq!(header.l1_size, 11);
        assert_eq!(header.backing_file.as_deref(), Some(&b"base.raw"[..]));
        assert_eq!(header.backing_format.as_deref(), Some("raw"));
        assert_eq!(layout.clusters, 4);
    }

    #[test]
    fn sizes_beyond_the_l1_limit_are_refused() {
        // 32 MiB of L1 entries, each mapping 512 MiB: 2 PiB.
        assert!(Layout::new(Path::new("x"), 1 << 51, None).is_ok());
        assert!(matches!(
            Layout::new(Path::new("x"), (1 << 51) + 1, None),
            Err(Error::CannotCreate { .. })
        ));
        assert!(Layout::new(Path::new("x"), u64::MAX, None).is_err());
    }

    #[test]
    fn backing_names_qemu_would_refuse_are_refused() {
        let long = "a".repeat(MAX_BACKING_NAME as usize + 1);
        for name in ["", long.as_str()] {
            assert!(matches!(
                Layout::new(
                    Path::new("x"),
                    1 << 20,
                    Some((Path::new(name), Format::Raw))
                ),
                Err(Error::CannotCreate { .. })
            ));
        }
    }
}
