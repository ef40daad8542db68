//! The crate's one error type, and how errno values from interface ioctls map onto it.

use std::io;

/// What went wrong on the host side of a network device.
///
/// Messages name the interface involved and, where there is one, the usual fix.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The interface name cannot be a Linux interface name.
    #[error(
        "Invalid interface name {name:?}: {reason} (names are 1-15 bytes, without '/', ':' or whitespace)"
    )]
    InvalidName {
        /// The name as given.
        name: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// `/dev/net/tun` does not exist, or the tun driver is not loaded.
    #[error("/dev/net/tun is missing: load the tun driver (modprobe tun)")]
    TunMissing,
    /// `/dev/net/tun` exists but could not be opened.
    #[error("Cannot open /dev/net/tun: needs root or CAP_NET_ADMIN, or read-write access to it")]
    TunAccess(#[source] io::Error),
    /// The caller may not create the tap, or may not attach to this persistent tap.
    #[error(
        "Opening tap {name} needs root or CAP_NET_ADMIN (or, for a persistent tap, being its owner)"
    )]
    TapPermission {
        /// The interface (or name template) asked for.
        name: String,
    },
    /// The caller lacks the privilege an operation on an interface needs.
    #[error("{op} on {name} needs root or CAP_NET_ADMIN")]
    PermissionDenied {
        /// The interface.
        name: String,
        /// What was attempted, e.g. "Setting the interface up".
        op: &'static str,
    },
    /// An interface of that name exists and is not a (single-queue) tap.
    #[error(
        "Interface {name} exists and is not a single-queue tap: pick another name or delete it"
    )]
    NotATap {
        /// The interface.
        name: String,
    },
    /// The tap exists and another process holds it open.
    #[error(
        "Tap {name} is already open in another process: stop that process or pick another name"
    )]
    TapBusy {
        /// The interface.
        name: String,
    },
    /// The interface does not exist in this network namespace.
    #[error("Interface {name} does not exist (in this network namespace)")]
    NoSuchInterface {
        /// The interface.
        name: String,
    },
    /// The bridge to attach to does not exist.
    #[error("Bridge {bridge} does not exist: create it with `ip link add {bridge} type bridge`")]
    BridgeMissing {
        /// The bridge's name.
        bridge: String,
    },
    /// The interface named as the bridge is not a bridge.
    #[error("Interface {bridge} is not a bridge")]
    NotABridge {
        /// The interface's name.
        bridge: String,
    },
    /// The interface is already a port of a bridge (this one or another).
    #[error(
        "Interface {name} is already a port of a bridge: detach it first (ip link set {name} nomaster)"
    )]
    AlreadyBridged {
        /// The interface.
        name: String,
    },
    /// Making the interface a port of the bridge failed for another reason.
    #[error("Cannot add {name} to bridge {bridge}")]
    BridgeAttach {
        /// The interface.
        name: String,
        /// The bridge.
        bridge: String,
        /// The kernel's answer.
        #[source]
        source: io::Error,
    },
    /// Another ioctl on the interface failed.
    #[error("{op} on {name} failed")]
    Ioctl {
        /// The interface.
        name: String,
        /// What was attempted, e.g. "Setting the vnet header size".
        op: &'static str,
        /// The kernel's answer.
        #[source]
        source: io::Error,
    },
    /// No socket for interface ioctls could be made.
    #[error("Cannot open a socket for interface ioctls")]
    ControlSocket(#[source] io::Error),
    /// A MAC address that does not parse.
    #[error("Invalid MAC address {input:?}: expected six hex bytes like 52:54:00:12:34:56")]
    InvalidMac {
        /// The text as given.
        input: String,
    },
}

impl Error {
    /// The error for a failed ioctl `op` on interface `name`: privilege and missing-interface
    /// errors get their own variants, everything else keeps the kernel's errno.
    pub(crate) fn from_ioctl(name: &str, op: &'static str, source: io::Error) -> Error {
        match source.raw_os_error() {
            Some(libc::EPERM | libc::EACCES) => Error::PermissionDenied {
                name: name.to_owned(),
                op,
            },
            Some(libc::ENODEV | libc::ENXIO) => Error::NoSuchInterface {
                name: name.to_owned(),
            },
            _ => Error::Ioctl {
                name: name.to_owned(),
                op,
                source,
            },
        }
    }
}
