//! What the integration tests share: running a body in a network namespace of its own, guards
//! that remove what a test made, a packet socket, and test frames.
//!
//! Every test body runs on a thread that called `unshare(CLONE_NEWNET)`: the thread (and only it)
//! lives in a fresh, empty network namespace, so taps, bridges and addresses never touch the
//! host's. When the thread ends the namespace goes, and with it whatever was left inside; the
//! guards below still remove what they made, so that a failing test leaves nothing even while
//! its thread unwinds.

#![allow(dead_code)]

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use net_host::Tap;

/// An EtherType for local experiments (IEEE 802 "Local Experimental Ethertype 1"): nothing in
/// the kernel handles it, so test frames reach only the sockets and taps that look for them.
pub const TEST_ETHERTYPE: u16 = 0x88b5;

/// How long a test waits for a frame before failing.
pub const FRAME_TIMEOUT: Duration = Duration::from_secs(3);

/// Why the tests cannot run here, if they cannot.
fn skip_reason() -> Option<String> {
    // SAFETY: geteuid() takes no arguments and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root (tap and bridge tests need root)".into());
    }
    if !Path::new("/dev/net/tun").exists() {
        return Some("/dev/net/tun is missing (modprobe tun)".into());
    }
    None
}

/// Runs `body` on a new thread in a new, empty network namespace, and re-raises its panic.
/// Prints why and returns without running it when not root, without /dev/net/tun, or when
/// the namespace cannot be made.
pub fn in_netns(test: &str, body: impl FnOnce() + Send) {
    if let Some(reason) = skip_reason() {
        eprintln!("skipping {test}: {reason}");
        return;
    }
    let outcome = std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // SAFETY: unshare() takes no pointers. CLONE_NEWNET moves only this thread.
                if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                    let err = std::io::Error::last_os_error();
                    eprintln!("skipping {test}: cannot make a network namespace: {err}");
                    return;
                }
                body();
            })
            .join()
    });
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// Drops CAP_NET_ADMIN from this thread's effective capabilities (capabilities are per thread,
/// so the rest of the test process keeps it).
pub fn drop_cap_net_admin() {
    const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
    const CAP_NET_ADMIN: u32 = 12;
    #[repr(C)]
    struct Header {
        version: u32,
        pid: libc::c_int,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    let mut header = Header {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [Data::default(); 2];
    // SAFETY: capget writes one header and two data structs, laid out as the kernel's
    // `__user_cap_header_struct` and `__user_cap_data_struct[2]`, both alive for the call.
    let ret = unsafe { libc::syscall(libc::SYS_capget, &raw mut header, data.as_mut_ptr()) };
    assert_eq!(ret, 0, "capget: {}", std::io::Error::last_os_error());
    data[0].effective &= !(1 << CAP_NET_ADMIN);
    // SAFETY: as above; capset only reads them. pid 0 is the calling thread.
    let ret = unsafe { libc::syscall(libc::SYS_capset, &raw mut header, data.as_ptr()) };
    assert_eq!(ret, 0, "capset: {}", std::io::Error::last_os_error());
}

/// Whether interface `name` exists in this thread's network namespace.
pub fn iface_exists(name: &str) -> bool {
    ifindex(name) != 0
}

/// The index of interface `name` in this thread's namespace, 0 if there is none.
pub fn ifindex(name: &str) -> u32 {
    let name = CString::new(name).unwrap();
    // SAFETY: `name` is a NUL-terminated string that outlives the call.
    unsafe { libc::if_nametoindex(name.as_ptr()) }
}

/// A plain `ifreq` naming `name`.
fn ifreq(name: &str) -> libc::ifreq {
    // SAFETY: all-zero bytes are a valid `ifreq` (integers, arrays and a null pointer).
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    assert!(name.len() < libc::IFNAMSIZ);
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    req
}

fn check(ret: libc::c_int, what: &str) {
    assert!(ret >= 0, "{what}: {}", std::io::Error::last_os_error());
}

/// A socket for interface ioctls in this thread's namespace.
fn control_socket() -> OwnedFd {
    // SAFETY: socket() takes no pointers.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    check(fd, "socket");
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Runs a socket ioctl on an `ifreq`, returning the errno on failure.
fn ifreq_ioctl(request: libc::c_ulong, req: &mut libc::ifreq) -> Result<(), std::io::Error> {
    let socket = control_socket();
    // SAFETY: the requests used here read and write one `ifreq`, `req`, for the whole call.
    let ret = unsafe { libc::ioctl(socket.as_raw_fd(), request, req as *mut libc::ifreq) };
    if ret < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Sets interface `name` down.
fn set_down(name: &str) -> Result<(), std::io::Error> {
    let mut req = ifreq(name);
    ifreq_ioctl(libc::SIOCGIFFLAGS, &mut req)?;
    // SAFETY: SIOCGIFFLAGS filled `ifru_flags`.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    req.ifr_ifru.ifru_flags = flags & !(libc::IFF_UP as libc::c_short);
    ifreq_ioctl(libc::SIOCSIFFLAGS, &mut req)
}

/// Whether interface `name` is administratively up.
pub fn is_up(name: &str) -> bool {
    let mut req = ifreq(name);
    ifreq_ioctl(libc::SIOCGIFFLAGS, &mut req).expect("SIOCGIFFLAGS");
    // SAFETY: SIOCGIFFLAGS filled `ifru_flags`.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    flags & libc::IFF_UP as libc::c_short != 0
}

/// Gives interface `name` the IPv4 address `addr`/16, in this thread's namespace.
pub fn set_ipv4(name: &str, addr: [u8; 4]) {
    let sockaddr = |ip: [u8; 4]| {
        let sin = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(ip),
            },
            sin_zero: [0; 8],
        };
        // SAFETY: `sockaddr_in` and `sockaddr` have the same size; any bytes are a valid
        // `sockaddr`.
        unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
    };
    let mut req = ifreq(name);
    req.ifr_ifru.ifru_addr = sockaddr(addr);
    ifreq_ioctl(libc::SIOCSIFADDR, &mut req).expect("SIOCSIFADDR");
    let mut req = ifreq(name);
    req.ifr_ifru.ifru_netmask = sockaddr([255, 255, 0, 0]);
    ifreq_ioctl(libc::SIOCSIFNETMASK, &mut req).expect("SIOCSIFNETMASK");
}

const SIOCBRADDBR: libc::c_ulong = 0x89a0;
const SIOCBRDELBR: libc::c_ulong = 0x89a1;

/// A bridge made with `SIOCBRADDBR` (what `ip link add NAME type bridge` does), deleted on drop.
pub struct BridgeGuard {
    pub name: String,
}

impl BridgeGuard {
    pub fn create(name: &str) -> BridgeGuard {
        let socket = control_socket();
        let cname = CString::new(name).unwrap();
        // SAFETY: SIOCBRADDBR reads a NUL-terminated name, `cname`, which outlives the call.
        let ret = unsafe { libc::ioctl(socket.as_raw_fd(), SIOCBRADDBR, cname.as_ptr()) };
        check(ret, "SIOCBRADDBR");
        BridgeGuard { name: name.into() }
    }
}

impl Drop for BridgeGuard {
    fn drop(&mut self) {
        // A bridge that is up cannot be deleted. Errors are ignored: the namespace's end deletes
        // whatever is left.
        let _ = set_down(&self.name);
        let socket = control_socket();
        let cname = CString::new(self.name.as_str()).unwrap();
        // SAFETY: SIOCBRDELBR reads a NUL-terminated name, `cname`, which outlives the call.
        unsafe { libc::ioctl(socket.as_raw_fd(), SIOCBRDELBR, cname.as_ptr()) };
    }
}

/// Opens /dev/net/tun as tap `name` (created if missing) with TUNSETIFF, as `ip tuntap` does.
fn raw_tap(name: &str) -> std::io::Result<std::fs::File> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")?;
    let mut req = ifreq(name);
    req.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
    // SAFETY: TUNSETIFF reads and writes one `ifreq`, `req`, for the whole call.
    if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(file)
}

/// Marks the tap open on `file` persistent (`on`) or not.
fn set_persist(file: &std::fs::File, on: bool) -> std::io::Result<()> {
    // SAFETY: TUNSETPERSIST takes its argument by value.
    let ret = unsafe {
        libc::ioctl(
            file.as_raw_fd(),
            libc::TUNSETPERSIST,
            libc::c_ulong::from(on),
        )
    };
    if ret < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// A persistent tap as a user makes with `ip tuntap add mode tap NAME` (TUNSETIFF then
/// TUNSETPERSIST, then close); removed on drop as `ip tuntap del` does.
pub struct PersistentTapGuard {
    pub name: String,
}

impl PersistentTapGuard {
    pub fn create(name: &str) -> PersistentTapGuard {
        let file = raw_tap(name).expect("creating a tap");
        set_persist(&file, true).expect("TUNSETPERSIST");
        PersistentTapGuard { name: name.into() }
    }
}

impl Drop for PersistentTapGuard {
    fn drop(&mut self) {
        if !iface_exists(&self.name) {
            return;
        }
        // Clearing the flag makes the tap go when this descriptor closes. If someone still holds
        // it open, TUNSETIFF fails; the namespace's end removes it then.
        if let Ok(file) = raw_tap(&self.name) {
            let _ = set_persist(&file, false);
        }
    }
}

/// A raw `AF_PACKET` socket bound to one interface: sees every frame on it, sends frames out
/// of it.
pub struct PacketSocket {
    fd: OwnedFd,
}

impl PacketSocket {
    pub fn bind(ifname: &str) -> PacketSocket {
        let protocol = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: socket() takes no pointers.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                protocol.into(),
            )
        };
        check(fd, "socket(AF_PACKET)");
        // SAFETY: `fd` is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: all-zero bytes are a valid `sockaddr_ll`.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = protocol;
        addr.sll_ifindex = ifindex(ifname) as i32;
        assert_ne!(addr.sll_ifindex, 0, "no interface {ifname}");
        // SAFETY: `addr` is a `sockaddr_ll` of the length given, alive for the call.
        let ret = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&raw const addr).cast(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        check(ret, "bind(AF_PACKET)");
        PacketSocket { fd }
    }

    /// Sends one Ethernet frame out of the bound interface.
    pub fn send(&self, frame: &[u8]) {
        // SAFETY: `frame` is readable for its length during the call.
        let ret = unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        assert_eq!(
            ret,
            frame.len() as isize,
            "send: {}",
            std::io::Error::last_os_error()
        );
    }

    /// Waits for a frame that `matches`, skipping others (the kernel's own IPv6 traffic),
    /// until [`FRAME_TIMEOUT`].
    pub fn recv_matching(&self, matches: impl Fn(&[u8]) -> bool) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; 65536];
        recv_matching(
            self.fd.as_raw_fd(),
            matches,
            |buf| {
                // SAFETY: `buf` is writable for its length during the call.
                let n = unsafe {
                    libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0)
                };
                usize::try_from(n).map_err(|_| std::io::Error::last_os_error())
            },
            &mut buf,
        )
    }
}

/// Waits on `fd` for a frame that `matches`, reading with `read`, until [`FRAME_TIMEOUT`].
fn recv_matching(
    fd: libc::c_int,
    matches: impl Fn(&[u8]) -> bool,
    read: impl Fn(&mut [u8]) -> std::io::Result<usize>,
    buf: &mut [u8],
) -> Option<Vec<u8>> {
    let deadline = Instant::now() + FRAME_TIMEOUT;
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: `pfd` is one valid pollfd for the call.
        let ret = unsafe { libc::poll(&mut pfd, 1, left.as_millis().max(1) as libc::c_int) };
        if ret <= 0 {
            continue;
        }
        let n = read(buf).expect("read");
        if matches(&buf[..n]) {
            return Some(buf[..n].to_vec());
        }
    }
}

/// Waits for a frame (virtio-net header first) on `tap` that `matches` once its
/// `vnet_hdr_len`-byte header is removed; returns the frame without the header.
pub fn tap_recv_matching(
    tap: &Tap,
    vnet_hdr_len: usize,
    matches: impl Fn(&[u8]) -> bool,
) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 65536];
    let frame = recv_matching(
        tap.as_raw_fd(),
        |b| b.len() >= vnet_hdr_len && matches(&b[vnet_hdr_len..]),
        |b| tap.read(b),
        &mut buf,
    )?;
    Some(frame[vnet_hdr_len..].to_vec())
}

/// A broadcast Ethernet frame of [`TEST_ETHERTYPE`] from `src`, carrying `marker`, padded to
/// the 60-byte minimum.
pub fn test_frame(src: [u8; 6], marker: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(60);
    frame.extend_from_slice(&[0xff; 6]);
    frame.extend_from_slice(&src);
    frame.extend_from_slice(&TEST_ETHERTYPE.to_be_bytes());
    frame.extend_from_slice(marker);
    frame.resize(frame.len().max(60), 0);
    frame
}

/// Whether `frame` is a [`TEST_ETHERTYPE`] frame carrying `marker`.
pub fn is_test_frame(frame: &[u8], marker: &[u8]) -> bool {
    frame.len() >= 14 + marker.len()
        && frame[12..14] == TEST_ETHERTYPE.to_be_bytes()
        && &frame[14..14 + marker.len()] == marker
}

/// `frame` behind an all-zero virtio-net header of `len` bytes (no offload requested).
pub fn with_zero_vnet_hdr(len: usize, frame: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; len];
    out.extend_from_slice(frame);
    out
}
