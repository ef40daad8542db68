//! `cargo xtask bench api`: what popek's REST API costs and how fast it answers, with QEMU's QMP
//! as the peer.
//!
//! 1. Requests per second and latency (p50, p99) of `GET /vm`, popek's VM info resource (there
//!    is no `GET /vm/info`), from 1, 4 and 16 client threads issuing requests back to back for
//!    2 s each, against `popek vmm` running the `counter` guest (so the VM is live while the API
//!    serves). Each request is a connection of its own, as the API serves them.
//! 2. The resident memory the API adds: VmRSS of `popek run` with the `counter` guest, without
//!    and with `--api-socket`, about 1 s in (once the guest has printed lines), and again after
//!    the API has served 1000 requests.
//! 3. The `hello` guest from exec to exit, without and with `--api-socket` (the API adds a
//!    thread and a socket), the two alternating: median and fastest wall time, and peak RSS.
//!
//! The serial console goes to a file in every run, so the bench can see the guest run. On a
//! small host the `counter` guest's busy vCPU takes a core for itself while the API serves.
//!
//! The peer: QEMU has QMP (JSON over a socket, not REST). `query-status` over QMP's Unix socket
//! against `qemu-system-x86_64 -M microvm` running the same `counter` guest, once with a fresh
//! connection per request (greeting and `qmp_capabilities` each time, like popek's one request
//! per connection) and once in one session; and QEMU's VmRSS with and without `-qmp`. QMP serves
//! one client at a time, so only popek's single-client figure compares.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use api::client::Client;

use super::{Sample, figure, measure, median};

/// Client threads for the request rate.
const CONCURRENCY: [usize; 3] = [1, 4, 16];
/// How long each concurrency level runs.
const LOAD_TIME: Duration = Duration::from_secs(2);
/// Runs of each side for the RSS figures; the median counts.
const RSS_RUNS: usize = 3;
/// How long a `counter` VM runs before its RSS is read (and at least until it printed lines).
const RSS_DELAY: Duration = Duration::from_secs(1);
/// Lines the `counter` guest must have printed before anything is measured.
const LIVE_LINES: usize = 3;
/// Requests served before the last RSS reading.
const RSS_REQUESTS: usize = 1000;
/// Runs of each side for the `hello` figures.
const HELLO_RUNS: usize = 21;
/// Pause after each `hello` run, so that one VM's teardown does not overlap the next start.
const SETTLE: Duration = Duration::from_millis(100);
const HELLO_LINE: &str = "Hello from the popek hello guest!";
/// A `counter` line every 5 ticks (50 ms).
const COUNTER_CMDLINE: &str = "every=5";
const MEMORY: &str = "512M";
const MEMORY_MIB: u32 = 512;

/// A child process killed and reaped when dropped.
struct Running(Child);

impl Running {
    fn spawn(cmd: &mut Command) -> anyhow::Result<Self> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {cmd:?}"))?;
        Ok(Self(child))
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }

    /// Fails if the process has exited.
    fn check_alive(&mut self, name: &str) -> anyhow::Result<()> {
        if let Some(status) = self.0.try_wait()? {
            bail!("{name} exited early ({status})");
        }
        Ok(())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The bench's scratch directory (sockets, serial files), removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("popek-bench-api-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self(dir))
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// VmRSS of a live process, in KiB.
fn vm_rss_kib(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no VmRSS in {path}"))
}

/// How many `count=` lines the `counter` guest wrote to `serial`.
fn counter_lines(serial: &Path) -> usize {
    std::fs::read_to_string(serial)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("counter: count="))
        .count()
}

/// Waits until the guest printed `n` lines in all, and at least `delay` has passed since `start`.
fn wait_live(
    proc: &mut Running,
    name: &str,
    serial: &Path,
    n: usize,
    start: Instant,
    delay: Duration,
) -> anyhow::Result<()> {
    let give_up = Instant::now() + Duration::from_secs(15);
    while counter_lines(serial) < n || start.elapsed() < delay {
        proc.check_alive(name)?;
        if Instant::now() > give_up {
            bail!(
                "{name}: the counter guest printed {} of {n} lines",
                counter_lines(serial)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

fn wait_for_socket(proc: &mut Running, name: &str, socket: &Path) -> anyhow::Result<()> {
    let give_up = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        proc.check_alive(name)?;
        if Instant::now() > give_up {
            bail!("{name}: {} never appeared", socket.display());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

/// `GET /vm`, checked: 200 and a VM in state `running`.
fn get_vm_running(client: &Client) -> anyhow::Result<()> {
    let r = client.get("/vm").context("GET /vm")?;
    if r.status != 200 {
        bail!("GET /vm: status {}: {}", r.status, r.body);
    }
    let info: serde_json::Value = r.json().context("GET /vm: not JSON")?;
    if info["state"] != "running" {
        bail!("GET /vm: the VM is not running: {}", r.body);
    }
    Ok(())
}

fn popek_run_counter(bin: &Path, serial: &Path, socket: Option<&Path>) -> Command {
    let mut c = Command::new(bin);
    c.args(["run", "--kernel"])
        .arg(guests::Guest::Counter.path())
        .args(["--cmdline", COUNTER_CMDLINE, "--memory", MEMORY, "--serial"])
        .arg(format!("file:{}", serial.display()));
    if let Some(s) = socket {
        c.arg("--api-socket").arg(s);
    }
    c
}

fn qemu_counter(serial: &Path, qmp: Option<&Path>) -> Command {
    let mut c = Command::new("qemu-system-x86_64");
    c.args(["-M", "microvm", "-enable-kvm", "-m", MEMORY, "-smp", "1"])
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
        .args(["-append", COUNTER_CMDLINE]);
    if let Some(q) = qmp {
        c.arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", q.display()));
    }
    c
}

// ---------------------------------------------------------------------------------------------
// 1. Request rate.

/// What N clients got in `LOAD_TIME`.
struct Load {
    clients: usize,
    ok: usize,
    /// 503 replies: more connections than the server serves at once.
    busy: usize,
    elapsed: Duration,
    /// Latencies of the 200 replies, sorted.
    latencies: Vec<Duration>,
}

impl Load {
    fn rps(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }

    fn percentile(&self, p: usize) -> Duration {
        let i = (self.latencies.len() * p / 100).min(self.latencies.len() - 1);
        self.latencies[i]
    }
}

/// `clients` threads issuing `GET /vm` back to back for `LOAD_TIME`.
fn load(socket: &Path, clients: usize) -> anyhow::Result<Load> {
    let start = Instant::now();
    let end = start + LOAD_TIME;
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let client = Client::new(socket).with_timeout(Duration::from_secs(10));
            std::thread::spawn(move || -> anyhow::Result<(Vec<Duration>, usize)> {
                let mut latencies = Vec::with_capacity(16_384);
                let mut busy = 0;
                while Instant::now() < end {
                    let t = Instant::now();
                    let r = client.get("/vm").context("GET /vm")?;
                    let dt = t.elapsed();
                    match r.status {
                        200 => latencies.push(dt),
                        503 => busy += 1,
                        s => bail!("GET /vm: status {s}: {}", r.body),
                    }
                }
                Ok((latencies, busy))
            })
        })
        .collect();
    let mut latencies = Vec::new();
    let mut busy = 0;
    for t in threads {
        let (l, b) = t
            .join()
            .map_err(|_| anyhow::anyhow!("a client panicked"))??;
        latencies.extend(l);
        busy += b;
    }
    let elapsed = start.elapsed();
    if latencies.is_empty() {
        bail!("no GET /vm succeeded with {clients} clients");
    }
    latencies.sort_unstable();
    Ok(Load {
        clients,
        ok: latencies.len(),
        busy,
        elapsed,
        latencies,
    })
}

struct RateResult {
    loads: Vec<Load>,
    /// VmRSS of the `popek vmm` process after all the requests, KiB.
    rss_after_kib: u64,
    /// Whether `GET /vm/info` is a 404 (popek's info resource is `GET /vm`).
    info_path_status: u16,
}

fn rate(bin: &Path, scratch: &Scratch) -> anyhow::Result<RateResult> {
    let socket = scratch.path("vmm.sock");
    let serial = scratch.path("vmm-serial.txt");
    let mut vmm = Running::spawn(
        Command::new(bin)
            .arg("vmm")
            .arg("--api-socket")
            .arg(&socket),
    )?;
    wait_for_socket(&mut vmm, "popek vmm", &socket)?;
    let client = Client::new(&socket);
    let config = serde_json::json!({
        "machine": {"cpus": 1, "memory_mib": MEMORY_MIB},
        "boot": {"kernel": guests::Guest::Counter.path(), "cmdline": COUNTER_CMDLINE},
        "serial": {"mode": "file", "path": serial},
    });
    let r = client.put("/vm/config", &config.to_string())?;
    if r.status != 204 {
        bail!("PUT /vm/config: status {}: {}", r.status, r.body);
    }
    let r = client.post("/vm/actions", r#"{"action":"boot"}"#)?;
    if r.status != 204 {
        bail!("boot: status {}: {}", r.status, r.body);
    }
    let booted = Instant::now();
    wait_live(
        &mut vmm,
        "popek vmm",
        &serial,
        LIVE_LINES,
        booted,
        Duration::ZERO,
    )?;
    get_vm_running(&client)?;
    let info_path_status = client.get("/vm/info")?.status;
    let mut loads = Vec::new();
    for clients in CONCURRENCY {
        let before = counter_lines(&serial);
        let l = load(&socket, clients)?;
        // The guest kept running while the API served.
        if counter_lines(&serial) <= before {
            bail!("the counter guest stopped printing during the load with {clients} clients");
        }
        loads.push(l);
    }
    vmm.check_alive("popek vmm")?;
    get_vm_running(&client)?;
    let rss_after_kib = vm_rss_kib(vmm.pid())?;
    Ok(RateResult {
        loads,
        rss_after_kib,
        info_path_status,
    })
}

// ---------------------------------------------------------------------------------------------
// 2. RSS of a running VM, without and with the API.

struct RssResult {
    plain_kib: u64,
    api_kib: u64,
    api_after_kib: u64,
}

fn rss(bin: &Path, scratch: &Scratch) -> anyhow::Result<RssResult> {
    let (mut plain, mut api, mut after) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..RSS_RUNS {
        let serial = scratch.path(&format!("rss-plain-{i}.txt"));
        let start = Instant::now();
        let mut p = Running::spawn(&mut popek_run_counter(bin, &serial, None))?;
        wait_live(&mut p, "popek run", &serial, LIVE_LINES, start, RSS_DELAY)?;
        plain.push(vm_rss_kib(p.pid())?);
        drop(p);

        let serial = scratch.path(&format!("rss-api-{i}.txt"));
        let socket = scratch.path(&format!("rss-api-{i}.sock"));
        let start = Instant::now();
        let mut p = Running::spawn(&mut popek_run_counter(bin, &serial, Some(&socket)))?;
        wait_for_socket(&mut p, "popek run --api-socket", &socket)?;
        wait_live(
            &mut p,
            "popek run --api-socket",
            &serial,
            LIVE_LINES,
            start,
            RSS_DELAY,
        )?;
        api.push(vm_rss_kib(p.pid())?);
        let client = Client::new(&socket);
        for _ in 0..RSS_REQUESTS {
            get_vm_running(&client)?;
        }
        p.check_alive("popek run --api-socket")?;
        after.push(vm_rss_kib(p.pid())?);
    }
    Ok(RssResult {
        plain_kib: median(&mut plain),
        api_kib: median(&mut api),
        api_after_kib: median(&mut after),
    })
}

// ---------------------------------------------------------------------------------------------
// 3. The hello guest, exec to exit.

/// Median wall time, fastest wall time, median peak RSS (KiB).
type HelloFigures = (Duration, Duration, u64);

struct HelloResult {
    plain: HelloFigures,
    api: HelloFigures,
}

fn hello(bin: &Path, scratch: &Scratch) -> anyhow::Result<HelloResult> {
    let socket = scratch.path("hello.sock");
    let cmd = |api: bool| {
        let mut c = Command::new(bin);
        c.args(["run", "--kernel"])
            .arg(guests::Guest::Hello.path())
            .args(["--memory", MEMORY, "--serial", "stdio"]);
        if api {
            c.arg("--api-socket").arg(&socket);
        }
        c
    };
    let check = |name: &str, s: &Sample| -> anyhow::Result<()> {
        if !s.stdout.contains(HELLO_LINE) || s.status != 0 {
            bail!(
                "{name} did not run the hello guest: status {}, output {:?}",
                s.status,
                s.stdout
            );
        }
        Ok(())
    };
    let variants = [(false, "popek run"), (true, "popek run --api-socket")];
    // Warm the page cache. Then alternate the two, pausing after every run: the host kernel
    // tears a VM down after its process has exited, and the pause keeps that out of the next
    // run; alternating keeps the other load on the host (builds) from favouring either.
    for (api, _) in variants {
        measure(&mut cmd(api))?;
        std::thread::sleep(SETTLE);
    }
    let mut samples: [Vec<Sample>; 2] = Default::default();
    for _ in 0..HELLO_RUNS {
        for (i, (api, name)) in variants.into_iter().enumerate() {
            let s = measure(&mut cmd(api))?;
            check(name, &s)?;
            samples[i].push(s);
            std::thread::sleep(SETTLE);
        }
    }
    let summary = |v: &[Sample]| {
        let mut walls: Vec<Duration> = v.iter().map(|s| s.wall).collect();
        let fastest = walls.iter().copied().min().unwrap_or_default();
        let rss = median(&mut v.iter().map(|s| s.max_rss_kib).collect::<Vec<_>>());
        (median(&mut walls), fastest, rss)
    };
    Ok(HelloResult {
        plain: summary(&samples[0]),
        api: summary(&samples[1]),
    })
}

// ---------------------------------------------------------------------------------------------
// The peer: QEMU's QMP.

/// One QMP session on a Unix socket.
struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    line: String,
}

impl Qmp {
    /// Connects, reads the greeting and leaves capabilities negotiation.
    fn connect(path: &Path) -> anyhow::Result<Self> {
        let stream = UnixStream::connect(path)
            .with_context(|| format!("connecting to QMP at {}", path.display()))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        let writer = stream.try_clone()?;
        let mut q = Self {
            reader: BufReader::new(stream),
            writer,
            line: String::new(),
        };
        q.read_line()?;
        if !q.line.contains("\"QMP\"") {
            bail!("QMP: unexpected greeting {:?}", q.line);
        }
        q.execute("qmp_capabilities")?;
        Ok(q)
    }

    fn read_line(&mut self) -> anyhow::Result<()> {
        self.line.clear();
        if self.reader.read_line(&mut self.line)? == 0 {
            bail!("QMP: the connection closed");
        }
        Ok(())
    }

    /// Runs a command with no arguments and returns its reply line (skipping events).
    fn execute(&mut self, command: &str) -> anyhow::Result<&str> {
        write!(self.writer, "{{\"execute\":\"{command}\"}}\r\n")?;
        loop {
            self.read_line()?;
            if self.line.starts_with("{\"return\"") {
                return Ok(&self.line);
            }
            if self.line.contains("\"error\"") {
                bail!("QMP {command}: {}", self.line.trim());
            }
        }
    }

    fn query_status_running(&mut self) -> anyhow::Result<()> {
        let reply = self.execute("query-status")?;
        if !reply.contains("\"running\"") {
            bail!("QMP query-status: not running: {}", reply.trim());
        }
        Ok(())
    }
}

struct QmpResult {
    /// A connection (greeting, qmp_capabilities) per query-status.
    fresh: Load,
    /// query-status back to back in one session.
    session: Load,
    /// VmRSS of QEMU running the counter guest, without and with -qmp, KiB.
    plain_kib: u64,
    qmp_kib: u64,
}

/// `query-status` back to back for `LOAD_TIME`, with `fresh` a new connection each time.
fn qmp_load(socket: &Path, fresh: bool) -> anyhow::Result<Load> {
    let start = Instant::now();
    let end = start + LOAD_TIME;
    let mut latencies = Vec::with_capacity(16_384);
    let mut session = if fresh {
        None
    } else {
        Some(Qmp::connect(socket)?)
    };
    while Instant::now() < end {
        let t = Instant::now();
        match session.as_mut() {
            Some(q) => q.query_status_running()?,
            None => Qmp::connect(socket)?.query_status_running()?,
        }
        latencies.push(t.elapsed());
    }
    let elapsed = start.elapsed();
    latencies.sort_unstable();
    Ok(Load {
        clients: 1,
        ok: latencies.len(),
        busy: 0,
        elapsed,
        latencies,
    })
}

fn qmp(scratch: &Scratch) -> anyhow::Result<QmpResult> {
    let (mut plain, mut with_qmp) = (Vec::new(), Vec::new());
    let mut loads = None;
    for i in 0..RSS_RUNS {
        let serial = scratch.path(&format!("qemu-plain-{i}.txt"));
        let start = Instant::now();
        let mut q = Running::spawn(&mut qemu_counter(&serial, None))?;
        wait_live(&mut q, "qemu", &serial, LIVE_LINES, start, RSS_DELAY)?;
        plain.push(vm_rss_kib(q.pid())?);
        drop(q);

        let serial = scratch.path(&format!("qemu-qmp-{i}.txt"));
        let socket = scratch.path(&format!("qemu-qmp-{i}.sock"));
        let start = Instant::now();
        let mut q = Running::spawn(&mut qemu_counter(&serial, Some(&socket)))?;
        wait_for_socket(&mut q, "qemu -qmp", &socket)?;
        wait_live(&mut q, "qemu -qmp", &serial, LIVE_LINES, start, RSS_DELAY)?;
        with_qmp.push(vm_rss_kib(q.pid())?);
        if loads.is_none() {
            let before = counter_lines(&serial);
            let fresh = qmp_load(&socket, true)?;
            let session = qmp_load(&socket, false)?;
            if counter_lines(&serial) <= before {
                bail!("the counter guest stopped printing under QEMU during the QMP load");
            }
            loads = Some((fresh, session));
        }
    }
    let (fresh, session) = loads.context("no QMP run")?;
    Ok(QmpResult {
        fresh,
        session,
        plain_kib: median(&mut plain),
        qmp_kib: median(&mut with_qmp),
    })
}

// ---------------------------------------------------------------------------------------------

pub fn run() -> anyhow::Result<()> {
    crate::host::ensure_package("qemu-system-x86_64", "qemu-system-x86")?;
    let bin = super::startup::popek_binary()?;
    let scratch = Scratch::new()?;
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());

    let rate = rate(&bin, &scratch)?;
    let rss = rss(&bin, &scratch)?;
    let hello = hello(&bin, &scratch)?;
    let qmp = qmp(&scratch)?;

    let total: usize = rate.loads.iter().map(|l| l.ok + l.busy).sum();
    println!(
        "api: GET /vm (popek's VM info resource; GET /vm/info answers {}), one request per \
         connection,",
        rate.info_path_status
    );
    println!(
        "  against `popek vmm` running the counter guest ({COUNTER_CMDLINE}, a busy vCPU), \
         {} s per level, {cores} host cores",
        LOAD_TIME.as_secs()
    );
    println!("  clients        req/s      p50 us      p99 us   503 busy");
    for l in &rate.loads {
        println!(
            "  {:7}  {:11.0} {:11.1} {:11.1} {:10}",
            l.clients,
            l.rps(),
            us(l.percentile(50)),
            us(l.percentile(99)),
            l.busy
        );
    }
    println!(
        "  (503: more than the server's {} connections at once; latencies are of the 200s; \
         VmRSS after {total} requests {:.1} MiB)",
        api::ServeOptions::default().max_connections,
        mib(rate.rss_after_kib)
    );
    println!();
    println!(
        "rss: popek run, counter guest, VmRSS ~{} s in, median of {RSS_RUNS} runs \
         (serial to a file, to see the guest run)",
        RSS_DELAY.as_secs()
    );
    let served = format!("--api-socket, after {RSS_REQUESTS} GET /vm");
    println!("  {:34} {:8.2} MiB", "without API", mib(rss.plain_kib));
    for (name, kib) in [
        ("--api-socket", rss.api_kib),
        (served.as_str(), rss.api_after_kib),
    ] {
        println!(
            "  {name:34} {:8.2} MiB  ({:+.2} MiB)",
            mib(kib),
            mib(kib) - mib(rss.plain_kib)
        );
    }
    println!();
    let (pw, pf, pr) = hello.plain;
    let (aw, af, ar) = hello.api;
    println!(
        "hello: exec to exit, {HELLO_RUNS} runs each, alternating (the fastest run is the \
         figure least disturbed by other load on the host)"
    );
    println!("                             median    fastest    peak RSS");
    for (name, w, f, r) in [
        ("popek run", pw, pf, pr),
        ("popek run --api-socket", aw, af, ar),
    ] {
        println!(
            "  {name:22}  {:8.2} ms {:7.2} ms {:7.2} MiB",
            ms(w),
            ms(f),
            mib(r)
        );
    }
    println!(
        "  {:22}  {:8.2} x  {:7.2} x  {:7.2} x",
        "api/plain",
        ms(aw) / ms(pw),
        ms(af) / ms(pf),
        ar as f64 / pr as f64
    );
    println!();
    let c1 = &rate.loads[0];
    println!(
        "qmp: QEMU microvm (KVM), counter guest, query-status over QMP's Unix socket, one client \
         (QMP serves one at a time)"
    );
    println!("                                       req/s      p50 us      p99 us");
    for (name, l) in [
        ("a connection per request", &qmp.fresh),
        ("one session", &qmp.session),
    ] {
        println!(
            "  {name:26}  {:11.0} {:11.1} {:11.1}",
            l.rps(),
            us(l.percentile(50)),
            us(l.percentile(99))
        );
    }
    println!(
        "  popek/qemu, 1 client, a connection per request: {:.2} x req/s",
        c1.rps() / qmp.fresh.rps()
    );
    println!(
        "  QEMU VmRSS without -qmp {:.2} MiB, with -qmp {:.2} MiB ({:+.2} MiB)",
        mib(qmp.plain_kib),
        mib(qmp.qmp_kib),
        mib(qmp.qmp_kib) - mib(qmp.plain_kib)
    );
    println!(
        "  popek/qemu VmRSS with the API/QMP: {:.2} x",
        rss.api_kib as f64 / qmp.qmp_kib as f64
    );

    for l in &rate.loads {
        let c = l.clients;
        figure("api", &format!("get_vm_c{c}_rps"), l.rps(), "req/s");
        figure(
            "api",
            &format!("get_vm_c{c}_p50"),
            us(l.percentile(50)),
            "us",
        );
        figure(
            "api",
            &format!("get_vm_c{c}_p99"),
            us(l.percentile(99)),
            "us",
        );
        figure(
            "api",
            &format!("get_vm_c{c}_busy"),
            l.busy as f64,
            "replies",
        );
    }
    figure("api", "rss_plain", mib(rss.plain_kib), "MiB");
    figure("api", "rss_api", mib(rss.api_kib), "MiB");
    figure(
        "api",
        "rss_api_added",
        mib(rss.api_kib) - mib(rss.plain_kib),
        "MiB",
    );
    figure(
        "api",
        "rss_api_after_requests",
        mib(rss.api_after_kib),
        "MiB",
    );
    figure(
        "api",
        "rss_api_after_requests_added",
        mib(rss.api_after_kib) - mib(rss.plain_kib),
        "MiB",
    );
    figure("api", "hello_wall", ms(pw), "ms");
    figure("api", "hello_api_wall", ms(aw), "ms");
    figure("api", "hello_api_over_plain_wall", ms(aw) / ms(pw), "ratio");
    figure("api", "hello_fastest_wall", ms(pf), "ms");
    figure("api", "hello_api_fastest_wall", ms(af), "ms");
    figure(
        "api",
        "hello_api_over_plain_fastest_wall",
        ms(af) / ms(pf),
        "ratio",
    );
    figure("api", "hello_peak_rss", mib(pr), "MiB");
    figure("api", "hello_api_peak_rss", mib(ar), "MiB");
    figure(
        "api",
        "hello_api_over_plain_rss",
        ar as f64 / pr as f64,
        "ratio",
    );
    figure("api", "qmp_fresh_rps", qmp.fresh.rps(), "req/s");
    figure("api", "qmp_fresh_p50", us(qmp.fresh.percentile(50)), "us");
    figure("api", "qmp_session_rps", qmp.session.rps(), "req/s");
    figure(
        "api",
        "qmp_session_p50",
        us(qmp.session.percentile(50)),
        "us",
    );
    figure(
        "api",
        "popek_over_qemu_rps",
        c1.rps() / qmp.fresh.rps(),
        "ratio",
    );
    figure("api", "qemu_rss_plain", mib(qmp.plain_kib), "MiB");
    figure("api", "qemu_rss_qmp", mib(qmp.qmp_kib), "MiB");
    figure(
        "api",
        "popek_over_qemu_rss",
        rss.api_kib as f64 / qmp.qmp_kib as f64,
        "ratio",
    );
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}
