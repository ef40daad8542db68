//! Boots every test guest on popek's software CPU (`--accel emu`) and checks the same serial
//! output and exit status as the KVM tests in `guests.rs`; checks that the instruction clock
//! makes runs repeatable, and how `--accel` is chosen. Needs no `/dev/kvm`.

mod common;

use std::sync::Mutex;

use common::{Run, boot, check_memory_report, kvm_usable};
use guests::Guest;

/// The memory guests each touch 5 GiB: one at a time, so that the suite fits in the host's RAM
/// beside the KVM memory test.
static BIG_MEMORY: Mutex<()> = Mutex::new(());

/// Boots `guest` on the software CPU with `extra` flags.
fn emu(guest: Guest, extra: &[&str]) -> Run {
    let mut args = vec!["--accel", "emu"];
    args.extend_from_slice(extra);
    boot(guest.path(), &args)
}

#[test]
fn hello_guest_prints_its_line_and_exits_zero() {
    let r = emu(Guest::Hello, &[]);
    assert_eq!(
        r.stdout, "Hello from the popek hello guest!\n",
        "stderr: {}",
        r.stderr
    );
    assert_eq!(r.status, Some(0), "stderr: {}", r.stderr);
}

#[test]
fn smp_guest_sees_every_cpu_check_in() {
    for cpus in ["2", "4"] {
        let r = emu(Guest::Smp, &["--cpus", cpus]);
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

/// The counts of `timer: N pit ticks, M lapic ticks`.
fn timer_counts(r: &Run) -> Vec<u32> {
    r.stdout
        .lines()
        .find(|l| l.starts_with("timer: "))
        .unwrap_or_default()
        .split(' ')
        .filter_map(|w| w.parse().ok())
        .collect()
}

#[test]
fn timer_guest_receives_pit_and_lapic_interrupts() {
    let r = emu(Guest::Timer, &[]);
    let counts = timer_counts(&r);
    assert!(
        counts.len() == 2 && counts.iter().all(|&n| n >= 10),
        "stdout {:?} stderr {:?}",
        r.stdout,
        r.stderr
    );
    assert_eq!(r.status, Some(0));
}

#[test]
fn instruction_clock_makes_timer_runs_identical() {
    let runs: Vec<Run> = (0..2)
        .map(|_| emu(Guest::Timer, &["--clock", "instructions"]))
        .collect();
    let counts = timer_counts(&runs[0]);
    assert!(
        counts.len() == 2 && counts.iter().all(|&n| n >= 10),
        "stdout {:?} stderr {:?}",
        runs[0].stdout,
        runs[0].stderr
    );
    assert_eq!(runs[0].stdout, runs[1].stdout);
    assert_eq!(runs[0].status, Some(0));
    assert_eq!(runs[1].status, Some(0));
}

#[test]
fn memory_guest_verifies_every_page_of_5g_including_above_4g() {
    let _one_at_a_time = BIG_MEMORY.lock().unwrap_or_else(|p| p.into_inner());
    check_memory_report(&emu(Guest::Memory, &["--memory", "5G"]));
}

#[test]
fn memory_pvh_guest_verifies_every_page_of_5g_including_above_4g() {
    let _one_at_a_time = BIG_MEMORY.lock().unwrap_or_else(|p| p.into_inner());
    check_memory_report(&emu(Guest::MemoryPvh, &["--memory", "5G"]));
}

#[test]
fn reset_guest_ends_the_vm_with_status_zero() {
    let r = emu(Guest::Reset, &[]);
    assert_eq!(
        r.stdout, "reset: pulsing the i8042 reset line\n",
        "stderr: {}",
        r.stderr
    );
    assert_eq!(r.status, Some(0));
}

#[test]
fn int3_at_cpl0_reaches_the_guest_handler() {
    let r = emu(Guest::Int3, &[]);
    assert_eq!(
        r.stdout, "int3: breakpoint handled\n",
        "stderr: {}",
        r.stderr
    );
    assert_eq!(r.status, Some(0));
}

#[test]
fn debug_exit_status_becomes_the_exit_status() {
    for status in ["0", "7", "200"] {
        let cmdline = format!("status={status}");
        let r = emu(Guest::Status, &["--cmdline", &cmdline]);
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

#[test]
fn auto_accel_picks_kvm_when_usable_and_says_so_only_when_asked() {
    let quiet = boot(Guest::Hello.path(), &[]);
    assert_eq!(quiet.stderr, "", "no engine report without --verbose");
    let r = boot(Guest::Hello.path(), &["--verbose"]);
    assert_eq!(r.stdout, "Hello from the popek hello guest!\n");
    let expected = if kvm_usable() {
        "popek: engine kvm"
    } else {
        "popek: engine emu (KVM unusable: "
    };
    assert!(r.stderr.starts_with(expected), "stderr: {}", r.stderr);
}

#[test]
fn instruction_clock_implies_the_software_cpu_and_refuses_kvm() {
    let r = boot(
        Guest::Hello.path(),
        &["--clock", "instructions", "--verbose"],
    );
    assert!(r.stderr.starts_with("popek: engine emu\n"), "{}", r.stderr);
    assert_eq!(r.status, Some(0));
    let r = boot(
        Guest::Hello.path(),
        &["--accel", "kvm", "--clock", "instructions"],
    );
    assert_eq!(r.status, Some(2));
    assert_eq!(
        r.stderr,
        "popek: --clock instructions needs the software CPU: use --accel emu (KVM runs on host \
         time)\n"
    );
}

#[test]
fn without_dev_kvm_auto_accel_runs_the_guest_on_the_software_cpu() {
    let unshare = std::process::Command::new("unshare")
        .args(["--mount", "true"])
        .status();
    if !matches!(unshare, Ok(s) if s.success()) {
        eprintln!("skipped: cannot create a mount namespace here (needs root and unshare)");
        return;
    }
    let script = format!(
        "mount -t tmpfs none /dev && exec {} run --verbose --kernel {} --serial stdio",
        env!("CARGO_BIN_EXE_popek"),
        Guest::Hello.path().display()
    );
    let out = std::process::Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "Hello from the popek hello guest!\n",
        "stderr: {stderr}"
    );
    assert_eq!(out.status.code(), Some(0), "stderr: {stderr}");
    assert!(
        stderr.starts_with("popek: engine emu (KVM unusable: /dev/kvm does not exist"),
        "stderr: {stderr}"
    );
}

#[test]
fn every_guest_prints_the_same_under_kvm_and_the_software_cpu() {
    if !kvm_usable() {
        return;
    }
    let cases: [(Guest, &[&str]); 8] = [
        (Guest::Hello, &[]),
        (Guest::Smp, &["--cpus", "2"]),
        (Guest::Memory, &[]),
        (Guest::MemoryPvh, &[]),
        (Guest::Reset, &[]),
        (Guest::Int3, &[]),
        (Guest::Status, &["--cmdline", "status=9"]),
        (Guest::Timer, &[]),
    ];
    for (guest, extra) in cases {
        let mut kvm_args = vec!["--accel", "kvm"];
        kvm_args.extend_from_slice(extra);
        let kvm = boot(guest.path(), &kvm_args);
        let soft = emu(guest, extra);
        if guest == Guest::Timer {
            // Tick counts depend on host timing under KVM; both must reach 10 of each.
            assert_eq!(timer_counts(&kvm).len(), 2, "kvm: {:?}", kvm.stdout);
            let counts = timer_counts(&soft);
            assert!(counts.iter().all(|&n| n >= 10), "emu: {:?}", soft.stdout);
        } else {
            assert_eq!(
                soft.stdout,
                kvm.stdout,
                "{}: emu stderr {:?}",
                guest.name(),
                soft.stderr
            );
        }
        assert_eq!(soft.status, kvm.status, "{}", guest.name());
    }
}
