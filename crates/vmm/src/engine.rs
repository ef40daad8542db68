//! Choosing the CPU engine: KVM or the software CPU, and with it where device time comes from.

use std::sync::Arc;

use hypervisor::Hypervisor;
use hypervisor::emu::{ClockMode, EmuConfig, EmuHypervisor, EmuTime, InstructionClock};
use hypervisor::kvm::KvmHypervisor;

use crate::config::{Accel, ClockConfig, VmConfig};
use crate::lapics::EmuLapics;
use crate::platform::DeviceTime;

/// The engine a VM runs on.
pub struct Engine {
    pub(crate) hypervisor: Box<dyn Hypervisor>,
    pub(crate) time: DeviceTime,
    fallback_reason: Option<String>,
    /// The software CPU's local APICs (saved and restored by the VMM).
    pub(crate) lapics: Option<Arc<EmuLapics>>,
}

impl Engine {
    /// The engine `config` asks for. `--accel auto` takes KVM when `/dev/kvm` opens and has
    /// what popek needs, and the software CPU otherwise.
    pub fn select(config: &VmConfig) -> Result<Engine, hypervisor::HypervisorError> {
        match config.accel {
            Accel::Kvm => Ok(Self::kvm(KvmHypervisor::new()?)),
            Accel::Emu => Ok(Self::emu(config.clock, None)),
            Accel::Auto => match KvmHypervisor::new() {
                Ok(kvm) => Ok(Self::kvm(kvm)),
                Err(e) => Ok(Self::emu(config.clock, Some(e.to_string()))),
            },
        }
    }

    fn kvm(kvm: KvmHypervisor) -> Engine {
        Engine {
            hypervisor: Box::new(kvm),
            time: DeviceTime::Host,
            fallback_reason: None,
            lapics: None,
        }
    }

    fn emu(clock: ClockConfig, fallback_reason: Option<String>) -> Engine {
        let mode = match clock {
            ClockConfig::Host => ClockMode::Host,
            ClockConfig::Instructions => ClockMode::Instructions(InstructionClock::default()),
        };
        let time = Arc::new(EmuTime::new(mode));
        let apics = Arc::new(EmuLapics::new(time.clone()));
        Engine {
            hypervisor: Box::new(EmuHypervisor::new(EmuConfig {
                apics: apics.clone(),
                time: time.clone(),
            })),
            time: DeviceTime::Engine(time),
            fallback_reason,
            lapics: Some(apics),
        }
    }

    /// The engine's short name ("kvm", "emu").
    pub fn name(&self) -> &'static str {
        self.hypervisor.name()
    }

    /// Why `--accel auto` did not pick KVM, if it did not.
    pub fn fallback_reason(&self) -> Option<&str> {
        self.fallback_reason.as_deref()
    }
}
