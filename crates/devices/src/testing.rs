//! Mock clocks, timers, interrupt lines and VM controls, for tests of devices and of their users.
//!
//! Compiled only for tests and with the `test-utils` feature, never into the product.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use crate::clock::{Clock, Timer};
use crate::interrupt::{ExtIntSink, IrqLine, MsiMessage, MsiSink, VmControl, VmRequest};

/// A clock that moves only when told to.
#[derive(Debug, Default)]
pub struct MockClock {
    ns: AtomicU64,
}

impl MockClock {
    /// Sets the time to `ns`.
    pub fn set(&self, ns: u64) {
        self.ns.store(ns, Ordering::SeqCst);
    }
    /// Moves time forward by `ns`.
    pub fn advance(&self, ns: u64) {
        self.ns.fetch_add(ns, Ordering::SeqCst);
    }
}

impl Clock for MockClock {
    fn now_ns(&self) -> u64 {
        self.ns.load(Ordering::SeqCst)
    }
}

/// A timer that records its deadline.
#[derive(Debug, Default)]
pub struct MockTimer {
    deadline: Mutex<Option<u64>>,
}

impl MockTimer {
    /// The deadline of the last `arm` call.
    pub fn deadline(&self) -> Option<u64> {
        *self.deadline.lock().unwrap()
    }
}

impl Timer for MockTimer {
    fn arm(&self, deadline_ns: Option<u64>) {
        *self.deadline.lock().unwrap() = deadline_ns;
    }
}

/// An interrupt line that counts rising edges and remembers its level.
#[derive(Debug, Default)]
pub struct MockIrq {
    level: AtomicBool,
    rises: AtomicUsize,
}

impl MockIrq {
    /// The current level.
    pub fn level(&self) -> bool {
        self.level.load(Ordering::SeqCst)
    }
    /// How many low-to-high transitions the line saw.
    pub fn rises(&self) -> usize {
        self.rises.load(Ordering::SeqCst)
    }
}

impl IrqLine for MockIrq {
    fn set_level(&self, level: bool) {
        if level && !self.level.swap(true, Ordering::SeqCst) {
            self.rises.fetch_add(1, Ordering::SeqCst);
        }
        self.level.store(level, Ordering::SeqCst);
    }
}

/// An MSI sink that records what it was given.
#[derive(Debug, Default)]
pub struct MockMsi {
    messages: Mutex<Vec<(u32, MsiMessage)>>,
}

impl MockMsi {
    /// Takes the messages delivered so far.
    pub fn take(&self) -> Vec<(u32, MsiMessage)> {
        std::mem::take(&mut *self.messages.lock().unwrap())
    }
}

impl MsiSink for MockMsi {
    fn deliver(&self, gsi: u32, msg: MsiMessage) {
        self.messages.lock().unwrap().push((gsi, msg));
    }
}

/// An ExtINT sink that counts raises.
#[derive(Debug, Default)]
pub struct MockExtInt {
    raises: AtomicUsize,
}

impl MockExtInt {
    /// How many times the PIC raised its output.
    pub fn raises(&self) -> usize {
        self.raises.load(Ordering::SeqCst)
    }
}

impl ExtIntSink for MockExtInt {
    fn raise(&self) {
        self.raises.fetch_add(1, Ordering::SeqCst);
    }
}

/// A VM control that records requests.
#[derive(Debug, Default)]
pub struct MockVm {
    requests: Mutex<Vec<VmRequest>>,
}

impl MockVm {
    /// Takes the requests made so far.
    pub fn take(&self) -> Vec<VmRequest> {
        std::mem::take(&mut *self.requests.lock().unwrap())
    }
}

impl VmControl for MockVm {
    fn request(&self, request: VmRequest) {
        self.requests.lock().unwrap().push(request);
    }
}

/// A PCI INTx router whose lines are [`MockIrq`]s, remembered by GSI.
#[derive(Default)]
pub struct MockIntx {
    lines: Mutex<Vec<(u32, std::sync::Arc<MockIrq>)>>,
}

impl MockIntx {
    /// The last line handed out on `gsi`.
    pub fn line(&self, gsi: u32) -> Option<std::sync::Arc<MockIrq>> {
        let lines = self.lines.lock().unwrap();
        lines
            .iter()
            .rev()
            .find(|(g, _)| *g == gsi)
            .map(|(_, l)| l.clone())
    }
}

impl crate::pci::IntxRouter for MockIntx {
    fn intx_line(&self, gsi: u32) -> Result<std::sync::Arc<dyn IrqLine>, crate::pci::PciError> {
        let line = std::sync::Arc::new(MockIrq::default());
        self.lines.lock().unwrap().push((gsi, line.clone()));
        Ok(line)
    }
}
