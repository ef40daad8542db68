//! The shared runtime of popek's test guests: boot stubs for the PVH and Linux 64-bit entries,
//! serial output, port I/O, the panic handler, GDT/TSS/IDT helpers, ACPI (MADT) parsing, the
//! local APIC and IOAPIC, the PIT and AP start-up, PCI configuration space and BARs, and a
//! minimal virtio-pci driver core.
//!
//! A guest is a `#![no_std] #![no_main]` binary that names its entry with [`entry!`]; the entry
//! gets a [`BootInfo`] and returns the exit status, which goes to the debug-exit port 0xf4.
//!
//! Everything here runs at CPL 0, which some hosts emulate at a few million instructions per
//! second: loops over memory belong in CPL-3 code (see `gdt::enter_user`).

#![no_std]
#![allow(clippy::missing_safety_doc)]

pub mod acpi;
pub mod apic;
pub mod boot;
pub mod deadline;
pub mod gdt;
pub mod idt;
pub mod mem;
pub mod pci;
pub mod pit;
pub mod port;
pub mod serial;
pub mod smp;
pub mod virtio;

use core::cell::UnsafeCell;

pub use boot::{BootInfo, BootProtocol, E820_RAM, E820Entry};

/// The debug-exit port: a byte written here ends the VM with that status.
pub const DEBUG_EXIT_PORT: u16 = 0xf4;

/// A static the runtime mutates under its own rules (BSP-only, or before the APs run).
pub struct Global<T>(UnsafeCell<T>);

// SAFETY: every user of a `Global` documents why its accesses do not race (single BSP, or
// accesses ordered by AP start-up); the type only exists to hold such statics.
unsafe impl<T> Sync for Global<T> {}

impl<T> Global<T> {
    /// Wraps `value`.
    pub const fn new(value: T) -> Self {
        Self(UnsafeCell::new(value))
    }

    /// A raw pointer to the value.
    pub const fn get(&self) -> *mut T {
        self.0.get()
    }
}

/// Ends the VM: writes `status` to the debug-exit port, then halts forever in case the port is
/// not there.
pub fn exit(status: u8) -> ! {
    port::outb(DEBUG_EXIT_PORT, status);
    halt_forever()
}

/// Disables interrupts and halts, forever.
pub fn halt_forever() -> ! {
    loop {
        // SAFETY: cli/hlt only stop this CPU.
        unsafe { core::arch::asm!("cli", "hlt", options(nomem, nostack)) };
    }
}

/// Declares the guest's entry: `rt::entry!(main);` with `fn main(boot: &rt::BootInfo) -> u8`.
#[macro_export]
macro_rules! entry {
    ($main:path) => {
        #[unsafe(no_mangle)]
        pub fn rt_guest_main(boot: &$crate::BootInfo) -> u8 {
            let main: fn(&$crate::BootInfo) -> u8 = $main;
            main(boot)
        }
    };
}

unsafe extern "Rust" {
    fn rt_guest_main(boot: &BootInfo) -> u8;
}

#[unsafe(no_mangle)]
extern "C" fn rt_rust_start() -> ! {
    let boot = boot::collect();
    // SAFETY: `entry!` defines this symbol with exactly this signature.
    let status = unsafe { rt_guest_main(&boot) };
    exit(status)
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    let message = info.message().as_str().unwrap_or("(formatted message)");
    match info.location() {
        Some(l) => say!("panic at ", l.file(), ":", l.line(), ": ", message),
        None => say!("panic: ", message),
    }
    exit(3)
}
