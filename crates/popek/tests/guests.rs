//! Boots every test guest under KVM and checks its serial output and exit status.

mod common;

use common::{boot, check_memory_report, kvm_usable};
use guests::Guest;

#[test]
fn hello_guest_prints_its_line_and_exits_zero() {
    if !kvm_usable() {
        return;
    }
    let r = boot(Guest::Hello.path(), &[]);
    assert_eq!(
        r.stdout, "Hello from the popek hello guest!\n",
        "stderr: {}",
        r.stderr
    );
    assert_eq!(r.status, Some(0), "stderr: {}", r.stderr);
}

#[test]
fn smp_guest_sees_every_cpu_check_in() {
    if !kvm_usable() {
        return;
    }
    for cpus in ["2", "4"] {
        let r = boot(Guest::Smp.path(), &["--cpus", cpus]);
        assert!(
            r.stdout
                .contains(&format!("smp: {cpus} of {cpus} CPUs checked in")),
            "--cpus {cpus}: stdout {:?} stderr {:?}",
            r.stdout,
            r.stderr
        );
        assert_eq!(r.status, Some(0));
    }
}

#[test]
fn timer_guest_receives_pit_and_lapic_interrupts() {
    if !kvm_usable() {
        return;
    }
    let r = boot(Guest::Timer.path(), &[]);
    let line = r
        .stdout
        .lines()
        .find(|l| l.starts_with("timer: "))
        .unwrap_or_default()
        .to_string();
    let counts: Vec<u32> = line.split(' ').filter_map(|w| w.parse().ok()).collect();
    assert!(
        counts.len() == 2 && counts.iter().all(|&n| n >= 10),
        "stdout {:?} stderr {:?}",
        r.stdout,
        r.stderr
    );
    assert_eq!(r.status, Some(0));
}

#[test]
fn memory_guest_verifies_every_page_of_5g_including_above_4g() {
    if !kvm_usable() {
        return;
    }
    check_memory_report(&boot(Guest::Memory.path(), &["--memory", "5G"]));
}

#[test]
fn reset_guest_ends_the_vm_with_status_zero() {
    if !kvm_usable() {
        return;
    }
    let r = boot(Guest::Reset.path(), &[]);
    assert_eq!(
        r.stdout, "reset: pulsing the i8042 reset line\n",
        "stderr: {}",
        r.stderr
    );
    assert_eq!(r.status, Some(0));
}

/// On hosts whose KVM cannot execute int3 at CPL 0 (the paravirtual kvm_pvm), popek's software
/// CPU executes it instead; either way the guest's handler runs.
#[test]
fn int3_at_cpl0_reaches_the_guest_handler() {
    if !kvm_usable() {
        return;
    }
    let r = boot(Guest::Int3.path(), &["--accel", "kvm", "-v"]);
    assert_eq!(
        r.stdout, "int3: breakpoint handled\n",
        "stderr: {}",
        r.stderr
    );
    assert_eq!(r.status, Some(0));
    // The fallback is counted in the VM's statistics, which `-v` prints.
    let count: u64 = r
        .stderr
        .lines()
        .find_map(|l| {
            l.strip_suffix(" instruction(s) ran on the software CPU as KVM's emulation fallback")
        })
        .and_then(|l| l.strip_prefix("popek: "))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no fallback count in stderr: {}", r.stderr));
    if hypervisor::kvm::HostKvmKind::detect() == hypervisor::kvm::HostKvmKind::Pvm {
        assert!(
            count >= 1,
            "int3 at CPL 0 must have fallen back: {}",
            r.stderr
        );
    }
}

#[test]
fn debug_exit_status_becomes_the_exit_status() {
    if !kvm_usable() {
        return;
    }
    for status in ["0", "7", "200"] {
        let cmdline = format!("status={status}");
        let r = boot(Guest::Status.path(), &["--cmdline", &cmdline]);
        assert_eq!(
            r.stdout,
            format!("status: exiting with {status}\n"),
            "stderr: {}",
            r.stderr
        );
        assert_eq!(
            r.status,
            Some(status.parse().unwrap()),
            "stderr: {}",
            r.stderr
        );
    }
}
