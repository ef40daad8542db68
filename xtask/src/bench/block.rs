//! `cargo xtask bench block`: the host-side cost of popek's virtio-blk device, with QEMU's block
//! layer (`qemu-img bench`) as the peer, on the same image file and the same requests.
//!
//! popek: a driver written by hand puts requests in a split queue in guest memory (one chain per
//! request: the 16-byte header, the data, the status byte) and calls the device worker's
//! `handle`, as the device thread does when the driver notifies the queue; every status byte
//! must come back 0. The time is the worker's alone: parsing the chains, the image I/O and the
//! copies between the image and guest memory. QEMU: `qemu-img bench` with the same request size,
//! count, offsets and depth; its time is its block layer only (no virtio), so the ratio is
//! conservative for popek.
//!
//! Depth N: popek serves N chains per notification (a driver under load); qemu-img keeps N
//! requests in flight on its thread pool.
//!
//! `cargo xtask bench block CASE` runs only the cases whose name contains CASE (`raw_seq1m`,
//! `rand4k_write_d1`). The images go to a tmpfs when there is one ([`scratch`] says why);
//! `BENCH_BLOCK_DIR` puts them elsewhere.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use block::{Format, OpenOptions};
use devices::virtio::block::Block;
use devices::virtio::test_queue::TestQueue;
use devices::virtio::{Activation, GuestMemory, VirtioDevice, VirtioInterrupt};
use vm_memory::{Bytes, GuestAddress};

use super::{figure, median};

/// Runs of each case under each side; the median counts.
const RUNS: usize = 5;
const IMAGE_SIZE: u64 = 256 << 20;
const MEMORY_SIZE: usize = 64 << 20;
/// Every byte of the images, and of every write.
const PATTERN: u8 = 0xa5;
const DEPTHS: [usize; 2] = [1, 32];
const FORMATS: [Format; 2] = [Format::Raw, Format::Qcow2];

/// Guest memory layout: the queue's rings, the headers, the status bytes, the data buffers.
const QUEUE: u64 = 0;
const QUEUE_SIZE: u16 = 256;
const HEADERS: u64 = 0x1_0000;
const STATUSES: u64 = 0x1_1000;
const DATA: u64 = 0x10_0000;

const SECTOR: u64 = 512;
const HEADER_LEN: u64 = 16;
const T_IN: u32 = 0;
const T_OUT: u32 = 1;

/// One I/O pattern, in qemu-img bench's terms: `count` requests of `size` bytes, the first at
/// offset 0 and each next one `step` bytes further, wrapped within the image.
struct Pattern {
    name: &'static str,
    size: u64,
    step: u64,
    count: u64,
    write: bool,
}

/// 7919 (a prime) 4 KiB blocks: scattered offsets that visit every 4 KiB block of the image
/// before any repeats.
const SCATTER: u64 = 7919 * 4096;

const PATTERNS: [Pattern; 4] = [
    Pattern {
        name: "rand4k_read",
        size: 4096,
        step: SCATTER,
        count: 50_000,
        write: false,
    },
    Pattern {
        name: "rand4k_write",
        size: 4096,
        step: SCATTER,
        count: 50_000,
        write: true,
    },
    Pattern {
        name: "seq1m_read",
        size: 1 << 20,
        step: 1 << 20,
        count: 2048,
        write: false,
    },
    Pattern {
        name: "seq1m_write",
        size: 1 << 20,
        step: 1 << 20,
        count: 2048,
        write: true,
    },
];

impl Pattern {
    /// The offsets qemu-img bench uses. It wraps each next offset modulo the image size; QEMU
    /// 10.1 and later modulo the image size less the request size (so a wrapped request never
    /// ends past the end). `usable_wrap` picks the second rule.
    fn offsets(&self, usable_wrap: bool) -> impl Iterator<Item = u64> + use<> {
        let modulus = if usable_wrap {
            IMAGE_SIZE - self.size
        } else {
            IMAGE_SIZE
        };
        let step = self.step;
        std::iter::successors(Some(0u64), move |o| Some((o + step) % modulus))
            .take(self.count as usize)
    }

    fn mib(&self) -> f64 {
        self.size as f64 / f64::from(1u32 << 20)
    }
}

/// The driver needs no interrupts: it looks at the used ring after each notification.
struct NoInterrupt;

impl VirtioInterrupt for NoInterrupt {
    fn signal_queue(&self, _queue: u16) {}
    fn signal_config(&self) {}
}

/// One run under popek: opens the image, activates a fresh device on it, submits the pattern in
/// batches of `depth` chains and returns the time spent in the device worker.
fn popek_run(
    mem: &GuestMemory,
    path: &Path,
    format: Format,
    p: &Pattern,
    depth: usize,
    usable_wrap: bool,
) -> anyhow::Result<Duration> {
    let opts = OpenOptions {
        format: Some(format),
        read_only: false,
    };
    let image = block::open(path, &opts).with_context(|| format!("opening {}", path.display()))?;
    let mut block = Block::new(image);
    // A fresh queue: clear the rings of the previous run.
    mem.write_slice(&[0u8; 0x3000], GuestAddress(QUEUE))?;
    let mut q = TestQueue::new(QUEUE, QUEUE_SIZE);
    let mut worker = block.activate(Activation {
        mem: mem.clone(),
        features: block.features(),
        queues: vec![q.active(mem)],
        interrupt: Arc::new(NoInterrupt),
    })?;
    // The data buffers: what to write, or zeroes that reads must overwrite.
    let data_len = depth * p.size as usize;
    let fill = if p.write { PATTERN } else { 0 };
    mem.write_slice(&vec![fill; data_len], GuestAddress(DATA))?;

    let kind = if p.write { T_OUT } else { T_IN };
    let mut offsets = p.offsets(usable_wrap);
    let mut statuses = vec![0u8; depth];
    let mut used: u16 = 0;
    let mut left = p.count;
    let mut busy = Duration::ZERO;
    while left > 0 {
        let n = depth.min(left as usize);
        for i in 0..n as u64 {
            let offset = offsets.next().context("offsets ran out")?;
            if offset + p.size > IMAGE_SIZE {
                bail!("request at {offset} ends past the image");
            }
            let mut header = [0u8; HEADER_LEN as usize];
            header[0..4].copy_from_slice(&kind.to_le_bytes());
            header[8..16].copy_from_slice(&(offset / SECTOR).to_le_bytes());
            let at = HEADERS + i * HEADER_LEN;
            mem.write_slice(&header, GuestAddress(at))?;
            mem.write_obj(0xffu8, GuestAddress(STATUSES + i))?;
            q.add(
                mem,
                &[
                    (at, HEADER_LEN as u32, false),
                    (DATA + i * p.size, p.size as u32, !p.write),
                    (STATUSES + i, 1, true),
                ],
            );
        }
        let start = Instant::now();
        worker.handle(0);
        busy += start.elapsed();
        used = used.wrapping_add(n as u16);
        let got = q.used_idx(mem);
        if got != used {
            bail!(
                "popek {}: the used ring is at {got}, {used} expected",
                p.name
            );
        }
        mem.read_slice(&mut statuses[..n], GuestAddress(STATUSES))?;
        if let Some(s) = statuses[..n].iter().find(|&&s| s != 0) {
            bail!("popek {}: a request completed with status {s}", p.name);
        }
        left -= n as u64;
    }
    if !p.write {
        let mut data = vec![0u8; data_len.min(p.count as usize * p.size as usize)];
        mem.read_slice(&mut data, GuestAddress(DATA))?;
        if data.iter().any(|&b| b != PATTERN) {
            bail!("popek {}: reads did not return the image's data", p.name);
        }
    }
    Ok(busy)
}

/// One run under `qemu-img bench`, as it reports it (from its first request to its last
/// completion, without opening the image).
fn qemu_run(path: &Path, format: Format, p: &Pattern, depth: usize) -> anyhow::Result<Duration> {
    let mut c = Command::new("qemu-img");
    c.arg("bench")
        .args([
            "-f",
            &format.to_string(),
            "-t",
            "writeback",
            "-i",
            "threads",
        ])
        .args(["-c", &p.count.to_string(), "-d", &depth.to_string()])
        .args([
            "-s",
            &p.size.to_string(),
            "-S",
            &p.step.to_string(),
            "-o",
            "0",
        ]);
    if p.write {
        c.args(["-w", &format!("--pattern={PATTERN}")]);
    }
    c.arg(path);
    let out = c.output().context("cannot run qemu-img bench")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let rw = if p.write { "write" } else { "read" };
    let sending = format!(
        "Sending {} {rw} requests, {} bytes each, {depth} in parallel",
        p.count, p.size
    );
    if !out.status.success() || !stdout.contains(&sending) {
        bail!(
            "qemu-img bench {} failed ({}): {stdout}{}",
            p.name,
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let secs: f64 = stdout
        .lines()
        .find_map(|l| {
            l.strip_prefix("Run completed in ")?
                .strip_suffix(" seconds.")
        })
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no time in qemu-img bench's output: {stdout}"))?;
    Ok(Duration::from_secs_f64(secs))
}

/// Whether this qemu-img wraps bench offsets within the image less the request size (QEMU 10.1
/// and later) rather than within the image.
fn qemu_usable_wrap() -> anyhow::Result<bool> {
    let out = Command::new("qemu-img")
        .arg("--version")
        .output()
        .context("cannot run qemu-img")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text
        .split_whitespace()
        .nth(2)
        .with_context(|| format!("cannot read qemu-img's version in {text:?}"))?;
    let mut parts = version.split('.').map(|n| n.parse::<u32>().unwrap_or(0));
    let major = parts.next().unwrap_or(0);
    let minor = parts.next().unwrap_or(0);
    Ok((major, minor) >= (10, 1))
}

fn sync(path: &Path) -> anyhow::Result<()> {
    File::open(path)
        .and_then(|f| f.sync_data())
        .with_context(|| format!("cannot sync {}", path.display()))
}

fn qemu_img(args: &[&str], path: &Path) -> anyhow::Result<String> {
    let out = Command::new("qemu-img")
        .args(args)
        .arg(path)
        .output()
        .context("cannot run qemu-img")?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "qemu-img {args:?} failed ({}): {stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(stdout)
}

/// The images' directory, removed with everything in it when dropped.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Where the images go: `$BENCH_BLOCK_DIR` if set, else /dev/shm when it is a tmpfs with room,
/// else the target directory.
///
/// On a disk file system the host kernel's own cost swamps the devices': with ext4's large
/// folios (Linux 6.x) every 4 KiB buffered write walks the buffer heads of its whole folio, and
/// that cost changes from run to run with how the folios were last built (seen here: 4 KiB
/// writes from 25 to 150 thousand per second, for popek and QEMU alike). tmpfs keeps the host's
/// share small and steady, so what differs is the VMMs.
fn scratch() -> anyhow::Result<Scratch> {
    let parent = if let Some(dir) = std::env::var_os("BENCH_BLOCK_DIR") {
        PathBuf::from(dir)
    } else if tmpfs_room(Path::new("/dev/shm")) >= 4 * IMAGE_SIZE {
        PathBuf::from("/dev/shm")
    } else {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .context("no workspace root")?;
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from)
    };
    let dir = parent.join(format!("popek-bench-block-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(Scratch(dir))
}

/// The bytes free in `dir` if it is a tmpfs, else 0.
fn tmpfs_room(dir: &Path) -> u64 {
    const TMPFS_MAGIC: libc::c_long = 0x0102_1994;
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()) else {
        return 0;
    };
    // SAFETY: an all-zero statfs is a valid value for statfs to overwrite.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path and `st` is valid for writes.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 || st.f_type != TMPFS_MAGIC {
        return 0;
    }
    (st.f_bavail as u64).saturating_mul(st.f_bsize as u64)
}

/// A raw image full of `PATTERN`.
fn raw_image(path: &Path) -> anyhow::Result<()> {
    let mut f = File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let chunk = vec![PATTERN; 1 << 20];
    for _ in 0..IMAGE_SIZE >> 20 {
        f.write_all(&chunk)?;
    }
    f.sync_data()?;
    Ok(())
}

/// A qcow2 image from `qemu-img create`, every cluster then allocated by writing `PATTERN` all
/// over it, so that the runs find it in its steady state (no allocation).
fn qcow2_image(path: &Path) -> anyhow::Result<()> {
    let out = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(path)
        .arg(IMAGE_SIZE.to_string())
        .output()
        .context("cannot run qemu-img create")?;
    if !out.status.success() {
        bail!(
            "qemu-img create failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let count = (IMAGE_SIZE >> 20).to_string();
    let pattern = format!("--pattern={PATTERN}");
    let args = [
        "bench",
        "-q",
        "-w",
        &pattern,
        "-f",
        "qcow2",
        "-t",
        "writeback",
        "-c",
        &count,
        "-d",
        "32",
        "-s",
        "1M",
    ];
    qemu_img(&args, path)?;
    let check = qemu_img(&["check", "-f", "qcow2"], path)?;
    if !check.contains("100.00% allocated") {
        bail!("the qcow2 image is not fully allocated: {check}");
    }
    sync(path)
}

/// The medians of one case.
struct Row {
    format: Format,
    pattern: &'static Pattern,
    depth: usize,
    popek: Duration,
    qemu: Duration,
}

impl Row {
    fn metric(&self) -> String {
        format!("{}_{}_d{}", self.format, self.pattern.name, self.depth)
    }

    fn rate(&self, d: Duration) -> f64 {
        self.pattern.count as f64 / d.as_secs_f64()
    }

    fn print(&self) {
        let (p, q) = (self.rate(self.popek), self.rate(self.qemu));
        let mib = self.pattern.mib();
        println!(
            "  {:<24} {:>11.0} {:>9.1} {:>11.0} {:>9.1} {:>8.2}",
            self.metric(),
            p,
            p * mib,
            q,
            q * mib,
            p / q
        );
    }

    fn figures(&self) {
        let (p, q) = (self.rate(self.popek), self.rate(self.qemu));
        let name = self.metric();
        // The 1 MiB cases in MiB/s (the same number as requests/s), the 4 KiB ones in req/s.
        let (scale, unit) = if self.pattern.size >= 1 << 20 {
            (self.pattern.mib(), "MiB/s")
        } else {
            (1.0, "req/s")
        };
        figure("block", &format!("{name}_popek"), p * scale, unit);
        figure("block", &format!("{name}_qemu"), q * scale, unit);
        figure("block", &format!("{name}_ratio"), p / q, "ratio");
    }
}

/// Runs every case, or those whose name contains `only`.
pub fn run(only: Option<&str>) -> anyhow::Result<()> {
    crate::host::ensure_package("qemu-img", "qemu-utils")?;
    let usable_wrap = qemu_usable_wrap()?;
    let dir = scratch()?;
    let raw = dir.0.join("disk.raw");
    let qcow2 = dir.0.join("disk.qcow2");
    raw_image(&raw)?;
    qcow2_image(&qcow2)?;
    let mem = GuestMemory::from_ranges(&[(GuestAddress(0), MEMORY_SIZE)])
        .context("cannot map guest memory")?;

    println!(
        "block: virtio-blk requests on {} MiB images in {} (host page cache, writeback), median \
         of {RUNS} runs",
        IMAGE_SIZE >> 20,
        dir.0.parent().unwrap_or(&dir.0).display()
    );
    println!(
        "  popek: the device worker serving chains from a split queue in guest memory (virtio \
         parsing and copies into guest memory included)"
    );
    println!(
        "  qemu:  qemu-img bench -i threads -t writeback (its block layer only, no virtio), so \
         the ratio is conservative for popek"
    );
    println!(
        "  qcow2: made by qemu-img create, then fully allocated by a 1 MiB write pass: steady \
         state, no allocation during the runs"
    );
    println!(
        "  rand4k: 4 KiB at offsets {} KiB apart, wrapped; seq1m: 1 MiB sequential; d1: one \
         request per notification, d32: 32 per notification (qemu-img: 32 in flight)",
        SCATTER >> 10
    );
    println!(
        "  {:<24} {:>11} {:>9} {:>11} {:>9} {:>8}",
        "case", "popek req/s", "MiB/s", "qemu req/s", "MiB/s", "popek/qemu"
    );
    let mut rows = Vec::new();
    for format in FORMATS {
        let path = match format {
            Format::Raw => &raw,
            Format::Qcow2 => &qcow2,
        };
        for pattern in &PATTERNS {
            for depth in DEPTHS {
                let name = format!("{format}_{}_d{depth}", pattern.name);
                if only.is_some_and(|only| !name.contains(only)) {
                    continue;
                }
                let mut ours = Vec::with_capacity(RUNS);
                let mut theirs = Vec::with_capacity(RUNS);
                // Alternate, so that a slow patch of the host hits both sides.
                for _ in 0..RUNS {
                    ours.push(popek_run(&mem, path, format, pattern, depth, usable_wrap)?);
                    if pattern.write {
                        sync(path)?;
                    }
                    theirs.push(qemu_run(path, format, pattern, depth)?);
                    if pattern.write {
                        sync(path)?;
                    }
                }
                let row = Row {
                    format,
                    pattern,
                    depth,
                    popek: median(&mut ours),
                    qemu: median(&mut theirs),
                };
                row.print();
                rows.push(row);
            }
        }
    }
    if rows.is_empty() {
        bail!("no case's name contains {:?}", only.unwrap_or_default());
    }
    // popek wrote the qcow2 image too: QEMU must still find it consistent.
    let check = qemu_img(&["check", "-f", "qcow2"], &qcow2)?;
    if !check.contains("No errors were found") {
        bail!("qemu-img check finds errors in the qcow2 image after the runs: {check}");
    }
    println!("  qemu-img check: the qcow2 image is consistent after popek's and QEMU's writes");
    for row in &rows {
        row.figures();
    }
    Ok(())
}
