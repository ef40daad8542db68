//! Disk image files behind a virtio-blk device: raw and qcow2, with qcow2 backing chains.
//!
//! [`open`] gives a [`DiskImage`]: byte-addressed reads and writes within the virtual size,
//! flush, discard, write-zeroes and a serial. The format is given in [`OpenOptions`] or probed
//! from the first bytes (the qcow2 magic `QFI\xfb`, else raw). Probing a file a guest can write
//! is what QEMU warns about: a guest that writes a qcow2 header into a raw disk would choose the
//! backing file of the next probe. Name the format when the image is not trusted; an image
//! probed as raw refuses writes that would put the qcow2 magic at its start
//! ([`Error::ProbedSignature`]).
//!
//! # Why qcow2 is written here
//! The maintained Rust qcow2 crates are async and tokio-based (`qcow2-rs`), which the VMM's
//! synchronous device threads do not run, and the synchronous ones are abandoned. The subset a
//! VMM needs is small, so it lives here.
//!
//! # Raw
//! The file's length is the disk's size; accesses beyond it are refused
//! ([`Error::OutOfRange`]). Discard and write-zeroes punch holes
//! (`fallocate(PUNCH_HOLE | KEEP_SIZE)`), or write zeroes where the host cannot.
//!
//! # qcow2
//! Versions 3 and 2, read and write, any cluster size (512 B to 2 MiB) and any refcount width
//! (1 to 64 bits). A backing file is opened read-only and never modified; its format comes from
//! the backing-format header extension, or is probed. Chains may be up to
//! [`MAX_BACKING_DEPTH`] backing files deep; a loop is refused.
//!
//! Refused at open, before anything is written: a bad magic, version or `cluster_bits`,
//! encryption, the dirty bit (the image needs `qemu-img check -r all`), the corrupt bit,
//! external data files, non-zlib compression types, extended L2 entries, unknown incompatible
//! features, misaligned or out-of-file L1 and refcount tables and L1 entries, an L1 table too
//! small for the virtual size, and malformed header extensions. Entries that point outside the
//! file are reported as [`Error::Corrupt`] when they are used. Images with internal snapshots
//! open read-only only. Compressed clusters are not read ([`Error::Compressed`]) and never
//! written. Unknown auto-clear feature bits are cleared when an image is opened for writing,
//! as the format requires.
//!
//! Writes allocate clusters at the end of the file, with copy-on-write from the backing file
//! for partial clusters. Refcounts are kept exact (no lazy refcounts, no dirty bit): new
//! refcount blocks are placed so they describe themselves, and the refcount table is moved to a
//! larger one when it is full. Images written here pass `qemu-img check` without errors or
//! leaks. Discard and write-zeroes turn whole clusters into zero clusters (v3) and punch their
//! host space, or write zeroes (v2 over a backing file, and partial clusters).
//!
//! Crash safety: every operation writes its refcounts, its data and any new L2 tables first,
//! then, if it allocated anything, waits for them (`fdatasync`) before it writes the L2 and L1
//! entries (and refcount-table entries) that make them reachable. A crash can leak clusters but
//! never leaves an entry pointing to unwritten data or to a cluster with a zero refcount.
//! [`DiskImage::flush`] makes everything stable. L2 tables and refcount blocks are cached in
//! memory and written through. If a metadata write fails (a full host disk, say), the image
//! refuses further writes until it is reopened ([`Error::MetadataWriteFailed`]).
//!
//! # Creating images
//! [`create_qcow2`] writes an empty qcow2 version 3 image (64 KiB clusters, 16-bit refcounts),
//! optionally an overlay on a backing file whose format it records, as `qemu-img create -f
//! qcow2 [-b BACKING -F FORMAT]` does; it never replaces an existing file. [`backing_file`]
//! reads an image's backing file from its header without opening the chain.
//!
//! Not done: reading compressed clusters, writing images with internal snapshots, encryption,
//! external data files, extended L2 entries, zstd compression, file locking against another
//! process using the same image.

mod error;
mod host;
pub mod qcow2;
mod raw;

use std::fmt;
use std::path::Path;
use std::str::FromStr;

pub use error::Error;
pub use qcow2::{HeaderError, Qcow2Header, backing_file, create_qcow2};

use host::HostFile;

/// How many backing files deep a qcow2 chain may go below the image opened.
pub const MAX_BACKING_DEPTH: usize = 16;

/// A disk image format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// The file holds the disk's bytes as they are.
    Raw,
    /// QEMU's copy-on-write format.
    Qcow2,
}

impl FromStr for Format {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "raw" => Ok(Self::Raw),
            "qcow2" => Ok(Self::Qcow2),
            other => Err(Error::UnknownFormat(other.to_owned())),
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Raw => "raw",
            Self::Qcow2 => "qcow2",
        })
    }
}

/// How to open an image.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpenOptions {
    /// The format; `None` probes it from the file's first bytes.
    pub format: Option<Format>,
    /// Open without write access: writes, discards and write-zeroes fail with
    /// [`Error::ReadOnly`].
    pub read_only: bool,
}

/// An open disk image, addressed in bytes.
///
/// Every access must lie within [`DiskImage::size`], else it fails with
/// [`Error::OutOfRange`].
pub trait DiskImage: Send {
    /// The virtual size in bytes.
    fn size(&self) -> u64;

    /// Whether the image was opened read-only.
    fn read_only(&self) -> bool;

    /// Fills `buf` from the disk at `offset`.
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> Result<(), Error>;

    /// Writes `buf` to the disk at `offset`.
    fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<(), Error>;

    /// Puts all completed writes, data and metadata, on stable storage.
    fn flush(&mut self) -> Result<(), Error>;

    /// Drops `len` bytes at `offset`, deallocating them where the format allows. They read as
    /// zeroes afterwards.
    fn discard(&mut self, offset: u64, len: u64) -> Result<(), Error>;

    /// Makes `len` bytes at `offset` read as zeroes.
    fn write_zeroes(&mut self, offset: u64, len: u64) -> Result<(), Error>;

    /// A stable serial of at most 20 bytes for `VIRTIO_BLK_T_GET_ID`, derived from the file's
    /// device and inode numbers.
    fn id(&self) -> String;

    /// The image's format.
    fn format(&self) -> Format;
}

/// Opens the image at `path`, and for a qcow2 overlay its backing chain (read-only).
///
/// When `opts.format` is `Some(Format::Raw)` a file with the qcow2 magic is still opened as raw,
/// as asked; `Some(Format::Qcow2)` on a file that is not qcow2 is an error.
pub fn open(path: &Path, opts: &OpenOptions) -> Result<Box<dyn DiskImage>, Error> {
    open_in_chain(path, opts, &mut Vec::new())
}

/// Opens one image of a chain; `chain` holds the (device, inode) of the images above it.
pub(crate) fn open_in_chain(
    path: &Path,
    opts: &OpenOptions,
    chain: &mut Vec<(u64, u64)>,
) -> Result<Box<dyn DiskImage>, Error> {
    let host = HostFile::open(path, opts.read_only)?;
    let identity = host.identity()?;
    if chain.contains(&identity) {
        return Err(Error::BackingCycle {
            path: path.to_owned(),
        });
    }
    chain.push(identity);
    let format = match opts.format {
        Some(format) => format,
        None => probe(&host)?,
    };
    Ok(match format {
        Format::Raw => Box::new(raw::RawImage::new(
            host,
            opts.read_only,
            opts.format.is_none(),
        )?),
        Format::Qcow2 => Box::new(qcow2::Qcow2Image::open(host, opts.read_only, chain)?),
    })
}

/// qcow2 if the file starts with its magic, else raw.
fn probe(host: &HostFile) -> Result<Format, Error> {
    let mut magic = [0u8; 4];
    host.read_at(&mut magic, 0)?;
    Ok(if magic == qcow2::QCOW2_MAGIC {
        Format::Qcow2
    } else {
        Format::Raw
    })
}

/// Checks that `len` bytes at `offset` lie within `size`.
pub(crate) fn check_range(path: &Path, offset: u64, len: u64, size: u64) -> Result<(), Error> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(Error::OutOfRange {
            path: path.to_owned(),
            offset,
            len,
            size,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_names_round_trip() {
        for format in [Format::Raw, Format::Qcow2] {
            assert_eq!(format.to_string().parse::<Format>().unwrap(), format);
        }
        assert!(
            matches!("vmdk".parse::<Format>(), Err(Error::UnknownFormat(name)) if name == "vmdk")
        );
    }

    #[test]
    fn range_check_catches_overflow() {
        let path = Path::new("x");
        assert!(check_range(path, 0, 10, 10).is_ok());
        assert!(check_range(path, 10, 0, 10).is_ok());
        assert!(check_range(path, 1, 10, 10).is_err());
        assert!(check_range(path, u64::MAX, 2, u64::MAX).is_err());
    }
}
