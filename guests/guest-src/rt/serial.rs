//! COM1 (16550 at 0x3f8) output, and the [`say!`](crate::say) macro.
//!
//! No `core::fmt`: the precompiled `core` is built with SSE, and its integer formatting uses
//! `movd`/`pinsrw`, which hosts that emulate CPL-0 code cannot emulate. [`Show`] prints strings,
//! integers in decimal and [`Hex`] values with plain integer instructions.

use crate::port::{inb, outb};

const COM1: u16 = 0x3f8;
const LSR: u16 = COM1 + 5;
const LSR_THR_EMPTY: u8 = 0x20;

/// Writes one byte, waiting (boundedly) for the transmit holding register to empty.
pub fn write_byte(byte: u8) {
    for _ in 0..100_000 {
        if inb(LSR) & LSR_THR_EMPTY != 0 {
            break;
        }
    }
    outb(COM1, byte);
}

/// Writes bytes as they are.
pub fn write_bytes(bytes: &[u8]) {
    for &b in bytes {
        write_byte(b);
    }
}

/// Something [`say!`](crate::say) can print.
pub trait Show {
    /// Writes `self` to COM1.
    fn show(&self);
}

impl Show for &str {
    fn show(&self) {
        write_bytes(self.as_bytes());
    }
}

impl Show for &[u8] {
    fn show(&self) {
        write_bytes(self);
    }
}

macro_rules! show_decimal {
    ($($t:ty),*) => {$(
        impl Show for $t {
            fn show(&self) {
                decimal(*self as u64);
            }
        }
    )*};
}
show_decimal!(u8, u16, u32, u64, usize);

/// Prints its value as `0x` and lowercase hex digits.
pub struct Hex(pub u64);

impl Show for Hex {
    fn show(&self) {
        let mut digits = [0u8; 18];
        digits[0] = b'0';
        digits[1] = b'x';
        let mut n = 2;
        let mut started = false;
        for shift in (0..16).rev() {
            let nibble = ((self.0 >> (4 * shift)) & 0xf) as u8;
            if nibble != 0 || started || shift == 0 {
                started = true;
                digits[n] = if nibble < 10 {
                    b'0' + nibble
                } else {
                    b'a' + nibble - 10
                };
                n += 1;
            }
        }
        write_bytes(&digits[..n]);
    }
}

fn decimal(mut value: u64) {
    let mut digits = [0u8; 20];
    let mut n = digits.len();
    loop {
        n -= 1;
        digits[n] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    write_bytes(&digits[n..]);
}

/// Prints its arguments (strings, integers, [`Hex`]) in order, then `\n`:
/// `say!("smp: ", n, " of ", m, " CPUs checked in")`.
#[macro_export]
macro_rules! say {
    ($($item:expr),* $(,)?) => {{
        $( $crate::serial::Show::show(&$item); )*
        $crate::serial::write_byte(b'\n');
    }};
}
