//! `status`: exits through the debug-exit port with the status named on its command line
//! (`status=N`, 0..=255; 0 when absent), so a VMM test can check the guest's status reaches the
//! host unchanged.

#![no_std]
#![no_main]

use rt::say;

rt::entry!(main);

/// Parses the decimal value of the first `status=` word, if it is a valid byte.
fn status_from(cmdline: &[u8]) -> Option<u8> {
    let word = cmdline.split(|&b| b == b' ').find_map(|w| w.strip_prefix(b"status="))?;
    if word.is_empty() || word.len() > 3 {
        return None;
    }
    let mut n: u16 = 0;
    for &d in word {
        if !d.is_ascii_digit() {
            return None;
        }
        n = n * 10 + u16::from(d - b'0');
    }
    u8::try_from(n).ok()
}

fn main(boot: &rt::BootInfo) -> u8 {
    let status = status_from(boot.cmdline).unwrap_or(0);
    say!("status: exiting with ", status as u64);
    status
}
