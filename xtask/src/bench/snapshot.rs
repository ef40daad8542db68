//! `cargo xtask bench snapshot`: how long popek takes to write a snapshot of a paused VM and to
//! bring it back to a running guest, what the files cost on disk, and what N clones restored at
//! once from one snapshot cost in memory, with QEMU's migration to a file as the peer.
//!
//! The guest is `counter` with `touch=M every=1 verify=1`: it dirties M MiB (most of its RAM)
//! before its first line, prints a line every tick (10 ms) and re-reads 4 of the touched pages
//! before each line, so a restored guest's next line shows it runs on and that its touched
//! memory came back. Two cases: 128 MiB of RAM with 100 MiB touched, 1 GiB with 900 MiB.
//!
//! 1. Snapshot: the VM runs, prints a new line, is paused, and the time from sending
//!    `POST /vm/snapshot` to its reply is taken (also the `duration_ms` popek reports), median
//!    of several runs; the sizes of `memory` (apparent and allocated) and of `state.json`.
//!    popek writes the non-zero pages of a sparse file and fsyncs it.
//! 2. Restore: from exec of `popek restore DIR --serial file:F --api-socket S` to the first
//!    complete `counter: count=` line in F (the file polled every 200 us), and to the first
//!    `GET /vm` (polled every ms) that says `running`. The next line comes at the guest's next
//!    tick, so up to 10 ms of guest time is in that figure, alike for both VMMs.
//! 3. Clones: N restores (no API) of the 128 MiB snapshot spawned at once; the time until each
//!    printed a line (the last one counts), then, 500 ms later, the PSS and RSS of each from
//!    `/proc/PID/smaps_rollup`, summed, against N x guest RAM. popek maps the memory file
//!    privately and lazily: a clone's PSS is what its guest has touched since the restore (here
//!    a few pages) plus its share of the pages the clones read in common.
//!
//! The peer: QEMU (`-M microvm`, KVM) booting the same guest with the same command line. Snapshot:
//! `stop`, then `migrate "exec:cat > FILE"` (QEMU 7.2 has no `file:` URI) with `max-bandwidth`
//! raised from its default throttle to unlimited, until the MIGRATION event says `completed`
//! (QEMU's own `total-time` too). QEMU does not fsync: the time to fsync its file afterwards is
//! shown apart, and a second ratio compares popek with QEMU + fsync. Restore:
//! `-incoming "exec:cat FILE"`, `query-status` over QMP every ms until the stream is loaded
//! (`paused`), `cont`, then the same next line. Its clones read the whole file into memory of
//! their own, so their PSS is about the touched RAM each.
//!
//! Snapshots go to the temporary directory (`TMPDIR`, else /tmp): on a disk, fsync costs time;
//! on a tmpfs it costs none.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use api::client::Client;
use serde_json::{Value, json};

use super::{figure, median};

/// One guest size.
struct Case {
    name: &'static str,
    memory_mib: u64,
    touch_mib: u64,
    /// Runs of the snapshot and of the restore, each side; the median counts.
    runs: usize,
    /// Whether the clone figures come from this case's snapshot.
    clones: bool,
}

const CASES: [Case; 2] = [
    Case {
        name: "128m",
        memory_mib: 128,
        touch_mib: 100,
        runs: 5,
        clones: true,
    },
    Case {
        name: "1g",
        memory_mib: 1024,
        touch_mib: 900,
        runs: 5,
        clones: false,
    },
];
/// How many clones start at once.
const CLONES: [usize; 2] = [10, 20];
/// How often the serial files are looked at.
const FILE_POLL: Duration = Duration::from_micros(200);
/// How often the API or QMP is asked for the VM's state.
const STATE_POLL: Duration = Duration::from_millis(1);
/// Pause after each restore or clone batch, so that one VM's teardown does not overlap the next.
const SETTLE: Duration = Duration::from_millis(200);
/// How long the clones run after the last printed its line before their memory is read.
const CLONE_SETTLE: Duration = Duration::from_millis(500);
/// Longest wait for a guest (the 1 GiB touch loop runs at CPL 0, emulated on some hosts).
const BOOT_TIMEOUT: Duration = Duration::from_secs(90);
const RESTORE_TIMEOUT: Duration = Duration::from_secs(60);
const LINE: &str = "counter: count=";
/// QEMU's max-bandwidth for the migration, bytes/s: as good as unlimited.
const UNLIMITED: u64 = 1 << 40;

fn cmdline(case: &Case) -> String {
    format!("touch={} every=1 verify=1", case.touch_mib)
}

// ---------------------------------------------------------------------------------------------
// Processes, files, memory.

/// A child process killed and reaped when dropped; its stderr goes to a file.
struct Running {
    child: Child,
    name: String,
    stderr: PathBuf,
}

impl Running {
    fn spawn(cmd: &mut Command, name: &str, stderr: PathBuf) -> anyhow::Result<Self> {
        let err =
            File::create(&stderr).with_context(|| format!("creating {}", stderr.display()))?;
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(err);
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {cmd:?}"))?;
        Ok(Self {
            child,
            name: name.to_string(),
            stderr,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails, with what it said on stderr, if the process has exited.
    fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            let err = std::fs::read_to_string(&self.stderr).unwrap_or_default();
            bail!("{} exited early ({status}): {}", self.name, err.trim());
        }
        Ok(())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The bench's scratch directory (snapshots, sockets, serial files), removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("popek-bench-snapshot-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self(dir))
    }

    /// A path in the directory, with nothing there yet.
    fn fresh(&self, name: &str) -> PathBuf {
        let p = self.0.join(name);
        let _ = std::fs::remove_dir_all(&p);
        let _ = std::fs::remove_file(&p);
        p
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The complete `counter: count=` lines the guest wrote to `serial` (a line cut by a pause or
/// a snapshot, or one the restored guest finished, is not one).
fn count_lines(serial: &Path) -> Vec<String> {
    let text = std::fs::read(serial).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let complete = text.rfind('\n').map_or("", |end| &text[..end]);
    complete
        .lines()
        .filter(|l| l.starts_with(LINE))
        .map(str::to_string)
        .collect()
}

/// The first complete `counter: count=` line in `serial`, looking only once it has bytes.
fn first_line(serial: &Path) -> Option<String> {
    let len = std::fs::metadata(serial).map_or(0, |m| m.len());
    if len == 0 {
        return None;
    }
    count_lines(serial).into_iter().next()
}

/// `ticks` of a `counter: count=C ticks=T` line.
fn ticks(line: &str) -> anyhow::Result<u64> {
    line.rsplit_once("ticks=")
        .and_then(|(_, t)| t.trim().parse().ok())
        .with_context(|| format!("not a counter line: {line:?}"))
}

/// Fails on the guest's failure lines (a restore that lost memory says `memory mismatch`).
fn check_serial(name: &str, serial: &Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(serial).unwrap_or_default();
    for bad in [
        "memory mismatch",
        "exceeds RAM",
        "bad value",
        "unexpected vector",
    ] {
        if let Some(l) = text.lines().find(|l| l.contains(bad)) {
            bail!("{name}: the counter guest failed: {l}");
        }
    }
    Ok(())
}

/// A restored guest's first line must continue the original: no new start, later ticks.
fn check_restored(name: &str, serial: &Path, line: &str, after_ticks: u64) -> anyhow::Result<()> {
    check_serial(name, serial)?;
    let text = std::fs::read_to_string(serial).unwrap_or_default();
    if text.contains("counter: start") {
        bail!("{name}: the guest started again instead of going on: {text:?}");
    }
    let t = ticks(line)?;
    if t <= after_ticks {
        bail!("{name}: first line {line:?} is not after the snapshot's ticks={after_ticks}");
    }
    Ok(())
}

/// Waits until `serial` holds more than `n` complete count lines; returns them.
fn wait_lines(proc: &mut Running, serial: &Path, n: usize) -> anyhow::Result<Vec<String>> {
    let give_up = Instant::now() + BOOT_TIMEOUT;
    loop {
        let lines = count_lines(serial);
        if lines.len() > n {
            return Ok(lines);
        }
        proc.check_alive()?;
        check_serial(&proc.name, serial)?;
        if Instant::now() > give_up {
            bail!(
                "{}: the counter guest printed {} lines, waited for {}",
                proc.name,
                lines.len(),
                n + 1
            );
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn wait_for_socket(proc: &mut Running, socket: &Path) -> anyhow::Result<()> {
    let give_up = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        proc.check_alive()?;
        if Instant::now() > give_up {
            bail!("{}: {} never appeared", proc.name, socket.display());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(())
}

/// `Rss` and `Pss` of a live process, KiB.
fn rss_pss_kib(pid: u32) -> anyhow::Result<(u64, u64)> {
    let path = format!("/proc/{pid}/smaps_rollup");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .with_context(|| format!("no {name} in {path}"))
    };
    Ok((field("Rss:")?, field("Pss:")?))
}

/// A file's apparent and allocated sizes, bytes.
fn sizes(path: &Path) -> anyhow::Result<(u64, u64)> {
    let m = std::fs::metadata(path).with_context(|| format!("stat {}", path.display()))?;
    Ok((m.len(), m.blocks() * 512))
}

// ---------------------------------------------------------------------------------------------
// What each side measures.

/// One snapshot.
struct Snap {
    /// From the request to the reply (popek), or to the completed event (QEMU).
    wall: Duration,
    /// What the VMM reports: `duration_ms`, or QEMU's `total-time`.
    reported_ms: u64,
    /// QEMU only: fsync of the file once `cat` wrote it all.
    fsync: Option<Duration>,
    /// The memory file (popek) or the migration stream (QEMU): apparent, allocated.
    file: (u64, u64),
    /// popek only: `state.json`'s size and the pages written.
    state_json: u64,
    pages: u64,
}

/// One restore.
struct Restore {
    /// QEMU only: the stream loaded (`query-status` no longer `inmigrate`).
    loaded: Option<Duration>,
    /// The VMM says the VM runs: popek's `GET /vm`, QEMU's `cont` answered.
    running: Duration,
    /// The guest's next line.
    line: Duration,
}

/// N clones at once.
struct Clones {
    n: usize,
    /// Each clone's time to its first line, from the first spawn.
    ready: Vec<Duration>,
    rss_kib: Vec<u64>,
    pss_kib: Vec<u64>,
}

/// One side's figures for one case.
#[derive(Default)]
struct Side {
    snaps: Vec<Snap>,
    restores: Vec<Restore>,
    clones: Vec<Clones>,
}

impl Side {
    fn snap_wall(&self) -> f64 {
        med(self.snaps.iter().map(|s| ms(s.wall)))
    }
    fn snap_reported(&self) -> f64 {
        med(self.snaps.iter().map(|s| s.reported_ms as f64))
    }
    fn snap_fsync(&self) -> f64 {
        med(self.snaps.iter().map(|s| s.fsync.map_or(0.0, ms)))
    }
    fn snap_wall_fsync(&self) -> f64 {
        med(self
            .snaps
            .iter()
            .map(|s| ms(s.wall) + s.fsync.map_or(0.0, ms)))
    }
    fn restore_loaded(&self) -> f64 {
        med(self.restores.iter().map(|r| r.loaded.map_or(0.0, ms)))
    }
    fn restore_running(&self) -> f64 {
        med(self.restores.iter().map(|r| ms(r.running)))
    }
    fn restore_line(&self) -> f64 {
        med(self.restores.iter().map(|r| ms(r.line)))
    }
    /// The fastest and slowest restore to the next line.
    fn restore_line_range(&self) -> (f64, f64) {
        let v = self.restores.iter().map(|r| ms(r.line));
        (v.clone().fold(f64::MAX, f64::min), v.fold(0.0, f64::max))
    }
    /// The fastest and slowest snapshot.
    fn snap_wall_range(&self) -> (f64, f64) {
        let v = self.snaps.iter().map(|s| ms(s.wall));
        (v.clone().fold(f64::MAX, f64::min), v.fold(0.0, f64::max))
    }
    /// The last snapshot's files (they are all the same size).
    fn last(&self) -> &Snap {
        self.snaps.last().expect("at least one snapshot")
    }
}

/// The median of some values (f64 by total order).
fn med(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<u64> = values.map(f64::to_bits).collect();
    // Non-negative f64s order like their bits.
    f64::from_bits(median(&mut v))
}

// ---------------------------------------------------------------------------------------------
// popek.

fn post(client: &Client, path: &str, body: &Value, want: u16) -> anyhow::Result<String> {
    let r = client
        .post(path, &body.to_string())
        .with_context(|| format!("POST {path}"))?;
    if r.status != want {
        bail!("POST {path} {body}: status {}: {}", r.status, r.body);
    }
    Ok(r.body)
}

fn popek_snapshots(
    bin: &Path,
    case: &Case,
    scratch: &Scratch,
) -> anyhow::Result<(Side, PathBuf, u64)> {
    let serial = scratch.fresh(&format!("popek-{}-run.txt", case.name));
    let socket = scratch.fresh(&format!("popek-{}-run.sock", case.name));
    let mut vm = Running::spawn(
        Command::new(bin)
            .args(["run", "--kernel"])
            .arg(guests::Guest::Counter.path())
            .arg("--memory")
            .arg(format!("{}M", case.memory_mib))
            .arg("--cmdline")
            .arg(cmdline(case))
            .arg("--serial")
            .arg(format!("file:{}", serial.display()))
            .arg("--api-socket")
            .arg(&socket),
        &format!("popek run ({})", case.name),
        scratch.fresh(&format!("popek-{}-run.err", case.name)),
    )?;
    wait_for_socket(&mut vm, &socket)?;
    let client = Client::new(&socket).with_timeout(Duration::from_secs(120));
    let mut lines = wait_lines(&mut vm, &serial, 1)?.len();
    let mut side = Side::default();
    let mut kept: Option<(PathBuf, u64)> = None;
    for i in 0..case.runs {
        // Let the guest run on between snapshots, as a VM snapshotted now and then does.
        lines = wait_lines(&mut vm, &serial, lines)?.len();
        post(&client, "/vm/actions", &json!({"action": "pause"}), 204)?;
        let last_ticks = ticks(count_lines(&serial).last().context("no line")?)?;
        let dir = scratch.fresh(&format!("popek-{}-snap{i}", case.name));
        let body = json!({"dir": dir, "diff": false});
        let start = Instant::now();
        let reply = post(&client, "/vm/snapshot", &body, 200)?;
        let wall = start.elapsed();
        let info: Value = serde_json::from_str(&reply).context("snapshot reply")?;
        if info["kind"] != "full" || info["memory_bytes"] != json!(case.memory_mib << 20) {
            bail!("popek snapshot: unexpected reply {reply}");
        }
        side.snaps.push(Snap {
            wall,
            reported_ms: info["duration_ms"].as_u64().context("no duration_ms")?,
            fsync: None,
            file: sizes(&dir.join("memory"))?,
            state_json: sizes(&dir.join("state.json"))?.0,
            pages: info["pages_written"].as_u64().context("no pages_written")?,
        });
        post(&client, "/vm/actions", &json!({"action": "resume"}), 204)?;
        if let Some((old, _)) = kept.replace((dir, last_ticks)) {
            std::fs::remove_dir_all(&old)?;
        }
    }
    vm.check_alive()?;
    check_serial(&vm.name, &serial)?;
    let (dir, last_ticks) = kept.context("no snapshot")?;
    Ok((side, dir, last_ticks))
}

fn popek_restore(
    bin: &Path,
    dir: &Path,
    serial: &Path,
    socket: Option<&Path>,
    err: PathBuf,
) -> anyhow::Result<Running> {
    let mut c = Command::new(bin);
    c.arg("restore")
        .arg(dir)
        .arg("--serial")
        .arg(format!("file:{}", serial.display()));
    if let Some(s) = socket {
        c.arg("--api-socket").arg(s);
    }
    Running::spawn(&mut c, "popek restore", err)
}

fn popek_restores(
    bin: &Path,
    case: &Case,
    scratch: &Scratch,
    dir: &Path,
    last_ticks: u64,
    side: &mut Side,
) -> anyhow::Result<()> {
    for i in 0..case.runs {
        let serial = scratch.fresh(&format!("popek-{}-restore{i}.txt", case.name));
        let socket = scratch.fresh(&format!("popek-{}-restore{i}.sock", case.name));
        let err = scratch.fresh(&format!("popek-{}-restore{i}.err", case.name));
        let start = Instant::now();
        let mut vm = popek_restore(bin, dir, &serial, Some(&socket), err)?;
        let client = Client::new(&socket).with_timeout(Duration::from_secs(5));
        let (mut running, mut line) = (None, None);
        let mut asked = start;
        let give_up = start + RESTORE_TIMEOUT;
        while running.is_none() || line.is_none() {
            let now = Instant::now();
            if running.is_none() && now >= asked && socket.exists() {
                asked = now + STATE_POLL;
                if let Ok(r) = client.get("/vm")
                    && r.status == 200
                    && r.json::<Value>().is_ok_and(|v| v["state"] == "running")
                {
                    running = Some(start.elapsed());
                }
            }
            if line.is_none()
                && let Some(l) = first_line(&serial)
            {
                line = Some((start.elapsed(), l));
            }
            vm.check_alive()?;
            if now > give_up {
                bail!(
                    "popek restore {}: no line after {RESTORE_TIMEOUT:?} (running: {running:?})",
                    dir.display()
                );
            }
            std::thread::sleep(FILE_POLL);
        }
        let (line, text) = line.context("no line")?;
        check_restored("popek restore", &serial, &text, last_ticks)?;
        side.restores.push(Restore {
            loaded: None,
            running: running.context("never running")?,
            line,
        });
        drop(vm);
        std::thread::sleep(SETTLE);
    }
    Ok(())
}

/// Waits until every clone printed a line; returns each one's time from `start`.
fn wait_clones(
    clones: &mut [Running],
    serials: &[PathBuf],
    start: Instant,
    last_ticks: u64,
) -> anyhow::Result<Vec<Duration>> {
    let mut ready: Vec<Option<Duration>> = vec![None; clones.len()];
    let give_up = start + RESTORE_TIMEOUT;
    while ready.iter().any(Option::is_none) {
        for (k, c) in clones.iter_mut().enumerate() {
            if ready[k].is_some() {
                continue;
            }
            if let Some(l) = first_line(&serials[k]) {
                ready[k] = Some(start.elapsed());
                check_restored(&c.name, &serials[k], &l, last_ticks)?;
            } else {
                c.check_alive()?;
            }
        }
        if Instant::now() > give_up {
            bail!(
                "{} of {} clones printed a line in {RESTORE_TIMEOUT:?}",
                ready.iter().flatten().count(),
                clones.len()
            );
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(ready.into_iter().flatten().collect())
}

/// Memory of live clones after `CLONE_SETTLE`.
fn clone_memory(clones: &mut [Running]) -> anyhow::Result<(Vec<u64>, Vec<u64>)> {
    std::thread::sleep(CLONE_SETTLE);
    let (mut rss, mut pss) = (Vec::new(), Vec::new());
    for c in clones.iter_mut() {
        c.check_alive()?;
        let (r, p) = rss_pss_kib(c.pid())?;
        rss.push(r);
        pss.push(p);
    }
    Ok((rss, pss))
}

fn popek_clones(
    bin: &Path,
    scratch: &Scratch,
    dir: &Path,
    last_ticks: u64,
    n: usize,
) -> anyhow::Result<Clones> {
    let serials: Vec<PathBuf> = (0..n)
        .map(|k| scratch.fresh(&format!("popek-clone{n}-{k}.txt")))
        .collect();
    let errs: Vec<PathBuf> = (0..n)
        .map(|k| scratch.fresh(&format!("popek-clone{n}-{k}.err")))
        .collect();
    let start = Instant::now();
    let mut clones = Vec::with_capacity(n);
    for k in 0..n {
        clones.push(popek_restore(bin, dir, &serials[k], None, errs[k].clone())?);
    }
    let ready = wait_clones(&mut clones, &serials, start, last_ticks)?;
    let (rss_kib, pss_kib) = clone_memory(&mut clones)?;
    drop(clones);
    std::thread::sleep(SETTLE);
    Ok(Clones {
        n,
        ready,
        rss_kib,
        pss_kib,
    })
}

// ---------------------------------------------------------------------------------------------
// QEMU.

/// One QMP session on a Unix socket; events are kept until asked for.
struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    events: Vec<Value>,
}

impl Qmp {
    /// Connects (retrying until QEMU listens), reads the greeting, leaves negotiation.
    fn connect(proc: &mut Running, path: &Path) -> anyhow::Result<Self> {
        let give_up = Instant::now() + Duration::from_secs(10);
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) => {
                    proc.check_alive()?;
                    if Instant::now() > give_up {
                        bail!("connecting to QMP at {}: {e}", path.display());
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        };
        stream.set_read_timeout(Some(Duration::from_secs(120)))?;
        let writer = stream.try_clone()?;
        let mut q = Self {
            reader: BufReader::new(stream),
            writer,
            events: Vec::new(),
        };
        let greeting = q.read()?;
        if greeting.get("QMP").is_none() {
            bail!("QMP: unexpected greeting {greeting}");
        }
        q.execute("qmp_capabilities", None)?;
        Ok(q)
    }

    fn read(&mut self) -> anyhow::Result<Value> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            bail!("QMP: the connection closed");
        }
        serde_json::from_str(&line).with_context(|| format!("QMP: not JSON: {line:?}"))
    }

    /// Runs a command; returns its `return`, keeping the events read meanwhile.
    fn execute(&mut self, command: &str, args: Option<Value>) -> anyhow::Result<Value> {
        let mut msg = json!({"execute": command});
        if let Some(a) = args {
            msg["arguments"] = a;
        }
        write!(self.writer, "{msg}\r\n")?;
        loop {
            let mut v = self.read()?;
            if let Some(r) = v.get_mut("return") {
                return Ok(r.take());
            }
            if let Some(e) = v.get("error") {
                bail!("QMP {msg}: {e}");
            }
            if v.get("event").is_some() {
                self.events.push(v);
            }
        }
    }

    /// Waits for an event that `pred` accepts (or one already read).
    fn wait_event(&mut self, pred: impl Fn(&Value) -> bool) -> anyhow::Result<Value> {
        if let Some(i) = self.events.iter().position(&pred) {
            return Ok(self.events.remove(i));
        }
        loop {
            let v = self.read()?;
            if v.get("event").is_some() && pred(&v) {
                return Ok(v);
            }
        }
    }

    fn status(&mut self) -> anyhow::Result<String> {
        let r = self.execute("query-status", None)?;
        r["status"]
            .as_str()
            .map(str::to_string)
            .with_context(|| format!("QMP query-status: {r}"))
    }
}

fn qemu(case: &Case, serial: &Path, qmp: &Path, incoming: Option<&Path>) -> Command {
    let mut c = Command::new("qemu-system-x86_64");
    c.args(["-M", "microvm", "-enable-kvm", "-smp", "1"])
        .arg("-m")
        .arg(format!("{}M", case.memory_mib))
        .args([
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
        ])
        .arg("-serial")
        .arg(format!("file:{}", serial.display()))
        .arg("-kernel")
        .arg(guests::Guest::Counter.path())
        .arg("-append")
        .arg(cmdline(case))
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", qmp.display()));
    if let Some(file) = incoming {
        c.arg("-incoming")
            .arg(format!("exec:cat {}", shell_word(file)));
    }
    c
}

/// `path` as one word for `/bin/sh` (QEMU's exec: URIs go through it).
fn shell_word(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', r"'\''"))
}

/// Waits until `path` stopped growing (`cat` has written the end of the stream).
fn wait_written(path: &Path) -> anyhow::Result<()> {
    let mut last = u64::MAX;
    loop {
        let len = sizes(path)?.0;
        if len == last {
            return Ok(());
        }
        last = len;
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn qemu_snapshots(case: &Case, scratch: &Scratch) -> anyhow::Result<(Side, PathBuf, u64)> {
    let serial = scratch.fresh(&format!("qemu-{}-run.txt", case.name));
    let socket = scratch.fresh(&format!("qemu-{}-run.sock", case.name));
    let mut vm = Running::spawn(
        &mut qemu(case, &serial, &socket, None),
        &format!("qemu ({})", case.name),
        scratch.fresh(&format!("qemu-{}-run.err", case.name)),
    )?;
    let mut qmp = Qmp::connect(&mut vm, &socket)?;
    qmp.execute(
        "migrate-set-capabilities",
        Some(json!({"capabilities": [{"capability": "events", "state": true}]})),
    )?;
    qmp.execute(
        "migrate-set-parameters",
        Some(json!({"max-bandwidth": UNLIMITED})),
    )?;
    let mut lines = wait_lines(&mut vm, &serial, 1)?.len();
    let mut side = Side::default();
    let mut kept: Option<(PathBuf, u64)> = None;
    for i in 0..case.runs {
        lines = wait_lines(&mut vm, &serial, lines)?.len();
        qmp.execute("stop", None)?;
        let last_ticks = ticks(count_lines(&serial).last().context("no line")?)?;
        let file = scratch.fresh(&format!("qemu-{}-snap{i}.bin", case.name));
        qmp.events.clear();
        let start = Instant::now();
        qmp.execute(
            "migrate",
            Some(json!({"uri": format!("exec:cat > {}", shell_word(&file))})),
        )?;
        let done = qmp.wait_event(|e| {
            e["event"] == "MIGRATION"
                && matches!(e["data"]["status"].as_str(), Some("completed" | "failed"))
        })?;
        let wall = start.elapsed();
        if done["data"]["status"] != "completed" {
            bail!("QEMU migrate to {}: {done}", file.display());
        }
        // QEMU sends the event before it sets `total-time`: ask until it is there.
        let give_up = Instant::now() + Duration::from_secs(5);
        let info = loop {
            let info = qmp.execute("query-migrate", None)?;
            if info["status"] != "completed" {
                bail!("QEMU migrate to {}: {info}", file.display());
            }
            if info["total-time"].as_u64().is_some_and(|t| t > 0) || Instant::now() > give_up {
                break info;
            }
            std::thread::sleep(STATE_POLL);
        };
        wait_written(&file)?;
        let t = Instant::now();
        File::open(&file)?.sync_all()?;
        let fsync = t.elapsed();
        side.snaps.push(Snap {
            wall,
            reported_ms: info["total-time"].as_u64().context("no total-time")?,
            fsync: Some(fsync),
            file: sizes(&file)?,
            state_json: 0,
            pages: info["ram"]["normal"].as_u64().unwrap_or(0),
        });
        qmp.execute("cont", None)?;
        if let Some((old, _)) = kept.replace((file, last_ticks)) {
            std::fs::remove_file(&old)?;
        }
    }
    vm.check_alive()?;
    check_serial(&vm.name, &serial)?;
    let (file, last_ticks) = kept.context("no snapshot")?;
    Ok((side, file, last_ticks))
}

/// Restores `file` in a new QEMU: waits for the stream to load, `cont`, waits for the next line.
/// Times are from `start`.
fn qemu_restore_one(
    mut vm: Running,
    socket: &Path,
    serial: &Path,
    start: Instant,
    last_ticks: u64,
) -> anyhow::Result<(Running, Restore)> {
    let mut qmp = Qmp::connect(&mut vm, socket)?;
    let give_up = start + RESTORE_TIMEOUT;
    let loaded = loop {
        let s = qmp.status()?;
        match s.as_str() {
            "inmigrate" => {}
            "paused" => break start.elapsed(),
            other => bail!("{}: after the incoming migration: status {other}", vm.name),
        }
        vm.check_alive()?;
        if Instant::now() > give_up {
            bail!(
                "{}: the incoming migration took over {RESTORE_TIMEOUT:?}",
                vm.name
            );
        }
        std::thread::sleep(STATE_POLL);
    };
    qmp.execute("cont", None)?;
    let running = start.elapsed();
    let (line, text) = loop {
        if let Some(l) = first_line(serial) {
            break (start.elapsed(), l);
        }
        vm.check_alive()?;
        if Instant::now() > give_up {
            bail!("{}: no line after {RESTORE_TIMEOUT:?}", vm.name);
        }
        std::thread::sleep(FILE_POLL);
    };
    check_restored(&vm.name, serial, &text, last_ticks)?;
    Ok((
        vm,
        Restore {
            loaded: Some(loaded),
            running,
            line,
        },
    ))
}

fn qemu_restores(
    case: &Case,
    scratch: &Scratch,
    file: &Path,
    last_ticks: u64,
    side: &mut Side,
) -> anyhow::Result<()> {
    for i in 0..case.runs {
        let serial = scratch.fresh(&format!("qemu-{}-restore{i}.txt", case.name));
        let socket = scratch.fresh(&format!("qemu-{}-restore{i}.sock", case.name));
        let err = scratch.fresh(&format!("qemu-{}-restore{i}.err", case.name));
        let start = Instant::now();
        let vm = Running::spawn(
            &mut qemu(case, &serial, &socket, Some(file)),
            "qemu -incoming",
            err,
        )?;
        let (vm, r) = qemu_restore_one(vm, &socket, &serial, start, last_ticks)?;
        side.restores.push(r);
        drop(vm);
        std::thread::sleep(SETTLE);
    }
    Ok(())
}

fn qemu_clones(
    case: &Case,
    scratch: &Scratch,
    file: &Path,
    last_ticks: u64,
    n: usize,
) -> anyhow::Result<Clones> {
    let serials: Vec<PathBuf> = (0..n)
        .map(|k| scratch.fresh(&format!("qemu-clone{n}-{k}.txt")))
        .collect();
    let sockets: Vec<PathBuf> = (0..n)
        .map(|k| scratch.fresh(&format!("qemu-clone{n}-{k}.sock")))
        .collect();
    let errs: Vec<PathBuf> = (0..n)
        .map(|k| scratch.fresh(&format!("qemu-clone{n}-{k}.err")))
        .collect();
    let start = Instant::now();
    let mut spawned = Vec::with_capacity(n);
    for k in 0..n {
        spawned.push(Running::spawn(
            &mut qemu(case, &serials[k], &sockets[k], Some(file)),
            &format!("qemu -incoming clone {k}"),
            errs[k].clone(),
        )?);
    }
    // Each clone needs its own `cont` as soon as its stream is loaded: a thread each.
    let threads: Vec<_> = spawned
        .into_iter()
        .enumerate()
        .map(|(k, vm)| {
            let (socket, serial) = (sockets[k].clone(), serials[k].clone());
            std::thread::spawn(move || qemu_restore_one(vm, &socket, &serial, start, last_ticks))
        })
        .collect();
    let mut clones = Vec::with_capacity(n);
    let mut ready = Vec::with_capacity(n);
    for t in threads {
        let (vm, r) = t
            .join()
            .map_err(|_| anyhow::anyhow!("a clone thread panicked"))??;
        clones.push(vm);
        ready.push(r.line);
    }
    let (rss_kib, pss_kib) = clone_memory(&mut clones)?;
    drop(clones);
    std::thread::sleep(SETTLE);
    Ok(Clones {
        n,
        ready,
        rss_kib,
        pss_kib,
    })
}

// ---------------------------------------------------------------------------------------------

pub fn run() -> anyhow::Result<()> {
    crate::host::ensure_package("qemu-system-x86_64", "qemu-system-x86")?;
    let bin = super::startup::popek_binary()?;
    let scratch = Scratch::new()?;
    let qemu_version = Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().next().map(str::to_string))
        .unwrap_or_default();
    let wall_start = Instant::now();

    let mut results: Vec<(&Case, Side, Side)> = Vec::new();
    for case in &CASES {
        let (mut ours, dir, ticks) = popek_snapshots(&bin, case, &scratch)?;
        popek_restores(&bin, case, &scratch, &dir, ticks, &mut ours)?;
        if case.clones {
            for n in CLONES {
                ours.clones
                    .push(popek_clones(&bin, &scratch, &dir, ticks, n)?);
            }
        }
        std::fs::remove_dir_all(&dir)?;

        let (mut theirs, file, ticks) = qemu_snapshots(case, &scratch)?;
        qemu_restores(case, &scratch, &file, ticks, &mut theirs)?;
        if case.clones {
            for n in CLONES {
                theirs
                    .clones
                    .push(qemu_clones(case, &scratch, &file, ticks, n)?);
            }
        }
        std::fs::remove_file(&file)?;
        results.push((case, ours, theirs));
    }
    report(&results, &qemu_version, wall_start.elapsed());
    Ok(())
}

fn report(results: &[(&Case, Side, Side)], qemu_version: &str, total: Duration) {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "snapshot: the counter guest (touch=M every=1 verify=1), popek vs {qemu_version} \
         (-M microvm, KVM), {cores} host cores, {:.0} s in all",
        total.as_secs_f64()
    );
    println!(
        "  snapshot of the paused VM: popek POST /vm/snapshot (sparse file, fsync); QEMU stop + \
         migrate \"exec:cat > FILE\" (max-bandwidth unlimited, no fsync)"
    );
    println!(
        "  case                     runs   wall ms  (min - max)      reported ms  fsync ms  \
         file MiB (apparent / allocated)  state.json KiB"
    );
    for (case, ours, theirs) in results {
        let label = format!("{} MiB, touch={}", case.memory_mib, case.touch_mib);
        for (name, side) in [("popek", ours), ("qemu", theirs)] {
            let s = side.last();
            let fsync = if name == "qemu" {
                format!("{:8.1}", side.snap_fsync())
            } else {
                "       -".into()
            };
            let state = if name == "popek" {
                format!("{:14.1}", s.state_json as f64 / 1024.0)
            } else {
                "             -".into()
            };
            let (lo, hi) = side.snap_wall_range();
            println!(
                "  {label:18} {name:5} {:4} {:9.1}  ({lo:6.1} - {hi:6.1}) {:12.0} {fsync}  \
                 {:9.1} / {:9.1}          {state}",
                side.snaps.len(),
                side.snap_wall(),
                side.snap_reported(),
                mib_b(s.file.0),
                mib_b(s.file.1),
            );
        }
        println!(
            "  {label:18} popek/qemu wall {:.2} x (vs qemu + fsync {:.2} x), allocated file {:.2} x",
            ours.snap_wall() / theirs.snap_wall(),
            ours.snap_wall() / theirs.snap_wall_fsync(),
            ours.last().file.1 as f64 / theirs.last().file.1 as f64
        );
    }
    println!();
    println!(
        "  restore to running: from exec; popek restore DIR --serial file:F --api-socket S \
         (GET /vm running); QEMU -incoming \"exec:cat FILE\" (loaded, cont answered)"
    );
    println!("  case                     runs  loaded ms  running ms  next line ms  (min - max)");
    for (case, ours, theirs) in results {
        let label = format!("{} MiB, touch={}", case.memory_mib, case.touch_mib);
        let (lo, hi) = ours.restore_line_range();
        println!(
            "  {label:18} popek {:4}          - {:11.1} {:13.1}  ({lo:6.1} - {hi:6.1})",
            ours.restores.len(),
            ours.restore_running(),
            ours.restore_line()
        );
        let (lo, hi) = theirs.restore_line_range();
        println!(
            "  {label:18} qemu  {:4} {:10.1} {:11.1} {:13.1}  ({lo:6.1} - {hi:6.1})",
            theirs.restores.len(),
            theirs.restore_loaded(),
            theirs.restore_running(),
            theirs.restore_line()
        );
        println!(
            "  {label:18} popek/qemu next line {:.2} x, running {:.2} x",
            ours.restore_line() / theirs.restore_line(),
            ours.restore_running() / theirs.restore_running()
        );
    }
    for (case, ours, theirs) in results {
        if ours.clones.is_empty() {
            continue;
        }
        println!();
        println!(
            "  clones of the {} MiB snapshot started at once: all printed a line (max, median); \
             memory {} ms after",
            case.memory_mib,
            CLONE_SETTLE.as_millis()
        );
        println!(
            "  clones  vmm     all ms  median ms   PSS sum MiB  PSS/clone MiB   RSS sum MiB  \
             PSS / (N x RAM)"
        );
        for (o, t) in ours.clones.iter().zip(&theirs.clones) {
            let ram = (o.n as u64 * case.memory_mib) as f64;
            for (name, c) in [("popek", o), ("qemu", t)] {
                let (all, med_ready) = clone_ready(c);
                let pss: u64 = c.pss_kib.iter().sum();
                let rss: u64 = c.rss_kib.iter().sum();
                println!(
                    "  {:6}  {name:5} {all:8.1} {med_ready:10.1} {:13.1} {:14.2} {:13.1} {:15.3}",
                    c.n,
                    mib(pss),
                    mib(pss) / c.n as f64,
                    mib(rss),
                    mib(pss) / ram
                );
            }
            let (pa, _) = clone_ready(o);
            let (qa, _) = clone_ready(t);
            println!(
                "  {:6}  popek/qemu all ready {:.2} x, PSS {:.3} x  ({} x guest RAM = {ram:.0} MiB)",
                o.n,
                pa / qa,
                o.pss_kib.iter().sum::<u64>() as f64 / t.pss_kib.iter().sum::<u64>() as f64,
                o.n
            );
        }
        println!(
            "  (popek maps the memory file privately and lazily: a clone's PSS is what its guest \
             touched since the restore plus its share of the file pages the clones mapped; QEMU \
             reads the whole stream into each clone's own memory)"
        );
    }

    for (case, ours, theirs) in results {
        let c = case.name;
        let (o, t) = (ours.last(), theirs.last());
        let f = |metric: &str, value: f64, unit: &str| {
            figure("snapshot", &format!("{c}_{metric}"), value, unit);
        };
        f("popek_snapshot_wall", ours.snap_wall(), "ms");
        f("popek_snapshot_reported", ours.snap_reported(), "ms");
        f("popek_pages_written", o.pages as f64, "pages");
        f("popek_memory_apparent", mib_b(o.file.0), "MiB");
        f("popek_memory_allocated", mib_b(o.file.1), "MiB");
        f("popek_state_json", o.state_json as f64 / 1024.0, "KiB");
        f("qemu_snapshot_wall", theirs.snap_wall(), "ms");
        f("qemu_snapshot_reported", theirs.snap_reported(), "ms");
        f("qemu_snapshot_fsync", theirs.snap_fsync(), "ms");
        f("qemu_file_apparent", mib_b(t.file.0), "MiB");
        f("qemu_file_allocated", mib_b(t.file.1), "MiB");
        f(
            "popek_over_qemu_snapshot_wall",
            ours.snap_wall() / theirs.snap_wall(),
            "ratio",
        );
        f(
            "popek_over_qemu_fsync_snapshot_wall",
            ours.snap_wall() / theirs.snap_wall_fsync(),
            "ratio",
        );
        f(
            "popek_over_qemu_file_allocated",
            o.file.1 as f64 / t.file.1 as f64,
            "ratio",
        );
        f("popek_restore_running", ours.restore_running(), "ms");
        f("popek_restore_line", ours.restore_line(), "ms");
        f("qemu_restore_loaded", theirs.restore_loaded(), "ms");
        f("qemu_restore_running", theirs.restore_running(), "ms");
        f("qemu_restore_line", theirs.restore_line(), "ms");
        f(
            "popek_over_qemu_restore_line",
            ours.restore_line() / theirs.restore_line(),
            "ratio",
        );
        f(
            "popek_over_qemu_restore_running",
            ours.restore_running() / theirs.restore_running(),
            "ratio",
        );
        for (o, t) in ours.clones.iter().zip(&theirs.clones) {
            let n = o.n;
            let ram = (n as u64 * case.memory_mib) as f64;
            for (name, cl) in [("popek", o), ("qemu", t)] {
                let (all, _) = clone_ready(cl);
                let pss = mib(cl.pss_kib.iter().sum());
                f(&format!("clones{n}_{name}_ready"), all, "ms");
                f(&format!("clones{n}_{name}_pss_sum"), pss, "MiB");
                f(
                    &format!("clones{n}_{name}_pss_per_clone"),
                    pss / n as f64,
                    "MiB",
                );
                f(
                    &format!("clones{n}_{name}_rss_sum"),
                    mib(cl.rss_kib.iter().sum()),
                    "MiB",
                );
                f(
                    &format!("clones{n}_{name}_pss_over_ram"),
                    pss / ram,
                    "ratio",
                );
            }
            f(&format!("clones{n}_guest_ram_sum"), ram, "MiB");
            f(
                &format!("clones{n}_popek_over_qemu_ready"),
                clone_ready(o).0 / clone_ready(t).0,
                "ratio",
            );
            f(
                &format!("clones{n}_popek_over_qemu_pss"),
                o.pss_kib.iter().sum::<u64>() as f64 / t.pss_kib.iter().sum::<u64>() as f64,
                "ratio",
            );
        }
    }
}

/// The time until the last clone, and the median clone, printed a line, ms.
fn clone_ready(c: &Clones) -> (f64, f64) {
    let all = c.ready.iter().max().map_or(0.0, |d| ms(*d));
    (all, med(c.ready.iter().map(|d| ms(*d))))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn mib_b(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}
