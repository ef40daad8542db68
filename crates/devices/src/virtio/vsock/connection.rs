//! One guest connection and the host Unix stream it is relayed to.

use std::collections::VecDeque;
use std::ffi::OsStr;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::num::Wrapping;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;

use super::packet::Header;

/// Receive buffer space the device advertises per connection: the most guest data it holds that
/// the host socket has not taken yet.
pub(super) const BUF_ALLOC: u32 = 256 << 10;
/// The device tells the guest how much it consumed once it has consumed this much since it last
/// said so (besides when the guest asks).
const CREDIT_UPDATE_THRESHOLD: u32 = BUF_ALLOC / 4;

/// Where a connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum State {
    /// Host-initiated: the guest was sent a REQUEST and has not answered.
    AwaitingResponse,
    /// Data may flow.
    Established,
}

/// What reading the host socket gave.
pub(super) enum HostRead {
    /// Bytes, at the start of the buffer.
    Data(usize),
    /// Nothing to read now.
    WouldBlock,
    /// The host will send no more.
    Eof,
    /// The socket failed: the connection is over.
    Failed,
}

/// A connection between a guest port and a host Unix stream.
pub(super) struct Connection {
    /// The host end (non-blocking).
    pub stream: UnixStream,
    /// The token of `stream` among the worker's sources.
    pub token: u64,
    pub state: State,
    /// The guest's receive buffer size, and how much of what it received it has consumed.
    peer_buf_alloc: u32,
    peer_fwd_cnt: Wrapping<u32>,
    /// Payload bytes sent to the guest.
    rx_cnt: Wrapping<u32>,
    /// Guest payload bytes the host socket has taken.
    fwd_cnt: Wrapping<u32>,
    /// `fwd_cnt` as last told to the guest.
    fwd_cnt_sent: Wrapping<u32>,
    /// Guest data waiting for room in the host socket (at most `BUF_ALLOC` bytes).
    tx_buf: VecDeque<u8>,
    /// The host socket was seen readable and has not been drained since.
    pub readable: bool,
    /// The host socket reached end of file.
    pub host_eof: bool,
    /// The guest will send no more data.
    pub guest_shut_send: bool,
    /// The guest will receive no more data.
    pub guest_shut_rcv: bool,
    /// The guest shut down both directions: close once `tx_buf` is flushed.
    pub closing: bool,
    /// `stream` is in the muxer's write-readiness epoll.
    pub watching_out: bool,
    /// A CREDIT_UPDATE for this connection is queued.
    pub credit_update_queued: bool,
}

impl Connection {
    /// A connection over `stream` in `state`, with the guest's credit as of `hdr`.
    pub fn new(stream: UnixStream, token: u64, state: State, hdr: Option<&Header>) -> Self {
        let mut c = Self {
            stream,
            token,
            state,
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            rx_cnt: Wrapping(0),
            fwd_cnt: Wrapping(0),
            fwd_cnt_sent: Wrapping(0),
            tx_buf: VecDeque::new(),
            readable: false,
            host_eof: false,
            guest_shut_send: false,
            guest_shut_rcv: false,
            closing: false,
            watching_out: false,
            credit_update_queued: false,
        };
        if let Some(h) = hdr {
            c.update_peer_credit(h);
        }
        c
    }

    /// Takes the guest's credit from a header it sent.
    pub fn update_peer_credit(&mut self, h: &Header) {
        self.peer_buf_alloc = h.buf_alloc;
        self.peer_fwd_cnt = Wrapping(h.fwd_cnt);
    }

    /// Payload bytes the guest has room for. A guest claiming to have consumed more than it was
    /// sent gets nothing until it makes sense again.
    pub fn peer_credit(&self) -> u32 {
        let in_flight = (self.rx_cnt - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Whether the host socket should be read now (not counting the guest's rx buffers).
    pub fn wants_read(&self) -> bool {
        self.state == State::Established
            && !self.host_eof
            && !self.guest_shut_rcv
            && !self.closing
            && self.peer_credit() > 0
    }

    /// Fills in our credit, which every packet to the guest carries.
    pub fn stamp(&mut self, h: &mut Header) {
        h.buf_alloc = BUF_ALLOC;
        h.fwd_cnt = self.fwd_cnt.0;
        self.fwd_cnt_sent = self.fwd_cnt;
    }

    /// Whether the guest should hear that we consumed its data.
    pub fn credit_update_due(&self) -> bool {
        (self.fwd_cnt - self.fwd_cnt_sent).0 >= CREDIT_UPDATE_THRESHOLD
    }

    /// Reads host data for the guest into `buf`.
    pub fn read_host(&mut self, buf: &mut [u8]) -> HostRead {
        loop {
            match self.stream.read(buf) {
                Ok(0) => return HostRead::Eof,
                Ok(n) => {
                    self.rx_cnt += n as u32;
                    return HostRead::Data(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return HostRead::WouldBlock,
                Err(_) => return HostRead::Failed,
            }
        }
    }

    /// Bytes waiting for the host socket.
    pub fn pending_to_host(&self) -> usize {
        self.tx_buf.len()
    }

    /// Passes guest data to the host socket, keeping what it cannot take now. Fails when the
    /// socket is broken, or when the guest sent more than its credit allows.
    pub fn send_to_host(&mut self, data: &[u8]) -> Result<(), SendError> {
        let mut data = data;
        if self.tx_buf.is_empty() {
            let n = write_some(&mut self.stream, data).map_err(|_| SendError::Host)?;
            self.fwd_cnt += n as u32;
            data = &data[n..];
        }
        if self.tx_buf.len() + data.len() > BUF_ALLOC as usize {
            return Err(SendError::OverCredit);
        }
        self.tx_buf.extend(data);
        Ok(())
    }

    /// Writes buffered guest data to the host socket. True when the buffer is empty.
    pub fn flush(&mut self) -> io::Result<bool> {
        while !self.tx_buf.is_empty() {
            let (front, _) = self.tx_buf.as_slices();
            let n = write_some(&mut self.stream, front)?;
            if n == 0 {
                return Ok(false);
            }
            self.tx_buf.drain(..n);
            self.fwd_cnt += n as u32;
        }
        Ok(true)
    }

    /// Closes the host socket's write half once the guest is done sending and everything it sent
    /// has been passed on.
    pub fn shut_host_write_if_done(&mut self) {
        if self.guest_shut_send && self.tx_buf.is_empty() {
            let _ = self.stream.shutdown(Shutdown::Write);
        }
    }
}

/// Why guest data could not be passed on.
#[derive(Debug)]
pub(super) enum SendError {
    /// The host socket is broken.
    Host,
    /// The guest ignored the credit it was given.
    OverCredit,
}

/// Writes as much of `data` as the non-blocking `stream` takes now.
fn write_some(stream: &mut UnixStream, data: &[u8]) -> io::Result<usize> {
    let mut done = 0;
    while done < data.len() {
        match stream.write(&data[done..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Connects a non-blocking Unix stream to `path` without waiting: `std`'s connect blocks while
/// the listener's backlog is full, and a guest could fill it on purpose to stall the device
/// thread. A full backlog fails with `WouldBlock` here.
pub(super) fn connect_nonblocking(path: &OsStr) -> io::Result<UnixStream> {
    let bytes = path.as_bytes();
    // SAFETY: `sockaddr_un` is plain old data, for which all zeroes is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(io::ErrorKind::InvalidInput.into());
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (dst, &src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = src as libc::c_char;
    }
    // SAFETY: socket(2) takes no pointers; the result is checked below.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by socket(2) and nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    // SAFETY: `addr` is a live, initialised `sockaddr_un` and `len` does not exceed its size
    // (the path is shorter than `sun_path` and NUL-terminated by the zeroing).
    let r = unsafe {
        libc::connect(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            (&raw const addr).cast::<libc::sockaddr>(),
            len as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(UnixStream::from(fd))
}
