//! Snapshot state: what every device's `restore` may refuse.
//!
//! Each device with state has a plain-data type `XState` (serde, in the `state.rs` of its folder)
//! and two methods: `save(&self) -> XState` and `restore(&mut self, &XState) ->
//! Result<(), StateError>`. A saved state is one instant of a paused VM; restoring it into a
//! device built from the same configuration resumes it there, in this process or another.
//!
//! What a device is made of (its slots, queue counts, BAR sizes, MSI-X table size) is structural:
//! the VMM re-creates the same devices from the VM's configuration and restores each one's state.
//! A state that does not fit the device it is given to is a [`StateError::Mismatch`].
//!
//! A snapshot file may be corrupt or hostile, so `restore` checks every value before it changes
//! anything: on an error the device is as it was (the one exception, a virtio device that fails
//! to start again, is documented on its transport). Nothing in a state can make a device panic.
//!
//! Times are saved relative to the device's clock at the moment of the save (a count of ticks
//! already counted, nanoseconds until a deadline), never as absolute clock readings: the clock of
//! the restoring process has another origin.

/// Why a state was refused.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// A value out of range or inconsistent with the others.
    #[error("{device} state: {what}")]
    Invalid {
        /// The device.
        device: &'static str,
        /// What is wrong, with the value.
        what: String,
    },
    /// The state was saved from a device of another shape (another type, other queues, other
    /// slots): the VM was not rebuilt from the snapshot's configuration.
    #[error(
        "{device} state does not fit this VM's device ({what}): restore with the configuration the snapshot was taken with"
    )]
    Mismatch {
        /// The device.
        device: &'static str,
        /// What differs.
        what: String,
    },
    /// A restored virtio device could not be started again.
    #[error("{device}: cannot start the device again after restore")]
    Activate {
        /// The device.
        device: &'static str,
        /// Why.
        #[source]
        source: crate::virtio::ActivateError,
    },
}

/// Refuses with [`StateError::Invalid`] unless `ok`; `what` is only built on failure.
pub(crate) fn ensure(
    ok: bool,
    device: &'static str,
    what: impl FnOnce() -> String,
) -> Result<(), StateError> {
    if ok {
        Ok(())
    } else {
        Err(StateError::Invalid {
            device,
            what: what(),
        })
    }
}

/// Refuses with [`StateError::Mismatch`] unless `ok`; `what` is only built on failure.
pub(crate) fn ensure_fits(
    ok: bool,
    device: &'static str,
    what: impl FnOnce() -> String,
) -> Result<(), StateError> {
    if ok {
        Ok(())
    } else {
        Err(StateError::Mismatch {
            device,
            what: what(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_device_and_the_value() {
        let e = ensure(false, "pit", || "count 0 out of range".into()).unwrap_err();
        assert_eq!(e.to_string(), "pit state: count 0 out of range");
        let e = ensure_fits(false, "virtio block", || {
            "3 queues, the device has 1".into()
        })
        .unwrap_err();
        assert!(e.to_string().contains("restore with the configuration"));
        assert!(ensure(true, "pit", || unreachable!()).is_ok());
    }
}
