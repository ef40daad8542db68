//! `GET /metrics` is Prometheus text that a parser reads back to the counters' values.

use api::metrics::render;
use api_types::{DeviceCounters, ExitCount, VcpuCounters, VmCounters, VmState};
use prometheus_parse::{Scrape, Value};

fn counters() -> VmCounters {
    let vcpu = |id, io, secs| VcpuCounters {
        id,
        exits: vec![
            ExitCount {
                reason: "io".into(),
                count: io,
            },
            ExitCount {
                reason: "halt".into(),
                count: 5,
            },
        ],
        vmm_seconds: secs,
        emulation_fallbacks: u64::from(id) * 2,
    };
    let device = |id: &str, kind: &str, n| DeviceCounters {
        id: id.into(),
        kind: kind.into(),
        requests: n,
        bytes_to_guest: n * 4096,
        bytes_from_guest: n * 512,
        errors: n / 100,
    };
    VmCounters {
        state: Some(VmState::Paused),
        vcpus: vec![vcpu(0, 1000, 0.125), vcpu(1, 7, 1.5e-7)],
        devices: vec![device("block0", "block", 300), device("net0", "net", 12)],
        guest_memory_bytes: 256 << 20,
        vmm_rss_bytes: 31 << 20,
        log_messages_dropped: 9,
    }
}

fn scrape(text: &str) -> Scrape {
    Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap()
}

/// The value of the one sample of `name` whose labels include `labels`.
fn value(s: &Scrape, name: &str, labels: &[(&str, &str)]) -> Value {
    let found: Vec<_> = s
        .samples
        .iter()
        .filter(|x| x.metric == name && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .collect();
    assert_eq!(found.len(), 1, "{name} {labels:?}: {found:?}");
    found[0].value.clone()
}

#[test]
fn counters_read_back_from_the_text() {
    let text = render(&counters());
    let s = scrape(&text);
    assert_eq!(
        value(
            &s,
            "popek_vcpu_exits_total",
            &[("vcpu", "0"), ("reason", "io")]
        ),
        Value::Counter(1000.0)
    );
    assert_eq!(
        value(
            &s,
            "popek_vcpu_exits_total",
            &[("vcpu", "1"), ("reason", "halt")]
        ),
        Value::Counter(5.0)
    );
    assert_eq!(
        value(&s, "popek_vcpu_vmm_seconds_total", &[("vcpu", "0")]),
        Value::Counter(0.125)
    );
    assert_eq!(
        value(&s, "popek_vcpu_vmm_seconds_total", &[("vcpu", "1")]),
        Value::Counter(1.5e-7)
    );
    assert_eq!(
        value(&s, "popek_emulation_fallbacks_total", &[("vcpu", "1")]),
        Value::Counter(2.0)
    );
    let block = [("device", "block0"), ("kind", "block")];
    assert_eq!(
        value(&s, "popek_device_requests_total", &block),
        Value::Counter(300.0)
    );
    assert_eq!(
        value(&s, "popek_device_to_guest_bytes_total", &block),
        Value::Counter(300.0 * 4096.0)
    );
    assert_eq!(
        value(&s, "popek_device_from_guest_bytes_total", &block),
        Value::Counter(300.0 * 512.0)
    );
    assert_eq!(
        value(&s, "popek_device_errors_total", &block),
        Value::Counter(3.0)
    );
    assert_eq!(
        value(
            &s,
            "popek_device_requests_total",
            &[("device", "net0"), ("kind", "net")]
        ),
        Value::Counter(12.0)
    );
    assert_eq!(
        value(&s, "popek_guest_memory_bytes", &[]),
        Value::Gauge(268_435_456.0)
    );
    assert_eq!(
        value(&s, "popek_vmm_resident_memory_bytes", &[]),
        Value::Gauge(31.0 * 1048576.0)
    );
    assert_eq!(
        value(&s, "popek_log_messages_dropped_total", &[]),
        Value::Counter(9.0)
    );
    for (state, on) in [
        ("created", 0.0),
        ("running", 0.0),
        ("paused", 1.0),
        ("stopped", 0.0),
    ] {
        assert_eq!(
            value(&s, "popek_vm_state", &[("state", state)]),
            Value::Gauge(on),
            "{state}"
        );
    }
    // Every family is documented.
    for name in [
        "popek_vcpu_exits_total",
        "popek_vm_state",
        "popek_guest_memory_bytes",
    ] {
        assert!(s.docs.contains_key(name), "{name}");
    }
}

#[test]
fn every_family_has_help_and_type_before_its_samples() {
    let text = render(&counters());
    let mut declared: Vec<&str> = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(matches!(kind, "counter" | "gauge"), "{line}");
            assert_eq!(kind == "counter", name.ends_with("_total"), "{line}");
            declared.push(name);
        } else if !line.starts_with('#') {
            let name = line.split(['{', ' ']).next().unwrap();
            assert_eq!(
                declared.last(),
                Some(&name),
                "{line} is not under its family's TYPE"
            );
        }
    }
    assert_eq!(declared.len(), 11);
    let mut unique = declared.clone();
    unique.dedup();
    assert_eq!(unique, declared, "a family is split");
}

#[test]
fn label_values_are_escaped() {
    let mut c = VmCounters::default();
    c.vcpus.push(VcpuCounters {
        id: 0,
        exits: vec![ExitCount {
            reason: "odd\"reason\\with\nbreak".into(),
            count: 1,
        }],
        ..Default::default()
    });
    let text = render(&c);
    let line = text
        .lines()
        .find(|l| l.starts_with("popek_vcpu_exits_total{"))
        .unwrap();
    assert_eq!(
        line,
        r#"popek_vcpu_exits_total{vcpu="0",reason="odd\"reason\\with\nbreak"} 1"#
    );
    // prometheus-parse does not unescape, but the line still parses to the right value.
    let s = scrape(&text);
    assert_eq!(
        value(&s, "popek_vcpu_exits_total", &[("vcpu", "0")]),
        Value::Counter(1.0)
    );
}
