//! virtio-vsock: guest sockets (`AF_VSOCK`, stream type) mapped to Unix sockets on the host, the
//! way Firecracker does it.
//!
//! [`Vsock`] is the device model: the guest's CID in the configuration space, and the Unix
//! listener at the device's PATH, bound when the device is built so that a bad path fails the VM's
//! start. Its worker (`worker.rs`) serves the three queues (rx, tx, event) on the device thread and, through
//! the muxer (`muxer.rs`), relays each guest connection to one host Unix stream:
//!
//! - Host to guest: a client connects to PATH and writes `CONNECT <port>\n`. The device asks the
//!   guest to accept a connection on `<port>` from an ephemeral host port; once the guest agrees,
//!   the client reads `OK <host port>\n` and the socket carries the stream from then on. If the
//!   guest refuses, the client's socket is closed.
//! - Guest to host: a guest connection to CID 2, port P, becomes a connection to the Unix socket
//!   `PATH_P`. If nothing listens there, the guest's connect fails.
//!
//! Data flow obeys the virtio-vsock credit scheme in both directions: the device sends the guest
//! no more than its advertised buffer space, and buffers at most its own advertised space
//! (256 KiB per connection) of guest data that the host socket has not taken yet.
//!
//! A guest is hostile: a packet that breaks the protocol earns a reset of the connection it names
//! and counts as an error; a malformed descriptor chain is returned unused and counts too.
//!
//! Connections do not survive a snapshot: a restored device sends the guest a transport reset
//! (`state.rs`).

mod connection;
mod device;
mod muxer;
mod packet;
mod state;
mod worker;

#[cfg(test)]
mod tests;

pub use device::{Vsock, VsockError, VsockStats};

/// The CID of the host, as the guest addresses it.
const HOST_CID: u64 = 2;

/// Queue size offered for each of the three queues.
const QUEUE_SIZE: u16 = 256;

/// Queue indices.
mod queue {
    pub const RX: usize = 0;
    pub const TX: usize = 1;
    pub const EVENT: usize = 2;
}

/// Packet operations (virtio 1.2, 5.10.6).
mod op {
    pub const REQUEST: u16 = 1;
    pub const RESPONSE: u16 = 2;
    pub const RST: u16 = 3;
    pub const SHUTDOWN: u16 = 4;
    pub const RW: u16 = 5;
    pub const CREDIT_UPDATE: u16 = 6;
    pub const CREDIT_REQUEST: u16 = 7;
}

/// Flags of a SHUTDOWN packet: what its sender will no longer do.
mod shutdown {
    /// The sender will receive no more data.
    pub const RCV: u32 = 1;
    /// The sender will send no more data.
    pub const SEND: u32 = 2;
}

/// VIRTIO_VSOCK_TYPE_STREAM, the only socket type offered.
const TYPE_STREAM: u16 = 1;
