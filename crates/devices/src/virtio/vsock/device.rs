//! The virtio-vsock device model: the guest's CID, the host listener, activation.

use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use super::worker::VsockWorker;
use super::{QUEUE_SIZE, queue};
use crate::state::{StateError, ensure_fits};
use crate::virtio::{
    ActivateError, Activation, F_VERSION_1, VirtioDevice, VirtioWorker, device_type,
};

/// Size of the configuration space: `guest_cid` (u64).
const CONFIG_LEN: usize = 8;
/// Longest `sun_path` the kernel accepts, without its terminating NUL.
const SUN_PATH_MAX: usize = 107;
/// Bytes a port suffix (`_4294967295`) adds to PATH for guest-initiated connections.
const PORT_SUFFIX_MAX: usize = 11;

/// Counters of the vsock device, shared with its worker (metrics read them).
#[derive(Debug, Default)]
pub struct VsockStats {
    /// Packets put in the guest's rx queue.
    pub rx_packets: AtomicU64,
    /// Packets taken from the guest's tx queue.
    pub tx_packets: AtomicU64,
    /// Payload bytes sent to the guest.
    pub rx_bytes: AtomicU64,
    /// Payload bytes received from the guest.
    pub tx_bytes: AtomicU64,
    /// Connections established, in either direction.
    pub connections: AtomicU64,
    /// Packets that broke the protocol, and malformed descriptor chains.
    pub errors: AtomicU64,
}

/// Errors of building a vsock device.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    /// The guest CID is reserved or out of range.
    #[error("vsock guest CID {0} is invalid: use a number from 3 to 4294967294")]
    InvalidCid(u64),
    /// The socket path cannot take a port suffix within the kernel's limit.
    #[error(
        "vsock socket path {} is too long: at most {} bytes leave room for the `_<port>` suffix",
        .0.display(),
        SUN_PATH_MAX - PORT_SUFFIX_MAX
    )]
    PathTooLong(PathBuf),
    /// Something other than a socket is in the way.
    #[error("vsock socket path {} exists and is not a socket: remove it or choose another path", .0.display())]
    NotASocket(PathBuf),
    /// A stale socket could not be removed.
    #[error("cannot remove the stale vsock socket {}", path.display())]
    RemoveStale {
        /// The socket's path.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The listener could not be created.
    #[error("cannot listen on the vsock socket {}", path.display())]
    Listen {
        /// The socket's path.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// A virtio-vsock device whose connections end on Unix sockets around one host path.
pub struct Vsock {
    cid: u64,
    path: PathBuf,
    listener: Arc<UnixListener>,
    stats: Arc<VsockStats>,
    /// Restored from a snapshot: the next worker tells the guest its connections are gone.
    transport_reset: bool,
}

impl Vsock {
    /// A vsock device for a guest with CID `cid`, listening for host connections on the Unix
    /// socket `path` (a stale socket there is replaced). Guest connections to host port P go to
    /// the Unix socket `<path>_P`.
    pub fn new(cid: u64, path: impl AsRef<Path>) -> Result<Self, VsockError> {
        let path = path.as_ref().to_path_buf();
        if !(3..u64::from(u32::MAX)).contains(&cid) {
            return Err(VsockError::InvalidCid(cid));
        }
        if path.as_os_str().as_bytes().len() + PORT_SUFFIX_MAX > SUN_PATH_MAX {
            return Err(VsockError::PathTooLong(path));
        }
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.file_type().is_socket() => {
                std::fs::remove_file(&path).map_err(|source| VsockError::RemoveStale {
                    path: path.clone(),
                    source,
                })?;
            }
            Ok(_) => return Err(VsockError::NotASocket(path)),
            Err(_) => {}
        }
        let listen = |source| VsockError::Listen {
            path: path.clone(),
            source,
        };
        let listener = UnixListener::bind(&path).map_err(listen)?;
        listener.set_nonblocking(true).map_err(listen)?;
        Ok(Self {
            cid,
            path,
            listener: Arc::new(listener),
            stats: Arc::default(),
            transport_reset: false,
        })
    }

    /// The guest's CID.
    pub fn cid(&self) -> u64 {
        self.cid
    }

    /// The host socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The device's counters.
    pub fn stats(&self) -> Arc<VsockStats> {
        self.stats.clone()
    }
}

impl VirtioDevice for Vsock {
    fn name(&self) -> &'static str {
        "vsock"
    }

    fn device_type(&self) -> u32 {
        device_type::VSOCK
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_SIZE; 3]
    }

    fn features(&self) -> u64 {
        F_VERSION_1
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let config: [u8; CONFIG_LEN] = self.cid.to_le_bytes();
        let Ok(start) = usize::try_from(offset) else {
            return;
        };
        if start < CONFIG_LEN {
            let n = data.len().min(CONFIG_LEN - start);
            data[..n].copy_from_slice(&config[start..start + n]);
        }
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {
        // The configuration space is read-only.
    }

    fn activate(&mut self, a: Activation) -> Result<Box<dyn VirtioWorker>, ActivateError> {
        if a.queues.len() <= queue::EVENT {
            return Err(ActivateError::BadQueues {
                device: "vsock",
                what: format!("{} of the 3 queues are enabled", a.queues.len()),
            });
        }
        let worker = VsockWorker::new(
            a,
            self.cid,
            self.path.clone(),
            self.listener.clone(),
            self.stats.clone(),
            std::mem::take(&mut self.transport_reset),
        )
        .map_err(|source| ActivateError::Host {
            device: "vsock",
            what: "cannot create an epoll instance".into(),
            source,
        })?;
        Ok(Box::new(worker))
    }

    fn reset(&mut self) {
        // A driver that resets the device starts without connections anyway.
        self.transport_reset = false;
    }

    fn restore_state(&mut self, state: &serde_json::Value) -> Result<(), StateError> {
        ensure_fits(state.is_null(), "vsock", || {
            "device state saved for a device that has none".into()
        })?;
        self.transport_reset = true;
        Ok(())
    }
}
