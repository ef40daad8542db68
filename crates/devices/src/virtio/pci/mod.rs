//! The virtio-pci transport (modern, virtio 1.x): a [`VirtioDevice`] as a PCI function.
//!
//! BAR 0 (64-bit memory, 32 KiB) holds every structure, each announced by a vendor-specific
//! capability:
//!
//! ```text
//! 0x0000  common configuration (0x38 bytes)
//! 0x1000  ISR status (1 byte; reading clears it and lowers INTx)
//! 0x2000  device configuration (4 KiB window onto VirtioDevice::read_config)
//! 0x3000  notifications: queue n at 0x3000 + 4 n (notify_off_multiplier 4)
//! 0x4000  MSI-X table (one vector per queue plus one for configuration changes)
//! 0x5000  MSI-X pending-bit array
//! ```
//!
//! A write to a queue's notification address writes that queue's eventfd. The eventfds exist
//! from construction on, so the VMM may register them as KVM ioeventfds at those addresses:
//! [`WorkerHost::ioevents_moved`] reports every change of the decoded addresses (memory
//! decoding turned on or off, BAR 0 moved while decoding). Without that, as on the software
//! CPU, the write reaches the transport and the transport signals the eventfd.
//!
//! Lock order: the transport (under the PCI root), then its interrupt state; the worker locks
//! only the interrupt state. [`WorkerHost::stop`] may therefore wait for the worker.
//!
//! When the driver sets DRIVER_OK the transport activates the device and hands its worker to
//! the [`WorkerHost`]; a reset (device_status 0) stops the worker and resets the device. An
//! activation that fails sets DEVICE_NEEDS_RESET, which the driver sees.
//!
//! The host runs the worker through a handle the transport shares, so that a snapshot can ask
//! the worker for its queue positions between two `handle` calls: its snapshot state is
//! [`VirtioPciState`] (`state.rs`).

mod common;
mod interrupt;
mod state;

use std::os::fd::RawFd;
use std::sync::{Arc, Mutex};

use virtio_queue::{QueueState, QueueT};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use self::common::{Action, CommonConfig};
use self::interrupt::Interrupts;
use super::{ActivateError, Activation, ActiveQueue, GuestMemory, VirtioDevice, VirtioWorker};
use crate::legacy::lock;
use crate::pci::{BarKind, BarOffset, PciConfiguration, PciDevice, PciError, PciHeader, PciSlot};

pub use self::interrupt::NO_VECTOR;
pub use self::state::{VirtioPciState, VirtioQueueState};

/// Vendor ID of virtio devices.
pub const VIRTIO_PCI_VENDOR_ID: u16 = 0x1af4;
/// Device ID of a modern virtio device of type 0: add the device type.
pub const VIRTIO_PCI_DEVICE_ID_BASE: u16 = 0x1040;
/// Subsystem ID of popek's virtio devices.
pub const VIRTIO_PCI_SUBSYSTEM_ID: u16 = 0x1100;
/// Size of BAR 0.
pub const BAR_SIZE: u64 = 0x8000;
/// Offset of the common configuration in BAR 0.
pub const COMMON_OFFSET: u64 = 0x0000;
/// Offset of the ISR status byte in BAR 0.
pub const ISR_OFFSET: u64 = 0x1000;
/// Offset of the device configuration in BAR 0.
pub const DEVICE_CONFIG_OFFSET: u64 = 0x2000;
/// Length of the device configuration window.
pub const DEVICE_CONFIG_LEN: u64 = 0x1000;
/// Offset of the notification area in BAR 0.
pub const NOTIFY_OFFSET: u64 = 0x3000;
/// Bytes between two queues' notification addresses.
pub const NOTIFY_OFF_MULTIPLIER: u32 = 4;
/// Offset of the MSI-X table in BAR 0.
pub const MSIX_TABLE_OFFSET: u64 = 0x4000;
/// Offset of the MSI-X pending-bit array in BAR 0.
pub const MSIX_PBA_OFFSET: u64 = 0x5000;
/// Most queues a device may have: the notification area's 4 KiB.
pub const MAX_QUEUES: usize = 1024;
/// Most MSI-X vectors: the table's 4 KiB. Devices with more queues share vectors.
pub const MAX_VECTORS: u16 = 256;

const REGION_LEN: u64 = 0x1000;
/// Capability ID of vendor-specific capabilities.
const VENDOR_CAP_ID: u8 = 0x09;
/// virtio_pci_cap.cfg_type values.
const CAP_COMMON: u8 = 1;
const CAP_NOTIFY: u8 = 2;
const CAP_ISR: u8 = 3;
const CAP_DEVICE: u8 = 4;
const CAP_PCI_CFG: u8 = 5;
/// The PCI configuration access capability's data window, from the capability's start.
const PCI_CFG_DATA: usize = 16;

/// A queue's notification address and the eventfd its notifications go to.
#[derive(Debug, Clone, Copy)]
pub struct IoEvent<'a> {
    /// Guest-physical address of the queue's notification register (2-byte writes).
    pub addr: u64,
    /// The queue.
    pub queue: u16,
    /// The eventfd to signal.
    pub fd: &'a EventFd,
}

/// Runs workers for the transport: the VMM's device thread.
///
/// For a snapshot the host must be able to stay idle (call no worker) from the first transport's
/// [`VirtioPciDevice::save`] to the end of the guest memory dump: workers serve chains
/// synchronously inside [`VirtioWorker::handle`], so an idle host means no request is in flight
/// and no ring moves. A worker the host runs is shared with its transport, which locks it to read
/// its queue positions; the host's calls therefore wait while a transport saves.
pub trait WorkerHost: Send + Sync {
    /// Starts serving `worker`; returns an id for [`WorkerHost::stop`].
    fn start(&self, worker: Box<dyn VirtioWorker>) -> u64;
    /// Stops and drops the worker `id`. When this returns, the worker no longer runs and will
    /// not touch guest memory or signal interrupts.
    fn stop(&self, id: u64);
    /// The notification addresses the guest decodes changed: `old` are no longer decoded
    /// (empty the first time), `new` are (empty when the guest turned memory decoding off).
    /// A VMM with ioeventfds unregisters `old` and registers `new`; the default does nothing,
    /// and the transport signals the eventfds itself.
    fn ioevents_moved(&self, old: &[IoEvent<'_>], new: &[IoEvent<'_>]) {
        let _ = (old, new);
    }
    /// Activating device `device` failed with `error` (the driver sees DEVICE_NEEDS_RESET).
    fn activation_failed(&self, device: &'static str, error: &ActivateError) {
        let _ = (device, error);
    }
}

/// Errors of creating a transport.
#[derive(Debug, thiserror::Error)]
pub enum VirtioPciError {
    /// More queues than the notification area holds.
    #[error("virtio {device}: {queues} queues, more than {MAX_QUEUES}")]
    TooManyQueues {
        /// The device's name.
        device: &'static str,
        /// How many it asked for.
        queues: usize,
    },
    /// A device type beyond the modern device ID range.
    #[error("virtio {device}: device type {device_type} has no PCI device ID")]
    DeviceType {
        /// The device's name.
        device: &'static str,
        /// Its type.
        device_type: u32,
    },
    /// A queue's eventfd could not be created.
    #[error("virtio {device}: cannot create a queue eventfd")]
    EventFd {
        /// The device's name.
        device: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The PCI function could not be built.
    #[error("virtio {device}: PCI setup")]
    Pci {
        /// The device's name.
        device: &'static str,
        /// Why.
        #[source]
        source: PciError,
    },
}

/// A virtio device behind the PCI transport.
pub struct VirtioPciDevice {
    device: Box<dyn VirtioDevice>,
    name: &'static str,
    config: PciConfiguration,
    common: CommonConfig,
    interrupts: Arc<Interrupts>,
    notify: Vec<EventFd>,
    mem: GuestMemory,
    host: Arc<dyn WorkerHost>,
    worker: Option<Running>,
    /// Activation was tried since the last reset: the device needs its own reset.
    activated: bool,
    msix_cap: usize,
    pci_cfg_cap: usize,
    /// BAR 0's address while memory decoding is on.
    decoded: Option<u64>,
}

/// A worker the host runs, shared with the transport.
type SharedWorker = Arc<Mutex<Box<dyn VirtioWorker>>>;

/// The worker of an active device: its id at the host, and the worker itself.
struct Running {
    id: u64,
    worker: SharedWorker,
}

/// What the host runs: the shared worker, locked for each call. The device thread's calls and a
/// snapshot's [`VirtioWorker::queue_states`] therefore never overlap. The worker locks only the
/// interrupt state, never the transport, so the transport may wait for this lock.
struct HostedWorker(SharedWorker);

impl VirtioWorker for HostedWorker {
    fn sources(&self) -> Vec<(RawFd, u64)> {
        lock(&self.0).sources()
    }
    fn handle(&mut self, token: u64) {
        lock(&self.0).handle(token);
    }
    fn sources_changed(&mut self) -> bool {
        lock(&self.0).sources_changed()
    }
    fn queue_states(&self) -> Vec<QueueState> {
        lock(&self.0).queue_states()
    }
}

fn vendor_cap(cfg_type: u8, offset: u64, length: u64, extra: &[u8]) -> Vec<u8> {
    let mut cap = vec![
        VENDOR_CAP_ID,
        0,
        (16 + extra.len()) as u8,
        cfg_type,
        0,
        0,
        0,
        0,
    ];
    cap.extend_from_slice(&(offset as u32).to_le_bytes());
    cap.extend_from_slice(&(length as u32).to_le_bytes());
    cap.extend_from_slice(extra);
    cap
}

fn overlaps(offset: u64, len: usize, start: usize, field_len: usize) -> bool {
    offset < (start + field_len) as u64 && offset.saturating_add(len as u64) > start as u64
}

impl VirtioPciDevice {
    /// Wraps `device` for the PCI slot `slot`. Guest memory `mem` goes to the device at
    /// activation; `host` runs its worker.
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemory,
        host: Arc<dyn WorkerHost>,
        slot: &PciSlot,
    ) -> Result<Self, VirtioPciError> {
        let name = device.name();
        let pci = |source| VirtioPciError::Pci {
            device: name,
            source,
        };
        let max_sizes = device.queue_max_sizes();
        if max_sizes.len() > MAX_QUEUES {
            return Err(VirtioPciError::TooManyQueues {
                device: name,
                queues: max_sizes.len(),
            });
        }
        let device_type = device.device_type();
        let device_id = u16::try_from(device_type)
            .ok()
            .filter(|&t| t < 0x40)
            .ok_or(VirtioPciError::DeviceType {
                device: name,
                device_type,
            })?;
        let class_code = match device_type {
            super::device_type::BLOCK => 0x01_8000,
            super::device_type::NET => 0x02_0000,
            _ => 0xff_0000,
        };
        let mut config = PciConfiguration::new(&PciHeader {
            vendor_id: VIRTIO_PCI_VENDOR_ID,
            device_id: VIRTIO_PCI_DEVICE_ID_BASE + device_id,
            revision: 1,
            class_code,
            subsystem_vendor_id: VIRTIO_PCI_VENDOR_ID,
            subsystem_id: VIRTIO_PCI_SUBSYSTEM_ID,
            interrupt_pin: 1,
        });
        config.set_interrupt_line(slot.intx_gsi as u8);
        config
            .add_bar(0, BarKind::Memory64, BAR_SIZE, false)
            .map_err(pci)?;
        let queues = max_sizes.len();
        let notify_len = (queues.max(1) as u64) * u64::from(NOTIFY_OFF_MULTIPLIER);
        let caps = [
            vendor_cap(CAP_COMMON, COMMON_OFFSET, common::COMMON_LEN as u64, &[]),
            vendor_cap(
                CAP_NOTIFY,
                NOTIFY_OFFSET,
                notify_len,
                &NOTIFY_OFF_MULTIPLIER.to_le_bytes(),
            ),
            vendor_cap(CAP_ISR, ISR_OFFSET, 1, &[]),
            vendor_cap(CAP_DEVICE, DEVICE_CONFIG_OFFSET, DEVICE_CONFIG_LEN, &[]),
        ];
        for cap in &caps {
            config.add_capability(cap, &[]).map_err(pci)?;
        }
        // The PCI configuration access capability: bar, offset, length and data are the
        // driver's to write.
        let mut cfg_mask = [0u8; 20];
        cfg_mask[4] = 0xff;
        cfg_mask[8..20].fill(0xff);
        let pci_cfg_cap = config
            .add_capability(&vendor_cap(CAP_PCI_CFG, 0, 0, &[0; 4]), &cfg_mask)
            .map_err(pci)?;

        let vectors = (queues as u16).saturating_add(1).min(MAX_VECTORS);
        let msix = slot.msi.allocate(vectors).map_err(pci)?;
        let (cap, mask) = msix.capability(
            BarOffset {
                bar: 0,
                offset: MSIX_TABLE_OFFSET as u32,
            },
            BarOffset {
                bar: 0,
                offset: MSIX_PBA_OFFSET as u32,
            },
        );
        let msix_cap = config.add_capability(&cap, &mask).map_err(pci)?;

        let notify = (0..queues)
            .map(|_| EventFd::new(EFD_NONBLOCK))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| VirtioPciError::EventFd {
                device: name,
                source,
            })?;
        Ok(Self {
            common: CommonConfig::new(device.features(), &max_sizes),
            interrupts: Arc::new(Interrupts::new(msix, slot.intx.clone(), queues)),
            device,
            name,
            config,
            notify,
            mem,
            host,
            worker: None,
            activated: false,
            msix_cap,
            pci_cfg_cap,
            decoded: None,
        })
    }

    /// The device's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The device status register (virtio 1.x, 2.1).
    pub fn device_status(&self) -> u8 {
        self.common.status()
    }

    /// BAR 0's current address.
    pub fn bar_address(&self) -> u64 {
        self.config.bar(0).map_or(0, |b| b.addr)
    }

    /// Each queue's notification address at BAR 0's current address (decoded or not), with
    /// its eventfd. For a VMM that registers ioeventfds once after [`PciRoot::add_device`]
    /// rather than following [`WorkerHost::ioevents_moved`] (not both: the moves would
    /// register the same addresses again). Registering once misses a guest that moves BAR 0.
    ///
    /// [`PciRoot::add_device`]: crate::pci::PciRoot::add_device
    pub fn ioevents(&self) -> Vec<IoEvent<'_>> {
        self.ioevents_at(self.bar_address())
    }

    fn ioevents_at(&self, base: u64) -> Vec<IoEvent<'_>> {
        (0u16..)
            .zip(&self.notify)
            .map(|(queue, fd)| IoEvent {
                addr: base + NOTIFY_OFFSET + u64::from(queue) * u64::from(NOTIFY_OFF_MULTIPLIER),
                queue,
                fd,
            })
            .collect()
    }

    /// Tells the host when the decoded notification addresses change.
    fn update_decoding(&mut self) {
        let now = self.config.memory_enabled().then(|| self.bar_address());
        if now == self.decoded {
            return;
        }
        let old = self
            .decoded
            .map(|b| self.ioevents_at(b))
            .unwrap_or_default();
        let new = now.map(|b| self.ioevents_at(b)).unwrap_or_default();
        self.host.ioevents_moved(&old, &new);
        self.decoded = now;
    }

    fn driver_ok(&mut self) {
        if self.worker.is_some() || self.activated {
            return;
        }
        self.activated = true;
        if !self.common.features_ok() {
            return self.fail();
        }
        if let Err(error) = self.start(&[]) {
            self.host.activation_failed(self.name, &error);
            self.fail();
        }
    }

    /// Activates the device on the enabled queues and hands its worker to the host. Queue `i`
    /// starts at `positions[i]` (next_avail, next_used), or at 0 beyond `positions`.
    fn start(&mut self, positions: &[(u16, u16)]) -> Result<(), ActivateError> {
        let mut queues = Vec::new();
        for (i, (mut queue, fd)) in self
            .common
            .active_queues(&self.mem)
            .into_iter()
            .zip(&self.notify)
            .enumerate()
        {
            if let Some(&(next_avail, next_used)) = positions.get(i) {
                queue.set_next_avail(next_avail);
                queue.set_next_used(next_used);
            }
            let notify = fd.try_clone().map_err(|source| ActivateError::Host {
                device: self.name,
                what: "cannot duplicate a queue eventfd".into(),
                source,
            })?;
            queues.push(ActiveQueue { queue, notify });
        }
        let activation = Activation {
            mem: self.mem.clone(),
            features: self.common.driver_features(),
            queues,
            interrupt: self.interrupts.clone(),
        };
        let worker: SharedWorker = Arc::new(Mutex::new(self.device.activate(activation)?));
        let id = self.host.start(Box::new(HostedWorker(worker.clone())));
        self.worker = Some(Running { id, worker });
        Ok(())
    }

    /// Stops the worker, if one runs. The host drops it last, after it stopped watching its fds.
    fn stop(&mut self) {
        if let Some(Running { id, worker }) = self.worker.take() {
            drop(worker);
            self.host.stop(id);
        }
    }

    /// Sets DEVICE_NEEDS_RESET and tells the driver through a configuration interrupt.
    fn fail(&mut self) {
        self.common.set_needs_reset();
        use super::VirtioInterrupt;
        self.interrupts.signal_config();
    }

    fn reset(&mut self) {
        self.stop();
        if std::mem::take(&mut self.activated) {
            self.device.reset();
        }
        self.common.reset();
        self.interrupts.reset();
        for fd in &self.notify {
            // Drop notifications from before the reset; the fds are non-blocking.
            let _ = fd.read();
        }
    }

    /// The PCI configuration access capability's bar, offset and length fields.
    fn pci_cfg_target(&self) -> Option<(u64, usize)> {
        let cap = self.pci_cfg_cap;
        let bar = self.config.read_dword(cap + 4) & 0xff;
        let offset = self.config.read_dword(cap + 8);
        let length = self.config.read_dword(cap + 12) as usize;
        (bar == 0 && matches!(length, 1 | 2 | 4)).then_some((u64::from(offset), length))
    }
}

impl PciDevice for VirtioPciDevice {
    fn read_config(&mut self, offset: u64, data: &mut [u8]) {
        let data_field = self.pci_cfg_cap + PCI_CFG_DATA;
        if overlaps(offset, data.len(), data_field, 4)
            && let Some((bar_offset, length)) = self.pci_cfg_target()
        {
            let mut window = [0u8; 4];
            self.read_bar(0, bar_offset, &mut window[..length]);
            self.config.set_bytes(data_field, &window);
        }
        self.config.read(offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        self.config.write(offset, data);
        let len = data.len();
        if overlaps(offset, len, self.msix_cap + 2, 2) {
            let control = (self.config.read_dword(self.msix_cap) >> 16) as u16;
            self.interrupts.msix().set_control(control);
        }
        if overlaps(offset, len, 4, 2) {
            self.interrupts
                .set_intx_disabled(self.config.intx_disabled());
        }
        let data_field = self.pci_cfg_cap + PCI_CFG_DATA;
        if overlaps(offset, len, data_field, 4)
            && let Some((bar_offset, length)) = self.pci_cfg_target()
        {
            let window = self.config.read_dword(data_field).to_le_bytes();
            self.write_bar(0, bar_offset, &window[..length]);
        }
        self.update_decoding();
    }

    fn read_bar(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if bar != 0 {
            return;
        }
        let within = offset % REGION_LEN;
        match offset - within {
            COMMON_OFFSET => self.common.read(&self.interrupts, within, data),
            ISR_OFFSET => {
                if let (0, Some(b)) = (within, data.first_mut()) {
                    *b = self.interrupts.read_isr();
                }
            }
            DEVICE_CONFIG_OFFSET => self.device.read_config(within, data),
            MSIX_TABLE_OFFSET => self.interrupts.msix().read_table(within, data),
            MSIX_PBA_OFFSET => self.interrupts.msix().read_pba(within, data),
            _ => {}
        }
    }

    fn write_bar(&mut self, bar: usize, offset: u64, data: &[u8]) {
        if bar != 0 {
            return;
        }
        let within = offset % REGION_LEN;
        match offset - within {
            COMMON_OFFSET => match self.common.write(&self.interrupts, &self.mem, within, data) {
                Action::None => {}
                Action::Reset => self.reset(),
                Action::DriverOk => self.driver_ok(),
            },
            DEVICE_CONFIG_OFFSET => self.device.write_config(within, data),
            NOTIFY_OFFSET => {
                let queue = within / u64::from(NOTIFY_OFF_MULTIPLIER);
                if let Some(fd) = usize::try_from(queue).ok().and_then(|q| self.notify.get(q)) {
                    let _ = fd.write(1);
                }
            }
            MSIX_TABLE_OFFSET => self.interrupts.msix().write_table(within, data),
            _ => {}
        }
    }
}

impl Drop for VirtioPciDevice {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests;
