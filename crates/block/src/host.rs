//! The host file under an image: positioned I/O whose errors name the file.

use std::fs::{File, OpenOptions};
use std::io::{self, ErrorKind, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use crate::Error;

/// Zeroes written by [`HostFile::write_zeroes`] when the host cannot deallocate.
const ZERO_CHUNK: usize = 64 * 1024;

/// An open image file and its name, for error messages.
#[derive(Debug)]
pub(crate) struct HostFile {
    file: File,
    path: PathBuf,
}

impl HostFile {
    /// Opens `path` for reading, and for writing unless `read_only`.
    pub(crate) fn open(path: &Path, read_only: bool) -> Result<Self, Error> {
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(|source| Error::Open {
                path: path.to_owned(),
                source,
            })?;
        Ok(Self {
            file,
            path: path.to_owned(),
        })
    }

    /// The file's name as it was opened.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    fn io_error(&self, op: &'static str, source: io::Error) -> Error {
        Error::Io {
            path: self.path.clone(),
            op,
            source,
        }
    }

    /// The file's length; seeking to the end also works for block devices.
    pub(crate) fn len(&self) -> Result<u64, Error> {
        (&self.file)
            .seek(SeekFrom::End(0))
            .map_err(|e| self.io_error("Measuring", e))
    }

    /// The (device, inode) pair that identifies the file on the host.
    pub(crate) fn identity(&self) -> Result<(u64, u64), Error> {
        let meta = self
            .file
            .metadata()
            .map_err(|e| self.io_error("Inspecting", e))?;
        Ok((meta.dev(), meta.ino()))
    }

    /// Fills `buf` from `offset`. Bytes past the end of the file read as zeroes, as they do in
    /// QEMU: a qcow2 image may end inside its last cluster.
    pub(crate) fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), Error> {
        let mut done = 0;
        while done < buf.len() {
            let pos = offset
                .checked_add(done as u64)
                .ok_or_else(|| self.io_error("Reading", ErrorKind::InvalidInput.into()))?;
            match self.file.read_at(&mut buf[done..], pos) {
                Ok(0) => {
                    buf[done..].fill(0);
                    break;
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(self.io_error("Reading", e)),
            }
        }
        Ok(())
    }

    /// Writes all of `buf` at `offset`.
    pub(crate) fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), Error> {
        self.file
            .write_all_at(buf, offset)
            .map_err(|e| self.io_error("Writing", e))
    }

    /// Puts written data on stable storage (`fdatasync`).
    pub(crate) fn sync_data(&self) -> Result<(), Error> {
        self.file
            .sync_data()
            .map_err(|e| self.io_error("Syncing", e))
    }

    /// Deallocates `len` bytes at `offset` without changing the file's length; they then read
    /// as zeroes. Returns false when the host cannot do it (file system or block device).
    pub(crate) fn punch_hole(&self, offset: u64, len: u64) -> Result<bool, Error> {
        self.fallocate(
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        )
    }

    /// Makes `len` bytes at `offset` read as zeroes, deallocating them where the host can and
    /// writing zeroes where it cannot.
    pub(crate) fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), Error> {
        if len == 0 || self.punch_hole(offset, len)? {
            return Ok(());
        }
        let zeroes = vec![0u8; ZERO_CHUNK.min(len as usize)];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(zeroes.len() as u64) as usize;
            self.write_at(&zeroes[..n], offset + done)?;
            done += n as u64;
        }
        Ok(())
    }

    fn fallocate(&self, mode: libc::c_int, offset: u64, len: u64) -> Result<bool, Error> {
        let (Ok(off), Ok(length)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len))
        else {
            return Ok(false);
        };
        loop {
            // SAFETY: fallocate only reads its integer arguments; the descriptor is owned by
            // `self.file` and stays open for the duration of the call.
            let ret = unsafe { libc::fallocate(self.file.as_raw_fd(), mode, off, length) };
            if ret == 0 {
                return Ok(true);
            }
            let err = io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EINTR) => continue,
                // Not supported by this file system or file type (block devices, ...).
                Some(libc::EOPNOTSUPP | libc::ENOSYS | libc::EINVAL | libc::ENODEV) => {
                    return Ok(false);
                }
                _ => return Err(self.io_error("Deallocating in", err)),
            }
        }
    }
}

/// A serial for `VIRTIO_BLK_T_GET_ID`: 16 hex digits hashed (FNV-1a) from the file's device and
/// inode, so it stays the same across opens of the same file.
pub(crate) fn serial(dev: u64, ino: u64) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in dev.to_le_bytes().into_iter().chain(ino.to_le_bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{hash:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_is_stable_and_fits_virtio_id() {
        assert_eq!(serial(0x803, 1234), serial(0x803, 1234));
        assert_ne!(serial(0x803, 1234), serial(0x803, 1235));
        assert!(serial(u64::MAX, u64::MAX).len() <= 20);
    }
}
