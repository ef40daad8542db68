//! The host side of a virtio-net device: Linux tap interfaces and the bridges they join.
//!
//! - [`Tap`] opens `/dev/net/tun` as a tap with a virtio-net header in front of every frame
//!   (`IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`). A tap that did not exist is created and disappears
//!   when the [`Tap`] is dropped; a persistent tap made beforehand (`ip tuntap add`) is attached
//!   to and left in place.
//! - [`attach_to_bridge`] makes an interface a port of an existing bridge; [`link_up`] sets an
//!   interface administratively up.
//! - [`parse_mac`], [`format_mac`] and [`random_local_mac`] handle the guest's MAC address.
//!
//! Interface ioctls act in the network namespace of the calling thread: open a tap and configure
//! it from the same namespace.
//!
//! Nothing here prints; every failure is an [`Error`] that names the interface and what to do.
//!
//! ```no_run
//! use net_host::{TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, Tap, VNET_HDR_LEN};
//!
//! # fn main() -> Result<(), net_host::Error> {
//! let tap = Tap::open(Some("vm0-net"))?; // or None for popek0, popek1, ...
//! tap.set_vnet_hdr_size(VNET_HDR_LEN as i32)?;
//! tap.set_offload(TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6)?;
//! net_host::attach_to_bridge(tap.name(), "br0")?;
//! tap.up()?;
//! let mut frame = [0u8; 65562];
//! let len = tap.read(&mut frame).expect("read"); // virtio-net header, then the Ethernet frame
//! # let _ = len;
//! # Ok(())
//! # }
//! ```

mod bridge;
mod error;
mod mac;
mod name;
mod sys;
mod tap;

pub use bridge::{attach_to_bridge, link_up};
pub use error::Error;
pub use mac::{format_mac, parse_mac, random_local_mac};
pub use tap::{
    DEFAULT_TEMPLATE, TUN_F_CSUM, TUN_F_TSO_ECN, TUN_F_TSO4, TUN_F_TSO6, TUN_F_UFO, Tap,
    VNET_HDR_LEN,
};
