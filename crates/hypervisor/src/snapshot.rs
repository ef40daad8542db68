//! Engine state for snapshots: what each engine needs to resume a paused VM in a fresh process.
//!
//! A [`VcpuSnapshot`] or [`VmSnapshot`] is taken with [`crate::Vcpu::snapshot`] and
//! [`crate::Vm::snapshot`] and given back to a freshly created vCPU or VM of the same engine.
//! The types serialize with serde (the VMM writes them as JSON); byte blobs (KVM's XSAVE area and
//! APIC page) are hex strings.
//!
//! Guest memory and devices are not here: the VMM saves them. Nor is the software CPU's local
//! APIC, which is a device of the VMM's.

use serde::{Deserialize, Serialize};
use x86_cpu::CpuState;

use crate::emu::ClockMode;
use crate::{CpuidEntry, HypervisorError, MsrEntry, SpecialRegisters, StandardRegisters};

/// Everything needed to resume one vCPU, as the engine that made it keeps it.
// One per vCPU and short-lived: not worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum VcpuSnapshot {
    /// A vCPU of the KVM engine.
    Kvm(KvmVcpuState),
    /// A vCPU of the software CPU.
    Emu(EmuVcpuState),
}

impl VcpuSnapshot {
    /// The name of the engine that took it, as [`crate::Hypervisor::name`] says it.
    pub fn engine(&self) -> &'static str {
        match self {
            VcpuSnapshot::Kvm(_) => KVM,
            VcpuSnapshot::Emu(_) => EMU,
        }
    }
}

/// VM-wide engine state (KVM's clock; for the software CPU, its time base).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum VmSnapshot {
    /// A VM of the KVM engine.
    Kvm(KvmVmState),
    /// A VM of the software CPU.
    Emu(EmuVmState),
}

impl VmSnapshot {
    /// The name of the engine that took it, as [`crate::Hypervisor::name`] says it.
    pub fn engine(&self) -> &'static str {
        match self {
            VmSnapshot::Kvm(_) => KVM,
            VmSnapshot::Emu(_) => EMU,
        }
    }
}

const KVM: &str = "kvm";
const EMU: &str = "emu";

/// The error for a snapshot of the other engine.
pub(crate) fn wrong_engine(
    what: &'static str,
    found: &'static str,
    engine: &'static str,
) -> HypervisorError {
    HypervisorError::SnapshotEngineMismatch {
        what,
        found,
        engine,
    }
}

/// A KVM vCPU, as the KVM ioctls report it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct KvmVcpuState {
    /// `KVM_GET_MP_STATE` (0 runnable, 1 uninitialized, 2 INIT received, 3 halted, 4 SIPI
    /// received, ...).
    pub mp_state: u32,
    /// `KVM_GET_REGS`.
    pub regs: StandardRegisters,
    /// `KVM_GET_SREGS`, but for the pending-interrupt bitmap.
    pub sregs: SpecialRegisters,
    /// `kvm_sregs.interrupt_bitmap`: an external interrupt injected but not yet taken.
    pub interrupt_bitmap: [u64; 4],
    /// `KVM_GET_XSAVE` or `KVM_GET_XSAVE2`: the x87, SSE, AVX... state in the XSAVE layout
    /// (4 KiB, more with large dynamic features).
    #[serde(with = "hex_bytes")]
    pub xsave: Vec<u8>,
    /// `KVM_GET_XCRS`: the extended control registers (XCR0).
    pub xcrs: Vec<KvmXcr>,
    /// `kvm_xcrs.flags`.
    pub xcrs_flags: u32,
    /// `KVM_GET_DEBUGREGS`.
    pub debug_regs: KvmDebugRegs,
    /// `KVM_GET_LAPIC`: the in-kernel local APIC's register page (1 KiB).
    #[serde(with = "hex_bytes")]
    pub lapic: Vec<u8>,
    /// The MSRs of `KVM_GET_MSR_INDEX_LIST` that the vCPU reads, plus the MTRRs and TSC_AUX, in
    /// the order they are written back (IA32_TSC before the TSC deadline).
    pub msrs: Vec<MsrEntry>,
    /// `KVM_GET_VCPU_EVENTS`: pending and injected exceptions, interrupts and NMIs, the
    /// interrupt shadow, SMM.
    pub events: KvmVcpuEvents,
    /// `KVM_GET_TSC_KHZ`, if the host reports it.
    pub tsc_khz: Option<u32>,
    /// The CPUID given with [`crate::Vcpu::set_cpuid`].
    pub cpuid: Vec<CpuidEntry>,
}

/// One extended control register.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvmXcr {
    /// Its number (0 for XCR0).
    pub xcr: u32,
    /// Its value.
    pub value: u64,
}

/// The debug registers, as `kvm_debugregs`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvmDebugRegs {
    /// DR0..DR3.
    pub db: [u64; 4],
    /// DR6.
    pub dr6: u64,
    /// DR7.
    pub dr7: u64,
    /// `kvm_debugregs.flags`.
    pub flags: u64,
}

/// Events of a vCPU, as `kvm_vcpu_events`.
#[allow(missing_docs)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvmVcpuEvents {
    pub exception_injected: u8,
    pub exception_nr: u8,
    pub exception_has_error_code: u8,
    pub exception_pending: u8,
    pub exception_error_code: u32,
    pub exception_has_payload: u8,
    pub exception_payload: u64,
    pub interrupt_injected: u8,
    pub interrupt_nr: u8,
    pub interrupt_soft: u8,
    /// The interrupt shadow (after STI or MOV SS).
    pub interrupt_shadow: u8,
    pub nmi_injected: u8,
    pub nmi_pending: u8,
    pub nmi_masked: u8,
    pub sipi_vector: u32,
    /// `KVM_VCPUEVENT_VALID_*` as KVM reported them.
    pub flags: u32,
    pub smi_smm: u8,
    pub smi_pending: u8,
    pub smi_smm_inside_nmi: u8,
    pub smi_latched_init: u8,
    pub triple_fault_pending: u8,
}

/// A KVM VM: its clock and the MSI routes of the IOAPIC pins and MSI sources.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvmVmState {
    /// `KVM_GET_CLOCK`: the kvmclock's nanoseconds.
    pub clock_ns: u64,
    /// `kvm_clock_data.flags` as KVM reported them (not given back: the clock resumes where it
    /// stopped, rather than catching up with real time).
    pub clock_flags: u32,
    /// The GSI routes (level-triggered EOIs come back only for vectors that a route of an IOAPIC
    /// pin names, so a restored VM needs them before the guest's next EOI).
    pub msi_routes: Vec<MsiRoute>,
}

/// The MSI message one interrupt source (GSI) sends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MsiRoute {
    /// The source.
    pub gsi: u32,
    /// Message address.
    pub address: u64,
    /// Message data.
    pub data: u32,
}

/// A vCPU of the software CPU: its architectural state and what the engine keeps beside it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EmuVcpuState {
    /// Registers, MSRs the CPU owns (with the TSC offset), x87/SSE, halt, interrupt shadow, NMI
    /// blocking, and the wait for a start-up IPI.
    pub cpu: CpuState,
    /// Instructions retired.
    pub instructions: u64,
    /// The CPUID given with [`crate::Vcpu::set_cpuid`].
    pub cpuid: Vec<CpuidEntry>,
    /// MSRs the VMM set that the CPU does not own (served back to the guest as written).
    pub msrs: Vec<MsrEntry>,
    /// A PIC vector injected but not yet delivered.
    pub pending_ext_int: Option<u8>,
    /// The VMM asked for an exit when the CPU can take a PIC interrupt.
    pub interrupt_window_requested: bool,
    /// CR8 as last given to the local APIC's TPR.
    pub synced_cr8: u64,
    /// Level-triggered EOIs not yet reported as [`crate::VmExit::IoapicEoi`].
    pub pending_eois: Vec<u8>,
}

/// The time base of a VM on the software CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmuVmState {
    /// What the clock followed (for information: a restored clock keeps the mode it was made
    /// with, and continues from [`EmuVmState::now_ns`]).
    pub mode: ClockMode,
    /// The VM's time, in nanoseconds since its start: the guest's TSC and every device timer
    /// count from it.
    pub now_ns: u64,
    /// The state of the generator behind RDRAND under the instruction clock.
    pub random_state: u64,
}

/// Serde for byte blobs as one lowercase hex string.
pub(crate) mod hex_bytes {
    use serde::de::Error;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut text = String::with_capacity(bytes.len() * 2);
        for b in bytes {
            text.push(char::from(DIGITS[usize::from(b >> 4)]));
            text.push(char::from(DIGITS[usize::from(b & 0xf)]));
        }
        s.serialize_str(&text)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        if text.len() % 2 != 0 {
            return Err(D::Error::custom("hex bytes of odd length"));
        }
        let digit = |c: u8| match c {
            b'0'..=b'9' => Ok(c - b'0'),
            b'a'..=b'f' => Ok(c - b'a' + 10),
            b'A'..=b'F' => Ok(c - b'A' + 10),
            _ => Err(D::Error::custom(format!(
                "{:?} is not a hex digit",
                char::from(c)
            ))),
        };
        text.as_bytes()
            .chunks_exact(2)
            .map(|pair| Ok((digit(pair[0])? << 4) | digit(pair[1])?))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kvm_state_survives_json_with_blobs_as_hex() {
        let mut state = KvmVcpuState {
            xsave: vec![0x7f, 0x03, 0, 0xff],
            lapic: vec![0xab; 1024],
            msrs: vec![MsrEntry {
                index: 0x10,
                data: 0x1234,
            }],
            tsc_khz: Some(2_600_000),
            ..Default::default()
        };
        state.regs.rip = 0x1000;
        state.events.nmi_masked = 1;
        let snap = VcpuSnapshot::Kvm(state);
        let json = serde_json::to_string(&snap).unwrap();
        assert!(json.contains("\"xsave\":\"7f0300ff\""), "{json}");
        let back: VcpuSnapshot = serde_json::from_str(&json).unwrap();
        assert_eq!(back, snap);
        assert_eq!(back.engine(), "kvm");
    }

    #[test]
    fn emu_state_survives_json() {
        let mut state = EmuVcpuState::default();
        state.cpu.xmm[1] = 1 << 100;
        state.pending_ext_int = Some(0x20);
        state.pending_eois = vec![0x31];
        let snap = VcpuSnapshot::Emu(state);
        let back: VcpuSnapshot =
            serde_json::from_str(&serde_json::to_string(&snap).unwrap()).unwrap();
        assert_eq!(back, snap);
        let vm = VmSnapshot::Emu(EmuVmState {
            mode: ClockMode::Host,
            now_ns: 5,
            random_state: 7,
        });
        let back: VmSnapshot = serde_json::from_str(&serde_json::to_string(&vm).unwrap()).unwrap();
        assert_eq!(back, vm);
        assert_eq!(back.engine(), "emu");
    }

    #[test]
    fn malformed_hex_is_refused() {
        let json = serde_json::to_value(KvmVcpuState::default()).unwrap();
        for bad in ["abc", "zz"] {
            let mut v = json.clone();
            v["lapic"] = serde_json::json!(bad);
            assert!(serde_json::from_value::<KvmVcpuState>(v).is_err(), "{bad}");
        }
    }
}
