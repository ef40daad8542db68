//! The local APICs of a VM on the software CPU: `devices::lapic` models, wired to each other,
//! to the engine's vCPUs and to the engine's clock.
//!
//! The engine asks for them through [`hypervisor::emu::LocalApics`]. Interrupt messages (IPIs
//! from an ICR write, MSIs from the IOAPIC) are routed here, after the sender's APIC is
//! unlocked, locking one APIC at a time: no two APIC locks are ever held together, so CPUs that
//! send each other IPIs at once cannot deadlock. Level-triggered EOIs go back to the engine,
//! which reports them as `VmExit::IoapicEoi` like KVM does.

use std::sync::{Arc, Mutex, MutexGuard, RwLock, Weak};

use devices::clock::{Clock, Timer};
use devices::interrupt::MsiMessage;
use devices::lapic::{ApicMessage, DeliveryMode, Interrupt, LocalApic};
use hypervisor::emu::{EmuTime, EmuTimer, LocalApics, LocalInterruptController, VcpuWaker};

/// The engine's clock, as devices read it.
pub struct EngineClock(pub Arc<EmuTime>);

impl Clock for EngineClock {
    fn now_ns(&self) -> u64 {
        self.0.now_ns()
    }
}

/// A device timer on the engine's clock: the vCPU threads fire it.
pub struct EngineTimer(pub EmuTimer);

impl Timer for EngineTimer {
    fn arm(&self, deadline_ns: Option<u64>) {
        self.0.arm(deadline_ns);
    }
}

/// One vCPU's APIC with what wakes its vCPU.
struct Slot {
    apic: Mutex<LocalApic>,
    waker: VcpuWaker,
    system: Weak<System>,
}

/// The set of APICs.
struct System {
    time: Arc<EmuTime>,
    slots: RwLock<Vec<Arc<Slot>>>,
}

/// The local APICs of one emulated VM.
pub struct EmuLapics {
    system: Arc<System>,
}

impl EmuLapics {
    /// No APICs yet; the engine creates one per vCPU. Their timers run on `time`.
    pub fn new(time: Arc<EmuTime>) -> Self {
        Self {
            system: Arc::new(System {
                time,
                slots: RwLock::new(Vec::new()),
            }),
        }
    }
}

impl EmuLapics {
    /// Each APIC's state, in vCPU order.
    pub fn save(&self) -> Vec<devices::lapic::LapicState> {
        self.system
            .slots()
            .iter()
            .map(|s| s.lock().save())
            .collect()
    }

    /// Restores each APIC from `states` (one per vCPU, in order).
    pub fn restore(
        &self,
        states: &[devices::lapic::LapicState],
    ) -> Result<(), devices::StateError> {
        let slots = self.system.slots();
        if slots.len() != states.len() {
            return Err(devices::StateError::Mismatch {
                device: "lapic",
                what: format!("{} APICs saved, {} vCPUs here", states.len(), slots.len()),
            });
        }
        for (slot, state) in slots.iter().zip(states) {
            slot.lock().restore(state)?;
        }
        Ok(())
    }
}

impl System {
    fn slots(&self) -> Vec<Arc<Slot>> {
        self.slots.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Delivers `irq` to the APICs it addresses.
    fn route(&self, irq: &Interrupt) {
        let slots = self.slots();
        if irq.mode == DeliveryMode::LowestPriority {
            // The addressed APIC with the lowest arbitration priority takes it; ties go to the
            // lowest APIC ID.
            let target = slots
                .iter()
                .filter_map(|s| {
                    let apic = s.lock();
                    apic.matches(irq.destination, irq.source)
                        .then(|| (apic.arbitration_priority(), apic.id(), s))
                })
                .min_by_key(|(priority, id, _)| (*priority, *id))
                .map(|(_, _, s)| s.clone());
            if let Some(slot) = target {
                slot.accept(irq);
            }
            return;
        }
        for slot in &slots {
            let matches = slot.lock().matches(irq.destination, irq.source);
            if matches {
                slot.accept(irq);
            }
        }
    }
}

impl Slot {
    fn lock(&self) -> MutexGuard<'_, LocalApic> {
        self.apic.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn accept(&self, irq: &Interrupt) {
        let news = self.lock().accept(irq);
        if news {
            self.waker.wake();
        }
    }

    /// Delivers what the APIC sent; returns the vector of a level-triggered EOI.
    fn dispatch(&self, messages: Vec<ApicMessage>) -> Option<u8> {
        let mut eoi = None;
        for m in messages {
            match m {
                ApicMessage::Ipi(irq) => {
                    if let Some(system) = self.system.upgrade() {
                        system.route(&irq);
                    }
                }
                ApicMessage::EndOfInterrupt(v) => eoi = Some(v),
            }
        }
        eoi
    }
}

impl LocalInterruptController for Slot {
    fn mmio_base(&self) -> Option<u64> {
        self.lock().mmio_base()
    }

    fn mmio_read(&self, offset: u64, data: &mut [u8]) {
        use devices::BusDevice;
        self.lock().read(offset, data);
    }

    fn mmio_write(&self, offset: u64, data: &[u8]) -> Option<u8> {
        use devices::BusDevice;
        let messages = {
            let mut apic = self.lock();
            apic.write(offset, data);
            apic.take_messages()
        };
        self.dispatch(messages)
    }

    fn apic_base(&self) -> u64 {
        self.lock().apic_base()
    }

    fn set_apic_base(&self, value: u64) -> bool {
        self.lock().set_apic_base(value)
    }

    fn tpr(&self) -> u8 {
        self.lock().tpr()
    }

    fn set_tpr(&self, tpr: u8) {
        self.lock().set_tpr(tpr);
    }

    fn pending_interrupt(&self) -> Option<u8> {
        self.lock().pending_interrupt()
    }

    fn acknowledge(&self, vector: u8) {
        self.lock().acknowledge(vector);
    }

    fn take_nmi(&self) -> bool {
        self.lock().take_nmi()
    }

    fn take_init(&self) -> bool {
        self.lock().take_init()
    }

    fn take_sipi(&self) -> Option<u8> {
        self.lock().take_sipi()
    }

    fn accepts_ext_int(&self) -> bool {
        self.lock().accepts_ext_int()
    }

    fn wire_legacy_lints(&self) {
        self.lock().wire_legacy_lints();
    }
}

impl LocalApics for EmuLapics {
    fn create(&self, id: u32, waker: VcpuWaker) -> Arc<dyn LocalInterruptController> {
        let time = self.system.time.clone();
        let slot = Arc::new_cyclic(|me: &Weak<Slot>| {
            let me = me.clone();
            let timer = time.timer(Box::new(move || {
                if let Some(slot) = me.upgrade() {
                    let fired = slot.lock().expire();
                    if fired {
                        slot.waker.wake();
                    }
                }
            }));
            let clock: Arc<dyn Clock> = Arc::new(EngineClock(time.clone()));
            // APIC IDs are 8 bits: the VMM allows at most 254 vCPUs.
            let apic = LocalApic::new(id as u8, id == 0, clock, Arc::new(EngineTimer(timer)));
            Slot {
                apic: Mutex::new(apic),
                waker,
                system: Arc::downgrade(&self.system),
            }
        });
        self.system
            .slots
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .push(slot.clone());
        slot
    }

    fn deliver_msi(&self, address: u64, data: u32) {
        if let Some(irq) = Interrupt::from_msi(MsiMessage { address, data }) {
            self.system.route(&irq);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hypervisor::emu::ClockMode;

    const ICR_LOW: u64 = 0x300;
    const ICR_HIGH: u64 = 0x310;
    const SVR: u64 = 0xf0;
    const TPR: u64 = 0x80;
    const LDR: u64 = 0xd0;
    const EOI: u64 = 0xb0;

    fn system(n: u32) -> (EmuLapics, Vec<Arc<dyn LocalInterruptController>>) {
        let time = Arc::new(EmuTime::new(ClockMode::Host));
        let apics = EmuLapics::new(time.clone());
        let list = (0..n)
            .map(|id| {
                let apic = apics.create(id, VcpuWaker::new(time.clone()));
                apic.mmio_write(SVR, &0x1ffu32.to_le_bytes());
                apic
            })
            .collect();
        (apics, list)
    }

    fn write(apic: &Arc<dyn LocalInterruptController>, reg: u64, v: u32) -> Option<u8> {
        apic.mmio_write(reg, &v.to_le_bytes())
    }

    #[test]
    fn fixed_ipi_reaches_its_destination_only() {
        let (_sys, a) = system(3);
        write(&a[0], ICR_HIGH, 2 << 24);
        write(&a[0], ICR_LOW, 0x4051);
        assert_eq!(a[2].pending_interrupt(), Some(0x51));
        assert_eq!(a[1].pending_interrupt(), None);
        assert_eq!(a[0].pending_interrupt(), None);
    }

    #[test]
    fn shorthands_address_self_and_the_others() {
        let (_sys, a) = system(3);
        write(&a[1], ICR_LOW, 0x0004_4061);
        assert_eq!(a[1].pending_interrupt(), Some(0x61));
        assert_eq!(a[0].pending_interrupt(), None);
        write(&a[1], ICR_LOW, 0x000c_4071);
        assert_eq!(a[0].pending_interrupt(), Some(0x71));
        assert_eq!(a[2].pending_interrupt(), Some(0x71));
        assert_eq!(a[1].pending_interrupt(), Some(0x61));
    }

    #[test]
    fn init_and_startup_ipis_reach_the_target() {
        let (_sys, a) = system(2);
        write(&a[0], ICR_HIGH, 1 << 24);
        write(&a[0], ICR_LOW, 0x4500);
        write(&a[0], ICR_LOW, 0x8500);
        write(&a[0], ICR_LOW, 0x4608);
        assert!(a[1].take_init());
        assert_eq!(a[1].take_sipi(), Some(8));
        assert!(!a[0].take_init());
    }

    #[test]
    fn lowest_priority_msi_goes_to_the_least_busy_addressed_cpu() {
        let (sys, a) = system(3);
        for (i, apic) in a.iter().enumerate() {
            write(apic, LDR, 1 << (24 + i));
        }
        write(&a[0], TPR, 0x20);
        // Logical destination 0b011 (CPUs 0 and 1), lowest priority, vector 0x41.
        sys.deliver_msi(0xfee0_300c, 0x4141);
        assert_eq!(a[1].pending_interrupt(), Some(0x41));
        assert_eq!(a[0].pending_interrupt(), None);
        assert_eq!(a[2].pending_interrupt(), None);
    }

    #[test]
    fn eoi_of_a_level_triggered_msi_comes_back_to_the_engine() {
        let (sys, a) = system(1);
        sys.deliver_msi(0xfee0_0000, 0xc039);
        assert_eq!(a[0].pending_interrupt(), Some(0x39));
        a[0].acknowledge(0x39);
        assert_eq!(write(&a[0], EOI, 0), Some(0x39));
        sys.deliver_msi(0xfee0_0000, 0x4039);
        a[0].acknowledge(0x39);
        assert_eq!(write(&a[0], EOI, 0), None, "edge-triggered EOIs stay local");
    }
}
