//! Running the `popek` binary from tests.

#![allow(dead_code)]

pub mod netns;

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// What a finished (or killed) run printed and how it ended.
pub struct Run {
    pub status: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub timed_out: bool,
}

pub fn popek() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_popek"));
    c.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

fn drain(child: &mut Child) -> (String, String) {
    let mut out = String::new();
    let mut err = String::new();
    if let Some(mut s) = child.stdout.take() {
        let _ = s.read_to_string(&mut out);
    }
    if let Some(mut s) = child.stderr.take() {
        let _ = s.read_to_string(&mut err);
    }
    (out, err)
}

/// Runs popek with `args`, killing it after `timeout`.
pub fn run(args: &[&str], timeout: Duration) -> Run {
    let mut child = popek().args(args).spawn().expect("spawn popek");
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait for popek") {
            let (stdout, stderr) = drain(&mut child);
            return Run {
                status: status.code(),
                stdout,
                stderr,
                timed_out: false,
            };
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            let (stdout, stderr) = drain(&mut child);
            return Run {
                status: None,
                stdout,
                stderr,
                timed_out: true,
            };
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Boots a test guest with `extra` flags.
pub fn boot(guest: &Path, extra: &[&str]) -> Run {
    let kernel = guest.to_str().expect("utf-8 path");
    let mut args = vec!["run", "--kernel", kernel, "--serial", "stdio"];
    args.extend_from_slice(extra);
    run(&args, Duration::from_secs(120))
}

/// Whether this host can run KVM guests at all; tests print why they skip otherwise.
pub fn kvm_usable() -> bool {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(_) => true,
        Err(e) => {
            eprintln!("skipped: /dev/kvm is not usable here ({e})");
            false
        }
    }
}

/// Checks the memory guest's report for a 5 GiB VM: all of RAM but the 384 KiB legacy hole
/// and the guest's own pages verified, up to the top of RAM above 4 GiB.
pub fn check_memory_report(r: &Run) {
    let line = r
        .stdout
        .lines()
        .find(|l| l.starts_with("memory: verified"))
        .map(str::to_string);
    let line = line.unwrap_or_else(|| panic!("stdout {:?} stderr {:?}", r.stdout, r.stderr));
    let pages: u64 = line
        .split(' ')
        .nth(2)
        .and_then(|n| n.parse().ok())
        .expect("page count");
    assert!(
        pages > (5 << 30) / 4096 - 1024 && pages <= (5 << 30) / 4096,
        "{line}"
    );
    let highest = line
        .rsplit(' ')
        .next()
        .and_then(|h| u64::from_str_radix(h.trim_start_matches("0x"), 16).ok());
    assert!(highest.is_some_and(|h| h >= 0x1_4000_0000 - 4096), "{line}");
    assert_eq!(r.status, Some(0));
}
