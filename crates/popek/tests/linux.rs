//! Boots the default Linux guest (Debian's cloud kernel, PVH `vmlinux`) under KVM.

mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use hypervisor::kvm::HostKvmKind;

/// The default guest, which the test setup (`cargo xtask guest`) assembles.
fn default_guest() -> guest_image::DefaultGuest {
    match guest_image::find_cached() {
        Ok(Some(g)) => g,
        other => panic!(
            "the default guest is not built ({other:?}): run `cargo xtask guest` first \
             (the test command in the README does)"
        ),
    }
}

/// Which of the default guest's kernel images to boot.
#[derive(Clone, Copy)]
enum Image {
    /// The uncompressed ELF, entered through its PVH note.
    Vmlinux,
    /// The bzImage, entered through the Linux 64-bit boot protocol.
    BzImage,
}

/// Boots the guest and reads its console until `marker`, an emulation failure, or `timeout`.
/// Returns the console text, whether the marker was seen, and popek's stderr.
fn boot_until(image: Image, marker: &str, timeout: Duration) -> (String, bool, String) {
    let guest = default_guest();
    let kernel = match image {
        Image::Vmlinux => guest.vmlinux.clone(),
        Image::BzImage => guest.bzimage.clone(),
    };
    let mut child = common::popek()
        .args(["run", "--kernel", kernel.to_str().unwrap()])
        .args(["--initrd", guest.initramfs.to_str().unwrap()])
        .args([
            "--cmdline",
            "console=ttyS0 earlyprintk=ttyS0 reboot=k panic=-1",
            "--serial",
            "stdio",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let start = Instant::now();
    let mut console = String::new();
    let mut seen = false;
    while let Some(left) = timeout.checked_sub(start.elapsed()) {
        match rx.recv_timeout(left) {
            Ok(line) => {
                console.push_str(&line);
                console.push('\n');
                if line.contains(marker) {
                    seen = true;
                    break;
                }
            }
            Err(_) => break,
        }
    }
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    (
        console,
        seen,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn debian_kernel_prints_its_banner_on_the_serial_console() {
    if !common::kvm_usable() {
        return;
    }
    let (console, seen, stderr) =
        boot_until(Image::Vmlinux, "Linux version", Duration::from_secs(120));
    assert!(seen, "no banner; console:\n{console}\nstderr:\n{stderr}");
}

/// The bzImage decompresses itself first: on a host that emulates guest kernel code this takes
/// about a minute and a half before the banner.
#[test]
fn debian_bzimage_boots_through_the_64_bit_protocol_to_its_banner() {
    if !common::kvm_usable() {
        return;
    }
    // The kernel prints the e820 map it got in the zero page right after its banner.
    let marker = "BIOS-e820: [mem 0x0000000000100000-";
    let (console, seen, stderr) = boot_until(Image::BzImage, marker, Duration::from_secs(400));
    assert!(seen, "no e820 map; console:\n{console}\nstderr:\n{stderr}");
    assert!(console.contains("Linux version"), "no banner: {console}");
}

#[test]
fn debian_kernel_boots_to_the_busybox_shell_where_the_host_can_run_it() {
    if !common::kvm_usable() {
        return;
    }
    if HostKvmKind::detect() == HostKvmKind::Pvm {
        eprintln!(
            "skipped: this host's KVM is the paravirtual kvm_pvm, which emulates guest kernel \
             code and cannot execute int3 at CPL 0; Linux stops at its alternatives self-test here"
        );
        return;
    }
    let (console, seen, stderr) = boot_until(
        Image::Vmlinux,
        guest_image::READY_MARKER,
        Duration::from_secs(300),
    );
    assert!(seen, "no marker; console:\n{console}\nstderr:\n{stderr}");
}
