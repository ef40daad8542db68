//! Helpers for the integration tests: scratch directories, `qemu-img`, a fixed-seed generator.

#![allow(dead_code, missing_docs)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use block::{DiskImage, Format, OpenOptions};

/// Returns from the test, saying why, when `qemu-img` is not installed.
#[macro_export]
macro_rules! require_qemu_img {
    () => {
        if !common::have_qemu_img() {
            eprintln!("skipping: qemu-img not found (install qemu-utils)");
            return;
        }
    };
}

pub fn have_qemu_img() -> bool {
    Command::new("qemu-img")
        .arg("--version")
        .output()
        .is_ok_and(|out| out.status.success())
}

/// A directory under the system's temporary directory, removed when dropped.
pub struct Scratch {
    dir: PathBuf,
}

impl Scratch {
    pub fn new(name: &str) -> Self {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let unique = format!(
            "popek-block-{name}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let dir = std::env::temp_dir().join(unique);
        std::fs::create_dir_all(&dir).unwrap();
        Self { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs `qemu-img` with `args` and returns its standard output; panics if it fails.
pub fn qemu_img(args: &[&str]) -> String {
    let out = Command::new("qemu-img")
        .args(args)
        .output()
        .expect("running qemu-img");
    assert!(
        out.status.success(),
        "qemu-img {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// `qemu-img create -f qcow2` with extra `-o` options (may be empty).
pub fn create_qcow2(path: &Path, size: &str, options: &str) {
    let mut args = vec!["create", "-q", "-f", "qcow2"];
    if !options.is_empty() {
        args.extend(["-o", options]);
    }
    args.extend([s(path), size]);
    qemu_img(&args);
}

/// `qemu-img create -f qcow2 -b backing -F backing_format overlay`.
pub fn create_overlay(path: &Path, backing: &Path, backing_format: &str) {
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        s(backing),
        "-F",
        backing_format,
        s(path),
    ]);
}

/// Asserts that `qemu-img check` finds neither errors nor leaks.
pub fn assert_check_clean(path: &Path) {
    let out = Command::new("qemu-img")
        .args(["check", s(path)])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "qemu-img check {} (status {:?}): {}{}",
        path.display(),
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The disk's bytes, as `qemu-img convert -O raw` sees them.
pub fn convert_to_raw(scratch: &Scratch, path: &Path) -> Vec<u8> {
    let out = scratch.path("converted.raw");
    qemu_img(&["convert", "-O", "raw", s(path), s(&out)]);
    let bytes = std::fs::read(&out).unwrap();
    std::fs::remove_file(&out).unwrap();
    bytes
}

pub fn open(path: &Path, format: Option<Format>, read_only: bool) -> Box<dyn DiskImage> {
    block::open(path, &OpenOptions { format, read_only })
        .unwrap_or_else(|e| panic!("opening {}: {}", path.display(), chain(&e)))
}

/// An error and its sources, one per line.
pub fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text += &format!("\n  caused by: {e}");
        source = e.source();
    }
    text
}

/// Reads the whole disk through `image`.
pub fn read_all(image: &mut dyn DiskImage) -> Vec<u8> {
    let mut buf = vec![0u8; image.size() as usize];
    image.read_at(&mut buf, 0).unwrap();
    buf
}

/// splitmix64: a fixed-seed generator, so a failure can be replayed.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

/// Writes `data` at `offset` both through `image` and into the model `expected`.
pub fn write_both(image: &mut dyn DiskImage, expected: &mut [u8], offset: u64, data: &[u8]) {
    image
        .write_at(data, offset)
        .unwrap_or_else(|e| panic!("write of {} at {offset}: {}", data.len(), chain(&e)));
    expected[offset as usize..offset as usize + data.len()].copy_from_slice(data);
}

/// A raw file of `len` bytes from `rng`.
pub fn random_raw(path: &Path, len: usize, rng: &mut Rng) -> Vec<u8> {
    let bytes = rng.bytes(len);
    std::fs::write(path, &bytes).unwrap();
    bytes
}
