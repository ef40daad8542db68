//! The two-level map from guest clusters to host clusters: the L1 table, held in memory, and
//! the L2 tables it points to, cached.
//!
//! An L2 entry is a host offset (bits 9..=55) with flags: bit 63 "copied" (refcount is 1, may
//! be written in place), bit 62 compressed, and in version 3 bit 0 "reads as zeroes". An L1
//! entry is the offset of an L2 table with the same "copied" bit.

use std::ops::Range;

use super::cache::{Table, TableCache};
use super::refcount::Refcounts;
use super::{check_in_file, corrupt, decode_table, encode_table};
use crate::Error;
use crate::host::HostFile;

/// The host offset bits of L1 and L2 entries.
pub(crate) const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
/// The cluster (or L2 table) has refcount 1 and may be written in place.
pub(crate) const COPIED: u64 = 1 << 63;
/// The cluster is compressed.
const COMPRESSED: u64 = 1 << 62;
/// Version 3: the cluster reads as zeroes.
pub(crate) const ZERO: u64 = 1;

/// What an L2 entry says about a guest cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cluster {
    /// Not in this image: read from the backing file, or zeroes without one.
    Unallocated,
    /// Reads as zeroes. `host` is a preallocated cluster (0 if none), reusable if `copied`.
    Zero {
        /// Preallocated host cluster, or 0.
        host: u64,
        /// The host cluster has refcount 1.
        copied: bool,
    },
    /// Data at `host`.
    Data {
        /// Host cluster offset.
        host: u64,
        /// The host cluster has refcount 1.
        copied: bool,
    },
    /// Compressed data (not supported).
    Compressed,
}

impl Cluster {
    fn decode(entry: u64, v3: bool) -> Self {
        if entry & COMPRESSED != 0 {
            return Self::Compressed;
        }
        let host = entry & OFFSET_MASK;
        let copied = entry & COPIED != 0;
        if v3 && entry & ZERO != 0 {
            Self::Zero { host, copied }
        } else if host == 0 {
            Self::Unallocated
        } else {
            Self::Data { host, copied }
        }
    }
}

/// The L1 table and the cached L2 tables.
#[derive(Debug)]
pub(crate) struct Mapping {
    cluster_bits: u32,
    v3: bool,
    l1_offset: u64,
    l1: Vec<u64>,
    l1_dirty: Option<Range<usize>>,
    l2: TableCache<Vec<u64>>,
}

impl Mapping {
    /// Reads the L1 table and checks that its entries are aligned and inside the file, which
    /// ends at `file_end` (rounded up to a cluster).
    pub(crate) fn load(
        host: &HostFile,
        cluster_bits: u32,
        v3: bool,
        l1_offset: u64,
        l1_size: u32,
        file_end: u64,
        cache_capacity: usize,
    ) -> Result<Self, Error> {
        check_in_file(
            host,
            "L1 table",
            l1_offset,
            u64::from(l1_size) * 8,
            file_end,
        )?;
        let mut mapping = Self {
            cluster_bits,
            v3,
            l1_offset,
            l1: vec![0; l1_size as usize],
            l1_dirty: None,
            l2: TableCache::new(cache_capacity),
        };
        mapping.read_l1(host)?;
        let cluster_size = 1u64 << cluster_bits;
        for (i, &entry) in mapping.l1.iter().enumerate() {
            let offset = entry & OFFSET_MASK;
            if !offset.is_multiple_of(cluster_size) {
                return Err(corrupt(
                    host,
                    format!("L1 entry {i} ({entry:#x}) is misaligned"),
                ));
            }
            if offset >= file_end {
                return Err(corrupt(
                    host,
                    format!("L2 table {i} at {offset:#x} is beyond the end of the file"),
                ));
            }
        }
        Ok(mapping)
    }

    fn read_l1(&mut self, host: &HostFile) -> Result<(), Error> {
        let mut bytes = vec![0u8; self.l1.len() * 8];
        host.read_at(&mut bytes, self.l1_offset)?;
        self.l1 = decode_table(&bytes);
        Ok(())
    }

    /// The file range of the L1 table.
    pub(crate) fn l1_range(&self) -> Range<u64> {
        self.l1_offset..self.l1_offset + self.l1.len() as u64 * 8
    }

    /// Offsets of the L2 tables in use.
    pub(crate) fn l2_offsets(&self) -> impl Iterator<Item = u64> + '_ {
        self.l1
            .iter()
            .map(|entry| entry & OFFSET_MASK)
            .filter(|&offset| offset != 0)
    }

    fn split(&self, guest_cluster: u64) -> (usize, usize) {
        let l2_bits = self.cluster_bits - 3;
        (
            (guest_cluster >> l2_bits) as usize,
            (guest_cluster & ((1 << l2_bits) - 1)) as usize,
        )
    }

    fn load_l2(&mut self, host: &HostFile, offset: u64) -> Result<&mut Table<Vec<u64>>, Error> {
        if self.l2.get(offset).is_none() {
            let mut bytes = vec![0u8; 1 << self.cluster_bits];
            host.read_at(&mut bytes, offset)?;
            self.l2.insert(offset, decode_table(&bytes), false);
        }
        Ok(self.l2.get(offset).expect("L2 table was just cached"))
    }

    /// What guest cluster `guest_cluster` maps to. Host offsets are not checked here.
    pub(crate) fn lookup(&mut self, host: &HostFile, guest_cluster: u64) -> Result<Cluster, Error> {
        let (l1_index, l2_index) = self.split(guest_cluster);
        let Some(&l1_entry) = self.l1.get(l1_index) else {
            return Err(corrupt(
                host,
                format!("Guest cluster {guest_cluster} is beyond the L1 table"),
            ));
        };
        let l2_offset = l1_entry & OFFSET_MASK;
        if l2_offset == 0 {
            return Ok(Cluster::Unallocated);
        }
        let v3 = self.v3;
        let table = self.load_l2(host, l2_offset)?;
        Ok(Cluster::decode(table.data[l2_index], v3))
    }

    /// Sets the L2 entry of `guest_cluster`, allocating its L2 table if there is none.
    pub(crate) fn set(
        &mut self,
        host: &HostFile,
        refs: &mut Refcounts,
        guest_cluster: u64,
        entry: u64,
    ) -> Result<(), Error> {
        let (l1_index, l2_index) = self.split(guest_cluster);
        let Some(&l1_entry) = self.l1.get(l1_index) else {
            return Err(corrupt(
                host,
                format!("Guest cluster {guest_cluster} is beyond the L1 table"),
            ));
        };
        let mut l2_offset = l1_entry & OFFSET_MASK;
        if l2_offset == 0 {
            l2_offset = refs.alloc(host, 1)?;
            self.l2
                .insert(l2_offset, vec![0; 1 << (self.cluster_bits - 3)], true);
            self.l1[l1_index] = l2_offset | COPIED;
            self.l1_dirty = Some(match self.l1_dirty.take() {
                Some(old) => old.start.min(l1_index)..old.end.max(l1_index + 1),
                None => l1_index..l1_index + 1,
            });
        } else if l1_entry & COPIED == 0 {
            return Err(Error::Unsupported {
                path: host.path().to_owned(),
                what: "L2 tables shared with internal snapshots".to_owned(),
            });
        }
        let table = self.load_l2(host, l2_offset)?;
        table.data[l2_index] = entry;
        table.mark_dirty(l2_index..l2_index + 1);
        Ok(())
    }

    /// Writes the L2 tables allocated by this operation, whole (before the barrier).
    pub(crate) fn flush_fresh(&mut self, host: &HostFile) -> Result<(), Error> {
        for offset in self.l2.dirty_offsets() {
            let table = self.l2.get(offset).expect("dirty table is cached");
            if table.fresh {
                host.write_at(&encode_table(&table.data), offset)?;
                table.fresh = false;
                table.dirty = None;
            }
        }
        Ok(())
    }

    /// Writes the changed entries of existing L2 tables and of the L1 table (after the
    /// barrier): the writes that make new clusters reachable.
    pub(crate) fn flush_links(&mut self, host: &HostFile) -> Result<(), Error> {
        for offset in self.l2.dirty_offsets() {
            let table = self.l2.get(offset).expect("dirty table is cached");
            if let Some(range) = table.dirty.take() {
                let bytes = encode_table(&table.data[range.clone()]);
                host.write_at(&bytes, offset + range.start as u64 * 8)?;
            }
        }
        if let Some(range) = self.l1_dirty.take() {
            let bytes = encode_table(&self.l1[range.clone()]);
            host.write_at(&bytes, self.l1_offset + range.start as u64 * 8)?;
        }
        Ok(())
    }

    /// Evicts cached L2 tables down to the cache's capacity.
    pub(crate) fn trim(&mut self) {
        self.l2.trim();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_decode_as_qemu_writes_them() {
        assert_eq!(Cluster::decode(0, true), Cluster::Unallocated);
        assert_eq!(
            Cluster::decode(COPIED | 0x5_0000, true),
            Cluster::Data {
                host: 0x5_0000,
                copied: true
            }
        );
        assert_eq!(
            Cluster::decode(ZERO, true),
            Cluster::Zero {
                host: 0,
                copied: false
            }
        );
        assert_eq!(
            Cluster::decode(COPIED | 0x5_0000 | ZERO, true),
            Cluster::Zero {
                host: 0x5_0000,
                copied: true
            }
        );
        // Bit 0 means nothing in version 2.
        assert_eq!(Cluster::decode(ZERO, false), Cluster::Unallocated);
        assert_eq!(
            Cluster::decode(COMPRESSED | 0x1234, true),
            Cluster::Compressed
        );
    }
}
