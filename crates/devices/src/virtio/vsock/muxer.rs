//! The connection table: packets from the guest, events of the host sockets, and the packets
//! waiting for the guest's rx queue.
//!
//! Connections are keyed by (host port, guest port). Control packets for the guest (requests,
//! responses, resets, shutdowns, credit updates) wait in `pending` and go first; data is read from
//! a host socket only when an rx buffer is at hand, straight into a packet, so host-to-guest data
//! is never buffered here. Guest-to-host data the host socket cannot take yet waits in its
//! connection, and the socket joins a private epoll set that watches for room to write; that epoll
//! fd is one of the worker's sources.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::connection::{Connection, HostRead, SendError, State, connect_nonblocking};
use super::device::VsockStats;
use super::packet::Header;
use super::{HOST_CID, TYPE_STREAM, op, shutdown};

/// The worker's source token of the listener.
pub(super) const TOKEN_LISTENER: u64 = 3;
/// The worker's source token of the write-readiness epoll.
pub(super) const TOKEN_WRITABLE: u64 = 4;
/// Host sockets get tokens from here up, never reused.
const FIRST_HOST_TOKEN: u64 = 8;

/// Most connections at once; further requests are refused.
const MAX_CONNECTIONS: usize = 1024;
/// Most host clients that have not sent their `CONNECT` line yet.
const MAX_CLIENTS: usize = 64;
/// Control packets waiting for the guest beyond which the tx queue is left alone until the
/// guest provides rx buffers: answers to a flood of bad packets must not pile up without bound.
const MAX_PENDING: usize = 1024;
/// Longest `CONNECT <port>` line accepted.
const MAX_LINE: usize = 32;
/// Ephemeral host ports for host-initiated connections are allocated from here up.
const FIRST_LOCAL_PORT: u32 = 1 << 30;

/// (host port, guest port).
pub(super) type Key = (u32, u32);

/// A host client that has not named its port yet.
struct Client {
    stream: UnixStream,
    line: Vec<u8>,
}

/// A control packet for the guest; its header is built when it is sent, with fresh credit.
struct Pending {
    key: Key,
    op: u16,
    flags: u32,
}

/// All connections of one active device.
pub(super) struct Muxer {
    cid: u64,
    path: PathBuf,
    listener: Arc<UnixListener>,
    /// Accepting failed for lack of host resources: wait until a connection closes.
    listener_paused: bool,
    conns: BTreeMap<Key, Connection>,
    by_token: HashMap<u64, Key>,
    clients: BTreeMap<u64, Client>,
    pending: VecDeque<Pending>,
    next_token: u64,
    next_local_port: u32,
    /// Host sockets with guest data waiting for room, watched for EPOLLOUT.
    out_epoll: Epoll,
    /// Where the next search for host data starts, so that connections take turns.
    rr_next: Key,
    stats: Arc<VsockStats>,
}

impl Muxer {
    pub fn new(
        cid: u64,
        path: PathBuf,
        listener: Arc<UnixListener>,
        stats: Arc<VsockStats>,
    ) -> io::Result<Self> {
        Ok(Self {
            cid,
            path,
            listener,
            listener_paused: false,
            conns: BTreeMap::new(),
            by_token: HashMap::new(),
            clients: BTreeMap::new(),
            pending: VecDeque::new(),
            next_token: FIRST_HOST_TOKEN,
            next_local_port: FIRST_LOCAL_PORT,
            out_epoll: Epoll::new()?,
            rr_next: (0, 0),
            stats,
        })
    }

    /// Appends the host fds to watch. Connection sockets are listed only while their data can go
    /// somewhere (`rx_ready`: the guest has rx buffers), or level-triggered epoll would spin.
    pub fn sources(&self, rx_ready: bool, out: &mut Vec<(RawFd, u64)>) {
        if !self.listener_paused && self.clients.len() < MAX_CLIENTS {
            out.push((self.listener.as_raw_fd(), TOKEN_LISTENER));
        }
        out.push((self.out_epoll.as_raw_fd(), TOKEN_WRITABLE));
        out.extend(self.clients.iter().map(|(&t, c)| (c.stream.as_raw_fd(), t)));
        if rx_ready {
            out.extend(
                self.conns
                    .values()
                    .filter(|c| c.wants_read())
                    .map(|c| (c.stream.as_raw_fd(), c.token)),
            );
        }
    }

    /// Whether so many packets wait for the guest that its tx queue should wait too.
    pub fn backlogged(&self) -> bool {
        self.pending.len() >= MAX_PENDING
    }

    /// Whether there is something for the guest's rx queue.
    pub fn has_rx_work(&self) -> bool {
        !self.pending.is_empty() || self.conns.values().any(|c| c.readable && c.wants_read())
    }

    fn error(&self) {
        self.stats.errors.fetch_add(1, Ordering::Relaxed);
    }

    fn new_token(&mut self) -> u64 {
        let t = self.next_token;
        self.next_token += 1;
        t
    }

    fn push(&mut self, key: Key, op: u16, flags: u32) {
        self.pending.push_back(Pending { key, op, flags });
    }

    /// Closes the connection's host socket, if it still exists, and resets the guest's end.
    fn reset(&mut self, key: Key) {
        self.remove(key);
        self.push(key, op::RST, 0);
    }

    /// Forgets a connection (closing its host socket) without telling the guest.
    fn remove(&mut self, key: Key) {
        let Some(conn) = self.conns.remove(&key) else {
            return;
        };
        self.by_token.remove(&conn.token);
        if conn.watching_out {
            let _ = self.out_epoll.ctl(
                ControlOperation::Delete,
                conn.stream.as_raw_fd(),
                EpollEvent::default(),
            );
        }
        // Host resources were freed: accepting may work again.
        self.listener_paused = false;
    }

    /// Accepts host clients waiting on the listener.
    pub fn accept(&mut self) {
        while self.clients.len() < MAX_CLIENTS {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if stream.set_nonblocking(true).is_ok() {
                        let token = self.new_token();
                        let client = Client {
                            stream,
                            line: Vec::new(),
                        };
                        self.clients.insert(token, client);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    // Out of fds or memory: the listener stays readable, so stop watching it
                    // until a connection closes rather than spin.
                    self.listener_paused = true;
                    break;
                }
            }
        }
    }

    /// A host socket with `token` is readable.
    pub fn host_event(&mut self, token: u64) {
        if self.clients.contains_key(&token) {
            self.read_connect_line(token);
        } else if let Some(key) = self.by_token.get(&token)
            && let Some(conn) = self.conns.get_mut(key)
        {
            conn.readable = true;
        }
    }

    /// Reads a client's `CONNECT <port>\n` byte by byte (so that no stream data after it is
    /// consumed), then asks the guest for the connection.
    fn read_connect_line(&mut self, token: u64) {
        let Some(client) = self.clients.get_mut(&token) else {
            return;
        };
        let mut byte = [0u8];
        loop {
            match client.stream.read(&mut byte) {
                Ok(0) => break,
                Ok(_) if byte[0] == b'\n' => {
                    let client = self.clients.remove(&token);
                    if let Some(client) = client {
                        self.host_connect(token, client);
                    }
                    return;
                }
                Ok(_) if client.line.len() < MAX_LINE => client.line.push(byte[0]),
                Ok(_) => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => break,
            }
        }
        // End of file, an error or an overlong line: drop the client.
        self.clients.remove(&token);
    }

    /// Starts a host-initiated connection for a client that sent its line.
    fn host_connect(&mut self, token: u64, client: Client) {
        let Some(port) = parse_connect(&client.line) else {
            return;
        };
        if self.conns.len() >= MAX_CONNECTIONS {
            return;
        }
        let Some(local) = self.alloc_local_port() else {
            return;
        };
        let key = (local, port);
        let conn = Connection::new(client.stream, token, State::AwaitingResponse, None);
        self.conns.insert(key, conn);
        self.by_token.insert(token, key);
        self.push(key, op::REQUEST, 0);
    }

    /// A host port no connection uses.
    fn alloc_local_port(&mut self) -> Option<u32> {
        for _ in 0..=MAX_CONNECTIONS {
            let p = self.next_local_port;
            self.next_local_port = p.checked_add(1).unwrap_or(FIRST_LOCAL_PORT);
            if self.conns.range((p, 0)..=(p, u32::MAX)).next().is_none() {
                return Some(p);
            }
        }
        None
    }

    /// Answers a packet that cannot be served: the connection it names, if any, is reset.
    pub fn reject(&mut self, hdr: &Header) {
        self.error();
        if hdr.op != op::RST {
            self.reset((hdr.dst_port, hdr.src_port));
        }
    }

    /// Serves one packet from the guest; `payload` is its data (RW packets only).
    pub fn guest_packet(&mut self, hdr: &Header, payload: &[u8]) {
        if hdr.src_cid != self.cid || hdr.dst_cid != HOST_CID || hdr.kind != TYPE_STREAM {
            self.reject(hdr);
            return;
        }
        let key = (hdr.dst_port, hdr.src_port);
        match hdr.op {
            op::REQUEST => return self.guest_connect(key, hdr),
            op::RST => return self.remove(key),
            _ => {}
        }
        let Some(conn) = self.conns.get_mut(&key) else {
            self.reject(hdr);
            return;
        };
        conn.update_peer_credit(hdr);
        match (conn.state, hdr.op) {
            (State::AwaitingResponse, op::RESPONSE) => {
                let ok = format!("OK {}\n", key.0);
                if matches!((&conn.stream).write(ok.as_bytes()), Ok(n) if n == ok.len()) {
                    conn.state = State::Established;
                    self.stats.connections.fetch_add(1, Ordering::Relaxed);
                } else {
                    // The client is gone, or not reading even this much.
                    self.reset(key);
                }
            }
            (State::Established, op::SHUTDOWN) => self.guest_shutdown(key, hdr.flags),
            (State::Established, op::RW) => self.guest_data(key, payload),
            (State::Established, op::CREDIT_UPDATE) => {}
            (State::Established, op::CREDIT_REQUEST) => self.queue_credit_update(key),
            _ => self.reject(hdr),
        }
    }

    /// A guest-initiated connection to host port `key.0`: connect to `PATH_<port>`.
    fn guest_connect(&mut self, key: Key, hdr: &Header) {
        if self.conns.contains_key(&key) {
            // A second request for a live connection.
            self.reject(hdr);
            return;
        }
        let mut path = self.path.as_os_str().to_owned();
        path.push(format!("_{}", key.0));
        let stream = if self.conns.len() < MAX_CONNECTIONS {
            connect_nonblocking(&path).ok()
        } else {
            None
        };
        let Some(stream) = stream else {
            self.push(key, op::RST, 0);
            return;
        };
        let token = self.new_token();
        let conn = Connection::new(stream, token, State::Established, Some(hdr));
        self.conns.insert(key, conn);
        self.by_token.insert(token, key);
        self.stats.connections.fetch_add(1, Ordering::Relaxed);
        self.push(key, op::RESPONSE, 0);
    }

    fn guest_shutdown(&mut self, key: Key, flags: u32) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if flags & shutdown::SEND != 0 {
            conn.guest_shut_send = true;
            conn.shut_host_write_if_done();
        }
        if flags & shutdown::RCV != 0 {
            conn.guest_shut_rcv = true;
        }
        if conn.guest_shut_send && conn.guest_shut_rcv {
            if conn.pending_to_host() == 0 {
                self.reset(key);
            } else {
                // Pass on what the guest sent before closing; `flush_conn` finishes.
                conn.closing = true;
            }
        }
    }

    fn guest_data(&mut self, key: Key, payload: &[u8]) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if conn.guest_shut_send {
            // Data after the guest said it would send no more.
            self.error();
            self.reset(key);
            return;
        }
        match conn.send_to_host(payload) {
            Ok(()) => {}
            Err(SendError::Host) => return self.reset(key),
            Err(SendError::OverCredit) => {
                self.error();
                return self.reset(key);
            }
        }
        if conn.pending_to_host() > 0 && !conn.watching_out {
            let event = EpollEvent::new(EventSet::OUT, conn.token);
            if self
                .out_epoll
                .ctl(ControlOperation::Add, conn.stream.as_raw_fd(), event)
                .is_err()
            {
                // Without a wake-up for room, the data would never leave.
                return self.reset(key);
            }
            conn.watching_out = true;
        }
        if conn.credit_update_due() {
            self.queue_credit_update(key);
        }
    }

    fn queue_credit_update(&mut self, key: Key) {
        if let Some(conn) = self.conns.get_mut(&key)
            && !conn.credit_update_queued
        {
            conn.credit_update_queued = true;
            self.push(key, op::CREDIT_UPDATE, 0);
        }
    }

    /// The write-readiness epoll is readable: flush the connections that have room.
    pub fn flush_writable(&mut self) {
        let mut events = [EpollEvent::default(); 32];
        let n = self.out_epoll.wait(0, &mut events).unwrap_or(0);
        for e in &events[..n] {
            if let Some(&key) = self.by_token.get(&e.data()) {
                self.flush_conn(key);
            }
        }
    }

    fn flush_conn(&mut self, key: Key) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        match conn.flush() {
            Err(_) => return self.reset(key),
            Ok(false) => {}
            Ok(true) => {
                if conn.watching_out {
                    let _ = self.out_epoll.ctl(
                        ControlOperation::Delete,
                        conn.stream.as_raw_fd(),
                        EpollEvent::default(),
                    );
                    conn.watching_out = false;
                }
                conn.shut_host_write_if_done();
                if conn.closing {
                    return self.reset(key);
                }
            }
        }
        if conn.credit_update_due() {
            self.queue_credit_update(key);
        }
    }

    /// The next packet for the guest, for an rx buffer with room for `cap` payload bytes: a
    /// control packet, or data from a host socket the guest has credit for. The payload is left
    /// in `buf`.
    pub fn fill_rx(&mut self, buf: &mut Vec<u8>, cap: usize) -> Option<Header> {
        loop {
            while let Some(p) = self.pending.pop_front() {
                let mut h = Header::to_guest(self.cid, p.key.0, p.key.1, p.op);
                h.flags = p.flags;
                match self.conns.get_mut(&p.key) {
                    Some(conn) => {
                        conn.stamp(&mut h);
                        if p.op == op::CREDIT_UPDATE {
                            conn.credit_update_queued = false;
                        }
                    }
                    // News of a connection that is gone since is stale; a reset is not.
                    None if p.op != op::RST => continue,
                    None => {}
                }
                buf.clear();
                return Some(h);
            }
            if let Some(h) = self.read_host_data(buf, cap) {
                return Some(h);
            }
            if self.pending.is_empty() {
                return None;
            }
        }
    }

    /// Reads host data for the guest from the next connection that has some. An end of file or
    /// a failure queues the control packet that says so and returns `None`.
    fn read_host_data(&mut self, buf: &mut Vec<u8>, cap: usize) -> Option<Header> {
        if cap == 0 {
            return None;
        }
        let ready = |(k, c): (&Key, &Connection)| (c.readable && c.wants_read()).then_some(*k);
        let keys: Vec<Key> = self
            .conns
            .range(self.rr_next..)
            .chain(self.conns.range(..self.rr_next))
            .filter_map(ready)
            .collect();
        for key in keys {
            let Some(conn) = self.conns.get_mut(&key) else {
                continue;
            };
            let n = cap.min(conn.peer_credit() as usize);
            buf.resize(n, 0);
            match conn.read_host(&mut buf[..n]) {
                HostRead::Data(n) => {
                    buf.truncate(n);
                    let mut h = Header::to_guest(self.cid, key.0, key.1, op::RW);
                    h.len = n as u32;
                    conn.stamp(&mut h);
                    self.rr_next = successor(key);
                    return Some(h);
                }
                HostRead::WouldBlock => conn.readable = false,
                HostRead::Eof => {
                    conn.host_eof = true;
                    // When the guest is done sending too and all of it was passed on, nothing
                    // more will flow either way: the guest answers a full shutdown with a reset.
                    let mut flags = shutdown::SEND;
                    if conn.guest_shut_send && conn.pending_to_host() == 0 {
                        flags |= shutdown::RCV;
                    }
                    self.push(key, op::SHUTDOWN, flags);
                    return None;
                }
                HostRead::Failed => {
                    self.reset(key);
                    return None;
                }
            }
        }
        None
    }
}

/// The key right after `k` in the table's order.
fn successor(k: Key) -> Key {
    match k.1.checked_add(1) {
        Some(peer) => (k.0, peer),
        None => (k.0.wrapping_add(1), 0),
    }
}

/// The port of a `CONNECT <port>` line (a trailing CR is allowed).
fn parse_connect(line: &[u8]) -> Option<u32> {
    let line = std::str::from_utf8(line).ok()?;
    let port = line
        .strip_suffix('\r')
        .unwrap_or(line)
        .strip_prefix("CONNECT ")?;
    port.trim().parse().ok()
}
