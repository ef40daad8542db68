use super::*;
use crate::testing::{MockIntx, MockMsi};

/// A device with a 32-bit BAR 0 (4 KiB), a 64-bit BAR 2 (16 KiB) and an I/O BAR 4. BAR reads
/// return the BAR index in every byte; writes are recorded.
struct Fake {
    config: PciConfiguration,
    writes: Vec<(usize, u64, Vec<u8>)>,
}

impl Fake {
    fn new() -> Self {
        let mut config = PciConfiguration::new(&PciHeader {
            vendor_id: 0x1234,
            device_id: 0x5678,
            revision: 2,
            class_code: 0xff_0000,
            subsystem_vendor_id: 0,
            subsystem_id: 0,
            interrupt_pin: 1,
        });
        config.add_bar(0, BarKind::Memory32, 0x1000, false).unwrap();
        config.add_bar(2, BarKind::Memory64, 0x4000, false).unwrap();
        config.add_bar(4, BarKind::Io, 0x20, false).unwrap();
        Self {
            config,
            writes: Vec::new(),
        }
    }
}

impl PciDevice for Fake {
    fn read_config(&mut self, offset: u64, data: &mut [u8]) {
        self.config.read(offset, data);
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        self.config.write(offset, data);
    }
    fn read_bar(&mut self, bar: usize, _offset: u64, data: &mut [u8]) {
        data.fill(bar as u8);
    }
    fn write_bar(&mut self, bar: usize, offset: u64, data: &[u8]) {
        self.writes.push((bar, offset, data.to_vec()));
    }
}

const ECAM: u64 = 0xe000_0000;
const WINDOW: u64 = 0xc000_0000;

fn root() -> PciRoot {
    PciRoot::new(
        PciRootConfig {
            ecam_base: ECAM,
            mmio_base: WINDOW,
            mmio_size: 0x2000_0000,
        },
        PciIrqs {
            intx: Arc::new(MockIntx::default()),
            msi: Arc::new(MockMsi::default()),
        },
    )
    .unwrap()
}

/// A root with one [`Fake`] in slot 1, wrapped for the bus adapters.
fn root_with_fake() -> (Arc<Mutex<PciRoot>>, Arc<Mutex<Fake>>, PciBusEntries) {
    let mut r = root();
    let slot = r.reserve_slot().unwrap();
    assert_eq!((slot.slot, slot.intx_gsi), (1, 17));
    let fake = Arc::new(Mutex::new(Fake::new()));
    r.add_device(slot.slot, fake.clone()).unwrap();
    let r = Arc::new(Mutex::new(r));
    let entries = PciRoot::bus_entries(&r);
    (r, fake, entries)
}

fn cf8_read(e: &PciBusEntries, bdf_reg: u32, len: usize) -> u32 {
    let mut ports = lock(&e.pio[0].device);
    ports.write(0, &(CONFIG_ENABLE | (bdf_reg & !3)).to_le_bytes());
    let mut b = [0u8; 4];
    ports.read(4 + u64::from(bdf_reg & 3), &mut b[..len]);
    u32::from_le_bytes(b)
}

fn cf8_write(e: &PciBusEntries, bdf_reg: u32, value: u32) {
    let mut ports = lock(&e.pio[0].device);
    ports.write(0, &(CONFIG_ENABLE | bdf_reg).to_le_bytes());
    ports.write(4, &value.to_le_bytes());
}

fn ecam_read(e: &PciBusEntries, offset: u64, len: usize) -> u32 {
    let mut b = [0u8; 4];
    lock(&e.mmio[0].device).read(offset, &mut b[..len]);
    u32::from_le_bytes(b)
}

fn window_read(e: &PciBusEntries, addr: u64) -> u32 {
    let mut b = [0u8; 4];
    lock(&e.mmio[1].device).read(addr - WINDOW, &mut b);
    u32::from_le_bytes(b)
}

#[test]
fn host_bridge_answers_at_00_00_0() {
    let (_, _, e) = root_with_fake();
    assert_eq!(cf8_read(&e, 0, 4), 0x0d57_8086);
    assert_eq!(cf8_read(&e, 8, 4) >> 8, 0x06_0000);
    assert_eq!(ecam_read(&e, 0, 4), 0x0d57_8086);
}

#[test]
fn cf8_and_ecam_give_the_same_answers() {
    let (_, _, e) = root_with_fake();
    for dev in [0u32, 1, 2, 31] {
        for reg in (0..0x100).step_by(4) {
            for (len, sub) in [(4usize, 0u32), (2, 2), (1, 3)] {
                let via_ports = cf8_read(&e, dev << 11 | (reg + sub), len);
                let via_ecam = ecam_read(&e, u64::from(dev << 15 | (reg + sub)), len);
                assert_eq!(via_ports, via_ecam, "device {dev} register {reg:#x}+{sub}");
            }
        }
    }
    assert_eq!(cf8_read(&e, 1 << 11, 4), 0x5678_1234);
    assert_eq!(cf8_read(&e, 2 << 11, 2), 0xffff, "empty slot");
    assert_eq!(cf8_read(&e, 1 << 11 | 1 << 8, 4), 0xffff_ffff, "function 1");
    assert_eq!(cf8_read(&e, 1 << 16 | 1 << 11, 4), 0xffff_ffff, "bus 1");
}

#[test]
fn config_address_register_reads_back_and_needs_enable() {
    let (_, _, e) = root_with_fake();
    let mut ports = lock(&e.pio[0].device);
    ports.write(0, &0x8000_0000u32.to_le_bytes());
    let mut b = [0u8; 4];
    ports.read(0, &mut b);
    assert_eq!(u32::from_le_bytes(b), 0x8000_0000);
    // A byte write to 0xCFB does not touch the address register.
    ports.write(3, &[0x01]);
    ports.read(0, &mut b);
    assert_eq!(u32::from_le_bytes(b), 0x8000_0000);
    ports.write(0, &(1u32 << 11).to_le_bytes());
    ports.read(4, &mut b);
    assert_eq!(b, [0xff; 4], "enable bit clear");
}

#[test]
fn bars_are_placed_aligned_in_the_window() {
    let (_, fake, _) = root_with_fake();
    let fake = lock(&fake);
    let bar0 = fake.config.bar(0).unwrap();
    let bar2 = fake.config.bar(2).unwrap();
    for bar in [bar0, bar2] {
        assert!(bar.addr >= WINDOW && bar.addr + bar.size <= WINDOW + 0x2000_0000);
        assert_eq!(bar.addr % bar.size, 0);
    }
    assert!(bar0.addr + bar0.size <= bar2.addr || bar2.addr + bar2.size <= bar0.addr);
    assert_eq!(
        fake.config.bar(4).unwrap().addr,
        0,
        "no I/O window to place it in"
    );
}

#[test]
fn window_follows_the_command_register_and_relocated_bars() {
    let (_, fake, e) = root_with_fake();
    let bar2 = lock(&fake).config.bar(2).unwrap().addr;
    assert_eq!(window_read(&e, bar2), 0xffff_ffff, "memory decoding is off");
    cf8_write(&e, 1 << 11 | 4, u32::from(command::MEMORY));
    assert_eq!(window_read(&e, bar2 + 0x10), 0x0202_0202);
    // The guest moves BAR 2 to the top of the window.
    let new = WINDOW + 0x1000_0000;
    cf8_write(&e, 1 << 11 | 0x18, new as u32);
    cf8_write(&e, 1 << 11 | 0x1c, 0);
    assert_eq!(window_read(&e, bar2), 0xffff_ffff);
    assert_eq!(window_read(&e, new + 0x3ffc), 0x0202_0202);
    lock(&e.mmio[1].device).write(new - WINDOW + 8, &[7, 7]);
    assert_eq!(lock(&fake).writes, vec![(2, 8, vec![7, 7])]);
    // An access straddling the BAR's end is unclaimed.
    let mut b = [0u8; 8];
    lock(&e.mmio[1].device).read(new - WINDOW + 0x3ffc, &mut b);
    assert_eq!(b, [0xff; 8]);
}

#[test]
fn overlapping_bars_dispatch_to_one_of_them() {
    let (_, fake, e) = root_with_fake();
    cf8_write(&e, 1 << 11 | 4, u32::from(command::MEMORY));
    let bar2 = lock(&fake).config.bar(2).unwrap().addr;
    cf8_write(&e, 1 << 11 | 0x10, bar2 as u32);
    let got = window_read(&e, bar2);
    assert!(got == 0 || got == 0x0202_0202);
}

#[test]
fn slots_run_out_after_31_devices() {
    let mut r = root();
    for expected in 1..32u8 {
        let slot = r.reserve_slot().unwrap();
        assert_eq!(slot.slot, expected);
        assert_eq!(slot.intx_gsi, intx_gsi(expected, 0));
    }
    assert!(matches!(r.reserve_slot(), Err(PciError::NoSlot)));
    let fake = Arc::new(Mutex::new(Fake::new()));
    assert!(matches!(
        r.add_device(0, fake.clone()),
        Err(PciError::SlotTaken(0))
    ));
    r.add_device(5, fake.clone()).unwrap();
    assert!(matches!(r.add_device(5, fake), Err(PciError::SlotTaken(5))));
}

#[test]
fn hostile_config_writes_never_panic() {
    let (_, _, e) = root_with_fake();
    let mut seed = 0x1234_5678_9abc_def0u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for _ in 0..20_000 {
        let r = next();
        let len = [1usize, 2, 4, 8, 3][(r % 5) as usize];
        let data = next().to_le_bytes();
        match (r >> 8) % 4 {
            0 => {
                let mut ports = lock(&e.pio[0].device);
                ports.write((r >> 16) % 8, &data[..len]);
                ports.read((r >> 24) % 8, &mut [0u8; 8][..len]);
            }
            1 => {
                let offset = (r >> 16) % ECAM_SIZE;
                lock(&e.mmio[0].device).write(offset & !0x7f_f000 | 1 << 15, &data[..len]);
                lock(&e.mmio[0].device).read(offset, &mut [0u8; 8][..len]);
            }
            _ => {
                let offset = (r >> 16) % 0x2000_0000;
                lock(&e.mmio[1].device).write(offset, &data[..len]);
                lock(&e.mmio[1].device).read(offset, &mut [0u8; 8][..len]);
            }
        }
    }
}
