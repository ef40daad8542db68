//! The local APIC (xAPIC) of one CPU, for engines that do not keep local APICs of their own (the
//! software CPU).
//!
//! [`LocalApic`] is the register model at MMIO 0xfee00000 (relocatable through IA32_APIC_BASE):
//! ID, version 0x14 with six LVT entries, TPR/APR/PPR, EOI, LDR/DFR, SVR, the 256-bit ISR, TMR and
//! IRR, ESR, ICR, the LVT (timer, thermal, performance counters, LINT0, LINT1, error) and the
//! timer (one-shot and periodic, on a 1 GHz bus clock, counted from a [`Clock`] and woken through
//! a [`Timer`], like the PIT). TSC-deadline mode and x2APIC are not modelled: an engine using this
//! device must not advertise them in CPUID.
//!
//! The device does not know the other CPUs. What it sends (IPIs written to the ICR, and the EOI of
//! a level-triggered vector that the IOAPIC must see) waits in an outbox that its owner drains
//! with [`LocalApic::take_messages`] after the register access, once the device's lock is
//! released: delivering an IPI locks another CPU's APIC, and an EOI locks the IOAPIC, which
//! itself delivers into local APICs; doing either with this APIC locked could deadlock against a
//! CPU doing the same the other way round. The owner routes interrupts to the APICs whose
//! [`LocalApic::matches`] accepts their [`Destination`], with [`LocalApic::accept`].
//!
//! Its snapshot state is [`LapicState`]; the owner saves it with the outbox drained.
//!
//! [`Clock`]: crate::clock::Clock
//! [`Timer`]: crate::clock::Timer

mod device;
mod state;
mod timer;

pub use device::LocalApic;
pub use state::{LapicState, LapicTimerState};

use crate::interrupt::MsiMessage;

/// The default guest-physical base of the APIC page.
pub const LAPIC_BASE: u64 = 0xfee0_0000;
/// The length of the APIC page.
pub const LAPIC_LEN: u64 = 0x1000;
/// IA32_APIC_BASE, the MSR that holds the page's base and the global enable.
pub const MSR_APIC_BASE: u32 = 0x1b;

/// How an interrupt message is delivered (ICR bits 10:8, MSI data bits 10:8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryMode {
    /// The vector, to every addressed CPU.
    Fixed,
    /// The vector, to the addressed CPU that runs at the lowest priority.
    LowestPriority,
    /// A system-management interrupt (ignored: there is no SMM).
    Smi,
    /// A non-maskable interrupt.
    Nmi,
    /// INIT: the CPU resets and waits for a start-up IPI.
    Init,
    /// Start-up IPI: a CPU waiting after INIT starts in real mode at `vector << 12`.
    StartUp,
    /// An external (8259-style) interrupt: the CPU asks the PIC for the vector.
    ExtInt,
    /// The reserved encoding 3.
    Reserved,
}

impl DeliveryMode {
    fn from_bits(bits: u32) -> Self {
        match bits & 7 {
            0 => DeliveryMode::Fixed,
            1 => DeliveryMode::LowestPriority,
            2 => DeliveryMode::Smi,
            4 => DeliveryMode::Nmi,
            5 => DeliveryMode::Init,
            6 => DeliveryMode::StartUp,
            7 => DeliveryMode::ExtInt,
            _ => DeliveryMode::Reserved,
        }
    }
}

/// Which local APICs an interrupt message is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// The APIC whose ID is the value (0xff: every APIC).
    Physical(u8),
    /// The APICs whose logical ID (LDR and DFR) matches the value (0xff: every APIC).
    Logical(u8),
    /// Only the sender (ICR shorthand 01).
    SelfOnly,
    /// Every APIC, the sender included (ICR shorthand 10).
    AllIncludingSelf,
    /// Every APIC but the sender (ICR shorthand 11).
    AllExcludingSelf,
}

/// An interrupt message on its way to local APICs: from an ICR write or an MSI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interrupt {
    /// The vector (the start-up page for a start-up IPI).
    pub vector: u8,
    /// How it is delivered.
    pub mode: DeliveryMode,
    /// Who receives it.
    pub destination: Destination,
    /// Level-triggered: the EOI of the vector is broadcast to the IOAPIC.
    pub level_triggered: bool,
    /// The level bit: an INIT with the level deasserted (the "INIT level de-assert" of old
    /// multiprocessor start-up code) does nothing.
    pub assert: bool,
    /// The APIC ID of the sender, for the self shorthands; `None` for an MSI.
    pub source: Option<u8>,
}

impl Interrupt {
    /// Decodes an x86 MSI (address 0xfeeXXXXX): destination ID in address bits 19:12,
    /// destination mode in bit 2; vector, delivery mode, level and trigger in the data word.
    /// Returns `None` for an address outside the interrupt window.
    pub fn from_msi(msg: MsiMessage) -> Option<Self> {
        if msg.address >> 20 != 0xfee {
            return None;
        }
        let dest = ((msg.address >> 12) & 0xff) as u8;
        let destination = if msg.address & (1 << 2) != 0 {
            Destination::Logical(dest)
        } else {
            Destination::Physical(dest)
        };
        Some(Interrupt {
            vector: msg.data as u8,
            mode: DeliveryMode::from_bits(msg.data >> 8),
            destination,
            level_triggered: msg.data & (1 << 15) != 0,
            // An MSI is an edge; a level-triggered one is always an assertion.
            assert: msg.data & (1 << 15) == 0 || msg.data & (1 << 14) != 0,
            source: None,
        })
    }
}

/// What a local APIC sends, for its owner to deliver once the APIC is unlocked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApicMessage {
    /// An inter-processor interrupt written to the ICR.
    Ipi(Interrupt),
    /// The EOI of a level-triggered vector: the IOAPIC clears the remote IRR of the entries
    /// with that vector.
    EndOfInterrupt(u8),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn msi_decodes_destination_mode_and_trigger() {
        let i = Interrupt::from_msi(MsiMessage {
            address: 0xfee0_300c,
            data: 0xc149,
        })
        .unwrap();
        assert_eq!(i.vector, 0x49);
        assert_eq!(i.mode, DeliveryMode::LowestPriority);
        assert_eq!(i.destination, Destination::Logical(3));
        assert!(i.level_triggered && i.assert);
        assert_eq!(i.source, None);
        let edge = Interrupt::from_msi(MsiMessage {
            address: 0xfee0_1000,
            data: 0x30,
        })
        .unwrap();
        assert_eq!(edge.destination, Destination::Physical(1));
        assert!(!edge.level_triggered && edge.assert);
    }

    #[test]
    fn msi_outside_the_interrupt_window_is_refused() {
        assert_eq!(
            Interrupt::from_msi(MsiMessage {
                address: 0xfed0_0000,
                data: 0x30
            }),
            None
        );
    }

    #[test]
    fn reserved_delivery_mode_is_named() {
        assert_eq!(DeliveryMode::from_bits(3), DeliveryMode::Reserved);
        assert_eq!(DeliveryMode::from_bits(0xf07), DeliveryMode::ExtInt);
    }
}
