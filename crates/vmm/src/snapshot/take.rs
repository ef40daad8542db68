//! Taking a snapshot of a paused VM.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use devices::legacy::{AcpiPm, Cmos, Ioapic, Pic, Pit, Serial};
use devices::pci::PciRoot;
use devices::virtio::pci::VirtioPciDevice;
use hypervisor::Vm;
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use super::format::{self, Kind, SnapshotError};
use super::memory::{self, PAGE, Pages};
use super::state::{Body, Devices};
use crate::device_thread::DeviceThread;
use crate::lapics::EmuLapics;
use crate::vcpu::PauseGate;

/// What a snapshot reads from a running VM.
pub struct SnapshotParts {
    pub(crate) mem: GuestMemoryMmap,
    pub(crate) vm: Arc<dyn Vm>,
    pub(crate) pic: Arc<Mutex<Pic>>,
    pub(crate) ioapic: Arc<Mutex<Ioapic>>,
    pub(crate) pit: Arc<Mutex<Pit>>,
    pub(crate) serial: Arc<Mutex<Serial>>,
    pub(crate) cmos: Arc<Mutex<Cmos>>,
    pub(crate) acpi_pm: Arc<Mutex<AcpiPm>>,
    pub(crate) pci: Arc<Mutex<PciRoot>>,
    pub(crate) transports: Vec<Arc<Mutex<VirtioPciDevice>>>,
    pub(crate) disks: Vec<Arc<Mutex<Box<dyn block::DiskImage>>>>,
    pub(crate) thread: Arc<DeviceThread>,
    pub(crate) lapics: Option<Arc<EmuLapics>>,
    pub(crate) engine: &'static str,
    pub(crate) config: api_types::VmConfig,
    /// The last snapshot taken of this VM, the base of the next diff.
    pub(crate) last: Mutex<Option<PathBuf>>,
}

/// What a snapshot wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Taken {
    /// Full or diff.
    pub kind: Kind,
    /// Pages written to the memory file.
    pub pages: u64,
    /// The RAM size.
    pub memory_bytes: u64,
}

fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn io(path: &Path, what: &'static str) -> impl FnOnce(std::io::Error) -> SnapshotError {
    let path = path.to_path_buf();
    move |source| SnapshotError::Io { path, what, source }
}

/// Writes the paused VM into `dir` (which must not exist, or be empty): every page, or with
/// `diff` only the pages written since the last snapshot of this VM.
pub fn take(
    parts: &SnapshotParts,
    gate: &PauseGate,
    vcpus: usize,
    dir: &Path,
    diff: bool,
) -> Result<Taken, SnapshotError> {
    if !gate.is_paused() {
        return Err(SnapshotError::Unusable(
            "A snapshot needs a paused VM: pause it first".into(),
        ));
    }
    let base = lock(&parts.last).clone();
    if diff && base.is_none() {
        return Err(SnapshotError::Unusable(
            "A diff snapshot needs an earlier snapshot of this VM as its base: take a full one first"
                .into(),
        ));
    }
    if dir.exists()
        && std::fs::read_dir(dir)
            .map_err(io(dir, "cannot read"))?
            .next()
            .is_some()
    {
        return Err(SnapshotError::Unusable(format!(
            "{} is not empty: a snapshot needs a new or empty directory",
            dir.display()
        )));
    }
    std::fs::create_dir_all(dir).map_err(io(dir, "cannot create"))?;

    // From here on no worker runs: no ring moves and no device writes guest memory.
    let _quiet = parts.thread.quiesce();
    for d in &parts.disks {
        lock(d)
            .flush()
            .map_err(|e| SnapshotError::Unusable(format!("Cannot flush a disk: {e}")))?;
    }
    let vcpu_states = gate
        .snapshot_vcpus(vcpus, Duration::from_secs(10))
        .map_err(SnapshotError::Unusable)?;
    let vm_state = parts
        .vm
        .snapshot()
        .map_err(|e| SnapshotError::Unusable(format!("Engine state: {e}")))?;
    let body = Body {
        config: parts.config.clone(),
        engine: parts.engine.to_string(),
        ram: parts
            .mem
            .iter()
            .map(|r| (r.start_addr().0, r.len()))
            .collect(),
        vm: vm_state,
        vcpus: vcpu_states,
        lapics: parts.lapics.as_ref().map(|l| l.save()).unwrap_or_default(),
        devices: Devices {
            pic: lock(&parts.pic).save(),
            ioapic: lock(&parts.ioapic).save(),
            pit: lock(&parts.pit).save(),
            serial: lock(&parts.serial).save(),
            cmos: lock(&parts.cmos).save(),
            acpi_pm: lock(&parts.acpi_pm).save(),
            pci: lock(&parts.pci).save(),
            virtio: parts.transports.iter().map(|t| lock(t).save()).collect(),
        },
    };
    let total = memory::total_bytes(&parts.mem);
    let mem_path = dir.join(format::MEMORY_FILE);
    let (kind, pages) = if let (true, Some(base)) = (diff, &base) {
        let dirty = dirty_pages(parts, base, total)?;
        let n = memory::write(&parts.mem, &mem_path, |p| dirty.get(p))?;
        dirty.save(&dir.join(format::PAGES_FILE))?;
        (Kind::Diff, n)
    } else {
        (Kind::Full, memory::write(&parts.mem, &mem_path, |_| true)?)
    };
    // Dirty tracking restarts now, for the next diff (KVM only; the software CPU compares).
    let _ = parts.vm.start_dirty_log();
    format::write_state(
        dir,
        format::header(kind, base.as_deref().filter(|_| diff), total),
        &body,
    )?;
    *lock(&parts.last) = Some(dir.to_path_buf());
    Ok(Taken {
        kind,
        pages,
        memory_bytes: total,
    })
}

/// The pages written since the snapshot in `base`: those KVM's dirty log saw vCPUs write (when
/// the engine keeps one), and those whose contents differ from the base's memory file, which
/// also catches what devices wrote into guest memory behind the engine's back.
fn dirty_pages(parts: &SnapshotParts, base: &Path, total: u64) -> Result<Pages, SnapshotError> {
    let npages = total.div_ceil(PAGE as u64);
    let mut pages = Pages::new(npages);
    if let Ok(slots) = parts.vm.dirty_pages() {
        // Slots are the RAM regions in order; their pages are numbered consecutively.
        let mut first = 0u64;
        for (region, (_, bitmap)) in parts.mem.iter().zip(slots) {
            let n = region.len().div_ceil(PAGE as u64);
            for p in 0..n {
                if bitmap
                    .get((p / 64) as usize)
                    .is_some_and(|w| w & (1 << (p % 64)) != 0)
                {
                    pages.set(first + p);
                }
            }
            first += n;
        }
    }
    let base_mem = base.join(format::MEMORY_FILE);
    let file = std::fs::File::open(&base_mem).map_err(io(&base_mem, "cannot open"))?;
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; PAGE];
    let mut first = 0u64;
    for region in parts.mem.iter() {
        let n = region.len().div_ceil(PAGE as u64);
        for p in 0..n {
            let at = (first + p) * PAGE as u64;
            let len = (region.len() - p * PAGE as u64).min(PAGE as u64) as usize;
            file.read_exact_at(&mut buf[..len], at)
                .map_err(io(&base_mem, "cannot read"))?;
            // SAFETY: the page lies inside the region's mapping, which lives as long as
            // `parts.mem`; every vCPU is paused and the device thread quiesced, so nothing
            // writes it meanwhile.
            let now = unsafe {
                std::slice::from_raw_parts(region.as_ptr().add((p * PAGE as u64) as usize), len)
            };
            if now != &buf[..len] {
                pages.set(first + p);
            }
        }
        first += n;
    }
    Ok(pages)
}
