//! `cargo xtask bench cpu`: guest instructions per second of popek's software CPU
//! (`--accel emu`) and of QEMU's TCG, on the same `cpuloop` guest: a register-only integer loop
//! and a load/add/store loop striding through 1 MiB.
//!
//! Each engine runs the guest with a small and a large iteration count; the rate is the extra
//! instructions over the extra time, so boot and exit costs cancel out.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::bail;

use super::{figure, measure, median};

const RUNS: usize = 3;

struct Engine {
    name: &'static str,
    /// Iteration counts: small, large.
    counts: (u64, u64),
    command: fn(&Path, &Path, &str) -> Command,
    /// Exit status of a successful run.
    status: i32,
}

fn popek(bin: &Path, guest: &Path, cmdline: &str) -> Command {
    let mut c = Command::new(bin);
    c.args(["run", "--accel", "emu", "--kernel"])
        .arg(guest)
        .args(["--serial", "stdio", "--cmdline", cmdline]);
    c
}

fn qemu(_: &Path, guest: &Path, cmdline: &str) -> Command {
    let mut c = Command::new("qemu-system-x86_64");
    c.args([
        "-M",
        "microvm",
        "-accel",
        "tcg",
        "-m",
        "512M",
        "-nodefaults",
        "-no-user-config",
    ])
    .args(["-display", "none", "-no-reboot", "-serial", "stdio"])
    .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=4", "-kernel"])
    .arg(guest)
    .args(["-append", cmdline]);
    c
}

/// Median wall time of `RUNS` runs, checking the guest reported `instructions`.
fn time(
    engine: &Engine,
    bin: &Path,
    guest: &Path,
    mode: &str,
    n: u64,
    per: u64,
) -> anyhow::Result<Duration> {
    let cmdline = format!("mode={mode} n={n}");
    let expect = format!("cpuloop: {mode} {n} iterations, {} instructions", n * per);
    let mut times = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        let s = measure(&mut (engine.command)(bin, guest, &cmdline))?;
        if s.status != engine.status || !s.stdout.contains(&expect) {
            bail!(
                "{} did not run cpuloop {cmdline}: status {}, output {:?}",
                engine.name,
                s.status,
                s.stdout
            );
        }
        times.push(s.wall);
    }
    Ok(median(&mut times))
}

pub fn run() -> anyhow::Result<()> {
    crate::host::ensure_package("qemu-system-x86_64", "qemu-system-x86")?;
    let bin = super::startup::popek_binary()?;
    let guest = guests::Guest::CpuLoop.path();
    let engines = [
        Engine {
            name: "popek (--accel emu)",
            counts: (100_000, 10_100_000),
            command: popek,
            status: 0,
        },
        // QEMU's isa-debug-exit turns status 0 into 1.
        Engine {
            name: "qemu (-accel tcg)",
            counts: (10_000_000, 510_000_000),
            command: qemu,
            status: 1,
        },
    ];
    let mut rates = Vec::new();
    for (mode, per) in [("int", 6u64), ("mem", 7u64)] {
        for e in &engines {
            let (small, large) = e.counts;
            let t_small = time(e, &bin, guest, mode, small, per)?;
            let t_large = time(e, &bin, guest, mode, large, per)?;
            let extra = (large - small) * per;
            let secs = t_large.saturating_sub(t_small).as_secs_f64().max(1e-6);
            let mips = extra as f64 / secs / 1e6;
            println!("  {mode} loop, {:20} {mips:10.1} M instructions/s", e.name);
            rates.push((mode, e.name, mips));
        }
    }
    for mode in ["int", "mem"] {
        let ours = rates
            .iter()
            .find(|r| r.0 == mode && r.1.starts_with("popek"))
            .map_or(0.0, |r| r.2);
        let theirs = rates
            .iter()
            .find(|r| r.0 == mode && r.1.starts_with("qemu"))
            .map_or(0.0, |r| r.2);
        figure("cpu", &format!("popek_{mode}_mips"), ours, "Minstr/s");
        figure("cpu", &format!("qemu_tcg_{mode}_mips"), theirs, "Minstr/s");
        figure(
            "cpu",
            &format!("popek_over_qemu_{mode}"),
            ours / theirs,
            "ratio",
        );
    }
    Ok(())
}
