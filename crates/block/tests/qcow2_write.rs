//! qcow2 images written here and checked by QEMU: `qemu-img check` must find no error and no
//! leak, and `qemu-img convert` (or `compare`) must see exactly the bytes written.

mod common;

use std::path::Path;

use block::{DiskImage, Format, Qcow2Header};
use common::{
    Rng, Scratch, assert_check_clean, convert_to_raw, create_qcow2, open, qemu_img, read_all,
    write_both,
};

const MIB: u64 = 1 << 20;

/// Writes a fixed set of awkward ranges and then random ones into a fresh image made with
/// `options`, and checks the result with QEMU and by reading it back.
fn write_and_verify(name: &str, options: &str, size: u64) {
    let scratch = Scratch::new(name);
    let path = scratch.path("disk.qcow2");
    create_qcow2(&path, &size.to_string(), options);
    let mut expected = vec![0u8; size as usize];
    let mut rng = Rng(size ^ name.len() as u64);
    let mut image = open(&path, None, false);
    assert_eq!((image.size(), image.format()), (size, Format::Qcow2));
    let fixed = [
        (0, 1),
        (513, 1000),
        (65_536 - 100, 300),
        (3 * MIB - 7, 200_000),
        (size - 3, 3),
    ];
    for (offset, len) in fixed {
        write_both(&mut *image, &mut expected, offset, &rng.bytes(len));
    }
    for _ in 0..40 {
        let len = 1 + rng.below(150_000) as usize;
        let offset = rng.below(size - len as u64);
        write_both(&mut *image, &mut expected, offset, &rng.bytes(len));
    }
    // Overwrites of allocated clusters go in place.
    write_both(&mut *image, &mut expected, 600, &rng.bytes(100));
    image.flush().unwrap();
    assert!(
        read_all(&mut *image) == expected,
        "{name}: read-back differs before close"
    );
    drop(image);
    assert_check_clean(&path);
    assert!(
        convert_to_raw(&scratch, &path) == expected,
        "{name}: qemu-img sees other bytes"
    );
    let mut image = open(&path, None, true);
    assert!(
        read_all(&mut *image) == expected,
        "{name}: read-back differs after reopen"
    );
}

#[test]
fn writes_to_a_v3_image_pass_qemu_check() {
    require_qemu_img!();
    write_and_verify("v3", "", 8 * MIB);
}

#[test]
fn writes_to_a_v2_image_pass_qemu_check() {
    require_qemu_img!();
    write_and_verify("v2", "compat=0.10", 8 * MIB);
}

#[test]
fn writes_with_small_and_large_clusters_pass_qemu_check() {
    require_qemu_img!();
    write_and_verify("c512", "cluster_size=512", 8 * MIB);
    write_and_verify("c4k", "cluster_size=4096,refcount_bits=8", 8 * MIB);
    write_and_verify("c2m", "cluster_size=2M", 8 * MIB);
}

#[test]
fn writes_to_preallocated_and_lazy_refcount_images_pass_qemu_check() {
    require_qemu_img!();
    write_and_verify("prealloc-metadata", "preallocation=metadata", 8 * MIB);
    write_and_verify("prealloc-falloc", "preallocation=falloc", 8 * MIB);
    write_and_verify("lazy", "lazy_refcounts=on", 8 * MIB);
}

#[test]
fn writes_with_every_refcount_width_pass_qemu_check() {
    require_qemu_img!();
    for bits in [1, 2, 4, 32, 64] {
        let name = format!("rc{bits}");
        write_and_verify(
            &name,
            &format!("cluster_size=4096,refcount_bits={bits}"),
            4 * MIB,
        );
    }
}

/// Virtual offsets above 4 GiB, and writes across L2 tables, checked with `qemu-img compare`
/// against a sparse raw file holding the same writes.
#[test]
fn writes_beyond_4_gib_in_a_sparse_image_pass_qemu_check() {
    require_qemu_img!();
    let scratch = Scratch::new("big");
    let path = scratch.path("big.qcow2");
    let size = 8u64 << 30;
    create_qcow2(&path, "8G", "");
    let reference = scratch.path("expected.raw");
    let reference_file = std::fs::File::create(&reference).unwrap();
    reference_file.set_len(size).unwrap();
    let mut rng = Rng(7);
    let mut image = open(&path, Some(Format::Qcow2), false);
    let writes = [
        ((4 << 30) - 100, 300),       // across 4 GiB
        ((5 << 30) + 12_345, 70_000), // unaligned, across clusters
        (512 * MIB - 1000, 2000),     // across two L2 tables
        (size - 65_536 - 10, 65_546), // the last cluster and a bit
    ];
    for (offset, len) in writes {
        let data = rng.bytes(len);
        image.write_at(&data, offset).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&reference_file, &data, offset).unwrap();
        let mut back = vec![0u8; len];
        image.read_at(&mut back, offset).unwrap();
        assert!(back == data, "read-back at {offset} differs");
    }
    drop(image);
    assert_check_clean(&path);
    qemu_img(&[
        "compare",
        "-q",
        "-f",
        "raw",
        "-F",
        "qcow2",
        p(&reference),
        p(&path),
    ]);
}

/// 512-byte clusters with 64-bit refcounts: a refcount block covers 32 KiB and the first
/// refcount table 2 MiB of file, so writing 6 MiB moves the table several times.
#[test]
fn refcount_table_grows_and_stays_consistent() {
    require_qemu_img!();
    let scratch = Scratch::new("grow");
    let path = scratch.path("disk.qcow2");
    let size = 8 * MIB;
    create_qcow2(&path, "8M", "cluster_size=512,refcount_bits=64");
    let clusters_before = header(&path).refcount_table_clusters;
    let mut expected = vec![0u8; size as usize];
    let mut rng = Rng(8);
    let mut image = open(&path, None, false);
    let mut offset = 0;
    while offset < 6 * MIB {
        let len = 1 + rng.below(40_000);
        write_both(&mut *image, &mut expected, offset, &rng.bytes(len as usize));
        offset += len + rng.below(2000);
    }
    drop(image);
    let clusters_after = header(&path).refcount_table_clusters;
    assert!(
        clusters_after > clusters_before,
        "table did not grow ({clusters_before} clusters)"
    );
    eprintln!("refcount table: {clusters_before} -> {clusters_after} clusters");
    assert_check_clean(&path);
    assert!(convert_to_raw(&scratch, &path) == expected);
}

#[test]
fn discard_and_write_zeroes_read_back_zeroes() {
    require_qemu_img!();
    for (name, options) in [("zero-v3", ""), ("zero-v2", "compat=0.10")] {
        let scratch = Scratch::new(name);
        let path = scratch.path("disk.qcow2");
        let size = 4 * MIB;
        create_qcow2(&path, "4M", options);
        let mut rng = Rng(9);
        let mut expected = vec![0u8; size as usize];
        let mut image = open(&path, None, false);
        write_both(&mut *image, &mut expected, 0, &rng.bytes(3 * MIB as usize));
        let ranges = [
            (100, 5000, true),
            (65_536, 131_072, true),
            (300_000, 200_000, false),
        ];
        for (offset, len, discard) in ranges {
            if discard {
                image.discard(offset, len).unwrap();
            } else {
                image.write_zeroes(offset, len).unwrap();
            }
            expected[offset as usize..(offset + len) as usize].fill(0);
        }
        // Zeroing unallocated space allocates nothing, and zero clusters can be written again.
        image.write_zeroes(3 * MIB, MIB).unwrap();
        write_both(&mut *image, &mut expected, 70_000, &rng.bytes(1000));
        assert!(
            read_all(&mut *image) == expected,
            "{name}: read-back differs"
        );
        drop(image);
        assert_check_clean(&path);
        assert!(
            convert_to_raw(&scratch, &path) == expected,
            "{name}: qemu-img sees other bytes"
        );
    }
}

/// Images with content written by QEMU (`qemu-img convert` from raw) read back identically.
#[test]
fn images_written_by_qemu_read_back_identically() {
    require_qemu_img!();
    let scratch = Scratch::new("from-qemu");
    let source = scratch.path("source.raw");
    let mut rng = Rng(10);
    let mut bytes = rng.bytes(3 * MIB as usize + 4096);
    // Runs of zeroes become unallocated clusters.
    bytes[MIB as usize..2 * MIB as usize].fill(0);
    std::fs::write(&source, &bytes).unwrap();
    for options in [
        "compat=1.1",
        "compat=0.10",
        "cluster_size=4096",
        "cluster_size=1M,refcount_bits=1",
    ] {
        let path = scratch.path("converted.qcow2");
        qemu_img(&[
            "convert",
            "-f",
            "raw",
            "-O",
            "qcow2",
            "-o",
            options,
            p(&source),
            p(&path),
        ]);
        let mut image = open(&path, None, true);
        assert_eq!(image.size(), bytes.len() as u64);
        assert!(
            read_all(&mut *image) == bytes,
            "{options}: read-back differs"
        );
        let mut piece = vec![0u8; 10_000];
        image.read_at(&mut piece, MIB - 5000).unwrap();
        assert!(
            piece == bytes[MIB as usize - 5000..MIB as usize + 5000],
            "{options}: piece differs"
        );
    }
}

/// Writes into images QEMU filled keep both QEMU's data and ours.
#[test]
fn writes_into_qemu_written_images_keep_its_data() {
    require_qemu_img!();
    let scratch = Scratch::new("into-qemu");
    let source = scratch.path("source.raw");
    let mut rng = Rng(11);
    let mut expected = rng.bytes(2 * MIB as usize);
    expected[300_000..900_000].fill(0);
    std::fs::write(&source, &expected).unwrap();
    let path = scratch.path("disk.qcow2");
    qemu_img(&["convert", "-f", "raw", "-O", "qcow2", p(&source), p(&path)]);
    let mut image: Box<dyn DiskImage> = open(&path, None, false);
    for (offset, len) in [
        (10, 100),
        (299_000, 5000),
        (500_000, 70_000),
        (1_000_000, 300_000),
    ] {
        write_both(&mut *image, &mut expected, offset, &rng.bytes(len));
    }
    drop(image);
    assert_check_clean(&path);
    assert!(convert_to_raw(&scratch, &path) == expected);
}

fn header(path: &Path) -> Qcow2Header {
    let bytes = std::fs::read(path).unwrap();
    Qcow2Header::parse(&bytes[..bytes.len().min(1 << 16)]).unwrap()
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}
