use std::os::fd::RawFd;
use std::sync::Mutex;

use virtio_queue::QueueState;
use vm_memory::GuestAddress;

use super::*;
use crate::pci::{
    CONTROL_ENABLE, MSIX_CAP_ID, PciIrqs, PciRoot, PciRootConfig, capabilities, command,
};
use crate::testing::{MockIntx, MockMsi};
use crate::virtio::{F_RING_EVENT_IDX, F_VERSION_1, VirtioInterrupt, device_type};

pub(super) const ACKNOWLEDGE: u8 = 1;
pub(super) const DRIVER: u8 = 2;
pub(super) const DRIVER_OK: u8 = 4;
pub(super) const FEATURES_OK: u8 = 8;
pub(super) const NEEDS_RESET: u8 = 0x40;
pub(super) const FEATURE_X: u64 = 1 << 5;

/// A queue as activated: size, descriptor table and used ring addresses.
type QueueSeen = (u16, u64, u64);

/// What the fake device saw.
#[derive(Default)]
pub(super) struct Seen {
    /// Per activation: features, and each queue's (size, descriptor table, used ring).
    pub(super) activations: Vec<(u64, Vec<QueueSeen>)>,
    /// Per activation: each queue's (next_avail, next_used).
    pub(super) positions: Vec<Vec<(u16, u16)>>,
    /// The last worker's queues, which a test may move on as if the worker served them.
    pub(super) worker_queues: Arc<Mutex<Vec<QueueState>>>,
    pub(super) notify: Vec<EventFd>,
    pub(super) interrupt: Option<Arc<dyn VirtioInterrupt>>,
    pub(super) resets: usize,
    pub(super) config_writes: Vec<(u64, Vec<u8>)>,
}

pub(super) struct FakeDevice {
    pub(super) seen: Arc<Mutex<Seen>>,
    pub(super) fail: bool,
}

struct FakeWorker(Arc<Mutex<Vec<QueueState>>>);

impl VirtioWorker for FakeWorker {
    fn sources(&self) -> Vec<(RawFd, u64)> {
        Vec::new()
    }
    fn handle(&mut self, _token: u64) {}
    fn queue_states(&self) -> Vec<QueueState> {
        self.0.lock().unwrap().clone()
    }
}

impl VirtioDevice for FakeDevice {
    fn name(&self) -> &'static str {
        "fake"
    }
    fn device_type(&self) -> u32 {
        device_type::BLOCK
    }
    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![256, 128, 64]
    }
    fn features(&self) -> u64 {
        F_VERSION_1 | F_RING_EVENT_IDX | FEATURE_X
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = (offset as u8).wrapping_add(i as u8) | 0x80;
        }
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        let mut seen = self.seen.lock().unwrap();
        seen.config_writes.push((offset, data.to_vec()));
    }
    fn activate(&mut self, a: Activation) -> Result<Box<dyn VirtioWorker>, ActivateError> {
        use virtio_queue::QueueT;
        let mut seen = self.seen.lock().unwrap();
        let queues = a
            .queues
            .iter()
            .map(|q| (q.queue.size(), q.queue.desc_table(), q.queue.used_ring()))
            .collect();
        seen.activations.push((a.features, queues));
        let states: Vec<QueueState> = a.queues.iter().map(|q| q.queue.state()).collect();
        seen.positions
            .push(states.iter().map(|q| (q.next_avail, q.next_used)).collect());
        seen.worker_queues = Arc::new(Mutex::new(states));
        let worker_queues = seen.worker_queues.clone();
        seen.notify = a.queues.into_iter().map(|q| q.notify).collect();
        seen.interrupt = Some(a.interrupt);
        if self.fail {
            return Err(ActivateError::BadQueues {
                device: "fake",
                what: "test failure".into(),
            });
        }
        Ok(Box::new(FakeWorker(worker_queues)))
    }
    fn reset(&mut self) {
        self.seen.lock().unwrap().resets += 1;
    }
}

/// A worker host that records what the transport asked of it.
#[derive(Default)]
pub(super) struct MockHost {
    pub(super) started: Mutex<Vec<u64>>,
    pub(super) stopped: Mutex<Vec<u64>>,
    /// Each move: the old and new notification addresses.
    pub(super) moves: Mutex<Vec<(Vec<u64>, Vec<u64>)>>,
    pub(super) failures: Mutex<usize>,
}

impl WorkerHost for MockHost {
    fn start(&self, _worker: Box<dyn VirtioWorker>) -> u64 {
        let mut started = self.started.lock().unwrap();
        let id = started.len() as u64 + 100;
        started.push(id);
        id
    }
    fn stop(&self, id: u64) {
        self.stopped.lock().unwrap().push(id);
    }
    fn ioevents_moved(&self, old: &[IoEvent<'_>], new: &[IoEvent<'_>]) {
        let addrs = |e: &[IoEvent<'_>]| e.iter().map(|e| e.addr).collect();
        self.moves.lock().unwrap().push((addrs(old), addrs(new)));
    }
    fn activation_failed(&self, _device: &'static str, _error: &ActivateError) {
        *self.failures.lock().unwrap() += 1;
    }
}

pub(super) struct Rig {
    pub(super) dev: VirtioPciDevice,
    pub(super) seen: Arc<Mutex<Seen>>,
    pub(super) host: Arc<MockHost>,
    pub(super) intx: Arc<MockIntx>,
    pub(super) msi: Arc<MockMsi>,
}

pub(super) const MEM_SIZE: usize = 1 << 20;

pub(super) fn rig_with(fail: bool) -> Rig {
    let intx = Arc::new(MockIntx::default());
    let msi = Arc::new(MockMsi::default());
    let mut root = PciRoot::new(
        PciRootConfig {
            ecam_base: 0xe000_0000,
            mmio_base: 0xc000_0000,
            mmio_size: 0x2000_0000,
        },
        PciIrqs {
            intx: intx.clone(),
            msi: msi.clone(),
        },
    )
    .unwrap();
    let slot = root.reserve_slot().unwrap();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let host = Arc::new(MockHost::default());
    let mem = GuestMemory::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
    let dev = VirtioPciDevice::new(
        Box::new(FakeDevice {
            seen: seen.clone(),
            fail,
        }),
        mem,
        host.clone(),
        &slot,
    )
    .unwrap();
    Rig {
        dev,
        seen,
        host,
        intx,
        msi,
    }
}

pub(super) fn rig() -> Rig {
    rig_with(false)
}

impl Rig {
    pub(super) fn read(&mut self, offset: u64, len: usize) -> u64 {
        let mut b = [0u8; 8];
        self.dev.read_bar(0, offset, &mut b[..len]);
        u64::from_le_bytes(b)
    }
    pub(super) fn write(&mut self, offset: u64, len: usize, value: u64) {
        self.dev.write_bar(0, offset, &value.to_le_bytes()[..len]);
    }
    pub(super) fn status(&mut self) -> u8 {
        self.read(0x14, 1) as u8
    }
    pub(super) fn set_status(&mut self, s: u8) {
        self.write(0x14, 1, u64::from(s));
    }
    /// Offers `features` as the driver and asks for FEATURES_OK; returns whether it stuck.
    pub(super) fn negotiate(&mut self, features: u64) -> bool {
        self.set_status(ACKNOWLEDGE | DRIVER);
        for word in 0..2 {
            self.write(0x08, 4, word);
            self.write(0x0c, 4, features >> (32 * word) & 0xffff_ffff);
        }
        self.set_status(ACKNOWLEDGE | DRIVER | FEATURES_OK);
        self.status() & FEATURES_OK != 0
    }
    /// Sets up queue `q` with `size` entries at `base` (descriptors, then avail, then used).
    pub(super) fn setup_queue(&mut self, q: u16, size: u16, base: u64) {
        self.write(0x16, 2, u64::from(q));
        self.write(0x18, 2, u64::from(size));
        self.write(0x20, 4, base);
        self.write(0x24, 4, 0);
        self.write(0x28, 8, base + 0x1000);
        self.write(0x30, 4, base + 0x2000);
        self.write(0x34, 4, 0);
        self.write(0x1c, 2, 1);
    }
    pub(super) fn config8(&mut self, offset: usize) -> u8 {
        let mut b = [0u8];
        self.dev.read_config(offset as u64, &mut b);
        b[0]
    }
    pub(super) fn config_write(&mut self, offset: u64, data: &[u8]) {
        self.dev.write_config(offset, data);
    }
}

#[test]
fn identity_bar_and_capabilities_follow_the_modern_layout() {
    let mut r = rig();
    let mut id = [0u8; 12];
    r.dev.read_config(0, &mut id);
    assert_eq!(u16::from_le_bytes([id[0], id[1]]), 0x1af4);
    assert_eq!(u16::from_le_bytes([id[2], id[3]]), 0x1042);
    assert_eq!(id[8], 1, "revision");
    assert_eq!(&id[9..12], &[0x00, 0x80, 0x01], "mass storage, other");
    assert_eq!(r.config8(0x3d), 1, "INTA");
    assert_eq!(r.config8(0x3c), 17, "interrupt line: slot 1's GSI");
    // BAR 0 is 64-bit memory of BAR_SIZE.
    r.config_write(0x10, &[0xff; 4]);
    r.config_write(0x14, &[0xff; 4]);
    let mut bar = [0u8; 8];
    r.dev.read_config(0x10, &mut bar);
    assert_eq!(u64::from_le_bytes(bar), !(BAR_SIZE - 1) | 0x4);

    let caps = capabilities(|o| r.config8(o));
    let mut types = Vec::new();
    for &(offset, id) in &caps {
        if id == VENDOR_CAP_ID {
            let cfg_type = r.config8(offset + 3);
            let dword = |r: &mut Rig, at: usize| {
                let mut b = [0u8; 4];
                r.dev.read_config((offset + at) as u64, &mut b);
                u32::from_le_bytes(b)
            };
            let (off, len) = (dword(&mut r, 8), dword(&mut r, 12));
            assert_eq!(r.config8(offset + 4), 0, "everything in BAR 0");
            match cfg_type {
                CAP_COMMON => assert_eq!((off, len), (0, 0x38)),
                CAP_NOTIFY => {
                    assert_eq!((off, len), (0x3000, 12));
                    assert_eq!(dword(&mut r, 16), 4, "notify_off_multiplier");
                }
                CAP_ISR => assert_eq!((off, len), (0x1000, 1)),
                CAP_DEVICE => assert_eq!((off, len), (0x2000, 0x1000)),
                _ => {}
            }
            types.push(cfg_type);
        }
    }
    assert_eq!(types, vec![1, 2, 3, 4, 5]);
    let msix = caps.iter().find(|c| c.1 == MSIX_CAP_ID).unwrap().0;
    assert_eq!(
        r.config8(msix + 2),
        3,
        "table size 4 (3 queues + config), minus one"
    );
}

#[test]
fn features_ok_is_refused_for_unoffered_features_or_without_version_1() {
    let mut r = rig();
    assert_eq!(
        r.read(0x04, 4),
        u64::from(F_RING_EVENT_IDX as u32 | FEATURE_X as u32)
    );
    r.write(0x00, 4, 1);
    assert_eq!(r.read(0x04, 4), 1, "VERSION_1 in the high word");
    assert_eq!(r.read(0x12, 2), 3, "num_queues");
    assert!(
        !r.negotiate(F_VERSION_1 | 1 << 7),
        "feature 7 was not offered"
    );
    r.set_status(0);
    assert!(!r.negotiate(FEATURE_X), "no VERSION_1");
    r.set_status(0);
    assert!(r.negotiate(F_VERSION_1 | FEATURE_X));
    // Features are frozen after FEATURES_OK.
    r.write(0x08, 4, 0);
    r.write(0x0c, 4, 0);
    assert_eq!(r.read(0x0c, 4), FEATURE_X);
}

#[test]
fn driver_ok_activates_the_enabled_queues_and_starts_the_worker() {
    let mut r = rig();
    assert!(r.negotiate(F_VERSION_1 | F_RING_EVENT_IDX));
    r.setup_queue(0, 256, 0x1_0000);
    r.setup_queue(1, 64, 0x2_0000);
    assert_eq!(r.read(0x1c, 2), 1, "queue 1 enabled");
    assert_eq!(r.read(0x1e, 2), 1, "queue_notify_off is the index");
    r.set_status(ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
    assert_eq!(r.status() & (DRIVER_OK | NEEDS_RESET), DRIVER_OK);
    {
        let seen = r.seen.lock().unwrap();
        assert_eq!(
            seen.activations,
            vec![(
                F_VERSION_1 | F_RING_EVENT_IDX,
                vec![(256, 0x1_0000, 0x1_2000), (64, 0x2_0000, 0x2_2000)]
            )]
        );
    }
    assert_eq!(*r.host.started.lock().unwrap(), vec![100]);
    // Queue setup is frozen after DRIVER_OK.
    r.write(0x16, 2, 2);
    r.setup_queue(2, 64, 0x3_0000);
    assert_eq!(r.read(0x1c, 2), 0);
}

#[test]
fn notify_write_signals_the_queue_eventfd() {
    let mut r = rig();
    assert!(r.negotiate(F_VERSION_1));
    r.setup_queue(0, 16, 0x1_0000);
    r.setup_queue(1, 16, 0x2_0000);
    r.set_status(ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
    r.write(NOTIFY_OFFSET + 4, 2, 1);
    r.write(NOTIFY_OFFSET + 4, 2, 1);
    // Out of range: nothing, no panic.
    r.write(NOTIFY_OFFSET + 0xffc, 2, 0);
    let seen = r.seen.lock().unwrap();
    assert!(seen.notify[0].read().is_err(), "queue 0 was not notified");
    assert_eq!(seen.notify[1].read().unwrap(), 2);
    // The eventfds the VMM may register are the same ones.
    assert_eq!(r.dev.ioevents().len(), 3);
    r.dev.ioevents()[0].fd.write(1).unwrap();
    assert_eq!(seen.notify[0].read().unwrap(), 1);
}

#[test]
fn reset_stops_the_worker_and_resets_device_and_queues() {
    let mut r = rig();
    assert!(r.negotiate(F_VERSION_1));
    r.setup_queue(0, 16, 0x1_0000);
    r.write(0x1a, 2, 1);
    r.set_status(ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
    r.set_status(0);
    assert_eq!(r.status(), 0);
    assert_eq!(*r.host.stopped.lock().unwrap(), vec![100]);
    assert_eq!(r.seen.lock().unwrap().resets, 1);
    r.write(0x16, 2, 0);
    assert_eq!(r.read(0x1c, 2), 0, "queue disabled");
    assert_eq!(r.read(0x18, 2), 256, "size back to the maximum");
    assert_eq!(r.read(0x20, 8), 0);
    assert_eq!(r.read(0x1a, 2), u64::from(NO_VECTOR));
    // And the device comes up again.
    assert!(r.negotiate(F_VERSION_1));
    r.setup_queue(0, 16, 0x1_0000);
    r.set_status(ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
    assert_eq!(r.host.started.lock().unwrap().len(), 2);
}

#[test]
fn failed_activation_sets_needs_reset() {
    let mut r = rig_with(true);
    assert!(r.negotiate(F_VERSION_1));
    r.setup_queue(0, 16, 0x1_0000);
    r.set_status(ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
    assert_ne!(r.status() & NEEDS_RESET, 0);
    assert_eq!(*r.host.failures.lock().unwrap(), 1);
    assert!(r.host.started.lock().unwrap().is_empty());
    // The driver cannot clear the bit except by resetting.
    r.set_status(ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
    assert_ne!(r.status() & NEEDS_RESET, 0);
    r.set_status(0);
    assert_eq!(r.status(), 0);
    assert_eq!(r.seen.lock().unwrap().resets, 1);
}

#[test]
fn driver_ok_without_features_ok_needs_reset() {
    let mut r = rig();
    r.set_status(ACKNOWLEDGE | DRIVER | DRIVER_OK);
    assert_ne!(r.status() & NEEDS_RESET, 0);
    assert!(r.seen.lock().unwrap().activations.is_empty());
}

#[test]
fn bad_queue_sizes_and_addresses_are_refused() {
    let mut r = rig();
    assert!(r.negotiate(F_VERSION_1));
    r.write(0x16, 2, 1);
    for bad in [0u64, 3, 100, 256] {
        r.write(0x18, 2, bad);
        assert_eq!(r.read(0x18, 2), 128, "size {bad} ignored");
    }
    // Rings past the end of guest memory.
    r.setup_queue(1, 16, MEM_SIZE as u64 - 0x1000);
    assert_eq!(r.read(0x1c, 2), 0);
    // Misaligned descriptor table.
    r.setup_queue(1, 16, 0x1_0008);
    assert_eq!(r.read(0x1c, 2), 0);
    // A queue beyond num_queues reads zero and ignores writes.
    r.write(0x16, 2, 7);
    r.write(0x18, 2, 16);
    assert_eq!(r.read(0x18, 2), 0);
}

#[test]
fn intx_and_isr_when_msix_is_off() {
    let mut r = rig();
    assert!(r.negotiate(F_VERSION_1));
    r.setup_queue(0, 16, 0x1_0000);
    r.set_status(ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
    let line = r.intx.line(17).unwrap();
    let interrupt = r.seen.lock().unwrap().interrupt.clone().unwrap();
    interrupt.signal_queue(0);
    assert!(line.level());
    assert_eq!(r.read(ISR_OFFSET, 1), 1);
    assert!(!line.level());
    assert_eq!(r.read(ISR_OFFSET, 1), 0, "reading cleared it");
    let generation = r.read(0x15, 1);
    interrupt.signal_config();
    assert_eq!(r.read(0x15, 1), generation + 1);
    assert_eq!(r.read(ISR_OFFSET, 4), 2);
    assert!(r.msi.take().is_empty());
}

#[test]
fn msix_vectors_deliver_per_queue() {
    let mut r = rig();
    let msix = capabilities(|o| r.config8(o))
        .into_iter()
        .find(|c| c.1 == MSIX_CAP_ID)
        .unwrap()
        .0;
    r.config_write(4, &(command::MEMORY | command::BUS_MASTER).to_le_bytes());
    r.config_write(msix as u64 + 2, &CONTROL_ENABLE.to_le_bytes());
    // Vector 2: address, data, unmasked.
    r.write(MSIX_TABLE_OFFSET + 32, 4, 0xfee0_0000);
    r.write(MSIX_TABLE_OFFSET + 40, 4, 0x61);
    r.write(MSIX_TABLE_OFFSET + 44, 4, 0);
    assert!(r.negotiate(F_VERSION_1));
    r.write(0x10, 2, 0);
    r.setup_queue(0, 16, 0x1_0000);
    r.write(0x1a, 2, 2);
    assert_eq!(r.read(0x1a, 2), 2);
    r.write(0x1a, 2, 9);
    assert_eq!(r.read(0x1a, 2), u64::from(NO_VECTOR), "beyond the table");
    r.write(0x1a, 2, 2);
    r.set_status(ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
    let interrupt = r.seen.lock().unwrap().interrupt.clone().unwrap();
    interrupt.signal_queue(0);
    let got = r.msi.take();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].1.data, 0x61);
    // The config vector 0 is still masked: pending, shown in the PBA.
    interrupt.signal_config();
    assert!(r.msi.take().is_empty());
    assert_eq!(r.read(MSIX_PBA_OFFSET, 8), 1);
    assert!(!r.intx.line(17).unwrap().level());
}

#[test]
fn decoding_changes_move_the_ioevents() {
    let mut r = rig();
    r.config_write(0x10, &0xc000_0000u32.to_le_bytes());
    assert!(r.host.moves.lock().unwrap().is_empty(), "decoding is off");
    r.config_write(4, &command::MEMORY.to_le_bytes());
    r.config_write(0x10, &0xd000_0000u32.to_le_bytes());
    r.config_write(4, &0u16.to_le_bytes());
    let at = |base: u64| vec![base + 0x3000, base + 0x3004, base + 0x3008];
    assert_eq!(
        *r.host.moves.lock().unwrap(),
        vec![
            (vec![], at(0xc000_0000)),
            (at(0xc000_0000), at(0xd000_0000)),
            (at(0xd000_0000), vec![]),
        ]
    );
    assert_eq!(r.dev.ioevents()[2].addr, 0xd000_3008);
}

#[test]
fn notify_before_activation_reaches_the_eventfd() {
    let mut r = rig();
    r.write(NOTIFY_OFFSET, 2, 0);
    assert_eq!(r.dev.ioevents()[0].fd.read().unwrap(), 1);
}

#[test]
fn device_config_and_pci_cfg_capability_reach_the_bar() {
    let mut r = rig();
    assert_eq!(r.read(DEVICE_CONFIG_OFFSET + 4, 2), 0x8584);
    r.write(DEVICE_CONFIG_OFFSET + 8, 1, 0x5a);
    assert_eq!(r.seen.lock().unwrap().config_writes, vec![(8, vec![0x5a])]);
    // Through the PCI configuration access capability: num_queues at BAR 0 + 0x12.
    let cap = capabilities(|o| r.config8(o))
        .into_iter()
        .find(|&(o, id)| id == VENDOR_CAP_ID && r.config8(o + 3) == CAP_PCI_CFG)
        .unwrap()
        .0 as u64;
    r.config_write(cap + 4, &[0]);
    r.config_write(cap + 8, &0x12u32.to_le_bytes());
    r.config_write(cap + 12, &2u32.to_le_bytes());
    let mut data = [0u8; 4];
    r.dev.read_config(cap + 16, &mut data);
    assert_eq!(u16::from_le_bytes([data[0], data[1]]), 3);
    // And a write through it: queue_select = 2.
    r.config_write(cap + 8, &0x16u32.to_le_bytes());
    r.config_write(cap + 16, &2u32.to_le_bytes());
    assert_eq!(r.read(0x16, 2), 2);
}

#[test]
fn transport_behind_the_root_takes_notifications_through_the_window() {
    let intx = Arc::new(MockIntx::default());
    let mut root = PciRoot::new(
        PciRootConfig {
            ecam_base: 0xe000_0000,
            mmio_base: 0xc000_0000,
            mmio_size: 0x2000_0000,
        },
        PciIrqs {
            intx,
            msi: Arc::new(MockMsi::default()),
        },
    )
    .unwrap();
    let slot = root.reserve_slot().unwrap();
    let mem = GuestMemory::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
    let host = Arc::new(MockHost::default());
    let seen = Arc::new(Mutex::new(Seen::default()));
    let fake = Box::new(FakeDevice { seen, fail: false });
    let dev = Arc::new(Mutex::new(
        VirtioPciDevice::new(fake, mem, host.clone(), &slot).unwrap(),
    ));
    root.add_device(slot.slot, dev.clone()).unwrap();
    let bar = dev.lock().unwrap().bar_address();
    assert_eq!(bar % BAR_SIZE, 0);
    assert!((0xc000_0000..0xe000_0000).contains(&bar));
    root.config_write(0, slot.slot, 0, 4, &command::MEMORY.to_le_bytes());
    let mut num_queues = [0u8; 2];
    root.mmio_read(bar + 0x12, &mut num_queues);
    assert_eq!(u16::from_le_bytes(num_queues), 3);
    root.mmio_write(bar + NOTIFY_OFFSET + 8, &2u16.to_le_bytes());
    let d = dev.lock().unwrap();
    assert_eq!(d.ioevents()[2].fd.read().unwrap(), 1);
    assert_eq!(d.ioevents()[2].addr, bar + NOTIFY_OFFSET + 8);
    let moves = host.moves.lock().unwrap();
    assert_eq!(moves.len(), 1, "decoding turned on once");
    assert_eq!(moves[0].1[0], bar + NOTIFY_OFFSET);
}

#[test]
fn hostile_driver_never_panics() {
    let mut r = rig();
    let mut seed = 0xdead_beef_cafe_f00du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for _ in 0..50_000 {
        let x = next();
        let len = [1usize, 2, 4, 8, 3, 0][(x % 6) as usize];
        let value = next().to_le_bytes();
        let mut buf = [0u8; 8];
        match (x >> 8) % 6 {
            0 => {
                let offset = (x >> 16) % 0x110;
                r.dev.write_config(offset, &value[..len]);
                r.dev.read_config(offset, &mut buf[..len]);
            }
            1 => r.dev.write_config(x >> 16, &value[..len]),
            2 | 3 => {
                // Mostly the common configuration, where the state machine is.
                let offset = (x >> 16) % 0x40;
                r.dev.write_bar(0, offset, &value[..len]);
                r.dev.read_bar(0, offset, &mut buf[..len]);
            }
            _ => {
                let offset = (x >> 16) % (BAR_SIZE + 0x100);
                r.dev
                    .write_bar((x >> 60) as usize % 3, offset, &value[..len]);
                r.dev.read_bar(0, offset, &mut buf[..len]);
            }
        }
    }
    r.dev.read_bar(0, u64::MAX, &mut [0u8; 4]);
    r.dev.write_bar(0, u64::MAX - 1, &[1, 2, 3, 4]);
    r.dev.read_config(u64::MAX, &mut [0u8; 4]);
}
