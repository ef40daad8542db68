//! An emulated VM: guest RAM regions, the local APICs, and vCPUs that share them.

use std::sync::{Arc, RwLock};

use super::bus::GuestRam;
use super::{EmuConfig, EmuVcpu, VcpuWaker};
use crate::snapshot::wrong_engine;
use crate::{HypervisorError, MemoryRegion, Result, Vcpu, Vm, VmOps, VmSnapshot};

/// A VM on the software CPU.
pub struct EmuVm {
    ops: Arc<dyn VmOps>,
    config: EmuConfig,
    /// The RAM map; vCPUs take a snapshot each time they start running.
    ram: Arc<RwLock<Arc<GuestRam>>>,
    regions: RwLock<Vec<(u32, MemoryRegion)>>,
}

impl EmuVm {
    pub(super) fn new(ops: Arc<dyn VmOps>, config: EmuConfig) -> Self {
        Self {
            ops,
            config,
            ram: Arc::new(RwLock::new(Arc::new(GuestRam::default()))),
            regions: RwLock::new(Vec::new()),
        }
    }
}

impl Vm for EmuVm {
    unsafe fn map_memory(&self, slot: u32, region: MemoryRegion) -> Result<()> {
        let mut regions = self.regions.write().unwrap_or_else(|p| p.into_inner());
        // A slot given again replaces its region, as KVM_SET_USER_MEMORY_REGION does.
        regions.retain(|(s, _)| *s != slot);
        if region.size != 0 {
            regions.push((slot, region));
        }
        let map = GuestRam::new(regions.iter().map(|(_, r)| *r).collect());
        *self.ram.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(map);
        Ok(())
    }

    fn create_vcpu(&self, id: u32) -> Result<Box<dyn Vcpu>> {
        let waker = VcpuWaker::new(self.config.time.clone());
        // Counted as running until it first waits.
        self.config.time.vcpu_active();
        let apic = self.config.apics.create(id, waker.clone());
        Ok(Box::new(EmuVcpu::new(
            id,
            self.ops.clone(),
            self.ram.clone(),
            apic,
            waker,
            self.config.time.clone(),
        )))
    }

    fn signal_msi(&self, _gsi: u32, address: u64, data: u32) -> Result<()> {
        // The local APICs report level-triggered EOIs by vector, so no GSI route is needed.
        self.config.apics.deliver_msi(address, data);
        Ok(())
    }

    fn snapshot(&self) -> Result<VmSnapshot> {
        Ok(VmSnapshot::Emu(self.config.time.snapshot()))
    }

    fn restore(&self, snapshot: &VmSnapshot) -> Result<()> {
        match snapshot {
            VmSnapshot::Emu(state) => {
                self.config.time.restore(state);
                Ok(())
            }
            other => Err(wrong_engine("VM", other.engine(), "emu")),
        }
    }

    fn start_dirty_log(&self) -> Result<()> {
        Err(HypervisorError::Unsupported(DIRTY_LOG_NEEDS_KVM))
    }

    fn dirty_pages(&self) -> Result<Vec<(u64, Vec<u64>)>> {
        Err(HypervisorError::Unsupported(DIRTY_LOG_NEEDS_KVM))
    }

    fn stop_dirty_log(&self) -> Result<()> {
        Ok(())
    }
}

/// Why the software CPU has no dirty-page log.
const DIRTY_LOG_NEEDS_KVM: &str =
    "the software CPU keeps no dirty-page log (it needs KVM): compare memory contents instead";
