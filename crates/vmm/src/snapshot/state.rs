//! The body of a snapshot's state file.

use devices::lapic::LapicState;
use devices::legacy::{AcpiPmState, CmosState, IoapicState, PicState, PitState, SerialState};
use devices::pci::PciRootState;
use devices::virtio::pci::VirtioPciState;
use hypervisor::{VcpuSnapshot, VmSnapshot};
use serde::{Deserialize, Serialize};

/// Everything but the memory.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Body {
    /// The VM's configuration, in the API's schema.
    pub config: api_types::VmConfig,
    /// The engine that took it ("kvm" or "emu").
    pub engine: String,
    /// The RAM ranges, `[guest physical address, bytes]`, in the memory file's order.
    pub ram: Vec<(u64, u64)>,
    /// Engine VM state.
    pub vm: VmSnapshot,
    /// Engine vCPU states, in vCPU order.
    pub vcpus: Vec<VcpuSnapshot>,
    /// The software CPU's local APICs (empty under KVM, which keeps them in its vCPU state).
    pub lapics: Vec<LapicState>,
    /// The devices.
    pub devices: Devices,
}

/// The devices' states.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Devices {
    /// The 8259 pair.
    pub pic: PicState,
    /// The IOAPIC.
    pub ioapic: IoapicState,
    /// The PIT.
    pub pit: PitState,
    /// COM1.
    pub serial: SerialState,
    /// The CMOS/RTC.
    pub cmos: CmosState,
    /// The ACPI PM registers.
    pub acpi_pm: AcpiPmState,
    /// PCI bus 0.
    pub pci: PciRootState,
    /// The virtio transports, in slot order.
    pub virtio: Vec<VirtioPciState>,
}
