//! A KVM virtual machine.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};

use kvm_bindings::{
    KVM_CAP_EXIT_ON_EMULATION_FAILURE, KVM_CAP_SPLIT_IRQCHIP, KVM_IRQ_ROUTING_MSI, KvmIrqRouting,
    kvm_enable_cap, kvm_irq_routing_entry, kvm_userspace_memory_region,
};
use kvm_ioctls::{Kvm, VmFd};

use super::{IOAPIC_PINS, KvmVcpu, ioctl_err};
use crate::{HypervisorError, MemoryRegion, Result, Vcpu, Vm, VmOps};

/// Where KVM puts the three pages of the TSS that VT-x needs for real mode: just below the BIOS
/// area at the top of the 32-bit space, away from RAM and the MMIO devices.
const TSS_ADDRESS: usize = 0xfffb_d000;

/// A KVM VM with a split irqchip.
pub struct KvmVm {
    fd: Arc<VmFd>,
    ops: Arc<dyn VmOps>,
    /// MSI route of each IOAPIC pin, as last given to `KVM_SET_GSI_ROUTING`.
    routes: Mutex<BTreeMap<u32, (u64, u32)>>,
    /// Guest RAM, for the software CPU's fallback.
    regions: Arc<RwLock<Vec<MemoryRegion>>>,
    /// An irqfd per message-signalled source beyond the IOAPIC pins (PCI MSI-X vectors): the
    /// device thread signals an eventfd and the kernel injects, with no ioctl per interrupt.
    irqfds: Mutex<BTreeMap<u32, vmm_sys_util::eventfd::EventFd>>,
}

impl KvmVm {
    pub(super) fn new(kvm: &Kvm, ops: Arc<dyn VmOps>) -> Result<Self> {
        let fd = kvm.create_vm().map_err(ioctl_err("KVM_CREATE_VM"))?;
        fd.set_tss_address(TSS_ADDRESS)
            .map_err(ioctl_err("KVM_SET_TSS_ADDR"))?;
        let split = kvm_enable_cap {
            cap: KVM_CAP_SPLIT_IRQCHIP,
            args: [IOAPIC_PINS, 0, 0, 0],
            ..Default::default()
        };
        fd.enable_cap(&split)
            .map_err(ioctl_err("KVM_ENABLE_CAP(SPLIT_IRQCHIP)"))?;
        // Without this capability an instruction KVM cannot emulate is reported without its
        // bytes; with it, the report names the instruction.
        if fd.check_extension_raw(KVM_CAP_EXIT_ON_EMULATION_FAILURE.into()) > 0 {
            let cap = kvm_enable_cap {
                cap: KVM_CAP_EXIT_ON_EMULATION_FAILURE,
                args: [1, 0, 0, 0],
                ..Default::default()
            };
            fd.enable_cap(&cap)
                .map_err(ioctl_err("KVM_ENABLE_CAP(EXIT_ON_EMULATION_FAILURE)"))?;
        }
        Ok(Self {
            fd: Arc::new(fd),
            ops,
            routes: Mutex::new(BTreeMap::new()),
            regions: Arc::default(),
            irqfds: Mutex::default(),
        })
    }

    fn update_route(&self, gsi: u32, address: u64, data: u32) -> Result<()> {
        let mut routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        if routes.get(&gsi) == Some(&(address, data)) {
            return Ok(());
        }
        routes.insert(gsi, (address, data));
        let entries: Vec<kvm_irq_routing_entry> = routes
            .iter()
            .map(|(&gsi, &(address, data))| {
                let mut entry = kvm_irq_routing_entry {
                    gsi,
                    type_: KVM_IRQ_ROUTING_MSI,
                    ..Default::default()
                };
                entry.u.msi.address_lo = address as u32;
                entry.u.msi.address_hi = (address >> 32) as u32;
                entry.u.msi.data = data;
                entry
            })
            .collect();
        let routing =
            KvmIrqRouting::from_entries(&entries).map_err(|_| HypervisorError::Ioctl {
                op: "KVM_SET_GSI_ROUTING",
                source: std::io::Error::from_raw_os_error(libc::E2BIG),
            })?;
        self.fd
            .set_gsi_routing(&routing)
            .map_err(ioctl_err("KVM_SET_GSI_ROUTING"))
    }
}

impl Vm for KvmVm {
    unsafe fn map_memory(&self, slot: u32, region: MemoryRegion) -> Result<()> {
        let mem = kvm_userspace_memory_region {
            slot,
            flags: 0,
            guest_phys_addr: region.guest_addr,
            memory_size: region.size,
            userspace_addr: region.host_addr,
        };
        // SAFETY: the caller guarantees the host range is mapped and outlives the VM.
        unsafe { self.fd.set_user_memory_region(mem) }
            .map_err(ioctl_err("KVM_SET_USER_MEMORY_REGION"))?;
        self.regions
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .push(region);
        Ok(())
    }

    fn create_vcpu(&self, id: u32) -> Result<Box<dyn Vcpu>> {
        let fd = self
            .fd
            .create_vcpu(id.into())
            .map_err(ioctl_err("KVM_CREATE_VCPU"))?;
        Ok(Box::new(KvmVcpu::new(
            fd,
            self.ops.clone(),
            self.regions.clone(),
        )))
    }

    fn signal_msi(&self, gsi: u32, address: u64, data: u32) -> Result<()> {
        self.update_route(gsi, address, data)?;
        if gsi >= IOAPIC_PINS as u32 {
            let mut irqfds = self.irqfds.lock().unwrap_or_else(|p| p.into_inner());
            if !irqfds.contains_key(&gsi) {
                let fd =
                    vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).map_err(|source| {
                        HypervisorError::Ioctl {
                            op: "eventfd",
                            source,
                        }
                    })?;
                self.fd
                    .register_irqfd(&fd, gsi)
                    .map_err(ioctl_err("KVM_IRQFD"))?;
                irqfds.insert(gsi, fd);
            }
            if let Some(fd) = irqfds.get(&gsi) {
                return fd.write(1).map_err(|source| HypervisorError::Ioctl {
                    op: "irqfd write",
                    source,
                });
            }
        }
        // KVM_IRQ_LINE on a GSI with an MSI route sends the message; a level of 0 is ignored for
        // MSI routes, so one call is one interrupt.
        self.fd
            .set_irq_line(gsi, true)
            .map_err(ioctl_err("KVM_IRQ_LINE"))
    }

    fn register_ioevent(&self, addr: u64, event: &vmm_sys_util::eventfd::EventFd) -> Result<bool> {
        self.fd
            .register_ioevent(
                event,
                &kvm_ioctls::IoEventAddress::Mmio(addr),
                kvm_ioctls::NoDatamatch,
            )
            .map_err(ioctl_err("KVM_IOEVENTFD"))?;
        Ok(true)
    }

    fn unregister_ioevent(&self, addr: u64, event: &vmm_sys_util::eventfd::EventFd) -> Result<()> {
        self.fd
            .unregister_ioevent(
                event,
                &kvm_ioctls::IoEventAddress::Mmio(addr),
                kvm_ioctls::NoDatamatch,
            )
            .map_err(ioctl_err("KVM_IOEVENTFD(deassign)"))
    }
}
