//! The virtio devices, driven by the `virtio` test guest: disks (raw, qcow2 overlays, read-only),
//! entropy, vsock, and NICs on taps and bridges in network namespaces the tests create.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Run, netns};
use guests::Guest;

/// Sectors of the test disks (1 MiB).
const SECTORS: u64 = 2048;
/// The filler byte of a fresh test disk.
const FILL: u8 = 0x5a;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("popek-virtio-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn raw_disk(path: &Path) {
    std::fs::write(path, vec![FILL; (SECTORS * 512) as usize]).unwrap();
}

/// The `blk` test's pattern byte.
fn pattern(sector: u64, i: u64, seed: u64) -> u8 {
    ((sector * 31 + i * 7 + seed) & 0xff) as u8
}

fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// Boots the virtio guest with `cmdline` and `extra` flags (default engine).
fn virtio(cmdline: &str, extra: &[&str]) -> Run {
    let kernel = Guest::Virtio.path().to_str().unwrap();
    let mut args = vec!["run", "--kernel", kernel, "--cmdline", cmdline];
    args.extend_from_slice(extra);
    common::run(&args, Duration::from_secs(120))
}

fn engine_available() -> bool {
    // popek falls back to its software CPU without KVM, so the guest always has an engine.
    true
}

fn expected_disk(sector: u64, seed: u64) -> Vec<u8> {
    let mut d = vec![FILL; (SECTORS * 512) as usize];
    for s in sector..sector + 8 {
        for i in 0..512 {
            d[(s * 512 + i) as usize] = pattern(s, i, seed);
        }
    }
    d
}

fn assert_ok(r: &Run, lines: &[&str]) {
    for l in lines {
        assert!(
            r.stdout.lines().any(|x| x == *l),
            "missing {l:?}\nstdout:\n{}\nstderr:\n{}",
            r.stdout,
            r.stderr
        );
    }
    assert_eq!(
        r.status,
        Some(0),
        "stdout:\n{}\nstderr:\n{}",
        r.stdout,
        r.stderr
    );
}

#[test]
fn a_raw_disk_holds_exactly_what_the_guest_wrote() {
    assert!(engine_available());
    let dir = scratch("raw");
    let disk = dir.join("disk.img");
    raw_disk(&disk);
    let arg = format!("{},format=raw", disk.display());
    let r = virtio(
        "test=blk,blk-read sector=16 seed=3 count=8",
        &["--disk", &arg],
    );
    let expected = expected_disk(16, 3);
    let sum = fnv1a64(&expected[16 * 512..24 * 512]);
    assert_ok(
        &r,
        &[
            "blk: capacity 2048 sectors",
            "blk: wrote and verified 8 sectors at 16",
            "blk: past-end write -> IOERR",
            "blk: flush ok",
            &format!("blk: read 8 sectors at 16 fnv1a64={sum:016x}"),
        ],
    );
    let id = r
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("blk: id "))
        .unwrap_or_default();
    assert!(!id.is_empty(), "GET_ID answered an empty id");
    // Exactly the 8 sectors changed; the failed write past the end left the last sector alone
    // and the file's size as it was.
    assert!(
        std::fs::read(&disk).unwrap() == expected,
        "disk bytes differ"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn the_guest_reads_what_the_host_put_on_the_disk() {
    let dir = scratch("read");
    let disk = dir.join("disk.img");
    let content: Vec<u8> = (0..SECTORS * 512).map(|i| (i * 13 % 256) as u8).collect();
    std::fs::write(&disk, &content).unwrap();
    let arg = disk.display().to_string();
    let r = virtio("test=blk-read sector=100 count=64", &["--disk", &arg]);
    let sum = fnv1a64(&content[100 * 512..164 * 512]);
    assert_ok(
        &r,
        &[&format!("blk: read 64 sectors at 100 fnv1a64={sum:016x}")],
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_read_only_disk_refuses_the_guest_and_stays_unchanged() {
    let dir = scratch("ro");
    let disk = dir.join("disk.img");
    raw_disk(&disk);
    let arg = format!("{},readonly", disk.display());
    let r = virtio("test=blk", &["--disk", &arg]);
    assert_ok(&r, &["blk: read-only", "blk: write on read-only -> IOERR"]);
    assert!(std::fs::read(&disk).unwrap().iter().all(|&b| b == FILL));
    let _ = std::fs::remove_dir_all(dir);
}

fn qemu_img(args: &[&str]) -> Option<std::process::Output> {
    match Command::new("qemu-img").args(args).output() {
        Ok(o) => Some(o),
        Err(e) => {
            eprintln!("skipped: qemu-img is not installed ({e}); `cargo xtask test` installs it");
            None
        }
    }
}

fn sha(path: &Path) -> u64 {
    fnv1a64(&std::fs::read(path).unwrap())
}

#[test]
fn a_qcow2_overlay_written_by_the_guest_checks_clean_and_spares_its_base() {
    let dir = scratch("qcow2");
    let base = dir.join("base.raw");
    let overlay = dir.join("overlay.qcow2");
    raw_disk(&base);
    let base_sum = sha(&base);
    let Some(o) = qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        base.to_str().unwrap(),
        "-F",
        "raw",
        overlay.to_str().unwrap(),
    ]) else {
        return;
    };
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let arg = overlay.display().to_string();
    let r = virtio("test=blk sector=1000 seed=9", &["--disk", &arg]);
    assert_ok(&r, &["blk: wrote and verified 8 sectors at 1000"]);

    let check = qemu_img(&["check", overlay.to_str().unwrap()]).unwrap();
    assert!(
        check.status.success(),
        "qemu-img check: {}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    let flat = dir.join("flat.raw");
    let conv = qemu_img(&[
        "convert",
        "-O",
        "raw",
        overlay.to_str().unwrap(),
        flat.to_str().unwrap(),
    ])
    .unwrap();
    assert!(conv.status.success());
    assert!(
        std::fs::read(&flat).unwrap() == expected_disk(1000, 9),
        "the overlay's contents differ"
    );
    assert_eq!(sha(&base), base_sum, "the base image changed");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_corrupt_image_is_refused_at_start_and_left_alone() {
    let dir = scratch("corrupt");
    let disk = dir.join("bad.qcow2");
    // A qcow2 magic and version, then garbage: a truncated header.
    let mut bytes = b"QFI\xfb\x00\x00\x00\x03".to_vec();
    bytes.extend_from_slice(&[0xee; 40]);
    std::fs::write(&disk, &bytes).unwrap();
    let arg = disk.display().to_string();
    let r = virtio("test=blk", &["--disk", &arg]);
    assert_eq!(r.status, Some(2), "stderr: {}", r.stderr);
    assert!(r.stderr.contains("bad.qcow2"), "stderr: {}", r.stderr);
    assert_eq!(std::fs::read(&disk).unwrap(), bytes);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn the_entropy_device_gives_distinct_random_bytes() {
    let r = virtio("test=rng", &["--rng"]);
    assert_ok(&r, &["rng: got 64 bytes, distinct"]);
}

#[test]
fn vsock_connects_the_guest_to_a_host_unix_socket() {
    let dir = scratch("vsock");
    let sock = dir.join("v.sock");
    let listener = UnixListener::bind(format!("{}_1234", sock.display())).unwrap();
    let server = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        let mut buf = [0u8; 16];
        conn.read_exact(&mut buf).unwrap();
        conn.write_all(b"hello from host").unwrap();
        buf
    });
    let arg = format!("cid=3,socket={}", sock.display());
    let r = virtio("test=vsock port=1234", &["--vsock", &arg]);
    assert_ok(
        &r,
        &[
            "vsock: guest cid 3",
            "vsock: connected to cid 2 port 1234",
            "vsock: received hello from host",
            "vsock: shutdown -> RST",
        ],
    );
    assert_eq!(&server.join().unwrap(), b"hello from guest");
    let _ = std::fs::remove_dir_all(dir);
}

/// An Ethernet broadcast of ethertype 0x88b5 with `payload`, behind a zero virtio-net header.
fn host_frame(payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8; 12];
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x99]);
    f.extend_from_slice(&[0x88, 0xb5]);
    f.extend_from_slice(payload);
    f.resize(12 + 60, 0);
    f
}

#[test]
fn a_guest_exchanges_frames_with_the_host_through_a_bridge() {
    // Everything happens in this thread's own network namespace.
    if !netns::enter_new_netns() {
        return;
    }
    netns::bridge("pbr0");
    let tap = net_host::Tap::open(Some("phost0")).unwrap();
    tap.set_vnet_hdr_size(12).unwrap();
    tap.set_nonblocking(true).unwrap();
    net_host::attach_to_bridge("phost0", "pbr0").unwrap();
    tap.up().unwrap();

    let kernel = Guest::Virtio.path().to_str().unwrap();
    let mut child = common::popek()
        .args(["run", "--kernel", kernel])
        .args(["--cmdline", "test=net nettag=7 timeout=60"])
        .args(["--net", "bridge=pbr0,mac=52:54:00:00:00:07"])
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut saw_guest = false;
    let mut buf = vec![0u8; 4096];
    while Instant::now() < deadline {
        let _ = tap.write(&host_frame(b"popek-host-frame"));
        while let Ok(n) = tap.read(&mut buf) {
            if n >= 12 + 14 && buf[12 + 12..12 + 14] == [0x88, 0xb5] {
                saw_guest |= buf[12 + 14..n].starts_with(b"popek-guest-frame 7");
            }
        }
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stdout.contains("net: mac 52:54:00:00:00:07"),
        "{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("net: received popek-host-frame"),
        "{stdout}\n{stderr}"
    );
    assert!(
        saw_guest,
        "the host never saw the guest's frame\n{stdout}\n{stderr}"
    );
}

#[test]
fn two_guests_on_one_bridge_exchange_frames() {
    if !netns::enter_new_netns() {
        return;
    }
    netns::bridge("pbr1");
    let kernel = Guest::Virtio.path().to_str().unwrap();
    // The echoing guest starts first, and the sender resends nothing: give the echoer time to
    // post its buffers by starting the sender after it printed its MAC.
    let echo = common::popek()
        .args(["run", "--kernel", kernel])
        .args(["--cmdline", "test=net-echo count=1 timeout=60"])
        .args(["--net", "bridge=pbr1"])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let r = {
        let out = common::popek()
            .args(["run", "--kernel", kernel])
            .args(["--cmdline", "test=net nettag=42 timeout=60"])
            .args(["--net", "bridge=pbr1"])
            .output()
            .unwrap();
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
            out.status.code(),
        )
    };
    let echo = echo.wait_with_output().unwrap();
    let echo_out = String::from_utf8_lossy(&echo.stdout);
    assert!(
        r.0.contains("net: received popek-guest-frame 42"),
        "sender:\n{}\n{}\necho:\n{echo_out}",
        r.0,
        r.1
    );
    assert!(
        echo_out.contains("net: echoed 1 frames"),
        "echo:\n{echo_out}"
    );
    assert_eq!(r.2, Some(0));
}

/// A host program on the VM's own tap (no bridge): a Python packet socket that sends frames to
/// the guest and reports the guest's. Python is on every CI machine; without it the test skips.
const PACKET_PEER: &str = r#"
import socket, sys, time
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x88b5))
s.bind((sys.argv[1], 0))
s.settimeout(0.1)
print("peer: ready", flush=True)
frame = b"\xff" * 6 + b"\x02\x00\x00\x00\x00\x99" + b"\x88\xb5" + b"popek-host-frame"
frame = frame.ljust(60, b"\0")
end = time.time() + 60
while time.time() < end:
    s.send(frame)
    try:
        got = s.recv(2048)
    except socket.timeout:
        continue
    if got[14:].startswith(b"popek-guest-frame 5"):
        print("peer: saw guest frame", flush=True)
        # Keep feeding the guest a little longer, then stop.
        for _ in range(20):
            s.send(frame)
            time.sleep(0.05)
        break
"#;

#[test]
fn a_guest_exchanges_frames_with_a_host_program_on_its_tap() {
    if !netns::enter_new_netns() {
        return;
    }
    if Command::new("python3")
        .arg("-c")
        .arg("pass")
        .status()
        .is_err()
    {
        eprintln!("skipped: python3 is not installed");
        return;
    }
    // A persistent tap that exists before popek starts, so the peer can bind to it; popek
    // attaches to it and leaves it in place.
    netns::ip(&["tuntap", "add", "ptap5", "mode", "tap"]);
    netns::ip(&["link", "set", "ptap5", "up"]);
    let mut peer = Command::new("python3")
        .args(["-c", PACKET_PEER, "ptap5"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The guest sends its frame once, early: start it only when the peer listens.
    let mut ready = [0u8; 12];
    peer.stdout
        .as_mut()
        .unwrap()
        .read_exact(&mut ready)
        .unwrap();
    assert_eq!(&ready, b"peer: ready\n");
    let kernel = Guest::Virtio.path().to_str().unwrap();
    let r = common::run(
        &[
            "run",
            "--kernel",
            kernel,
            "--cmdline",
            "test=net nettag=5 timeout=60",
            "--net",
            "tap=ptap5",
        ],
        Duration::from_secs(90),
    );
    let peer = peer.wait_with_output().unwrap();
    assert_ok(&r, &["net: sent frame", "net: received popek-host-frame"]);
    assert_eq!(
        String::from_utf8_lossy(&peer.stdout).trim(),
        "peer: saw guest frame"
    );
    // The user's tap is still there.
    netns::ip(&["link", "show", "ptap5"]);
}

#[test]
fn a_tap_popek_creates_is_gone_when_the_vm_ends() {
    if !netns::enter_new_netns() {
        return;
    }
    let kernel = Guest::Virtio.path().to_str().unwrap();
    let r = common::run(
        &["run", "--kernel", kernel, "--net", "tap=pnew0"],
        Duration::from_secs(60),
    );
    assert_eq!(r.status, Some(0), "{}", r.stderr);
    assert!(r.stdout.contains("virtio: 00:01.0 type 1"), "{}", r.stdout);
    let show = Command::new("ip")
        .args(["link", "show", "pnew0"])
        .output()
        .unwrap();
    assert!(!show.status.success(), "pnew0 outlived the VM");
}
