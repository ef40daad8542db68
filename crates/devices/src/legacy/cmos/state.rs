//! The CMOS RTC's snapshot state: its 128 bytes of RAM, the selected index, and the guest's time
//! as an offset from the wall clock.
//!
//! The offset, not the time, is what is kept: a restored RTC shows the restoring host's wall
//! clock plus the offset the guest set, so a guest that never set its clock resumes on the
//! current date rather than the snapshot's.

use serde::{Deserialize, Serialize};

use super::{A_UIP, Cmos, MAX_TIME, REG_A};
use crate::state::{StateError, ensure};

const DEVICE: &str = "cmos";
/// Bytes of CMOS RAM.
const RAM_LEN: usize = 128;

/// The CMOS RAM and RTC state.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct CmosState {
    /// The register selected through port 0x70 (0-127).
    pub index: u8,
    /// Bit 7 of the last index written (the NMI mask).
    pub nmi_masked: bool,
    /// The 128 bytes of RAM, time registers included (as last latched).
    pub ram: Vec<u8>,
    /// Guest time minus wall-clock time, in seconds.
    pub offset_seconds: i64,
}

impl Cmos {
    /// The RTC's state.
    pub fn save(&self) -> CmosState {
        CmosState {
            index: self.index,
            nmi_masked: self.nmi_masked,
            ram: self.ram.to_vec(),
            offset_seconds: self.offset,
        }
    }

    /// Restores `s`; the time runs on from this RTC's wall clock plus the saved offset.
    pub fn restore(&mut self, s: &CmosState) -> Result<(), StateError> {
        ensure(s.index < 0x80, DEVICE, || {
            format!("index {:#x} beyond the 128 registers", s.index)
        })?;
        let ram: [u8; RAM_LEN] = s
            .ram
            .as_slice()
            .try_into()
            .map_err(|_| StateError::Invalid {
                device: DEVICE,
                what: format!("{} bytes of RAM, not {RAM_LEN}", s.ram.len()),
            })?;
        ensure(ram[usize::from(REG_A)] & A_UIP == 0, DEVICE, || {
            "register A has the read-only update-in-progress bit set".into()
        })?;
        ensure(
            (-MAX_TIME..=MAX_TIME).contains(&s.offset_seconds),
            DEVICE,
            || format!("time offset {} s beyond year 9999", s.offset_seconds),
        )?;
        self.index = s.index;
        self.nmi_masked = s.nmi_masked;
        self.ram = ram;
        self.offset = s.offset_seconds;
        self.last_a_second = self.now();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicI64, Ordering};

    use super::*;
    use crate::bus::BusDevice;

    /// 2024-02-29 13:45:56 UTC.
    const LEAP_DAY: i64 = 1_709_214_356;

    fn cmos_at(t: i64) -> (Cmos, Arc<AtomicI64>) {
        let clock = Arc::new(AtomicI64::new(t));
        let c = clock.clone();
        let cmos = Cmos::new(512 << 20, 0, Box::new(move || c.load(Ordering::SeqCst)));
        (cmos, clock)
    }

    fn read(c: &mut Cmos, r: u8) -> u8 {
        c.write(0, &[r]);
        let mut b = [0];
        c.read(1, &mut b);
        b[0]
    }

    fn write(c: &mut Cmos, r: u8, v: u8) {
        c.write(0, &[r]);
        c.write(1, &[v]);
    }

    #[test]
    fn restored_rtc_keeps_the_guest_offset_ram_and_index() {
        let (mut a, _) = cmos_at(LEAP_DAY);
        write(&mut a, 0x09, 0x30); // The guest moves the year to 2030.
        write(&mut a, 0x40, 0xab);
        write(&mut a, 0x0b, 0x06); // Binary, 24-hour.
        a.write(0, &[0x80 | 0x40]);
        let saved = a.save();

        // Restored 100 s later on another host's clock.
        let (mut b, _) = cmos_at(LEAP_DAY + 100);
        b.restore(&saved).unwrap();
        assert!(b.nmi_masked());
        let mut v = [0];
        b.read(1, &mut v);
        assert_eq!(v[0], 0xab, "the selected index survives");
        assert_eq!(read(&mut b, 0x09), 30, "year in binary");
        assert_eq!(read(&mut b, 0x00), 36, "56 s + 100 s = 2 min 36 s");
        assert_eq!(read(&mut b, 0x02), 47);
        assert_eq!(b.save().offset_seconds, saved.offset_seconds);
    }

    #[test]
    fn corrupt_states_are_refused() {
        let (mut c, _) = cmos_at(LEAP_DAY);
        write(&mut c, 0x40, 0x11);
        let good = c.save();
        let mut bad = good.clone();
        bad.index = 0x80;
        assert!(c.restore(&bad).is_err());
        let mut bad = good.clone();
        bad.ram.pop();
        assert!(c.restore(&bad).is_err());
        let mut bad = good.clone();
        bad.ram[usize::from(REG_A)] |= A_UIP;
        assert!(c.restore(&bad).is_err());
        let mut bad = good.clone();
        bad.offset_seconds = i64::MIN;
        assert!(matches!(
            c.restore(&bad),
            Err(StateError::Invalid { device: "cmos", .. })
        ));
        assert_eq!(read(&mut c, 0x40), 0x11, "a refused state changes nothing");
    }
}
