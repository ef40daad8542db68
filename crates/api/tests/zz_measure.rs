mod common;
use std::time::{Duration, Instant};
fn rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap()
}
fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}
#[test]
fn measure() {
    // Warm up allocator and code pages with one server lifecycle.
    {
        let t = common::start();
        t.client.get("/vm").unwrap();
    }
    std::thread::sleep(Duration::from_millis(100));
    let (r0, t0) = (rss_kib(), threads());
    let t = common::start();
    std::thread::sleep(Duration::from_millis(50));
    let (r1, t1) = (rss_kib(), threads());
    let start = Instant::now();
    for _ in 0..500 {
        t.client.get("/vm/counters").unwrap();
    }
    let per = start.elapsed() / 500;
    std::thread::sleep(Duration::from_millis(100));
    let (r2, t2) = (rss_kib(), threads());
    let hs: Vec<_> = (0..8)
        .map(|_| {
            let c = t.client.clone();
            std::thread::spawn(move || {
                for _ in 0..100 {
                    c.get("/metrics").unwrap();
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    std::thread::sleep(Duration::from_millis(100));
    let (r3, t3) = (rss_kib(), threads());
    println!("before serve: rss {r0} KiB threads {t0}");
    println!("idle server:  rss {r1} KiB threads {t1}");
    println!("after 500 sequential GETs ({per:?}/request): rss {r2} KiB threads {t2}");
    println!("after 8x100 concurrent GET /metrics: rss {r3} KiB threads {t3}");
}
