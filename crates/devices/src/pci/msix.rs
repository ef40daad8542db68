//! MSI-X: the capability's message control, the vector table and the pending-bit array (PBA).
//!
//! Each vector has its own GSI, so that a backend routing by GSI (KVM) keeps one route per
//! vector. A vector signalled while it or the whole function is masked sets its pending bit;
//! unmasking delivers it then.

use std::sync::{Arc, Mutex};

use vm_allocator::IdAllocator;

use super::PciError;
use crate::interrupt::{MsiMessage, MsiSink};

/// Capability ID of MSI-X.
pub const MSIX_CAP_ID: u8 = 0x11;
/// Length of the MSI-X capability.
pub const MSIX_CAP_LEN: usize = 12;
/// Size of one table entry.
pub const MSIX_ENTRY_SIZE: u64 = 16;
/// Most vectors a function may have.
pub const MSIX_MAX_VECTORS: u16 = 2048;
/// Message control: MSI-X enable.
pub const CONTROL_ENABLE: u16 = 1 << 15;
/// Message control: function mask.
pub const CONTROL_FUNCTION_MASK: u16 = 1 << 14;
/// First GSI for MSI vectors: after the 24 IOAPIC pins.
pub const MSI_GSI_BASE: u32 = 24;
/// Last GSI for MSI vectors (KVM accepts routes below 4096).
pub const MSI_GSI_LAST: u32 = 4095;

/// Vector control: masked.
pub(super) const VECTOR_MASKED: u32 = 1;

/// Where a structure lives: a BAR and an offset in it (8-byte aligned).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BarOffset {
    /// BAR index (0-5).
    pub bar: u8,
    /// Offset into the BAR.
    pub offset: u32,
}

/// Hands out a GSI for each MSI-X vector of each device, from one pool for the whole VM.
#[derive(Clone)]
pub struct MsiAllocator {
    sink: Arc<dyn MsiSink>,
    ids: Arc<Mutex<IdAllocator>>,
}

impl MsiAllocator {
    /// An allocator of GSIs `first..=last`, whose vectors deliver into `sink`.
    pub fn new(sink: Arc<dyn MsiSink>, first: u32, last: u32) -> Result<Self, PciError> {
        let ids = IdAllocator::new(first, last).map_err(|_| PciError::GsiRange(first, last))?;
        Ok(Self {
            sink,
            ids: Arc::new(Mutex::new(ids)),
        })
    }

    /// An MSI-X table of `vectors` entries, each with a fresh GSI.
    pub fn allocate(&self, vectors: u16) -> Result<MsixConfig, PciError> {
        if vectors == 0 || vectors > MSIX_MAX_VECTORS {
            return Err(PciError::MsixVectors(vectors));
        }
        let mut ids = self.ids.lock().unwrap_or_else(|p| p.into_inner());
        let mut gsis = Vec::with_capacity(vectors.into());
        for _ in 0..vectors {
            match ids.allocate_id() {
                Ok(gsi) => gsis.push(gsi),
                Err(_) => {
                    for gsi in gsis {
                        let _ = ids.free_id(gsi);
                    }
                    return Err(PciError::OutOfGsis);
                }
            }
        }
        Ok(MsixConfig::new(gsis, self.sink.clone()))
    }
}

/// One function's MSI-X state.
pub struct MsixConfig {
    /// Per vector: address low, address high, data, vector control.
    pub(super) table: Vec<[u32; 4]>,
    pub(super) pending: Vec<bool>,
    pub(super) enabled: bool,
    pub(super) function_masked: bool,
    gsis: Vec<u32>,
    sink: Arc<dyn MsiSink>,
}

impl MsixConfig {
    /// A table with one vector per GSI in `gsis` (at most [`MSIX_MAX_VECTORS`]; more are
    /// dropped), every vector masked, MSI-X disabled.
    pub fn new(mut gsis: Vec<u32>, sink: Arc<dyn MsiSink>) -> Self {
        gsis.truncate(MSIX_MAX_VECTORS.into());
        Self {
            table: vec![[0, 0, 0, VECTOR_MASKED]; gsis.len()],
            pending: vec![false; gsis.len()],
            enabled: false,
            function_masked: false,
            gsis,
            sink,
        }
    }

    /// Number of vectors.
    pub fn vectors(&self) -> u16 {
        self.table.len() as u16
    }

    /// The GSI of each vector.
    pub fn gsis(&self) -> &[u32] {
        &self.gsis
    }

    /// Size of the table in bytes.
    pub fn table_len(&self) -> u64 {
        self.table.len() as u64 * MSIX_ENTRY_SIZE
    }

    /// Size of the PBA in bytes (whole qwords).
    pub fn pba_len(&self) -> u64 {
        (self.table.len() as u64).div_ceil(64) * 8
    }

    /// The capability's bytes and write mask, for [`super::PciConfiguration::add_capability`].
    pub fn capability(&self, table: BarOffset, pba: BarOffset) -> ([u8; MSIX_CAP_LEN], [u8; 4]) {
        let control = self.vectors().saturating_sub(1);
        let mut cap = [0u8; MSIX_CAP_LEN];
        cap[0] = MSIX_CAP_ID;
        cap[2..4].copy_from_slice(&control.to_le_bytes());
        let table_reg = (table.offset & !7) | u32::from(table.bar & 7);
        let pba_reg = (pba.offset & !7) | u32::from(pba.bar & 7);
        cap[4..8].copy_from_slice(&table_reg.to_le_bytes());
        cap[8..12].copy_from_slice(&pba_reg.to_le_bytes());
        // Only the enable and function-mask bits are the guest's.
        (cap, [0, 0, 0, 0xc0])
    }

    /// Takes the message control word the guest wrote to the capability.
    pub fn set_control(&mut self, control: u16) {
        self.enabled = control & CONTROL_ENABLE != 0;
        self.function_masked = control & CONTROL_FUNCTION_MASK != 0;
        for v in 0..self.table.len() {
            self.deliver_if_pending(v);
        }
    }

    /// Whether the guest enabled MSI-X.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Whether vector `vector` is waiting for an unmask.
    pub fn is_pending(&self, vector: u16) -> bool {
        self.pending
            .get(usize::from(vector))
            .copied()
            .unwrap_or(false)
    }

    /// Reads the table at `offset`.
    pub fn read_table(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in (0u64..).zip(data.iter_mut()) {
            *b = offset
                .checked_add(i)
                .and_then(|o| self.table_byte(o))
                .unwrap_or(0);
        }
    }

    /// Writes the table at `offset`; unmasking a pending vector delivers it.
    pub fn write_table(&mut self, offset: u64, data: &[u8]) {
        let mut touched = Vec::new();
        for (i, &value) in (0u64..).zip(data.iter()) {
            let Some(o) = offset.checked_add(i) else {
                break;
            };
            let Some((v, reg, shift)) = self.locate(o) else {
                continue;
            };
            let r = &mut self.table[v][reg];
            *r = (*r & !(0xff << shift)) | u32::from(value) << shift;
            if reg == 3 {
                *r &= VECTOR_MASKED;
            }
            if touched.last() != Some(&v) {
                touched.push(v);
            }
        }
        for v in touched {
            self.deliver_if_pending(v);
        }
    }

    /// Reads the pending-bit array at `offset` (guest writes to it are ignored).
    pub fn read_pba(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in (0u64..).zip(data.iter_mut()) {
            let Some(bit0) = offset.checked_add(i).and_then(|o| o.checked_mul(8)) else {
                *b = 0;
                continue;
            };
            *b = (0..8u64).fold(0u8, |acc, bit| {
                let pending = usize::try_from(bit0 + bit)
                    .ok()
                    .and_then(|v| self.pending.get(v))
                    .copied()
                    .unwrap_or(false);
                acc | u8::from(pending) << bit
            });
        }
    }

    /// Signals vector `vector`: delivered now, or left pending while masked. Nothing happens
    /// for a vector out of range or while MSI-X is disabled.
    pub fn signal(&mut self, vector: u16) {
        let v = usize::from(vector);
        if !self.enabled || v >= self.table.len() {
            return;
        }
        if self.masked(v) {
            self.pending[v] = true;
        } else {
            self.deliver(v);
        }
    }

    /// Back to the power-on state: disabled, every vector masked, nothing pending.
    pub fn reset(&mut self) {
        self.enabled = false;
        self.function_masked = false;
        self.table.fill([0, 0, 0, VECTOR_MASKED]);
        self.pending.fill(false);
    }

    pub(super) fn masked(&self, v: usize) -> bool {
        self.function_masked || self.table[v][3] & VECTOR_MASKED != 0
    }

    fn deliver_if_pending(&mut self, v: usize) {
        if self.enabled && self.pending[v] && !self.masked(v) {
            self.pending[v] = false;
            self.deliver(v);
        }
    }

    fn deliver(&self, v: usize) {
        let [lo, hi, data, _] = self.table[v];
        let msg = MsiMessage {
            address: u64::from(hi) << 32 | u64::from(lo),
            data,
        };
        self.sink.deliver(self.gsis[v], msg);
    }

    /// The vector, register and bit shift of table byte `offset`.
    fn locate(&self, offset: u64) -> Option<(usize, usize, u32)> {
        let v = usize::try_from(offset / MSIX_ENTRY_SIZE).ok()?;
        (v < self.table.len()).then_some((
            v,
            (offset % MSIX_ENTRY_SIZE / 4) as usize,
            (offset % 4 * 8) as u32,
        ))
    }

    fn table_byte(&self, offset: u64) -> Option<u8> {
        let (v, reg, shift) = self.locate(offset)?;
        Some((self.table[v][reg] >> shift) as u8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::MockMsi;

    fn msix(vectors: u16) -> (MsixConfig, Arc<MockMsi>) {
        let sink = Arc::new(MockMsi::default());
        let alloc = MsiAllocator::new(sink.clone(), MSI_GSI_BASE, MSI_GSI_LAST).unwrap();
        (alloc.allocate(vectors).unwrap(), sink)
    }

    fn program(m: &mut MsixConfig, v: u64, addr: u32, data: u32, masked: bool) {
        m.write_table(v * 16, &addr.to_le_bytes());
        m.write_table(v * 16 + 4, &0u32.to_le_bytes());
        m.write_table(v * 16 + 8, &data.to_le_bytes());
        m.write_table(v * 16 + 12, &u32::from(masked).to_le_bytes());
    }

    #[test]
    fn vectors_get_distinct_gsis_from_a_shared_pool() {
        let sink = Arc::new(MockMsi::default());
        let alloc = MsiAllocator::new(sink, 24, 28).unwrap();
        let a = alloc.allocate(3).unwrap();
        let b = alloc.clone().allocate(2).unwrap();
        assert_eq!(a.gsis(), &[24, 25, 26]);
        assert_eq!(b.gsis(), &[27, 28]);
        assert!(matches!(alloc.allocate(1), Err(PciError::OutOfGsis)));
        assert!(matches!(alloc.allocate(0), Err(PciError::MsixVectors(0))));
    }

    #[test]
    fn unmasked_vector_delivers_its_message_on_its_gsi() {
        let (mut m, sink) = msix(2);
        m.set_control(CONTROL_ENABLE);
        program(&mut m, 1, 0xfee0_0000, 0x41, false);
        m.signal(1);
        let got = sink.take();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, m.gsis()[1]);
        assert_eq!(
            got[0].1,
            MsiMessage {
                address: 0xfee0_0000,
                data: 0x41
            }
        );
    }

    #[test]
    fn masked_vector_pends_and_delivers_when_unmasked() {
        let (mut m, sink) = msix(2);
        m.set_control(CONTROL_ENABLE);
        program(&mut m, 0, 0xfee0_0000, 0x30, true);
        m.signal(0);
        assert!(sink.take().is_empty());
        assert!(m.is_pending(0));
        let mut pba = [0u8; 8];
        m.read_pba(0, &mut pba);
        assert_eq!(pba[0], 1);
        m.write_table(12, &0u32.to_le_bytes());
        assert_eq!(sink.take().len(), 1);
        assert!(!m.is_pending(0));
    }

    #[test]
    fn function_mask_holds_every_vector() {
        let (mut m, sink) = msix(2);
        program(&mut m, 0, 0xfee0_0000, 0x30, false);
        program(&mut m, 1, 0xfee0_0000, 0x31, false);
        m.set_control(CONTROL_ENABLE | CONTROL_FUNCTION_MASK);
        m.signal(0);
        m.signal(1);
        assert!(sink.take().is_empty());
        m.set_control(CONTROL_ENABLE);
        let data: Vec<u32> = sink.take().iter().map(|(_, msg)| msg.data).collect();
        assert_eq!(data, vec![0x30, 0x31]);
    }

    #[test]
    fn disabled_msix_delivers_nothing_and_keeps_nothing_pending() {
        let (mut m, sink) = msix(1);
        program(&mut m, 0, 0xfee0_0000, 0x30, false);
        m.signal(0);
        assert!(sink.take().is_empty());
        assert!(!m.is_pending(0));
    }

    #[test]
    fn table_reads_back_and_reserved_control_bits_stay_zero() {
        let (mut m, _) = msix(1);
        let mut b = [0u8; 16];
        m.read_table(0, &mut b);
        assert_eq!(&b[12..], &[1, 0, 0, 0], "vectors start masked");
        m.write_table(0, &[0xff; 16]);
        m.read_table(0, &mut b);
        assert_eq!(&b[..12], &[0xff; 12]);
        assert_eq!(&b[12..], &[1, 0, 0, 0]);
        // Past the end: zeros, no panic.
        m.write_table(u64::MAX - 3, &[1; 8]);
        m.read_table(u64::MAX - 3, &mut b);
        m.read_pba(u64::MAX, &mut b[..1]);
        assert_eq!(b[0], 0);
    }

    #[test]
    fn capability_encodes_size_and_locations() {
        let (m, _) = msix(3);
        let (cap, mask) = m.capability(
            BarOffset {
                bar: 0,
                offset: 0x4000,
            },
            BarOffset {
                bar: 2,
                offset: 0x5000,
            },
        );
        assert_eq!(cap[0], MSIX_CAP_ID);
        assert_eq!(u16::from_le_bytes([cap[2], cap[3]]), 2);
        assert_eq!(u32::from_le_bytes(cap[4..8].try_into().unwrap()), 0x4000);
        assert_eq!(u32::from_le_bytes(cap[8..12].try_into().unwrap()), 0x5002);
        assert_eq!(mask, [0, 0, 0, 0xc0]);
    }
}
