//! Guest RAM in a snapshot: written sparsely, mapped back lazily and privately.
//!
//! The memory file holds the RAM regions back to back. A page that is all zeroes is left as a
//! hole, so a guest's untouched memory costs no disk. Restoring maps the file `MAP_PRIVATE`:
//! nothing is read until the guest touches a page, and clones restored from one file share its
//! pages in the host's page cache until they write them (copy-on-write).

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{
    FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
    GuestRegionMmap,
};

use super::format::SnapshotError;

/// Page size of the memory file and the dirty bitmaps.
pub const PAGE: usize = 4096;
/// Most pages written by one call (2 MiB).
const RUN: usize = 512;

fn io(path: &Path, what: &'static str) -> impl FnOnce(std::io::Error) -> SnapshotError {
    let path = path.to_path_buf();
    move |source| SnapshotError::Io { path, what, source }
}

/// Bytes of RAM in `mem`.
pub fn total_bytes(mem: &GuestMemoryMmap) -> u64 {
    mem.iter().map(|r| r.len()).sum()
}

/// The bytes of page `index` of `region`.
fn page(region: &GuestRegionMmap, index: usize) -> &[u8] {
    let len = (region.len() as usize - index * PAGE).min(PAGE);
    // SAFETY: the region maps `region.len()` bytes at `as_ptr()` for as long as `region`
    // lives, and the page lies inside it. The guest may write the page concurrently only if
    // its vCPUs run; snapshots are taken with every vCPU paused.
    unsafe { std::slice::from_raw_parts(region.as_ptr().add(index * PAGE), len) }
}

/// Writes every page of `mem` that `want(global page index)` selects and that is not all
/// zeroes, at its offset in `path`; the file gets the full RAM size. Returns the pages written.
pub fn write(
    mem: &GuestMemoryMmap,
    path: &Path,
    mut want: impl FnMut(u64) -> bool,
) -> Result<u64, SnapshotError> {
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(io(path, "cannot create"))?;
    let mut offset = 0u64;
    let mut written = 0u64;
    for region in mem.iter() {
        let pages = (region.len() as usize).div_ceil(PAGE);
        // Runs of adjacent pages to write go out in one call each (up to RUN pages).
        let mut run: Option<(usize, usize)> = None;
        let flush = |run: (usize, usize)| -> Result<(), SnapshotError> {
            let (first, n) = run;
            let len = (region.len() as usize - first * PAGE).min(n * PAGE);
            // SAFETY: as in `page`: the range lies inside the region's mapping, and the vCPUs
            // and the devices are stopped while a snapshot is written.
            let bytes =
                unsafe { std::slice::from_raw_parts(region.as_ptr().add(first * PAGE), len) };
            file.write_all_at(bytes, offset + (first * PAGE) as u64)
                .map_err(io(path, "cannot write"))
        };
        for i in 0..pages {
            let global = (offset / PAGE as u64) + i as u64;
            let keep = want(global) && page(region, i).iter().any(|&b| b != 0);
            match (keep, run) {
                (true, Some((first, n))) if first + n == i && n < RUN => run = Some((first, n + 1)),
                (true, _) => {
                    if let Some(r) = run {
                        flush(r)?;
                    }
                    run = Some((i, 1));
                }
                (false, Some(r)) => {
                    flush(r)?;
                    run = None;
                }
                (false, None) => {}
            }
            if keep {
                written += 1;
            }
        }
        if let Some(r) = run {
            flush(r)?;
        }
        offset += region.len();
    }
    file.set_len(offset).map_err(io(path, "cannot size"))?;
    file.sync_all().map_err(io(path, "cannot sync"))?;
    Ok(written)
}

/// Maps `path` as guest RAM laid out in `ranges`, privately: writes stay in this process.
pub fn map(
    path: &Path,
    ranges: &[(GuestAddress, usize)],
) -> Result<GuestMemoryMmap, SnapshotError> {
    let file = File::open(path).map_err(io(path, "cannot open"))?;
    let expected: u64 = ranges.iter().map(|(_, l)| *l as u64).sum();
    let found = file.metadata().map_err(io(path, "cannot stat"))?.len();
    if found != expected {
        return Err(SnapshotError::MemorySize {
            path: path.to_path_buf(),
            found,
            expected,
        });
    }
    let file = Arc::new(file);
    let mut offset = 0u64;
    let mut regions = Vec::new();
    for &(base, len) in ranges {
        let mapping = MmapRegionBuilder::<()>::new(len)
            .with_file_offset(FileOffset::from_arc(file.clone(), offset))
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_NORESERVE)
            .build()
            .map_err(|e| SnapshotError::Io {
                path: path.to_path_buf(),
                what: "cannot map",
                source: std::io::Error::other(e.to_string()),
            })?;
        regions.push(GuestRegionMmap::new(mapping, base).ok_or_else(|| {
            SnapshotError::Unusable(format!("{}: a RAM range overflows", path.display()))
        })?);
        offset += len as u64;
    }
    GuestMemoryMmap::from_regions(regions)
        .map_err(|e| SnapshotError::Unusable(format!("{}: {e}", path.display())))
}

/// A page bitmap: bit `i` set when page `i` of the memory file is present.
pub struct Pages(pub Vec<u64>);

impl Pages {
    /// A bitmap of `pages` pages, none set.
    pub fn new(pages: u64) -> Self {
        Pages(vec![0; pages.div_ceil(64) as usize])
    }
    /// Whether page `i` is set.
    pub fn get(&self, i: u64) -> bool {
        self.0
            .get((i / 64) as usize)
            .is_some_and(|w| w & (1 << (i % 64)) != 0)
    }
    /// Sets page `i`.
    pub fn set(&mut self, i: u64) {
        if let Some(w) = self.0.get_mut((i / 64) as usize) {
            *w |= 1 << (i % 64);
        }
    }
    /// Writes the bitmap to `path`.
    pub fn save(&self, path: &Path) -> Result<(), SnapshotError> {
        let bytes: Vec<u8> = self.0.iter().flat_map(|w| w.to_le_bytes()).collect();
        std::fs::write(path, bytes).map_err(io(path, "cannot write"))
    }
    /// Reads a bitmap of `pages` pages.
    pub fn load(path: &Path, pages: u64) -> Result<Self, SnapshotError> {
        let bytes = std::fs::read(path).map_err(io(path, "cannot read"))?;
        let words = pages.div_ceil(64) as usize;
        if bytes.len() != words * 8 {
            return Err(SnapshotError::Corrupt {
                path: path.to_path_buf(),
                why: format!(
                    "page bitmap is {} bytes, expected {}",
                    bytes.len(),
                    words * 8
                ),
            });
        }
        Ok(Pages(
            bytes
                .chunks_exact(8)
                .map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default()))
                .collect(),
        ))
    }
}

/// Copies `base`'s memory file to `out`, then the pages `diff_pages` marks from `diff`'s
/// (zero pages included: a page the guest cleared must be cleared in the result).
pub fn merge(
    base: &Path,
    diff: &Path,
    diff_pages: &Pages,
    out: &Path,
) -> Result<(), SnapshotError> {
    let src = File::open(base).map_err(io(base, "cannot open"))?;
    let d = File::open(diff).map_err(io(diff, "cannot open"))?;
    let size = src.metadata().map_err(io(base, "cannot stat"))?.len();
    let dst = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(out)
        .map_err(io(out, "cannot create"))?;
    let mut buf = vec![0u8; PAGE];
    let zero = vec![0u8; PAGE];
    let pages = size.div_ceil(PAGE as u64);
    for i in 0..pages {
        let at = i * PAGE as u64;
        let len = (size - at).min(PAGE as u64) as usize;
        let from = if diff_pages.get(i) {
            (&d, diff)
        } else {
            (&src, base)
        };
        from.0
            .read_exact_at(&mut buf[..len], at)
            .map_err(io(from.1, "cannot read"))?;
        // Zero pages stay holes.
        if buf[..len] != zero[..len] {
            dst.write_all_at(&buf[..len], at)
                .map_err(io(out, "cannot write"))?;
        }
    }
    dst.set_len(size).map_err(io(out, "cannot size"))?;
    dst.sync_all().map_err(io(out, "cannot sync"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    #[test]
    fn memory_is_sparse_and_maps_back_privately() {
        let dir = std::env::temp_dir().join(format!("popek-mem-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let ranges = [(GuestAddress(0), 1 << 20), (GuestAddress(1 << 32), 1 << 20)];
        let mem = GuestMemoryMmap::<()>::from_ranges(&ranges).unwrap();
        mem.write_obj(0x1234_5678u32, GuestAddress(0x3000)).unwrap();
        mem.write_obj(0xabcdu16, GuestAddress((1 << 32) + 0x10))
            .unwrap();
        let path = dir.join("memory");
        assert_eq!(write(&mem, &path, |_| true).unwrap(), 2);
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.len(), 2 << 20);
        use std::os::unix::fs::MetadataExt;
        assert!(
            meta.blocks() * 512 < 64 << 10,
            "not sparse: {} blocks",
            meta.blocks()
        );

        let back = map(&path, &ranges).unwrap();
        assert_eq!(
            back.read_obj::<u32>(GuestAddress(0x3000)).unwrap(),
            0x1234_5678
        );
        assert_eq!(
            back.read_obj::<u16>(GuestAddress((1 << 32) + 0x10))
                .unwrap(),
            0xabcd
        );
        back.write_obj(7u32, GuestAddress(0x3000)).unwrap();
        let again = map(&path, &ranges).unwrap();
        assert_eq!(
            again.read_obj::<u32>(GuestAddress(0x3000)).unwrap(),
            0x1234_5678,
            "private"
        );

        // A truncated file is refused.
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(1 << 20).unwrap();
        assert!(matches!(
            map(&path, &ranges),
            Err(SnapshotError::MemorySize { .. })
        ));
        let _ = std::fs::remove_dir_all(dir);
    }
}
