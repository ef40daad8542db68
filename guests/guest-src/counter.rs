//! `counter`: a guest that runs until the VMM stops it, for lifecycle and snapshot tests. The
//! local APIC timer interrupts at 100 Hz and its handler counts `ticks`; the main loop counts
//! `count` as fast as it can and, each time `ticks` reaches the next multiple of `every=N`,
//! prints `counter: count=<count> ticks=<ticks>`. With `disk=1` each such line is also written,
//! zero-padded, to sector (line index mod capacity) of the first virtio-blk device, followed by
//! a FLUSH, and `counter: wrote sector <n>` is printed. With `limit=N` it exits 0 after N lines.
//! With `touch=M` it first dirties M MiB of RAM from 16 MiB up with a per-page pattern, and with
//! `verify=1` it re-checks four of those pages before every `count=` line, so a restored clone
//! shows that its memory came back intact.
//! See guests/README.md for the command line and every output line.

#![no_std]
#![no_main]

use core::ptr::{read_volatile, write_volatile};
use core::sync::atomic::{AtomicU64, Ordering};

use rt::deadline::{self, Deadline};
use rt::pci;
use rt::serial::{Hex, write_bytes};
use rt::virtio::{self as vio, Buffer, Device, NO_VECTOR, Queue, dma_alloc, dma_slice};
use rt::{apic, idt, say};

rt::entry!(main);

/// Exit statuses (besides 0).
const FAILED: u8 = 1;
const TIMEOUT: u8 = 2;
const USAGE: u8 = 4;

const TIMER_VECTOR: u8 = 0x30;
const SPURIOUS_VECTOR: u8 = 0xff;
/// Timer rate: divide by 16, 625 000 counts = 10 ms on the 1 GHz APIC bus KVM, QEMU and popek's
/// own local APIC emulate.
const TIMER_DIVIDE_16: u32 = 0x3;
const TIMER_COUNT: u32 = 625_000;

/// How long one block request may take.
const REQUEST_TIMEOUT_MS: u64 = 10_000;

static TICKS: AtomicU64 = AtomicU64::new(0);

fn timer_tick(_: &mut idt::Frame) {
    TICKS.fetch_add(1, Ordering::Relaxed);
    apic::eoi();
}

fn spurious(_: &mut idt::Frame) {}

// ---------------------------------------------------------------------------------------------
// Command line.

fn word(cmdline: &'static [u8], key: &[u8]) -> Option<&'static [u8]> {
    cmdline
        .split(|&b| b == b' ')
        .find_map(|w| w.strip_prefix(key))
}

fn number(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 18 {
        return None;
    }
    let mut n: u64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        n = n * 10 + u64::from(d - b'0');
    }
    Some(n)
}

/// The number after `key`, `default` if absent; Err (after a message) if malformed or outside
/// `range`.
fn numeric(
    cmdline: &'static [u8],
    key: &'static str,
    default: u64,
    range: core::ops::RangeInclusive<u64>,
) -> Result<u64, u8> {
    match word(cmdline, key.as_bytes()) {
        None => Ok(default),
        Some(w) => match number(w) {
            Some(n) if range.contains(&n) => Ok(n),
            _ => {
                say!("counter: bad value for ", key, " ", w);
                Err(USAGE)
            }
        },
    }
}

struct Options {
    every: u64,
    /// 0: no limit.
    limit: u64,
    disk: bool,
    /// MiB to dirty; 0: none.
    touch: u64,
    touch_fill: bool,
    verify: bool,
}

fn options(cmdline: &'static [u8]) -> Result<Options, u8> {
    let opts = Options {
        every: numeric(cmdline, "every=", 10, 1..=u64::from(u32::MAX))?,
        limit: numeric(cmdline, "limit=", 0, 0..=u64::MAX)?,
        disk: numeric(cmdline, "disk=", 0, 0..=1)? == 1,
        touch: numeric(cmdline, "touch=", 0, 0..=1 << 20)?,
        touch_fill: numeric(cmdline, "touch_fill=", 0, 0..=1)? == 1,
        verify: numeric(cmdline, "verify=", 0, 0..=1)? == 1,
    };
    if (opts.verify || opts.touch_fill) && opts.touch == 0 {
        say!("counter: verify= and touch_fill= need touch=");
        return Err(USAGE);
    }
    Ok(opts)
}

// ---------------------------------------------------------------------------------------------
// Touched memory: M MiB from 16 MiB up, one 8-byte word per 4 KiB page (or the whole page).

const MIB: u64 = 1 << 20;
const PAGE: u64 = 4096;
/// Where the touched range starts: well above the image (which ends around 4 MiB).
const TOUCH_START: u64 = 16 * MIB;
/// Where the runtime's cached identity map ends (the top 32 MiB below 4 GiB are uncached MMIO).
const MAPPED_END: u64 = 0xfe00_0000;
/// XORed with a page's address to give its word: never 0 (the address is below 4 GiB).
const PATTERN: u64 = 0x636f_756e_7465_7200;
/// Pages checked per line with `verify=1`.
const VERIFY_PAGES: u64 = 4;

/// The word every 8-byte slot of page `page` holds (only offset 0 without `touch_fill=1`).
fn pattern(page: u64) -> u64 {
    page ^ PATTERN
}

/// Whether `start..end` is covered by e820 RAM (entries may be adjacent).
fn is_ram(e820: &[rt::E820Entry], start: u64, end: u64) -> bool {
    let mut at = start;
    while at < end {
        let Some(e) = e820
            .iter()
            .find(|e| e.kind == rt::E820_RAM && e.addr <= at && at < e.addr.saturating_add(e.size))
        else {
            return false;
        };
        at = e.addr.saturating_add(e.size);
    }
    true
}

struct Touched {
    start: u64,
    pages: u64,
    fill: bool,
}

impl Touched {
    /// Dirties `mib` MiB from [`TOUCH_START`]; Err (after a message) if RAM is too small.
    fn touch(e820: &[rt::E820Entry], mib: u64, fill: bool) -> Result<Touched, u8> {
        let start = TOUCH_START;
        let end = start + mib * MIB;
        if end > MAPPED_END || !is_ram(e820, start, end) {
            say!("counter: touch=", mib, " exceeds RAM");
            return Err(USAGE);
        }
        let mut page = start;
        if fill {
            while page < end {
                // SAFETY: e820 RAM that nothing else uses, identity-mapped; DF is clear.
                unsafe {
                    core::arch::asm!(
                        "rep stosq",
                        inout("rcx") PAGE / 8 => _,
                        inout("rdi") page => _,
                        in("rax") pattern(page),
                        options(nostack, preserves_flags),
                    );
                }
                page += PAGE;
            }
        } else {
            while page < end {
                // SAFETY: as above.
                unsafe { write_volatile(page as *mut u64, pattern(page)) };
                page += PAGE;
            }
        }
        Ok(Touched {
            start,
            pages: mib * (MIB / PAGE),
            fill,
        })
    }

    /// Re-reads [`VERIFY_PAGES`] pages, one in each quarter of the range, at an offset into the
    /// quarter that moves with `round`; the address of the first word that differs.
    fn check(&self, round: u64) -> Option<u64> {
        let quarter = self.pages / VERIFY_PAGES;
        let offset = round.wrapping_mul(97) % quarter;
        for k in 0..VERIFY_PAGES {
            let page = self.start + (k * quarter + offset) * PAGE;
            let last = if self.fill { page + PAGE - 8 } else { page };
            for word in [page, last] {
                // SAFETY: inside the touched range.
                if unsafe { read_volatile(word as *const u64) } != pattern(page) {
                    return Some(word);
                }
            }
        }
        None
    }
}

// ---------------------------------------------------------------------------------------------
// A line of output, assembled in a buffer so the same bytes go to the console and the disk.

struct Line {
    bytes: [u8; 96],
    len: usize,
}

impl Line {
    fn new() -> Self {
        Line {
            bytes: [0; 96],
            len: 0,
        }
    }

    fn text(&mut self, s: &str) -> &mut Self {
        for &b in s.as_bytes() {
            if self.len < self.bytes.len() {
                self.bytes[self.len] = b;
                self.len += 1;
            }
        }
        self
    }

    fn decimal(&mut self, mut value: u64) -> &mut Self {
        let mut digits = [0u8; 20];
        let mut n = digits.len();
        loop {
            n -= 1;
            digits[n] = b'0' + (value % 10) as u8;
            value /= 10;
            if value == 0 {
                break;
            }
        }
        for &b in &digits[n..] {
            if self.len < self.bytes.len() {
                self.bytes[self.len] = b;
                self.len += 1;
            }
        }
        self
    }

    fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

// ---------------------------------------------------------------------------------------------
// The disk: the first virtio-blk function on PCI bus 0, one request at a time, polled.

const TYPE_BLOCK: u16 = 2;
const SECTOR: usize = 512;
const BLK_T_OUT: u32 = 1;
const BLK_T_FLUSH: u32 = 4;
const BLK_S_OK: u8 = 0;
const BLK_F_RO: u64 = 1 << 5;
const BLK_F_FLUSH: u64 = 1 << 9;

struct Disk {
    dev: Device,
    q: Queue,
    header: u64,
    data: u64,
    status: u64,
    capacity: u64,
}

fn disk_error(reason: &str) -> u8 {
    say!("counter: disk: ", reason);
    if reason == "timeout" { TIMEOUT } else { FAILED }
}

impl Disk {
    fn open(boot: &rt::BootInfo) -> Result<Disk, u8> {
        deadline::start_clock();
        let access = pci::init(boot.rsdp);
        pci::claim_existing(access, boot.e820);
        let Some((function, device_type)) = pci::functions(access).find_map(|f| {
            vio::device_type(&f)
                .filter(|&t| t == TYPE_BLOCK)
                .map(|t| (f, t))
        }) else {
            say!("counter: disk: no virtio-blk device");
            return Err(USAGE);
        };
        let mut dev = Device::probe(function, device_type).map_err(disk_error)?;
        dev.negotiate(BLK_F_RO | BLK_F_FLUSH).map_err(disk_error)?;
        let q = dev.setup_queue(0, 16, NO_VECTOR).map_err(disk_error)?;
        let header = dma_alloc(16, 64).ok_or_else(|| disk_error("out of DMA memory"))?;
        let status = dma_alloc(1, 64).ok_or_else(|| disk_error("out of DMA memory"))?;
        let data = dma_alloc(SECTOR, 512).ok_or_else(|| disk_error("out of DMA memory"))?;
        dev.driver_ok().map_err(disk_error)?;
        if dev.features & BLK_F_RO != 0 {
            dev.fail();
            return Err(disk_error("device is read-only"));
        }
        let capacity = dev.config_u64(0);
        if capacity == 0 {
            dev.fail();
            return Err(disk_error("capacity 0"));
        }
        Ok(Disk {
            dev,
            q,
            header,
            data,
            status,
            capacity,
        })
    }

    /// One request (header, the data sector if `with_data`, status); the status byte.
    fn request(&mut self, kind: u32, sector: u64, with_data: bool) -> Result<u8, u8> {
        // SAFETY: header and status are our DMA buffers; no request is in flight.
        unsafe {
            let h = dma_slice(self.header, 16);
            h[0..4].copy_from_slice(&kind.to_le_bytes());
            h[4..8].copy_from_slice(&[0; 4]);
            h[8..16].copy_from_slice(&sector.to_le_bytes());
            dma_slice(self.status, 1)[0] = 0xff;
        }
        let header = Buffer {
            addr: self.header,
            len: 16,
            device_writes: false,
        };
        let status = Buffer {
            addr: self.status,
            len: 1,
            device_writes: true,
        };
        if with_data {
            let data = Buffer {
                addr: self.data,
                len: SECTOR as u32,
                device_writes: false,
            };
            self.q.submit(0, &[header, data, status]);
        } else {
            self.q.submit(0, &[header, status]);
        }
        self.q.notify();
        let mut deadline = Deadline::after_ms(REQUEST_TIMEOUT_MS);
        let id = loop {
            match self.q.poll() {
                Err(e) => return Err(disk_error(e)),
                Ok(Some((id, _))) => break id,
                Ok(None) => {}
            }
            if let Err(e) = self.dev.check() {
                return Err(disk_error(e));
            }
            if deadline.expired() {
                return Err(disk_error("timeout"));
            }
        };
        if id != 0 {
            return Err(disk_error("used element names the wrong descriptor"));
        }
        // SAFETY: the request is complete.
        Ok(unsafe { dma_slice(self.status, 1)[0] })
    }

    /// Writes `line`, zero-padded, to sector `sector`, then flushes (if the device offers it).
    fn write_line(&mut self, sector: u64, line: &[u8]) -> Result<(), u8> {
        // SAFETY: our DMA buffer; no request is in flight.
        unsafe {
            let d = dma_slice(self.data, SECTOR);
            d.fill(0);
            d[..line.len()].copy_from_slice(line);
        }
        let s = self.request(BLK_T_OUT, sector, true)?;
        if s != BLK_S_OK {
            say!("counter: write at sector ", sector, " -> status ", s);
            return Err(FAILED);
        }
        if self.dev.features & BLK_F_FLUSH != 0 {
            let s = self.request(BLK_T_FLUSH, 0, false)?;
            if s != BLK_S_OK {
                say!("counter: flush after sector ", sector, " -> status ", s);
                return Err(FAILED);
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------

fn main(boot: &rt::BootInfo) -> u8 {
    let opts = match options(boot.cmdline) {
        Ok(o) => o,
        Err(status) => return status,
    };
    say!("counter: start every=", opts.every);

    let touched = if opts.touch > 0 {
        match Touched::touch(boot.e820, opts.touch, opts.touch_fill) {
            Ok(t) => {
                say!("counter: touched ", opts.touch, " MiB");
                Some(t)
            }
            Err(status) => return status,
        }
    } else {
        None
    };

    idt::init();
    idt::set_handler(TIMER_VECTOR, timer_tick, 0);
    idt::set_handler(SPURIOUS_VECTOR, spurious, 0);
    apic::disable_pic();
    apic::enable();

    let mut disk = if opts.disk {
        match Disk::open(boot) {
            Ok(d) => Some(d),
            Err(status) => return status,
        }
    } else {
        None
    };

    apic::write(apic::reg::TIMER_DIVIDE, TIMER_DIVIDE_16);
    apic::write(
        apic::reg::LVT_TIMER,
        u32::from(TIMER_VECTOR) | 1 << 17, // periodic
    );
    apic::write(apic::reg::TIMER_INITIAL, TIMER_COUNT);
    idt::enable();

    let mut count: u64 = 0;
    let mut next = opts.every;
    let mut lines: u64 = 0;
    loop {
        count = count.wrapping_add(1);
        let ticks = TICKS.load(Ordering::Relaxed);
        if ticks < next {
            continue;
        }
        // The next line once `ticks` reaches the following multiple of `every` (one line per
        // crossing, even if ticks jumped over several).
        next = (ticks / opts.every + 1) * opts.every;
        if opts.verify {
            if let Some(addr) = touched.as_ref().and_then(|t| t.check(lines)) {
                say!("counter: memory mismatch at ", Hex(addr));
                return FAILED;
            }
        }
        let mut line = Line::new();
        line.text("counter: count=")
            .decimal(count)
            .text(" ticks=")
            .decimal(ticks);
        write_bytes(line.as_bytes());
        write_bytes(b"\n");
        if let Some(disk) = disk.as_mut() {
            let sector = lines % disk.capacity;
            if let Err(status) = disk.write_line(sector, line.as_bytes()) {
                return status;
            }
            say!("counter: wrote sector ", sector);
        }
        lines += 1;
        if opts.limit != 0 && lines >= opts.limit {
            idt::disable();
            apic::write(apic::reg::LVT_TIMER, 1 << 16);
            return 0;
        }
    }
}
