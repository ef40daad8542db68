//! The VM's virtio devices on PCI: disks, NICs, entropy and vsock, built from the configuration.

use std::sync::{Arc, Mutex};

use devices::pci::{PciError, PciRoot};
use devices::virtio::block::{Block, BlockStats};
use devices::virtio::net::{Net, NetStats};
use devices::virtio::pci::{VirtioPciDevice, VirtioPciError, WorkerHost};
use devices::virtio::rng::{Rng, RngStats};
use devices::virtio::vsock::{Vsock, VsockStats};
use devices::virtio::{GuestMemory, VirtioDevice};

use crate::config::VmConfig;
use crate::device_config::{DiskFormat, NetBackendConfig};
use crate::device_thread::DeviceThread;

/// Errors of building the devices: each names the device and the host resource.
#[derive(Debug, thiserror::Error)]
pub enum VirtioSetupError {
    /// A disk image could not be opened or is invalid.
    #[error("--disk {path}")]
    Disk {
        /// The image.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: block::Error,
    },
    /// A tap could not be opened or created.
    #[error("--net: cannot set up the tap")]
    Tap(#[source] net_host::Error),
    /// The tap could not join its bridge.
    #[error("--net bridge={bridge}")]
    Bridge {
        /// The bridge.
        bridge: String,
        /// Why.
        #[source]
        source: net_host::Error,
    },
    /// The vsock socket could not be set up.
    #[error("--vsock")]
    Vsock(#[source] devices::virtio::vsock::VsockError),
    /// The PCI bus refused the device.
    #[error("PCI")]
    Pci(#[from] PciError),
    /// The transport could not be built.
    #[error(transparent)]
    Transport(#[from] VirtioPciError),
    /// The device thread could not start.
    #[error("Cannot start the device thread")]
    Thread(#[source] std::io::Error),
}

/// Counters of one device, for metrics.
#[derive(Clone)]
pub enum DeviceStats {
    /// A disk.
    Block(Arc<BlockStats>),
    /// A NIC.
    Net(Arc<NetStats>),
    /// The entropy device.
    Rng(Arc<RngStats>),
    /// The vsock device.
    Vsock(Arc<VsockStats>),
}

/// One NIC's host side, as the user may want to know it.
#[derive(Debug, Clone)]
pub struct NicInfo {
    /// The tap's name.
    pub tap: String,
    /// The guest's MAC address.
    pub mac: [u8; 6],
}

/// The virtio devices of a VM and the thread that serves them.
pub struct VirtioDevices {
    /// The device thread (also the transports' [`WorkerHost`]).
    pub thread: Arc<DeviceThread>,
    /// Per device, its name and counters, in slot order.
    pub stats: Vec<(&'static str, DeviceStats)>,
    /// The NICs.
    pub nics: Vec<NicInfo>,
    /// The transports, for snapshotting and inspection.
    pub transports: Vec<Arc<Mutex<VirtioPciDevice>>>,
    /// The disk images, to flush before a snapshot.
    pub disks: Vec<Arc<Mutex<Box<dyn block::DiskImage>>>>,
}

impl Drop for VirtioDevices {
    fn drop(&mut self) {
        self.thread.shutdown();
    }
}

/// Builds the devices `config` asks for and puts them on `root`'s bus.
pub fn attach(
    root: &Arc<Mutex<PciRoot>>,
    config: &VmConfig,
    mem: &GuestMemory,
) -> Result<VirtioDevices, VirtioSetupError> {
    let thread = DeviceThread::spawn().map_err(VirtioSetupError::Thread)?;
    let mut out = VirtioDevices {
        thread: thread.clone(),
        stats: Vec::new(),
        nics: Vec::new(),
        transports: Vec::new(),
        disks: Vec::new(),
    };
    let mut transports = Vec::new();
    let host: Arc<dyn WorkerHost> = thread;
    let mut add = |device: Box<dyn VirtioDevice>| -> Result<(), VirtioSetupError> {
        let slot = lock(root).reserve_slot()?;
        let transport = Arc::new(Mutex::new(VirtioPciDevice::new(
            device,
            mem.clone(),
            host.clone(),
            &slot,
        )?));
        lock(root).add_device(slot.slot, transport.clone())?;
        transports.push(transport);
        Ok(())
    };

    for d in &config.disks {
        let opts = block::OpenOptions {
            format: d.format.map(|f| match f {
                DiskFormat::Raw => block::Format::Raw,
                DiskFormat::Qcow2 => block::Format::Qcow2,
            }),
            read_only: d.read_only,
        };
        let image = block::open(&d.path, &opts).map_err(|source| VirtioSetupError::Disk {
            path: d.path.clone(),
            source,
        })?;
        let dev = Block::new(image);
        out.disks.push(dev.disk());
        let stats = dev.stats();
        add(Box::new(dev))?;
        out.stats.push(("block", DeviceStats::Block(stats)));
    }
    for n in &config.nets {
        let tap = match &n.backend {
            NetBackendConfig::Tap(name) => {
                net_host::Tap::open(Some(name)).map_err(VirtioSetupError::Tap)?
            }
            NetBackendConfig::Bridge { bridge, tap } => {
                let tap = net_host::Tap::open(tap.as_deref()).map_err(VirtioSetupError::Tap)?;
                net_host::attach_to_bridge(tap.name(), bridge).map_err(|source| {
                    VirtioSetupError::Bridge {
                        bridge: bridge.clone(),
                        source,
                    }
                })?;
                tap
            }
        };
        tap.up().map_err(VirtioSetupError::Tap)?;
        let mac = n.mac.unwrap_or_else(net_host::random_local_mac);
        out.nics.push(NicInfo {
            tap: tap.name().to_string(),
            mac,
        });
        let dev = Net::new(Arc::new(tap), mac);
        let stats = dev.stats();
        add(Box::new(dev))?;
        out.stats.push(("net", DeviceStats::Net(stats)));
    }
    if let Some(v) = &config.vsock {
        let dev = Vsock::new(u64::from(v.cid), &v.socket).map_err(VirtioSetupError::Vsock)?;
        let stats = dev.stats();
        add(Box::new(dev))?;
        out.stats.push(("vsock", DeviceStats::Vsock(stats)));
    }
    if config.rng {
        let dev = Rng::new();
        let stats = dev.stats();
        add(Box::new(dev))?;
        out.stats.push(("rng", DeviceStats::Rng(stats)));
    }
    out.transports = transports;
    Ok(out)
}

fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
