//! `timer`: the PIT (channel 0, mode 2, ~1 kHz, through the IOAPIC pin the MADT names for ISA
//! IRQ 0) and the local APIC timer (periodic) both interrupt the BSP, which sleeps in `hlt` until
//! it has seen 10 of each. Exits 0 if both reached 10.

#![no_std]
#![no_main]

use core::sync::atomic::{AtomicU32, Ordering};

use rt::acpi::Madt;
use rt::apic::{self, IoApic, reg};
use rt::{idt, pit, say};

rt::entry!(main);

const PIT_VECTOR: u8 = 0x30;
const LAPIC_VECTOR: u8 = 0x31;
const SPURIOUS_VECTOR: u8 = 0xff;
const WANTED: u32 = 10;
/// Give up once either timer has ticked this often (about 2 s at 1 kHz) without the other.
const GIVE_UP: u32 = 2000;

static PIT_TICKS: AtomicU32 = AtomicU32::new(0);
static LAPIC_TICKS: AtomicU32 = AtomicU32::new(0);

fn pit_tick(_: &mut idt::Frame) {
    PIT_TICKS.fetch_add(1, Ordering::Relaxed);
    apic::eoi();
}

fn lapic_tick(_: &mut idt::Frame) {
    LAPIC_TICKS.fetch_add(1, Ordering::Relaxed);
    apic::eoi();
}

fn spurious(_: &mut idt::Frame) {}

fn main(boot: &rt::BootInfo) -> u8 {
    idt::init();
    idt::set_handler(PIT_VECTOR, pit_tick, 0);
    idt::set_handler(LAPIC_VECTOR, lapic_tick, 0);
    idt::set_handler(SPURIOUS_VECTOR, spurious, 0);
    apic::disable_pic();
    apic::enable();

    let madt = boot.rsdp.and_then(Madt::find);
    // The contract puts ISA IRQ 0 on pin 2, and the MADT says so with an override. Without one
    // the mapping is the identity, but QEMU's IOAPIC still delivers input 0 on pin 2 (its microvm
    // machine does not list the override), so then both pins are routed.
    let routing = madt.and_then(|m| m.isa_irq_override(0));
    let (gsi, flags) = routing.unwrap_or((0, 0));
    let (base, gsi_base) = madt
        .and_then(|m| m.ioapic_for(gsi))
        .unwrap_or((0xfec0_0000, 0));
    let ioapic = IoApic::new(u64::from(base));
    // MPS INTI flags: polarity in bits 0-1 (3 = active low), trigger in bits 2-3 (3 = level);
    // 0 means "conforming", which for ISA is edge-triggered, active high.
    let active_low = flags & 0x3 == 0x3;
    let level = (flags >> 2) & 0x3 == 0x3;
    let pins = match routing {
        Some(_) => [gsi - gsi_base, gsi - gsi_base],
        None => [0, 2],
    };
    for pin in pins {
        ioapic.route(pin, PIT_VECTOR, apic::id(), level, active_low);
    }
    pit::start_periodic(1000);

    // Divide by 16; 62 500 counts is 1 ms on the 1 GHz APIC bus KVM and QEMU emulate.
    apic::write(reg::TIMER_DIVIDE, 0x3);
    apic::write(reg::LVT_TIMER, u32::from(LAPIC_VECTOR) | 1 << 17);
    apic::write(reg::TIMER_INITIAL, 62_500);

    let mut wakeups = 0u32;
    loop {
        let (p, l) = (
            PIT_TICKS.load(Ordering::Relaxed),
            LAPIC_TICKS.load(Ordering::Relaxed),
        );
        if (p >= WANTED && l >= WANTED) || p >= GIVE_UP || l >= GIVE_UP || wakeups >= 4 * GIVE_UP {
            break;
        }
        idt::wait_for_interrupt();
        wakeups += 1;
    }
    apic::write(reg::LVT_TIMER, 1 << 16);
    for pin in pins {
        ioapic.mask(pin);
    }

    let (p, l) = (
        PIT_TICKS.load(Ordering::Relaxed),
        LAPIC_TICKS.load(Ordering::Relaxed),
    );
    say!("timer: ", p, " pit ticks, ", l, " lapic ticks");
    if p >= WANTED && l >= WANTED { 0 } else { 1 }
}
