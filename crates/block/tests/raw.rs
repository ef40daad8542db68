//! Raw images: byte-for-byte access, range checks, zeroing, read-only and probing.

mod common;

use block::{Error, Format, HeaderError, OpenOptions};
use common::{Rng, Scratch, open, random_raw, read_all, write_both};

#[test]
fn raw_writes_at_unaligned_offsets_land_in_the_file() {
    let scratch = Scratch::new("raw-rw");
    let path = scratch.path("disk.raw");
    let mut rng = Rng(1);
    let mut expected = random_raw(&path, 1 << 20, &mut rng);
    let mut image = open(&path, Some(Format::Raw), false);
    assert_eq!(image.size(), 1 << 20);
    assert_eq!(image.format(), Format::Raw);
    for (offset, len) in [
        (0, 1),
        (3, 700),
        (4095, 2),
        (65_000, 70_000),
        ((1 << 20) - 5, 5),
    ] {
        write_both(&mut *image, &mut expected, offset, &rng.bytes(len));
    }
    let mut piece = vec![0u8; 1000];
    image.read_at(&mut piece, 4000).unwrap();
    assert_eq!(piece, expected[4000..5000]);
    image.flush().unwrap();
    drop(image);
    assert_eq!(std::fs::read(&path).unwrap(), expected);
}

#[test]
fn raw_accesses_beyond_the_end_are_refused() {
    let scratch = Scratch::new("raw-range");
    let path = scratch.path("disk.raw");
    random_raw(&path, 4096, &mut Rng(2));
    let before = std::fs::read(&path).unwrap();
    let mut image = open(&path, None, false);
    let mut buf = [0u8; 2];
    assert!(matches!(
        image.read_at(&mut buf, 4095),
        Err(Error::OutOfRange {
            offset: 4095,
            len: 2,
            size: 4096,
            ..
        })
    ));
    assert!(matches!(
        image.write_at(&buf, 4096),
        Err(Error::OutOfRange { .. })
    ));
    assert!(matches!(
        image.write_at(&buf, u64::MAX),
        Err(Error::OutOfRange { .. })
    ));
    assert!(matches!(
        image.discard(4000, 97),
        Err(Error::OutOfRange { .. })
    ));
    assert!(matches!(
        image.write_zeroes(u64::MAX, 2),
        Err(Error::OutOfRange { .. })
    ));
    image.read_at(&mut [], 4096).unwrap();
    drop(image);
    assert_eq!(
        std::fs::read(&path).unwrap(),
        before,
        "a refused write changed the file"
    );
}

#[test]
fn raw_sparse_image_is_writable_beyond_4_gib() {
    let scratch = Scratch::new("raw-big");
    let path = scratch.path("big.raw");
    let file = std::fs::File::create(&path).unwrap();
    file.set_len(6 << 30).unwrap();
    drop(file);
    let mut image = open(&path, None, false);
    assert_eq!(image.size(), 6 << 30);
    let data = Rng(3).bytes(10_000);
    let offset = (5 << 30) + 12_345;
    image.write_at(&data, offset).unwrap();
    drop(image);
    let mut image = open(&path, None, true);
    let mut back = vec![0u8; 10_002];
    image.read_at(&mut back, offset - 1).unwrap();
    assert_eq!(back[0], 0);
    assert_eq!(&back[1..10_001], &data[..]);
    assert_eq!(back[10_001], 0);
}

#[test]
fn raw_discard_and_write_zeroes_read_back_zeroes() {
    let scratch = Scratch::new("raw-zero");
    let path = scratch.path("disk.raw");
    let mut expected = random_raw(&path, 256 << 10, &mut Rng(4));
    let mut image = open(&path, None, false);
    for (offset, len, discard) in [
        (100, 5000, true),
        (65_536, 65_536, true),
        (200_000, 333, false),
    ] {
        if discard {
            image.discard(offset, len).unwrap();
        } else {
            image.write_zeroes(offset, len).unwrap();
        }
        expected[offset as usize..(offset + len) as usize].fill(0);
    }
    assert_eq!(read_all(&mut *image), expected);
    drop(image);
    assert_eq!(std::fs::read(&path).unwrap(), expected);
}

#[test]
fn raw_read_only_refuses_every_change() {
    let scratch = Scratch::new("raw-ro");
    let path = scratch.path("disk.raw");
    let before = random_raw(&path, 8192, &mut Rng(5));
    let mut image = open(&path, None, true);
    assert!(image.read_only());
    assert!(matches!(
        image.write_at(&[1], 0),
        Err(Error::ReadOnly { .. })
    ));
    assert!(matches!(image.discard(0, 512), Err(Error::ReadOnly { .. })));
    assert!(matches!(
        image.write_zeroes(0, 512),
        Err(Error::ReadOnly { .. })
    ));
    image.flush().unwrap();
    assert_eq!(read_all(&mut *image), before);
    drop(image);
    assert_eq!(std::fs::read(&path).unwrap(), before);
}

#[test]
fn explicit_raw_format_wins_over_the_qcow2_magic() {
    let scratch = Scratch::new("raw-magic");
    let path = scratch.path("looks-like-qcow2.raw");
    let mut bytes = vec![0u8; 4096];
    bytes[..4].copy_from_slice(b"QFI\xfb");
    std::fs::write(&path, &bytes).unwrap();
    let mut image = open(&path, Some(Format::Raw), false);
    assert_eq!(image.format(), Format::Raw);
    assert_eq!(read_all(&mut *image), bytes);
    // Probing sees the magic and then a header that makes no sense.
    let probed = block::open(&path, &OpenOptions::default());
    assert!(
        matches!(probed, Err(Error::Header { .. })),
        "{:?}",
        probed.err()
    );
}

#[test]
fn qcow2_format_on_a_raw_file_is_an_error() {
    let scratch = Scratch::new("raw-not-qcow2");
    let path = scratch.path("disk.raw");
    let before = random_raw(&path, 4096, &mut Rng(6));
    let opts = OpenOptions {
        format: Some(Format::Qcow2),
        read_only: false,
    };
    let err = block::open(&path, &opts)
        .err()
        .expect("a raw file opened as qcow2");
    assert!(
        matches!(
            err,
            Error::Header {
                source: HeaderError::BadMagic(_),
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(std::fs::read(&path).unwrap(), before);
}

#[test]
fn probed_raw_image_cannot_be_turned_into_qcow2() {
    let scratch = Scratch::new("raw-signature");
    let path = scratch.path("disk.raw");
    std::fs::write(&path, vec![0u8; 4096]).unwrap();
    let mut image = open(&path, None, false);
    image.write_at(b"QF", 0).unwrap();
    assert!(matches!(
        image.write_at(b"I\xfb", 2),
        Err(Error::ProbedSignature { .. })
    ));
    assert!(matches!(
        image.write_at(b"QFI\xfbxx", 0),
        Err(Error::ProbedSignature { .. })
    ));
    drop(image);
    // Naming the format allows it.
    let mut image = open(&path, Some(Format::Raw), false);
    image.write_at(b"QFI\xfb", 0).unwrap();
}

#[test]
fn serial_is_short_stable_and_per_file() {
    let scratch = Scratch::new("raw-id");
    let (a, b) = (scratch.path("a.raw"), scratch.path("b.raw"));
    std::fs::write(&a, [0u8; 512]).unwrap();
    std::fs::write(&b, [0u8; 512]).unwrap();
    let id = open(&a, None, true).id();
    assert!(!id.is_empty() && id.len() <= 20, "{id:?}");
    assert_eq!(open(&a, None, false).id(), id);
    assert_ne!(open(&b, None, true).id(), id);
}
