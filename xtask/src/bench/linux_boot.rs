//! `cargo xtask bench linux-boot`: exec to the default guest's marker line (its `/init` has
//! loaded the modules and is about to start the shell) under popek's software CPU and under
//! QEMU's TCG, with the same kernel (PVH `vmlinux`) and initramfs.

use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};

use super::{figure, median, time_to_line};

const RUNS: usize = 3;
const CMDLINE: &str = "console=ttyS0 reboot=k panic=-1";

pub fn run() -> anyhow::Result<()> {
    crate::host::ensure_package("qemu-system-x86_64", "qemu-system-x86")?;
    crate::host::ensure_apt_lists()?;
    let guest = crate::host::default_guest()?;
    let bin = super::startup::popek_binary()?;
    let marker = guest_image::READY_MARKER;
    let popek = || {
        let mut c = Command::new(&bin);
        c.args(["run", "--accel", "emu", "--kernel"])
            .arg(&guest.vmlinux)
            .arg("--initrd")
            .arg(&guest.initramfs)
            .args(["--cmdline", CMDLINE, "--serial", "stdio"]);
        c
    };
    let qemu = || {
        let mut c = Command::new("qemu-system-x86_64");
        c.args([
            "-M", "microvm", "-accel", "tcg", "-cpu", "max", "-m", "512M",
        ])
        .args([
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
            "-serial",
            "stdio",
        ])
        .arg("-kernel")
        .arg(&guest.vmlinux)
        .arg("-initrd")
        .arg(&guest.initramfs)
        .args(["-append", CMDLINE]);
        c
    };
    let mut results = Vec::new();
    for (name, make, timeout) in [
        (
            "popek --accel emu",
            &popek as &dyn Fn() -> Command,
            Duration::from_secs(600),
        ),
        (
            "qemu -accel tcg",
            &qemu as &dyn Fn() -> Command,
            Duration::from_secs(120),
        ),
    ] {
        let mut times = Vec::new();
        for _ in 0..RUNS {
            let t = time_to_line(&mut make(), marker, timeout)?
                .with_context(|| format!("{name} never printed {marker:?}"))?;
            times.push(t);
        }
        let t = median(&mut times);
        println!(
            "  {name:20} {:8.2} s to the marker line (median of {RUNS})",
            t.as_secs_f64()
        );
        results.push(t.as_secs_f64());
    }
    if results.len() != 2 {
        bail!("missing results");
    }
    figure("linux-boot", "popek_emu", results[0], "s");
    figure("linux-boot", "qemu_tcg", results[1], "s");
    figure(
        "linux-boot",
        "popek_over_qemu",
        results[0] / results[1],
        "ratio",
    );
    Ok(())
}
