//! The devices a user attaches: `--disk`, `--net`, `--vsock`, `--rng`, parsed from their
//! `key=value` lists and checked before the VM is built.

use std::path::PathBuf;

/// Errors of device options: each names the option, what was wrong and the accepted form.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DeviceConfigError {
    /// A malformed `--disk`.
    #[error("Invalid --disk '{given}': {why} (use PATH[,format=raw|qcow2][,readonly])")]
    Disk {
        /// What the user gave.
        given: String,
        /// What is wrong.
        why: String,
    },
    /// A malformed `--net`.
    #[error(
        "Invalid --net '{given}': {why} (use tap=NAME[,mac=MAC] or bridge=BR[,tap=NAME][,mac=MAC])"
    )]
    Net {
        /// What the user gave.
        given: String,
        /// What is wrong.
        why: String,
    },
    /// A malformed `--vsock`.
    #[error("Invalid --vsock '{given}': {why} (use cid=N,socket=PATH with N of 3 or more)")]
    Vsock {
        /// What the user gave.
        given: String,
        /// What is wrong.
        why: String,
    },
    /// More PCI devices than slots.
    #[error("Too many devices: {given} asked for, bus 0 has {max} free PCI slots")]
    TooManyDevices {
        /// Devices asked for.
        given: usize,
        /// Free slots.
        max: usize,
    },
}

/// A disk image format, or none to detect it from the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskFormat {
    /// A raw image.
    Raw,
    /// A qcow2 image (v3, or v2), possibly an overlay on a backing file.
    Qcow2,
}

/// One `--disk`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskConfig {
    /// The image file.
    pub path: PathBuf,
    /// Its format; `None` detects qcow2 by its magic and takes anything else as raw.
    pub format: Option<DiskFormat>,
    /// The guest may not write it.
    pub read_only: bool,
}

/// Where a NIC's tap comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetBackendConfig {
    /// A tap by name: opened if it exists (and left in place), else created (and removed when
    /// the VM ends).
    Tap(String),
    /// A tap popek creates (named `tap` when given, else by the kernel) and attaches to a host
    /// bridge.
    Bridge {
        /// The bridge.
        bridge: String,
        /// The tap's name, if the user chose it.
        tap: Option<String>,
    },
}

/// One `--net`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    /// The host side.
    pub backend: NetBackendConfig,
    /// The guest's MAC address; `None` picks a random locally administered one.
    pub mac: Option<[u8; 6]>,
}

/// The `--vsock` device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VsockConfig {
    /// The guest's context ID (3 or more).
    pub cid: u32,
    /// The host Unix socket: host processes connect here; guest connections to port P go to
    /// `PATH_P`.
    pub socket: PathBuf,
}

/// Splits `a=b,c,d=e` into pairs; bare words get an empty value.
fn pairs(s: &str) -> impl Iterator<Item = (&str, &str)> {
    s.split(',')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
}

/// Checks a Linux interface name.
fn check_ifname(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 15 || name.contains(['/', ' ', '\t', '\n', ',', '=']) {
        return Err(format!(
            "interface name '{name}' must be 1 to 15 characters without '/', ',', '=' or spaces"
        ));
    }
    Ok(())
}

/// Parses `aa:bb:cc:dd:ee:ff`; refuses multicast addresses, which a NIC cannot have.
pub fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let bad = || format!("MAC '{s}' is not six hex bytes separated by ':'");
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        let p = parts.next().ok_or_else(bad)?;
        if p.len() != 2 {
            return Err(bad());
        }
        *b = u8::from_str_radix(p, 16).map_err(|_| bad())?;
    }
    if parts.next().is_some() {
        return Err(bad());
    }
    if mac[0] & 1 != 0 {
        return Err(format!("MAC '{s}' is a multicast address"));
    }
    Ok(mac)
}

impl std::str::FromStr for DiskConfig {
    type Err = DeviceConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |why: String| DeviceConfigError::Disk {
            given: s.to_string(),
            why,
        };
        let mut it = s.split(',');
        let path = it.next().unwrap_or_default();
        if path.is_empty() || path.contains('=') {
            return Err(err("the first item must be the image's path".into()));
        }
        let mut disk = DiskConfig {
            path: path.into(),
            format: None,
            read_only: false,
        };
        for (k, v) in pairs(&it.collect::<Vec<_>>().join(",")) {
            match (k, v) {
                ("format", "raw") => disk.format = Some(DiskFormat::Raw),
                ("format", "qcow2") => disk.format = Some(DiskFormat::Qcow2),
                ("format", other) => return Err(err(format!("unknown format '{other}'"))),
                ("readonly" | "ro", "" | "on" | "true") => disk.read_only = true,
                ("readonly" | "ro", "off" | "false") => disk.read_only = false,
                _ => return Err(err(format!("unknown option '{k}'"))),
            }
        }
        Ok(disk)
    }
}

impl std::str::FromStr for NetConfig {
    type Err = DeviceConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |why: String| DeviceConfigError::Net {
            given: s.to_string(),
            why,
        };
        let (mut tap, mut bridge, mut mac) = (None, None, None);
        for (k, v) in pairs(s) {
            match k {
                "tap" => {
                    check_ifname(v).map_err(err)?;
                    tap = Some(v.to_string());
                }
                "bridge" => {
                    check_ifname(v).map_err(err)?;
                    bridge = Some(v.to_string());
                }
                "mac" => mac = Some(parse_mac(v).map_err(err)?),
                _ => return Err(err(format!("unknown option '{k}'"))),
            }
        }
        let backend = match (tap, bridge) {
            (tap, Some(bridge)) => NetBackendConfig::Bridge { bridge, tap },
            (Some(tap), None) => NetBackendConfig::Tap(tap),
            (None, None) => return Err(err("name a tap or a bridge".into())),
        };
        Ok(NetConfig { backend, mac })
    }
}

impl std::str::FromStr for VsockConfig {
    type Err = DeviceConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |why: String| DeviceConfigError::Vsock {
            given: s.to_string(),
            why,
        };
        let (mut cid, mut socket) = (None, None);
        for (k, v) in pairs(s) {
            match k {
                "cid" => {
                    let n: u32 = v
                        .parse()
                        .map_err(|_| err(format!("cid '{v}' is not a number")))?;
                    // 0-2 are the hypervisor, local and host; u32::MAX is VMADDR_CID_ANY.
                    if n < 3 || n == u32::MAX {
                        return Err(err(format!("cid {n} is reserved")));
                    }
                    cid = Some(n);
                }
                "socket" if !v.is_empty() => socket = Some(PathBuf::from(v)),
                _ => return Err(err(format!("unknown option '{k}'"))),
            }
        }
        match (cid, socket) {
            (Some(cid), Some(socket)) => Ok(VsockConfig { cid, socket }),
            (None, _) => Err(err("cid is missing".into())),
            (_, None) => Err(err("socket is missing".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disks_parse() {
        let d: DiskConfig = "/tmp/a.img,format=qcow2,readonly".parse().unwrap();
        assert_eq!(d.path, PathBuf::from("/tmp/a.img"));
        assert_eq!(d.format, Some(DiskFormat::Qcow2));
        assert!(d.read_only);
        let d: DiskConfig = "a.img".parse().unwrap();
        assert_eq!((d.format, d.read_only), (None, false));
        for bad in ["", "format=raw", "a.img,format=vmdk", "a.img,cache=none"] {
            assert!(bad.parse::<DiskConfig>().is_err(), "{bad}");
        }
    }

    #[test]
    fn nets_parse() {
        let n: NetConfig = "tap=tap0,mac=52:54:00:12:34:56".parse().unwrap();
        assert_eq!(n.backend, NetBackendConfig::Tap("tap0".into()));
        assert_eq!(n.mac, Some([0x52, 0x54, 0, 0x12, 0x34, 0x56]));
        let n: NetConfig = "bridge=br0".parse().unwrap();
        assert_eq!(
            n.backend,
            NetBackendConfig::Bridge {
                bridge: "br0".into(),
                tap: None
            }
        );
        for bad in [
            "",
            "mac=52:54:00:12:34:56",
            "tap=",
            "tap=a-very-long-interface-name",
            "tap=t0,mac=01:00:00:00:00:00",
            "tap=t0,mac=zz:00:00:00:00:00",
            "tap=t0,mac=52:54:00:12:34",
            "tap=t0,speed=10",
        ] {
            let e = bad.parse::<NetConfig>().unwrap_err();
            assert!(e.to_string().starts_with("Invalid --net"), "{bad}: {e}");
        }
    }

    #[test]
    fn vsock_parses() {
        let v: VsockConfig = "cid=3,socket=/tmp/v.sock".parse().unwrap();
        assert_eq!(v.cid, 3);
        for bad in [
            "cid=2,socket=/x",
            "cid=3",
            "socket=/x",
            "cid=x,socket=/x",
            "cid=3,socket=",
        ] {
            assert!(bad.parse::<VsockConfig>().is_err(), "{bad}");
        }
    }
}
