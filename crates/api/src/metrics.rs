//! `GET /metrics`: [`VmCounters`] in the Prometheus text exposition format, version 0.0.4.
//!
//! Counters end in `_total`; units are base units (seconds, bytes). Every family is written
//! with its `# HELP` and `# TYPE` even when it has no series (a VM without devices), so a
//! scraper sees the same families from every VM.

use std::fmt::Write;

use api_types::{VmCounters, VmState};

/// The Content-Type of the text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Renders `counters` as Prometheus text.
pub fn render(counters: &VmCounters) -> String {
    let mut out = Text(String::with_capacity(4096));
    let c = counters;

    out.family(
        "popek_vm_state",
        "gauge",
        "The VM's lifecycle state: 1 for the current state.",
    );
    for (state, name) in [
        (VmState::Created, "created"),
        (VmState::Running, "running"),
        (VmState::Paused, "paused"),
        (VmState::Stopped, "stopped"),
    ] {
        out.sample(
            "popek_vm_state",
            &[("state", name)],
            u64::from(c.state == Some(state)),
        );
    }

    out.family(
        "popek_vcpu_exits_total",
        "counter",
        "vCPU exits handled by the VMM, by reason.",
    );
    for v in &c.vcpus {
        let vcpu = v.id.to_string();
        for e in &v.exits {
            out.sample(
                "popek_vcpu_exits_total",
                &[("vcpu", &vcpu), ("reason", &e.reason)],
                e.count,
            );
        }
    }
    out.family(
        "popek_vcpu_vmm_seconds_total",
        "counter",
        "Seconds a vCPU thread spent in the VMM handling exits.",
    );
    for v in &c.vcpus {
        let vcpu = v.id.to_string();
        out.sample_f64(
            "popek_vcpu_vmm_seconds_total",
            &[("vcpu", &vcpu)],
            v.vmm_seconds,
        );
    }
    out.family(
        "popek_emulation_fallbacks_total",
        "counter",
        "Instructions KVM could not execute that the software CPU executed.",
    );
    for v in &c.vcpus {
        let vcpu = v.id.to_string();
        out.sample(
            "popek_emulation_fallbacks_total",
            &[("vcpu", &vcpu)],
            v.emulation_fallbacks,
        );
    }

    type Field = fn(&api_types::DeviceCounters) -> u64;
    let device_families: [(&str, &str, Field); 4] = [
        (
            "popek_device_requests_total",
            "Requests, frames or packets a device served.",
            |d| d.requests,
        ),
        (
            "popek_device_to_guest_bytes_total",
            "Bytes from a device to the guest.",
            |d| d.bytes_to_guest,
        ),
        (
            "popek_device_from_guest_bytes_total",
            "Bytes from the guest to a device.",
            |d| d.bytes_from_guest,
        ),
        (
            "popek_device_errors_total",
            "Device errors: failed requests, malformed chains, dropped frames.",
            |d| d.errors,
        ),
    ];
    for (name, help, field) in device_families {
        out.family(name, "counter", help);
        for d in &c.devices {
            out.sample(name, &[("device", &d.id), ("kind", &d.kind)], field(d));
        }
    }

    out.family("popek_guest_memory_bytes", "gauge", "Guest RAM in bytes.");
    out.sample("popek_guest_memory_bytes", &[], c.guest_memory_bytes);
    out.family(
        "popek_vmm_resident_memory_bytes",
        "gauge",
        "The VMM process's resident set in bytes.",
    );
    out.sample("popek_vmm_resident_memory_bytes", &[], c.vmm_rss_bytes);
    out.family(
        "popek_log_messages_dropped_total",
        "counter",
        "Guest-triggered log messages dropped by rate limiting.",
    );
    out.sample(
        "popek_log_messages_dropped_total",
        &[],
        c.log_messages_dropped,
    );
    out.0
}

struct Text(String);

impl Text {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        // Writing to a String cannot fail.
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: u64) {
        self.series(name, labels);
        let _ = writeln!(self.0, " {value}");
    }

    fn sample_f64(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.series(name, labels);
        let _ = match value {
            v if v.is_nan() => writeln!(self.0, " NaN"),
            v if v == f64::INFINITY => writeln!(self.0, " +Inf"),
            v if v == f64::NEG_INFINITY => writeln!(self.0, " -Inf"),
            // Debug prints the shortest text that reads back to the same value ("1e-7", "0.5").
            v => writeln!(self.0, " {v:?}"),
        };
    }

    fn series(&mut self, name: &str, labels: &[(&str, &str)]) {
        self.0.push_str(name);
        if labels.is_empty() {
            return;
        }
        self.0.push('{');
        for (i, (key, value)) in labels.iter().enumerate() {
            if i > 0 {
                self.0.push(',');
            }
            self.0.push_str(key);
            self.0.push_str("=\"");
            escape_label(&mut self.0, value);
            self.0.push('"');
        }
        self.0.push('}');
    }
}

/// Escapes a label value: backslash, double quote and line feed, as the format requires.
fn escape_label(out: &mut String, value: &str) {
    for ch in value.chars() {
        match ch {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        let mut s = String::new();
        escape_label(&mut s, "a\"b\\c\nd");
        assert_eq!(s, r#"a\"b\\c\nd"#);
    }

    #[test]
    fn an_empty_vm_has_every_family_and_no_state() {
        let text = render(&VmCounters::default());
        assert_eq!(text.matches("# TYPE ").count(), 11, "{text}");
        assert!(
            text.contains("popek_vm_state{state=\"running\"} 0\n"),
            "{text}"
        );
        assert!(text.contains("popek_guest_memory_bytes 0\n"), "{text}");
    }
}
