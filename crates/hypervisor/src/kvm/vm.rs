//! A KVM virtual machine.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};

use kvm_bindings::{
    KVM_CAP_EXIT_ON_EMULATION_FAILURE, KVM_CAP_SPLIT_IRQCHIP, KVM_IRQ_ROUTING_MSI,
    KVM_MEM_LOG_DIRTY_PAGES, KvmIrqRouting, kvm_clock_data, kvm_enable_cap, kvm_irq_routing_entry,
    kvm_userspace_memory_region,
};
use kvm_ioctls::{Cap, Kvm, VmFd};

use super::vcpu::SnapshotSupport;
use super::{IOAPIC_PINS, KvmVcpu, ioctl_err};
use crate::snapshot::wrong_engine;
use crate::{
    HypervisorError, KvmVmState, MemoryRegion, MsiRoute, Result, Vcpu, Vm, VmOps, VmSnapshot,
};

/// MSRs that KVM keeps per vCPU but leaves out of `KVM_GET_MSR_INDEX_LIST`, saved too: the MTRRs
/// (default type, fixed ranges, eight variable base/mask pairs) and TSC_AUX.
fn extra_msrs() -> impl Iterator<Item = u32> {
    const MTRR_DEF_TYPE: u32 = 0x2ff;
    const MTRR_VARIABLE: std::ops::Range<u32> = 0x200..0x210;
    const TSC_AUX: u32 = 0xc000_0103;
    std::iter::once(MTRR_DEF_TYPE)
        .chain(x86_cpu::state::MTRR_FIXED)
        .chain(MTRR_VARIABLE)
        .chain(std::iter::once(TSC_AUX))
}

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
    /// The memory slots and whether KVM logs their written pages.
    slots: Mutex<Slots>,
    support: Arc<SnapshotSupport>,
}

/// The memory slots given to KVM.
#[derive(Default)]
struct Slots {
    regions: BTreeMap<u32, MemoryRegion>,
    dirty_log: bool,
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
        let mut msrs: Vec<u32> = kvm
            .get_msr_index_list()
            .map_err(ioctl_err("KVM_GET_MSR_INDEX_LIST"))?
            .as_slice()
            .to_vec();
        for extra in extra_msrs() {
            if !msrs.contains(&extra) {
                msrs.push(extra);
            }
        }
        let support = SnapshotSupport {
            msrs,
            xsave_size: usize::try_from(fd.check_extension_int(Cap::Xsave2)).unwrap_or(0),
            xcrs: fd.check_extension(Cap::Xcrs),
        };
        Ok(Self {
            fd: Arc::new(fd),
            ops,
            routes: Mutex::new(BTreeMap::new()),
            regions: Arc::default(),
            irqfds: Mutex::default(),
            slots: Mutex::default(),
            support: Arc::new(support),
        })
    }

    fn update_route(&self, gsi: u32, address: u64, data: u32) -> Result<()> {
        let mut routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        if routes.get(&gsi) == Some(&(address, data)) {
            return Ok(());
        }
        routes.insert(gsi, (address, data));
        self.set_routing(&routes)
    }

    /// Gives KVM the whole routing table.
    fn set_routing(&self, routes: &BTreeMap<u32, (u64, u32)>) -> Result<()> {
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

impl KvmVm {
    fn lock_slots(&self) -> std::sync::MutexGuard<'_, Slots> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Gives every slot to KVM again with or without the dirty-page log.
    fn relog_slots(&self, slots: &Slots) -> Result<()> {
        for (&slot, region) in &slots.regions {
            // SAFETY: `region` was given to `map_memory`, whose caller guaranteed that its host
            // range is mapped for as long as the VM exists; only the flags change.
            unsafe { self.set_slot(slot, region, slots.dirty_log) }?;
        }
        Ok(())
    }

    /// # Safety
    /// As [`Vm::map_memory`].
    unsafe fn set_slot(&self, slot: u32, region: &MemoryRegion, dirty_log: bool) -> Result<()> {
        let mem = kvm_userspace_memory_region {
            slot,
            flags: if dirty_log {
                KVM_MEM_LOG_DIRTY_PAGES
            } else {
                0
            },
            guest_phys_addr: region.guest_addr,
            memory_size: region.size,
            userspace_addr: region.host_addr,
        };
        // SAFETY: the caller guarantees the host range is mapped and outlives the VM.
        unsafe { self.fd.set_user_memory_region(mem) }
            .map_err(ioctl_err("KVM_SET_USER_MEMORY_REGION"))
    }
}

impl Vm for KvmVm {
    unsafe fn map_memory(&self, slot: u32, region: MemoryRegion) -> Result<()> {
        let mut slots = self.lock_slots();
        // SAFETY: the caller guarantees the host range is mapped and outlives the VM.
        unsafe { self.set_slot(slot, &region, slots.dirty_log && region.size != 0) }?;
        if region.size == 0 {
            slots.regions.remove(&slot);
        } else {
            slots.regions.insert(slot, region);
        }
        drop(slots);
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
            self.support.clone(),
        )))
    }

    fn signal_msi(&self, gsi: u32, address: u64, data: u32) -> Result<()> {
        self.update_route(gsi, address, data)?;
        if gsi >= IOAPIC_PINS as u32 {
            let mut irqfds = self.irqfds.lock().unwrap_or_else(|p| p.into_inner());
            let fd = match irqfds.entry(gsi) {
                std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::btree_map::Entry::Vacant(e) => {
                    let fd = vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).map_err(
                        |source| HypervisorError::Ioctl {
                            op: "eventfd",
                            source,
                        },
                    )?;
                    self.fd
                        .register_irqfd(&fd, gsi)
                        .map_err(ioctl_err("KVM_IRQFD"))?;
                    e.insert(fd)
                }
            };
            return fd.write(1).map_err(|source| HypervisorError::Ioctl {
                op: "irqfd write",
                source,
            });
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

    fn snapshot(&self) -> Result<VmSnapshot> {
        let clock = self.fd.get_clock().map_err(ioctl_err("KVM_GET_CLOCK"))?;
        let routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        Ok(VmSnapshot::Kvm(KvmVmState {
            clock_ns: clock.clock,
            clock_flags: clock.flags,
            msi_routes: routes
                .iter()
                .map(|(&gsi, &(address, data))| MsiRoute { gsi, address, data })
                .collect(),
        }))
    }

    fn restore(&self, snapshot: &VmSnapshot) -> Result<()> {
        let s = match snapshot {
            VmSnapshot::Kvm(s) => s,
            other => return Err(wrong_engine("VM", other.engine(), "kvm")),
        };
        // No flags: kvmclock resumes at the saved time, as the restored TSC does, instead of
        // jumping by the real time the VM spent saved (KVM_CLOCK_REALTIME).
        let clock = kvm_clock_data {
            clock: s.clock_ns,
            ..Default::default()
        };
        self.fd
            .set_clock(&clock)
            .map_err(ioctl_err("KVM_SET_CLOCK"))?;
        let mut routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        *routes = s
            .msi_routes
            .iter()
            .map(|r| (r.gsi, (r.address, r.data)))
            .collect();
        if !routes.is_empty() {
            self.set_routing(&routes)?;
        }
        Ok(())
    }

    fn start_dirty_log(&self) -> Result<()> {
        let mut slots = self.lock_slots();
        slots.dirty_log = true;
        self.relog_slots(&slots)?;
        // A slot that logged already keeps its bitmap: forget what it holds.
        for (&slot, region) in &slots.regions {
            self.fd
                .get_dirty_log(slot, region.size as usize)
                .map_err(ioctl_err("KVM_GET_DIRTY_LOG"))?;
        }
        Ok(())
    }

    fn dirty_pages(&self) -> Result<Vec<(u64, Vec<u64>)>> {
        let slots = self.lock_slots();
        if !slots.dirty_log {
            return Err(HypervisorError::Unsupported(
                "the dirty-page log is not started (start_dirty_log)",
            ));
        }
        slots
            .regions
            .iter()
            .map(|(&slot, region)| {
                self.fd
                    .get_dirty_log(slot, region.size as usize)
                    .map(|bitmap| (region.guest_addr, bitmap))
                    .map_err(ioctl_err("KVM_GET_DIRTY_LOG"))
            })
            .collect()
    }

    fn stop_dirty_log(&self) -> Result<()> {
        let mut slots = self.lock_slots();
        if !slots.dirty_log {
            return Ok(());
        }
        slots.dirty_log = false;
        self.relog_slots(&slots)
    }
}
