//! Building a VM from its configuration, and running it to its end.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arch::GuestMemoryMmap;
use arch::boot::{BootEntry, BootSource};
use arch::cpu::{boot_msrs, setup_boot_cpu};
use arch::cpuid::CpuidPolicy;
use arch::layout::MemoryLayout;
use hypervisor::{MemoryRegion, Vcpu};
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use crate::config::{SerialConfig, VmConfig};
use crate::control::{Control, RunReport, VmOutcome};
use crate::engine::Engine;
use crate::handle::{NoObserver, RunObserver, VmHandle};
use crate::platform::Platform;
use crate::terminal::{self, EscapeFilter, Input};
use crate::vcpu::{PauseGate, VcpuCounters};
use crate::vcpu::{VcpuHandle, VcpuRunner};

/// Errors of building or running a VM.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    /// The CPU engine failed.
    #[error(transparent)]
    Hypervisor(#[from] hypervisor::HypervisorError),
    /// Guest memory could not be allocated.
    #[error("Cannot allocate {0} of guest memory")]
    Memory(String),
    /// The kernel, initrd or command line could not be loaded.
    #[error(transparent)]
    Boot(#[from] arch::boot::BootError),
    /// The ACPI tables could not be written.
    #[error(transparent)]
    Acpi(#[from] arch::acpi::AcpiError),
    /// The boot CPU's tables could not be written.
    #[error(transparent)]
    CpuSetup(#[from] arch::cpu::CpuSetupError),
    /// Device setup failed.
    #[error(transparent)]
    Platform(#[from] crate::platform::PlatformError),
    /// A snapshot could not be restored.
    #[error("Cannot restore the snapshot: {0}")]
    Restore(String),
    /// A virtio device could not be set up.
    #[error(transparent)]
    Virtio(#[from] crate::virtio_devices::VirtioSetupError),
    /// The serial output file could not be opened.
    #[error("Cannot open serial output file {path}")]
    SerialFile {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A host resource (thread, epoll, eventfd) could not be created.
    #[error("Cannot create {what}")]
    Host {
        /// What could not be created.
        what: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

fn host(what: &'static str) -> impl FnOnce(std::io::Error) -> VmmError {
    move |source| VmmError::Host { what, source }
}

/// Event-loop tokens.
const TOKEN_EXIT: u64 = 0;
const TOKEN_PIT: u64 = 1;
const TOKEN_STDIN: u64 = 2;

/// Builds the VM described by `config` on the engine it asks for, runs it, and reports why it
/// ended.
pub fn run(config: &VmConfig) -> Result<RunReport, VmmError> {
    run_on(config, Engine::select(config)?)
}

/// Builds the VM described by `config` on `engine`, runs it, and reports why it ended.
pub fn run_on(config: &VmConfig, engine: Engine) -> Result<RunReport, VmmError> {
    run_observed(config, engine, &NoObserver)
}

/// Like [`run_on`], and hands `observer` the VM's controls once it is built.
pub fn run_observed(
    config: &VmConfig,
    engine: Engine,
    observer: &dyn RunObserver,
) -> Result<RunReport, VmmError> {
    run_from(config, engine, observer, None)
}

/// A snapshot to resume instead of booting.
pub struct RestoreFrom {
    /// The snapshot's directory.
    pub dir: std::path::PathBuf,
    /// Its state.
    pub body: crate::snapshot::state::Body,
}

fn restore_err(what: &str) -> impl FnOnce(String) -> VmmError + '_ {
    move |e| VmmError::Restore(format!("{what}: {e}"))
}

/// Builds the VM, boots it (or resumes `restore`), runs it, and reports why it ended.
pub fn run_from(
    config: &VmConfig,
    engine: Engine,
    observer: &dyn RunObserver,
    restore: Option<&RestoreFrom>,
) -> Result<RunReport, VmmError> {
    let hypervisor = engine.hypervisor.as_ref();
    if config.cpus > hypervisor.max_vcpus() {
        return Err(hypervisor::HypervisorError::TooManyVcpus {
            requested: config.cpus,
            max: hypervisor.max_vcpus(),
        }
        .into());
    }
    let layout = MemoryLayout::new(config.memory);
    let mem = match restore {
        None => GuestMemoryMmap::from_ranges(&layout.ram_regions()).map_err(|e| {
            VmmError::Memory(format!(
                "{} ({e})",
                crate::config::format_size(config.memory)
            ))
        })?,
        Some(r) => {
            let ranges = layout.ram_regions();
            let ours: Vec<(u64, u64)> = ranges.iter().map(|(a, l)| (a.0, *l as u64)).collect();
            if ours != r.body.ram {
                return Err(VmmError::Restore(format!(
                    "the snapshot's RAM layout {:x?} differs from this configuration's {ours:x?}",
                    r.body.ram
                )));
            }
            crate::snapshot::memory::map(&r.dir.join(crate::snapshot::format::MEMORY_FILE), &ranges)
                .map_err(|e| VmmError::Restore(e.to_string()))?
        }
    };

    let control = Arc::new(Control::new().map_err(host("an eventfd"))?);
    let serial_out: Box<dyn Write + Send> = match &config.serial {
        SerialConfig::Stdio => Box::new(std::io::stdout()),
        SerialConfig::File(path) => Box::new(
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|source| VmmError::SerialFile {
                    path: path.clone(),
                    source,
                })?,
        ),
        SerialConfig::None => Box::new(std::io::sink()),
    };
    let platform = Platform::new(
        control.clone(),
        serial_out,
        (layout.below_4g(), layout.above_4g()),
        &engine.time,
    )?;
    let virtio = crate::virtio_devices::attach(&platform.pci, config, &mem)?;
    let vm = hypervisor.create_vm(platform.buses.clone())?;
    virtio.thread.set_vm(vm.clone());
    platform.msi.connect(vm.clone(), control.clone());
    for (slot, region) in mem.iter().enumerate() {
        let r = MemoryRegion {
            guest_addr: region.start_addr().0,
            size: region.len(),
            host_addr: region.as_ptr() as u64,
        };
        // SAFETY: the region is mmap'ed by `mem`, which lives until this function returns, after
        // every vCPU thread has been joined and the VM is no longer run.
        unsafe { vm.map_memory(slot as u32, r) }?;
    }

    let entry = match restore {
        None => {
            let rsdp = arch::acpi::write_tables(&mem, &Platform::acpi(config.cpus))?;
            let source = BootSource {
                kernel: &config.kernel,
                initrd: config.initrd.as_deref(),
                cmdline: &config.cmdline,
            };
            Some(arch::boot::load(&mem, &layout, &source, rsdp)?)
        }
        Some(r) => {
            vm.restore(&r.body.vm)
                .map_err(|e| restore_err("engine")(e.to_string()))?;
            if r.body.vcpus.len() != config.cpus as usize {
                return Err(VmmError::Restore(format!(
                    "the snapshot has {} vCPUs, the configuration {}",
                    r.body.vcpus.len(),
                    config.cpus
                )));
            }
            None
        }
    };

    let supported = hypervisor.supported_cpuid()?;
    let policy = CpuidPolicy {
        vcpus: config.cpus,
        hidden: config.hidden_features.clone(),
    };
    let stop = Arc::new(AtomicBool::new(false));
    let gate = Arc::new(PauseGate::default());
    let mut counters = Vec::with_capacity(config.cpus as usize);
    let mut runners = Vec::with_capacity(config.cpus as usize);
    let mut stats = Vec::with_capacity(config.cpus as usize);
    for id in 0..config.cpus {
        let mut vcpu = vm.create_vcpu(id)?;
        vcpu.set_cpuid(&policy.for_vcpu(&supported, id))?;
        vcpu.set_msrs(&boot_msrs())?;
        vcpu.setup_local_apic()?;
        match (entry, restore) {
            (Some(entry), _) if id == 0 => setup_bsp(&mem, entry, vcpu.as_mut())?,
            (_, Some(r)) => vcpu
                .restore(&r.body.vcpus[id as usize])
                .map_err(|e| restore_err("vCPU")(e.to_string()))?,
            _ => {}
        }
        stats.push(vcpu.stats());
        runners.push(VcpuRunner {
            id,
            vcpu,
            pic: (id == 0).then(|| platform.pic.clone()),
            ioapic: platform.ioapic.clone(),
            control: control.clone(),
            stop: stop.clone(),
            gate: gate.clone(),
            counters: {
                let c = Arc::new(VcpuCounters::default());
                counters.push(c.clone());
                c
            },
        });
    }

    if let Some(r) = restore {
        restore_devices(&platform, &virtio, engine.lapics.as_deref(), &r.body)?;
    }

    let stdin_console = config.serial == SerialConfig::Stdio;
    let raw = stdin_console && terminal::enter_raw_mode();
    let mut handles: Vec<VcpuHandle> = Vec::new();
    let mut threads = Vec::new();
    for runner in runners {
        let handle = runner.handle();
        if runner.id == 0 {
            platform.doorbell.connect(handle.clone());
        }
        threads.push(
            runner
                .spawn(handle.clone())
                .map_err(host("a vCPU thread"))?,
        );
        handles.push(handle);
    }

    let mut device_stats = Vec::new();
    let mut kinds = std::collections::HashMap::<&str, usize>::new();
    for (kind, s) in &virtio.stats {
        let n = kinds.entry(kind).or_default();
        device_stats.push((format!("{kind}{n}"), s.clone()));
        *n += 1;
    }
    observer.started(Arc::new(VmHandle {
        engine: engine.name(),
        booted: std::time::Instant::now(),
        memory: config.memory,
        counters,
        engine_stats: stats.clone(),
        devices: device_stats,
        control: control.clone(),
        gate: gate.clone(),
        vcpus: handles.clone(),
        acpi_pm: platform.acpi_pm.clone(),
        parts: crate::snapshot::take::SnapshotParts {
            mem: mem.clone(),
            vm: vm.clone(),
            pic: platform.pic.clone(),
            ioapic: platform.ioapic.clone(),
            pit: platform.pit.clone(),
            serial: platform.serial.clone(),
            cmos: platform.cmos.clone(),
            acpi_pm: platform.acpi_pm.clone(),
            pci: platform.pci.clone(),
            transports: virtio.transports.clone(),
            disks: virtio.disks.clone(),
            thread: virtio.thread.clone(),
            lapics: engine.lapics.clone(),
            engine: engine.name(),
            config: crate::api_config::from_config(config),
            last: std::sync::Mutex::new(None),
        },
    }));
    tracing::info!(
        engine = engine.name(),
        cpus = config.cpus,
        memory_mib = config.memory >> 20,
        devices = virtio.stats.len(),
        "VM started"
    );
    let outcome = event_loop(&platform, &control, stdin_console);
    gate.resume();
    if let Ok(o) = &outcome {
        tracing::info!(outcome = %o, "VM ended");
    }
    stop.store(true, Ordering::SeqCst);
    for h in &handles {
        h.kick();
    }
    for t in threads {
        let _ = t.join();
    }
    if raw {
        terminal::restore();
    }
    // The devices stop serving queues before the memory goes; the guest memory must outlive
    // the vCPUs, which are joined above.
    drop(virtio);
    drop(mem);
    Ok(RunReport {
        outcome: outcome?,
        fallback_instructions: stats
            .iter()
            .map(|s| s.emulated_instructions.load(Ordering::Relaxed))
            .collect(),
    })
}

/// Gives every device its saved state, in the order the devices need (see
/// `docs/snapshot-format.md`).
fn restore_devices(
    platform: &Platform,
    virtio: &crate::virtio_devices::VirtioDevices,
    lapics: Option<&crate::lapics::EmuLapics>,
    body: &crate::snapshot::state::Body,
) -> Result<(), VmmError> {
    fn lock<T: ?Sized>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        m.lock().unwrap_or_else(|p| p.into_inner())
    }
    let d = &body.devices;
    let e = |what: &'static str| {
        move |e: devices::StateError| VmmError::Restore(format!("{what}: {e}"))
    };
    lock(&platform.pic).restore(&d.pic).map_err(e("PIC"))?;
    lock(&platform.ioapic)
        .restore(&d.ioapic)
        .map_err(e("IOAPIC"))?;
    match (lapics, body.lapics.is_empty()) {
        (Some(l), _) => l.restore(&body.lapics).map_err(e("local APICs"))?,
        (None, true) => {}
        (None, false) => {
            return Err(VmmError::Restore(
                "the snapshot has software-CPU APICs but the engine keeps its own".into(),
            ));
        }
    }
    lock(&platform.pit).restore(&d.pit).map_err(e("PIT"))?;
    lock(&platform.serial)
        .restore(&d.serial)
        .map_err(e("serial"))?;
    lock(&platform.cmos).restore(&d.cmos).map_err(e("CMOS"))?;
    lock(&platform.acpi_pm)
        .restore(&d.acpi_pm)
        .map_err(e("ACPI PM"))?;
    if d.virtio.len() != virtio.transports.len() {
        return Err(VmmError::Restore(format!(
            "the snapshot has {} virtio devices, the configuration {}",
            d.virtio.len(),
            virtio.transports.len()
        )));
    }
    for (t, s) in virtio.transports.iter().zip(&d.virtio) {
        lock(t).restore(s).map_err(e("virtio device"))?;
    }
    lock(&platform.pci).restore(&d.pci).map_err(e("PCI"))?;
    Ok(())
}

fn setup_bsp(mem: &GuestMemoryMmap, entry: BootEntry, vcpu: &mut dyn Vcpu) -> Result<(), VmmError> {
    let state = setup_boot_cpu(mem, entry, vcpu.sregs()?)?;
    vcpu.set_sregs(&state.sregs)?;
    vcpu.set_regs(&state.regs)?;
    vcpu.set_fpu(&state.fpu)?;
    Ok(())
}

/// Waits for the VM's end, firing the PIT's timer and feeding console input meanwhile.
fn event_loop(
    platform: &Platform,
    control: &Control,
    stdin_console: bool,
) -> Result<VmOutcome, VmmError> {
    let epoll = Epoll::new().map_err(host("an epoll instance"))?;
    let add = |fd: i32, token: u64| {
        epoll
            .ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, token),
            )
            .map_err(host("an epoll registration"))
    };
    add(control.event().as_raw_fd(), TOKEN_EXIT)?;
    if let Some(timer) = &platform.pit_timer {
        add(timer.raw_fd(), TOKEN_PIT)?;
    }
    let mut stdin_open = stdin_console && add(libc::STDIN_FILENO, TOKEN_STDIN).is_ok();
    let mut filter = EscapeFilter::default();
    let mut events = vec![EpollEvent::default(); 4];
    loop {
        if let Some(outcome) = control.outcome() {
            return Ok(outcome);
        }
        let n = match epoll.wait(-1, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(host("an epoll wait")(e)),
        };
        for event in &events[..n] {
            match event.data() {
                TOKEN_PIT if platform.pit_timer.as_ref().is_some_and(|t| t.acknowledge()) => {
                    platform
                        .pit
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .expire();
                }
                TOKEN_STDIN if stdin_open => {
                    let mut buf = [0u8; 256];
                    match terminal::read_stdin(&mut buf) {
                        // End of input: stop watching stdin; the guest keeps running.
                        Ok(0) | Err(_) => {
                            let _ = epoll.ctl(
                                ControlOperation::Delete,
                                libc::STDIN_FILENO,
                                EpollEvent::default(),
                            );
                            stdin_open = false;
                        }
                        Ok(k) => match filter.filter(&buf[..k]) {
                            Input::Quit => control.finish(VmOutcome::Quit),
                            Input::Guest(bytes) => {
                                platform
                                    .serial
                                    .lock()
                                    .unwrap_or_else(|p| p.into_inner())
                                    .enqueue_input(&bytes);
                            }
                        },
                    }
                }
                _ => {}
            }
        }
    }
}
