//! A tap interface opened through `/dev/net/tun`: one frame per read or write, each behind a
//! virtio-net header.

use std::fs::{File, OpenOptions};
use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};

use libc::{c_int, c_short, c_ulong};
use vmm_sys_util::ioctl::{ioctl_with_mut_ref, ioctl_with_ref, ioctl_with_val};

use crate::Error;
use crate::name::{IfName, name_from_raw};
use crate::sys;

/// The kernel computes the checksum the guest left out (`TUN_F_CSUM`).
pub const TUN_F_CSUM: u32 = libc::TUN_F_CSUM;
/// The guest may send TCP-over-IPv4 segments larger than the MTU (`TUN_F_TSO4`).
pub const TUN_F_TSO4: u32 = libc::TUN_F_TSO4;
/// The guest may send TCP-over-IPv6 segments larger than the MTU (`TUN_F_TSO6`).
pub const TUN_F_TSO6: u32 = libc::TUN_F_TSO6;
/// TSO segments may carry the ECN CWR flag (`TUN_F_TSO_ECN`).
pub const TUN_F_TSO_ECN: u32 = libc::TUN_F_TSO_ECN;
/// The guest may send UDP datagrams larger than the MTU (`TUN_F_UFO`).
pub const TUN_F_UFO: u32 = libc::TUN_F_UFO;

/// Length of the virtio-net v1 header (`struct virtio_net_hdr_v1`, with `num_buffers`).
pub const VNET_HDR_LEN: usize = 12;

/// The name template used when [`Tap::open`] gets no name: the kernel picks the number.
pub const DEFAULT_TEMPLATE: &str = "popek%d";

const TUN_PATH: &str = "/dev/net/tun";

/// A tap interface, open as `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`.
///
/// Every frame read or written starts with a virtio-net header, of the size set with
/// [`Tap::set_vnet_hdr_size`] (the kernel's default is 10 bytes, the legacy header).
///
/// A tap this opened created (see [`Tap::created`]) is not persistent: the kernel deletes it when
/// its last descriptor closes, so dropping the `Tap` removes the interface. The descriptor is
/// close-on-exec, but a process forked without exec keeps the interface alive until it exits.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
    created: bool,
}

impl Tap {
    /// Opens tap `name`, creating it if it does not exist; `None` creates a new tap named after
    /// [`DEFAULT_TEMPLATE`] (`popek0`, `popek1`, ...). A name containing `%d` is a template too.
    ///
    /// An existing persistent tap (as `ip tuntap add mode tap` makes) is attached to and left in
    /// place on drop; the tap is created in, and looked up in, the calling thread's network
    /// namespace.
    pub fn open(name: Option<&str>) -> Result<Tap, Error> {
        let requested = name.unwrap_or(DEFAULT_TEMPLATE);
        let ifname = IfName::new(requested)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(TUN_PATH)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ENOENT | libc::ENODEV | libc::ENXIO) => Error::TunMissing,
                _ => Error::TunAccess(e),
            })?;

        let mut req = sys::ifreq(&ifname);
        req.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as c_short;
        // SAFETY: `file` is open on /dev/net/tun, and TUNSETIFF reads and writes one `ifreq`,
        // which `req` is for the whole call.
        let ret = unsafe { ioctl_with_mut_ref(&file, sys::TUNSETIFF(), &mut req) };
        sys::check(ret).map_err(|e| {
            let name = requested.to_owned();
            match e.raw_os_error() {
                Some(libc::EPERM | libc::EACCES) => Error::TapPermission { name },
                Some(libc::EINVAL) => Error::NotATap { name },
                Some(libc::EBUSY) => Error::TapBusy { name },
                _ => Error::Ioctl {
                    name,
                    op: "Creating or opening a tap (TUNSETIFF)",
                    source: e,
                },
            }
        })?;
        // TUNSETIFF wrote back the interface's real name (a template's number filled in).
        let name = name_from_raw(&req.ifr_name);

        // A single-queue tap accepts one descriptor, so if TUNSETIFF attached to an existing
        // tap, that tap had no descriptor left and only survived because it is persistent. A tap
        // it created is persistent only if someone sets TUNSETPERSIST, which nothing here does.
        let mut info = sys::zeroed_ifreq();
        // SAFETY: `file` is an attached tun descriptor; TUNGETIFF writes one `ifreq`, which
        // `info` is for the whole call.
        let ret = unsafe { ioctl_with_mut_ref(&file, sys::TUNGETIFF(), &mut info) };
        sys::check(ret)
            .map_err(|e| Error::from_ioctl(&name, "Reading tap flags (TUNGETIFF)", e))?;
        // SAFETY: TUNGETIFF succeeded, so the kernel wrote `ifru_flags`.
        let flags = c_int::from(unsafe { info.ifr_ifru.ifru_flags });
        let created = flags & libc::IFF_PERSIST == 0;

        Ok(Tap {
            file,
            name,
            created,
        })
    }

    /// The interface's name, with any template number filled in.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether opening created the interface (it then disappears on drop), as opposed to
    /// attaching to a persistent tap that existed before (which stays).
    pub fn created(&self) -> bool {
        self.created
    }

    /// Sets the size of the virtio-net header in front of each frame (`TUNSETVNETHDRSZ`):
    /// [`VNET_HDR_LEN`] (12) for virtio-net v1 or with `VIRTIO_NET_F_MRG_RXBUF`, 10 for the
    /// legacy header. The kernel refuses sizes below 10.
    pub fn set_vnet_hdr_size(&self, size: i32) -> Result<(), Error> {
        // SAFETY: `self.file` is an attached tun descriptor; TUNSETVNETHDRSZ reads one int,
        // which `size` is for the whole call.
        let ret = unsafe { ioctl_with_ref(&self.file, sys::TUNSETVNETHDRSZ(), &size) };
        sys::check(ret)
            .map(drop)
            .map_err(|e| Error::from_ioctl(&self.name, "Setting the vnet header size", e))
    }

    /// Sets which offloads the guest side may use (`TUNSETOFFLOAD`): an OR of `TUN_F_*` flags,
    /// 0 for none. The kernel refuses flags it does not know or that need others
    /// (`TUN_F_TSO*` need [`TUN_F_CSUM`]).
    pub fn set_offload(&self, flags: u32) -> Result<(), Error> {
        // SAFETY: `self.file` is an attached tun descriptor; TUNSETOFFLOAD takes its argument by
        // value and touches no memory of ours.
        let ret = unsafe { ioctl_with_val(&self.file, sys::TUNSETOFFLOAD(), c_ulong::from(flags)) };
        sys::check(ret)
            .map(drop)
            .map_err(|e| Error::from_ioctl(&self.name, "Setting tap offloads", e))
    }

    /// Makes reads and writes fail with `WouldBlock` instead of waiting (`O_NONBLOCK`), or wait.
    pub fn set_nonblocking(&self, on: bool) -> Result<(), Error> {
        let fd = self.file.as_raw_fd();
        let err = |e| Error::from_ioctl(&self.name, "Setting O_NONBLOCK on the tap", e);
        // SAFETY: `fd` is open for as long as `self` lives; F_GETFL takes no pointer.
        let flags = sys::check(unsafe { libc::fcntl(fd, libc::F_GETFL) }).map_err(err)?;
        let flags = if on {
            flags | libc::O_NONBLOCK
        } else {
            flags & !libc::O_NONBLOCK
        };
        // SAFETY: as above; F_SETFL takes its flags by value.
        sys::check(unsafe { libc::fcntl(fd, libc::F_SETFL, flags) }).map_err(err)?;
        Ok(())
    }

    /// Sets the interface administratively up (`SIOCSIFFLAGS` with `IFF_UP`), from the calling
    /// thread's network namespace. Frames flow only while it is up.
    pub fn up(&self) -> Result<(), Error> {
        crate::link_up(&self.name)
    }

    /// Reads one frame, virtio-net header first, into `buf`; returns its length. A frame longer
    /// than `buf` is cut short.
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        (&self.file).read(buf)
    }

    /// Writes one frame, virtio-net header first; returns the bytes taken.
    pub fn write(&self, buf: &[u8]) -> io::Result<usize> {
        (&self.file).write(buf)
    }

    /// Reads one frame scattered over `bufs` (the header and the frame may be in separate
    /// buffers); returns its length.
    pub fn readv(&self, bufs: &mut [IoSliceMut<'_>]) -> io::Result<usize> {
        (&self.file).read_vectored(bufs)
    }

    /// Writes one frame gathered from `bufs`; returns the bytes taken.
    pub fn writev(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        (&self.file).write_vectored(bufs)
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

impl AsFd for Tap {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}
