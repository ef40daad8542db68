//! The crate's error type: every variant names the image file it is about.

use std::io;
use std::path::PathBuf;

use crate::qcow2::HeaderError;

/// Why an image could not be opened, read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The file could not be opened.
    #[error("Cannot open {}", path.display())]
    Open {
        /// The image file.
        path: PathBuf,
        /// What the host said.
        #[source]
        source: io::Error,
    },
    /// A host I/O operation on the file failed.
    #[error("{op} {} failed", path.display())]
    Io {
        /// The image file.
        path: PathBuf,
        /// What was being done ("Reading", "Writing", "Syncing", ...).
        op: &'static str,
        /// What the host said.
        #[source]
        source: io::Error,
    },
    /// A new image file could not be created (it exists already, say).
    #[error("Cannot create {}", path.display())]
    Create {
        /// The image file.
        path: PathBuf,
        /// What the host said.
        #[source]
        source: io::Error,
    },
    /// A new image was asked for with parameters the format cannot hold.
    #[error("Cannot create {}: {what}", path.display())]
    CannotCreate {
        /// The image file.
        path: PathBuf,
        /// What is wrong, as a sentence.
        what: String,
    },
    /// A format name that is neither `raw` nor `qcow2`.
    #[error("Unknown disk image format \"{0}\" (expected raw or qcow2)")]
    UnknownFormat(String),
    /// The qcow2 header is invalid or asks for something this crate does not do.
    #[error("Cannot use the qcow2 header of {}", path.display())]
    Header {
        /// The image file.
        path: PathBuf,
        /// What is wrong with the header.
        #[source]
        source: HeaderError,
    },
    /// The image's metadata is inconsistent (tables beyond the end of the file, misaligned
    /// entries, ...). `qemu-img check` may be able to say more.
    #[error("Image {} is corrupt: {what}", path.display())]
    Corrupt {
        /// The image file.
        path: PathBuf,
        /// What is inconsistent.
        what: String,
    },
    /// The image uses a valid qcow2 feature this crate does not implement.
    #[error("Image {} uses {what}, which is not supported", path.display())]
    Unsupported {
        /// The image file.
        path: PathBuf,
        /// The feature, as a noun phrase.
        what: String,
    },
    /// A read or a copy-on-write met a compressed cluster.
    #[error(
        "Cannot use {}: compressed clusters are not supported (decompress it with \
         `qemu-img convert -O qcow2`)",
        path.display()
    )]
    Compressed {
        /// The image file.
        path: PathBuf,
    },
    /// The backing file of an overlay could not be opened.
    #[error("Cannot open backing file {} of {}", backing.display(), path.display())]
    Backing {
        /// The overlay.
        path: PathBuf,
        /// The backing file, as resolved.
        backing: PathBuf,
        /// Why it could not be opened.
        #[source]
        source: Box<Error>,
    },
    /// The backing chain is longer than [`crate::MAX_BACKING_DEPTH`].
    #[error("Backing chain of {} is deeper than {limit} files", path.display())]
    BackingTooDeep {
        /// The image whose backing file would exceed the limit.
        path: PathBuf,
        /// The limit.
        limit: usize,
    },
    /// The backing chain comes back to a file that is already in it.
    #[error("Backing chain loops: {} is already in it", path.display())]
    BackingCycle {
        /// The file met twice.
        path: PathBuf,
    },
    /// A write, discard or write-zeroes on an image opened read-only.
    #[error("Image {} is open read-only", path.display())]
    ReadOnly {
        /// The image file.
        path: PathBuf,
    },
    /// An access that does not lie within the virtual size.
    #[error(
        "Access of {len} bytes at offset {offset} is beyond the end of {} ({size} bytes)",
        path.display()
    )]
    OutOfRange {
        /// The image file.
        path: PathBuf,
        /// Start of the access.
        offset: u64,
        /// Length of the access.
        len: u64,
        /// Virtual size of the image.
        size: u64,
    },
    /// An earlier metadata write failed (the host disk may be full): the image refuses writes
    /// until it is reopened.
    #[error("Image {} refuses writes after a failed metadata write; reopen it", path.display())]
    MetadataWriteFailed {
        /// The image file.
        path: PathBuf,
    },
    /// A write would put a qcow2 signature at the start of an image whose format was probed as
    /// raw, which would make the next probe open it as qcow2 (and follow a backing file a guest
    /// chose).
    #[error(
        "Refusing to write a qcow2 signature at the start of {}, whose format was probed as raw \
         (open it with an explicit format)",
        path.display()
    )]
    ProbedSignature {
        /// The image file.
        path: PathBuf,
    },
}
