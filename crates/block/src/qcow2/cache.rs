//! A small least-recently-used cache of metadata clusters (L2 tables, refcount blocks), keyed
//! by their offset in the file, that remembers which part of each was changed.
//!
//! The cache is written through at the end of every operation, so only clean tables are ever
//! evicted; during an operation it may hold more than its capacity.

use std::collections::HashMap;
use std::ops::Range;

/// A cached metadata cluster.
#[derive(Debug)]
pub(crate) struct Table<T> {
    /// The decoded contents.
    pub(crate) data: T,
    /// The part changed since it was last written, in the units `T` is indexed by.
    pub(crate) dirty: Option<Range<usize>>,
    /// Allocated by the current operation and never written: it must be written whole before
    /// anything points to it.
    pub(crate) fresh: bool,
    last_use: u64,
}

impl<T> Table<T> {
    /// Records that `range` changed.
    pub(crate) fn mark_dirty(&mut self, range: Range<usize>) {
        self.dirty = Some(match self.dirty.take() {
            Some(old) => old.start.min(range.start)..old.end.max(range.end),
            None => range,
        });
    }
}

/// Tables by file offset.
#[derive(Debug)]
pub(crate) struct TableCache<T> {
    tables: HashMap<u64, Table<T>>,
    capacity: usize,
    clock: u64,
}

impl<T> TableCache<T> {
    /// A cache that keeps at most `capacity` clean tables between operations.
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            tables: HashMap::new(),
            capacity: capacity.max(1),
            clock: 0,
        }
    }

    /// The table at `offset`, if cached.
    pub(crate) fn get(&mut self, offset: u64) -> Option<&mut Table<T>> {
        self.clock += 1;
        let clock = self.clock;
        let table = self.tables.get_mut(&offset)?;
        table.last_use = clock;
        Some(table)
    }

    /// Caches `data` as the table at `offset`.
    pub(crate) fn insert(&mut self, offset: u64, data: T, fresh: bool) -> &mut Table<T> {
        self.clock += 1;
        let table = Table {
            data,
            dirty: None,
            fresh,
            last_use: self.clock,
        };
        self.tables.insert(offset, table);
        self.tables.get_mut(&offset).expect("just inserted")
    }

    /// Offsets of the tables with unwritten changes, in file order.
    pub(crate) fn dirty_offsets(&self) -> Vec<u64> {
        let mut offsets: Vec<u64> = self
            .tables
            .iter()
            .filter(|(_, t)| t.dirty.is_some() || t.fresh)
            .map(|(&offset, _)| offset)
            .collect();
        offsets.sort_unstable();
        offsets
    }

    /// Evicts the least recently used clean tables down to the capacity.
    pub(crate) fn trim(&mut self) {
        while self.tables.len() > self.capacity {
            let victim = self
                .tables
                .iter()
                .filter(|(_, t)| t.dirty.is_none() && !t.fresh)
                .min_by_key(|(_, t)| t.last_use)
                .map(|(&offset, _)| offset);
            match victim {
                Some(offset) => self.tables.remove(&offset),
                None => break,
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trim_keeps_dirty_and_recent_tables() {
        let mut cache = TableCache::new(2);
        cache.insert(0, 0u8, false);
        cache.insert(1, 1u8, false).mark_dirty(0..1);
        cache.insert(2, 2u8, false);
        cache.insert(3, 3u8, false);
        cache.get(2);
        cache.trim();
        assert!(cache.get(1).is_some(), "dirty table evicted");
        assert!(cache.get(2).is_some(), "recently used table evicted");
        assert!(cache.get(0).is_none() && cache.get(3).is_none());
        assert_eq!(cache.dirty_offsets(), vec![1]);
    }

    #[test]
    fn dirty_ranges_merge() {
        let mut cache = TableCache::new(1);
        let table = cache.insert(0, (), false);
        table.mark_dirty(4..5);
        table.mark_dirty(1..2);
        assert_eq!(table.dirty, Some(1..5));
    }
}
