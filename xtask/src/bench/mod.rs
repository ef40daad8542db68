//! Benchmarks: the same work under popek and under its peer, in one run, with the ratio.
//!
//! Every benchmark ends with one machine-readable line per figure:
//! `bench NAME METRIC VALUE UNIT`.

pub mod api;
pub mod block;
pub mod cpu;
pub mod linux_boot;
pub mod snapshot;
pub mod startup;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// Wall time from exec to exit, and peak RSS, of one child process.
pub struct Sample {
    pub wall: Duration,
    pub max_rss_kib: u64,
    pub status: i32,
    pub stdout: String,
}

/// Runs `cmd` to completion, timing it from spawn to reaping and reading its peak RSS.
pub fn measure(cmd: &mut Command) -> anyhow::Result<Sample> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    let mut stdout = child.stdout.take().context("no stdout")?;
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stdout, &mut s);
        s
    });
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to overwrite.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `pid` is our unreaped child; `status` and `usage` are valid for writes.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let wall = start.elapsed();
    if r != pid {
        bail!("wait4 failed: {}", std::io::Error::last_os_error());
    }
    // The child is reaped: make sure std does not try again.
    std::mem::forget(child);
    let stdout = reader.join().unwrap_or_default();
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        -1
    };
    Ok(Sample {
        wall,
        max_rss_kib: usage.ru_maxrss as u64,
        status: code,
        stdout,
    })
}

/// The median of `values` (which must not be empty).
pub fn median<T: Copy + Ord>(values: &mut [T]) -> T {
    values.sort_unstable();
    values[values.len() / 2]
}

/// Prints one machine-readable figure.
pub fn figure(bench: &str, metric: &str, value: f64, unit: &str) {
    println!("bench {bench} {metric} {value:.3} {unit}");
}

/// Starts `cmd` and returns how long it took until a line of its stdout contains `marker`
/// (then kills it), or `None` if it exited or `timeout` passed first.
pub fn time_to_line(
    cmd: &mut Command,
    marker: &str,
    timeout: Duration,
) -> anyhow::Result<Option<Duration>> {
    use std::io::BufRead;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    let stdout = child.stdout.take().context("no stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    let marker = marker.to_string();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line.contains(&marker) {
                let _ = tx.send(Instant::now());
                break;
            }
        }
    });
    let seen = rx.recv_timeout(timeout).ok();
    let _ = child.kill();
    let _ = child.wait();
    Ok(seen.map(|t| t - start))
}
