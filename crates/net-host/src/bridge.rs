//! Interfaces as bridge ports, and setting links up, through socket ioctls in the calling
//! thread's network namespace.

use crate::Error;
use crate::name::IfName;
use crate::sys::{self, ControlSocket};

/// Makes interface `ifname` a port of the existing bridge `bridge` (`SIOCBRADDIF`).
///
/// The bridge is not created or set up here: that is the host administrator's (or the test's)
/// job, e.g. `ip link add br0 type bridge && ip link set br0 up`.
pub fn attach_to_bridge(ifname: &str, bridge: &str) -> Result<(), Error> {
    let port = IfName::new(ifname)?;
    let bridge_name = IfName::new(bridge)?;
    let socket = ControlSocket::open().map_err(Error::ControlSocket)?;

    let index = socket
        .ifindex(&port)
        .map_err(|e| Error::from_ioctl(ifname, "Looking up the interface", e))?;
    let mut req = sys::ifreq(&bridge_name);
    req.ifr_ifru.ifru_ifindex = index;
    socket
        .ifreq_ioctl(sys::SIOCBRADDIF, &mut req)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ENODEV) => Error::BridgeMissing {
                bridge: bridge.to_owned(),
            },
            Some(libc::EOPNOTSUPP) => Error::NotABridge {
                bridge: bridge.to_owned(),
            },
            Some(libc::EBUSY) => Error::AlreadyBridged {
                name: ifname.to_owned(),
            },
            Some(libc::EPERM | libc::EACCES) => Error::PermissionDenied {
                name: ifname.to_owned(),
                op: "Adding an interface to a bridge",
            },
            _ => Error::BridgeAttach {
                name: ifname.to_owned(),
                bridge: bridge.to_owned(),
                source: e,
            },
        })
}

/// Sets interface `ifname` administratively up (`SIOCSIFFLAGS` with `IFF_UP`), keeping its other
/// flags.
pub fn link_up(ifname: &str) -> Result<(), Error> {
    let name = IfName::new(ifname)?;
    let socket = ControlSocket::open().map_err(Error::ControlSocket)?;
    socket
        .set_up(&name)
        .map_err(|e| Error::from_ioctl(ifname, "Setting the interface up", e))
}
