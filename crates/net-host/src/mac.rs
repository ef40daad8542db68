//! Ethernet MAC addresses as users type them (`52:54:00:12:34:56`), and random ones for guests.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};

use crate::Error;

/// Parses six colon-separated pairs of hex digits, e.g. `52:54:00:12:34:56` (either case).
pub fn parse_mac(s: &str) -> Result<[u8; 6], Error> {
    let invalid = || Error::InvalidMac {
        input: s.to_owned(),
    };
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for byte in &mut mac {
        let part = parts.next().ok_or_else(invalid)?;
        if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(invalid());
        }
        *byte = u8::from_str_radix(part, 16).map_err(|_| invalid())?;
    }
    if parts.next().is_some() {
        return Err(invalid());
    }
    Ok(mac)
}

/// Formats `mac` as lowercase colon-separated hex, the form [`parse_mac`] reads.
pub fn format_mac(mac: &[u8; 6]) -> String {
    let [a, b, c, d, e, f] = mac;
    format!("{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{f:02x}")
}

/// A random unicast MAC address with the locally-administered bit set, so it clashes with no
/// vendor's address. Random bytes come from `getrandom(2)`.
pub fn random_local_mac() -> [u8; 6] {
    let mut mac = random_bytes();
    mac[0] = (mac[0] & !0x01) | 0x02;
    mac
}

fn random_bytes() -> [u8; 6] {
    let mut bytes = [0u8; 6];
    let mut filled = 0;
    while filled < bytes.len() {
        let rest = &mut bytes[filled..];
        // SAFETY: `rest` is writable for `rest.len()` bytes for the whole call.
        let ret = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        match usize::try_from(ret) {
            Ok(n) => filled += n,
            Err(_) if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted => {
            }
            // Kernels before 3.17 lack getrandom: fall back on std's randomly keyed hasher, which
            // is seeded from the OS's other sources.
            Err(_) => {
                let mut hasher = RandomState::new().build_hasher();
                hasher.write_usize(std::process::id() as usize);
                let fallback = hasher.finish().to_le_bytes();
                bytes.copy_from_slice(&fallback[..6]);
                break;
            }
        }
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_formats_round_trip() {
        let mac = parse_mac("52:54:00:AB:cd:0f").unwrap();
        assert_eq!(mac, [0x52, 0x54, 0x00, 0xab, 0xcd, 0x0f]);
        assert_eq!(format_mac(&mac), "52:54:00:ab:cd:0f");
        assert_eq!(parse_mac(&format_mac(&mac)).unwrap(), mac);
    }

    #[test]
    fn rejects_malformed_macs() {
        for bad in [
            "",
            "52:54:00:12:34",
            "52:54:00:12:34:56:78",
            "52:54:00:12:34:5",
            "52:54:00:12:34:567",
            "52-54-00-12-34-56",
            "52:54:00:12:34:5g",
            "52:54:00:12:34:+5",
            "52:54:00:12:34:56:",
        ] {
            let err = parse_mac(bad).expect_err(bad);
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
    }

    #[test]
    fn random_macs_are_local_unicast_and_differ() {
        let macs: Vec<_> = (0..8).map(|_| random_local_mac()).collect();
        for mac in &macs {
            assert_eq!(mac[0] & 0x01, 0, "multicast bit set in {}", format_mac(mac));
            assert_eq!(
                mac[0] & 0x02,
                0x02,
                "not locally administered: {}",
                format_mac(mac)
            );
        }
        assert!(
            macs.windows(2).any(|w| w[0] != w[1]),
            "eight equal random MACs"
        );
    }
}
