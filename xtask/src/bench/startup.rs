//! `cargo xtask bench startup`: exec-to-exit time and peak RSS of the `hello` guest under popek
//! and under QEMU's microvm with KVM, both booting the same PVH ELF.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};

use super::{Sample, figure, measure, median};

const RUNS: usize = 41;
/// Pause after each run, so that one VM's teardown does not overlap the next start.
const SETTLE: Duration = Duration::from_millis(100);
const HELLO_LINE: &str = "Hello from the popek hello guest!";

pub fn popek_binary() -> anyhow::Result<PathBuf> {
    let status = Command::new(env!("CARGO"))
        .args(["build", "--release", "--quiet", "-p", "popek"])
        .status()
        .context("cannot run cargo build")?;
    if !status.success() {
        bail!("building popek failed");
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("no workspace root")?;
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    Ok(target.join("release/popek"))
}

fn popek(bin: &Path, hello: &Path) -> Command {
    let mut c = Command::new(bin);
    c.args(["run", "--kernel"])
        .arg(hello)
        .args(["--memory", "512M", "--serial", "stdio"]);
    c
}

fn qemu(hello: &Path) -> Command {
    let mut c = Command::new("qemu-system-x86_64");
    c.args(["-M", "microvm", "-enable-kvm", "-m", "512M", "-smp", "1"])
        .args([
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
        ])
        .args([
            "-serial",
            "stdio",
            "-device",
            "isa-debug-exit,iobase=0xf4,iosize=4",
        ])
        .arg("-kernel")
        .arg(hello);
    c
}

/// Checks that a run did the work: printed the line and exited as the guest asked.
fn check(name: &str, s: &Sample, status: i32) -> anyhow::Result<()> {
    if !s.stdout.contains(HELLO_LINE) || s.status != status {
        bail!(
            "{name} did not run the hello guest: status {}, output {:?}",
            s.status,
            s.stdout
        );
    }
    Ok(())
}

pub fn run() -> anyhow::Result<()> {
    crate::host::ensure_package("qemu-system-x86_64", "qemu-system-x86")?;
    let bin = popek_binary()?;
    let hello = guests::Guest::Hello.path();
    let mut ours: Vec<Sample> = Vec::with_capacity(RUNS);
    let mut theirs: Vec<Sample> = Vec::with_capacity(RUNS);
    // Warm the page cache for both. Then run each VMM in its own batch, pausing between runs:
    // the host kernel tears a VM down after its process has exited (QEMU's in-kernel PIT alone
    // takes ~16 ms), and interleaving would bill that to whichever runs next.
    measure(&mut popek(&bin, hello))?;
    measure(&mut qemu(hello))?;
    for _ in 0..RUNS {
        let s = measure(&mut popek(&bin, hello))?;
        check("popek", &s, 0)?;
        ours.push(s);
        std::thread::sleep(SETTLE);
    }
    for _ in 0..RUNS {
        let s = measure(&mut qemu(hello))?;
        // QEMU's isa-debug-exit exits with (status << 1) | 1.
        check("qemu", &s, 1)?;
        theirs.push(s);
        std::thread::sleep(SETTLE);
    }
    let wall = |v: &[Sample]| median(&mut v.iter().map(|s| s.wall).collect::<Vec<Duration>>());
    let rss = |v: &[Sample]| median(&mut v.iter().map(|s| s.max_rss_kib).collect::<Vec<u64>>());
    let (pw, qw) = (wall(&ours), wall(&theirs));
    let (pr, qr) = (rss(&ours), rss(&theirs));
    println!("startup: hello guest, exec to exit, median of {RUNS} runs each");
    println!(
        "  popek                 {:8.2} ms  {:8.1} MiB peak RSS",
        ms(pw),
        pr as f64 / 1024.0
    );
    println!(
        "  qemu microvm (KVM)    {:8.2} ms  {:8.1} MiB peak RSS",
        ms(qw),
        qr as f64 / 1024.0
    );
    println!(
        "  popek/qemu            {:8.2} x   {:8.2} x",
        ms(pw) / ms(qw),
        pr as f64 / qr as f64
    );
    figure("startup", "popek_wall", ms(pw), "ms");
    figure("startup", "qemu_wall", ms(qw), "ms");
    figure("startup", "popek_over_qemu_wall", ms(pw) / ms(qw), "ratio");
    figure("startup", "popek_peak_rss", pr as f64 / 1024.0, "MiB");
    figure("startup", "qemu_peak_rss", qr as f64 / 1024.0, "MiB");
    figure(
        "startup",
        "popek_over_qemu_rss",
        pr as f64 / qr as f64,
        "ratio",
    );
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
