//! A small writer for cpio "newc" archives, the format the Linux kernel unpacks as an initramfs.
//!
//! Each entry is a 110-byte ASCII header (`070701` and 13 eight-digit hex fields), the NUL-terminated
//! name padded so header + name is a multiple of 4 bytes, then the data padded to 4 bytes. The archive
//! ends with an entry named `TRAILER!!!`. The kernel does not create parent directories while
//! unpacking, so callers add each directory before the entries inside it.

use std::io::{self, Write};

/// Mode bits of a directory (`S_IFDIR`).
const S_IFDIR: u32 = 0o040_000;
/// Mode bits of a regular file (`S_IFREG`).
const S_IFREG: u32 = 0o100_000;
/// Mode bits of a symbolic link (`S_IFLNK`).
const S_IFLNK: u32 = 0o120_000;
/// Mode bits of a character device (`S_IFCHR`).
const S_IFCHR: u32 = 0o020_000;

/// The magic that starts every newc header (no checksums).
pub const MAGIC: &[u8; 6] = b"070701";
/// Length of a newc header in bytes.
pub const HEADER_LEN: usize = 110;
/// Name of the entry that ends an archive.
pub const TRAILER: &str = "TRAILER!!!";

/// The metadata of one entry, apart from its name and data.
struct Entry {
    mode: u32,
    nlink: u32,
    rdev_major: u32,
    rdev_minor: u32,
}

/// Writes a newc archive entry by entry; [`Writer::finish`] appends the trailer.
///
/// All entries are owned by root with modification time 0, so the same inputs give the same bytes.
pub struct Writer<W: Write> {
    out: W,
    next_ino: u32,
    written: u64,
    entries: usize,
}

impl<W: Write> Writer<W> {
    /// Starts an archive written to `out`.
    pub fn new(out: W) -> Self {
        Self {
            out,
            next_ino: 1,
            written: 0,
            entries: 0,
        }
    }

    /// Adds a directory with permission bits `perm` (for example `0o755`).
    pub fn dir(&mut self, path: &str, perm: u32) -> io::Result<()> {
        let entry = Entry {
            mode: S_IFDIR | (perm & 0o7777),
            nlink: 2,
            rdev_major: 0,
            rdev_minor: 0,
        };
        self.entry(path, &entry, &[])
    }

    /// Adds a regular file with permission bits `perm` and contents `data`.
    pub fn file(&mut self, path: &str, perm: u32, data: &[u8]) -> io::Result<()> {
        let entry = Entry {
            mode: S_IFREG | (perm & 0o7777),
            nlink: 1,
            rdev_major: 0,
            rdev_minor: 0,
        };
        self.entry(path, &entry, data)
    }

    /// Adds a symbolic link at `path` pointing to `target`.
    pub fn symlink(&mut self, path: &str, target: &str) -> io::Result<()> {
        let entry = Entry {
            mode: S_IFLNK | 0o777,
            nlink: 1,
            rdev_major: 0,
            rdev_minor: 0,
        };
        self.entry(path, &entry, target.as_bytes())
    }

    /// Adds a character device node with permission bits `perm` and device number `major:minor`.
    pub fn char_dev(&mut self, path: &str, perm: u32, major: u32, minor: u32) -> io::Result<()> {
        let entry = Entry {
            mode: S_IFCHR | (perm & 0o7777),
            nlink: 1,
            rdev_major: major,
            rdev_minor: minor,
        };
        self.entry(path, &entry, &[])
    }

    /// Number of entries written so far (not counting the trailer).
    pub fn entries(&self) -> usize {
        self.entries
    }

    /// Number of bytes written so far.
    pub fn bytes_written(&self) -> u64 {
        self.written
    }

    /// Writes the trailer, flushes and returns the underlying writer.
    pub fn finish(mut self) -> io::Result<W> {
        let trailer = Entry {
            mode: 0,
            nlink: 1,
            rdev_major: 0,
            rdev_minor: 0,
        };
        self.next_ino = 0;
        self.raw_entry(TRAILER, &trailer, &[])?;
        self.out.flush()?;
        Ok(self.out)
    }

    fn entry(&mut self, path: &str, entry: &Entry, data: &[u8]) -> io::Result<()> {
        // Archive names are relative to the root of the initramfs, the way `cpio -o` writes them.
        let name = path.trim_start_matches('/');
        if name.is_empty() || name.contains('\0') || name == TRAILER {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("invalid cpio entry name {path:?}"),
            ));
        }
        self.raw_entry(name, entry, data)?;
        self.entries += 1;
        Ok(())
    }

    fn raw_entry(&mut self, name: &str, entry: &Entry, data: &[u8]) -> io::Result<()> {
        let too_big = || {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{name} is too big for cpio"),
            )
        };
        let filesize = u32::try_from(data.len()).map_err(|_| too_big())?;
        // The name size counts the terminating NUL.
        let namesize = u32::try_from(name.len() + 1).map_err(|_| too_big())?;
        let fields = [
            self.next_ino,
            entry.mode,
            0, // uid
            0, // gid
            entry.nlink,
            0, // mtime
            filesize,
            0, // devmajor
            0, // devminor
            entry.rdev_major,
            entry.rdev_minor,
            namesize,
            0, // check (only used by the "070702" crc format)
        ];
        let mut header = Vec::with_capacity(HEADER_LEN + name.len() + 4);
        header.extend_from_slice(MAGIC);
        for field in fields {
            header.extend_from_slice(format!("{field:08x}").as_bytes());
        }
        header.extend_from_slice(name.as_bytes());
        header.push(0);
        header.resize(header.len().next_multiple_of(4), 0);
        self.put(&header)?;
        self.put(data)?;
        let pad = data.len().next_multiple_of(4) - data.len();
        self.put(&[0; 3][..pad])?;
        self.next_ino += 1;
        Ok(())
    }

    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One entry as parsed back from an archive.
    #[derive(Debug)]
    struct Parsed {
        name: String,
        mode: u32,
        nlink: u32,
        rdev: (u32, u32),
        data: Vec<u8>,
    }

    /// Parses a newc archive strictly: checks the magic, the padding bytes and that nothing follows
    /// the trailer.
    fn parse(archive: &[u8]) -> Vec<Parsed> {
        let mut entries = Vec::new();
        let mut pos = 0;
        loop {
            assert_eq!(pos % 4, 0, "entry at {pos} is not 4-byte aligned");
            let header = &archive[pos..pos + HEADER_LEN];
            assert_eq!(&header[..6], MAGIC);
            let field = |i: usize| {
                let hex = std::str::from_utf8(&header[6 + 8 * i..14 + 8 * i]).unwrap();
                u32::from_str_radix(hex, 16).unwrap()
            };
            let (mode, nlink, filesize, namesize) = (field(1), field(4), field(6), field(11));
            let name_start = pos + HEADER_LEN;
            let name_end = name_start + namesize as usize;
            assert_eq!(archive[name_end - 1], 0, "name is not NUL-terminated");
            let name = String::from_utf8(archive[name_start..name_end - 1].to_vec()).unwrap();
            let data_start = name_end.next_multiple_of(4);
            assert!(
                archive[name_end..data_start].iter().all(|&b| b == 0),
                "name padding not zero"
            );
            let data_end = data_start + filesize as usize;
            let next = data_end.next_multiple_of(4);
            assert!(
                archive[data_end..next].iter().all(|&b| b == 0),
                "data padding not zero"
            );
            let data = archive[data_start..data_end].to_vec();
            pos = next;
            if name == TRAILER {
                assert_eq!(pos, archive.len(), "bytes after the trailer");
                return entries;
            }
            entries.push(Parsed {
                name,
                mode,
                nlink,
                rdev: (field(9), field(10)),
                data,
            });
        }
    }

    #[test]
    fn archive_round_trips_names_modes_sizes_and_trailer() {
        let mut writer = Writer::new(Vec::new());
        writer.dir("/bin", 0o755).unwrap();
        writer.file("/bin/busybox", 0o755, b"12345").unwrap(); // 5 bytes: needs 3 bytes of padding
        writer.symlink("/bin/sh", "busybox").unwrap();
        writer.dir("dev", 0o755).unwrap();
        writer.char_dev("/dev/console", 0o600, 5, 1).unwrap();
        writer.file("/init", 0o755, b"#!/bin/busybox sh\n").unwrap();
        writer.file("/empty", 0o644, b"").unwrap();
        assert_eq!(writer.entries(), 7);
        let archive = writer.finish().unwrap();
        assert_eq!(archive.len() % 4, 0);

        let entries = parse(&archive);
        let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "bin",
                "bin/busybox",
                "bin/sh",
                "dev",
                "dev/console",
                "init",
                "empty"
            ]
        );
        assert_eq!(entries[0].mode, S_IFDIR | 0o755);
        assert_eq!(entries[0].nlink, 2);
        assert_eq!(entries[1].mode, S_IFREG | 0o755);
        assert_eq!(entries[1].data, b"12345");
        assert_eq!(entries[2].mode, S_IFLNK | 0o777);
        assert_eq!(entries[2].data, b"busybox");
        assert_eq!(entries[4].mode, S_IFCHR | 0o600);
        assert_eq!(entries[4].rdev, (5, 1));
        assert_eq!(entries[5].data, b"#!/bin/busybox sh\n");
        assert!(entries[6].data.is_empty());
    }

    #[test]
    fn header_fields_are_eight_hex_digits() {
        let mut writer = Writer::new(Vec::new());
        writer.file("a", 0o644, b"xy").unwrap();
        let archive = writer.finish().unwrap();
        // magic, ino 1, mode 0100644, uid, gid, nlink 1, mtime, filesize 2, ..., namesize 2.
        let header = std::str::from_utf8(&archive[..HEADER_LEN]).unwrap();
        let expected = [
            "070701", "00000001", "000081a4", "00000000", "00000000", "00000001", "00000000",
            "00000002", "00000000", "00000000", "00000000", "00000000", "00000002", "00000000",
        ]
        .concat();
        assert_eq!(header, expected);
        // 110-byte header + "a\0" = 112: already aligned, so data follows immediately.
        assert_eq!(&archive[112..114], b"xy");
    }

    #[test]
    fn rejects_names_the_kernel_would_misread() {
        let mut writer = Writer::new(Vec::new());
        assert!(writer.file("/", 0o644, b"").is_err());
        assert!(writer.file("a\0b", 0o644, b"").is_err());
        assert!(writer.file("TRAILER!!!", 0o644, b"").is_err());
        assert_eq!(writer.entries(), 0);
    }
}
