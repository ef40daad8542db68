//! Snapshots: a guest keeps counting across snapshot, kill and restore; a disk mid-way through
//! writes loses nothing; clones share memory; damaged snapshots are refused, each with its own
//! error; a diff plus its base equals a full snapshot of the same moment.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use api::client::Client;
use guests::Guest;

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("popek-snap-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_socket(socket: &Path) {
    let until = Instant::now() + Duration::from_secs(20);
    while !socket.exists() {
        assert!(Instant::now() < until, "no API socket");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Starts `popek vmm` and boots the counter guest with `cmdline` and `extra` config JSON.
fn boot_counter(dir: &Path, cmdline: &str, memory_mib: u64, extra: &str) -> (Proc, Client) {
    let socket = dir.join("api.sock");
    let child = common::popek()
        .args(["vmm", "--api-socket", socket.to_str().unwrap()])
        .spawn()
        .unwrap();
    wait_socket(&socket);
    let c = Client::new(&socket);
    let config = format!(
        r#"{{"machine":{{"cpus":1,"memory_mib":{memory_mib}}},
            "boot":{{"kernel":"{}","cmdline":"{cmdline}"}},
            "serial":{{"mode":"file","path":"{}"}}{extra}}}"#,
        Guest::Counter.path().display(),
        dir.join("serial.txt").display()
    );
    let r = c.put("/vm/config", &config).unwrap();
    assert_eq!(r.status, 204, "{}", r.body);
    let r = c.post("/vm/actions", r#"{"action":"boot"}"#).unwrap();
    assert_eq!(r.status, 204, "{}", r.body);
    (Proc(child), c)
}

/// (count, ticks) of every `counter: count=` line in `path`.
fn lines(path: &Path) -> Vec<(u64, u64)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.strip_prefix("counter: count="))
        .filter_map(|l| {
            let (c, t) = l.split_once(" ticks=")?;
            Some((c.parse().ok()?, t.parse().ok()?))
        })
        .collect()
}

fn wait_lines(path: &Path, n: usize, secs: u64) {
    let until = Instant::now() + Duration::from_secs(secs);
    while lines(path).len() < n {
        assert!(
            Instant::now() < until,
            "fewer than {n} lines in {}:\n{}",
            path.display(),
            std::fs::read_to_string(path).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn action(c: &Client, a: &str) {
    let r = c
        .post("/vm/actions", &format!(r#"{{"action":"{a}"}}"#))
        .unwrap();
    assert_eq!(r.status, 204, "{a}: {}", r.body);
}

fn snapshot(c: &Client, dir: &Path, diff: bool) -> api_types::SnapshotInfo {
    let r = c
        .post(
            "/vm/snapshot",
            &format!(r#"{{"dir":"{}","diff":{diff}}}"#, dir.display()),
        )
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    r.json().unwrap()
}

fn restore(snap: &Path, serial: &Path, extra: &[&str]) -> Proc {
    let mut cmd = common::popek();
    cmd.args(["restore", snap.to_str().unwrap()])
        .args(["--serial", &format!("file:{}", serial.display())])
        .args(extra);
    Proc(cmd.spawn().unwrap())
}

#[test]
fn a_counting_guest_continues_after_snapshot_kill_and_restore() {
    let dir = scratch("continue");
    let (vmm, c) = boot_counter(&dir, "every=5", 64, "");
    let serial = dir.join("serial.txt");
    wait_lines(&serial, 4, 30);
    action(&c, "pause");
    let snap = dir.join("snap");
    let info = snapshot(&c, &snap, false);
    assert_eq!(info.kind, "full");
    let before = lines(&serial);
    let last = *before.last().unwrap();
    drop(vmm);

    let restored_serial = dir.join("restored.txt");
    let _r = restore(&snap, &restored_serial, &[]);
    wait_lines(&restored_serial, 3, 30);
    let after = lines(&restored_serial);
    // No reset: the first line after the restore continues the counter and the timer.
    assert!(
        after[0].0 > last.0 && after[0].1 > last.1,
        "before {last:?}, after {:?}",
        after[0]
    );
    assert_eq!(
        after[0].1,
        last.1 + 5,
        "the timer continued at its next line"
    );
    assert!(after.windows(2).all(|w| w[1].0 > w[0].0 && w[1].1 > w[0].1));
    // A snapshot of a running VM is refused: it must be paused.
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_disk_mid_way_through_writes_loses_nothing() {
    let dir = scratch("disk");
    let disk = dir.join("disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let extra = format!(r#","disks":[{{"path":"{}"}}]"#, disk.display());
    let (vmm, c) = boot_counter(&dir, "every=3 disk=1", 64, &extra);
    let serial = dir.join("serial.txt");
    wait_lines(&serial, 5, 30);
    action(&c, "pause");
    let snap = dir.join("snap");
    snapshot(&c, &snap, false);
    let written_before = std::fs::read_to_string(&serial)
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("counter: wrote sector"))
        .count();
    drop(vmm);

    let restored = dir.join("restored.txt");
    let r = restore(&snap, &restored, &[]);
    wait_lines(&restored, 4, 30);
    // Let the restored guest finish the write it prints next, then stop it.
    std::thread::sleep(Duration::from_millis(300));
    drop(r);
    let text = std::fs::read_to_string(&restored).unwrap();
    let wrote: Vec<u64> = text
        .lines()
        .filter_map(|l| l.strip_prefix("counter: wrote sector "))
        .filter_map(|n| n.parse().ok())
        .collect();
    assert!(wrote.len() >= 2, "{text}");
    // The sectors continue where the first VM stopped: none skipped, none rewritten.
    assert_eq!(wrote[0] as usize, written_before, "{text}");
    // Every sector the guests reported written holds its line.
    let image = std::fs::read(&disk).unwrap();
    let all_lines: Vec<String> = std::fs::read_to_string(&serial)
        .unwrap()
        .lines()
        .chain(text.lines())
        .filter(|l| l.starts_with("counter: count="))
        .map(str::to_string)
        .collect();
    let total = written_before + wrote.len();
    for (i, line) in all_lines.iter().take(total).enumerate() {
        let sector = &image[i * 512..i * 512 + line.len()];
        assert_eq!(sector, line.as_bytes(), "sector {i}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn damaged_snapshots_are_refused_each_with_its_own_error() {
    let dir = scratch("damaged");
    let (vmm, c) = boot_counter(&dir, "every=5", 32, "");
    wait_lines(&dir.join("serial.txt"), 2, 30);
    action(&c, "pause");
    let good = dir.join("good");
    snapshot(&c, &good, false);
    // A snapshot needs a paused VM and a new directory.
    action(&c, "resume");
    let r = c
        .post(
            "/vm/snapshot",
            &format!(r#"{{"dir":"{}"}}"#, dir.join("x").display()),
        )
        .unwrap();
    assert_eq!(r.status, 409, "{}", r.body);
    drop(vmm);

    let copy = |name: &str| {
        let d = dir.join(name);
        std::fs::create_dir_all(&d).unwrap();
        for f in ["state.json", "memory"] {
            std::fs::copy(good.join(f), d.join(f)).unwrap();
        }
        d
    };
    let refused = |snap: &Path| {
        let out = common::popek()
            .args(["restore", snap.to_str().unwrap(), "--serial", "none"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{:?}", out);
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    // A corrupt state file.
    let corrupt = copy("corrupt");
    let state = std::fs::read_to_string(corrupt.join("state.json")).unwrap();
    std::fs::write(
        corrupt.join("state.json"),
        state.replacen("\"cpus\":1", "\"cpus\":2", 1),
    )
    .unwrap();
    let e = refused(&corrupt);
    assert!(e.contains("corrupt") && e.contains("checksum"), "{e}");
    // A truncated memory file.
    let truncated = copy("truncated");
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(truncated.join("memory"))
        .unwrap();
    f.set_len(1 << 20).unwrap();
    let e = refused(&truncated);
    assert!(e.contains("memory file is 1048576 bytes"), "{e}");
    // Another popek version's format.
    let other = copy("other");
    std::fs::write(
        other.join("state.json"),
        state.replacen("\"format_version\":1", "\"format_version\":2", 1),
    )
    .unwrap();
    let e = refused(&other);
    assert!(e.contains("snapshot format 2"), "{e}");
    // Not a snapshot at all.
    let e = refused(&dir.join("nothing"));
    assert!(e.contains("nothing"), "{e}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_diff_and_its_base_restore_the_same_state_as_a_full_snapshot() {
    let dir = scratch("diff");
    let (vmm, c) = boot_counter(&dir, "every=2", 64, "");
    let serial = dir.join("serial.txt");
    wait_lines(&serial, 2, 30);
    action(&c, "pause");
    let base = dir.join("base");
    snapshot(&c, &base, false);
    action(&c, "resume");
    wait_lines(&serial, 5, 30);
    action(&c, "pause");
    // The same moment, twice: a diff against the base, and a full snapshot.
    let diff = dir.join("diff");
    let d = snapshot(&c, &diff, true);
    assert_eq!(d.kind, "diff");
    let full = dir.join("full");
    let f = snapshot(&c, &full, false);
    assert!(
        d.pages_written < f.pages_written,
        "the diff wrote {} pages, the full {}",
        d.pages_written,
        f.pages_written
    );
    drop(vmm);
    let merged = dir.join("merged");
    let out = common::popek()
        .args(["snapshot", "merge"])
        .args([&base, &diff, &merged])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(
        std::fs::read(merged.join("memory")).unwrap()
            == std::fs::read(full.join("memory")).unwrap(),
        "merged memory differs from the full snapshot's"
    );
    let body = |d: &Path| {
        let s = std::fs::read_to_string(d.join("state.json")).unwrap();
        serde_json::from_str::<serde_json::Value>(s.split_once('\n').unwrap().1).unwrap()
    };
    // Both snapshots were taken while the VM stayed paused, but host time ran on between them:
    // KVM's clock, the TSC and the in-kernel LAPIC timer's current count move with it. Those
    // are masked; everything else must be identical.
    let (m, f) = (without_clocks(body(&merged)), without_clocks(body(&full)));
    assert!(m == f, "merged state differs:\n{m}\n{f}");
    // And the merged snapshot runs.
    let restored = dir.join("restored.txt");
    let _r = restore(&merged, &restored, &[]);
    wait_lines(&restored, 2, 30);
    let _ = std::fs::remove_dir_all(dir);
}

/// `body` with the values that follow host time while a VM is paused removed.
fn without_clocks(mut body: serde_json::Value) -> serde_json::Value {
    if let Some(vm) = body.pointer_mut("/vm/Kvm") {
        vm["clock_ns"] = 0.into();
    }
    if let Some(vm) = body.pointer_mut("/vm/Emu") {
        vm["now_ns"] = 0.into();
    }
    for vcpu in body["vcpus"].as_array_mut().into_iter().flatten() {
        if let Some(kvm) = vcpu.get_mut("Kvm") {
            if let Some(msrs) = kvm["msrs"].as_array_mut() {
                // IA32_TSC.
                msrs.retain(|m| m["index"] != 0x10);
            }
            if let Some(lapic) = kvm["lapic"].as_str() {
                // The timer's current count register, at 0x390 in the APIC page.
                let mut hex = lapic.to_string();
                hex.replace_range(0x390 * 2..0x394 * 2, "00000000");
                kvm["lapic"] = hex.into();
            }
        }
    }
    body
}

/// Proportional set size of `pid` in KiB.
fn pss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn twenty_clones_share_one_snapshot_memory() {
    let dir = scratch("clones");
    let (vmm, c) = boot_counter(&dir, "touch=256 verify=1 every=5", 320, "");
    let serial = dir.join("serial.txt");
    wait_lines(&serial, 2, 120);
    assert!(
        std::fs::read_to_string(&serial)
            .unwrap()
            .contains("touched 256 MiB")
    );
    action(&c, "pause");
    let snap = dir.join("snap");
    snapshot(&c, &snap, false);
    drop(vmm);

    let clones: Vec<(Proc, PathBuf)> = (0..20)
        .map(|i| {
            let s = dir.join(format!("clone{i}.txt"));
            (restore(&snap, &s, &[]), s)
        })
        .collect();
    for (_, s) in &clones {
        // verify=1 re-reads touched pages on every line: each clone's memory is intact.
        wait_lines(s, 3, 120);
        let text = std::fs::read_to_string(s).unwrap();
        assert!(!text.contains("mismatch"), "{text}");
    }
    let total_kib: u64 = clones.iter().map(|(p, _)| pss_kib(p.0.id())).sum();
    let naive_kib = 20 * 256 * 1024;
    eprintln!(
        "20 clones of a guest with 256 MiB touched: PSS {} MiB in all ({} MiB each), against {} MiB unshared",
        total_kib / 1024,
        total_kib / 1024 / 20,
        naive_kib / 1024
    );
    assert!(
        total_kib * 4 < naive_kib,
        "clones use {total_kib} KiB, not far below {naive_kib} KiB"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_clone_gets_its_own_disk_overlay() {
    if Command::new("qemu-img").arg("--version").output().is_err() {
        eprintln!("skipped: qemu-img is not installed");
        return;
    }
    let dir = scratch("clone-disk");
    let disk = dir.join("base.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let extra = format!(r#","disks":[{{"path":"{}"}}]"#, disk.display());
    let (vmm, c) = boot_counter(&dir, "every=3 disk=1", 64, &extra);
    wait_lines(&dir.join("serial.txt"), 3, 30);
    action(&c, "pause");
    let snap = dir.join("snap");
    snapshot(&c, &snap, false);
    drop(vmm);
    let base_bytes = std::fs::read(&disk).unwrap();
    // The clone writes to its own overlay; the base stays as the snapshot left it.
    let overlay = dir.join("clone.qcow2");
    let status = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
        .args([&disk, &overlay])
        .status()
        .unwrap();
    assert!(status.success());
    let out = dir.join("clone.txt");
    let r = restore(&snap, &out, &["--disk", overlay.to_str().unwrap()]);
    wait_lines(&out, 3, 30);
    std::thread::sleep(Duration::from_millis(300));
    drop(r);
    assert!(
        std::fs::read_to_string(&out)
            .unwrap()
            .contains("counter: wrote sector")
    );
    assert!(
        std::fs::read(&disk).unwrap() == base_bytes,
        "the base image changed"
    );
    let check = Command::new("qemu-img")
        .arg("check")
        .arg(&overlay)
        .output()
        .unwrap();
    assert!(check.status.success(), "{check:?}");
    let _ = std::fs::remove_dir_all(dir);
}
