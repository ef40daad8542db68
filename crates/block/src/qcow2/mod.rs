//! qcow2 images: opening (with the backing chain), reads, and allocating writes.
//!
//! See the crate documentation for what is supported and for the order of writes.

mod cache;
mod create;
mod header;
mod l2;
mod refcount;

use std::ops::Range;

pub use create::{CREATE_CLUSTER_BITS, backing_file, create_qcow2};
pub use header::{HeaderError, QCOW2_MAGIC, Qcow2Header};

use crate::host::{HostFile, serial};
use crate::{DiskImage, Error, Format, MAX_BACKING_DEPTH, OpenOptions, check_range, open_in_chain};
use header::AUTOCLEAR_FIELD;
use l2::{COPIED, Cluster, Mapping, ZERO};
use refcount::Refcounts;

/// The header, its extensions and the backing file name live in the first cluster, which is at
/// most this large.
const MAX_CLUSTER_SIZE: u64 = 1 << 21;

/// An open qcow2 image.
pub(crate) struct Qcow2Image {
    host: HostFile,
    cluster_bits: u32,
    v3: bool,
    size: u64,
    read_only: bool,
    backing: Option<Box<dyn DiskImage>>,
    map: Mapping,
    refs: Refcounts,
    id: String,
    /// A metadata write failed: the file no longer matches the metadata in memory.
    failed: bool,
}

impl Qcow2Image {
    /// Checks the image and opens its backing chain; writes nothing unless all of that
    /// succeeds. `chain` holds the images above this one, this one included.
    pub(crate) fn open(
        host: HostFile,
        read_only: bool,
        chain: &mut Vec<(u64, u64)>,
    ) -> Result<Self, Error> {
        let file_len = host.len()?;
        let mut first = vec![0u8; file_len.min(MAX_CLUSTER_SIZE) as usize];
        host.read_at(&mut first, 0)?;
        let header = Qcow2Header::parse(&first).map_err(|source| Error::Header {
            path: host.path().to_owned(),
            source,
        })?;
        drop(first);
        let cluster_size = header.cluster_size();
        let file_end = file_len.next_multiple_of(cluster_size);
        let capacity = |budget: u64, most: usize| ((budget / cluster_size) as usize).clamp(4, most);
        let map = Mapping::load(
            &host,
            header.cluster_bits,
            header.version == 3,
            header.l1_table_offset,
            header.l1_size,
            file_end,
            capacity(32 << 20, 1024),
        )?;
        let refs = Refcounts::load(
            &host,
            header.cluster_bits,
            header.refcount_order,
            header.refcount_table_offset,
            header.refcount_table_clusters,
            file_len,
            capacity(8 << 20, 256),
        )?;
        let mut image = Self {
            cluster_bits: header.cluster_bits,
            v3: header.version == 3,
            size: header.size,
            read_only,
            backing: None,
            map,
            refs,
            id: String::new(),
            failed: false,
            host,
        };
        image.check_layout()?;
        if header.nb_snapshots > 0 && !read_only {
            return Err(image.unsupported("internal snapshots (open it read-only)"));
        }
        if let Some(name) = &header.backing_file {
            image.backing =
                Some(image.open_backing(name, header.backing_format.as_deref(), chain)?);
        }
        let (dev, ino) = image.host.identity()?;
        image.id = serial(dev, ino);
        if !read_only && header.autoclear_features != 0 {
            // Auto-clear features (persistent bitmaps, ...) describe data this crate does not
            // keep up to date: the format requires clearing them before the first write.
            image.host.write_at(&0u64.to_be_bytes(), AUTOCLEAR_FIELD)?;
        }
        Ok(image)
    }

    /// Checks that the L1 table, the refcount table and the L2 tables do not overlap the
    /// header or each other's tables.
    fn check_layout(&self) -> Result<(), Error> {
        let cluster_size = 1u64 << self.cluster_bits;
        let l1 = self.map.l1_range();
        let reftable = self.refs.table_range();
        if l1.start < cluster_size && !l1.is_empty() || reftable.start < cluster_size {
            return Err(corrupt(
                &self.host,
                "A table overlaps the header".to_owned(),
            ));
        }
        if overlaps(&l1, &reftable) {
            return Err(corrupt(
                &self.host,
                "The L1 and refcount tables overlap".to_owned(),
            ));
        }
        for offset in self.map.l2_offsets() {
            self.check_metadata_overlap("L2 table", offset)?;
        }
        for offset in self.refs.block_offsets() {
            self.check_metadata_overlap("Refcount block", offset)?;
        }
        Ok(())
    }

    /// Refuses a cluster that would overwrite the header, the L1 table or the refcount table.
    fn check_metadata_overlap(&self, what: &str, offset: u64) -> Result<(), Error> {
        let cluster = offset..offset.saturating_add(1 << self.cluster_bits);
        if offset == 0
            || overlaps(&cluster, &self.map.l1_range())
            || overlaps(&cluster, &self.refs.table_range())
        {
            return Err(corrupt(
                &self.host,
                format!("{what} at {offset:#x} overlaps metadata"),
            ));
        }
        Ok(())
    }

    fn open_backing(
        &self,
        name: &[u8],
        format: Option<&str>,
        chain: &mut Vec<(u64, u64)>,
    ) -> Result<Box<dyn DiskImage>, Error> {
        let path = self.host.path();
        if chain.len() > MAX_BACKING_DEPTH {
            return Err(Error::BackingTooDeep {
                path: path.to_owned(),
                limit: MAX_BACKING_DEPTH,
            });
        }
        let backing =
            create::resolve_backing(path, name).map_err(|what| self.unsupported(&what))?;
        let format = match format {
            None => None,
            Some(name) => Some(
                name.parse::<Format>()
                    .map_err(|_| self.unsupported(&format!("backing file format \"{name}\"")))?,
            ),
        };
        let opts = OpenOptions {
            format,
            read_only: true,
        };
        open_in_chain(&backing, &opts, chain).map_err(|source| match source {
            Error::Backing { .. } | Error::BackingCycle { .. } | Error::BackingTooDeep { .. } => {
                source
            }
            source => Error::Backing {
                path: path.to_owned(),
                backing,
                source: Box::new(source),
            },
        })
    }

    fn unsupported(&self, what: &str) -> Error {
        Error::Unsupported {
            path: self.host.path().to_owned(),
            what: what.to_owned(),
        }
    }

    fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// What guest cluster `guest_cluster` maps to, with its host offset checked.
    fn cluster(&mut self, guest_cluster: u64) -> Result<Cluster, Error> {
        let cluster = self.map.lookup(&self.host, guest_cluster)?;
        if let Cluster::Data { host, .. } | Cluster::Zero { host, .. } = cluster
            && host != 0
        {
            if !host.is_multiple_of(self.cluster_size()) {
                return Err(corrupt(
                    &self.host,
                    format!("Data cluster {host:#x} is misaligned"),
                ));
            }
            if host >= self.refs.end() {
                return Err(corrupt(
                    &self.host,
                    format!("Data cluster {host:#x} is beyond the end of the file"),
                ));
            }
            self.check_metadata_overlap("Data cluster", host)?;
        }
        Ok(cluster)
    }

    /// Fills `buf` from the backing file at guest offset `offset`; zeroes past its end or
    /// without one.
    fn read_backing(&mut self, buf: &mut [u8], offset: u64) -> Result<(), Error> {
        let Some(backing) = &mut self.backing else {
            buf.fill(0);
            return Ok(());
        };
        let inside = backing.size().saturating_sub(offset).min(buf.len() as u64) as usize;
        if inside > 0 {
            backing.read_at(&mut buf[..inside], offset)?;
        }
        buf[inside..].fill(0);
        Ok(())
    }

    /// Splits `len` bytes at `offset` into pieces that each lie within one cluster.
    fn pieces(&self, offset: u64, len: u64) -> impl Iterator<Item = Range<u64>> + use<> {
        let cluster_size = self.cluster_size();
        let end = offset + len;
        std::iter::successors(Some(offset), move |&pos| {
            let next = (pos / cluster_size + 1) * cluster_size;
            (next < end).then_some(next)
        })
        .filter(move |_| len > 0)
        .map(move |pos| pos..end.min((pos / cluster_size + 1) * cluster_size))
    }

    fn read_inner(&mut self, buf: &mut [u8], offset: u64) -> Result<(), Error> {
        for piece in self.pieces(offset, buf.len() as u64) {
            let out = &mut buf[(piece.start - offset) as usize..(piece.end - offset) as usize];
            match self.cluster(piece.start >> self.cluster_bits)? {
                Cluster::Data { host, .. } => {
                    let within = piece.start % self.cluster_size();
                    self.host.read_at(out, host + within)?;
                }
                Cluster::Zero { .. } => out.fill(0),
                Cluster::Unallocated => self.read_backing(out, piece.start)?,
                Cluster::Compressed => {
                    return Err(Error::Compressed {
                        path: self.host.path().to_owned(),
                    });
                }
            }
        }
        Ok(())
    }

    /// Writes `data`, which lies within one cluster, at guest offset `offset`.
    fn write_piece(&mut self, data: &[u8], offset: u64) -> Result<(), Error> {
        let cluster_size = self.cluster_size();
        let guest_cluster = offset >> self.cluster_bits;
        let within = (offset % cluster_size) as usize;
        let cluster = self.cluster(guest_cluster)?;
        let reuse = match cluster {
            Cluster::Data { host, copied: true } => {
                return self.host.write_at(data, host + within as u64);
            }
            Cluster::Data { copied: false, .. } => {
                return Err(self.unsupported("clusters shared with internal snapshots"));
            }
            Cluster::Compressed => {
                return Err(Error::Compressed {
                    path: self.host.path().to_owned(),
                });
            }
            Cluster::Zero { host, copied: true } if host != 0 => Some(host),
            Cluster::Zero { .. } | Cluster::Unallocated => None,
        };
        // A new cluster is written whole: the rest comes from what the cluster read as.
        let mut whole;
        let contents = if data.len() as u64 == cluster_size {
            data
        } else {
            whole = vec![0u8; cluster_size as usize];
            if cluster == Cluster::Unallocated {
                self.read_backing(&mut whole, guest_cluster << self.cluster_bits)?;
            }
            whole[within..within + data.len()].copy_from_slice(data);
            &whole
        };
        let target = match reuse {
            Some(host) => {
                self.refs.require_barrier();
                host
            }
            None => self.refs.alloc(&self.host, 1)?,
        };
        self.host.write_at(contents, target)?;
        self.map
            .set(&self.host, &mut self.refs, guest_cluster, target | COPIED)
    }

    fn write_inner(&mut self, buf: &[u8], offset: u64) -> Result<(), Error> {
        for piece in self.pieces(offset, buf.len() as u64) {
            let data = &buf[(piece.start - offset) as usize..(piece.end - offset) as usize];
            self.write_piece(data, piece.start)?;
        }
        Ok(())
    }

    /// Makes the range read as zeroes: whole clusters become zero clusters (version 3) with
    /// their host space punched, the rest is written with zeroes.
    fn zero_inner(&mut self, offset: u64, len: u64) -> Result<(), Error> {
        let cluster_size = self.cluster_size();
        let zeroes = vec![0u8; cluster_size.min(len) as usize];
        for piece in self.pieces(offset, len) {
            let guest_cluster = piece.start >> self.cluster_bits;
            let cluster = self.cluster(guest_cluster)?;
            let already_zero = match cluster {
                Cluster::Zero { .. } => true,
                Cluster::Unallocated => self.backing.is_none(),
                Cluster::Data { .. } | Cluster::Compressed => false,
            };
            let n = (piece.end - piece.start) as usize;
            if already_zero {
                continue;
            }
            if (n as u64) < cluster_size {
                self.write_piece(&zeroes[..n], piece.start)?;
                continue;
            }
            match cluster {
                Cluster::Data { host, copied: true } if self.v3 => {
                    self.map.set(
                        &self.host,
                        &mut self.refs,
                        guest_cluster,
                        host | COPIED | ZERO,
                    )?;
                    // Best effort: the entry already reads as zeroes.
                    self.host.punch_hole(host, cluster_size)?;
                }
                Cluster::Data { host, copied: true } => {
                    self.host.write_zeroes(host, cluster_size)?
                }
                Cluster::Unallocated if self.v3 => {
                    self.map
                        .set(&self.host, &mut self.refs, guest_cluster, ZERO)?;
                }
                _ => self.write_piece(&zeroes[..n], piece.start)?,
            }
        }
        Ok(())
    }

    /// Writes what the operation changed, in the order that keeps the image consistent on
    /// stable storage: refcounts, data and new tables; a barrier; refcount-table entries and a
    /// barrier if any; then the L2 and L1 entries that point to the new clusters.
    fn commit(&mut self) -> Result<(), Error> {
        self.refs.flush_blocks(&self.host)?;
        self.map.flush_fresh(&self.host)?;
        if self.refs.take_barrier() {
            self.host.sync_data()?;
        }
        if self.refs.flush_table(&self.host)? {
            self.host.sync_data()?;
        }
        self.map.flush_links(&self.host)?;
        self.map.trim();
        self.refs.trim();
        Ok(())
    }

    /// Ends a writing operation: commits what it did, even when it failed part-way (every
    /// entry it changed points to written data). A failed commit leaves the file behind the
    /// in-memory metadata: reads go on from memory, writes are refused until the image is
    /// reopened.
    fn finish(&mut self, result: Result<(), Error>) -> Result<(), Error> {
        match self.commit() {
            Ok(()) => result,
            Err(e) => {
                self.failed = true;
                Err(result.err().unwrap_or(e))
            }
        }
    }

    fn check_writable(&self, offset: u64, len: u64) -> Result<(), Error> {
        let path = self.host.path().to_owned();
        if self.read_only {
            return Err(Error::ReadOnly { path });
        }
        check_range(&path, offset, len, self.size)?;
        if self.failed {
            return Err(Error::MetadataWriteFailed { path });
        }
        Ok(())
    }
}

impl DiskImage for Qcow2Image {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> Result<(), Error> {
        check_range(self.host.path(), offset, buf.len() as u64, self.size)?;
        let result = self.read_inner(buf, offset);
        self.map.trim();
        result
    }

    fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<(), Error> {
        self.check_writable(offset, buf.len() as u64)?;
        let result = self.write_inner(buf, offset);
        self.finish(result)
    }

    fn flush(&mut self) -> Result<(), Error> {
        if self.read_only {
            Ok(())
        } else {
            self.host.sync_data()
        }
    }

    fn discard(&mut self, offset: u64, len: u64) -> Result<(), Error> {
        self.write_zeroes(offset, len)
    }

    fn write_zeroes(&mut self, offset: u64, len: u64) -> Result<(), Error> {
        self.check_writable(offset, len)?;
        let result = self.zero_inner(offset, len);
        self.finish(result)
    }

    fn id(&self) -> String {
        self.id.clone()
    }

    fn format(&self) -> Format {
        Format::Qcow2
    }
}

fn overlaps(a: &Range<u64>, b: &Range<u64>) -> bool {
    a.start < b.end && b.start < a.end
}

/// An [`Error::Corrupt`] about `host`.
pub(crate) fn corrupt(host: &HostFile, what: String) -> Error {
    Error::Corrupt {
        path: host.path().to_owned(),
        what,
    }
}

/// Checks that a table of `len` bytes at `offset` lies within the file, which ends at
/// `file_end` (rounded up to a cluster).
pub(crate) fn check_in_file(
    host: &HostFile,
    what: &str,
    offset: u64,
    len: u64,
    file_end: u64,
) -> Result<(), Error> {
    match offset.checked_add(len) {
        Some(end) if len == 0 || end <= file_end => Ok(()),
        _ => Err(corrupt(
            host,
            format!("{what} at {offset:#x} ({len} bytes) is beyond the end of the file"),
        )),
    }
}

/// Big-endian 64-bit entries from bytes.
pub(crate) fn decode_table(bytes: &[u8]) -> Vec<u64> {
    bytes
        .chunks_exact(8)
        .map(|chunk| u64::from_be_bytes(chunk.try_into().expect("8-byte chunk")))
        .collect()
}

/// Bytes from big-endian 64-bit entries.
pub(crate) fn encode_table(entries: &[u64]) -> Vec<u8> {
    entries
        .iter()
        .flat_map(|entry| entry.to_be_bytes())
        .collect()
}
