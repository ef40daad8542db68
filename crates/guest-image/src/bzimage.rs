//! Turns a bzImage into the uncompressed ELF `vmlinux` inside it.
//!
//! The x86 boot protocol header (version 2.08 or later) says where the compressed kernel is:
//! `setup_sects` (offset 0x1f1) gives the size of the real-mode setup, so protected-mode code starts
//! at `(setup_sects + 1) * 512`; `payload_offset` (0x248) and `payload_length` (0x24c) locate the
//! payload relative to that start. Debian compresses it with LZ4 in the *legacy* frame format, which
//! is decoded here with lz4_flex's block decoder. Other compressions are refused by name.

use crate::elf;

/// Magic of an LZ4 legacy frame (`0x184c2102` little-endian).
pub const LZ4_LEGACY_MAGIC: [u8; 4] = [0x02, 0x21, 0x4c, 0x18];
/// Largest decompressed size of one block of an LZ4 legacy frame.
pub const LZ4_LEGACY_BLOCK_MAX: usize = 8 << 20;

/// Why a kernel image could not be turned into a `vmlinux`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file is too short or lacks the "HdrS" signature.
    #[error("Not a bzImage: {0}")]
    NotBzImage(&'static str),
    /// The boot protocol predates the payload fields.
    #[error(
        "bzImage boot protocol {major}.{minor:02} is older than 2.08 and does not locate its payload"
    )]
    OldProtocol {
        /// Major protocol version.
        major: u8,
        /// Minor protocol version.
        minor: u8,
    },
    /// The payload lies (partly) outside the file.
    #[error("bzImage payload at {offset:#x}+{length:#x} lies outside the {file_len}-byte file")]
    PayloadOutOfBounds {
        /// Payload offset from the start of the file.
        offset: u64,
        /// Payload length.
        length: u64,
        /// Size of the file.
        file_len: usize,
    },
    /// The payload uses a compression this crate does not decode.
    #[error(
        "bzImage payload is {name}-compressed (magic {magic}); only LZ4 (legacy frame) is supported"
    )]
    UnsupportedCompression {
        /// Name of the compression recognised from the magic, or "unknown".
        name: &'static str,
        /// The first bytes of the payload, in hex.
        magic: String,
    },
    /// The LZ4 legacy frame is malformed.
    #[error("Corrupt LZ4 legacy frame: {0}")]
    Lz4(String),
    /// The decompressed kernel is not an x86-64 ELF.
    #[error("The decompressed kernel is not an x86-64 ELF file")]
    NotX86_64Elf,
    /// The decompressed kernel cannot be started through PVH.
    #[error(
        "The kernel has no Xen PVH entry note (PT_NOTE \"Xen\", type 18); it needs CONFIG_PVH=y"
    )]
    NoPvhNote,
}

/// How a bzImage payload is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// LZ4 legacy frame, as Debian ships.
    Lz4Legacy,
    /// Not compressed (`CONFIG_KERNEL_UNCOMPRESSED`): the payload is the ELF itself.
    None,
}

impl Compression {
    /// Short name for progress messages ("LZ4").
    pub fn name(self) -> &'static str {
        match self {
            Compression::Lz4Legacy => "LZ4",
            Compression::None => "uncompressed",
        }
    }
}

/// The compressed kernel inside a bzImage.
#[derive(Debug)]
pub struct Payload<'a> {
    /// How `data` is compressed.
    pub compression: Compression,
    /// The payload bytes.
    pub data: &'a [u8],
}

fn u32_at(data: &[u8], offset: usize) -> u32 {
    u32::from_le_bytes(data[offset..offset + 4].try_into().expect("4 bytes"))
}

/// Locates the payload of a bzImage and recognises its compression.
pub fn payload(bzimage: &[u8]) -> Result<Payload<'_>, Error> {
    if bzimage.len() < 0x250 {
        return Err(Error::NotBzImage("shorter than the boot protocol header"));
    }
    if bzimage[0x202..0x206] != *b"HdrS" {
        return Err(Error::NotBzImage("no \"HdrS\" signature at offset 0x202"));
    }
    let (minor, major) = (bzimage[0x206], bzimage[0x207]);
    if (major, minor) < (2, 8) {
        return Err(Error::OldProtocol { major, minor });
    }
    // A zero setup_sects means 4, for compatibility with ancient boot loaders.
    let setup_sects = match bzimage[0x1f1] {
        0 => 4,
        n => u64::from(n),
    };
    let offset = (setup_sects + 1) * 512 + u64::from(u32_at(bzimage, 0x248));
    let length = u64::from(u32_at(bzimage, 0x24c));
    let out_of_bounds = Error::PayloadOutOfBounds {
        offset,
        length,
        file_len: bzimage.len(),
    };
    let start =
        usize::try_from(offset).map_err(|_| Error::NotBzImage("payload offset overflows"))?;
    let end =
        usize::try_from(offset + length).map_err(|_| Error::NotBzImage("payload overflows"))?;
    let data = bzimage.get(start..end).ok_or(out_of_bounds)?;
    let compression = match data {
        [0x02, 0x21, 0x4c, 0x18, ..] => Compression::Lz4Legacy,
        [0x7f, b'E', b'L', b'F', ..] => Compression::None,
        _ => {
            let name = match data {
                [0x1f, 0x8b, ..] => "gzip",
                [0xfd, b'7', b'z', b'X', b'Z', 0, ..] => "xz",
                [0x28, 0xb5, 0x2f, 0xfd, ..] => "zstd",
                [b'B', b'Z', b'h', ..] => "bzip2",
                [0x5d, 0, 0, ..] => "lzma",
                [0x89, b'L', b'Z', b'O', ..] => "lzo",
                [0x04, 0x22, 0x4d, 0x18, ..] => "LZ4 (modern frame)",
                _ => "unknown",
            };
            let magic = data
                .iter()
                .take(6)
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(" ");
            return Err(Error::UnsupportedCompression { name, magic });
        }
    };
    Ok(Payload { compression, data })
}

/// Decodes an LZ4 legacy frame: the magic, then blocks of `[u32 LE compressed size][block]`, each
/// decompressing independently to at most 8 MiB. The magic may repeat (concatenated frames). The
/// kernel build appends the decompressed size as a trailing u32 LE, which is checked when present.
pub fn decompress_lz4_legacy(frame: &[u8]) -> Result<Vec<u8>, Error> {
    let corrupt = |what: String| Error::Lz4(what);
    let Some(mut rest) = frame.strip_prefix(&LZ4_LEGACY_MAGIC) else {
        return Err(corrupt("missing magic 02 21 4c 18".into()));
    };
    // The largest compressed block that can expand to 8 MiB (LZ4_compressBound).
    let max_block = LZ4_LEGACY_BLOCK_MAX + LZ4_LEGACY_BLOCK_MAX / 255 + 16;
    let mut out = Vec::new();
    if let Some(tail) = frame.len().checked_sub(4).filter(|&t| t >= 4) {
        // Reserve what the trailer announces, within reason; a wrong value only costs a reallocation.
        out.reserve((u32_at(frame, tail) as usize).min(1 << 30));
    }
    while !rest.is_empty() {
        let Some((size, after)) = rest.split_first_chunk::<4>() else {
            return Err(corrupt(format!("{} stray bytes at the end", rest.len())));
        };
        if *size == LZ4_LEGACY_MAGIC {
            rest = after;
            continue;
        }
        let size = u32::from_le_bytes(*size) as usize;
        if after.is_empty() {
            // Nothing follows: this is the decompressed size the kernel build appended.
            if size != out.len() {
                return Err(corrupt(format!(
                    "trailer says {size} bytes, decoded {}",
                    out.len()
                )));
            }
            break;
        }
        if size > max_block || size > after.len() {
            return Err(corrupt(format!(
                "block of {size} bytes at offset {} (frame is {} bytes)",
                frame.len() - rest.len(),
                frame.len()
            )));
        }
        let (block, next) = after.split_at(size);
        let start = out.len();
        out.resize(start + LZ4_LEGACY_BLOCK_MAX, 0);
        let written = lz4_flex::block::decompress_into(block, &mut out[start..])
            .map_err(|e| corrupt(format!("block at offset {}: {e}", frame.len() - rest.len())))?;
        out.truncate(start + written);
        rest = next;
    }
    Ok(out)
}

/// Extracts the uncompressed ELF `vmlinux` from a bzImage and checks that it is an x86-64 ELF
/// carrying the Xen PVH entry note, so a VMM can boot it directly.
pub fn extract_vmlinux(bzimage: &[u8]) -> Result<Vec<u8>, Error> {
    let payload = payload(bzimage)?;
    let vmlinux = match payload.compression {
        Compression::Lz4Legacy => decompress_lz4_legacy(payload.data)?,
        Compression::None => payload.data.to_vec(),
    };
    if !elf::is_x86_64_elf(&vmlinux) {
        return Err(Error::NotX86_64Elf);
    }
    if !elf::has_pvh_note(&vmlinux) {
        return Err(Error::NoPvhNote);
    }
    Ok(vmlinux)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::elf::tests::elf_with_notes;

    /// Frames `data` as the kernel build does: legacy magic, blocks of at most `block` bytes each
    /// compressed on its own, then the decompressed size.
    fn lz4_legacy(data: &[u8], block: usize) -> Vec<u8> {
        let mut frame = LZ4_LEGACY_MAGIC.to_vec();
        for chunk in data.chunks(block) {
            let compressed = lz4_flex::block::compress(chunk);
            frame.extend_from_slice(&(compressed.len() as u32).to_le_bytes());
            frame.extend_from_slice(&compressed);
        }
        frame.extend_from_slice(&(data.len() as u32).to_le_bytes());
        frame
    }

    /// Data that compresses, but not to nothing: a counter mixed with repeated text.
    fn sample(len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| {
                if i % 7 == 0 {
                    (i / 7) as u8
                } else {
                    b"popek"[i % 5]
                }
            })
            .collect()
    }

    /// A bzImage-shaped file: setup sectors, the header fields, and `payload` after them.
    fn bzimage(setup_sects: u8, payload: &[u8]) -> Vec<u8> {
        let mut image = vec![0u8; (setup_sects as usize + 1) * 512];
        image[0x1f1] = setup_sects;
        image[0x202..0x206].copy_from_slice(b"HdrS");
        image[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
        let payload_offset = 0x100u32;
        image[0x248..0x24c].copy_from_slice(&payload_offset.to_le_bytes());
        image[0x24c..0x250].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        image.resize(image.len() + payload_offset as usize, 0xcc);
        image.extend_from_slice(payload);
        image.extend_from_slice(&[0xee; 64]); // what follows the payload in a real image
        image
    }

    #[test]
    fn lz4_legacy_frame_decodes_multiple_blocks_and_checks_the_trailer() {
        let data = sample(3 * 1024 * 1024 + 12345);
        let frame = lz4_legacy(&data, 1024 * 1024);
        assert!(frame.len() < data.len() / 2, "sample data should compress");
        assert_eq!(decompress_lz4_legacy(&frame).unwrap(), data);

        // Full-size 8 MiB blocks, as the kernel writes them.
        let big = sample(LZ4_LEGACY_BLOCK_MAX + 100);
        assert_eq!(
            decompress_lz4_legacy(&lz4_legacy(&big, LZ4_LEGACY_BLOCK_MAX)).unwrap(),
            big
        );
    }

    #[test]
    fn lz4_legacy_frame_without_trailer_and_with_repeated_magic() {
        let data = sample(5000);
        let mut frame = lz4_legacy(&data[..2000], 1000);
        frame.truncate(frame.len() - 4); // no trailer
        let second = lz4_legacy(&data[2000..], 1000);
        frame.extend_from_slice(&second[..second.len() - 4]);
        assert_eq!(decompress_lz4_legacy(&frame).unwrap(), data);
    }

    #[test]
    fn lz4_legacy_frame_errors_are_reported() {
        let data = sample(10_000);
        let frame = lz4_legacy(&data, 4096);
        let mut wrong_trailer = frame.clone();
        let n = wrong_trailer.len();
        wrong_trailer[n - 4..].copy_from_slice(&9999u32.to_le_bytes());
        let err = decompress_lz4_legacy(&wrong_trailer)
            .unwrap_err()
            .to_string();
        assert!(err.contains("trailer says 9999"), "{err}");

        let err = decompress_lz4_legacy(&frame[..frame.len() / 2])
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("Corrupt LZ4 legacy frame"), "{err}");

        let err = decompress_lz4_legacy(b"\x04\x22\x4d\x18rest")
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing magic"), "{err}");
    }

    #[test]
    fn extracts_a_pvh_vmlinux_from_an_lz4_bzimage() {
        let elf = elf_with_notes(62, &[("Xen", 18, &[0; 4])]);
        let mut vmlinux = elf.clone();
        vmlinux.extend_from_slice(&sample(100_000)); // room for more than one block
        let image = bzimage(27, &lz4_legacy(&vmlinux, 32 * 1024));
        assert_eq!(payload(&image).unwrap().compression, Compression::Lz4Legacy);
        assert_eq!(extract_vmlinux(&image).unwrap(), vmlinux);
    }

    #[test]
    fn refuses_a_kernel_without_pvh_note() {
        let elf = elf_with_notes(62, &[("GNU", 3, &[0; 4])]);
        let image = bzimage(4, &lz4_legacy(&elf, 4096));
        assert!(matches!(extract_vmlinux(&image), Err(Error::NoPvhNote)));
        let image = bzimage(4, &lz4_legacy(b"not an elf at all, just bytes", 4096));
        assert!(matches!(extract_vmlinux(&image), Err(Error::NotX86_64Elf)));
    }

    #[test]
    fn truncated_or_foreign_files_are_not_bzimages() {
        let err = extract_vmlinux(&[0u8; 100]).unwrap_err().to_string();
        assert_eq!(err, "Not a bzImage: shorter than the boot protocol header");
        let err = extract_vmlinux(&vec![0u8; 4096]).unwrap_err().to_string();
        assert_eq!(err, "Not a bzImage: no \"HdrS\" signature at offset 0x202");

        // A real-looking header whose payload runs past the end of the file.
        let mut image = bzimage(4, &lz4_legacy(&sample(1000), 4096));
        image.truncate(image.len() - 200);
        let err = extract_vmlinux(&image).unwrap_err();
        assert!(matches!(err, Error::PayloadOutOfBounds { .. }), "{err}");

        let mut old = bzimage(4, b"payload");
        old[0x206..0x208].copy_from_slice(&0x0206u16.to_le_bytes());
        assert_eq!(
            extract_vmlinux(&old).unwrap_err().to_string(),
            "bzImage boot protocol 2.06 is older than 2.08 and does not locate its payload"
        );
    }

    #[test]
    fn other_compressions_are_refused_by_name() {
        let gzip = bzimage(4, &[0x1f, 0x8b, 0x08, 0x00, 0x00, 0x00, 0x00]);
        let err = extract_vmlinux(&gzip).unwrap_err().to_string();
        assert_eq!(
            err,
            "bzImage payload is gzip-compressed (magic 1f 8b 08 00 00 00); only LZ4 (legacy frame) is supported"
        );
        let zstd = bzimage(4, &[0x28, 0xb5, 0x2f, 0xfd, 1, 2, 3]);
        assert!(
            extract_vmlinux(&zstd)
                .unwrap_err()
                .to_string()
                .contains("zstd")
        );
    }
}
