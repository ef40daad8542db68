//! The qcow2 header and its extensions, parsed and checked as a pure function over bytes.
//!
//! Layout (all fields big-endian): magic, version, backing file offset and size, cluster_bits,
//! virtual size, crypt method, L1 size and offset, refcount table offset and clusters, snapshot
//! count and offset (72 bytes: version 2); then incompatible, compatible and auto-clear
//! features, refcount order and header length (104 bytes: version 3), and an optional
//! compression type. Header extensions follow up to the backing file name or the end of the
//! first cluster.

/// The four bytes every qcow2 image starts with.
pub const QCOW2_MAGIC: [u8; 4] = *b"QFI\xfb";

/// Byte offset of the refcount table offset (u64) and cluster count (u32) in the header.
pub(crate) const REFCOUNT_TABLE_FIELD: u64 = 48;
/// Byte offset of the auto-clear feature bits (u64) in a version 3 header.
pub(crate) const AUTOCLEAR_FIELD: u64 = 88;

const V2_HEADER_LEN: usize = 72;
const V3_HEADER_LEN: usize = 104;
/// QEMU's limit on the L1 table (32 MiB).
pub(crate) const MAX_L1_BYTES: u64 = 32 << 20;
/// QEMU's limit on the refcount table (8 MiB).
pub(crate) const MAX_REFCOUNT_TABLE_BYTES: u64 = 8 << 20;
/// QEMU's limit on a backing file name.
pub(crate) const MAX_BACKING_NAME: u32 = 1023;

const INCOMPAT_DIRTY: u64 = 1 << 0;
const INCOMPAT_CORRUPT: u64 = 1 << 1;
const INCOMPAT_DATA_FILE: u64 = 1 << 2;
const INCOMPAT_COMPRESSION: u64 = 1 << 3;
const INCOMPAT_EXTL2: u64 = 1 << 4;

const EXT_END: u32 = 0;
pub(crate) const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;

/// What is wrong with a qcow2 header, or what it asks for that is not supported.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HeaderError {
    /// Fewer bytes than the header needs.
    #[error("Header is truncated: {len} bytes, {need} needed")]
    Truncated {
        /// Bytes available.
        len: usize,
        /// Bytes needed.
        need: usize,
    },
    /// Not the qcow2 magic.
    #[error("Not a qcow2 image (magic {0:#010x})")]
    BadMagic(u32),
    /// A version other than 2 or 3.
    #[error("qcow2 version {0} is not supported (2 and 3 are)")]
    Version(u32),
    /// `cluster_bits` outside 9..=21.
    #[error("cluster_bits {0} is outside 9..=21")]
    ClusterBits(u32),
    /// A version 3 header length below 104, not a multiple of 8, or beyond the first cluster.
    #[error("Header length {0} is invalid")]
    HeaderLength(u32),
    /// A refcount order above 6 (64-bit refcounts).
    #[error("Refcount order {0} is above 6")]
    RefcountOrder(u32),
    /// An encrypted image.
    #[error("Encrypted images are not supported (crypt_method {0})")]
    Encrypted(u32),
    /// The dirty bit: refcounts may be stale after a crash with lazy refcounts.
    #[error("Image was not closed cleanly (dirty bit set); it needs `qemu-img check -r all` first")]
    Dirty,
    /// The corrupt bit, set by QEMU when it found inconsistent metadata.
    #[error("Image is marked corrupt; it needs `qemu-img check -r all` first")]
    CorruptBit,
    /// A known incompatible feature this crate does not implement.
    #[error("Incompatible feature \"{0}\" is not supported")]
    Feature(&'static str),
    /// Incompatible feature bits this crate does not know.
    #[error("Unknown incompatible features {0:#x}")]
    UnknownFeatures(u64),
    /// A compression type set without its incompatible-feature bit.
    #[error("Compression type {0} is set without the compression-type feature bit")]
    CompressionType(u8),
    /// A table offset that is not a multiple of the cluster size.
    #[error("{what} offset {offset:#x} is not aligned to the cluster size")]
    Unaligned {
        /// Which table.
        what: &'static str,
        /// Its offset.
        offset: u64,
    },
    /// A virtual size this format cannot address.
    #[error("Virtual size {0} is too large")]
    SizeTooLarge(u64),
    /// An L1 table too small for the virtual size.
    #[error("L1 table has {entries} entries, {need} needed for the virtual size")]
    L1TooSmall {
        /// Entries in the header.
        entries: u32,
        /// Entries the virtual size needs.
        need: u64,
    },
    /// An L1 table above QEMU's limit.
    #[error("L1 table of {0} entries is too large")]
    L1TooLarge(u32),
    /// A refcount table with no clusters or above QEMU's limit.
    #[error("Refcount table of {0} clusters is invalid")]
    RefcountTableSize(u32),
    /// A backing file name outside the first cluster or too long.
    #[error("Backing file name ({size} bytes at {offset:#x}) is invalid")]
    BackingName {
        /// Its offset.
        offset: u64,
        /// Its size.
        size: u32,
    },
    /// A header extension that overruns its area or is malformed.
    #[error("Header extension {kind:#010x} at {offset:#x} is malformed")]
    Extension {
        /// The extension type.
        kind: u32,
        /// Its offset in the file.
        offset: usize,
    },
}

/// A checked qcow2 header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Qcow2Header {
    /// 2 or 3.
    pub version: u32,
    /// log2 of the cluster size, 9..=21.
    pub cluster_bits: u32,
    /// Virtual size in bytes.
    pub size: u64,
    /// Entries in the L1 table.
    pub l1_size: u32,
    /// Offset of the L1 table in the file.
    pub l1_table_offset: u64,
    /// Offset of the refcount table in the file.
    pub refcount_table_offset: u64,
    /// Clusters of the refcount table.
    pub refcount_table_clusters: u32,
    /// Internal snapshots.
    pub nb_snapshots: u32,
    /// Offset of the snapshot table.
    pub snapshots_offset: u64,
    /// Incompatible feature bits (always 0 once parsed: any set bit is refused).
    pub incompatible_features: u64,
    /// Compatible feature bits (bit 0: lazy refcounts).
    pub compatible_features: u64,
    /// Auto-clear feature bits.
    pub autoclear_features: u64,
    /// log2 of the refcount width in bits, 0..=6 (4 in version 2).
    pub refcount_order: u32,
    /// Length of the fixed header in bytes.
    pub header_length: u32,
    /// The backing file name, as stored (bytes, relative to the image's directory unless
    /// absolute).
    pub backing_file: Option<Vec<u8>>,
    /// The backing file's format, from the backing-format extension.
    pub backing_format: Option<String>,
}

fn be32(buf: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]])
}

fn be64(buf: &[u8], at: usize) -> u64 {
    (u64::from(be32(buf, at)) << 32) | u64::from(be32(buf, at + 4))
}

impl Qcow2Header {
    /// Parses and checks a header from the start of an image: `buf` holds the first cluster,
    /// or the whole file if it is shorter (missing bytes then read as the end of the header
    /// extensions). Never panics, whatever the bytes.
    pub fn parse(buf: &[u8]) -> Result<Self, HeaderError> {
        let need = |need: usize| -> Result<(), HeaderError> {
            if buf.len() < need {
                Err(HeaderError::Truncated {
                    len: buf.len(),
                    need,
                })
            } else {
                Ok(())
            }
        };
        need(V2_HEADER_LEN)?;
        let magic = be32(buf, 0);
        if magic.to_be_bytes() != QCOW2_MAGIC {
            return Err(HeaderError::BadMagic(magic));
        }
        let version = be32(buf, 4);
        if version != 2 && version != 3 {
            return Err(HeaderError::Version(version));
        }
        let cluster_bits = be32(buf, 20);
        if !(9..=21).contains(&cluster_bits) {
            return Err(HeaderError::ClusterBits(cluster_bits));
        }
        let cluster_size = 1u64 << cluster_bits;
        let mut header = Self {
            version,
            cluster_bits,
            size: be64(buf, 24),
            l1_size: be32(buf, 36),
            l1_table_offset: be64(buf, 40),
            refcount_table_offset: be64(buf, 48),
            refcount_table_clusters: be32(buf, 56),
            nb_snapshots: be32(buf, 60),
            snapshots_offset: be64(buf, 64),
            incompatible_features: 0,
            compatible_features: 0,
            autoclear_features: 0,
            refcount_order: 4,
            header_length: V2_HEADER_LEN as u32,
            backing_file: None,
            backing_format: None,
        };
        if version == 3 {
            need(V3_HEADER_LEN)?;
            header.header_length = be32(buf, 100);
            let len = u64::from(header.header_length);
            if len < V3_HEADER_LEN as u64 || !len.is_multiple_of(8) || len > cluster_size {
                return Err(HeaderError::HeaderLength(header.header_length));
            }
            need(header.header_length as usize)?;
            header.incompatible_features = be64(buf, 72);
            header.compatible_features = be64(buf, 80);
            header.autoclear_features = be64(buf, 88);
            header.refcount_order = be32(buf, 96);
            check_features(header.incompatible_features)?;
            if header.header_length as usize > V3_HEADER_LEN && buf[V3_HEADER_LEN] != 0 {
                return Err(HeaderError::CompressionType(buf[V3_HEADER_LEN]));
            }
        }
        if header.refcount_order > 6 {
            return Err(HeaderError::RefcountOrder(header.refcount_order));
        }
        let crypt_method = be32(buf, 32);
        if crypt_method != 0 {
            return Err(HeaderError::Encrypted(crypt_method));
        }
        header.check_tables(cluster_size)?;
        header.parse_backing_and_extensions(buf, cluster_size)?;
        Ok(header)
    }

    /// Checks the sizes and alignments of the L1, refcount and snapshot tables.
    fn check_tables(&self, cluster_size: u64) -> Result<(), HeaderError> {
        let aligned = |what, offset: u64| {
            if offset.is_multiple_of(cluster_size) {
                Ok(())
            } else {
                Err(HeaderError::Unaligned { what, offset })
            }
        };
        if self.size > i64::MAX as u64 {
            return Err(HeaderError::SizeTooLarge(self.size));
        }
        // One L2 table maps cluster_size / 8 clusters.
        let l2_coverage_bits = 2 * self.cluster_bits - 3;
        let need = self.size.div_ceil(1u64 << l2_coverage_bits);
        if u64::from(self.l1_size) * 8 > MAX_L1_BYTES {
            return Err(HeaderError::L1TooLarge(self.l1_size));
        }
        if u64::from(self.l1_size) < need {
            return Err(HeaderError::L1TooSmall {
                entries: self.l1_size,
                need,
            });
        }
        aligned("L1 table", self.l1_table_offset)?;
        aligned("Refcount table", self.refcount_table_offset)?;
        let clusters = self.refcount_table_clusters;
        if clusters == 0 || u64::from(clusters) * cluster_size > MAX_REFCOUNT_TABLE_BYTES {
            return Err(HeaderError::RefcountTableSize(clusters));
        }
        if self.nb_snapshots > 0 {
            aligned("Snapshot table", self.snapshots_offset)?;
        }
        Ok(())
    }

    /// Reads the backing file name and walks the header extensions.
    fn parse_backing_and_extensions(
        &mut self,
        buf: &[u8],
        cluster_size: u64,
    ) -> Result<(), HeaderError> {
        let backing_offset = be64(buf, 8);
        let backing_size = be32(buf, 16);
        let header_end = u64::from(self.header_length);
        let mut ext_end = cluster_size;
        if backing_offset != 0 {
            let bad = HeaderError::BackingName {
                offset: backing_offset,
                size: backing_size,
            };
            let end = backing_offset
                .checked_add(u64::from(backing_size))
                .ok_or(bad.clone())?;
            if backing_size == 0
                || backing_size > MAX_BACKING_NAME
                || backing_offset < header_end
                || end > cluster_size
            {
                return Err(bad);
            }
            if end > buf.len() as u64 {
                return Err(HeaderError::Truncated {
                    len: buf.len(),
                    need: end as usize,
                });
            }
            self.backing_file = Some(buf[backing_offset as usize..end as usize].to_vec());
            ext_end = backing_offset;
        }
        // Bytes the caller did not have (a file shorter than a cluster) read as zeroes: the end
        // marker, as QEMU sees them.
        let ext_end = ext_end.min(buf.len() as u64) as usize;
        let mut at = header_end as usize;
        while at + 8 <= ext_end {
            let kind = be32(buf, at);
            let len = be32(buf, at + 4) as usize;
            if kind == EXT_END {
                break;
            }
            let data = at + 8;
            let padded = len.div_ceil(8) * 8;
            if padded > ext_end - data {
                return Err(HeaderError::Extension { kind, offset: at });
            }
            if kind == EXT_BACKING_FORMAT {
                let name = std::str::from_utf8(&buf[data..data + len])
                    .map_err(|_| HeaderError::Extension { kind, offset: at })?;
                self.backing_format = Some(name.trim_end_matches('\0').to_owned());
            }
            at = data + padded;
        }
        Ok(())
    }

    /// The cluster size in bytes.
    pub fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }
}

/// Refuses every incompatible feature: none is implemented.
fn check_features(bits: u64) -> Result<(), HeaderError> {
    if bits & INCOMPAT_CORRUPT != 0 {
        return Err(HeaderError::CorruptBit);
    }
    if bits & INCOMPAT_DIRTY != 0 {
        return Err(HeaderError::Dirty);
    }
    for (bit, name) in [
        (INCOMPAT_DATA_FILE, "external data file"),
        (INCOMPAT_COMPRESSION, "compression type (zstd)"),
        (INCOMPAT_EXTL2, "extended L2 entries"),
    ] {
        if bits & bit != 0 {
            return Err(HeaderError::Feature(name));
        }
    }
    if bits != 0 {
        return Err(HeaderError::UnknownFeatures(bits));
    }
    Ok(())
}

#[cfg(test)]
#[path = "header_tests.rs"]
mod tests;
