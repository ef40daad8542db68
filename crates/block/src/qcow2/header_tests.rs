//! Tests of the header parser: hand-made headers, and mutated ones that must never panic.

use super::*;

/// A valid version 3 header with 64 KiB clusters for a 1 GiB disk, in a 64 KiB buffer.
fn valid_v3() -> Vec<u8> {
    let mut buf = vec![0u8; 1 << 16];
    let mut put = |at: usize, bytes: &[u8]| buf[at..at + bytes.len()].copy_from_slice(bytes);
    put(0, &QCOW2_MAGIC);
    put(4, &3u32.to_be_bytes());
    put(20, &16u32.to_be_bytes());
    put(24, &(1u64 << 30).to_be_bytes());
    put(36, &2u32.to_be_bytes());
    put(40, &0x3_0000u64.to_be_bytes());
    put(48, &0x1_0000u64.to_be_bytes());
    put(56, &1u32.to_be_bytes());
    put(96, &4u32.to_be_bytes());
    put(100, &112u32.to_be_bytes());
    buf
}

fn set32(buf: &mut [u8], at: usize, value: u32) {
    buf[at..at + 4].copy_from_slice(&value.to_be_bytes());
}

#[test]
fn valid_header_parses() {
    let header = Qcow2Header::parse(&valid_v3()).unwrap();
    assert_eq!(header.version, 3);
    assert_eq!(header.cluster_size(), 65536);
    assert_eq!(header.size, 1 << 30);
    assert_eq!(header.backing_file, None);
}

#[test]
fn backing_name_and_format_are_read() {
    let mut buf = valid_v3();
    // Backing format extension right after the header, then the end marker, then the name.
    set32(&mut buf, 112, EXT_BACKING_FORMAT);
    set32(&mut buf, 116, 3);
    buf[120..123].copy_from_slice(b"raw");
    buf[8..16].copy_from_slice(&512u64.to_be_bytes());
    set32(&mut buf, 16, 8);
    buf[512..520].copy_from_slice(b"base.img");
    let header = Qcow2Header::parse(&buf).unwrap();
    assert_eq!(header.backing_file.as_deref(), Some(&b"base.img"[..]));
    assert_eq!(header.backing_format.as_deref(), Some("raw"));
}

/// Changes a valid header.
type Mutation = dyn Fn(&mut Vec<u8>);

#[test]
fn each_defect_has_its_own_error() {
    let cases: [(&Mutation, HeaderError); 10] = [
        (
            &|b| b.truncate(50),
            HeaderError::Truncated { len: 50, need: 72 },
        ),
        (&|b| b[0] = b'X', HeaderError::BadMagic(0x5846_49fb)),
        (&|b| set32(b, 4, 4), HeaderError::Version(4)),
        (&|b| set32(b, 20, 22), HeaderError::ClusterBits(22)),
        (&|b| set32(b, 32, 1), HeaderError::Encrypted(1)),
        (&|b| b[79] = 1, HeaderError::Dirty),
        (&|b| b[79] = 2, HeaderError::CorruptBit),
        (
            &|b| b[79] = 0x10,
            HeaderError::Feature("extended L2 entries"),
        ),
        (
            &|b| set32(b, 36, 1),
            HeaderError::L1TooSmall {
                entries: 1,
                need: 2,
            },
        ),
        (
            &|b| b[47] = 8,
            HeaderError::Unaligned {
                what: "L1 table",
                offset: 0x3_0008,
            },
        ),
    ];
    for (mutate, expected) in cases {
        let mut buf = valid_v3();
        mutate(&mut buf);
        assert_eq!(Qcow2Header::parse(&buf), Err(expected));
    }
}

#[test]
fn overrunning_extension_is_refused() {
    let mut buf = valid_v3();
    set32(&mut buf, 112, 0x1234_5678);
    set32(&mut buf, 116, 1 << 20);
    assert!(matches!(
        Qcow2Header::parse(&buf),
        Err(HeaderError::Extension {
            kind: 0x1234_5678,
            ..
        })
    ));
}

/// splitmix64: a fixed-seed generator, so a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn mutated_headers_never_panic() {
    let mut rng = Rng(0x0b10_c4ed);
    let base = {
        let mut buf = valid_v3();
        set32(&mut buf, 112, EXT_BACKING_FORMAT);
        set32(&mut buf, 116, 5);
        buf[120..125].copy_from_slice(b"qcow2");
        buf[8..16].copy_from_slice(&512u64.to_be_bytes());
        set32(&mut buf, 16, 4);
        buf[512..516].copy_from_slice(b"base");
        buf.truncate(1024);
        buf
    };
    let mut accepted = 0;
    for _ in 0..20_000 {
        let mut buf = base.clone();
        for _ in 0..1 + rng.below(8) {
            let at = if rng.below(4) == 0 {
                rng.below(buf.len())
            } else {
                rng.below(buf.len().min(128))
            };
            match rng.below(4) {
                0 => buf[at] ^= 1 << rng.below(8),
                1 => buf[at] = rng.next() as u8,
                2 => buf[at] = [0, 0xff, 0x7f, 0x80][rng.below(4)],
                _ => buf.truncate(rng.below(buf.len() + 1)),
            }
            if buf.is_empty() {
                break;
            }
        }
        accepted += usize::from(Qcow2Header::parse(&buf).is_ok());
    }
    // Purely random buffers, of every short length.
    for len in 0..300 {
        let buf: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        let _ = Qcow2Header::parse(&buf);
        let mut magic = buf.clone();
        if magic.len() >= 8 {
            magic[..4].copy_from_slice(&QCOW2_MAGIC);
            magic[4..8].copy_from_slice(&[0, 0, 0, 2 + (len % 2) as u8]);
            let _ = Qcow2Header::parse(&magic);
        }
    }
    assert!(
        accepted > 0,
        "no mutation kept the header valid: the mutations are too coarse"
    );
}
