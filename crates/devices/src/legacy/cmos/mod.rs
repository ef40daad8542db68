//! The MC146818 CMOS RTC: 128 bytes of battery-backed RAM, the time of day, and the memory
//! size fields firmware and old kernels read.
//!
//! Port 0x70 selects a register (bit 7 is the NMI mask, kept but without effect) and port 0x71
//! reads or writes it. The time comes from a wall clock given at construction (Unix seconds),
//! encoded in binary or BCD and in 24- or 12-hour form as register B asks. A guest that sets
//! the clock (with register B's SET bit, or by writing a time register) moves an offset
//! against the wall clock; the host clock is never changed.
//!
//! Register A's update-in-progress bit reads 1 once, on the first read after the wall clock's
//! second changed, so that both "wait while UIP" and "wait for UIP to rise and fall" loops end
//! within a second. The RTC raises no interrupts: register C always reads 0.
//!
//! Its snapshot state is [`CmosState`]: the RAM and the guest's offset from the wall clock.

use super::{read_bytes, write_bytes};
use crate::bus::BusDevice;

mod state;

pub use state::CmosState;

/// The index port; the data port follows it.
pub const CMOS_PORT: u64 = 0x70;
/// The length of the device's range.
pub const CMOS_LEN: u64 = 2;

const SECONDS: u8 = 0x00;
const MINUTES: u8 = 0x02;
const HOURS: u8 = 0x04;
const DAY_OF_WEEK: u8 = 0x06;
const DAY_OF_MONTH: u8 = 0x07;
const MONTH: u8 = 0x08;
const YEAR: u8 = 0x09;
const REG_A: u8 = 0x0a;
const REG_B: u8 = 0x0b;
const REG_C: u8 = 0x0c;
const REG_D: u8 = 0x0d;
const CENTURY: u8 = 0x32;

const A_UIP: u8 = 0x80;
const B_SET: u8 = 0x80;
const B_BINARY: u8 = 0x04;
const B_24_HOUR: u8 = 0x02;
const D_VALID_RAM: u8 = 0x80;
const HOUR_PM: u8 = 0x80;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;

/// The last second an RTC can show: 9999-12-31 23:59:59.
const MAX_TIME: i64 = 253_402_300_799;

/// A wall clock in Unix seconds.
pub type WallClock = Box<dyn Fn() -> i64 + Send>;

/// Calendar fields of a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct DateTime {
    year: i64,
    month: i64,
    day: i64,
    hour: i64,
    minute: i64,
    second: i64,
    /// 1 = Sunday.
    weekday: i64,
}

impl DateTime {
    /// Splits Unix seconds into calendar fields (Howard Hinnant's `civil_from_days`).
    fn from_unix(t: i64) -> Self {
        let t = t.clamp(0, MAX_TIME);
        let (days, secs) = (t.div_euclid(86_400), t.rem_euclid(86_400));
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        Self {
            year: yoe + era * 400 + i64::from(month <= 2),
            month,
            day: doy - (153 * mp + 2) / 5 + 1,
            hour: secs / 3600,
            minute: secs / 60 % 60,
            second: secs % 60,
            // 1970-01-01 was a Thursday.
            weekday: (days + 4).rem_euclid(7) + 1,
        }
    }

    /// Joins calendar fields into Unix seconds (`days_from_civil`); fields must be in range.
    fn to_unix(self) -> i64 {
        let y = self.year - i64::from(self.month <= 2);
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let mp = if self.month > 2 {
            self.month - 3
        } else {
            self.month + 9
        };
        let doy = (153 * mp + 2) / 5 + self.day - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        let days = era * 146_097 + doe - 719_468;
        days * 86_400 + self.hour * 3600 + self.minute * 60 + self.second
    }
}

fn to_bcd(v: u8) -> u8 {
    ((v / 10 % 10) << 4) | (v % 10)
}

fn from_bcd(v: u8) -> u8 {
    // Nibbles above 9 are garbage from the guest; the result is clamped by the caller.
    (v >> 4) * 10 + (v & 0x0f)
}

/// The CMOS RAM and RTC.
pub struct Cmos {
    index: u8,
    nmi_masked: bool,
    ram: [u8; 128],
    wall_clock: WallClock,
    /// Guest time minus wall-clock time, in seconds.
    offset: i64,
    /// The second at the last read of register A.
    last_a_second: i64,
}

impl Cmos {
    /// A CMOS for a VM with `mem_below_4g` bytes of RAM below the 4 GiB boundary (including the
    /// first MiB) and `mem_above_4g` above it, telling time from `wall_clock`.
    pub fn new(mem_below_4g: u64, mem_above_4g: u64, wall_clock: WallClock) -> Self {
        let mut ram = [0u8; 128];
        ram[usize::from(REG_A)] = 0x26; // 32.768 kHz base, 1.024 kHz rate.
        ram[usize::from(REG_B)] = B_24_HOUR;
        ram[usize::from(REG_D)] = D_VALID_RAM;
        let mut put16 = |at: usize, v: u64| {
            let v = v.min(0xffff) as u16;
            ram[at..at + 2].copy_from_slice(&v.to_le_bytes());
        };
        put16(0x15, 640); // Base memory in KiB.
        let extended_kib = mem_below_4g.saturating_sub(MIB) / KIB;
        put16(0x17, extended_kib);
        put16(0x30, extended_kib);
        put16(0x34, mem_below_4g.saturating_sub(16 * MIB) / (64 * KIB));
        let high = (mem_above_4g / (64 * KIB)).min(0xff_ffff) as u32;
        ram[0x5b..0x5e].copy_from_slice(&high.to_le_bytes()[..3]);
        let last_a_second = wall_clock();
        let mut cmos = Self {
            index: 0,
            nmi_masked: false,
            ram,
            wall_clock,
            offset: 0,
            last_a_second,
        };
        cmos.snapshot_time();
        cmos
    }

    /// Whether the guest masked NMIs (bit 7 of the last index written).
    pub fn nmi_masked(&self) -> bool {
        self.nmi_masked
    }

    fn now(&self) -> i64 {
        (self.wall_clock)()
            .clamp(0, MAX_TIME)
            .saturating_add(self.offset)
            .clamp(0, MAX_TIME)
    }

    fn reg(&self, r: u8) -> u8 {
        self.ram[usize::from(r & 0x7f)]
    }

    fn set_reg(&mut self, r: u8, v: u8) {
        self.ram[usize::from(r & 0x7f)] = v;
    }

    fn encode(&self, v: i64) -> u8 {
        let v = v.clamp(0, 99) as u8;
        if self.reg(REG_B) & B_BINARY != 0 {
            v
        } else {
            to_bcd(v)
        }
    }

    fn decode(&self, v: u8) -> i64 {
        i64::from(if self.reg(REG_B) & B_BINARY != 0 {
            v
        } else {
            from_bcd(v)
        })
    }

    /// Writes the current guest time into the time registers.
    fn snapshot_time(&mut self) {
        let t = DateTime::from_unix(self.now());
        let hour = if self.reg(REG_B) & B_24_HOUR != 0 {
            self.encode(t.hour)
        } else {
            let h12 = if t.hour % 12 == 0 { 12 } else { t.hour % 12 };
            self.encode(h12) | if t.hour >= 12 { HOUR_PM } else { 0 }
        };
        let fields = [
            (SECONDS, self.encode(t.second)),
            (MINUTES, self.encode(t.minute)),
            (HOURS, hour),
            (DAY_OF_WEEK, self.encode(t.weekday)),
            (DAY_OF_MONTH, self.encode(t.day)),
            (MONTH, self.encode(t.month)),
            (YEAR, self.encode(t.year % 100)),
            (CENTURY, self.encode(t.year / 100)),
        ];
        for (r, v) in fields {
            self.set_reg(r, v);
        }
    }

    /// Sets the offset so that the guest time is what the time registers say.
    fn adopt_time_registers(&mut self) {
        let raw_hour = self.reg(HOURS);
        let hour = if self.reg(REG_B) & B_24_HOUR != 0 {
            self.decode(raw_hour)
        } else {
            let h = self.decode(raw_hour & !HOUR_PM) % 12;
            if raw_hour & HOUR_PM != 0 { h + 12 } else { h }
        };
        let t = DateTime {
            year: self.decode(self.reg(CENTURY)).min(99) * 100
                + self.decode(self.reg(YEAR)).min(99),
            month: self.decode(self.reg(MONTH)).clamp(1, 12),
            day: self.decode(self.reg(DAY_OF_MONTH)).clamp(1, 31),
            hour: hour.min(23),
            minute: self.decode(self.reg(MINUTES)).min(59),
            second: self.decode(self.reg(SECONDS)).min(59),
            weekday: 1,
        };
        let wall = (self.wall_clock)().clamp(0, MAX_TIME);
        self.offset = t.to_unix().clamp(0, MAX_TIME) - wall;
    }

    fn is_time_register(r: u8) -> bool {
        matches!(
            r,
            SECONDS | MINUTES | HOURS | DAY_OF_WEEK | DAY_OF_MONTH | MONTH | YEAR | CENTURY
        )
    }

    fn read_data(&mut self) -> u8 {
        let r = self.index;
        let setting = self.reg(REG_B) & B_SET != 0;
        match r {
            _ if Self::is_time_register(r) && !setting => {
                self.snapshot_time();
                self.reg(r)
            }
            REG_A => {
                let now = self.now();
                let uip = if now != self.last_a_second { A_UIP } else { 0 };
                self.last_a_second = now;
                (self.reg(REG_A) & !A_UIP) | uip
            }
            REG_C => 0,
            REG_D => D_VALID_RAM,
            _ => self.reg(r),
        }
    }

    fn write_data(&mut self, v: u8) {
        let r = self.index;
        let setting = self.reg(REG_B) & B_SET != 0;
        match r {
            _ if Self::is_time_register(r) => {
                if !setting {
                    self.snapshot_time();
                }
                self.set_reg(r, v);
                if !setting {
                    self.adopt_time_registers();
                }
            }
            REG_A => self.set_reg(REG_A, v & !A_UIP),
            REG_B => {
                if !setting && v & B_SET != 0 {
                    // Freeze the registers for the guest to rewrite, in the old format.
                    self.snapshot_time();
                }
                self.set_reg(REG_B, v);
                if setting && v & B_SET == 0 {
                    self.adopt_time_registers();
                }
            }
            REG_C | REG_D => {}
            _ => self.set_reg(r, v),
        }
    }
}

impl BusDevice for Cmos {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        read_bytes(offset, data, |o| match o {
            1 => self.read_data(),
            _ => 0xff,
        });
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        write_bytes(offset, data, |o, v| match o {
            0 => {
                self.index = v & 0x7f;
                self.nmi_masked = v & 0x80 != 0;
            }
            1 => self.write_data(v),
            _ => {}
        });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicI64, Ordering};

    use super::*;

    /// 2024-02-29 13:45:56 UTC, a Thursday.
    const LEAP_DAY: i64 = 1_709_214_356;

    fn cmos_at(t: i64) -> (Cmos, Arc<AtomicI64>) {
        let clock = Arc::new(AtomicI64::new(t));
        let c = clock.clone();
        (
            Cmos::new(2048 * MIB, 0, Box::new(move || c.load(Ordering::SeqCst))),
            clock,
        )
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
    fn time_reads_in_bcd_by_default() {
        let (mut c, _) = cmos_at(LEAP_DAY);
        let got: Vec<u8> = [
            SECONDS,
            MINUTES,
            HOURS,
            DAY_OF_WEEK,
            DAY_OF_MONTH,
            MONTH,
            YEAR,
            CENTURY,
        ]
        .iter()
        .map(|&r| read(&mut c, r))
        .collect();
        assert_eq!(got, [0x56, 0x45, 0x13, 0x05, 0x29, 0x02, 0x24, 0x20]);
    }

    #[test]
    fn binary_and_12_hour_modes_are_honoured() {
        let (mut c, _) = cmos_at(LEAP_DAY);
        write(&mut c, REG_B, B_BINARY);
        assert_eq!(read(&mut c, SECONDS), 56);
        assert_eq!(read(&mut c, HOURS), 1 | HOUR_PM);
        write(&mut c, REG_B, 0);
        assert_eq!(read(&mut c, HOURS), 0x01 | HOUR_PM);
        let (mut c, _) = cmos_at(LEAP_DAY - 13 * 3600); // 00:45:56
        write(&mut c, REG_B, 0);
        assert_eq!(read(&mut c, HOURS), 0x12);
    }

    #[test]
    fn time_follows_the_wall_clock() {
        let (mut c, clock) = cmos_at(LEAP_DAY);
        clock.fetch_add(10 * 86_400 + 4, Ordering::SeqCst);
        assert_eq!(read(&mut c, SECONDS), 0x00);
        assert_eq!(read(&mut c, MINUTES), 0x46);
        assert_eq!(read(&mut c, DAY_OF_MONTH), 0x10);
        assert_eq!(read(&mut c, MONTH), 0x03);
    }

    #[test]
    fn guest_set_time_becomes_an_offset() {
        let (mut c, clock) = cmos_at(LEAP_DAY);
        write(&mut c, REG_B, B_SET | B_24_HOUR);
        write(&mut c, YEAR, 0x99);
        write(&mut c, CENTURY, 0x19);
        write(&mut c, MONTH, 0x12);
        write(&mut c, DAY_OF_MONTH, 0x31);
        write(&mut c, HOURS, 0x23);
        write(&mut c, MINUTES, 0x59);
        write(&mut c, SECONDS, 0x58);
        clock.fetch_add(100, Ordering::SeqCst);
        assert_eq!(read(&mut c, SECONDS), 0x58, "time ran while SET");
        write(&mut c, REG_B, B_24_HOUR);
        clock.fetch_add(3, Ordering::SeqCst);
        assert_eq!(read(&mut c, SECONDS), 0x01);
        assert_eq!(read(&mut c, YEAR), 0x00);
        assert_eq!(read(&mut c, CENTURY), 0x20);
        assert_eq!(read(&mut c, DAY_OF_WEEK), 0x07, "2000-01-01 was a Saturday");
    }

    #[test]
    fn uip_is_never_stuck_and_d_reports_valid_ram() {
        let (mut c, clock) = cmos_at(LEAP_DAY);
        assert_eq!(read(&mut c, REG_A) & A_UIP, 0);
        clock.fetch_add(1, Ordering::SeqCst);
        assert_eq!(read(&mut c, REG_A) & A_UIP, A_UIP);
        assert_eq!(read(&mut c, REG_A), 0x26);
        assert_eq!(read(&mut c, REG_D), D_VALID_RAM);
        write(&mut c, REG_D, 0);
        assert_eq!(read(&mut c, REG_D), D_VALID_RAM);
    }

    #[test]
    fn memory_size_fields_match_qemu_layout() {
        let (mut c, _) = cmos_at(0);
        // 2 GiB below 4 GiB: 0x7f00 units of 64 KiB above 16 MiB; extended memory capped.
        assert_eq!([read(&mut c, 0x34), read(&mut c, 0x35)], [0x00, 0x7f]);
        assert_eq!([read(&mut c, 0x30), read(&mut c, 0x31)], [0xff, 0xff]);
        assert_eq!([read(&mut c, 0x17), read(&mut c, 0x18)], [0xff, 0xff]);
        assert_eq!([read(&mut c, 0x15), read(&mut c, 0x16)], [0x80, 0x02]);
        let mut c = Cmos::new(3 * 1024 * MIB, 0x1_0000_0000 * 5, Box::new(|| 0));
        assert_eq!(
            [read(&mut c, 0x5b), read(&mut c, 0x5c), read(&mut c, 0x5d)],
            [0, 0, 5]
        );
        let mut c = Cmos::new(8 * MIB, 0, Box::new(|| 0));
        assert_eq!([read(&mut c, 0x34), read(&mut c, 0x35)], [0, 0]);
        assert_eq!([read(&mut c, 0x30), read(&mut c, 0x31)], [0x00, 0x1c]);
    }

    #[test]
    fn ram_bytes_persist_and_index_masks_nmi_bit() {
        let (mut c, _) = cmos_at(0);
        write(&mut c, 0x80 | 0x40, 0xab);
        assert!(c.nmi_masked());
        assert_eq!(read(&mut c, 0x40), 0xab);
        assert!(!c.nmi_masked());
    }

    #[test]
    fn hostile_time_writes_and_clocks_do_not_panic() {
        let (mut c, _) = cmos_at(i64::MAX);
        for r in 0..=0x7fu8 {
            for v in [0x00, 0x99, 0xff] {
                write(&mut c, REG_B, v & !B_SET);
                write(&mut c, r, v);
                read(&mut c, r);
            }
        }
        let mut c = Cmos::new(u64::MAX, u64::MAX, Box::new(|| i64::MIN));
        write(&mut c, SECONDS, 0xff);
        let mut buf = [0; 4];
        c.read(u64::MAX - 1, &mut buf);
    }
}
