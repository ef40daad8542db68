//! What the host needs for tests and benchmarks, installed by the project itself.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, bail};

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn apt_knows(package: &str) -> bool {
    Command::new("apt-cache")
        .args(["show", "--no-all-versions", package])
        .output()
        .is_ok_and(|o| o.status.success() && !o.stdout.is_empty())
}

/// Makes sure apt's package lists know the kernel package the default guest is built from.
pub fn ensure_apt_lists() -> anyhow::Result<()> {
    if apt_knows(guest_image::apt::KERNEL_METAPACKAGE) {
        return Ok(());
    }
    if !is_root() {
        bail!("apt's package lists are missing: run `sudo apt-get update` once, then retry");
    }
    eprintln!("xtask: apt-get update");
    let status = Command::new("apt-get")
        .args(["update", "-qq"])
        .status()
        .context("cannot run apt-get")?;
    if !status.success() {
        bail!("apt-get update failed ({status})");
    }
    Ok(())
}

/// Installs Debian `package` if `binary` is not on the host.
pub fn ensure_package(binary: &str, package: &str) -> anyhow::Result<()> {
    let found = std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|d| Path::new(&d).join(binary).is_file())
    });
    if found {
        return Ok(());
    }
    if !is_root() {
        bail!("{binary} is missing: install it with `sudo apt-get install {package}`");
    }
    ensure_apt_lists()?;
    eprintln!("xtask: apt-get install {package}");
    let status = Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends", package])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("cannot run apt-get")?;
    if !status.success() {
        bail!("apt-get install {package} failed ({status})");
    }
    Ok(())
}

/// Installs the PyPI `package` with pip if Python cannot import `module`. Without python3 at
/// all it only says so: the tests that need the module skip with a reason.
pub fn ensure_pip_module(module: &str, package: &str) -> anyhow::Result<()> {
    let import = Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .output();
    match import {
        Ok(o) if o.status.success() => return Ok(()),
        Ok(_) => {}
        Err(_) => {
            eprintln!("xtask: python3 is missing, so the tests that need {package} will skip");
            return Ok(());
        }
    }
    eprintln!("xtask: pip install {package}");
    let status = Command::new("python3")
        .args(["-m", "pip", "install", "--quiet", package])
        .status()
        .context("cannot run python3 -m pip")?;
    if !status.success() {
        bail!("`python3 -m pip install {package}` failed ({status})");
    }
    Ok(())
}

/// Assembles (or finds) the default guest, with progress on stderr.
pub fn default_guest() -> anyhow::Result<guest_image::DefaultGuest> {
    guest_image::ensure_default_guest(&mut |step| eprintln!("xtask: {step}"))
        .context("cannot assemble the default guest")
}
