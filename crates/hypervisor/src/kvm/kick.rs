//! Kicking a vCPU out of `KVM_RUN` from another thread.
//!
//! The kicker sends a real-time signal to the vCPU's thread. The handler sets `immediate_exit` in
//! that thread's `kvm_run`, so a kick that lands just before the thread enters `KVM_RUN` is not
//! lost: the next `KVM_RUN` returns at once with `EINTR`.

use std::cell::Cell;
use std::sync::{Mutex, Once};

use kvm_bindings::kvm_run;
use vmm_sys_util::signal::{SIGRTMIN, register_signal_handler};

use crate::{HypervisorError, Result, VcpuKicker};

thread_local! {
    /// The `kvm_run` of the vCPU that runs on this thread, or null.
    static KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

/// The signal used for kicks.
fn kick_signal() -> libc::c_int {
    SIGRTMIN()
}

extern "C" fn handle_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let run = KVM_RUN.with(|r| r.get());
    if !run.is_null() {
        // SAFETY: `run` is the mmap'ed kvm_run of the vCPU bound to this thread; `set_current`
        // clears it before the vCPU (and its mapping) is dropped. A volatile byte store is
        // async-signal-safe.
        unsafe { std::ptr::addr_of_mut!((*run).immediate_exit).write_volatile(1) };
    }
}

/// Installs the kick handler once per process.
pub(super) fn install_signal_handler() -> Result<()> {
    static ONCE: Once = Once::new();
    static RESULT: Mutex<Option<i32>> = Mutex::new(None);
    ONCE.call_once(|| {
        if let Err(e) = register_signal_handler(kick_signal(), handle_kick) {
            *RESULT.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.errno());
        }
    });
    match *RESULT.lock().unwrap_or_else(|p| p.into_inner()) {
        Some(errno) => Err(HypervisorError::Ioctl {
            op: "sigaction for vCPU kicks",
            source: std::io::Error::from_raw_os_error(errno),
        }),
        None => Ok(()),
    }
}

/// Records (or clears, with null) the `kvm_run` of the vCPU running on this thread.
pub(super) fn set_current(run: *mut kvm_run) {
    KVM_RUN.with(|r| r.set(run));
}

/// Kicks one vCPU thread.
#[derive(Default)]
pub(super) struct Kicker {
    thread: Mutex<Option<libc::pthread_t>>,
}

impl VcpuKicker for Kicker {
    fn bind_current_thread(&self) {
        // SAFETY: pthread_self has no preconditions.
        let me = unsafe { libc::pthread_self() };
        *self.thread.lock().unwrap_or_else(|p| p.into_inner()) = Some(me);
    }

    fn kick(&self) {
        if let Some(thread) = *self.thread.lock().unwrap_or_else(|p| p.into_inner()) {
            // SAFETY: `thread` is a vCPU thread that the VMM keeps alive for the VM's lifetime;
            // the signal has a handler installed, so delivery cannot kill the process.
            unsafe { libc::pthread_kill(thread, kick_signal()) };
        }
    }
}
