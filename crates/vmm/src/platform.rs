//! The PC platform's devices, wired to the buses and to each other.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use arch::acpi::AcpiPlatform;
use arch::layout;
use devices::bus::SharedDevice;
use devices::clock::{Clock, HostClock, Timer};
use devices::interrupt::{ExtIntSink, MsiMessage, MsiSink, VmControl};
use devices::legacy::{
    AcpiPm, Cmos, DebugExit, I8042, Ioapic, IrqRouter, Pic, Pit, Serial, acpi_pm, cmos, debug_exit,
    ioapic, serial,
};
use devices::pci::{PciIrqs, PciRoot, PciRootConfig};
use devices::{Bus, BusError};
use hypervisor::emu::EmuTime;
use hypervisor::{Vm, VmOps};
use vmm_sys_util::timerfd::TimerFd;

use crate::control::{Control, VmOutcome};
use crate::lapics::{EngineClock, EngineTimer};
use crate::vcpu::VcpuHandle;

/// Errors of platform setup.
#[derive(Debug, thiserror::Error)]
pub enum PlatformError {
    /// Two devices claim the same addresses (a bug in popek's layout).
    #[error("Device layout conflict")]
    Bus(#[from] BusError),
    /// An interrupt line out of range (a bug in popek's layout).
    #[error("Interrupt wiring: {0}")]
    Irq(String),
    /// The PCI bus could not be set up (a bug in popek's layout).
    #[error("PCI bus setup")]
    Pci(#[from] devices::pci::PciError),
    /// The timer for the PIT could not be created.
    #[error("Cannot create a timerfd for the PIT")]
    Timer(#[source] std::io::Error),
}

/// The port and MMIO buses, handed to the CPU engine as its [`VmOps`].
pub struct Buses {
    /// Port I/O.
    pub pio: Bus,
    /// Memory-mapped I/O.
    pub mmio: Bus,
}

impl VmOps for Buses {
    fn pio_read(&self, port: u16, data: &mut [u8]) {
        if !self.pio.read(port.into(), data) {
            tracing::trace!(port, len = data.len(), "read of an unclaimed port");
        }
    }
    fn pio_write(&self, port: u16, data: &[u8]) {
        if !self.pio.write(port.into(), data) {
            tracing::trace!(port, len = data.len(), "write to an unclaimed port");
        }
    }
    fn mmio_read(&self, addr: u64, data: &mut [u8]) {
        if !self.mmio.read(addr, data) {
            crate::guest_warn!(
                "guest read unclaimed MMIO at {addr:#x} ({} bytes)",
                data.len()
            );
        }
    }
    fn mmio_write(&self, addr: u64, data: &[u8]) {
        if !self.mmio.write(addr, data) {
            crate::guest_warn!(
                "guest wrote unclaimed MMIO at {addr:#x} ({} bytes)",
                data.len()
            );
        }
    }
}

/// Delivers IOAPIC messages into the engine's local APICs, once the VM exists.
#[derive(Default)]
pub struct EngineMsi {
    vm: OnceLock<Arc<dyn Vm>>,
    control: OnceLock<Arc<Control>>,
}

impl EngineMsi {
    /// Connects the sink to the VM.
    pub fn connect(&self, vm: Arc<dyn Vm>, control: Arc<Control>) {
        let _ = self.vm.set(vm);
        let _ = self.control.set(control);
    }
}

impl MsiSink for EngineMsi {
    fn deliver(&self, gsi: u32, msg: MsiMessage) {
        if let Some(vm) = self.vm.get()
            && let Err(e) = vm.signal_msi(gsi, msg.address, msg.data)
            && let Some(control) = self.control.get()
        {
            control.finish(VmOutcome::Failed(format!(
                "interrupt delivery on GSI {gsi}: {e}"
            )));
        }
    }
}

/// Tells the boot CPU that the PIC has an interrupt for it.
#[derive(Default)]
pub struct BspDoorbell {
    bsp: OnceLock<VcpuHandle>,
}

impl BspDoorbell {
    /// Connects the doorbell to the boot CPU's thread.
    pub fn connect(&self, bsp: VcpuHandle) {
        let _ = self.bsp.set(bsp);
    }
}

impl ExtIntSink for BspDoorbell {
    fn raise(&self) {
        if let Some(bsp) = self.bsp.get() {
            bsp.kick();
        }
    }
}

/// A one-shot timer on a timerfd that the event loop watches.
pub struct FdTimer {
    fd: Mutex<TimerFd>,
    clock: Arc<dyn Clock>,
}

impl FdTimer {
    fn new(clock: Arc<dyn Clock>) -> std::io::Result<Self> {
        use std::os::fd::AsRawFd;
        let fd = TimerFd::new()?;
        // Non-blocking, so that a timer re-armed between epoll's report and our read costs a
        // spurious wake-up instead of blocking the event loop until the new deadline.
        // SAFETY: fcntl on a descriptor we own, with flags it accepts.
        let ok = unsafe {
            let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
            flags >= 0 && libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) == 0
        };
        if !ok {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Self {
            fd: Mutex::new(fd),
            clock,
        })
    }

    /// The descriptor to poll.
    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        self.fd
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_raw_fd()
    }

    /// Consumes an expiry; returns false if the timer had not fired (a spurious wake-up).
    pub fn acknowledge(&self) -> bool {
        self.fd
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .wait()
            .is_ok()
    }
}

impl Timer for FdTimer {
    fn arm(&self, deadline_ns: Option<u64>) {
        let mut fd = self.fd.lock().unwrap_or_else(|p| p.into_inner());
        let result = match deadline_ns {
            // A zero duration would disarm a timerfd: fire in one nanosecond instead.
            Some(deadline) => {
                let delay = deadline.saturating_sub(self.clock.now_ns()).max(1);
                fd.reset(Duration::from_nanos(delay), None)
            }
            None => fd.clear(),
        };
        // timerfd_settime only fails on invalid arguments, which the above cannot produce.
        debug_assert!(result.is_ok());
    }
}

/// Where the devices' time comes from.
#[derive(Clone)]
pub enum DeviceTime {
    /// The host's clock; device timers are timerfds that the event loop watches (KVM).
    Host,
    /// The software CPU's clock; its vCPU threads fire device timers.
    Engine(Arc<EmuTime>),
}

/// The platform's devices.
pub struct Platform {
    /// The buses, shared with the CPU engine.
    pub buses: Arc<Buses>,
    /// The 8259 pair.
    pub pic: Arc<Mutex<Pic>>,
    /// The IOAPIC.
    pub ioapic: Arc<Mutex<Ioapic>>,
    /// The PIT.
    pub pit: Arc<Mutex<Pit>>,
    /// The PIT's timer, when the event loop fires it (host time).
    pub pit_timer: Option<Arc<FdTimer>>,
    /// COM1.
    pub serial: Arc<Mutex<Serial>>,
    /// Where IOAPIC messages go.
    pub msi: Arc<EngineMsi>,
    /// Where the PIC's output goes.
    pub doorbell: Arc<BspDoorbell>,
    /// PCI bus 0.
    pub pci: Arc<Mutex<PciRoot>>,
    /// The ACPI PM registers, whose power button the API presses.
    pub acpi_pm: Arc<Mutex<AcpiPm>>,
    /// The CMOS/RTC.
    pub cmos: Arc<Mutex<Cmos>>,
}

impl Platform {
    /// Creates the legacy devices and puts them on the buses, with their time from `time`.
    pub fn new(
        control: Arc<Control>,
        serial_out: Box<dyn Write + Send>,
        memory: (u64, u64),
        time: &DeviceTime,
    ) -> Result<Self, PlatformError> {
        let irq_err = |e: devices::legacy::IrqRouterError| PlatformError::Irq(e.to_string());
        let vm_control: Arc<dyn VmControl> = control;
        let msi = Arc::new(EngineMsi::default());
        let doorbell = Arc::new(BspDoorbell::default());
        let pic = Arc::new(Mutex::new(Pic::new(doorbell.clone())));
        let ioapic = Arc::new(Mutex::new(Ioapic::new(msi.clone())));
        let router = IrqRouter::new(pic.clone(), ioapic.clone());
        let pci = Arc::new(Mutex::new(PciRoot::new(
            PciRootConfig {
                ecam_base: layout::PCI_ECAM_BASE,
                mmio_base: layout::PCI_MMIO_BASE,
                mmio_size: layout::PCI_MMIO_SIZE,
            },
            PciIrqs {
                intx: Arc::new(router.clone()),
                msi: msi.clone(),
            },
        )?));

        let irq0 = router.isa_irq(0).map_err(irq_err)?;
        let (pit, pit_timer) = match time {
            DeviceTime::Host => {
                let clock: Arc<dyn Clock> = Arc::new(HostClock::new());
                let timer = Arc::new(FdTimer::new(clock.clone()).map_err(PlatformError::Timer)?);
                let pit = Pit::new(clock, timer.clone(), irq0);
                (Arc::new(Mutex::new(pit)), Some(timer))
            }
            DeviceTime::Engine(time) => {
                // The timer's callback needs the PIT, which needs the timer.
                let slot: Arc<OnceLock<std::sync::Weak<Mutex<Pit>>>> = Arc::default();
                let target = slot.clone();
                let timer = time.timer(Box::new(move || {
                    if let Some(pit) = target.get().and_then(std::sync::Weak::upgrade) {
                        pit.lock().unwrap_or_else(|p| p.into_inner()).expire();
                    }
                }));
                let clock: Arc<dyn Clock> = Arc::new(EngineClock(time.clone()));
                let pit = Arc::new(Mutex::new(Pit::new(
                    clock,
                    Arc::new(EngineTimer(timer)),
                    irq0,
                )));
                let _ = slot.set(Arc::downgrade(&pit));
                (pit, None)
            }
        };
        let serial = Arc::new(Mutex::new(Serial::new(
            router.isa_irq(serial::COM1_IRQ).map_err(irq_err)?,
            serial_out,
        )));
        let acpi_pm = Arc::new(Mutex::new(AcpiPm::new(
            vm_control.clone(),
            router.isa_irq(acpi_pm::SCI_IRQ).map_err(irq_err)?,
        )));
        let host_seconds = || {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64)
        };
        let wall_clock: devices::legacy::cmos::WallClock = match time {
            DeviceTime::Host => Box::new(host_seconds),
            // The RTC follows the engine's clock from the host's date at start-up, so that it
            // ticks at the rate the guest's other timers do.
            DeviceTime::Engine(time) => {
                let (time, start) = (time.clone(), host_seconds());
                Box::new(move || start + (time.now_ns() / 1_000_000_000) as i64)
            }
        };
        let cmos = Arc::new(Mutex::new(Cmos::new(memory.0, memory.1, wall_clock)));

        let mut pio = Bus::new();
        let shared = |d: Arc<Mutex<dyn devices::BusDevice>>| -> SharedDevice { d };
        pio.insert(
            shared(serial.clone()),
            serial::COM1_PORT,
            serial::SERIAL_PORTS,
        )?;
        pio.insert(acpi_pm.clone(), acpi_pm::ACPI_PM_BASE, acpi_pm::ACPI_PM_LEN)?;
        pio.insert(cmos.clone(), cmos::CMOS_PORT, cmos::CMOS_LEN)?;
        pio.insert(
            Arc::new(Mutex::new(DebugExit::new(vm_control.clone()))),
            debug_exit::DEBUG_EXIT_PORT,
            debug_exit::DEBUG_EXIT_LEN,
        )?;
        for e in I8042::bus_entries(vm_control)
            .into_iter()
            .chain(Pic::bus_entries(&pic))
            .chain(Pit::bus_entries(&pit))
        {
            pio.insert(e.device, e.base, e.len)?;
        }
        let mut mmio = Bus::new();
        mmio.insert(
            shared(ioapic.clone()),
            ioapic::IOAPIC_BASE,
            ioapic::IOAPIC_LEN,
        )?;
        let pci_entries = PciRoot::bus_entries(&pci);
        for e in pci_entries.pio {
            pio.insert(e.device, e.base, e.len)?;
        }
        for e in pci_entries.mmio {
            mmio.insert(e.device, e.base, e.len)?;
        }

        Ok(Self {
            buses: Arc::new(Buses { pio, mmio }),
            pic,
            ioapic,
            pit,
            pit_timer,
            serial,
            msi,
            doorbell,
            pci,
            acpi_pm,
            cmos,
        })
    }

    /// What the ACPI tables say about this platform.
    pub fn acpi(cpus: u32) -> AcpiPlatform {
        AcpiPlatform {
            cpus,
            pm1a_evt: (acpi_pm::ACPI_PM_BASE + acpi_pm::PM1_EVT_OFFSET) as u16,
            pm1a_cnt: (acpi_pm::ACPI_PM_BASE + acpi_pm::PM1_CNT_OFFSET) as u16,
            reset_port: (acpi_pm::ACPI_PM_BASE + acpi_pm::RESET_OFFSET) as u16,
            reset_value: acpi_pm::RESET_VALUE,
            s5_slp_typ: acpi_pm::S5_SLP_TYP,
            sci_irq: acpi_pm::SCI_IRQ,
            com1: (serial::COM1_PORT as u16, serial::COM1_IRQ),
            pci: Some(arch::acpi::PciAcpi {
                ecam_base: layout::PCI_ECAM_BASE,
                mmio_base: layout::PCI_MMIO_BASE,
                mmio_size: layout::PCI_MMIO_SIZE,
                intx_gsi_base: devices::pci::INTX_GSI_BASE,
                intx_gsi_count: devices::pci::INTX_GSI_COUNT,
            }),
        }
    }
}
