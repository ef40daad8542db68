//! Refcounts: the refcount table, its blocks, and cluster allocation at the end of the file.
//!
//! Every host cluster in use has a refcount of 1 (no internal snapshots are written, so nothing
//! is shared). New clusters are taken at the end of the file. A missing refcount block is put in
//! the next free cluster; when that cluster falls in the range the block describes, the block
//! counts itself. A full refcount table is replaced by a larger one placed, with the blocks that
//! describe it, at the end of the file; the header is switched to it after both are on stable
//! storage, and only then is the old table freed.

use std::io::{self, ErrorKind};
use std::ops::Range;

use super::cache::{Table, TableCache};
use super::header::{MAX_REFCOUNT_TABLE_BYTES, REFCOUNT_TABLE_FIELD};
use super::{decode_table, encode_table};
use crate::Error;
use crate::host::HostFile;

/// The offset bits of a refcount table entry.
const REFT_OFFSET_MASK: u64 = 0xffff_ffff_ffff_fe00;
/// L2 entries hold host offsets below 2^56.
const MAX_HOST_END: u64 = 1 << 56;
/// How many clusters with a refcount past the end of the file an allocation skips before it
/// calls the image corrupt.
const MAX_SKIPPED_CLUSTERS: u64 = 1 << 20;

/// The refcounts of an image opened for writing (or read-only, for the overlap checks).
#[derive(Debug)]
pub(crate) struct Refcounts {
    cluster_bits: u32,
    /// log2 of the refcount width in bits.
    order: u32,
    table_offset: u64,
    table_clusters: u64,
    /// The table as it is in memory; during an operation it may briefly hold an entry beyond
    /// the table's capacity, which makes the table grow.
    table: Vec<u64>,
    table_dirty: Option<Range<usize>>,
    blocks: TableCache<Vec<u8>>,
    /// Where the next cluster is allocated: past everything in use.
    next_free: u64,
    /// Something was allocated since the last barrier: the writes so far must reach stable
    /// storage before anything points to them.
    barrier: bool,
}

impl Refcounts {
    /// Reads the refcount table and checks its entries against the file's length.
    pub(crate) fn load(
        host: &HostFile,
        cluster_bits: u32,
        order: u32,
        table_offset: u64,
        table_clusters: u32,
        file_len: u64,
        cache_capacity: usize,
    ) -> Result<Self, Error> {
        let cluster_size = 1u64 << cluster_bits;
        let mut refcounts = Self {
            cluster_bits,
            order,
            table_offset,
            table_clusters: u64::from(table_clusters),
            table: Vec::new(),
            table_dirty: None,
            blocks: TableCache::new(cache_capacity),
            next_free: file_len.next_multiple_of(cluster_size),
            barrier: false,
        };
        let bytes = refcounts.table_clusters * cluster_size;
        super::check_in_file(
            host,
            "Refcount table",
            table_offset,
            bytes,
            refcounts.next_free,
        )?;
        refcounts.read_table(host)?;
        for (i, &entry) in refcounts.table.iter().enumerate() {
            let offset = entry & REFT_OFFSET_MASK;
            if entry != offset || !offset.is_multiple_of(cluster_size) {
                return Err(super::corrupt(
                    host,
                    format!("Refcount table entry {i} ({entry:#x}) is misaligned"),
                ));
            }
            if offset >= refcounts.next_free {
                return Err(super::corrupt(
                    host,
                    format!("Refcount block {i} at {offset:#x} is beyond the end of the file"),
                ));
            }
        }
        Ok(refcounts)
    }

    fn read_table(&mut self, host: &HostFile) -> Result<(), Error> {
        let mut bytes = vec![0u8; (self.table_clusters << self.cluster_bits) as usize];
        host.read_at(&mut bytes, self.table_offset)?;
        self.table = decode_table(&bytes);
        Ok(())
    }

    fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// log2 of the number of refcounts in a block.
    fn block_bits(&self) -> u32 {
        self.cluster_bits + 3 - self.order
    }

    fn block_index(&self, offset: u64) -> usize {
        (offset >> (self.cluster_bits + self.block_bits())) as usize
    }

    fn entry_index(&self, offset: u64) -> usize {
        ((offset >> self.cluster_bits) & ((1 << self.block_bits()) - 1)) as usize
    }

    fn block_offset(&self, index: usize) -> u64 {
        self.table
            .get(index)
            .map_or(0, |entry| entry & REFT_OFFSET_MASK)
    }

    /// Entries the table has room for on disk.
    fn capacity(&self) -> usize {
        (self.table_clusters * self.cluster_size() / 8) as usize
    }

    /// Offsets of the refcount blocks in use.
    pub(crate) fn block_offsets(&self) -> impl Iterator<Item = u64> + '_ {
        self.table
            .iter()
            .map(|entry| entry & REFT_OFFSET_MASK)
            .filter(|&offset| offset != 0)
    }

    /// The file range of the refcount table.
    pub(crate) fn table_range(&self) -> Range<u64> {
        self.table_offset..self.table_offset + self.table_clusters * self.cluster_size()
    }

    fn load_block(&mut self, host: &HostFile, offset: u64) -> Result<&mut Table<Vec<u8>>, Error> {
        if self.blocks.get(offset).is_none() {
            let mut data = vec![0u8; self.cluster_size() as usize];
            host.read_at(&mut data, offset)?;
            self.blocks.insert(offset, data, false);
        }
        Ok(self.blocks.get(offset).expect("block was just cached"))
    }

    /// The refcount of the host cluster at `offset`.
    pub(crate) fn get(&mut self, host: &HostFile, offset: u64) -> Result<u64, Error> {
        let block = self.block_offset(self.block_index(offset));
        if block == 0 {
            return Ok(0);
        }
        let (index, order) = (self.entry_index(offset), self.order);
        Ok(read_entry(
            &self.load_block(host, block)?.data,
            index,
            order,
        ))
    }

    /// Sets the refcount of the host cluster at `offset`, creating its block if needed.
    pub(crate) fn set(&mut self, host: &HostFile, offset: u64, value: u64) -> Result<(), Error> {
        if self.order < 6 && value >> (1u32 << self.order) != 0 {
            return Err(super::corrupt(
                host,
                format!("Refcount of cluster {offset:#x} overflows"),
            ));
        }
        let index = self.block_index(offset);
        let mut block = self.block_offset(index);
        if block == 0 {
            if value == 0 {
                return Ok(());
            }
            block = self.create_block(host, index)?;
        }
        let (entry, order) = (self.entry_index(offset), self.order);
        let table = self.load_block(host, block)?;
        let range = write_entry(&mut table.data, entry, order, value);
        table.mark_dirty(range);
        Ok(())
    }

    /// Takes `n` contiguous clusters past the end of everything in use, without refcounts.
    fn reserve(&mut self, host: &HostFile, n: u64) -> Result<u64, Error> {
        let start = self.next_free;
        let end = n
            .checked_mul(self.cluster_size())
            .and_then(|bytes| start.checked_add(bytes))
            .filter(|&end| end <= MAX_HOST_END)
            .ok_or_else(|| full(host, "qcow2 files end at 64 PiB"))?;
        self.next_free = end;
        Ok(start)
    }

    /// Allocates `n` contiguous clusters with refcount 1 and returns the first one's offset.
    pub(crate) fn alloc(&mut self, host: &HostFile, n: u64) -> Result<u64, Error> {
        let cluster_size = self.cluster_size();
        // Clusters past the end of the file are free unless the image is inconsistent (or an
        // earlier crash leaked them); skip any that are not, within reason.
        let mut skipped = 0;
        'search: loop {
            let start = self.next_free;
            for k in 0..n {
                let cluster = start + k * cluster_size;
                if self.get(host, cluster)? != 0 {
                    skipped += 1;
                    if skipped > MAX_SKIPPED_CLUSTERS {
                        return Err(super::corrupt(
                            host,
                            format!(
                                "Refcounts claim clusters far beyond the end of the file ({cluster:#x})"
                            ),
                        ));
                    }
                    self.next_free = cluster + cluster_size;
                    continue 'search;
                }
            }
            break;
        }
        let start = self.reserve(host, n)?;
        for k in 0..n {
            self.set(host, start + k * cluster_size, 1)?;
        }
        self.barrier = true;
        Ok(start)
    }

    /// Creates the refcount block for table entry `index` in the next free cluster.
    fn create_block(&mut self, host: &HostFile, index: usize) -> Result<u64, Error> {
        let offset = self.reserve(host, 1)?;
        let mut data = vec![0u8; self.cluster_size() as usize];
        let describes_itself = self.block_index(offset) == index;
        if describes_itself {
            write_entry(&mut data, self.entry_index(offset), self.order, 1);
        }
        self.blocks.insert(offset, data, true);
        self.barrier = true;
        if !describes_itself {
            // Its own refcount lives in a later block, which may have to be created too.
            self.set(host, offset, 1)?;
        }
        self.set_table_entry(host, index, offset)?;
        Ok(offset)
    }

    fn set_table_entry(&mut self, host: &HostFile, index: usize, value: u64) -> Result<(), Error> {
        if index as u64 >= MAX_REFCOUNT_TABLE_BYTES / 8 {
            return Err(full(host, "its refcount table is at the 8 MiB limit"));
        }
        if index >= self.table.len() {
            self.table.resize(index + 1, 0);
        }
        self.table[index] = value;
        self.table_dirty = Some(match self.table_dirty.take() {
            Some(old) => old.start.min(index)..old.end.max(index + 1),
            None => index..index + 1,
        });
        if index >= self.capacity()
            && let Err(e) = self.grow(host)
        {
            // Never write entries past the table on disk.
            let capacity = self.capacity();
            self.table.truncate(capacity);
            self.table_dirty = self
                .table_dirty
                .take()
                .map(|range| range.start.min(capacity)..range.end.min(capacity))
                .filter(|range| !range.is_empty());
            return Err(e);
        }
        Ok(())
    }

    /// Moves the refcount table to a larger one at the end of the file.
    fn grow(&mut self, host: &HostFile) -> Result<(), Error> {
        let cluster_size = self.cluster_size();
        let per_cluster = cluster_size / 8;
        let start = self.next_free;
        let mut entries = (self.table.len() as u64).max(self.capacity() as u64 * 2);
        // The new table and the new blocks that count it, and themselves, sit together at
        // `start`; find how many of each that takes.
        let mut new_blocks = 0u64;
        let (clusters, blocks) = loop {
            let clusters = entries.div_ceil(per_cluster);
            let end = start.saturating_add((clusters + new_blocks) * cluster_size);
            let blocks = self.block_index(start)..self.block_index(end - 1) + 1;
            let missing = blocks
                .clone()
                .filter(|&i| self.block_offset(i) == 0)
                .count() as u64;
            entries = entries.max(blocks.end as u64);
            if missing == new_blocks && entries.div_ceil(per_cluster) == clusters {
                break (clusters, blocks);
            }
            new_blocks = missing;
        };
        if clusters * cluster_size > MAX_REFCOUNT_TABLE_BYTES {
            return Err(full(host, "its refcount table is at the 8 MiB limit"));
        }
        self.reserve(host, clusters + new_blocks)?;
        let mut next_block = start + clusters * cluster_size;
        self.table.resize((clusters * per_cluster) as usize, 0);
        for index in blocks {
            if self.block_offset(index) == 0 {
                self.table[index] = next_block;
                self.blocks
                    .insert(next_block, vec![0u8; cluster_size as usize], true);
                next_block += cluster_size;
            }
        }
        for k in 0..clusters + new_blocks {
            self.set(host, start + k * cluster_size, 1)?;
        }
        self.flush_blocks(host)?;
        host.write_at(&encode_table(&self.table), start)?;
        host.sync_data()?;
        let mut field = [0u8; 12];
        field[..8].copy_from_slice(&start.to_be_bytes());
        field[8..].copy_from_slice(&(clusters as u32).to_be_bytes());
        host.write_at(&field, REFCOUNT_TABLE_FIELD)?;
        host.sync_data()?;
        let (old_offset, old_clusters) = (self.table_offset, self.table_clusters);
        self.table_offset = start;
        self.table_clusters = clusters;
        self.table_dirty = None;
        for k in 0..old_clusters {
            self.set(host, old_offset + k * cluster_size, 0)?;
        }
        Ok(())
    }

    /// Writes the changed refcount blocks (before the barrier).
    pub(crate) fn flush_blocks(&mut self, host: &HostFile) -> Result<(), Error> {
        for offset in self.blocks.dirty_offsets() {
            let table = self.blocks.get(offset).expect("dirty block is cached");
            if table.fresh {
                host.write_at(&table.data, offset)?;
            } else if let Some(range) = table.dirty.clone() {
                host.write_at(&table.data[range.clone()], offset + range.start as u64)?;
            }
            table.fresh = false;
            table.dirty = None;
        }
        Ok(())
    }

    /// Whether anything was allocated since the last call.
    pub(crate) fn take_barrier(&mut self) -> bool {
        std::mem::take(&mut self.barrier)
    }

    /// Asks for a barrier before the next links: a cluster is about to change meaning.
    pub(crate) fn require_barrier(&mut self) {
        self.barrier = true;
    }

    /// The end of the clusters in use: past the file's end and every allocation.
    pub(crate) fn end(&self) -> u64 {
        self.next_free
    }

    /// Writes the changed refcount table entries (after the barrier that put their blocks on
    /// stable storage). Returns whether there were any.
    pub(crate) fn flush_table(&mut self, host: &HostFile) -> Result<bool, Error> {
        let Some(range) = self.table_dirty.take() else {
            return Ok(false);
        };
        let bytes = encode_table(&self.table[range.clone()]);
        host.write_at(&bytes, self.table_offset + range.start as u64 * 8)?;
        Ok(true)
    }

    /// Evicts cached blocks down to the cache's capacity.
    pub(crate) fn trim(&mut self) {
        self.blocks.trim();
    }
}

/// The error for an image that cannot grow any more.
fn full(host: &HostFile, why: &'static str) -> Error {
    Error::Io {
        path: host.path().to_owned(),
        op: "Allocating a cluster in",
        source: io::Error::new(ErrorKind::StorageFull, why),
    }
}

/// Reads refcount `index` of a block of `2^order`-bit refcounts. Sub-byte refcounts fill each
/// byte from its least significant bit, as QEMU stores them.
fn read_entry(block: &[u8], index: usize, order: u32) -> u64 {
    if order < 3 {
        let bits = 1u32 << order;
        let byte = block[index >> (3 - order)];
        let shift = (index as u32 & ((8 >> order) - 1)) * bits;
        u64::from((byte >> shift) & ((1u8 << bits) - 1))
    } else {
        let width = 1usize << (order - 3);
        let at = index * width;
        block[at..at + width]
            .iter()
            .fold(0, |acc, &b| (acc << 8) | u64::from(b))
    }
}

/// Writes refcount `index` and returns the bytes it changed.
fn write_entry(block: &mut [u8], index: usize, order: u32, value: u64) -> Range<usize> {
    if order < 3 {
        let bits = 1u32 << order;
        let at = index >> (3 - order);
        let shift = (index as u32 & ((8 >> order) - 1)) * bits;
        let mask = ((1u16 << bits) - 1) as u8;
        block[at] = (block[at] & !(mask << shift)) | (((value as u8) & mask) << shift);
        at..at + 1
    } else {
        let width = 1usize << (order - 3);
        let at = index * width;
        block[at..at + width].copy_from_slice(&value.to_be_bytes()[8 - width..]);
        at..at + width
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_of_every_width_round_trip_without_touching_neighbours() {
        for order in 0..=6u32 {
            let max = if order == 6 {
                u64::MAX
            } else {
                (1u64 << (1u32 << order)) - 1
            };
            let mut block = vec![0u8; 512];
            let entries = (512 * 8) >> order;
            for index in [0, 1, 2, entries / 2 + 1, entries - 1] {
                let range = write_entry(&mut block, index, order, max);
                assert!(range.end <= 512);
                assert_eq!(
                    read_entry(&block, index, order),
                    max,
                    "order {order} index {index}"
                );
                let neighbour = if index + 1 < entries {
                    index + 1
                } else {
                    index - 1
                };
                assert_eq!(
                    read_entry(&block, neighbour, order),
                    0,
                    "order {order} index {index}"
                );
                write_entry(&mut block, index, order, 0);
            }
            assert!(
                block.iter().all(|&b| b == 0),
                "order {order} left bits behind"
            );
        }
    }

    #[test]
    fn sub_byte_refcounts_fill_from_the_low_bit() {
        let mut block = [0u8; 2];
        write_entry(&mut block, 1, 0, 1);
        assert_eq!(block[0], 0b10);
        write_entry(&mut block, 3, 1, 2);
        assert_eq!(block[0], 0b1000_0010);
        assert_eq!(read_entry(&block, 3, 1), 2);
    }
}

#[cfg(test)]
#[path = "refcount_tests.rs"]
mod placement_tests;
