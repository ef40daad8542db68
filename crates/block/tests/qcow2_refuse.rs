//! qcow2 images that must be refused, each with its own error and without a byte written, and
//! accesses the image must not allow.

mod common;

use std::path::{Path, PathBuf};

use block::{Error, Format, HeaderError, OpenOptions};
use common::{Rng, Scratch, chain, open, qemu_img, random_raw, read_all};

/// A 1 MiB image with 64 KiB clusters filled by QEMU: header, refcount table, refcount block,
/// L1 table, one L2 table, data.
fn image_with_data(scratch: &Scratch) -> (PathBuf, Vec<u8>) {
    let raw = scratch.path("source.raw");
    let bytes = random_raw(&raw, 1 << 20, &mut Rng(30));
    let path = scratch.path("disk.qcow2");
    qemu_img(&["convert", "-f", "raw", "-O", "qcow2", s(&raw), s(&path)]);
    (path, bytes)
}

fn be64(bytes: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(bytes[at..at + 8].try_into().unwrap())
}

fn put(bytes: &mut [u8], at: usize, value: &[u8]) {
    bytes[at..at + value.len()].copy_from_slice(value);
}

/// Opens a mutated copy of the image for writing, expects a refusal, and checks the file is
/// unchanged.
fn refused(name: &str, format: Option<Format>, mutate: impl FnOnce(&mut Vec<u8>)) -> Error {
    let scratch = Scratch::new(name);
    let (path, _) = image_with_data(&scratch);
    let mut bytes = std::fs::read(&path).unwrap();
    mutate(&mut bytes);
    std::fs::write(&path, &bytes).unwrap();
    let opts = OpenOptions {
        format,
        read_only: false,
    };
    let err = block::open(&path, &opts)
        .err()
        .unwrap_or_else(|| panic!("{name}: opened"));
    assert!(
        std::fs::read(&path).unwrap() == bytes,
        "{name}: a refused image was modified"
    );
    assert!(
        chain(&err).contains("disk.qcow2"),
        "{name}: the error does not name the file: {err}"
    );
    err
}

/// Changes an image's bytes.
type Mutation = dyn FnOnce(&mut Vec<u8>);

fn header_error(err: &Error) -> &HeaderError {
    match err {
        Error::Header { source, .. } => source,
        other => panic!("not a header error: {}", chain(other)),
    }
}

#[test]
fn corrupt_headers_are_refused_each_with_its_error() {
    require_qemu_img!();
    let q = Some(Format::Qcow2);
    let cases: [(&str, Box<Mutation>, HeaderError); 13] = [
        (
            "trunc",
            Box::new(|b| b.truncate(50)),
            HeaderError::Truncated { len: 50, need: 72 },
        ),
        (
            "magic",
            Box::new(|b| b[0] = b'X'),
            HeaderError::BadMagic(0x5846_49fb),
        ),
        (
            "v4",
            Box::new(|b| put(b, 4, &4u32.to_be_bytes())),
            HeaderError::Version(4),
        ),
        (
            "v1",
            Box::new(|b| put(b, 4, &1u32.to_be_bytes())),
            HeaderError::Version(1),
        ),
        (
            "cb8",
            Box::new(|b| put(b, 20, &8u32.to_be_bytes())),
            HeaderError::ClusterBits(8),
        ),
        (
            "cb22",
            Box::new(|b| put(b, 20, &22u32.to_be_bytes())),
            HeaderError::ClusterBits(22),
        ),
        (
            "crypt",
            Box::new(|b| put(b, 32, &1u32.to_be_bytes())),
            HeaderError::Encrypted(1),
        ),
        ("dirty", Box::new(|b| b[79] |= 1), HeaderError::Dirty),
        ("corrupt", Box::new(|b| b[79] |= 2), HeaderError::CorruptBit),
        (
            "datafile",
            Box::new(|b| b[79] |= 4),
            HeaderError::Feature("external data file"),
        ),
        (
            "extl2",
            Box::new(|b| b[79] |= 0x10),
            HeaderError::Feature("extended L2 entries"),
        ),
        (
            "hdrlen",
            Box::new(|b| put(b, 100, &100u32.to_be_bytes())),
            HeaderError::HeaderLength(100),
        ),
        (
            "l1size",
            Box::new(|b| put(b, 36, &0u32.to_be_bytes())),
            HeaderError::L1TooSmall {
                entries: 0,
                need: 1,
            },
        ),
    ];
    for (name, mutate, expected) in cases {
        let err = refused(name, q, mutate);
        assert_eq!(header_error(&err), &expected, "{name}");
    }
    let err = refused("l1-unaligned", q, |b| b[47] |= 0x80);
    assert!(matches!(
        header_error(&err),
        HeaderError::Unaligned {
            what: "L1 table",
            ..
        }
    ));
    let err = refused("size", q, |b| put(b, 24, &u64::MAX.to_be_bytes()));
    assert!(matches!(header_error(&err), HeaderError::SizeTooLarge(_)));
    let err = refused("dirty-message", q, |b| b[79] |= 1);
    assert!(chain(&err).contains("qemu-img check -r"), "{}", chain(&err));
}

#[test]
fn tables_outside_the_file_are_refused() {
    require_qemu_img!();
    let err = refused("l1-eof", None, |b| put(b, 40, &(1u64 << 40).to_be_bytes()));
    assert!(
        matches!(&err, Error::Corrupt { what, .. } if what.contains("L1 table")),
        "{err}"
    );
    let err = refused("reftable-eof", None, |b| {
        put(b, 48, &(1u64 << 40).to_be_bytes())
    });
    assert!(
        matches!(&err, Error::Corrupt { what, .. } if what.contains("Refcount table")),
        "{err}"
    );
    let err = refused("truncated-file", None, |b| b.truncate(65_536));
    assert!(matches!(err, Error::Corrupt { .. }), "{err}");
    let err = refused("l1-entry-eof", None, |b| {
        let l1 = be64(b, 40) as usize;
        put(b, l1, &((1u64 << 63) | (1 << 40)).to_be_bytes());
    });
    assert!(
        matches!(&err, Error::Corrupt { what, .. } if what.contains("L2 table 0")),
        "{err}"
    );
    let err = refused("l1-overlap", None, |b| {
        let l1 = be64(b, 40) as usize;
        let reftable = be64(b, 48);
        put(b, l1, &((1u64 << 63) | reftable).to_be_bytes());
    });
    assert!(
        matches!(&err, Error::Corrupt { what, .. } if what.contains("overlaps")),
        "{err}"
    );
}

#[test]
fn flipped_magic_opens_as_raw_when_probed() {
    require_qemu_img!();
    let scratch = Scratch::new("magic-probe");
    let (path, _) = image_with_data(&scratch);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[0] = b'X';
    std::fs::write(&path, &bytes).unwrap();
    assert_eq!(open(&path, None, true).format(), Format::Raw);
}

/// An L2 entry pointing past the end of the file is found when the cluster is used.
#[test]
fn l2_entry_beyond_the_file_fails_when_used() {
    require_qemu_img!();
    let scratch = Scratch::new("l2-eof");
    let (path, _) = image_with_data(&scratch);
    let mut bytes = std::fs::read(&path).unwrap();
    let l2 = (be64(&bytes, be64(&bytes, 40) as usize) & 0x00ff_ffff_ffff_fe00) as usize;
    put(
        &mut bytes,
        l2 + 8,
        &((1u64 << 63) | (1 << 40)).to_be_bytes(),
    );
    std::fs::write(&path, &bytes).unwrap();
    let mut image = open(&path, None, false);
    let mut buf = vec![0u8; 4096];
    image.read_at(&mut buf, 0).unwrap();
    let err = image.read_at(&mut buf, 65_536).unwrap_err();
    assert!(
        matches!(&err, Error::Corrupt { what, .. } if what.contains("beyond")),
        "{err}"
    );
    let err = image.write_at(&buf, 65_536 + 100).unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err}");
    drop(image);
    assert!(
        std::fs::read(&path).unwrap() == bytes,
        "a failed write changed the image"
    );
}

#[test]
fn read_only_qcow2_refuses_every_change() {
    require_qemu_img!();
    let scratch = Scratch::new("qcow2-ro");
    let (path, bytes) = image_with_data(&scratch);
    let before = std::fs::read(&path).unwrap();
    let mut image = open(&path, None, true);
    assert!(image.read_only());
    assert!(matches!(
        image.write_at(&[1; 10], 5),
        Err(Error::ReadOnly { .. })
    ));
    assert!(matches!(
        image.discard(0, 65_536),
        Err(Error::ReadOnly { .. })
    ));
    assert!(matches!(
        image.write_zeroes(0, 512),
        Err(Error::ReadOnly { .. })
    ));
    image.flush().unwrap();
    assert!(read_all(&mut *image) == bytes);
    drop(image);
    assert!(std::fs::read(&path).unwrap() == before);
}

#[test]
fn qcow2_accesses_beyond_the_virtual_size_are_refused() {
    require_qemu_img!();
    let scratch = Scratch::new("qcow2-range");
    let path = scratch.path("disk.qcow2");
    common::create_qcow2(&path, "1M", "");
    let before = std::fs::read(&path).unwrap();
    let mut image = open(&path, None, false);
    let mut buf = [0u8; 2];
    assert!(matches!(
        image.read_at(&mut buf, (1 << 20) - 1),
        Err(Error::OutOfRange { .. })
    ));
    assert!(matches!(
        image.write_at(&buf, 1 << 20),
        Err(Error::OutOfRange { .. })
    ));
    assert!(matches!(
        image.write_at(&buf, u64::MAX - 1),
        Err(Error::OutOfRange { .. })
    ));
    assert!(matches!(
        image.discard(1 << 20, 1),
        Err(Error::OutOfRange { .. })
    ));
    drop(image);
    assert!(std::fs::read(&path).unwrap() == before);
}

#[test]
fn compressed_clusters_are_refused_clearly() {
    require_qemu_img!();
    let scratch = Scratch::new("compressed");
    let raw = scratch.path("source.raw");
    std::fs::write(&raw, vec![0x5au8; 1 << 20]).unwrap();
    let path = scratch.path("disk.qcow2");
    qemu_img(&[
        "convert",
        "-c",
        "-f",
        "raw",
        "-O",
        "qcow2",
        s(&raw),
        s(&path),
    ]);
    let before = std::fs::read(&path).unwrap();
    let mut image = open(&path, None, false);
    let mut buf = vec![0u8; 512];
    let err = image.read_at(&mut buf, 0).unwrap_err();
    assert!(matches!(err, Error::Compressed { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("compressed clusters are not supported"),
        "{err}"
    );
    assert!(matches!(
        image.write_at(&buf, 100),
        Err(Error::Compressed { .. })
    ));
    drop(image);
    assert!(std::fs::read(&path).unwrap() == before);
}

#[test]
fn images_with_internal_snapshots_open_read_only() {
    require_qemu_img!();
    let scratch = Scratch::new("snapshots");
    let (path, bytes) = image_with_data(&scratch);
    qemu_img(&["snapshot", "-c", "snap", s(&path)]);
    let before = std::fs::read(&path).unwrap();
    let opts = OpenOptions {
        format: None,
        read_only: false,
    };
    let err = block::open(&path, &opts).err().expect("opened for writing");
    assert!(
        matches!(&err, Error::Unsupported { what, .. } if what.contains("snapshots")),
        "{err}"
    );
    assert!(std::fs::read(&path).unwrap() == before);
    assert!(read_all(&mut *open(&path, None, true)) == bytes);
}

#[test]
fn unknown_autoclear_bits_are_cleared_on_writable_open_only() {
    require_qemu_img!();
    let scratch = Scratch::new("autoclear");
    let (path, bytes) = image_with_data(&scratch);
    let mut header = std::fs::read(&path).unwrap();
    header[95] = 0x80;
    std::fs::write(&path, &header).unwrap();
    drop(open(&path, None, true));
    assert_eq!(
        std::fs::read(&path).unwrap()[95],
        0x80,
        "a read-only open wrote"
    );
    assert!(read_all(&mut *open(&path, None, false)) == bytes);
    assert_eq!(std::fs::read(&path).unwrap()[88..96], [0; 8]);
}

/// Images with random bytes changed in their metadata: opening, reading and writing them may
/// fail but must not panic.
#[test]
fn mutated_images_never_panic() {
    require_qemu_img!();
    let scratch = Scratch::new("fuzz");
    let raw = scratch.path("source.raw");
    let mut rng = Rng(31);
    random_raw(&raw, 256 << 10, &mut rng);
    let pristine = scratch.path("pristine.qcow2");
    qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "qcow2",
        "-o",
        "cluster_size=512",
        s(&raw),
        s(&pristine),
    ]);
    let bytes = std::fs::read(&pristine).unwrap();
    // The metadata sits in the first few clusters, before the data.
    let metadata_end = 8 * 512;
    let path = scratch.path("mutated.qcow2");
    let (mut opened, mut failed_io) = (0, 0);
    for _ in 0..300 {
        let mut mutated = bytes.clone();
        for _ in 0..1 + rng.below(6) {
            let at = rng.below(metadata_end) as usize;
            mutated[at] = match rng.below(3) {
                0 => mutated[at] ^ (1 << rng.below(8)),
                1 => rng.next() as u8,
                _ => [0, 0xff][rng.below(2) as usize],
            };
        }
        std::fs::write(&path, &mutated).unwrap();
        let Ok(mut image) = block::open(&path, &OpenOptions::default()) else {
            continue;
        };
        opened += 1;
        let size = image.size();
        let mut buf = vec![0u8; size.min(256 << 10) as usize];
        failed_io += usize::from(image.read_at(&mut buf, 0).is_err());
        for _ in 0..4 {
            let offset = rng.below(size.max(1));
            let len = (size - offset).min(3000) as usize;
            let _ = image.write_at(&rng.bytes(len), offset);
            let _ = image.write_zeroes(offset, len as u64);
        }
        let _ = image.flush();
    }
    eprintln!("{opened} of 300 mutated images opened, {failed_io} of those failed to read");
    assert!(opened > 0);
}

fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}
