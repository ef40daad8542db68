//! `smp`: starts every enabled CPU of the MADT with INIT-SIPI-SIPI; each AP checks in with an
//! atomic increment and halts. Exits 0 if every CPU checked in within about 2 s.

#![no_std]
#![no_main]

use core::sync::atomic::{AtomicUsize, Ordering};

use rt::acpi::{Madt, MadtEntry};
use rt::{pit, say, smp};

rt::entry!(main);

static CHECKED_IN: AtomicUsize = AtomicUsize::new(0);

fn ap_main() -> ! {
    CHECKED_IN.fetch_add(1, Ordering::SeqCst);
    rt::halt_forever()
}

fn main(boot: &rt::BootInfo) -> u8 {
    let Some(madt) = boot.rsdp.and_then(Madt::find) else {
        say!("smp: no MADT found");
        return 1;
    };
    let mut ids = [0u8; rt::boot::MAX_APS + 1];
    let mut cpus = 0;
    for entry in madt.entries() {
        if let MadtEntry::LocalApic {
            apic_id,
            enabled: true,
        } = entry
        {
            if cpus < ids.len() {
                ids[cpus] = apic_id;
            }
            cpus += 1;
        }
    }
    smp::start_aps(&ids[..cpus.min(ids.len())], ap_main);
    let aps = cpus.saturating_sub(1);
    for _ in 0..200 {
        if CHECKED_IN.load(Ordering::SeqCst) >= aps {
            break;
        }
        pit::delay_us(10_000);
    }
    let checked_in = 1 + CHECKED_IN.load(Ordering::SeqCst);
    say!("smp: ", checked_in, " of ", cpus, " CPUs checked in");
    if checked_in == cpus { 0 } else { 1 }
}
