//! qcow2 overlays: reads through the backing chain, copy-on-write, bases left untouched, and
//! chains that are refused (missing file, loop, too deep).

mod common;

use std::path::Path;
use std::process::Command;

use block::{Error, MAX_BACKING_DEPTH};
use common::{
    Rng, Scratch, assert_check_clean, chain, convert_to_raw, create_overlay, create_qcow2, open,
    qemu_img, random_raw, read_all, write_both,
};

const MIB: usize = 1 << 20;

#[test]
fn overlay_over_raw_copies_on_write_and_leaves_the_base_alone() {
    require_qemu_img!();
    let scratch = Scratch::new("overlay-raw");
    let base = scratch.path("base.raw");
    // Not a whole number of clusters: the last cluster is partly beyond the disk.
    let mut rng = Rng(20);
    let mut expected = random_raw(&base, 4 * MIB + 1536, &mut rng);
    let base_before = expected.clone();
    // A relative name: resolved against the overlay's directory, not the current one.
    let overlay = scratch.path("overlay.qcow2");
    create_overlay(&overlay, Path::new("base.raw"), "raw");
    let mut image = open(&overlay, None, false);
    assert_eq!(image.size(), expected.len() as u64);
    assert!(
        read_all(&mut *image) == expected,
        "overlay does not show the base"
    );
    let size = expected.len();
    for (offset, len) in [
        (1, 10),
        (65_530, 20),
        (200_000, 300_000),
        (size - 700, 700),
        (size - 1600, 1),
    ] {
        write_both(&mut *image, &mut expected, offset as u64, &rng.bytes(len));
    }
    assert!(
        read_all(&mut *image) == expected,
        "read-back through the overlay differs"
    );
    drop(image);
    assert!(
        std::fs::read(&base).unwrap() == base_before,
        "the base image changed"
    );
    assert_check_clean(&overlay);
    assert!(
        convert_to_raw(&scratch, &overlay) == expected,
        "qemu-img sees other bytes"
    );
}

#[test]
fn chain_of_qcow2_overlays_reads_every_layer() {
    require_qemu_img!();
    let scratch = Scratch::new("chain");
    let base = scratch.path("base.raw");
    let mid = scratch.path("mid.qcow2");
    let top = scratch.path("top.qcow2");
    let mut rng = Rng(21);
    let mut expected = random_raw(&base, 2 * MIB, &mut rng);
    create_overlay(&mid, &base, "raw");
    let mut image = open(&mid, None, false);
    write_both(&mut *image, &mut expected, 100_000, &rng.bytes(200_000));
    drop(image);
    create_overlay(&top, &mid, "qcow2");
    let (base_before, mid_before) = (std::fs::read(&base).unwrap(), std::fs::read(&mid).unwrap());
    let mut image = open(&top, None, false);
    write_both(&mut *image, &mut expected, 150_000, &rng.bytes(10_000));
    write_both(
        &mut *image,
        &mut expected,
        MIB as u64 + 7,
        &rng.bytes(70_000),
    );
    assert!(
        read_all(&mut *image) == expected,
        "read-back through the chain differs"
    );
    drop(image);
    assert!(
        std::fs::read(&base).unwrap() == base_before,
        "the base image changed"
    );
    assert!(
        std::fs::read(&mid).unwrap() == mid_before,
        "the middle image changed"
    );
    assert_check_clean(&mid);
    assert_check_clean(&top);
    assert!(convert_to_raw(&scratch, &top) == expected);
}

#[test]
fn overlay_larger_than_its_base_reads_zeroes_past_the_base() {
    require_qemu_img!();
    let scratch = Scratch::new("overlay-larger");
    let base = scratch.path("base.raw");
    let mut rng = Rng(22);
    let base_bytes = random_raw(&base, 65_536 + 512, &mut rng);
    let overlay = scratch.path("overlay.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "base.raw",
        "-F",
        "raw",
        s(&overlay),
        "1M",
    ]);
    let mut expected = vec![0u8; MIB];
    expected[..base_bytes.len()].copy_from_slice(&base_bytes);
    let mut image = open(&overlay, None, false);
    assert!(read_all(&mut *image) == expected);
    // Copy-on-write of the cluster the base ends in.
    write_both(&mut *image, &mut expected, 65_536 + 1000, &rng.bytes(10));
    drop(image);
    assert_check_clean(&overlay);
    assert!(convert_to_raw(&scratch, &overlay) == expected);
}

#[test]
fn zeroing_an_overlay_hides_its_base() {
    require_qemu_img!();
    for (name, options) in [
        ("zero-over-v3", "compat=1.1"),
        ("zero-over-v2", "compat=0.10"),
    ] {
        let scratch = Scratch::new(name);
        let base = scratch.path("base.raw");
        let mut rng = Rng(23);
        let mut expected = random_raw(&base, MIB, &mut rng);
        let overlay = scratch.path("overlay.qcow2");
        let backing = format!("backing_file=base.raw,backing_fmt=raw,{options}");
        qemu_img(&["create", "-q", "-f", "qcow2", "-o", &backing, s(&overlay)]);
        let mut image = open(&overlay, None, false);
        write_both(&mut *image, &mut expected, 200_000, &rng.bytes(100_000));
        for (offset, len) in [(10, 100), (65_536, 131_072), (190_000, 150_000)] {
            image.discard(offset, len).unwrap();
            expected[offset as usize..(offset + len) as usize].fill(0);
        }
        image.write_zeroes(500_000, 300_000).unwrap();
        expected[500_000..800_000].fill(0);
        assert!(
            read_all(&mut *image) == expected,
            "{name}: read-back differs"
        );
        drop(image);
        assert_check_clean(&overlay);
        assert!(
            convert_to_raw(&scratch, &overlay) == expected,
            "{name}: qemu-img sees other bytes"
        );
    }
}

/// Zero clusters written by QEMU itself (`qemu-io write -z`), when qemu-io is installed.
#[test]
fn zero_clusters_written_by_qemu_hide_the_base() {
    require_qemu_img!();
    if Command::new("qemu-io").arg("--version").output().is_err() {
        eprintln!("skipping: qemu-io not found");
        return;
    }
    let scratch = Scratch::new("qemu-io-zero");
    let base = scratch.path("base.raw");
    let mut expected = random_raw(&base, MIB, &mut Rng(24));
    let overlay = scratch.path("overlay.qcow2");
    create_overlay(&overlay, &base, "raw");
    let status = Command::new("qemu-io")
        .args([
            "-c",
            "write -z 65536 131072",
            "-c",
            "write -z 4096 512",
            s(&overlay),
        ])
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "qemu-io: {}",
        String::from_utf8_lossy(&status.stderr)
    );
    expected[65_536..196_608].fill(0);
    expected[4096..4608].fill(0);
    let mut image = open(&overlay, None, true);
    assert!(read_all(&mut *image) == expected);
}

#[test]
fn missing_backing_file_is_named_in_the_error() {
    require_qemu_img!();
    let scratch = Scratch::new("missing");
    let base = scratch.path("base.raw");
    random_raw(&base, 65_536, &mut Rng(25));
    let overlay = scratch.path("overlay.qcow2");
    create_overlay(&overlay, &base, "raw");
    std::fs::remove_file(&base).unwrap();
    let before = std::fs::read(&overlay).unwrap();
    let opts = block::OpenOptions::default();
    let err = block::open(&overlay, &opts)
        .err()
        .expect("opened without its backing file");
    let Error::Backing {
        backing, source, ..
    } = &err
    else {
        panic!("{}", chain(&err))
    };
    assert_eq!(backing, &base);
    assert!(matches!(**source, Error::Open { .. }), "{}", chain(&err));
    assert!(chain(&err).contains("base.raw"));
    assert_eq!(std::fs::read(&overlay).unwrap(), before);
}

#[test]
fn backing_loops_are_refused() {
    require_qemu_img!();
    let scratch = Scratch::new("loop");
    let (a, b) = (scratch.path("a.qcow2"), scratch.path("b.qcow2"));
    create_qcow2(&a, "1M", "");
    create_overlay(&b, &a, "qcow2");
    // Point a back at b without opening anything.
    qemu_img(&["rebase", "-u", "-b", s(&b), "-F", "qcow2", s(&a)]);
    let before = std::fs::read(&a).unwrap();
    for top in [&a, &b] {
        let err = block::open(top, &Default::default())
            .err()
            .expect("a loop opened");
        assert!(matches!(err, Error::BackingCycle { .. }), "{}", chain(&err));
    }
    assert_eq!(std::fs::read(&a).unwrap(), before);
    // An image that is its own backing file.
    let own = scratch.path("own.qcow2");
    create_qcow2(&own, "1M", "");
    qemu_img(&["rebase", "-u", "-b", "own.qcow2", "-F", "qcow2", s(&own)]);
    let err = block::open(&own, &Default::default())
        .err()
        .expect("a loop opened");
    assert!(matches!(err, Error::BackingCycle { .. }), "{}", chain(&err));
}

#[test]
fn chains_deeper_than_the_limit_are_refused() {
    require_qemu_img!();
    let scratch = Scratch::new("deep");
    let mut below = scratch.path("0.raw");
    random_raw(&below, 65_536, &mut Rng(26));
    let mut format = "raw";
    for depth in 1..=MAX_BACKING_DEPTH + 1 {
        let path = scratch.path(&format!("{depth}.qcow2"));
        qemu_img(&[
            "create",
            "-q",
            "-u",
            "-f",
            "qcow2",
            "-b",
            s(&below),
            "-F",
            format,
            s(&path),
            "64K",
        ]);
        let result = block::open(&path, &Default::default());
        if depth <= MAX_BACKING_DEPTH {
            let mut image = result.unwrap_or_else(|e| panic!("depth {depth}: {}", chain(&e)));
            let mut byte = [0u8; 1];
            image.read_at(&mut byte, 0).unwrap();
        } else {
            let err = result.err().expect("a too-deep chain opened");
            assert!(
                matches!(err, Error::BackingTooDeep { .. }),
                "{}",
                chain(&err)
            );
        }
        (below, format) = (path, "qcow2");
    }
}

fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}
