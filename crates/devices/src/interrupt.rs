//! Interrupt plumbing as devices see it.

/// An interrupt request line into an interrupt controller (an ISA IRQ / a GSI).
pub trait IrqLine: Send + Sync {
    /// Drives the line high (`true`) or low (`false`).
    fn set_level(&self, level: bool);
    /// Raises and lowers the line: an edge for edge-triggered inputs.
    fn pulse(&self) {
        self.set_level(true);
        self.set_level(false);
    }
}

/// A message-signalled interrupt as written on the bus: an address and a data word.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MsiMessage {
    /// The address (0xfeexxxxx for the local APICs).
    pub address: u64,
    /// The data word: vector, delivery mode and trigger mode.
    pub data: u32,
}

/// Where message-signalled interrupts go: the local APICs, wherever they live.
pub trait MsiSink: Send + Sync {
    /// Delivers `msg`, which an interrupt source identified by `gsi` produced. Backends that route
    /// by GSI (KVM's split irqchip) use `gsi` to keep a routing entry; others use only `msg`.
    fn deliver(&self, gsi: u32, msg: MsiMessage);
}

/// The output pin of the 8259 PIC pair (INTR to the boot CPU's LINT0).
pub trait ExtIntSink: Send + Sync {
    /// The PIC has an interrupt to present: the CPU should come and acknowledge it.
    fn raise(&self);
}

/// What a device can ask of the whole VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmRequest {
    /// The guest reset the machine (i8042 pulse, reset register).
    Reset,
    /// The guest powered the machine off (ACPI S5).
    PowerOff,
    /// The guest wrote `status` to the debug-exit port.
    DebugExit(u8),
}

/// The VM-wide control a device may use.
pub trait VmControl: Send + Sync {
    /// Asks the VMM to stop the VM for `request`.
    fn request(&self, request: VmRequest);
}
