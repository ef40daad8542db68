//! Where new refcount blocks and tables go, on a scratch file: 512-byte clusters with 64-bit
//! refcounts, so a block covers 64 clusters (32 KiB) and a one-cluster table 64 blocks.

use super::*;

const CLUSTER: u64 = 512;
const RANGE: u64 = 64 * CLUSTER;

struct ScratchFile(std::path::PathBuf);

impl Drop for ScratchFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A file with an empty one-cluster refcount table at 512, and the refcounts on it.
fn setup(name: &str) -> (ScratchFile, HostFile, Refcounts) {
    let path = std::env::temp_dir().join(format!("popek-block-{name}-{}", std::process::id()));
    let mut bytes = vec![0u8; 2 * CLUSTER as usize];
    bytes[48..56].copy_from_slice(&CLUSTER.to_be_bytes());
    bytes[56..60].copy_from_slice(&1u32.to_be_bytes());
    std::fs::write(&path, bytes).unwrap();
    let host = HostFile::open(&path, false).unwrap();
    let refs = Refcounts::load(&host, 9, 6, CLUSTER, 1, 2 * CLUSTER, 16).unwrap();
    (ScratchFile(path), host, refs)
}

/// Writes everything as an operation's commit would, then loads the refcounts afresh from
/// the table the header names.
fn commit_and_reload(host: &HostFile, refs: &mut Refcounts) {
    refs.flush_blocks(host).unwrap();
    refs.flush_table(host).unwrap();
    let mut field = [0u8; 12];
    host.read_at(&mut field, REFCOUNT_TABLE_FIELD).unwrap();
    let offset = u64::from_be_bytes(field[..8].try_into().unwrap());
    let clusters = u32::from_be_bytes(field[8..].try_into().unwrap());
    let end = refs.end();
    *refs = Refcounts::load(host, 9, 6, offset, clusters, end, 16).unwrap();
}

#[test]
fn block_placed_outside_its_range_is_counted_by_the_next_block() {
    let (_file, host, mut refs) = setup("rc-straddle");
    // The next free cluster is the last one block 0 covers.
    refs.next_free = RANGE - CLUSTER;
    let data = refs.alloc(&host, 1).unwrap();
    assert_eq!(data, RANGE - CLUSTER);
    commit_and_reload(&host, &mut refs);
    // Block 0 went to the first cluster of range 1, and block 1, right after it, counts
    // both itself and block 0.
    assert_eq!(refs.block_offset(0), RANGE);
    assert_eq!(refs.block_offset(1), RANGE + CLUSTER);
    for cluster in [data, RANGE, RANGE + CLUSTER] {
        assert_eq!(refs.get(&host, cluster).unwrap(), 1, "cluster {cluster:#x}");
    }
    assert_eq!(refs.get(&host, RANGE + 2 * CLUSTER).unwrap(), 0);
    assert_eq!(refs.get(&host, 0).unwrap(), 0);
}

#[test]
fn full_table_moves_to_a_larger_one_and_frees_the_old() {
    let (_file, host, mut refs) = setup("rc-grow");
    // Count the header and the table, as a real image does.
    refs.set(&host, 0, 1).unwrap();
    refs.set(&host, CLUSTER, 1).unwrap();
    // Allocating in range 64 needs table entry 64, past the first table's 64 entries.
    refs.next_free = 64 * RANGE;
    let data = refs.alloc(&host, 1).unwrap();
    commit_and_reload(&host, &mut refs);
    let mut field = [0u8; 12];
    host.read_at(&mut field, REFCOUNT_TABLE_FIELD).unwrap();
    let new_table = u64::from_be_bytes(field[..8].try_into().unwrap());
    let clusters = u32::from_be_bytes(field[8..].try_into().unwrap());
    assert_eq!(
        (refs.table_offset, refs.table_clusters),
        (new_table, u64::from(clusters))
    );
    assert_eq!(
        (data, new_table, clusters),
        (64 * RANGE, 64 * RANGE + 2 * CLUSTER, 2)
    );
    // The data, its block (which counts itself) and the new table have refcount 1; the old
    // table is free, the header still counted.
    for cluster in [data, data + CLUSTER, new_table, new_table + CLUSTER] {
        assert_eq!(refs.get(&host, cluster).unwrap(), 1, "cluster {cluster:#x}");
    }
    assert_eq!(refs.get(&host, CLUSTER).unwrap(), 0, "old table not freed");
    assert_eq!(refs.get(&host, 0).unwrap(), 1);
    assert_eq!(refs.block_offset(64), data + CLUSTER);
    assert_eq!(refs.end(), new_table + 2 * CLUSTER);
}

#[test]
fn allocation_skips_clusters_already_counted() {
    let (_file, host, mut refs) = setup("rc-skip");
    refs.set(&host, 2 * CLUSTER, 1).unwrap();
    refs.set(&host, 3 * CLUSTER, 1).unwrap();
    let first = refs.alloc(&host, 2).unwrap();
    assert!(
        first >= 4 * CLUSTER,
        "allocated over counted clusters at {first:#x}"
    );
    assert!(refs.take_barrier());
    assert!(!refs.take_barrier());
}
