//! Images made by `block::create_qcow2`: `qemu-img` accepts them (check, info), `block::open`
//! reads through their backing chain, and `block::backing_file` reads their backing file back.

mod common;

use std::path::Path;

use block::{Error, Format, backing_file, create_qcow2};
use common::{
    Rng, Scratch, assert_check_clean, chain, convert_to_raw, create_overlay, open, qemu_img,
    random_raw, read_all, write_both,
};

const MIB: u64 = 1 << 20;

/// `qemu-img info --output=json`, without white space, so fields can be looked for as
/// `"key":value`.
fn info(path: &Path) -> String {
    qemu_img(&["info", "--output=json", path.to_str().unwrap()])
        .split_whitespace()
        .collect()
}

fn assert_info_has(info: &str, fields: &[&str]) {
    for field in fields {
        assert!(info.contains(field), "qemu-img info lacks {field}: {info}");
    }
}

#[test]
fn empty_images_of_any_size_check_clean_and_read_as_zeroes() {
    let scratch = Scratch::new("create-empty");
    // Zero, under one cluster, not a whole number of clusters, and beyond one L2 table and
    // one L1 cluster (sparse: nothing is allocated).
    for (i, size) in [0, 512, 4 * MIB + 1536, 5 << 30, 5 << 40]
        .into_iter()
        .enumerate()
    {
        let path = scratch.path(&format!("empty{i}.qcow2"));
        create_qcow2(&path, size, None).unwrap_or_else(|e| panic!("{}", chain(&e)));
        let mut image = open(&path, None, false);
        assert_eq!(image.size(), size);
        assert_eq!(image.format(), Format::Qcow2);
        if size > 0 {
            let mut buf = vec![0xffu8; 4096.min(size as usize)];
            let at = size - buf.len() as u64;
            image.read_at(&mut buf, at).unwrap();
            assert!(buf.iter().all(|&b| b == 0), "a fresh image reads non-zero");
            image.write_at(&[7; 100], at).unwrap();
            image.read_at(&mut buf[..100], at).unwrap();
            assert_eq!(&buf[..100], &[7; 100]);
        }
        drop(image);
        assert_eq!(backing_file(&path).unwrap(), None);
        if !common::have_qemu_img() {
            continue;
        }
        assert_check_clean(&path);
        let info = info(&path);
        assert_info_has(
            &info,
            &[
                &format!("\"virtual-size\":{size},"),
                "\"format\":\"qcow2\"",
                "\"cluster-size\":65536",
                "\"compat\":\"1.1\"",
                "\"refcount-bits\":16",
            ],
        );
        assert!(!info.contains("backing-filename"), "{info}");
    }
    if !common::have_qemu_img() {
        eprintln!("skipped the qemu-img checks: qemu-img not found (install qemu-utils)");
    }
}

#[test]
fn an_overlay_on_a_raw_file_reads_through_and_leaves_it_alone() {
    let scratch = Scratch::new("create-raw");
    let base = scratch.path("base.raw");
    let mut rng = Rng(41);
    let mut expected = random_raw(&base, (3 * MIB + 1536) as usize, &mut rng);
    let base_before = expected.clone();
    let overlay = scratch.path("overlay.qcow2");
    // A relative name, resolved against the overlay's directory.
    create_qcow2(
        &overlay,
        expected.len() as u64,
        Some((Path::new("base.raw"), Format::Raw)),
    )
    .unwrap();
    assert_eq!(
        backing_file(&overlay).unwrap(),
        Some((base.clone(), Some(Format::Raw)))
    );
    let mut image = open(&overlay, None, false);
    assert_eq!(image.size(), expected.len() as u64);
    assert!(
        read_all(&mut *image) == expected,
        "the overlay does not show its base"
    );
    let size = expected.len() as u64;
    for (offset, len) in [
        (0, 4096),
        (65_530, 20),
        (MIB + 3, 200_000),
        (size - 100, 100),
    ] {
        write_both(&mut *image, &mut expected, offset, &rng.bytes(len));
    }
    assert!(read_all(&mut *image) == expected);
    drop(image);
    assert!(
        std::fs::read(&base).unwrap() == base_before,
        "the base changed"
    );

    require_qemu_img!();
    assert_check_clean(&overlay);
    let full = base.to_str().unwrap();
    assert_info_has(
        &info(&overlay),
        &[
            &format!("\"virtual-size\":{size},"),
            "\"backing-filename\":\"base.raw\"",
            &format!("\"full-backing-filename\":\"{full}\""),
            "\"backing-filename-format\":\"raw\"",
        ],
    );
    assert!(
        convert_to_raw(&scratch, &overlay) == expected,
        "qemu-img sees other bytes"
    );
}

#[test]
fn a_chain_of_created_overlays_reads_through_every_layer() {
    let scratch = Scratch::new("create-chain");
    let base = scratch.path("base.raw");
    let mut rng = Rng(42);
    let mut expected = random_raw(&base, (2 * MIB) as usize, &mut rng);
    let size = expected.len() as u64;
    let mut below = (base.clone(), Format::Raw);
    let mut layers = Vec::new();
    for i in 0..3 {
        let name = format!("layer{i}.qcow2");
        let path = scratch.path(&name);
        create_qcow2(
            &path,
            size,
            Some((Path::new(below.0.file_name().unwrap()), below.1)),
        )
        .unwrap();
        assert_eq!(
            backing_file(&path).unwrap(),
            Some((below.0.clone(), Some(below.1)))
        );
        let mut image = open(&path, None, false);
        assert!(
            read_all(&mut *image) == expected,
            "layer {i} does not show its chain"
        );
        let offset = rng.below(size - 70_000);
        write_both(&mut *image, &mut expected, offset, &rng.bytes(70_000));
        drop(image);
        layers.push(path.clone());
        below = (path, Format::Qcow2);
    }
    let mut top = open(&below.0, None, true);
    assert!(read_all(&mut *top) == expected);
    drop(top);

    require_qemu_img!();
    for layer in &layers {
        assert_check_clean(layer);
    }
    assert_info_has(
        &info(&below.0),
        &[
            "\"backing-filename\":\"layer1.qcow2\"",
            "\"backing-filename-format\":\"qcow2\"",
        ],
    );
    assert!(convert_to_raw(&scratch, &below.0) == expected);
}

#[test]
fn an_existing_file_is_never_replaced() {
    let scratch = Scratch::new("create-exists");
    let path = scratch.path("there.img");
    std::fs::write(&path, b"precious").unwrap();
    match create_qcow2(&path, MIB, None) {
        Err(Error::Create { path: p, source }) => {
            assert_eq!(p, path);
            assert_eq!(source.kind(), std::io::ErrorKind::AlreadyExists);
        }
        other => panic!("expected Error::Create, got {other:?}"),
    }
    assert_eq!(std::fs::read(&path).unwrap(), b"precious");
    // Bad parameters leave nothing behind.
    let big = scratch.path("big.qcow2");
    assert!(matches!(
        create_qcow2(&big, u64::MAX, None),
        Err(Error::CannotCreate { .. })
    ));
    assert!(!big.exists());
}

#[test]
fn backing_file_reads_what_qemu_img_wrote() {
    require_qemu_img!();
    let scratch = Scratch::new("create-qemu");
    let base = scratch.path("base.raw");
    std::fs::write(&base, vec![0u8; MIB as usize]).unwrap();
    // A raw file has no backing file.
    assert_eq!(backing_file(&base).unwrap(), None);
    let overlay = scratch.path("overlay.qcow2");
    create_overlay(&overlay, Path::new("base.raw"), "raw");
    assert_eq!(
        backing_file(&overlay).unwrap(),
        Some((base.clone(), Some(Format::Raw)))
    );
    // An absolute name stays as it is.
    let absolute = scratch.path("absolute.qcow2");
    create_overlay(&absolute, &overlay, "qcow2");
    assert_eq!(
        backing_file(&absolute).unwrap(),
        Some((overlay.clone(), Some(Format::Qcow2)))
    );
    // A missing file is an error naming it.
    let missing = scratch.path("missing.qcow2");
    assert!(matches!(backing_file(&missing), Err(Error::Open { path, .. }) if path == missing));
}
