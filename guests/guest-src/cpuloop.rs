//! `cpuloop`: a guest for CPU benchmarks. Runs a loop with an exact instruction count, chosen on
//! the command line, then exits with status 0:
//!
//! - `mode=int n=N`: N iterations of six register-only integer instructions;
//! - `mode=mem n=N`: N iterations of seven instructions that load, add and store a quadword,
//!   striding 64 bytes through a 1 MiB buffer (every access a new cache line).
//!
//! It prints `cpuloop: MODE N iterations, I instructions` first, so the benchmark knows the
//! count. The loops run at CPL 0 (software engines do not care; KVM here would emulate them).

#![no_std]
#![no_main]

use rt::say;

rt::entry!(main);

/// The buffer the memory loop walks: 1 MiB, in the guest image's BSS.
static BUFFER: rt::Global<[u64; 1 << 17]> = rt::Global::new([0; 1 << 17]);

/// The decimal value of the first `key=` word.
fn value(cmdline: &[u8], key: &[u8]) -> Option<u64> {
    let word = cmdline.split(|&b| b == b' ').find_map(|w| w.strip_prefix(key))?;
    let mut n: u64 = 0;
    for &d in word {
        if !d.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
    }
    Some(n)
}

fn int_loop(n: u64) -> u64 {
    let mut a: u64 = 1;
    // SAFETY: register-only arithmetic; `n` iterations of the six instructions below.
    unsafe {
        core::arch::asm!(
            "2:",
            "add {a}, {b}",
            "xor {b}, {a}",
            "rol {a}, 3",
            "sub {c}, {a}",
            "dec {n}",
            "jnz 2b",
            a = inout(reg) a,
            b = inout(reg) 0x9e37_79b9_7f4a_7c15u64 => _,
            c = inout(reg) 0u64 => _,
            n = inout(reg) n => _,
            options(nomem, nostack),
        );
    }
    a
}

fn mem_loop(n: u64) -> u64 {
    let base = BUFFER.get() as u64;
    // SAFETY: the loop only touches BUFFER (offsets masked to its 1 MiB), which nothing else
    // uses; `n` iterations of the seven instructions below.
    unsafe {
        core::arch::asm!(
            "2:",
            "mov {t}, [{base} + {off}]",
            "add {t}, {n}",
            "mov [{base} + {off}], {t}",
            "add {off}, 64",
            "and {off}, 0xfffff",
            "dec {n}",
            "jnz 2b",
            base = in(reg) base,
            off = inout(reg) 0u64 => _,
            t = out(reg) _,
            n = inout(reg) n => _,
            options(nostack),
        );
    }
    // SAFETY: the loop above is done; a plain read of one element.
    unsafe { (*BUFFER.get())[0] }
}

fn main(boot: &rt::BootInfo) -> u8 {
    let n = value(boot.cmdline, b"n=").unwrap_or(1_000_000).max(1);
    let int = !boot.cmdline.split(|&b| b == b' ').any(|w| w == b"mode=mem");
    let (name, per, result) = if int { ("int", 6, int_loop(n)) } else { ("mem", 7, mem_loop(n)) };
    say!("cpuloop: ", name, " ", n, " iterations, ", n * per, " instructions");
    // Keep the result observable so the loop cannot be optimised away.
    if result == 0x1234_5678_9abc_def0 {
        say!("cpuloop: improbable result");
    }
    0
}
