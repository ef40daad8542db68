//! `popek disk`: snapshots as qcow2 overlays, rollback, the chain listing, refusals that leave
//! everything as it was, and a guest writing to a disk that is then rolled back.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use block::{DiskImage, Format, OpenOptions};
use common::Run;
use guests::Guest;

const MIB: usize = 1 << 20;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("popek-disk-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn disk(args: &[&str]) -> Run {
    let mut all = vec!["disk"];
    all.extend_from_slice(args);
    common::run(&all, Duration::from_secs(60))
}

fn assert_ok(r: &Run) {
    assert_eq!(
        r.status,
        Some(0),
        "stdout:\n{}\nstderr:\n{}",
        r.stdout,
        r.stderr
    );
}

/// Exit status 2 with one line on stderr that contains `needle`.
fn assert_refused(r: &Run, needle: &str) {
    assert_eq!(
        r.status,
        Some(2),
        "stdout:\n{}\nstderr:\n{}",
        r.stdout,
        r.stderr
    );
    assert_eq!(
        r.stderr.trim_end().lines().count(),
        1,
        "stderr: {}",
        r.stderr
    );
    assert!(r.stderr.contains(needle), "{needle:?} not in: {}", r.stderr);
}

fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// Every file of `dir` and a hash of its contents: what "nothing changed" compares.
fn snapshot_dir(dir: &Path) -> BTreeMap<String, u64> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().into_string().unwrap(),
                fnv1a64(&std::fs::read(e.path()).unwrap()),
            )
        })
        .collect()
}

fn open(path: &Path) -> Box<dyn DiskImage> {
    block::open(path, &OpenOptions::default())
        .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()))
}

fn read_all(path: &Path) -> Vec<u8> {
    let mut image = open(path);
    let mut buf = vec![0u8; image.size() as usize];
    image.read_at(&mut buf, 0).unwrap();
    buf
}

/// Writes `data` at `offset` through `block::open` (the overlay) and into the model.
fn write(path: &Path, model: &mut [u8], offset: usize, data: &[u8]) {
    let mut image = open(path);
    image.write_at(data, offset as u64).unwrap();
    image.flush().unwrap();
    model[offset..offset + data.len()].copy_from_slice(data);
}

fn have_qemu_img() -> bool {
    let ok = Command::new("qemu-img")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("skipped the qemu-img checks: qemu-img is not installed (install qemu-utils)");
    }
    ok
}

fn qemu_img(args: &[&str]) -> String {
    let o = Command::new("qemu-img").args(args).output().unwrap();
    assert!(
        o.status.success(),
        "qemu-img {args:?}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// `qemu-img info --output=json` without white space.
fn info(path: &Path) -> String {
    qemu_img(&["info", "--output=json", s(path)])
        .split_whitespace()
        .collect()
}

/// The disk's bytes as `qemu-img convert -O raw` sees them.
fn convert(path: &Path) -> Vec<u8> {
    let out = path.with_extension("converted");
    qemu_img(&["convert", "-O", "raw", s(path), s(&out)]);
    let bytes = std::fs::read(&out).unwrap();
    std::fs::remove_file(&out).unwrap();
    bytes
}

/// A raw disk of `len` bytes with a recognisable pattern.
fn raw_disk(path: &Path, len: usize) -> Vec<u8> {
    let bytes: Vec<u8> = (0..len).map(|i| (i * 13 / 7) as u8).collect();
    std::fs::write(path, &bytes).unwrap();
    bytes
}

#[test]
fn snapshots_stack_and_rollback_brings_back_the_old_content() {
    let dir = scratch("flow");
    let d = dir.join("d.img");
    let monday = raw_disk(&d, 4 * MIB + 4096);
    let qemu = have_qemu_img();

    let r = disk(&["snapshot", s(&d), "mon"]);
    assert_ok(&r);
    let mon = dir.join("d.img.snap-mon");
    assert!(r.stdout.contains("d.img.snap-mon"), "{}", r.stdout);
    assert!(
        std::fs::read(&mon).unwrap() == monday,
        "the frozen file differs"
    );
    let mon_hash = fnv1a64(&monday);
    assert!(
        std::fs::metadata(&mon).unwrap().permissions().readonly(),
        "the frozen file is still writable"
    );
    assert_eq!(
        block::backing_file(&d).unwrap(),
        Some((mon.clone(), Some(Format::Raw)))
    );
    assert!(read_all(&d) == monday, "the overlay does not show Monday");
    if qemu {
        qemu_img(&["check", s(&d)]);
        let info = info(&d);
        for field in [
            "\"backing-filename\":\"d.img.snap-mon\"",
            "\"backing-filename-format\":\"raw\"",
            &format!("\"virtual-size\":{},", monday.len()),
        ] {
            assert!(info.contains(field), "{field} not in {info}");
        }
    }

    // Monday's work, then Tuesday's snapshot.
    let mut tuesday = monday.clone();
    write(&d, &mut tuesday, 1000, &[0xaa; 70_000]);
    write(&d, &mut tuesday, 3 * MIB + 5, b"tuesday");
    assert_ok(&disk(&["snapshot", s(&d), "tue"]));
    let tue = dir.join("d.img.snap-tue");
    let tue_hash = fnv1a64(&std::fs::read(&tue).unwrap());
    assert_eq!(
        block::backing_file(&tue).unwrap(),
        Some((mon.clone(), Some(Format::Raw)))
    );
    assert_eq!(
        block::backing_file(&d).unwrap(),
        Some((tue.clone(), Some(Format::Qcow2)))
    );
    if qemu {
        qemu_img(&["check", s(&tue)]);
        qemu_img(&["check", s(&d)]);
        assert!(info(&d).contains("\"backing-filename-format\":\"qcow2\""));
    }

    let mut wednesday = tuesday.clone();
    write(&d, &mut wednesday, 0, b"wednesday");
    write(&d, &mut wednesday, 2 * MIB, &[0x55; 4096]);
    assert!(read_all(&d) == wednesday);
    // The frozen files were not written through the overlay.
    assert_eq!(fnv1a64(&std::fs::read(&tue).unwrap()), tue_hash);
    assert_eq!(fnv1a64(&std::fs::read(&mon).unwrap()), mon_hash);

    let r = disk(&["list", s(&d)]);
    assert_ok(&r);
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{}", r.stdout);
    assert!(lines[0].starts_with("SNAPSHOT"), "{}", r.stdout);
    assert!(lines[1].starts_with("(current)") && lines[1].contains("qcow2"));
    assert!(lines[2].starts_with("tue ") && lines[2].contains("d.img.snap-tue"));
    assert!(lines[3].starts_with("mon ") && lines[3].contains("raw"));
    assert!(
        lines[3].contains("4.0 MiB") && lines[3].contains("UTC"),
        "{}",
        r.stdout
    );

    // Going back past a newer snapshot deletes it: refused without --force.
    let before = snapshot_dir(&dir);
    assert_refused(&disk(&["rollback", s(&d), "mon"]), "--force");
    assert_eq!(
        snapshot_dir(&dir),
        before,
        "a refused rollback changed files"
    );

    let r = disk(&["rollback", s(&d), "mon", "--force"]);
    assert_ok(&r);
    assert!(r.stdout.contains("Deleted snapshot tue"), "{}", r.stdout);
    assert!(!tue.exists(), "the newer snapshot is still there");
    assert!(
        read_all(&d) == monday,
        "the rolled-back disk does not show Monday"
    );
    assert_eq!(fnv1a64(&std::fs::read(&mon).unwrap()), mon_hash);
    assert_eq!(
        block::backing_file(&d).unwrap(),
        Some((mon.clone(), Some(Format::Raw)))
    );
    if qemu {
        qemu_img(&["check", s(&d)]);
        assert!(convert(&d) == monday, "qemu-img sees other bytes");
    }

    // Again: a rollback to the latest snapshot discards only what followed it.
    let mut thursday = monday.clone();
    write(&d, &mut thursday, 5, b"thursday");
    assert_ok(&disk(&["snapshot", s(&d), "thu"]));
    let thu = dir.join("d.img.snap-thu");
    let thu_hash = fnv1a64(&std::fs::read(&thu).unwrap());
    let mut friday = thursday.clone();
    write(&d, &mut friday, 4 * MIB, &[1; 4096]);
    assert_ok(&disk(&["rollback", s(&d), "thu"]));
    assert!(read_all(&d) == thursday);
    assert_eq!(fnv1a64(&std::fs::read(&thu).unwrap()), thu_hash);
    assert_eq!(fnv1a64(&std::fs::read(&mon).unwrap()), mon_hash);
    assert_ok(&disk(&["rollback", s(&d), "mon", "--force"]));
    assert!(read_all(&d) == monday);
    assert!(!thu.exists());
    let names: Vec<String> = snapshot_dir(&dir).into_keys().collect();
    assert_eq!(names, ["d.img", "d.img.snap-mon"], "stray files");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_qcow2_disk_is_frozen_as_qcow2() {
    let dir = scratch("qcow2");
    let base = dir.join("base.raw");
    let content = raw_disk(&base, 2 * MIB);
    // A qcow2 disk that is itself an overlay: the chain below it is kept.
    let d = dir.join("vm.qcow2");
    block::create_qcow2(
        &d,
        content.len() as u64,
        Some((Path::new("base.raw"), Format::Raw)),
    )
    .unwrap();
    let mut v1 = content.clone();
    write(&d, &mut v1, 100, b"first version");
    let d_hash = fnv1a64(&std::fs::read(&d).unwrap());

    assert_ok(&disk(&["snapshot", s(&d), "v1"]));
    let v1_file = dir.join("vm.qcow2.snap-v1");
    assert_eq!(fnv1a64(&std::fs::read(&v1_file).unwrap()), d_hash);
    assert_eq!(
        block::backing_file(&d).unwrap(),
        Some((v1_file.clone(), Some(Format::Qcow2)))
    );
    let mut v2 = v1.clone();
    write(&d, &mut v2, 1_000_000, b"second version");
    assert!(read_all(&d) == v2);

    let r = disk(&["list", s(&d)]);
    assert_ok(&r);
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{}", r.stdout);
    assert!(lines[2].starts_with("v1 "), "{}", r.stdout);
    assert!(lines[3].starts_with("(base)") && lines[3].contains("base.raw"));

    assert_ok(&disk(&["rollback", s(&d), "v1"]));
    assert!(read_all(&d) == v1);
    assert_eq!(fnv1a64(&std::fs::read(&v1_file).unwrap()), d_hash);
    if have_qemu_img() {
        qemu_img(&["check", s(&d)]);
        qemu_img(&["check", s(&v1_file)]);
        assert!(convert(&d) == v1);
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn bad_input_is_refused_with_one_line_and_nothing_changes() {
    let dir = scratch("refuse");
    let d = dir.join("d.img");
    raw_disk(&d, MIB);
    let other = dir.join("other.img");
    raw_disk(&other, MIB);
    let bad = dir.join("bad.qcow2");
    let mut bytes = b"QFI\xfb\x00\x00\x00\x03".to_vec();
    bytes.extend_from_slice(&[0xee; 200]);
    std::fs::write(&bad, &bytes).unwrap();
    let missing = dir.join("missing.img");
    let before = snapshot_dir(&dir);

    assert_refused(&disk(&["snapshot", s(&missing), "x"]), "missing.img");
    assert_refused(&disk(&["snapshot", s(&d), ""]), "empty");
    assert_refused(&disk(&["snapshot", s(&d), "a/b"]), "'/'");
    assert_refused(&disk(&["snapshot", s(&bad), "x"]), "bad.qcow2");
    assert_refused(&disk(&["snapshot", s(&dir), "x"]), "not a regular file");
    assert_refused(&disk(&["rollback", s(&d), "x"]), "has no snapshot x");
    assert_refused(&disk(&["rollback", s(&missing), "x"]), "missing.img");
    assert_refused(&disk(&["rollback", s(&d), "../x"]), "'/'");
    assert_refused(&disk(&["list", s(&missing)]), "missing.img");
    assert_refused(&disk(&["list", s(&bad)]), "bad.qcow2");
    // A file with a snapshot's name that is not in the disk's chain.
    std::fs::copy(&other, dir.join("d.img.snap-old")).unwrap();
    let before_old = snapshot_dir(&dir);
    assert_refused(
        &disk(&["rollback", s(&d), "old"]),
        "is not in the backing chain",
    );
    assert_refused(&disk(&["snapshot", s(&d), "old"]), "exists already");
    let r = disk(&["list", s(&d)]);
    assert_ok(&r);
    assert!(
        r.stdout.contains("Not in the chain: snapshot old"),
        "{}",
        r.stdout
    );
    assert_eq!(snapshot_dir(&dir), before_old, "a refusal changed files");
    std::fs::remove_file(dir.join("d.img.snap-old")).unwrap();
    assert_eq!(snapshot_dir(&dir), before);

    // A disk some process has open (a running VM) is not touched.
    let held = std::fs::File::open(&d).unwrap();
    let r = disk(&["snapshot", s(&d), "x"]);
    assert_refused(&r, &format!("process {}", std::process::id()));
    drop(held);
    assert_eq!(snapshot_dir(&dir), before, "a refusal changed files");

    // A snapshot file is frozen: snapshotting it would change what the disk reads.
    assert_ok(&disk(&["snapshot", s(&d), "one"]));
    let before = snapshot_dir(&dir);
    assert_refused(
        &disk(&["snapshot", s(&dir.join("d.img.snap-one")), "x"]),
        "is a snapshot of d.img",
    );
    // An overlay the disk's chain passes through that is not one of its snapshots.
    let foreign = dir.join("foreign.qcow2");
    block::create_qcow2(
        &foreign,
        MIB as u64,
        Some((Path::new("d.img.snap-one"), Format::Raw)),
    )
    .unwrap();
    let top = dir.join("top.qcow2");
    block::create_qcow2(
        &top,
        MIB as u64,
        Some((Path::new("foreign.qcow2"), Format::Qcow2)),
    )
    .unwrap();
    std::fs::hard_link(dir.join("d.img.snap-one"), dir.join("top.qcow2.snap-one")).unwrap();
    let before_foreign = snapshot_dir(&dir);
    assert_refused(
        &disk(&["rollback", s(&top), "one", "--force"]),
        "not one of its snapshots",
    );
    assert_eq!(snapshot_dir(&dir), before_foreign);
    for name in ["foreign.qcow2", "top.qcow2", "top.qcow2.snap-one"] {
        std::fs::remove_file(dir.join(name)).unwrap();
    }
    assert_eq!(snapshot_dir(&dir), before);
    let _ = std::fs::remove_dir_all(dir);
}

/// The `blk` test's pattern byte (guests/README.md).
fn pattern(sector: usize, i: usize, seed: usize) -> u8 {
    ((sector * 31 + i * 7 + seed) & 0xff) as u8
}

#[test]
fn a_guests_writes_after_a_snapshot_are_rolled_back() {
    if !have_qemu_img() {
        return;
    }
    let dir = scratch("guest");
    let d = dir.join("d.img");
    let original = vec![0x5au8; MIB];
    std::fs::write(&d, &original).unwrap();
    assert_ok(&disk(&["snapshot", s(&d), "clean"]));
    let clean = dir.join("d.img.snap-clean");
    let clean_hash = fnv1a64(&std::fs::read(&clean).unwrap());

    // The guest finds a qcow2 overlay (probed) and writes 8 sectors at sector 8.
    let kernel = Guest::Virtio.path().to_str().unwrap();
    let r = common::run(
        &[
            "run",
            "--kernel",
            kernel,
            "--cmdline",
            "test=blk sector=8 seed=2",
            "--disk",
            s(&d),
        ],
        Duration::from_secs(120),
    );
    assert!(
        r.status == Some(0) && r.stdout.contains("blk: wrote and verified 8 sectors at 8"),
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        r.status,
        r.stdout,
        r.stderr
    );
    let mut expected = original.clone();
    for sector in 8..16 {
        for i in 0..512 {
            expected[sector * 512 + i] = pattern(sector, i, 2);
        }
    }
    qemu_img(&["check", s(&d)]);
    assert!(
        convert(&d) == expected,
        "the overlay lacks the guest's writes"
    );
    assert_eq!(
        fnv1a64(&std::fs::read(&clean).unwrap()),
        clean_hash,
        "the guest wrote into the snapshot"
    );

    assert_ok(&disk(&["rollback", s(&d), "clean"]));
    qemu_img(&["check", s(&d)]);
    assert!(
        convert(&d) == original,
        "the guest's writes survived the rollback"
    );
    assert!(read_all(&d) == original);
    assert_eq!(fnv1a64(&std::fs::read(&clean).unwrap()), clean_hash);
    let _ = std::fs::remove_dir_all(dir);
}
