//! Raw images: the file's bytes are the disk's bytes, and its length is the disk's size.

use crate::host::{HostFile, serial};
use crate::qcow2::QCOW2_MAGIC;
use crate::{DiskImage, Error, Format, check_range};

/// A raw image file.
#[derive(Debug)]
pub(crate) struct RawImage {
    host: HostFile,
    size: u64,
    read_only: bool,
    /// The format was guessed, not given: writes must not turn the file into a qcow2 image.
    probed: bool,
    id: String,
}

impl RawImage {
    /// Wraps an opened file; `probed` says the caller did not name the format.
    pub(crate) fn new(host: HostFile, read_only: bool, probed: bool) -> Result<Self, Error> {
        let size = host.len()?;
        let (dev, ino) = host.identity()?;
        Ok(Self {
            host,
            size,
            read_only,
            probed,
            id: serial(dev, ino),
        })
    }

    fn check_writable(&self, offset: u64, len: u64) -> Result<(), Error> {
        if self.read_only {
            return Err(Error::ReadOnly {
                path: self.host.path().to_owned(),
            });
        }
        check_range(self.host.path(), offset, len, self.size)
    }

    /// Refuses a write that would leave the qcow2 magic in the first bytes of a probed image.
    fn check_signature(&self, buf: &[u8], offset: u64) -> Result<(), Error> {
        let magic_len = QCOW2_MAGIC.len() as u64;
        if !self.probed || offset >= magic_len {
            return Ok(());
        }
        let mut head = [0u8; QCOW2_MAGIC.len()];
        self.host.read_at(&mut head, 0)?;
        let start = offset as usize;
        let n = buf.len().min(head.len() - start);
        head[start..start + n].copy_from_slice(&buf[..n]);
        if head == QCOW2_MAGIC {
            return Err(Error::ProbedSignature {
                path: self.host.path().to_owned(),
            });
        }
        Ok(())
    }
}

impl DiskImage for RawImage {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> Result<(), Error> {
        check_range(self.host.path(), offset, buf.len() as u64, self.size)?;
        self.host.read_at(buf, offset)
    }

    fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<(), Error> {
        self.check_writable(offset, buf.len() as u64)?;
        self.check_signature(buf, offset)?;
        self.host.write_at(buf, offset)
    }

    fn flush(&mut self) -> Result<(), Error> {
        if self.read_only {
            Ok(())
        } else {
            self.host.sync_data()
        }
    }

    fn discard(&mut self, offset: u64, len: u64) -> Result<(), Error> {
        self.write_zeroes(offset, len)
    }

    fn write_zeroes(&mut self, offset: u64, len: u64) -> Result<(), Error> {
        self.check_writable(offset, len)?;
        self.host.write_zeroes(offset, len)
    }

    fn id(&self) -> String {
        self.id.clone()
    }

    fn format(&self) -> Format {
        Format::Raw
    }
}
