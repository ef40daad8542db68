//! vCPU threads: each runs its vCPU until the VM ends, handling the exits that need the VMM.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{JoinHandle, Thread};

use devices::legacy::{Ioapic, Pic};
use hypervisor::{Vcpu, VcpuKicker, VmExit};

use crate::control::{Control, VmOutcome};

/// State shared between a vCPU thread and the threads that poke it.
struct Shared {
    kicker: Arc<dyn VcpuKicker>,
    thread: Mutex<Option<Thread>>,
    /// Set by [`VcpuHandle::kick`]; cleared by the vCPU when it looks for work.
    kicked: AtomicBool,
}

/// A handle to wake a vCPU thread.
#[derive(Clone)]
pub struct VcpuHandle {
    shared: Arc<Shared>,
}

impl VcpuHandle {
    /// Makes the vCPU leave guest mode (or its halt) and look for pending work.
    pub fn kick(&self) {
        self.shared.kicked.store(true, Ordering::SeqCst);
        self.shared.kicker.kick();
        if let Some(t) = self
            .shared
            .thread
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            t.unpark();
        }
    }
}

/// Everything a vCPU thread needs.
pub struct VcpuRunner {
    /// The vCPU's index (and APIC ID).
    pub id: u32,
    /// The vCPU.
    pub vcpu: Box<dyn Vcpu>,
    /// The PIC, for the boot CPU only: it takes ExtINT interrupts.
    pub pic: Option<Arc<Mutex<Pic>>>,
    /// The IOAPIC, for level-triggered EOIs.
    pub ioapic: Arc<Mutex<Ioapic>>,
    /// Where the VM's end is reported.
    pub control: Arc<Control>,
    /// Set when the VM is stopping.
    pub stop: Arc<AtomicBool>,
}

impl VcpuRunner {
    /// A handle for waking this vCPU.
    pub fn handle(&self) -> VcpuHandle {
        VcpuHandle {
            shared: Arc::new(Shared {
                kicker: self.vcpu.kicker(),
                thread: Mutex::new(None),
                kicked: AtomicBool::new(false),
            }),
        }
    }

    /// Starts the vCPU's thread.
    pub fn spawn(self, handle: VcpuHandle) -> std::io::Result<JoinHandle<()>> {
        let shared = handle.shared.clone();
        let join = std::thread::Builder::new()
            .name(format!("vcpu{}", self.id))
            // The loop keeps little on its stack; the default 2 MiB would only reserve address space.
            .stack_size(256 << 10)
            .spawn(move || self.run(&shared))?;
        *handle
            .shared
            .thread
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(join.thread().clone());
        Ok(join)
    }

    /// Presents the PIC's interrupt to the boot CPU when it can take it, or asks to be told
    /// when it can.
    fn service_pic(&mut self) -> Result<(), hypervisor::HypervisorError> {
        let Some(pic) = &self.pic else { return Ok(()) };
        let mut pic = pic.lock().unwrap_or_else(|p| p.into_inner());
        if !pic.has_interrupt() {
            self.vcpu.request_interrupt_window(false);
            return Ok(());
        }
        if self.vcpu.interrupt_window_open() {
            if let Some(vector) = pic.acknowledge() {
                self.vcpu.inject_external_interrupt(vector)?;
            }
            self.vcpu.request_interrupt_window(pic.has_interrupt());
        } else {
            self.vcpu.request_interrupt_window(true);
        }
        Ok(())
    }

    fn run(mut self, shared: &Shared) {
        self.vcpu.kicker().bind_current_thread();
        let outcome = loop {
            if self.stop.load(Ordering::SeqCst) {
                return;
            }
            shared.kicked.store(false, Ordering::SeqCst);
            if let Err(e) = self.service_pic() {
                break VmOutcome::Failed(format!("vCPU {}: {e}", self.id));
            }
            match self.vcpu.run() {
                Ok(VmExit::Io | VmExit::Interrupted | VmExit::InterruptWindow) => {}
                Ok(VmExit::IoapicEoi(vector)) => {
                    self.ioapic
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .end_of_interrupt(vector);
                }
                Ok(VmExit::Halt) => {
                    // Only engines without an in-kernel local APIC exit on HLT: sleep until a
                    // kick brings an interrupt or the stop flag.
                    while !shared.kicked.load(Ordering::SeqCst) && !self.stop.load(Ordering::SeqCst)
                    {
                        std::thread::park();
                    }
                }
                Ok(VmExit::Shutdown) => break VmOutcome::TripleFault,
                Ok(VmExit::Reset) => break VmOutcome::Reset,
                Ok(VmExit::PowerOff) => break VmOutcome::PowerOff,
                Ok(VmExit::EmulationFailure(failure)) => {
                    break VmOutcome::EmulationFailure {
                        cpu: self.id,
                        failure,
                    };
                }
                Ok(VmExit::Unhandled(what)) => {
                    break VmOutcome::Failed(format!("vCPU {}: unhandled exit: {what}", self.id));
                }
                Err(e) => break VmOutcome::Failed(format!("vCPU {}: {e}", self.id)),
            }
        };
        self.control.finish(outcome);
    }
}
