//! ACPI tables: RSDP, XSDT, FADT (with FACS), MADT, a DSDT and, with PCI, an MCFG, so that a
//! guest finds its CPUs, its interrupt controllers, the power-management registers, COM1 and
//! the PCI host bridge.
//!
//! The host bridge is `\_SB_.PCI0` (PCI Express root, segment 0, bus 0) with its windows in
//! `_CRS` and a `_PRT` that routes INTA-INTD of every slot to a GSI. `\_SB_.MBRD` reserves the
//! ECAM range as a motherboard resource, which Linux wants before it uses the MCFG.

use acpi_tables::Aml;
use acpi_tables::aml;
use acpi_tables::facs::FACS;
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::mcfg::MCFG;
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::layout::{ACPI_TABLES, BIOS_END, IOAPIC_ADDR, LAPIC_ADDR};

const OEM_ID: [u8; 6] = *b"POPEK ";
const OEM_TABLE_ID: [u8; 8] = *b"POPEKVM ";
const OEM_REVISION: u32 = 1;

/// Errors of [`write_tables`].
#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    /// The tables do not fit in the BIOS area.
    #[error("ACPI tables need {0} bytes, more than the BIOS area holds")]
    TooLarge(u64),
    /// Guest memory could not be written.
    #[error("Cannot write ACPI tables to guest memory")]
    Write(#[source] vm_memory::GuestMemoryError),
    /// More CPUs than an 8-bit APIC ID can name.
    #[error("{0} CPUs need x2APIC entries, which popek does not generate yet (at most 255)")]
    TooManyCpus(u32),
}

/// The PCI host bridge, as the tables describe it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PciAcpi {
    /// Base of the ECAM range of bus 0 (1 MiB).
    pub ecam_base: u64,
    /// Base of the 32-bit MMIO window that BARs live in.
    pub mmio_base: u64,
    /// Size of the MMIO window.
    pub mmio_size: u64,
    /// INTx routing: pin P (0 = INTA) of slot S is on GSI
    /// `intx_gsi_base + (S + P) % intx_gsi_count`.
    pub intx_gsi_base: u32,
    /// How many GSIs the INTx pins are spread over (at least 1).
    pub intx_gsi_count: u32,
}

impl PciAcpi {
    /// The GSI of INTx pin `pin` (0-3) of the device in `slot`.
    pub fn intx_gsi(&self, slot: u8, pin: u8) -> u32 {
        self.intx_gsi_base + (u32::from(slot) + u32::from(pin)) % self.intx_gsi_count.max(1)
    }
}

/// Size of the ECAM range of one bus.
const ECAM_BUS_SIZE: u64 = 1 << 20;
/// Device slots on a PCI bus.
const PCI_SLOTS: u8 = 32;

/// The platform facts the tables describe.
#[derive(Debug, Clone, Copy)]
pub struct AcpiPlatform {
    /// Number of CPUs; APIC IDs are 0..cpus.
    pub cpus: u32,
    /// Base port of the PM1a event block (4 bytes: status, enable).
    pub pm1a_evt: u16,
    /// Port of the PM1a control register (2 bytes).
    pub pm1a_cnt: u16,
    /// Port of the reset register (1 byte).
    pub reset_port: u16,
    /// Value that resets the machine when written to the reset register.
    pub reset_value: u8,
    /// SLP_TYP value of the S5 (soft-off) state.
    pub s5_slp_typ: u8,
    /// ISA IRQ of the SCI.
    pub sci_irq: u8,
    /// COM1's base port and IRQ.
    pub com1: (u16, u8),
    /// The PCI host bridge, if the machine has PCI.
    pub pci: Option<PciAcpi>,
}

/// Every table starts on a 64-byte boundary, which the FACS requires and the others accept.
fn align64(v: u64) -> u64 {
    (v + 63) & !63
}

fn dsdt(p: &AcpiPlatform) -> Vec<u8> {
    let (port, irq) = p.com1;
    let mut table = Sdt::new(*b"DSDT", 36, 6, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    // Each object is built and serialized in one statement: the AML builders borrow their
    // children, which must outlive the serialization.
    aml::Scope::new(
        "_SB_".into(),
        vec![
            &aml::Device::new(
                "COM1".into(),
                vec![
                    &aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0501")),
                    &aml::Name::new("_UID".into(), &aml::ZERO),
                    &aml::Name::new(
                        "_CRS".into(),
                        &aml::ResourceTemplate::new(vec![
                            &aml::IO::new(port, port, 1, 8),
                            &aml::Interrupt::new(true, true, false, false, irq.into()),
                        ]),
                    ),
                ],
            ),
            &aml::Device::new(
                "PS2K".into(),
                vec![
                    &aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0303")),
                    &aml::Name::new(
                        "_CRS".into(),
                        &aml::ResourceTemplate::new(vec![
                            &aml::IO::new(0x60, 0x60, 1, 1),
                            &aml::IO::new(0x64, 0x64, 1, 1),
                            &aml::Interrupt::new(true, true, false, false, 1),
                        ]),
                    ),
                ],
            ),
        ],
    )
    .to_aml_bytes(&mut table);
    if let Some(pci) = &p.pci {
        pci_devices(pci, &mut table);
    }
    let slp_typ = p.s5_slp_typ;
    aml::Name::new("_S5_".into(), &aml::Package::new(vec![&slp_typ, &slp_typ]))
        .to_aml_bytes(&mut table);
    table.as_slice().to_vec()
}

/// `\_SB_.PCI0`, the host bridge, and `\_SB_.MBRD`, which reserves the ECAM range.
fn pci_devices(pci: &PciAcpi, table: &mut Sdt) {
    // _PRT entries: (address 0xSSSS_FFFF = any function of slot S, pin, GSI). Source 0 means
    // the last field is a GSI, level-triggered and active-low.
    let routes: Vec<(u32, u8, u32)> = (1..PCI_SLOTS)
        .flat_map(|slot| {
            (0..4u8).map(move |pin| (u32::from(slot) << 16 | 0xffff, pin, pci.intx_gsi(slot, pin)))
        })
        .collect();
    let entries: Vec<aml::Package> = routes
        .iter()
        .map(|(addr, pin, gsi)| aml::Package::new(vec![addr, pin, &aml::ZERO, gsi]))
        .collect();
    let prt = aml::Package::new(entries.iter().map(|e| e as &dyn Aml).collect());
    // The window ends are inclusive, and 32-bit by construction of the layout.
    let mmio_end = pci.mmio_base + pci.mmio_size - 1;
    aml::Scope::new(
        "_SB_".into(),
        vec![
            &aml::Device::new(
                "PCI0".into(),
                vec![
                    &aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0A08")),
                    &aml::Name::new("_CID".into(), &aml::EISAName::new("PNP0A03")),
                    &aml::Name::new("_SEG".into(), &aml::ZERO),
                    &aml::Name::new("_UID".into(), &aml::ZERO),
                    &aml::Name::new("_BBN".into(), &aml::ZERO),
                    &aml::Name::new(
                        "_CRS".into(),
                        &aml::ResourceTemplate::new(vec![
                            &aml::AddressSpace::new_bus_number(0u16, 0u16),
                            &aml::IO::new(0xcf8, 0xcf8, 1, 8),
                            &aml::AddressSpace::new_io(0u16, 0xcf7u16, None),
                            &aml::AddressSpace::new_io(0xd00u16, 0xffffu16, None),
                            &aml::AddressSpace::new_memory(
                                aml::AddressSpaceCacheable::NotCacheable,
                                true,
                                pci.mmio_base as u32,
                                mmio_end as u32,
                                None,
                            ),
                        ]),
                    ),
                    &aml::Name::new("_PRT".into(), &prt),
                ],
            ),
            &aml::Device::new(
                "MBRD".into(),
                vec![
                    &aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0C02")),
                    &aml::Name::new("_UID".into(), &aml::ZERO),
                    &aml::Name::new(
                        "_CRS".into(),
                        &aml::ResourceTemplate::new(vec![&aml::Memory32Fixed::new(
                            true,
                            pci.ecam_base as u32,
                            ECAM_BUS_SIZE as u32,
                        )]),
                    ),
                ],
            ),
        ],
    )
    .to_aml_bytes(table);
}

fn mcfg(pci: &PciAcpi) -> Vec<u8> {
    let mut t = MCFG::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    t.add_ecam(pci.ecam_base, 0, 0, 0);
    let mut bytes = Vec::new();
    t.to_aml_bytes(&mut bytes);
    bytes
}

fn madt(p: &AcpiPlatform) -> Vec<u8> {
    let mut t = Sdt::new(*b"APIC", 44, 5, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    t.write_u32(36, LAPIC_ADDR as u32);
    // PCAT_COMPAT: the machine also has dual 8259 PICs.
    t.write_u32(40, 1);
    for cpu in 0..p.cpus {
        // Processor local APIC: type 0, length 8, UID, APIC ID, flags (enabled).
        t.append_slice(&[0, 8, cpu as u8, cpu as u8, 1, 0, 0, 0]);
    }
    // I/O APIC: type 1, length 12, ID, reserved, address, GSI base.
    let mut ioapic = vec![1, 12, p.cpus as u8, 0];
    ioapic.extend_from_slice(&(IOAPIC_ADDR as u32).to_le_bytes());
    ioapic.extend_from_slice(&0u32.to_le_bytes());
    t.append_slice(&ioapic);
    // Interrupt source overrides: the PIT's IRQ 0 arrives on GSI 2 (edge, high), and the SCI is
    // level-triggered, active high.
    for (irq, gsi, flags) in [(0u8, 2u32, 0u16), (p.sci_irq, p.sci_irq.into(), 0x000d)] {
        let mut iso = vec![2, 10, 0, irq];
        iso.extend_from_slice(&gsi.to_le_bytes());
        iso.extend_from_slice(&flags.to_le_bytes());
        t.append_slice(&iso);
    }
    // Local APIC NMI on LINT1 for every processor (UID 0xff).
    t.append_slice(&[4, 6, 0xff, 0, 0, 1]);
    t.update_checksum();
    t.as_slice().to_vec()
}

fn fadt(p: &AcpiPlatform, dsdt: u64, facs: u64) -> Vec<u8> {
    let mut f = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .dsdt_64(dsdt)
        .firmware_ctrl_64(facs)
        .flag(Flags::ResetRegSup)
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton)
        .flag(Flags::Wbinvd);
    f.sci_int = u16::from(p.sci_irq).into();
    f.pm1a_evt_blk = u32::from(p.pm1a_evt).into();
    f.pm1a_cnt_blk = u32::from(p.pm1a_cnt).into();
    f.pm1_evt_len = 4;
    f.pm1_cnt_len = 2;
    f.x_pm1a_evt_blk = GAS::new(
        AddressSpace::SystemIo,
        32,
        0,
        AccessSize::WordAccess,
        p.pm1a_evt.into(),
    );
    f.x_pm1a_cnt_blk = GAS::new(
        AddressSpace::SystemIo,
        16,
        0,
        AccessSize::WordAccess,
        p.pm1a_cnt.into(),
    );
    f.reset_reg = GAS::new(
        AddressSpace::SystemIo,
        8,
        0,
        AccessSize::ByteAccess,
        p.reset_port.into(),
    );
    f.reset_value = p.reset_value;
    // Legacy devices and an i8042 are present; there is no VGA, and no CMOS RTC alarm century.
    f.iapc_boot_arch = 0b111u16.into();
    f.century = 0x32;
    f.hypervisor_vendor_identity = u64::from_le_bytes(*b"POPEK\0\0\0").into();
    let mut bytes = Vec::new();
    f.finalize().to_aml_bytes(&mut bytes);
    bytes
}

/// Writes the tables into the BIOS area and returns the RSDP's address.
pub fn write_tables(mem: &GuestMemoryMmap, p: &AcpiPlatform) -> Result<GuestAddress, AcpiError> {
    if p.cpus > 255 {
        return Err(AcpiError::TooManyCpus(p.cpus));
    }
    let rsdp_addr = ACPI_TABLES;
    let mut next = align64(rsdp_addr + Rsdp::len() as u64);
    let mut place = |bytes: &[u8]| -> Result<u64, AcpiError> {
        let addr = next;
        let end = addr + bytes.len() as u64;
        if end > BIOS_END {
            return Err(AcpiError::TooLarge(end - ACPI_TABLES));
        }
        mem.write_slice(bytes, GuestAddress(addr))
            .map_err(AcpiError::Write)?;
        next = align64(end);
        Ok(addr)
    };
    let dsdt_addr = place(&dsdt(p))?;
    let mut facs_bytes = Vec::new();
    FACS::new().to_aml_bytes(&mut facs_bytes);
    let facs_addr = place(&facs_bytes)?;
    let fadt_addr = place(&fadt(p, dsdt_addr, facs_addr))?;
    let madt_addr = place(&madt(p))?;
    let mcfg_addr = p.pci.as_ref().map(|pci| place(&mcfg(pci))).transpose()?;
    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    xsdt.add_entry(fadt_addr);
    xsdt.add_entry(madt_addr);
    if let Some(addr) = mcfg_addr {
        xsdt.add_entry(addr);
    }
    let mut xsdt_bytes = Vec::new();
    xsdt.to_aml_bytes(&mut xsdt_bytes);
    let xsdt_addr = place(&xsdt_bytes)?;
    let mut rsdp = Vec::new();
    Rsdp::new(OEM_ID, xsdt_addr).to_aml_bytes(&mut rsdp);
    mem.write_slice(&rsdp, GuestAddress(rsdp_addr))
        .map_err(AcpiError::Write)?;
    Ok(GuestAddress(rsdp_addr))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn platform(cpus: u32) -> AcpiPlatform {
        AcpiPlatform {
            cpus,
            pm1a_evt: 0x600,
            pm1a_cnt: 0x604,
            reset_port: 0x607,
            reset_value: 0x0e,
            s5_slp_typ: 5,
            sci_irq: 9,
            com1: (0x3f8, 4),
            pci: None,
        }
    }

    fn pci() -> PciAcpi {
        PciAcpi {
            ecam_base: 0xe000_0000,
            mmio_base: 0xc000_0000,
            mmio_size: 0x2000_0000,
            intx_gsi_base: 16,
            intx_gsi_count: 8,
        }
    }

    /// The XSDT's tables, by address, from the RSDP at `rsdp`.
    fn xsdt_entries(mem: &GuestMemoryMmap, rsdp: GuestAddress) -> Vec<u64> {
        let mut r = [0u8; 36];
        mem.read_slice(&mut r, rsdp).unwrap();
        let xsdt = read_table(mem, u64::from_le_bytes(r[24..32].try_into().unwrap()));
        xsdt[36..]
            .chunks(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
            .collect()
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    fn read_table(mem: &GuestMemoryMmap, addr: u64) -> Vec<u8> {
        let len: u32 = mem.read_obj(GuestAddress(addr + 4)).unwrap();
        let mut t = vec![0u8; len as usize];
        mem.read_slice(&mut t, GuestAddress(addr)).unwrap();
        t
    }

    fn checksum_ok(bytes: &[u8]) -> bool {
        bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)) == 0
    }

    #[test]
    fn tables_chain_from_rsdp_with_valid_checksums_and_all_cpus() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 2 << 20)]).unwrap();
        let rsdp = write_tables(&mem, &platform(3)).unwrap();
        let mut r = [0u8; 36];
        mem.read_slice(&mut r, rsdp).unwrap();
        assert_eq!(&r[..8], b"RSD PTR ");
        assert!(checksum_ok(&r[..20]) && checksum_ok(&r));
        let xsdt_addr = u64::from_le_bytes(r[24..32].try_into().unwrap());
        let xsdt = read_table(&mem, xsdt_addr);
        assert_eq!(&xsdt[..4], b"XSDT");
        assert!(checksum_ok(&xsdt));
        let entries: Vec<u64> = xsdt[36..]
            .chunks(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
            .collect();
        let sigs: Vec<Vec<u8>> = entries
            .iter()
            .map(|&a| read_table(&mem, a)[..4].to_vec())
            .collect();
        assert_eq!(sigs, vec![b"FACP".to_vec(), b"APIC".to_vec()]);
        let madt = read_table(&mem, entries[1]);
        assert!(checksum_ok(&madt));
        let mut lapics = 0;
        let mut i = 44;
        while i < madt.len() {
            if madt[i] == 0 {
                assert_eq!(madt[i + 3], lapics, "APIC IDs are 0..cpus");
                lapics += 1;
            }
            i += madt[i + 1] as usize;
        }
        assert_eq!(lapics, 3);
        let fadt = read_table(&mem, entries[0]);
        assert!(checksum_ok(&fadt));
        let dsdt_addr = u64::from_le_bytes(fadt[140..148].try_into().unwrap());
        let dsdt = read_table(&mem, dsdt_addr);
        assert_eq!(&dsdt[..4], b"DSDT");
        assert!(checksum_ok(&dsdt));
        assert!(dsdt.windows(4).any(|w| w == b"COM1"));
        assert!(dsdt.windows(4).any(|w| w == b"_S5_"));
    }

    #[test]
    fn pci_adds_mcfg_and_a_host_bridge_with_routing() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 2 << 20)]).unwrap();
        let mut p = platform(2);
        p.pci = Some(pci());
        let rsdp = write_tables(&mem, &p).unwrap();
        let entries = xsdt_entries(&mem, rsdp);
        assert_eq!(entries.len(), 3);
        let mcfg = read_table(&mem, entries[2]);
        assert_eq!(&mcfg[..4], b"MCFG");
        assert!(checksum_ok(&mcfg));
        // One allocation: base, segment 0, buses 0-0.
        assert_eq!(mcfg.len(), 44 + 16);
        assert_eq!(
            u64::from_le_bytes(mcfg[44..52].try_into().unwrap()),
            0xe000_0000
        );
        assert_eq!(&mcfg[52..56], &[0, 0, 0, 0]);

        let fadt = read_table(&mem, entries[0]);
        let dsdt = read_table(&mem, u64::from_le_bytes(fadt[140..148].try_into().unwrap()));
        assert!(checksum_ok(&dsdt));
        let eisa = |id: &str| {
            let mut b = Vec::new();
            aml::EISAName::new(id).to_aml_bytes(&mut b);
            b
        };
        for needle in [
            b"PCI0".to_vec(),
            b"_PRT".to_vec(),
            b"MBRD".to_vec(),
            b"_BBN".to_vec(),
            eisa("PNP0A08"),
            eisa("PNP0A03"),
            eisa("PNP0C02"),
        ] {
            assert!(contains(&dsdt, &needle), "{needle:?}");
        }
        // The 32-bit window: DWord address space descriptor with min and max.
        let mut window = 0xc000_0000u32.to_le_bytes().to_vec();
        window.extend_from_slice(&0xdfff_ffffu32.to_le_bytes());
        assert!(contains(&dsdt, &window));
        // Slot 8's INTA is on GSI 16: Package(4) { 0x8FFFF, Zero, Zero, 16 }.
        let mut route = vec![0x12, 0x0b, 0x04, 0x0c];
        route.extend_from_slice(&0x8_ffffu32.to_le_bytes());
        route.extend_from_slice(&[0x00, 0x00, 0x0a, 16]);
        assert!(contains(&dsdt, &route));
        assert_eq!(pci().intx_gsi(1, 3), 20);
    }

    #[test]
    fn no_pci_means_no_mcfg_and_no_host_bridge() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 2 << 20)]).unwrap();
        let rsdp = write_tables(&mem, &platform(1)).unwrap();
        let entries = xsdt_entries(&mem, rsdp);
        assert_eq!(entries.len(), 2);
        let fadt = read_table(&mem, entries[0]);
        let dsdt = read_table(&mem, u64::from_le_bytes(fadt[140..148].try_into().unwrap()));
        assert!(!contains(&dsdt, b"PCI0"));
    }

    #[test]
    fn more_than_255_cpus_are_refused() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 2 << 20)]).unwrap();
        assert!(matches!(
            write_tables(&mem, &platform(300)),
            Err(AcpiError::TooManyCpus(300))
        ));
    }
}
