//! A VM driven entirely through its API socket: configure, boot, pause, resume, info, metrics,
//! events, stop; and the VMM's answers to requests that do not fit.

mod common;

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use api::client::{Client, Response};
use api_types as wire;
use guests::Guest;

struct Vmm {
    child: Child,
    client: Client,
    dir: PathBuf,
}

impl Drop for Vmm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn start(name: &str) -> Vmm {
    let dir = std::env::temp_dir().join(format!("popek-api-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("api.sock");
    let child = common::popek()
        .args(["vmm", "--api-socket", socket.to_str().unwrap()])
        .spawn()
        .unwrap();
    let until = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        assert!(Instant::now() < until, "the API socket never appeared");
        std::thread::sleep(Duration::from_millis(10));
    }
    Vmm {
        child,
        client: Client::new(&socket),
        dir,
    }
}

fn config(serial: &Path) -> String {
    format!(
        r#"{{"machine":{{"cpus":1,"memory_mib":64}},
            "boot":{{"kernel":"{}","cmdline":"every=2"}},
            "serial":{{"mode":"file","path":"{}"}}}}"#,
        Guest::Counter.path().display(),
        serial.display()
    )
}

/// The guest's latest `count=` value and how many such lines it printed.
fn progress(serial: &Path) -> (u64, usize) {
    let text = std::fs::read_to_string(serial).unwrap_or_default();
    let counts: Vec<u64> = text
        .lines()
        .filter_map(|l| l.strip_prefix("counter: count="))
        .filter_map(|l| l.split(' ').next()?.parse().ok())
        .collect();
    (counts.last().copied().unwrap_or(0), counts.len())
}

fn wait_lines(serial: &Path, n: usize) {
    let until = Instant::now() + Duration::from_secs(30);
    while progress(serial).1 < n {
        assert!(
            Instant::now() < until,
            "the guest printed fewer than {n} lines"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn action(c: &Client, a: &str) -> Response {
    c.post("/vm/actions", &format!(r#"{{"action":"{a}"}}"#))
        .unwrap()
}

fn state(c: &Client) -> wire::VmState {
    c.get("/vm").unwrap().json::<wire::VmInfo>().unwrap().state
}

#[test]
fn a_vm_is_driven_through_its_socket_from_configuration_to_stop() {
    let vmm = start("lifecycle");
    let c = &vmm.client;
    let serial = vmm.dir.join("serial.txt");

    assert_eq!(state(c), wire::VmState::Created);
    let r = c.put("/vm/config", &config(&serial)).unwrap();
    assert_eq!(r.status, 204, "{}", r.body);
    let r = action(c, "boot");
    assert_eq!(r.status, 204, "{}", r.body);
    assert_eq!(state(c), wire::VmState::Running);
    wait_lines(&serial, 3);

    // Paused: the counter stops advancing.
    assert_eq!(action(c, "pause").status, 204);
    assert_eq!(state(c), wire::VmState::Paused);
    let paused = progress(&serial);
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(progress(&serial), paused, "the guest ran while paused");

    // Resumed: it continues from where it was.
    assert_eq!(action(c, "resume").status, 204);
    wait_lines(&serial, paused.1 + 3);
    assert!(progress(&serial).0 > paused.0);

    let info: wire::VmInfo = c.get("/vm").unwrap().json().unwrap();
    assert_eq!(info.state, wire::VmState::Running);
    assert_eq!(info.config.unwrap().machine.memory_mib, 64);
    assert!(info.engine.is_some() && info.uptime_ms.is_some());

    let counters: wire::VmCounters = c.get("/vm/counters").unwrap().json().unwrap();
    assert_eq!(counters.guest_memory_bytes, 64 << 20);
    let io: u64 = counters.vcpus[0]
        .exits
        .iter()
        .filter(|e| e.reason == "io")
        .map(|e| e.count)
        .sum();
    assert!(io > 0, "the guest's serial output makes port exits");

    // The metrics parse as Prometheus text and agree with the state.
    let metrics = c.get("/metrics").unwrap();
    assert_eq!(metrics.status, 200);
    let lines = metrics.body.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("Prometheus text");
    let running = scrape
        .samples
        .iter()
        .find(|s| s.metric == "popek_vm_state" && s.labels.get("state") == Some("running"))
        .expect("popek_vm_state{state=running}");
    assert!(matches!(running.value, prometheus_parse::Value::Gauge(v) if v == 1.0));
    assert!(
        scrape
            .samples
            .iter()
            .any(|s| s.metric == "popek_vcpu_exits_total")
    );

    assert_eq!(action(c, "stop").status, 204);
    assert_eq!(state(c), wire::VmState::Stopped);
    let stopped = progress(&serial);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(progress(&serial), stopped);

    let events: wire::EventList = c.get("/vm/events").unwrap().json().unwrap();
    let kinds: Vec<wire::EventKind> = events.events.iter().map(|e| e.kind).collect();
    use wire::EventKind::*;
    assert_eq!(
        kinds,
        [Created, Configured, Booted, Paused, Resumed, Stopped],
        "{events:?}"
    );
    let later: wire::EventList = c
        .get(&format!("/vm/events?since={}", events.next))
        .unwrap()
        .json()
        .unwrap();
    assert!(later.events.is_empty());
}

#[test]
fn requests_that_do_not_fit_are_refused_with_their_reason() {
    let vmm = start("refusals");
    let c = &vmm.client;
    let serial = vmm.dir.join("serial.txt");

    // An action in the wrong state names the state.
    let r = action(c, "pause");
    assert_eq!(r.status, 409);
    let e = r.api_error().unwrap();
    assert_eq!(e.state, Some(wire::VmState::Created));
    assert!(e.message.contains("created"), "{}", e.message);
    // Booting without a configuration says what to do.
    let r = action(c, "boot");
    assert_eq!(r.status, 400);
    assert!(r.body.contains("PUT /vm/config"), "{}", r.body);
    // Unknown field, by name.
    let r = c
        .put(
            "/vm/config",
            &config(&serial).replace("\"cpus\"", "\"cpu\""),
        )
        .unwrap();
    assert_eq!(r.status, 400);
    assert!(r.body.contains("cpu"), "{}", r.body);
    // Wrong type.
    let r = c
        .put(
            "/vm/config",
            &config(&serial).replace("\"cpus\":1", "\"cpus\":\"one\""),
        )
        .unwrap();
    assert_eq!(r.status, 400, "{}", r.body);
    // Malformed JSON.
    assert_eq!(c.put("/vm/config", "{\"machine\":").unwrap().status, 400);
    // A valid document with an impossible value names the field.
    let r = c
        .put(
            "/vm/config",
            &config(&serial).replace("\"memory_mib\":64", "\"memory_mib\":1"),
        )
        .unwrap();
    assert_eq!(r.status, 400);
    assert_eq!(
        r.api_error().unwrap().field.as_deref(),
        Some("machine.memory_mib")
    );
    // A kernel that does not exist.
    let r = c
        .put(
            "/vm/config",
            &config(&serial).replace("counter\"", "no-such-kernel\""),
        )
        .unwrap();
    assert_eq!(r.api_error().unwrap().field.as_deref(), Some("boot.kernel"));
    // A path that does not exist.
    assert_eq!(c.get("/vm/nothing").unwrap().status, 404);
    // A body too large.
    let big = format!("{{\"pad\":\"{}\"}}", "x".repeat(1 << 20));
    assert_eq!(c.put("/vm/config", &big).unwrap().status, 413);

    // Configuration changes are refused while running.
    assert_eq!(c.put("/vm/config", &config(&serial)).unwrap().status, 204);
    assert_eq!(action(c, "boot").status, 204);
    let r = c.put("/vm/config", &config(&serial)).unwrap();
    assert_eq!(r.status, 409);
    assert_eq!(r.api_error().unwrap().state, Some(wire::VmState::Running));
    let r = c
        .put("/vm/config/disks/0", r#"{"path":"/tmp/x.img"}"#)
        .unwrap();
    assert_eq!(r.status, 409);
    assert_eq!(action(c, "resume").status, 409);
    assert_eq!(action(c, "boot").status, 409);
    // The VMM is still serving.
    assert_eq!(state(c), wire::VmState::Running);
    assert_eq!(action(c, "stop").status, 204);
}

#[test]
fn popek_ctl_reports_state_and_drives_the_vm() {
    let vmm = start("ctl");
    let serial = vmm.dir.join("serial.txt");
    let file = vmm.dir.join("vm.json");
    std::fs::write(&file, config(&serial)).unwrap();
    let socket = vmm.dir.join("api.sock");
    let ctl = |args: &[&str]| {
        let out = common::popek()
            .args(["ctl", "--socket", socket.to_str().unwrap()])
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    assert_eq!(ctl(&["configure", file.to_str().unwrap()]).0, Some(0));
    assert_eq!(ctl(&["boot"]).0, Some(0));
    let (code, out, _) = ctl(&["info"]);
    assert_eq!(code, Some(0));
    assert!(out.contains("state:    running"), "{out}");
    let (code, out, _) = ctl(&["--json", "info"]);
    assert_eq!(code, Some(0));
    let info: wire::VmInfo = serde_json::from_str(&out).unwrap();
    assert_eq!(info.state, wire::VmState::Running);
    let (code, _, err) = ctl(&["resume"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("409"), "{err}");
    let (code, out, _) = ctl(&["metrics"]);
    assert_eq!(code, Some(0));
    assert!(out.contains("popek_vm_state{state=\"running\"} 1"), "{out}");
    assert_eq!(ctl(&["stop"]).0, Some(0));
    let out = common::popek()
        .args(["ctl", "--socket", "/nonexistent/api.sock", "info"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Cannot reach the VMM"));
}
