//! Bad input to `popek run`: each error exits with status 2 and one clear line.

mod common;

use std::time::Duration;

use common::run;
use guests::Guest;

fn hello() -> &'static str {
    Guest::Hello.path().to_str().unwrap()
}

/// Runs popek and checks it failed with status 2 and exactly one line on stderr.
fn fails_with(args: &[&str]) -> String {
    let r = run(args, Duration::from_secs(30));
    assert_eq!(
        r.status,
        Some(2),
        "args {args:?}: stdout {:?} stderr {:?}",
        r.stdout,
        r.stderr
    );
    let lines: Vec<&str> = r.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line expected: {:?}", r.stderr);
    lines[0].to_string()
}

#[test]
fn missing_kernel_file_is_named() {
    let line = fails_with(&["run", "--kernel", "/no/such/vmlinux"]);
    assert_eq!(line, "popek: Kernel /no/such/vmlinux does not exist");
}

#[test]
fn missing_initrd_file_is_named() {
    let line = fails_with(&["run", "--kernel", hello(), "--initrd", "/no/such/initrd"]);
    assert_eq!(line, "popek: Initrd /no/such/initrd does not exist");
}

#[test]
fn a_file_that_is_not_a_kernel_is_refused() {
    if !common::kvm_usable() {
        return;
    }
    let path = std::env::temp_dir().join(format!("popek-not-a-kernel-{}", std::process::id()));
    std::fs::write(&path, "just some text\n").unwrap();
    let line = fails_with(&["run", "--kernel", path.to_str().unwrap()]);
    std::fs::remove_file(&path).unwrap();
    assert_eq!(
        line,
        format!(
            "popek: {} is not a kernel: expected an x86-64 ELF (vmlinux) or a bzImage",
            path.display()
        )
    );
}

#[test]
fn memory_larger_than_the_host_is_refused_with_the_host_size() {
    let line = fails_with(&["run", "--kernel", hello(), "--memory", "64T"]);
    assert!(
        line.starts_with("popek: --memory 64T exceeds host RAM ("),
        "{line}"
    );
    assert!(line.ends_with(" GiB)") || line.ends_with(" MiB)"), "{line}");
}

#[test]
fn malformed_memory_size_is_refused() {
    let line = fails_with(&["run", "--kernel", hello(), "--memory", "lots"]);
    assert_eq!(
        line,
        "popek: Invalid size 'lots': use a number with an optional K, M, G or T suffix, like 512M or 2G"
    );
}

#[test]
fn zero_cpus_are_refused() {
    let line = fails_with(&["run", "--kernel", hello(), "--cpus", "0"]);
    assert_eq!(line, "popek: --cpus 0: a VM needs at least one CPU");
}

#[test]
fn too_many_cpus_are_refused() {
    let line = fails_with(&["run", "--kernel", hello(), "--cpus", "1000"]);
    assert_eq!(
        line,
        "popek: --cpus 1000 is too many: popek supports at most 254 CPUs per VM"
    );
}

#[test]
fn bad_serial_value_is_refused() {
    let r = run(
        &["run", "--kernel", hello(), "--serial", "tcp:80"],
        Duration::from_secs(30),
    );
    assert_eq!(r.status, Some(2));
    assert!(
        r.stderr
            .contains("Invalid --serial 'tcp:80': use stdio, file:PATH or none"),
        "{}",
        r.stderr
    );
}

/// Without /dev/kvm (hidden here by an empty /dev in a private mount namespace), popek says so.
#[test]
fn missing_dev_kvm_is_reported() {
    let unshare = std::process::Command::new("unshare")
        .args(["--mount", "true"])
        .status();
    if !matches!(unshare, Ok(s) if s.success()) {
        eprintln!("skipped: cannot create a mount namespace here (needs root and unshare)");
        return;
    }
    let script = format!(
        "mount -t tmpfs none /dev && exec {} run --accel kvm --kernel {} --serial none",
        env!("CARGO_BIN_EXE_popek"),
        hello()
    );
    let out = std::process::Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    assert_eq!(
        stderr.trim_end(),
        "popek: /dev/kvm does not exist: this host offers no KVM (load the kvm module, or enable \
         virtualization in the firmware)"
    );
}

#[test]
fn a_config_file_with_an_unknown_field_is_refused_by_name() {
    let dir = std::env::temp_dir().join(format!("popek-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("vm.json");
    std::fs::write(
        &file,
        r#"{"machine":{"cpus":1,"memory_mib":64,"cpu_count":2},"boot":{"kernel":"/k"}}"#,
    )
    .unwrap();
    let r = common::run(
        &["run", "--config", file.to_str().unwrap()],
        std::time::Duration::from_secs(20),
    );
    assert_eq!(r.status, Some(2));
    assert!(
        r.stderr.contains("unknown field `cpu_count`"),
        "{}",
        r.stderr
    );
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_config_file_boots_the_vm_it_describes_and_logs_json_on_request() {
    let dir = std::env::temp_dir().join(format!("popek-cfg-ok-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("vm.json");
    std::fs::write(
        &file,
        format!(
            r#"{{"machine":{{"cpus":1,"memory_mib":64}},"boot":{{"kernel":"{}"}}}}"#,
            guests::Guest::Hello.path().display()
        ),
    )
    .unwrap();
    let r = common::run(
        &[
            "run",
            "--config",
            file.to_str().unwrap(),
            "--log-json",
            "--log-level",
            "info",
        ],
        std::time::Duration::from_secs(60),
    );
    assert_eq!(r.status, Some(0), "{}", r.stderr);
    assert_eq!(r.stdout, "Hello from the popek hello guest!\n");
    let logs: Vec<&str> = r.stderr.lines().collect();
    assert!(logs.len() >= 2, "{}", r.stderr);
    for l in logs {
        assert!(l.starts_with('{') && l.ends_with('}'), "not JSON: {l}");
        assert!(l.contains("\"level\":\"INFO\""), "{l}");
    }
    assert!(r.stderr.contains("VM started"));
    let _ = std::fs::remove_dir_all(dir);
}
