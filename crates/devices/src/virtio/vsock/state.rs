//! What of a vsock device survives a snapshot: its CID and its listener, which the restoring VMM
//! builds again from the configuration. Nothing else.
//!
//! Connections cannot: their host ends are Unix sockets of the process that took the snapshot,
//! and the credit counters and buffered data of each live in its worker. The device therefore
//! saves no state of its own (`null`). Restoring it ([`VirtioDevice::restore_state`]) makes the
//! next worker send VIRTIO_VSOCK_EVENT_TRANSPORT_RESET on the event queue, as the virtio spec
//! asks after a migration: Linux then resets every vsock socket of the guest (their owners see
//! ECONNRESET) and rereads the CID. Without that event the guest would keep connections whose
//! packets the device answers with RST one by one. If the driver has given no event buffer yet,
//! the event waits for one (the driver's next event-queue notification).
//!
//! [`VirtioDevice::restore_state`]: crate::virtio::VirtioDevice::restore_state

use virtio_queue::Queue;

use crate::virtio::GuestMemory;
use crate::virtio::chain;

/// VIRTIO_VSOCK_EVENT_TRANSPORT_RESET.
const EVENT_TRANSPORT_RESET: u32 = 0;
/// Size of `struct virtio_vsock_event`.
const EVENT_LEN: usize = 4;

/// What became of a transport reset event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum EventSent {
    /// In the used ring; `notify` if the driver wants an interrupt.
    Sent {
        /// The driver asked to be interrupted.
        notify: bool,
    },
    /// No usable event buffer is available yet; `notify` if unusable ones went back and the
    /// driver wants an interrupt.
    NoBuffer {
        /// The driver asked to be interrupted.
        notify: bool,
    },
    /// The event ring is unusable.
    Broken,
}

/// Puts a transport reset event in the first usable buffer of the event queue. Buffers too small
/// for it, or malformed, go back unused.
pub(super) fn send_transport_reset(event: &mut Queue, mem: &GuestMemory) -> EventSent {
    let mut notify = false;
    loop {
        let (head, len) = match chain::next_chain(event, mem, 64) {
            None => return EventSent::NoBuffer { notify },
            Some(Ok(c)) => {
                let bytes = EVENT_TRANSPORT_RESET.to_le_bytes();
                if c.readable.is_empty() && c.write_at(mem, 0, &bytes) == EVENT_LEN {
                    (c.head, EVENT_LEN as u32)
                } else {
                    (c.head, 0)
                }
            }
            Some(Err((Some(head), _))) => (head, 0),
            Some(Err((None, _))) => return EventSent::Broken,
        };
        match chain::complete(event, mem, head, len) {
            Ok(n) => notify |= n,
            Err(_) => return EventSent::Broken,
        }
        if len != 0 {
            return EventSent::Sent { notify };
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::sync::atomic::Ordering;

    use vm_memory::{Bytes, GuestAddress};

    use super::super::tests::harness::*;
    use crate::state::StateError;
    use crate::virtio::VirtioDevice;
    use crate::virtio::vsock::queue;

    #[test]
    fn restored_device_resets_the_guests_connections_through_the_event_queue() {
        let mut h = Harness::new();
        assert!(
            h.evq.take_used(&h.mem).is_empty(),
            "no event on a first start"
        );
        h.give_rx(4);
        let (mut c, _) = h.host_connect(100);
        h.mem
            .write_obj(0xffff_ffffu32, GuestAddress(EVENT_BUF))
            .unwrap();

        // What a restore does: the device's (null) state, then a new worker.
        h.dev.restore_state(&serde_json::Value::Null).unwrap();
        h.activate();
        assert_eq!(h.evq.take_used(&h.mem), vec![(0, 4)]);
        let id: u32 = h.mem.read_obj(GuestAddress(EVENT_BUF)).unwrap();
        assert_eq!(id, 0, "VIRTIO_VSOCK_EVENT_TRANSPORT_RESET");
        assert_eq!(h.irq.0[queue::EVENT].load(Ordering::Relaxed), 1);
        assert_eq!(c.read(&mut [0u8; 4]).unwrap(), 0, "the host end is closed");

        // Only once.
        h.activate();
        assert!(h.evq.take_used(&h.mem).is_empty());
    }

    #[test]
    fn reset_event_waits_for_an_event_buffer() {
        let mut h = Harness::new();
        h.event_buffers = 0;
        h.dev.restore_state(&serde_json::Value::Null).unwrap();
        h.activate();
        h.settle();
        assert!(h.evq.take_used(&h.mem).is_empty());
        // A buffer too small for the event goes back unused; the next one takes it.
        h.evq.add(&h.mem, &[(EVENT_BUF, 2, true)]);
        h.evq.add(&h.mem, &[(EVENT_BUF + 8, 4, true)]);
        h.kick(queue::EVENT);
        assert_eq!(h.evq.take_used(&h.mem), vec![(0, 0), (1, 4)]);
        h.evq.add(&h.mem, &[(EVENT_BUF + 16, 4, true)]);
        h.kick(queue::EVENT);
        assert!(h.evq.take_used(&h.mem).is_empty(), "sent once");
    }

    #[test]
    fn device_state_other_than_null_is_refused() {
        let mut h = Harness::new();
        let state = serde_json::json!({ "connections": [1, 2] });
        assert!(matches!(
            h.dev.restore_state(&state),
            Err(StateError::Mismatch {
                device: "vsock",
                ..
            })
        ));
        h.activate();
        assert!(
            h.evq.take_used(&h.mem).is_empty(),
            "no reset without a restore"
        );
    }
}
