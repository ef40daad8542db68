//! Serving virtio-blk requests on the device thread.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use block::DiskImage;
use virtio_queue::{Queue, QueueState};
use vmm_sys_util::eventfd::EventFd;

use super::device::{BlockStats, MAX_ZERO_SEGMENTS, SEG_MAX};
use super::{SECTOR_SIZE, req, status};
use crate::virtio::chain::{self, Chain};
use crate::virtio::{GuestMemory, VirtioInterrupt, VirtioWorker};

/// The request header: type, reserved, sector.
const HEADER_LEN: usize = 16;
/// One discard / write-zeroes segment: sector, sectors, flags.
const ZERO_SEGMENT_LEN: usize = 16;
/// VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP.
const FLAG_UNMAP: u32 = 1;
/// Bytes of the ID a GET_ID request returns.
const ID_LEN: usize = 20;
/// Bytes moved between the image and guest memory per step.
const CHUNK: usize = 256 << 10;
/// The largest chain accepted: SEG_MAX data segments of up to 4 MiB each is far beyond what
/// Linux sends (it honours `seg_max`), and bounds what a hostile chain can ask for.
const MAX_CHAIN_BYTES: u64 = 1 << 30;

/// The block device's queue server.
pub(super) struct BlockWorker {
    pub(super) mem: GuestMemory,
    pub(super) queue: Queue,
    pub(super) notify: EventFd,
    pub(super) interrupt: Arc<dyn VirtioInterrupt>,
    pub(super) disk: Arc<Mutex<Box<dyn DiskImage>>>,
    pub(super) id: String,
    pub(super) read_only: bool,
    pub(super) stats: Arc<BlockStats>,
    pub(super) buffer: Vec<u8>,
}

impl VirtioWorker for BlockWorker {
    fn sources(&self) -> Vec<(RawFd, u64)> {
        vec![(self.notify.as_raw_fd(), 0)]
    }

    fn handle(&mut self, _token: u64) {
        // A failed read only means the counter was already 0: process the queue regardless.
        let _ = self.notify.read();
        self.process_queue();
    }

    fn queue_states(&self) -> Vec<QueueState> {
        vec![self.queue.state()]
    }
}

impl BlockWorker {
    /// Serves every available request.
    pub(super) fn process_queue(&mut self) {
        let mut notify = false;
        loop {
            let (head, used_len) =
                match chain::next_chain(&mut self.queue, &self.mem, MAX_CHAIN_BYTES) {
                    None => break,
                    Some(Ok(c)) => {
                        let used = self.serve(&c);
                        (c.head, used)
                    }
                    Some(Err((Some(head), _))) => {
                        // A malformed chain: nowhere trustworthy to put a status byte. It is
                        // returned unused, which the driver sees as a failed request.
                        self.stats.errors.fetch_add(1, Ordering::Relaxed);
                        (head, 0)
                    }
                    Some(Err((None, _))) => {
                        // The ring itself is inconsistent: stop until the driver fixes it.
                        self.stats.errors.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                };
            self.stats.requests.fetch_add(1, Ordering::Relaxed);
            match chain::complete(&mut self.queue, &self.mem, head, used_len) {
                Ok(n) => notify |= n,
                Err(_) => {
                    self.stats.errors.fetch_add(1, Ordering::Relaxed);
                    break;
                }
            }
        }
        if notify {
            self.interrupt.signal_queue(0);
        }
    }

    /// Executes one request. Returns the bytes written into the chain (the used length).
    fn serve(&mut self, c: &Chain) -> u32 {
        let writable = c.writable_len();
        if writable == 0 || c.readable.len() + c.writable.len() > SEG_MAX as usize + 2 {
            self.stats.errors.fetch_add(1, Ordering::Relaxed);
            return 0;
        }
        let status_at = writable - 1;
        let (st, data_written) = match self.execute(c, status_at) {
            Ok(n) => (status::OK, n),
            Err(st) => (st, 0),
        };
        if st != status::OK {
            self.stats.errors.fetch_add(1, Ordering::Relaxed);
        }
        c.write_at(&self.mem, status_at, &[st]);
        (data_written + 1) as u32
    }

    /// Runs the request; returns the data bytes written into the chain, or the error status.
    fn execute(&mut self, c: &Chain, data_len_w: u64) -> Result<u64, u8> {
        let mut header = [0u8; HEADER_LEN];
        if c.read_at(&self.mem, 0, &mut header) != HEADER_LEN {
            return Err(status::IOERR);
        }
        let kind = u32::from_le_bytes(header[0..4].try_into().unwrap_or_default());
        let sector = u64::from_le_bytes(header[8..16].try_into().unwrap_or_default());
        let data_len_r = c.readable_len() - HEADER_LEN as u64;
        let mut disk = self.disk.lock().unwrap_or_else(|p| p.into_inner());
        match kind {
            req::IN => {
                let offset = self.check_range(disk.size(), sector, data_len_w)?;
                let mut done = 0u64;
                while done < data_len_w {
                    let n = (data_len_w - done).min(CHUNK as u64) as usize;
                    self.buffer.resize(n, 0);
                    disk.read_at(&mut self.buffer[..n], offset + done)
                        .map_err(|_| status::IOERR)?;
                    if c.write_at(&self.mem, done, &self.buffer[..n]) != n {
                        return Err(status::IOERR);
                    }
                    done += n as u64;
                }
                self.stats
                    .read_bytes
                    .fetch_add(data_len_w, Ordering::Relaxed);
                Ok(data_len_w)
            }
            req::OUT => {
                if self.read_only {
                    return Err(status::IOERR);
                }
                let offset = self.check_range(disk.size(), sector, data_len_r)?;
                let mut done = 0u64;
                while done < data_len_r {
                    let n = (data_len_r - done).min(CHUNK as u64) as usize;
                    self.buffer.resize(n, 0);
                    let got = c.read_at(&self.mem, HEADER_LEN as u64 + done, &mut self.buffer[..n]);
                    if got != n {
                        return Err(status::IOERR);
                    }
                    disk.write_at(&self.buffer[..n], offset + done)
                        .map_err(|_| status::IOERR)?;
                    done += n as u64;
                }
                self.stats
                    .written_bytes
                    .fetch_add(data_len_r, Ordering::Relaxed);
                Ok(0)
            }
            req::FLUSH => disk.flush().map(|()| 0).map_err(|_| status::IOERR),
            req::GET_ID => {
                let mut id = [0u8; ID_LEN];
                let bytes = self.id.as_bytes();
                let n = bytes.len().min(ID_LEN);
                id[..n].copy_from_slice(&bytes[..n]);
                let n = (data_len_w as usize).min(ID_LEN);
                Ok(c.write_at(&self.mem, 0, &id[..n]) as u64)
            }
            req::DISCARD | req::WRITE_ZEROES => {
                if self.read_only {
                    return Err(status::IOERR);
                }
                if data_len_r == 0
                    || !data_len_r.is_multiple_of(ZERO_SEGMENT_LEN as u64)
                    || data_len_r / ZERO_SEGMENT_LEN as u64 > u64::from(MAX_ZERO_SEGMENTS)
                {
                    return Err(status::UNSUPP);
                }
                for i in 0..data_len_r / ZERO_SEGMENT_LEN as u64 {
                    let mut seg = [0u8; ZERO_SEGMENT_LEN];
                    let at = HEADER_LEN as u64 + i * ZERO_SEGMENT_LEN as u64;
                    if c.read_at(&self.mem, at, &mut seg) != ZERO_SEGMENT_LEN {
                        return Err(status::IOERR);
                    }
                    let start = u64::from_le_bytes(seg[0..8].try_into().unwrap_or_default());
                    let sectors = u32::from_le_bytes(seg[8..12].try_into().unwrap_or_default());
                    let flags = u32::from_le_bytes(seg[12..16].try_into().unwrap_or_default());
                    let allowed = if kind == req::DISCARD { 0 } else { FLAG_UNMAP };
                    if flags & !allowed != 0 {
                        return Err(status::UNSUPP);
                    }
                    let len = u64::from(sectors) * SECTOR_SIZE;
                    let offset = self.check_range(disk.size(), start, len)?;
                    let r = if kind == req::DISCARD {
                        disk.discard(offset, len)
                    } else {
                        disk.write_zeroes(offset, len)
                    };
                    r.map_err(|_| status::IOERR)?;
                }
                Ok(0)
            }
            _ => Err(status::UNSUPP),
        }
    }

    /// The byte offset of `sector`, when `len` bytes from there fit on the disk and `len` is whole
    /// sectors.
    fn check_range(&self, size: u64, sector: u64, len: u64) -> Result<u64, u8> {
        if !len.is_multiple_of(SECTOR_SIZE) {
            return Err(status::IOERR);
        }
        let offset = sector.checked_mul(SECTOR_SIZE).ok_or(status::IOERR)?;
        let end = offset.checked_add(len).ok_or(status::IOERR)?;
        if end > size {
            return Err(status::IOERR);
        }
        Ok(offset)
    }
}
