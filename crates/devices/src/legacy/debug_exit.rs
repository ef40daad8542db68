//! The debug-exit port: a guest (a test kernel, say) ends the VM with a status.
//!
//! The VMM maps it at 0xf4 with length 4 so that 1-, 2- and 4-byte `out`s all reach offset 0.
//! The low byte of the value written is the status: popek exits with it. Unlike QEMU's
//! isa-debug-exit, the status is not shifted and or-ed with 1. Reads return all ones.

use std::sync::Arc;

use crate::bus::BusDevice;
use crate::interrupt::{VmControl, VmRequest};

/// The conventional port.
pub const DEBUG_EXIT_PORT: u64 = 0xf4;
/// The length of the range, so that any `out` width is accepted.
pub const DEBUG_EXIT_LEN: u64 = 4;

/// The debug-exit port.
pub struct DebugExit {
    vm: Arc<dyn VmControl>,
}

impl DebugExit {
    /// A port that asks `vm` to exit with the status written.
    pub fn new(vm: Arc<dyn VmControl>) -> Self {
        Self { vm }
    }
}

impl BusDevice for DebugExit {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        // Only a write that starts at the port counts; a byte written at 0xf5 is not an exit.
        if offset == 0
            && let Some(&status) = data.first()
        {
            self.vm.request(VmRequest::DebugExit(status));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::MockVm;

    #[test]
    fn write_requests_debug_exit_with_low_byte() {
        let vm = Arc::new(MockVm::default());
        let mut dev = DebugExit::new(vm.clone());
        dev.write(0, &[0x2a]);
        dev.write(0, &0x1234_5601u32.to_le_bytes());
        dev.write(0, &0x0203u16.to_le_bytes());
        assert_eq!(
            vm.take(),
            vec![
                VmRequest::DebugExit(0x2a),
                VmRequest::DebugExit(0x01),
                VmRequest::DebugExit(0x03)
            ]
        );
    }

    #[test]
    fn reads_and_unaligned_writes_do_nothing() {
        let vm = Arc::new(MockVm::default());
        let mut dev = DebugExit::new(vm.clone());
        let mut buf = [0u8; 4];
        dev.read(0, &mut buf);
        assert_eq!(buf, [0xff; 4]);
        dev.write(1, &[0x2a]);
        dev.write(0, &[]);
        assert!(vm.take().is_empty());
    }
}
