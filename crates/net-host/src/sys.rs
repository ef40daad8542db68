//! Raw plumbing: tun/tap and bridge ioctl numbers, `ifreq` values, and the socket that interface
//! ioctls (flags, index, bridge ports) go through.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};

use libc::{c_int, c_uint, c_ulong};
use vmm_sys_util::ioctl::ioctl_with_mut_ref;
use vmm_sys_util::{ioctl_ior_nr, ioctl_iow_nr};

use crate::name::IfName;

/// The ioctl type of `/dev/net/tun` (`'T'`).
const TUNTAP: c_uint = b'T' as c_uint;

// From <linux/if_tun.h>. The size argument is the kernel's, even where the ioctl passes an ifreq.
ioctl_iow_nr!(TUNSETIFF, TUNTAP, 202, c_int);
ioctl_iow_nr!(TUNSETOFFLOAD, TUNTAP, 208, c_uint);
ioctl_ior_nr!(TUNGETIFF, TUNTAP, 210, c_uint);
ioctl_iow_nr!(TUNSETVNETHDRSZ, TUNTAP, 216, c_int);

/// `SIOCBRADDIF` from <linux/sockios.h> (the `libc` crate has it only for Android).
pub(crate) const SIOCBRADDIF: c_ulong = 0x89a2;

/// An all-zero `ifreq`.
pub(crate) fn zeroed_ifreq() -> libc::ifreq {
    // SAFETY: `ifreq` holds only byte arrays, integers and a union of such and a raw pointer;
    // all-zero bytes are a valid value of each (the pointer is null and never dereferenced here).
    unsafe { std::mem::zeroed() }
}

/// An `ifreq` naming `name`, the rest zero.
pub(crate) fn ifreq(name: &IfName) -> libc::ifreq {
    let mut req = zeroed_ifreq();
    req.ifr_name = name.raw();
    req
}

/// A result from a syscall that returns -1 and sets errno on failure.
pub(crate) fn check(ret: c_int) -> io::Result<c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// A datagram socket used only as a handle for interface ioctls, in the calling thread's network
/// namespace.
pub(crate) struct ControlSocket(OwnedFd);

impl ControlSocket {
    /// Opens the socket.
    pub(crate) fn open() -> io::Result<ControlSocket> {
        // SAFETY: socket() takes no pointers; its result is checked before use.
        let fd = check(unsafe {
            libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0)
        })?;
        // SAFETY: `fd` was just returned by socket() and nothing else owns it.
        Ok(ControlSocket(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Runs `request`, which must be one of the socket ioctls whose argument is one `ifreq`
    /// (`SIOCGIFFLAGS`, `SIOCSIFFLAGS`, `SIOCGIFINDEX`, `SIOCBRADDIF`, ...).
    pub(crate) fn ifreq_ioctl(&self, request: c_ulong, req: &mut libc::ifreq) -> io::Result<()> {
        // SAFETY: `self.0` is an open socket, and the requests allowed here read and write at most
        // one `ifreq`, which `req` is for the whole call.
        check(unsafe { ioctl_with_mut_ref(&self.0, request, req) }).map(drop)
    }

    /// The index of interface `name`.
    pub(crate) fn ifindex(&self, name: &IfName) -> io::Result<c_int> {
        let mut req = ifreq(name);
        self.ifreq_ioctl(libc::SIOCGIFINDEX, &mut req)?;
        // SAFETY: SIOCGIFINDEX succeeded, so the kernel wrote `ifru_ifindex`.
        Ok(unsafe { req.ifr_ifru.ifru_ifindex })
    }

    /// Sets `IFF_UP` on interface `name`, keeping its other flags.
    pub(crate) fn set_up(&self, name: &IfName) -> io::Result<()> {
        let mut req = ifreq(name);
        self.ifreq_ioctl(libc::SIOCGIFFLAGS, &mut req)?;
        // SAFETY: SIOCGIFFLAGS succeeded, so the kernel wrote `ifru_flags`.
        let flags = unsafe { req.ifr_ifru.ifru_flags };
        req.ifr_ifru.ifru_flags = flags | libc::IFF_UP as libc::c_short;
        self.ifreq_ioctl(libc::SIOCSIFFLAGS, &mut req)
    }
}
