//! Boots the default Linux guest on popek's software CPU (`--accel emu`) to its busybox shell,
//! with a virtio disk, NIC and entropy device, then types commands there: the shell answers, the
//! disk reads and writes, and the NIC pings the host across a bridge in a network namespace
//! this test creates.

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

/// Types `command` and waits for `needle`.
fn ask(
    stdin: &mut std::process::ChildStdin,
    rx: &mpsc::Receiver<String>,
    command: &str,
    needle: &str,
    until: Instant,
    console: &mut String,
) -> bool {
    stdin.write_all(command.as_bytes()).unwrap();
    stdin.write_all(b"\n").unwrap();
    stdin.flush().unwrap();
    wait_for(rx, needle, until, console)
}

#[test]
fn debian_kernel_boots_to_a_working_shell_on_the_software_cpu() {
    let guest = match guest_image::find_cached() {
        Ok(Some(g)) => g,
        other => {
            panic!("the default guest is not built ({other:?}): run `cargo xtask guest` first")
        }
    };
    // The NIC needs a namespace of its own (root only); without one the test says so and goes
    // on with the disk.
    let netns = common::netns::enter_new_netns();
    if netns {
        common::netns::bridge("pbrlinux");
        common::netns::ip(&["addr", "add", "10.0.2.1/24", "dev", "pbrlinux"]);
    }
    let dir = std::env::temp_dir().join(format!("popek-linux-emu-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let disk = dir.join("disk.img");
    let mut image = vec![0u8; 4 << 20];
    image[..18].copy_from_slice(b"popek-disk-sector0");
    std::fs::write(&disk, &image).unwrap();
    let mut devices = vec![
        "--disk".to_string(),
        disk.display().to_string(),
        "--rng".into(),
    ];
    if netns {
        devices.extend([
            "--net".into(),
            "bridge=pbrlinux,mac=52:54:00:00:00:42".into(),
        ]);
    }
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
        .args(&devices)
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
    // The shell computes each answer, so its output cannot be the echo of what was typed.
    let mut stdin = child.stdin.take().unwrap();
    let mut ask = |cmd: &str, needle: &str, console: &mut String| {
        ready && ask(&mut stdin, &rx, cmd, needle, until, console)
    };
    let answered = ask(
        "echo popek-shell-$((6 * 7))",
        "popek-shell-42",
        &mut console,
    );
    // 4 MiB is 8192 sectors.
    let sized = ask(
        "echo popek-vda-$(cat /sys/block/vda/size)",
        "popek-vda-8192",
        &mut console,
    );
    let read = ask(
        "echo popek-read-$(dd if=/dev/vda bs=512 count=1 2>/dev/null | head -c 18)",
        "popek-read-popek-disk-sector0",
        &mut console,
    );
    let wrote = ask(
        "echo popek-guest-wrote | dd of=/dev/vda bs=512 seek=1 conv=sync,fsync 2>/dev/null && echo popek-dd-$((1 + 1))",
        "popek-dd-2",
        &mut console,
    );
    let pinged = netns
        && ask(
            "ip link set eth0 up && ip addr add 10.0.2.2/24 dev eth0 && ping -c 2 -W 20 10.0.2.1 >/dev/null && echo popek-ping-$((40 + 2))",
            "popek-ping-42",
            &mut console,
        );
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
    assert!(
        sized,
        "no /dev/vda of 4 MiB; console:\n{console}\nstderr:\n{stderr}"
    );
    assert!(
        read,
        "/dev/vda did not read back; console:\n{console}\nstderr:\n{stderr}"
    );
    assert!(
        wrote,
        "dd to /dev/vda failed; console:\n{console}\nstderr:\n{stderr}"
    );
    let on_disk = std::fs::read(&disk).unwrap();
    assert_eq!(
        &on_disk[512..530],
        b"popek-guest-wrote\n",
        "the guest's write is not in the file"
    );
    let _ = std::fs::remove_dir_all(&dir);
    if netns {
        assert!(
            pinged,
            "eth0 did not reach the host; console:\n{console}\nstderr:\n{stderr}"
        );
    }
}
