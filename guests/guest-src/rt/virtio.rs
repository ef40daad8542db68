//! A minimal virtio 1.x driver core for the PCI transport (virtio spec 1.2, section 4.1): device
//! identification, the vendor capabilities, status/feature negotiation, split virtqueues in a
//! static DMA arena, and MSI-X table programming.
//!
//! Everything is bounded: loops that wait on the device take a [`Deadline`] or an iteration
//! limit, and errors are `&'static str` reasons for the caller to print.

use core::arch::asm;
use core::ptr::{read_volatile, write_volatile};

use crate::Global;
use crate::deadline::Deadline;
use crate::pci::{self, Bar, CMD_BUS_MASTER, CMD_MEMORY, Function, cfg};

/// The PCI vendor ID of virtio devices.
pub const VENDOR: u16 = 0x1af4;

/// Device status bits.
pub mod status {
    /// The guest noticed the device.
    pub const ACKNOWLEDGE: u8 = 1;
    /// The guest knows how to drive it.
    pub const DRIVER: u8 = 2;
    /// The driver is ready.
    pub const DRIVER_OK: u8 = 4;
    /// Feature negotiation is complete.
    pub const FEATURES_OK: u8 = 8;
    /// The device hit an error it cannot recover from.
    pub const DEVICE_NEEDS_RESET: u8 = 64;
    /// The driver gave up on the device.
    pub const FAILED: u8 = 128;
}

/// VIRTIO_F_VERSION_1.
pub const F_VERSION_1: u64 = 1 << 32;

/// Descriptor flags.
pub const DESC_NEXT: u16 = 1;
/// The device writes this buffer.
pub const DESC_WRITE: u16 = 2;

/// Offsets in `struct virtio_pci_common_cfg`.
mod common {
    pub const DEVICE_FEATURE_SELECT: u64 = 0x00;
    pub const DEVICE_FEATURE: u64 = 0x04;
    pub const DRIVER_FEATURE_SELECT: u64 = 0x08;
    pub const DRIVER_FEATURE: u64 = 0x0c;
    pub const CONFIG_MSIX_VECTOR: u64 = 0x10;
    pub const NUM_QUEUES: u64 = 0x12;
    pub const DEVICE_STATUS: u64 = 0x14;
    pub const CONFIG_GENERATION: u64 = 0x15;
    pub const QUEUE_SELECT: u64 = 0x16;
    pub const QUEUE_SIZE: u64 = 0x18;
    pub const QUEUE_MSIX_VECTOR: u64 = 0x1a;
    pub const QUEUE_ENABLE: u64 = 0x1c;
    pub const QUEUE_NOTIFY_OFF: u64 = 0x1e;
    pub const QUEUE_DESC: u64 = 0x20;
    pub const QUEUE_DRIVER: u64 = 0x28;
    pub const QUEUE_DEVICE: u64 = 0x30;
}

/// "No MSI-X vector".
pub const NO_VECTOR: u16 = 0xffff;

/// The largest queue this driver sets up (so one 4 KiB page holds a whole split ring).
pub const MAX_QUEUE_SIZE: u16 = 64;

/// A compiler barrier: memory accesses are neither moved across it nor cached over it. x86 keeps
/// stores in order and loads in order, which is all the split ring needs (we always notify, so
/// no store-load ordering is involved).
#[inline(always)]
pub fn barrier() {
    // SAFETY: an empty asm statement that may touch memory: the compiler must assume it does.
    unsafe { asm!("", options(nostack, preserves_flags)) };
}

/// Reads a u8 of MMIO.
pub fn mmio_read8(addr: u64) -> u8 {
    // SAFETY: callers pass addresses inside a BAR structure mapped by `Device::probe`.
    unsafe { read_volatile(addr as *const u8) }
}
/// Reads a u16 of MMIO.
pub fn mmio_read16(addr: u64) -> u16 {
    // SAFETY: as for `mmio_read8`.
    unsafe { read_volatile(addr as *const u16) }
}
/// Reads a u32 of MMIO.
pub fn mmio_read32(addr: u64) -> u32 {
    // SAFETY: as for `mmio_read8`.
    unsafe { read_volatile(addr as *const u32) }
}
/// Writes a u8 of MMIO.
pub fn mmio_write8(addr: u64, value: u8) {
    // SAFETY: as for `mmio_read8`.
    unsafe { write_volatile(addr as *mut u8, value) }
}
/// Writes a u16 of MMIO.
pub fn mmio_write16(addr: u64, value: u16) {
    // SAFETY: as for `mmio_read8`.
    unsafe { write_volatile(addr as *mut u16, value) }
}
/// Writes a u32 of MMIO.
pub fn mmio_write32(addr: u64, value: u32) {
    // SAFETY: as for `mmio_read8`.
    unsafe { write_volatile(addr as *mut u32, value) }
}

// ---------------------------------------------------------------------------------------------
// DMA memory.

/// Size of the static DMA arena queues and buffers come from.
pub const ARENA_SIZE: usize = 512 * 1024;

#[repr(C, align(4096))]
struct Arena([u8; ARENA_SIZE]);

static ARENA: Global<Arena> = Global::new(Arena([0; ARENA_SIZE]));
static ARENA_USED: Global<usize> = Global::new(0);

/// `len` zeroed bytes of DMA memory (guest-physical = virtual address), aligned to `align` (a
/// power of two up to 4096). None when the arena is exhausted.
pub fn dma_alloc(len: usize, align: usize) -> Option<u64> {
    // SAFETY: BSP only; the arena is handed out in disjoint pieces.
    unsafe {
        let used = &mut *ARENA_USED.get();
        let start = (*used + align - 1) & !(align - 1);
        if start + len > ARENA_SIZE {
            return None;
        }
        *used = start + len;
        let addr = ARENA.get() as u64 + start as u64;
        core::ptr::write_bytes(addr as *mut u8, 0, len);
        Some(addr)
    }
}

/// Forgets every allocation (only once no device uses the memory any more: reset them first).
pub fn dma_reset() {
    // SAFETY: BSP only.
    unsafe { *ARENA_USED.get() = 0 };
}

/// A byte slice over DMA memory.
///
/// # Safety
/// `addr..addr + len` must come from [`dma_alloc`], and no device may be writing it.
pub unsafe fn dma_slice<'a>(addr: u64, len: usize) -> &'a mut [u8] {
    // SAFETY: forwarded to the caller.
    unsafe { core::slice::from_raw_parts_mut(addr as *mut u8, len) }
}

// ---------------------------------------------------------------------------------------------
// Identification.

/// The virtio device type of a PCI function, if it is a virtio device: modern IDs
/// 0x1040 + type, or transitional IDs 0x1000-0x103f with the type in the subsystem ID.
pub fn device_type(f: &Function) -> Option<u16> {
    if f.vendor() != VENDOR {
        return None;
    }
    match f.device() {
        id @ 0x1040..=0x107f => Some(id - 0x1040),
        0x1000..=0x103f => Some(f.read16(cfg::SUBSYSTEM)),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// The device.

/// MSI-X, as found in the capability list.
#[derive(Clone, Copy, Debug)]
pub struct Msix {
    /// Offset of the capability in configuration space.
    pub cap: u16,
    /// Number of table entries.
    pub table_size: u16,
    /// MMIO address of the table (mapped).
    pub table: u64,
}

/// A virtio-pci device with its structures mapped.
pub struct Device {
    /// The PCI function.
    pub function: Function,
    /// The virtio device type.
    pub device_type: u16,
    common: u64,
    notify: u64,
    notify_multiplier: u32,
    isr: u64,
    config: u64,
    config_len: u32,
    /// MSI-X, if the function has it.
    pub msix: Option<Msix>,
    /// Features the device offers (valid after [`Device::negotiate`]).
    pub offered: u64,
    /// Features both sides agreed on (valid after [`Device::negotiate`]).
    pub features: u64,
}

/// One `virtio_pci_cap` as read.
#[derive(Clone, Copy, Default)]
struct Cap {
    bar: u8,
    offset: u32,
    length: u32,
    extra: u32,
}

const CAP_COMMON: u8 = 1;
const CAP_NOTIFY: u8 = 2;
const CAP_ISR: u8 = 3;
const CAP_DEVICE: u8 = 4;
const PCI_CAP_VENDOR: u8 = 0x09;
const PCI_CAP_MSIX: u8 = 0x11;

/// The MMIO base of memory BAR `index`: assigns it from the BAR window if no one did, maps it
/// uncached, turns on memory decoding. Returns (address, size).
fn map_bar(f: &Function, index: u8) -> Result<(u64, u64), &'static str> {
    let (address, is64) = match f.bar(index) {
        Some(Bar::Memory { address, is64 }) => (address, is64),
        Some(Bar::Io { .. }) => return Err("virtio structure in an I/O BAR"),
        None => return Err("capability names a missing BAR"),
    };
    let size = f.bar_size(index);
    if size == 0 || !size.is_power_of_two() {
        return Err("BAR not implemented");
    }
    let address = if address == 0 {
        let address = pci::allocate(size).ok_or("no room for the BAR in the window")?;
        if !is64 && address + size > 1 << 32 {
            return Err("BAR window above 4 GiB for a 32-bit BAR");
        }
        f.set_bar(index, address, is64);
        address
    } else {
        address
    };
    if !pci::map_uncached(address, size) {
        return Err("cannot map the BAR");
    }
    f.enable(CMD_MEMORY);
    Ok((address, size))
}

impl Device {
    /// Reads the capabilities of `function` (a virtio device of `device_type`), maps the BARs
    /// they point into (assigning unassigned ones) and enables memory decoding and bus
    /// mastering. Does not touch the device's status.
    pub fn probe(function: Function, device_type: u16) -> Result<Device, &'static str> {
        let f = &function;
        let mut caps: [Option<Cap>; 5] = [None; 5];
        let mut msix_cap = None;
        for (id, at) in f.capabilities() {
            if id == PCI_CAP_MSIX {
                msix_cap = Some(at);
            }
            if id != PCI_CAP_VENDOR {
                continue;
            }
            let kind = f.read8(at + 3);
            if !(CAP_COMMON..=CAP_DEVICE).contains(&kind) || caps[kind as usize].is_some() {
                continue;
            }
            let cap_len = f.read8(at + 2);
            if cap_len < 16 || (kind == CAP_NOTIFY && cap_len < 20) {
                continue;
            }
            let bar = f.read8(at + 4);
            if bar > 5 {
                continue;
            }
            caps[kind as usize] = Some(Cap {
                bar,
                offset: f.read32(at + 8),
                length: f.read32(at + 12),
                extra: if kind == CAP_NOTIFY {
                    f.read32(at + 16)
                } else {
                    0
                },
            });
        }
        let common = caps[CAP_COMMON as usize]
            .ok_or("no virtio 1.x common configuration capability (legacy-only device)")?;
        let notify = caps[CAP_NOTIFY as usize].ok_or("no notification capability")?;
        let isr = caps[CAP_ISR as usize].ok_or("no ISR capability")?;
        let device = caps[CAP_DEVICE as usize];
        if common.length < 0x38 {
            return Err("common configuration too short");
        }
        let mut bars: [Option<(u64, u64)>; 6] = [None; 6];
        let mut locate = |cap: Cap, min_len: u64| -> Result<u64, &'static str> {
            let (base, size) = match bars[cap.bar as usize] {
                Some(b) => b,
                None => {
                    let b = map_bar(f, cap.bar)?;
                    bars[cap.bar as usize] = Some(b);
                    b
                }
            };
            let end = u64::from(cap.offset) + u64::from(cap.length).max(min_len);
            if end > size {
                return Err("capability reaches past its BAR");
            }
            Ok(base + u64::from(cap.offset))
        };
        let common_addr = locate(common, 0x38)?;
        let notify_addr = locate(notify, 2)?;
        let isr_addr = locate(isr, 1)?;
        let (config_addr, config_len) = match device {
            Some(d) => (locate(d, 0)?, d.length),
            None => (0, 0),
        };
        // MSI-X is optional here: a table that cannot be mapped just means no MSI-X.
        let msix = msix_cap.and_then(|cap| {
            let control = f.read16(cap + 2);
            let table = f.read32(cap + 4);
            let bir = (table & 7) as usize;
            let (base, size) = match bars.get(bir)? {
                Some(b) => *b,
                None => map_bar(f, bir as u8).ok()?,
            };
            let table_size = (control & 0x7ff) + 1;
            let offset = u64::from(table & !7);
            if offset + 16 * u64::from(table_size) > size {
                return None;
            }
            Some(Msix {
                cap,
                table_size,
                table: base + offset,
            })
        });
        f.enable(CMD_MEMORY | CMD_BUS_MASTER);
        Ok(Device {
            function,
            device_type,
            common: common_addr,
            notify: notify_addr,
            notify_multiplier: notify.extra,
            isr: isr_addr,
            config: config_addr,
            config_len,
            msix,
            offered: 0,
            features: 0,
        })
    }

    /// The device status register.
    pub fn status(&self) -> u8 {
        mmio_read8(self.common + common::DEVICE_STATUS)
    }

    fn set_status(&self, value: u8) {
        mmio_write8(self.common + common::DEVICE_STATUS, value);
    }

    /// Adds `bits` to the device status.
    pub fn add_status(&self, bits: u8) {
        let s = self.status();
        self.set_status(s | bits);
    }

    /// Resets the device and waits (boundedly, about 1 s) for the status to read 0.
    pub fn reset(&self) -> Result<(), &'static str> {
        self.set_status(0);
        let mut deadline = Deadline::after_ms(1000);
        loop {
            if self.status() == 0 {
                return Ok(());
            }
            if deadline.expired() {
                return Err("device did not reset");
            }
        }
    }

    /// Says the driver gave up (status FAILED).
    pub fn fail(&self) {
        self.add_status(status::FAILED);
    }

    /// Reset, ACKNOWLEDGE, DRIVER, feature negotiation (VERSION_1 plus whatever of `wanted` the
    /// device offers), FEATURES_OK and its check. Returns the negotiated features.
    pub fn negotiate(&mut self, wanted: u64) -> Result<u64, &'static str> {
        self.reset()?;
        self.add_status(status::ACKNOWLEDGE);
        self.add_status(status::DRIVER);
        let mut offered = 0u64;
        for half in 0..2u32 {
            mmio_write32(self.common + common::DEVICE_FEATURE_SELECT, half);
            offered |= u64::from(mmio_read32(self.common + common::DEVICE_FEATURE)) << (32 * half);
        }
        self.offered = offered;
        if offered & F_VERSION_1 == 0 {
            self.fail();
            return Err("device does not offer VERSION_1 (legacy only)");
        }
        let features = offered & (wanted | F_VERSION_1);
        for half in 0..2u32 {
            mmio_write32(self.common + common::DRIVER_FEATURE_SELECT, half);
            mmio_write32(
                self.common + common::DRIVER_FEATURE,
                (features >> (32 * half)) as u32,
            );
        }
        self.add_status(status::FEATURES_OK);
        if self.status() & status::FEATURES_OK == 0 {
            self.fail();
            return Err("device did not accept FEATURES_OK");
        }
        self.features = features;
        Ok(features)
    }

    /// How many queues the device has.
    pub fn num_queues(&self) -> u16 {
        mmio_read16(self.common + common::NUM_QUEUES)
    }

    /// Sets up split virtqueue `index` with min(device maximum, `size`) entries (rounded down to
    /// a power of two, at most [`MAX_QUEUE_SIZE`]) in fresh DMA memory, with MSI-X vector
    /// `vector` ([`NO_VECTOR`] for none), and enables it.
    pub fn setup_queue(&self, index: u16, size: u16, vector: u16) -> Result<Queue, &'static str> {
        if index >= self.num_queues() {
            return Err("device has too few queues");
        }
        let c = self.common;
        mmio_write16(c + common::QUEUE_SELECT, index);
        let max = mmio_read16(c + common::QUEUE_SIZE);
        if max == 0 {
            return Err("queue not available");
        }
        if mmio_read16(c + common::QUEUE_ENABLE) != 0 {
            return Err("queue already enabled after reset");
        }
        let mut size = max.min(size).min(MAX_QUEUE_SIZE);
        while !size.is_power_of_two() {
            size &= size - 1; // clear the lowest set bit until one is left
        }
        let page = dma_alloc(4096, 4096).ok_or("out of DMA memory")?;
        let (desc, avail, used) = (page, page + 0x400, page + 0x800);
        mmio_write16(c + common::QUEUE_SIZE, size);
        for (reg, addr) in [
            (common::QUEUE_DESC, desc),
            (common::QUEUE_DRIVER, avail),
            (common::QUEUE_DEVICE, used),
        ] {
            mmio_write32(c + reg, addr as u32);
            mmio_write32(c + reg + 4, (addr >> 32) as u32);
        }
        if self.msix.is_some() {
            mmio_write16(c + common::QUEUE_MSIX_VECTOR, vector);
            if mmio_read16(c + common::QUEUE_MSIX_VECTOR) != vector {
                return Err("device refused the queue's MSI-X vector");
            }
        }
        let notify_off = mmio_read16(c + common::QUEUE_NOTIFY_OFF);
        let notify = self.notify + u64::from(notify_off) * u64::from(self.notify_multiplier);
        mmio_write16(c + common::QUEUE_ENABLE, 1);
        Ok(Queue {
            index,
            size,
            desc,
            avail,
            used,
            notify,
            next_avail: 0,
            last_used: 0,
        })
    }

    /// Sets the configuration-change MSI-X vector.
    pub fn set_config_vector(&self, vector: u16) {
        if self.msix.is_some() {
            mmio_write16(self.common + common::CONFIG_MSIX_VECTOR, vector);
        }
    }

    /// Sets DRIVER_OK, then checks the device did not ask for a reset.
    pub fn driver_ok(&self) -> Result<(), &'static str> {
        self.add_status(status::DRIVER_OK);
        self.check()
    }

    /// Err if the device set DEVICE_NEEDS_RESET.
    pub fn check(&self) -> Result<(), &'static str> {
        if self.status() & status::DEVICE_NEEDS_RESET != 0 {
            return Err("device set DEVICE_NEEDS_RESET");
        }
        Ok(())
    }

    /// Reads (and so clears) the ISR status byte.
    pub fn read_isr(&self) -> u8 {
        mmio_read8(self.isr)
    }

    /// Length of the device-specific configuration structure (0 if there is none).
    pub fn config_len(&self) -> u32 {
        self.config_len
    }

    fn generation(&self) -> u8 {
        mmio_read8(self.common + common::CONFIG_GENERATION)
    }

    /// Reads `out.len()` bytes of device-specific configuration at `offset`, byte by byte, retried
    /// until the configuration generation is stable (at most 16 tries). Bytes past the structure
    /// read as 0.
    pub fn read_config(&self, offset: u32, out: &mut [u8]) {
        for _ in 0..16 {
            let before = self.generation();
            for (i, b) in out.iter_mut().enumerate() {
                let at = offset + i as u32;
                *b = if at < self.config_len {
                    mmio_read8(self.config + u64::from(at))
                } else {
                    0
                };
            }
            if self.generation() == before {
                return;
            }
        }
    }

    /// A little-endian u32 of device configuration, read as one 32-bit access (offset 4-aligned).
    pub fn config_u32(&self, offset: u32) -> u32 {
        if offset + 4 > self.config_len {
            return 0;
        }
        mmio_read32(self.config + u64::from(offset))
    }

    /// A little-endian u64 of device configuration (two 32-bit accesses, generation-checked).
    pub fn config_u64(&self, offset: u32) -> u64 {
        let mut value = 0;
        for _ in 0..16 {
            let before = self.generation();
            value =
                u64::from(self.config_u32(offset)) | u64::from(self.config_u32(offset + 4)) << 32;
            if self.generation() == before {
                break;
            }
        }
        value
    }

    /// Programs MSI-X table entry `entry` to deliver `vector` to the local APIC `apic_id`
    /// (fixed, edge), unmasks it and enables MSI-X on the function (INTx then goes quiet).
    pub fn enable_msix(&self, entry: u16, vector: u8, apic_id: u8) -> Result<(), &'static str> {
        let msix = self.msix.ok_or("device has no MSI-X capability")?;
        if entry >= msix.table_size {
            return Err("MSI-X table too small");
        }
        let f = &self.function;
        let control = f.read16(msix.cap + 2);
        // Enable with the function masked while the table is written.
        f.write16(msix.cap + 2, control | 1 << 15 | 1 << 14);
        let e = msix.table + 16 * u64::from(entry);
        mmio_write32(e, 0xfee0_0000 | u32::from(apic_id) << 12);
        mmio_write32(e + 4, 0);
        mmio_write32(e + 8, u32::from(vector));
        mmio_write32(e + 12, 0);
        f.write16(msix.cap + 2, (control | 1 << 15) & !(1 << 14));
        Ok(())
    }

    /// Turns MSI-X off on the function.
    pub fn disable_msix(&self) {
        if let Some(msix) = self.msix {
            let control = self.function.read16(msix.cap + 2);
            self.function.write16(msix.cap + 2, control & !(1 << 15));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Split virtqueues.

/// One buffer of a descriptor chain.
#[derive(Clone, Copy, Debug)]
pub struct Buffer {
    /// Guest-physical address.
    pub addr: u64,
    /// Length in bytes.
    pub len: u32,
    /// Whether the device writes it (else it reads it).
    pub device_writes: bool,
}

/// A split virtqueue set up by [`Device::setup_queue`]. The driver chooses descriptor indices
/// itself: [`Queue::submit`] writes a chain at the index given, and the caller makes sure no
/// chain in flight uses those descriptors.
pub struct Queue {
    /// The queue's index.
    pub index: u16,
    /// Number of entries.
    pub size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    notify: u64,
    next_avail: u16,
    last_used: u16,
}

impl Queue {
    /// Writes descriptor `i`.
    pub fn set_desc(&self, i: u16, buffer: Buffer, next: Option<u16>) {
        let d = self.desc + 16 * u64::from(i % self.size);
        let flags = if buffer.device_writes { DESC_WRITE } else { 0 }
            | if next.is_some() { DESC_NEXT } else { 0 };
        // SAFETY: `d` is inside this queue's descriptor table in DMA memory.
        unsafe {
            write_volatile(d as *mut u64, buffer.addr);
            write_volatile((d + 8) as *mut u32, buffer.len);
            write_volatile((d + 12) as *mut u16, flags);
            write_volatile((d + 14) as *mut u16, next.unwrap_or(0) % self.size);
        }
    }

    /// Makes the chain starting at descriptor `head` available (does not notify).
    pub fn push(&mut self, head: u16) {
        let slot = self.next_avail % self.size;
        barrier();
        // SAFETY: the avail ring of this queue, in DMA memory.
        unsafe {
            write_volatile((self.avail + 4 + 2 * u64::from(slot)) as *mut u16, head);
            barrier();
            self.next_avail = self.next_avail.wrapping_add(1);
            write_volatile((self.avail + 2) as *mut u16, self.next_avail);
        }
        barrier();
    }

    /// Writes `buffers` as a chain in descriptors `first`, `first + 1`, ... and makes it
    /// available (does not notify). Returns the head, `first`.
    pub fn submit(&mut self, first: u16, buffers: &[Buffer]) -> u16 {
        let n = buffers.len() as u16;
        for (k, b) in buffers.iter().enumerate() {
            let i = first + k as u16;
            let next = if k as u16 + 1 < n { Some(i + 1) } else { None };
            self.set_desc(i, *b, next);
        }
        self.push(first);
        first
    }

    /// Tells the device there is something new in the queue.
    pub fn notify(&self) {
        barrier();
        mmio_write16(self.notify, self.index);
    }

    /// The next used element, if the device returned one: (descriptor head, bytes written).
    /// Err if the device's used index or head is out of range.
    pub fn poll(&mut self) -> Result<Option<(u16, u32)>, &'static str> {
        barrier();
        // SAFETY: the used ring of this queue, in DMA memory.
        let idx = unsafe { read_volatile((self.used + 2) as *const u16) };
        if idx == self.last_used {
            return Ok(None);
        }
        if idx.wrapping_sub(self.last_used) > self.size {
            return Err("used index ran ahead of the ring");
        }
        barrier();
        let slot = self.last_used % self.size;
        let e = self.used + 4 + 8 * u64::from(slot);
        // SAFETY: as above.
        let (id, len) = unsafe {
            (
                read_volatile(e as *const u32),
                read_volatile((e + 4) as *const u32),
            )
        };
        self.last_used = self.last_used.wrapping_add(1);
        barrier();
        if id >= u32::from(self.size) {
            return Err("used element names a descriptor out of range");
        }
        Ok(Some((id as u16, len)))
    }

    /// Polls until the device returns a chain or `deadline` passes ("timeout").
    pub fn wait(&mut self, deadline: &mut Deadline) -> Result<(u16, u32), &'static str> {
        loop {
            if let Some(used) = self.poll()? {
                return Ok(used);
            }
            if deadline.expired() {
                return Err("timeout");
            }
        }
    }
}
