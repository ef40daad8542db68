//! The i8042 keyboard controller, reduced to what a VM needs: the CPU reset line.
//!
//! vm-superio's [`vm_superio::I8042Device`] does the work: command 0xfe on the command port
//! pulses the reset line, which here becomes [`VmRequest::Reset`]. Everything else reads as 0
//! (no keyboard, buffers empty) and is ignored on write.
//!
//! The controller answers at ports 0x60 (data) and 0x64 (command/status), but port 0x61
//! between them belongs to the PIT's system control port. So the controller is two bus
//! entries of one length each, both sharing one controller: [`I8042::bus_entries`] returns
//! them. Each entry knows which of the two registers it is, because the bus passes an offset
//! of 0 to both.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use vm_superio::{I8042Device, Trigger};

use super::{BusEntry, lock};
use crate::bus::BusDevice;
use crate::interrupt::{VmControl, VmRequest};

/// The data port.
pub const DATA_PORT: u64 = 0x60;
/// The command (write) / status (read) port.
pub const COMMAND_PORT: u64 = 0x64;

/// The i8042 register offsets vm-superio uses.
const VM_SUPERIO_DATA: u8 = 0;
const VM_SUPERIO_COMMAND: u8 = 4;

/// vm-superio's reset trigger: a reset request to the VMM.
struct ResetTrigger(Arc<dyn VmControl>);

impl Trigger for ResetTrigger {
    type E = Infallible;

    fn trigger(&self) -> Result<(), Infallible> {
        self.0.request(VmRequest::Reset);
        Ok(())
    }
}

/// Which register of the controller a bus entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum I8042Register {
    /// The data port (0x60).
    Data,
    /// The command/status port (0x64).
    Command,
}

/// One port of the i8042 controller; the two ports share the controller.
pub struct I8042 {
    controller: Arc<Mutex<I8042Device<ResetTrigger>>>,
    register: I8042Register,
}

impl I8042 {
    /// The two ports of a controller that asks `vm` for a reset on command 0xfe.
    pub fn new(vm: Arc<dyn VmControl>) -> [I8042; 2] {
        let controller = Arc::new(Mutex::new(I8042Device::new(ResetTrigger(vm))));
        [
            I8042 {
                controller: controller.clone(),
                register: I8042Register::Data,
            },
            I8042 {
                controller,
                register: I8042Register::Command,
            },
        ]
    }

    /// The controller's two bus entries: data at 0x60 and command at 0x64, one port each.
    pub fn bus_entries(vm: Arc<dyn VmControl>) -> Vec<BusEntry> {
        let [data, command] = Self::new(vm);
        vec![
            BusEntry::new(data, DATA_PORT, 1),
            BusEntry::new(command, COMMAND_PORT, 1),
        ]
    }

    /// The register this port is.
    pub fn register(&self) -> I8042Register {
        self.register
    }

    fn superio_offset(&self) -> u8 {
        match self.register {
            I8042Register::Data => VM_SUPERIO_DATA,
            I8042Register::Command => VM_SUPERIO_COMMAND,
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        // Only the first byte is this port; the next ones would be other ports.
        data.fill(0xff);
        if offset == 0
            && let Some(first) = data.first_mut()
        {
            *first = lock(&self.controller).read(self.superio_offset());
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == 0
            && let Some(&value) = data.first()
        {
            let Ok(()) = lock(&self.controller).write(self.superio_offset(), value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::Bus;
    use crate::testing::MockVm;

    fn bus_with_i8042() -> (Bus, Arc<MockVm>) {
        let vm = Arc::new(MockVm::default());
        let mut bus = Bus::new();
        for e in I8042::bus_entries(vm.clone()) {
            bus.insert(e.device, e.base, e.len).unwrap();
        }
        (bus, vm)
    }

    #[test]
    fn command_0xfe_resets_the_vm() {
        let (bus, vm) = bus_with_i8042();
        bus.write(0x64, &[0xfe]);
        assert_eq!(vm.take(), vec![VmRequest::Reset]);
    }

    #[test]
    fn data_port_0xfe_and_other_commands_do_not_reset() {
        let (bus, vm) = bus_with_i8042();
        bus.write(0x60, &[0xfe]);
        bus.write(0x64, &[0xaa]);
        bus.write(0x64, &[0xd1]);
        assert!(vm.take().is_empty());
    }

    #[test]
    fn port_0x61_is_left_free_and_status_reads_empty() {
        let (mut bus, _) = bus_with_i8042();
        let mut status = [0xaa];
        assert!(bus.read(0x64, &mut status));
        assert_eq!(status, [0]);
        let dummy = Arc::new(Mutex::new(crate::legacy::DebugExit::new(Arc::new(
            MockVm::default(),
        ))));
        bus.insert(dummy, 0x61, 1).unwrap();
    }
}
