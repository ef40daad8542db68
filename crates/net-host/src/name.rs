//! Linux interface names, checked against the kernel's rules before they reach an ioctl.

use libc::{IFNAMSIZ, c_char};

use crate::Error;

/// The longest interface name in bytes (`IFNAMSIZ` less the terminating NUL).
pub(crate) const MAX_NAME_LEN: usize = IFNAMSIZ - 1;

/// An interface name the kernel accepts (`dev_valid_name`), NUL-terminated as `ifreq` wants it.
///
/// A name may be a template such as `popek%d`, for which the kernel picks the number.
#[derive(Clone, Copy, Debug)]
pub(crate) struct IfName {
    raw: [c_char; IFNAMSIZ],
}

impl IfName {
    /// Checks `name`: non-empty, at most 15 bytes, not `.` or `..`, no `/`, `:`, NUL or
    /// whitespace (including the bytes the kernel's `isspace` takes: VT and 0xA0).
    pub(crate) fn new(name: &str) -> Result<IfName, Error> {
        let invalid = |reason| Error::InvalidName {
            name: name.to_owned(),
            reason,
        };
        let bytes = name.as_bytes();
        if bytes.is_empty() {
            return Err(invalid("it is empty"));
        }
        if bytes.len() > MAX_NAME_LEN {
            return Err(invalid("it is longer than 15 bytes"));
        }
        if name == "." || name == ".." {
            return Err(invalid("it is '.' or '..'"));
        }
        for &b in bytes {
            let reason = match b {
                b'/' => "it contains '/'",
                b':' => "it contains ':'",
                0 => "it contains a NUL byte",
                0x0b | 0xa0 => "it contains whitespace",
                _ if b.is_ascii_whitespace() => "it contains whitespace",
                _ => continue,
            };
            return Err(invalid(reason));
        }
        if name.chars().any(char::is_whitespace) {
            return Err(invalid("it contains whitespace"));
        }
        let mut raw = [0; IFNAMSIZ];
        for (dst, &src) in raw.iter_mut().zip(bytes) {
            *dst = src as c_char;
        }
        Ok(IfName { raw })
    }

    /// The name as `ifreq.ifr_name` holds it.
    pub(crate) fn raw(&self) -> [c_char; IFNAMSIZ] {
        self.raw
    }
}

/// The NUL-terminated name in an `ifr_name` the kernel filled in.
pub(crate) fn name_from_raw(raw: &[c_char; IFNAMSIZ]) -> String {
    let bytes: Vec<u8> = raw
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(name: &str) -> &'static str {
        match IfName::new(name) {
            Err(Error::InvalidName { reason, .. }) => reason,
            Err(other) => panic!("unexpected error {other}"),
            Ok(_) => panic!("{name:?} accepted"),
        }
    }

    #[test]
    fn accepts_ordinary_names_and_templates() {
        for name in [
            "tap0",
            "popek%d",
            "a",
            "vm-17_net.2",
            "exactly15bytes_",
            "tåp",
        ] {
            let parsed = IfName::new(name).unwrap();
            assert_eq!(name_from_raw(&parsed.raw()), name);
        }
    }

    #[test]
    fn rejects_names_the_kernel_rejects() {
        assert_eq!(reason(""), "it is empty");
        assert_eq!(reason("sixteen_bytes_xx"), "it is longer than 15 bytes");
        assert_eq!(reason("."), "it is '.' or '..'");
        assert_eq!(reason(".."), "it is '.' or '..'");
        assert_eq!(reason("a/b"), "it contains '/'");
        assert_eq!(reason("eth0:1"), "it contains ':'");
        assert_eq!(reason("a b"), "it contains whitespace");
        assert_eq!(reason("tab\there"), "it contains whitespace");
        assert_eq!(reason("vt\x0b"), "it contains whitespace");
        assert_eq!(reason("nul\0"), "it contains a NUL byte");
        // U+00E0 is C3 A0 in UTF-8, and the kernel's isspace() takes 0xA0.
        assert_eq!(reason("à"), "it contains whitespace");
        assert_eq!(reason("a\u{2003}b"), "it contains whitespace");
    }

    #[test]
    fn error_message_names_the_interface_and_the_rule() {
        let err = IfName::new("a/b").unwrap_err().to_string();
        assert!(err.contains("\"a/b\""), "{err}");
        assert!(err.contains("'/'"), "{err}");
    }
}
