//! Boots the default Linux guest on popek's software CPU (`--accel emu`) to its busybox shell,
//! then types a command there.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Waits for a line containing `needle`, collecting what comes before it.
fn wait_for(rx: &mpsc::Receiver<String>, needle: &str, until: Instant, seen: &mut String) -> bool {
    while let Some(left) = until.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(line) => {
                seen.push_str(&line);
                seen.push('\n');
                if line.contains(needle) {
                    return true;
                }
            }
            Err(_) => return false,
        }
    }
    false
}

#[test]
fn debian_kernel_boots_to_a_working_shell_on_the_software_cpu() {
    let guest = match guest_image::find_cached() {
        Ok(Some(g)) => g,
        other => {
            panic!("the default guest is not built ({other:?}): run `cargo xtask guest` first")
        }
    };
    let mut child = common::popek()
        .args([
            "run",
            "--accel",
            "emu",
            "--kernel",
            guest.vmlinux.to_str().unwrap(),
        ])
        .args(["--initrd", guest.initramfs.to_str().unwrap()])
        .args([
            "--cmdline",
            "console=ttyS0 reboot=k panic=-1",
            "--serial",
            "stdio",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let until = Instant::now() + Duration::from_secs(900);
    let mut console = String::new();
    let ready = wait_for(&rx, guest_image::READY_MARKER, until, &mut console);
    // The shell computes the answer, so its output cannot be the echo of what was typed.
    let answered = ready && {
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"echo popek-shell-$((6 * 7))\n").unwrap();
        stdin.flush().unwrap();
        wait_for(&rx, "popek-shell-42", until, &mut console)
    };
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        ready,
        "no marker line; console:\n{console}\nstderr:\n{stderr}"
    );
    assert!(
        answered,
        "the shell did not answer; console:\n{console}\nstderr:\n{stderr}"
    );
}
