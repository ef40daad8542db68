//! Network namespaces for tests: a thread that leaves the host's network, and what runs in it.

#![allow(dead_code)]

use std::process::Command;

/// Moves the calling thread (and the processes it spawns from now on) into a new, empty network
/// namespace, which goes away with the thread and its children. False (with the reason printed)
/// where the host does not allow it.
pub fn enter_new_netns() -> bool {
    // SAFETY: unshare has no memory-safety preconditions; CLONE_NEWNET affects only the calling
    // thread's namespace membership.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        eprintln!(
            "skipped: cannot create a network namespace ({}): needs root",
            std::io::Error::last_os_error()
        );
        return false;
    }
    ip(&["link", "set", "lo", "up"]);
    true
}

/// Runs `ip ARGS` in the calling thread's namespace, panicking on failure.
pub fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Makes bridge `name`, up.
pub fn bridge(name: &str) {
    ip(&["link", "add", name, "type", "bridge"]);
    ip(&["link", "set", name, "up"]);
}
