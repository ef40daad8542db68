//! The transport's snapshot state: the PCI function, MSI-X, the common configuration, the
//! interrupt state, the queues with the worker's positions in them, and the device's own state.
//!
//! Saving asks the worker for its queue positions through the handle the transport shares with
//! the host, between two of its `handle` calls. The VMM must keep the device thread idle from the
//! save of the first device to the end of the guest memory dump (its `quiesce`), so that no
//! worker moves a ring or writes guest memory in between: workers serve chains synchronously
//! inside `handle`, so an idle device thread means no request is in flight.
//!
//! Restoring a device that was active starts it again: the transport activates the device on the
//! saved queues, each at its saved `next_avail` and `next_used`, hands the new worker to the
//! host, and writes each queue's notification eventfd once, so that requests the driver queued
//! before the snapshot are served. The ioeventfds move to the restored BAR through
//! [`WorkerHost::ioevents_moved`](super::WorkerHost::ioevents_moved), and an INTx line the
//! device held asserted is asserted again (restore the interrupt controllers first).

use std::sync::atomic::Ordering;

use serde::{Deserialize, Serialize};

use super::common::{DRIVER_OK, FEATURES_OK, NEEDS_RESET, QueueRegs};
use super::interrupt::{ISR_CONFIG, ISR_QUEUE};
use super::{NO_VECTOR, VirtioPciDevice};
use crate::legacy::lock;
use crate::pci::{CONTROL_ENABLE, CONTROL_FUNCTION_MASK, MsixConfigState, PciConfigurationState};
use crate::state::{StateError, ensure, ensure_fits};
use crate::virtio::{F_RING_EVENT_IDX, F_VERSION_1};

/// One queue: the driver's setup, its MSI-X vector, and the device's positions in the rings.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct VirtioQueueState {
    /// queue_size.
    pub size: u16,
    /// queue_enable.
    pub enabled: bool,
    /// queue_desc: the descriptor table's guest address.
    pub desc_table: u64,
    /// queue_driver: the available ring's guest address.
    pub avail_ring: u64,
    /// queue_device: the used ring's guest address.
    pub used_ring: u64,
    /// queue_msix_vector (0xffff: none).
    pub msix_vector: u16,
    /// The next available-ring entry the device takes (0 unless activated).
    pub next_avail: u16,
    /// The next used-ring entry the device fills (0 unless activated).
    pub next_used: u16,
}

/// A virtio device behind the PCI transport.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct VirtioPciState {
    /// The virtio device type, to recognise a state from another device.
    pub device_type: u32,
    /// The PCI function's configuration space (BAR 0's address, command, capabilities).
    pub config: PciConfigurationState,
    /// The MSI-X table and control.
    pub msix: MsixConfigState,
    /// device_feature_select.
    pub device_feature_select: u32,
    /// driver_feature_select.
    pub driver_feature_select: u32,
    /// The features the driver wrote (accepted once FEATURES_OK is set).
    pub driver_features: u64,
    /// device_status.
    pub device_status: u8,
    /// queue_select.
    pub queue_select: u16,
    /// msix_config: the configuration-change vector (0xffff: none).
    pub msix_config_vector: u16,
    /// config_generation.
    pub config_generation: u8,
    /// The ISR status bits not yet read (bit 0: queue, bit 1: configuration).
    pub isr: u8,
    /// Every queue the device has, in index order.
    pub queues: Vec<VirtioQueueState>,
    /// The device was running: DRIVER_OK was accepted and its worker served the queues.
    pub activated: bool,
    /// The device's own state ([`VirtioDevice::save_state`](crate::virtio::VirtioDevice::save_state)).
    pub device: serde_json::Value,
}

impl VirtioPciDevice {
    /// The transport's state, with the queue positions the worker has reached. The device
    /// thread must be idle until the snapshot is complete (see the module's documentation).
    pub fn save(&self) -> VirtioPciState {
        let positions = self
            .worker
            .as_ref()
            .map(|r| lock(&r.worker).queue_states())
            .unwrap_or_default();
        let ints = &self.interrupts;
        let queues = self
            .common
            .queues
            .iter()
            .enumerate()
            .map(|(i, q)| {
                let p = positions.get(i);
                VirtioQueueState {
                    size: q.size,
                    enabled: q.enabled,
                    desc_table: q.desc,
                    avail_ring: q.driver,
                    used_ring: q.device,
                    msix_vector: ints.queue_vector(i as u16),
                    next_avail: p.map_or(0, |p| p.next_avail),
                    next_used: p.map_or(0, |p| p.next_used),
                }
            })
            .collect();
        let c = &self.common;
        VirtioPciState {
            device_type: self.device.device_type(),
            config: self.config.save(),
            msix: ints.msix().save(),
            device_feature_select: c.device_feature_select,
            driver_feature_select: c.driver_feature_select,
            driver_features: c.driver_features,
            device_status: c.status,
            queue_select: c.queue_select,
            msix_config_vector: ints.config_vector(),
            config_generation: ints.config_generation(),
            isr: *lock(&ints.isr),
            queues,
            activated: self.worker.is_some(),
            device: self.device.save_state(),
        }
    }

    /// Restores `s` into this transport, normally fresh from [`VirtioPciDevice::new`] with the
    /// same device, once guest memory is restored. The transport's part of `s` is checked before
    /// anything changes. A transport that was already used is then reset (its worker stopped),
    /// and the device checks and takes its own state; if it refuses it, the transport stays
    /// reset. A device that was active is started again at its saved queue positions; if that
    /// fails, [`StateError::Activate`] is returned and the device shows DEVICE_NEEDS_RESET, as
    /// after a failed activation.
    pub fn restore(&mut self, s: &VirtioPciState) -> Result<(), StateError> {
        self.check(s)?;
        self.stop();
        if std::mem::take(&mut self.activated) {
            self.device.reset();
        }
        self.device.restore_state(&s.device)?;
        self.apply(s);
        if s.activated {
            let positions: Vec<(u16, u16)> = s
                .queues
                .iter()
                .map(|q| (q.next_avail, q.next_used))
                .collect();
            if let Err(source) = self.start(&positions) {
                self.common.set_needs_reset();
                return Err(StateError::Activate {
                    device: self.name,
                    source,
                });
            }
            let started = self.common.active_queues(&self.mem).len();
            for fd in self.notify.iter().take(started) {
                let _ = fd.write(1);
            }
        }
        Ok(())
    }

    /// Checks `s` against this device, changing nothing.
    fn check(&self, s: &VirtioPciState) -> Result<(), StateError> {
        let name = self.name;
        let device_type = self.device.device_type();
        ensure_fits(s.device_type == device_type, name, || {
            format!(
                "saved from device type {}, this is type {device_type}",
                s.device_type
            )
        })?;
        let queues = &self.common.queues;
        ensure_fits(s.queues.len() == queues.len(), name, || {
            format!(
                "{} queues saved, the device has {}",
                s.queues.len(),
                queues.len()
            )
        })?;
        self.config.check_state(&s.config, name)?;
        let vectors = {
            let msix = self.interrupts.msix();
            msix.check_state(&s.msix, name)?;
            msix.vectors()
        };
        let control = s
            .config
            .dwords
            .get(self.msix_cap / 4)
            .map_or(0, |d| (d >> 16) as u16);
        let control_ok = s.msix.enabled == (control & CONTROL_ENABLE != 0)
            && s.msix.function_masked == (control & CONTROL_FUNCTION_MASK != 0);
        ensure(control_ok, name, || {
            "MSI-X state disagrees with the capability's message control".into()
        })?;
        let vector_ok = |v: u16| v == NO_VECTOR || v < vectors;
        ensure(vector_ok(s.msix_config_vector), name, || {
            format!(
                "configuration vector {} beyond {vectors} vectors",
                s.msix_config_vector
            )
        })?;
        ensure(s.isr & !(ISR_QUEUE | ISR_CONFIG) == 0, name, || {
            format!("ISR {:#x} has undefined bits", s.isr)
        })?;
        self.check_status(s)?;
        let event_idx = s.driver_features & F_RING_EVENT_IDX != 0;
        for (i, (q, regs)) in s.queues.iter().zip(queues).enumerate() {
            let size_ok = q.size == QueueRegs::new(regs.max).size
                || (q.size.is_power_of_two() && q.size <= regs.max);
            ensure(size_ok, name, || {
                format!("queue {i} size {} (maximum {})", q.size, regs.max)
            })?;
            ensure(vector_ok(q.msix_vector), name, || {
                format!(
                    "queue {i} vector {} beyond {vectors} vectors",
                    q.msix_vector
                )
            })?;
            let saved = QueueRegs {
                max: regs.max,
                size: q.size,
                enabled: q.enabled,
                desc: q.desc_table,
                driver: q.avail_ring,
                device: q.used_ring,
            };
            ensure(
                !q.enabled || saved.queue(&self.mem, event_idx).is_some(),
                name,
                || format!("queue {i} is enabled with rings that are not valid in guest memory"),
            )?;
            ensure(
                q.next_avail.wrapping_sub(q.next_used) <= q.size,
                name,
                || {
                    format!(
                        "queue {i} has {} chains in flight, more than its size {}",
                        q.next_avail.wrapping_sub(q.next_used),
                        q.size
                    )
                },
            )?;
        }
        Ok(())
    }

    /// Checks that the status, the features and `activated` agree.
    fn check_status(&self, s: &VirtioPciState) -> Result<(), StateError> {
        let (name, status) = (self.name, s.device_status);
        if status & FEATURES_OK != 0 {
            let offered = self.common.device_features;
            let ok = s.driver_features & !offered == 0 && s.driver_features & F_VERSION_1 != 0;
            ensure(ok, name, || {
                format!(
                    "FEATURES_OK with features {:#x}, the device offers {offered:#x}",
                    s.driver_features
                )
            })?;
        }
        let running = DRIVER_OK | FEATURES_OK;
        let consistent = if s.activated {
            status & (running | NEEDS_RESET) == running
        } else if status & DRIVER_OK != 0 {
            // DRIVER_OK without a worker: only after a failed activation.
            status & NEEDS_RESET != 0
        } else {
            status & NEEDS_RESET == 0
        };
        ensure(consistent, name, || {
            format!(
                "device status {status:#04x} with the device {}",
                if s.activated { "running" } else { "stopped" }
            )
        })
    }

    /// Applies a state [`VirtioPciDevice::check`] accepted: registers, interrupts, decoding.
    fn apply(&mut self, s: &VirtioPciState) {
        self.config.apply_state(&s.config);
        let c = &mut self.common;
        c.device_feature_select = s.device_feature_select;
        c.driver_feature_select = s.driver_feature_select;
        c.driver_features = s.driver_features;
        c.status = s.device_status;
        c.queue_select = s.queue_select;
        for (regs, q) in c.queues.iter_mut().zip(&s.queues) {
            regs.size = q.size;
            regs.enabled = q.enabled;
            regs.desc = q.desc_table;
            regs.driver = q.avail_ring;
            regs.device = q.used_ring;
        }
        self.activated = s.device_status & DRIVER_OK != 0;

        let ints = &self.interrupts;
        ints.msix().apply_state(&s.msix);
        ints.config_vector
            .store(s.msix_config_vector, Ordering::SeqCst);
        for (v, q) in ints.queue_vectors.iter().zip(&s.queues) {
            v.store(q.msix_vector, Ordering::SeqCst);
        }
        ints.config_generation
            .store(s.config_generation, Ordering::SeqCst);
        let intx_disabled = self.config.intx_disabled();
        {
            let mut isr = lock(&ints.isr);
            *isr = s.isr;
            ints.intx_disabled.store(intx_disabled, Ordering::SeqCst);
            ints.intx.set_level(s.isr != 0 && !intx_disabled);
        }
        self.update_decoding();
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{
        ACKNOWLEDGE, DRIVER, DRIVER_OK, FEATURES_OK, MEM_SIZE, NEEDS_RESET, Rig, rig, rig_with,
    };
    use super::*;
    use crate::pci::{MSIX_CAP_ID, PciDevice, capabilities, command};

    const RUNNING: u8 = ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK;
    const BAR: u64 = 0xc000_0000;

    /// A driver that set everything up: BAR 0 decoded, MSI-X on, two queues, DRIVER_OK.
    fn running() -> Rig {
        let mut r = rig();
        r.config_write(0x10, &(BAR as u32).to_le_bytes());
        r.config_write(4, &(command::MEMORY | command::BUS_MASTER).to_le_bytes());
        let msix = capabilities(|o| r.config8(o))
            .into_iter()
            .find(|c| c.1 == MSIX_CAP_ID)
            .unwrap()
            .0;
        r.config_write(msix as u64 + 2, &CONTROL_ENABLE.to_le_bytes());
        r.write(super::super::MSIX_TABLE_OFFSET + 16, 4, 0xfee0_0000);
        r.write(super::super::MSIX_TABLE_OFFSET + 24, 4, 0x51);
        r.write(super::super::MSIX_TABLE_OFFSET + 28, 4, 0);
        assert!(r.negotiate(F_VERSION_1 | F_RING_EVENT_IDX));
        r.setup_queue(0, 256, 0x1_0000);
        r.write(0x1a, 2, 1);
        r.setup_queue(1, 64, 0x2_0000);
        r.set_status(RUNNING);
        assert_eq!(r.host.started.lock().unwrap().len(), 1);
        r
    }

    /// Moves the worker on in its rings, as if it had served `served` chains of each queue.
    fn serve(r: &Rig, positions: &[(u16, u16)]) {
        let seen = r.seen.lock().unwrap();
        let mut queues = seen.worker_queues.lock().unwrap();
        for (q, &(avail, used)) in queues.iter_mut().zip(positions) {
            q.next_avail = avail;
            q.next_used = used;
        }
    }

    #[test]
    fn restored_transport_restarts_its_device_at_the_saved_queue_positions() {
        let a = running();
        serve(&a, &[(7, 5), (3, 3)]);
        let saved = a.dev.save();
        assert!(saved.activated);
        let json = serde_json::to_string(&saved).unwrap();
        let saved: VirtioPciState = serde_json::from_str(&json).unwrap();

        let mut b = rig();
        b.dev.restore(&saved).unwrap();
        {
            let seen = b.seen.lock().unwrap();
            assert_eq!(
                seen.activations,
                vec![(
                    F_VERSION_1 | F_RING_EVENT_IDX,
                    vec![(256, 0x1_0000, 0x1_2000), (64, 0x2_0000, 0x2_2000)]
                )]
            );
            assert_eq!(seen.positions, vec![vec![(7, 5), (3, 3)]]);
            for fd in &seen.notify {
                assert_eq!(fd.read().unwrap(), 1, "each queue is looked at once");
            }
        }
        assert_eq!(*b.host.started.lock().unwrap(), vec![100]);
        let at = |base: u64| vec![base + 0x3000, base + 0x3004, base + 0x3008];
        assert_eq!(*b.host.moves.lock().unwrap(), vec![(vec![], at(BAR))]);
        assert_eq!(b.dev.save(), saved, "and saves the same state again");
        assert_eq!(b.status(), RUNNING);
        b.write(0x16, 2, 0);
        assert_eq!((b.read(0x18, 2), b.read(0x1a, 2)), (256, 1));

        // The restored interrupts work: queue 0 signals MSI-X vector 1.
        let interrupt = b.seen.lock().unwrap().interrupt.clone().unwrap();
        interrupt.signal_queue(0);
        let got = b.msi.take();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].1.data, 0x51);
        // And a driver reset after the restore stops the new worker.
        b.set_status(0);
        assert_eq!(*b.host.stopped.lock().unwrap(), vec![100]);
        assert_eq!(b.seen.lock().unwrap().resets, 1);
    }

    #[test]
    fn unread_isr_asserts_intx_again() {
        let mut a = rig();
        assert!(a.negotiate(F_VERSION_1));
        a.setup_queue(0, 16, 0x1_0000);
        a.set_status(RUNNING);
        let interrupt = a.seen.lock().unwrap().interrupt.clone().unwrap();
        interrupt.signal_queue(0);
        interrupt.signal_config();
        let saved = a.dev.save();
        assert_eq!((saved.isr, saved.config_generation), (3, 1));

        let mut b = rig();
        b.dev.restore(&saved).unwrap();
        let line = b.intx.line(17).unwrap();
        assert!(line.level());
        assert_eq!(b.read(0x15, 1), 1, "config generation");
        assert_eq!(b.read(super::super::ISR_OFFSET, 1), 3);
        assert!(!line.level());
    }

    #[test]
    fn device_set_up_but_not_started_starts_when_the_driver_says_so() {
        let mut a = rig();
        assert!(a.negotiate(F_VERSION_1));
        a.setup_queue(0, 32, 0x1_0000);
        let saved = a.dev.save();
        assert!(!saved.activated);
        let mut b = rig();
        b.dev.restore(&saved).unwrap();
        assert!(b.seen.lock().unwrap().activations.is_empty());
        assert_eq!(b.status(), ACKNOWLEDGE | DRIVER | FEATURES_OK);
        b.set_status(RUNNING);
        let seen = b.seen.lock().unwrap();
        assert_eq!(
            seen.activations,
            vec![(F_VERSION_1, vec![(32, 0x1_0000, 0x1_2000)])]
        );
    }

    #[test]
    fn failed_activations_stay_failed_and_a_failing_restart_is_reported() {
        let mut a = rig_with(true);
        assert!(a.negotiate(F_VERSION_1));
        a.setup_queue(0, 16, 0x1_0000);
        a.set_status(RUNNING);
        let failed = a.dev.save();
        assert!(!failed.activated);
        let mut b = rig();
        b.dev.restore(&failed).unwrap();
        assert_eq!(b.status(), RUNNING | NEEDS_RESET);
        b.set_status(0);
        assert_eq!(
            b.seen.lock().unwrap().resets,
            1,
            "the device is reset as after a failure"
        );

        let saved = running().dev.save();
        let mut c = rig_with(true);
        assert!(matches!(
            c.dev.restore(&saved),
            Err(StateError::Activate { device: "fake", .. })
        ));
        assert_ne!(c.status() & NEEDS_RESET, 0);
    }

    #[test]
    fn corrupt_states_are_refused_and_change_nothing() {
        let good = running().dev.save();
        let mismatches: [fn(&mut VirtioPciState); 3] = [
            |s| s.device_type += 1,
            |s| {
                s.queues.pop();
            },
            |s| s.config.dwords[0] = 0x1234_1af4,
        ];
        let invalid: [fn(&mut VirtioPciState); 10] = [
            |s| s.queues[0].size = 3,
            |s| {
                s.queues[2].enabled = true;
                s.queues[2].desc_table = MEM_SIZE as u64;
            },
            |s| s.queues[0].msix_vector = 9,
            |s| s.msix_config_vector = 100,
            |s| s.isr = 4,
            |s| s.device_status = ACKNOWLEDGE | DRIVER,
            |s| s.device_status |= NEEDS_RESET,
            |s| s.driver_features |= 1 << 7,
            |s| s.queues[0].next_avail = 300,
            |s| s.msix.enabled = false,
        ];
        let mut b = rig();
        for corrupt in mismatches {
            let mut bad = good.clone();
            corrupt(&mut bad);
            assert!(matches!(
                b.dev.restore(&bad),
                Err(StateError::Mismatch { .. })
            ));
        }
        for corrupt in invalid {
            let mut bad = good.clone();
            corrupt(&mut bad);
            assert!(matches!(
                b.dev.restore(&bad),
                Err(StateError::Invalid { .. })
            ));
        }
        assert!(b.seen.lock().unwrap().activations.is_empty());
        assert_eq!(b.status(), 0);
        assert!(b.host.moves.lock().unwrap().is_empty());
        let mut bad = good.clone();
        bad.device = serde_json::json!({ "in_flight": 3 });
        assert!(matches!(
            b.dev.restore(&bad),
            Err(StateError::Mismatch { device: "fake", .. })
        ));
        b.dev.restore(&good).unwrap();
    }

    #[test]
    fn hostile_states_never_panic() {
        let good = running().dev.save();
        let mut b = rig();
        let mut seed = 0x1234_5678_9abc_def1u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..2000 {
            let mut s = good.clone();
            for _ in 0..1 + next() % 3 {
                let (x, v) = (next(), next());
                let q = &mut s.queues[(x >> 8) as usize % 3];
                match x % 12 {
                    0 => q.size = v as u16,
                    1 => q.desc_table = v,
                    2 => q.used_ring = v % (2 * MEM_SIZE as u64),
                    3 => q.next_avail = v as u16,
                    4 => q.enabled = v & 1 == 1,
                    5 => s.device_status = v as u8,
                    6 => s.driver_features = v,
                    7 => s.queue_select = v as u16,
                    8 => s.isr = v as u8 & 3,
                    9 => s.activated = v & 1 == 1,
                    10 => s.msix.pending = vec![v as u16 % 4],
                    _ => {
                        let i = v as usize % s.config.dwords.len();
                        s.config.dwords[i] ^= next() as u32;
                    }
                }
            }
            let _ = b.dev.restore(&s);
            let mut buf = [0u8; 8];
            for offset in [0x12, 0x14, 0x18, 0x1c, 0x20] {
                b.dev.read_bar(0, offset, &mut buf[..2]);
            }
            b.dev.read_config(0x40, &mut buf[..4]);
        }
        b.dev.restore(&good).unwrap();
        assert_eq!(b.status(), RUNNING);
    }
}
