//! The host terminal as the guest's console: raw mode while the VM runs, and an escape sequence
//! to quit (Ctrl-A then x, as in QEMU).

use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};

use vmm_sys_util::terminal::Terminal;

/// The escape key: Ctrl-A.
pub const ESCAPE: u8 = 0x01;

/// Whether raw mode is on, so that the panic hook and [`restore`] know to undo it.
static RAW: AtomicBool = AtomicBool::new(false);

/// Puts stdin in raw mode when it is a terminal. Returns whether it did.
pub fn enter_raw_mode() -> bool {
    let stdin = std::io::stdin();
    // SAFETY: isatty only inspects the descriptor.
    if unsafe { libc::isatty(libc::STDIN_FILENO) } != 1 {
        return false;
    }
    if stdin.lock().set_raw_mode().is_err() {
        return false;
    }
    RAW.store(true, Ordering::SeqCst);
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        restore();
        previous(info);
    }));
    true
}

/// Gives the terminal back in canonical mode if [`enter_raw_mode`] changed it.
pub fn restore() {
    if RAW.swap(false, Ordering::SeqCst) {
        let _ = std::io::stdin().lock().set_canon_mode();
    }
}

/// What the console input means after escape processing.
#[derive(Debug, PartialEq, Eq)]
pub enum Input {
    /// Bytes for the guest.
    Guest(Vec<u8>),
    /// The user typed the quit sequence.
    Quit,
}

/// Tracks the escape sequence across reads.
#[derive(Debug, Default)]
pub struct EscapeFilter {
    pending_escape: bool,
}

impl EscapeFilter {
    /// Filters `bytes` read from the terminal. Ctrl-A x quits, Ctrl-A Ctrl-A sends one Ctrl-A,
    /// and Ctrl-A followed by anything else sends both bytes.
    pub fn filter(&mut self, bytes: &[u8]) -> Input {
        let mut out = Vec::with_capacity(bytes.len());
        for &b in bytes {
            if self.pending_escape {
                self.pending_escape = false;
                match b {
                    b'x' | b'X' => return Input::Quit,
                    ESCAPE => out.push(ESCAPE),
                    other => out.extend_from_slice(&[ESCAPE, other]),
                }
            } else if b == ESCAPE {
                self.pending_escape = true;
            } else {
                out.push(b);
            }
        }
        Input::Guest(out)
    }
}

/// Reads what is available on stdin without blocking past one read.
pub fn read_stdin(buf: &mut [u8]) -> std::io::Result<usize> {
    std::io::stdin().lock().read(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ctrl_a_x_quits_even_across_reads() {
        let mut f = EscapeFilter::default();
        assert_eq!(f.filter(b"ls\r\x01"), Input::Guest(b"ls\r".to_vec()));
        assert_eq!(f.filter(b"x"), Input::Quit);
    }

    #[test]
    fn ctrl_a_twice_sends_one_and_other_keys_pass_through() {
        let mut f = EscapeFilter::default();
        assert_eq!(
            f.filter(b"\x01\x01a\x01b"),
            Input::Guest(b"\x01a\x01b".to_vec())
        );
    }
}
