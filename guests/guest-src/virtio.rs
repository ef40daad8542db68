//! `virtio`: a minimal virtio-pci (modern, virtio 1.x) driver that exercises a VMM's virtio
//! devices. It finds PCI configuration space (ECAM from the ACPI MCFG, else ports 0xCF8/0xCFC),
//! lists the virtio functions on bus 0, then runs the tests named by `test=` (comma-separated:
//! `blk`, `blk-read`, `net`, `net-echo`, `rng`, `vsock`) on the first device of each test's
//! type, printing results on COM1. Exits 0 if every test passed; see guests/README.md for the
//! command line and every output line.

#![no_std]
#![no_main]

use core::sync::atomic::{AtomicU32, Ordering};

use rt::deadline::{self, Deadline};
use rt::pci::{self, Access, Function};
use rt::serial::{Hex, Show, write_bytes};
use rt::virtio::{self as vio, Buffer, Device, NO_VECTOR, Queue, dma_alloc, dma_slice};
use rt::{apic, idt, say};

rt::entry!(main);

/// Exit statuses.
const FAILED: u8 = 1;
const TIMEOUT: u8 = 2;
const USAGE: u8 = 4;

const TYPE_NET: u16 = 1;
const TYPE_BLOCK: u16 = 2;
const TYPE_RNG: u16 = 4;
const TYPE_VSOCK: u16 = 19;

const MSIX_VECTOR: u8 = 0x40;
const WAKE_VECTOR: u8 = 0x41;
const SPURIOUS_VECTOR: u8 = 0xff;

// ---------------------------------------------------------------------------------------------
// Output helpers (no core::fmt in guests).

/// `00:SS.F`, hex.
struct Bdf(Function);
impl Show for Bdf {
    fn show(&self) {
        let mut s = *b"00:00.0";
        s[3] = hex_digit(self.0.slot >> 4);
        s[4] = hex_digit(self.0.slot & 0xf);
        s[6] = b'0' + (self.0.func & 7);
        write_bytes(&s);
    }
}

fn hex_digit(n: u8) -> u8 {
    if n < 10 { b'0' + n } else { b'a' + n - 10 }
}

/// A u64 as exactly 16 lowercase hex digits, no prefix.
struct Hex16(u64);
impl Show for Hex16 {
    fn show(&self) {
        let mut s = [0u8; 16];
        for (i, c) in s.iter_mut().enumerate() {
            *c = hex_digit(((self.0 >> (60 - 4 * i)) & 0xf) as u8);
        }
        write_bytes(&s);
    }
}

/// A MAC address, `xx:xx:xx:xx:xx:xx`.
struct Mac([u8; 6]);
impl Show for Mac {
    fn show(&self) {
        let mut s = [b':'; 17];
        for (i, b) in self.0.iter().enumerate() {
            s[3 * i] = hex_digit(b >> 4);
            s[3 * i + 1] = hex_digit(b & 0xf);
        }
        write_bytes(&s);
    }
}

/// Bytes as text: up to the first NUL, at most 64 bytes, anything outside 0x20..=0x7e as `?`.
struct Text<'a>(&'a [u8]);
impl Show for Text<'_> {
    fn show(&self) {
        let mut s = [0u8; 64];
        let mut n = 0;
        for &b in self.0.iter().take(64) {
            if b == 0 {
                break;
            }
            s[n] = if (0x20..=0x7e).contains(&b) { b } else { b'?' };
            n += 1;
        }
        write_bytes(&s[..n]);
    }
}

// ---------------------------------------------------------------------------------------------
// Command line.

struct Options {
    tests: &'static [u8],
    seed: u64,
    sector: u64,
    count: Option<u64>,
    nettag: u64,
    timeout_ms: u64,
    port: u32,
    msix: bool,
    /// `pci=`: auto (ECAM if the firmware tables name one, else ports), ecam or ports.
    pci: &'static [u8],
}

fn word(cmdline: &'static [u8], key: &[u8]) -> Option<&'static [u8]> {
    cmdline
        .split(|&b| b == b' ')
        .find_map(|w| w.strip_prefix(key))
}

fn number(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 19 {
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

/// The number after `key`, the default if absent; Err (after a message) if malformed.
fn numeric(cmdline: &'static [u8], key: &'static str, default: u64) -> Result<u64, u8> {
    match word(cmdline, key.as_bytes()) {
        None => Ok(default),
        Some(w) => number(w).ok_or_else(|| {
            say!("virtio: bad value for ", key, " ", Text(w));
            USAGE
        }),
    }
}

fn options(cmdline: &'static [u8]) -> Result<Options, u8> {
    let irq = word(cmdline, b"irq=").unwrap_or(b"poll");
    let msix = match irq {
        b"poll" => false,
        b"msix" => true,
        other => {
            say!("virtio: bad value for irq= ", Text(other));
            return Err(USAGE);
        }
    };
    let pci = word(cmdline, b"pci=").unwrap_or(b"auto");
    if !matches!(pci, b"auto" | b"ecam" | b"ports") {
        say!("virtio: bad value for pci= ", Text(pci));
        return Err(USAGE);
    }
    let count = match word(cmdline, b"count=") {
        Some(_) => Some(numeric(cmdline, "count=", 0)?),
        None => None,
    };
    Ok(Options {
        tests: word(cmdline, b"test=").unwrap_or(b""),
        seed: numeric(cmdline, "seed=", 1)?,
        sector: numeric(cmdline, "sector=", 0)?,
        count,
        nettag: numeric(cmdline, "nettag=", 0)?,
        timeout_ms: numeric(cmdline, "timeout=", 10)?.clamp(1, 3600) * 1000,
        port: numeric(cmdline, "port=", 1234)?.min(u64::from(u32::MAX)) as u32,
        msix,
        pci,
    })
}

// ---------------------------------------------------------------------------------------------
// Devices and waiting.

const MAX_DEVICES: usize = 32;

/// One virtio function found on bus 0.
#[derive(Clone, Copy)]
struct Found {
    function: Function,
    device_type: u16,
}

static MSIX_COUNT: AtomicU32 = AtomicU32::new(0);
static INTERRUPTS_READY: AtomicU32 = AtomicU32::new(0);

fn msix_interrupt(_: &mut idt::Frame) {
    MSIX_COUNT.fetch_add(1, Ordering::SeqCst);
    apic::eoi();
}

fn wake_interrupt(_: &mut idt::Frame) {
    apic::eoi();
}

fn spurious(_: &mut idt::Frame) {}

/// Sets up the IDT and the local APIC once, for `irq=msix`.
fn init_interrupts() {
    if INTERRUPTS_READY.swap(1, Ordering::SeqCst) != 0 {
        return;
    }
    idt::init();
    idt::set_handler(MSIX_VECTOR, msix_interrupt, 0);
    idt::set_handler(WAKE_VECTOR, wake_interrupt, 0);
    idt::set_handler(SPURIOUS_VECTOR, spurious, 0);
    apic::disable_pic();
    apic::enable();
}

/// An initialised device under test, with how to report on it.
struct Ctx {
    dev: Device,
    timeout_ms: u64,
    msix: bool,
}

impl Ctx {
    /// Prints `virtio: device T at 00:SS.F failed: REASON` (or the timeout line) and gives the
    /// exit status.
    fn fail(&self, reason: &str) -> u8 {
        if reason == "timeout" {
            return self.timeout("the device");
        }
        say!(
            "virtio: device ",
            self.dev.device_type,
            " at ",
            Bdf(self.dev.function),
            " failed: ",
            reason
        );
        self.dev.fail();
        FAILED
    }

    fn timeout(&self, what: &str) -> u8 {
        say!(
            "virtio: timeout waiting for ",
            what,
            " (device ",
            self.dev.device_type,
            " at ",
            Bdf(self.dev.function),
            ")"
        );
        self.dev.fail();
        TIMEOUT
    }

    fn deadline(&self) -> Deadline {
        Deadline::after_ms(self.timeout_ms)
    }

    /// Waits for the next used element of `q` until `deadline`. With `irq=msix` the CPU sleeps
    /// in `hlt` between polls (the LAPIC timer wakes it every millisecond) and the element only
    /// counts once an MSI-X interrupt arrived after it could have been used: with
    /// `notified = Some(count)` (the MSI-X count just before the caller notified the queue, so
    /// the device used the chain after that) always; with `None` (buffers posted earlier, like
    /// receive buffers) only if the element appeared while we waited.
    fn wait_on(
        &self,
        q: &mut Queue,
        deadline: &mut Deadline,
        what: &str,
        notified: Option<u32>,
    ) -> Result<(u16, u32), u8> {
        let mut irqs_before = notified.unwrap_or_else(|| MSIX_COUNT.load(Ordering::SeqCst));
        let mut first = true;
        loop {
            match q.poll() {
                Err(e) => return Err(self.fail(e)),
                Ok(Some(used)) => {
                    if !self.msix || (first && notified.is_none()) {
                        return Ok(used);
                    }
                    // The device interrupts after it updated the ring: wait for that interrupt.
                    loop {
                        if MSIX_COUNT.load(Ordering::SeqCst) != irqs_before {
                            return Ok(used);
                        }
                        if deadline.expired() {
                            return Err(self.timeout("the MSI-X interrupt"));
                        }
                        idt::wait_for_interrupt();
                    }
                }
                Ok(None) => {}
            }
            if let Err(e) = self.dev.check() {
                return Err(self.fail(e));
            }
            if deadline.expired() {
                return Err(self.timeout(what));
            }
            if first && notified.is_none() {
                // From here on an element appears while we wait. Interrupts are only taken in
                // `wait_for_interrupt` (IF is clear otherwise), so its interrupt cannot have
                // been counted yet.
                irqs_before = MSIX_COUNT.load(Ordering::SeqCst);
            }
            if self.msix {
                idt::wait_for_interrupt();
            }
            first = false;
        }
    }

    /// Notifies `q` and waits (with a fresh deadline) for the chain to come back.
    fn kick_and_wait(&self, q: &mut Queue, what: &str) -> Result<(u16, u32), u8> {
        let before = MSIX_COUNT.load(Ordering::SeqCst);
        q.notify();
        let mut deadline = self.deadline();
        self.wait_on(q, &mut deadline, what, Some(before))
    }

    fn alloc(&self, len: usize) -> Result<u64, u8> {
        dma_alloc(len, 64).ok_or_else(|| self.fail("out of DMA memory"))
    }
}

/// Finds the first device of `device_type`, probes it and negotiates `wanted` features: the
/// device is then between FEATURES_OK and queue setup.
fn open(
    devices: &[Found],
    device_type: u16,
    test: &[u8],
    wanted: u64,
    opts: &Options,
) -> Result<Ctx, u8> {
    let Some(found) = devices.iter().find(|d| d.device_type == device_type) else {
        say!(
            "virtio: no device of type ",
            device_type,
            " for test ",
            Text(test)
        );
        return Err(USAGE);
    };
    let report = |reason: &str| {
        say!(
            "virtio: device ",
            device_type,
            " at ",
            Bdf(found.function),
            " failed: ",
            reason
        );
        FAILED
    };
    let mut dev = Device::probe(found.function, device_type).map_err(report)?;
    if let Err(e) = dev.negotiate(wanted) {
        return Err(report(e));
    }
    let mut msix = false;
    if opts.msix {
        if dev.msix.is_none() {
            dev.fail();
            return Err(report("irq=msix but the device has no MSI-X capability"));
        }
        init_interrupts();
        MSIX_COUNT.store(0, Ordering::SeqCst);
        if let Err(e) = dev.enable_msix(0, MSIX_VECTOR, apic::id()) {
            dev.fail();
            return Err(report(e));
        }
        dev.set_config_vector(NO_VECTOR);
        msix = true;
    }
    Ok(Ctx {
        dev,
        timeout_ms: opts.timeout_ms,
        msix,
    })
}

impl Ctx {
    /// Sets up queue `index` (vector 0 with `irq=msix`).
    fn queue(&self, index: u16, size: u16) -> Result<Queue, u8> {
        let vector = if self.msix { 0 } else { NO_VECTOR };
        self.dev
            .setup_queue(index, size, vector)
            .map_err(|e| self.fail(e))
    }

    fn driver_ok(&self) -> Result<(), u8> {
        self.dev.driver_ok().map_err(|e| self.fail(e))?;
        if self.msix {
            // The LAPIC timer wakes `hlt` every ~1 ms so deadlines are checked.
            apic::write(apic::reg::TIMER_DIVIDE, 0x3);
            apic::write(apic::reg::LVT_TIMER, u32::from(WAKE_VECTOR) | 1 << 17);
            apic::write(apic::reg::TIMER_INITIAL, 62_500);
        }
        Ok(())
    }

    /// Resets the device and forgets its DMA memory.
    fn close(self) {
        let _ = self.dev.reset();
        if self.msix {
            apic::write(apic::reg::LVT_TIMER, 1 << 16);
            self.dev.disable_msix();
            say!(
                "virtio: msix interrupts ",
                MSIX_COUNT.load(Ordering::SeqCst)
            );
        }
        vio::dma_reset();
    }
}

// ---------------------------------------------------------------------------------------------
// Block.

const SECTOR: u64 = 512;
const BLK_T_IN: u32 = 0;
const BLK_T_OUT: u32 = 1;
const BLK_T_FLUSH: u32 = 4;
const BLK_T_GET_ID: u32 = 8;
const BLK_S_OK: u8 = 0;
const BLK_S_IOERR: u8 = 1;
const BLK_F_RO: u64 = 1 << 5;
const BLK_F_FLUSH: u64 = 1 << 9;
/// Sectors per request of `blk-read` (its buffer is 32 KiB).
const READ_CHUNK: u64 = 64;
/// Sectors written and verified by `blk`.
const PATTERN_SECTORS: u64 = 8;

struct Blk {
    ctx: Ctx,
    q: Queue,
    header: u64,
    status: u64,
    capacity: u64,
}

impl Blk {
    fn open(devices: &[Found], test: &[u8], opts: &Options) -> Result<Blk, u8> {
        let ctx = open(devices, TYPE_BLOCK, test, BLK_F_RO | BLK_F_FLUSH, opts)?;
        let q = ctx.queue(0, 16)?;
        let header = ctx.alloc(16)?;
        let status = ctx.alloc(1)?;
        ctx.driver_ok()?;
        let capacity = ctx.dev.config_u64(0);
        say!("blk: capacity ", capacity, " sectors");
        Ok(Blk {
            ctx,
            q,
            header,
            status,
            capacity,
        })
    }

    /// One request: header, optional data buffer (`len` bytes at `data`), status. Returns the
    /// status byte the device wrote.
    fn request(&mut self, kind: u32, sector: u64, data: u64, len: u32) -> Result<u8, u8> {
        // SAFETY: header and status are this device's DMA buffers; no request is in flight.
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
        let device_writes = kind != BLK_T_OUT;
        if len == 0 {
            self.q.submit(0, &[header, status]);
        } else {
            let data = Buffer {
                addr: data,
                len,
                device_writes,
            };
            self.q.submit(0, &[header, data, status]);
        }
        let (id, _) = self.ctx.kick_and_wait(&mut self.q, "a block request")?;
        if id != 0 {
            return Err(self.ctx.fail("used element names the wrong descriptor"));
        }
        // SAFETY: the request is complete.
        Ok(unsafe { dma_slice(self.status, 1)[0] })
    }

    /// A request that must succeed.
    fn request_ok(
        &mut self,
        kind: u32,
        sector: u64,
        data: u64,
        len: u32,
        what: &str,
    ) -> Result<(), u8> {
        let s = self.request(kind, sector, data, len)?;
        if s != BLK_S_OK {
            say!("blk: ", what, " at sector ", sector, " -> status ", s);
            return Err(FAILED);
        }
        Ok(())
    }

    fn close(self) {
        self.ctx.close();
    }
}

/// Byte `i` of sector `s` in the `blk` pattern.
fn pattern_start(sector: u64, seed: u64) -> u8 {
    (sector.wrapping_mul(31).wrapping_add(seed)) as u8
}

fn fill_pattern(buffer: &mut [u8], first_sector: u64, seed: u64) {
    for (k, chunk) in buffer.chunks_mut(SECTOR as usize).enumerate() {
        let mut b = pattern_start(first_sector + k as u64, seed);
        for byte in chunk {
            *byte = b;
            b = b.wrapping_add(7);
        }
    }
}

fn test_blk(devices: &[Found], opts: &Options) -> Result<(), u8> {
    let mut blk = Blk::open(devices, b"blk", opts)?;
    let bytes = (PATTERN_SECTORS * SECTOR) as usize;
    let wbuf = blk.ctx.alloc(bytes)?;
    let rbuf = blk.ctx.alloc(bytes)?;
    let start = opts.sector;
    if blk.ctx.dev.features & BLK_F_RO != 0 {
        say!("blk: read-only");
        // SAFETY: our DMA buffer, no request in flight.
        fill_pattern(
            unsafe { dma_slice(wbuf, SECTOR as usize) },
            start,
            opts.seed,
        );
        let s = blk.request(BLK_T_OUT, start, wbuf, SECTOR as u32)?;
        if s != BLK_S_IOERR {
            say!(
                "blk: write on read-only -> status ",
                s,
                ", expected 1 (IOERR)"
            );
            return Err(FAILED);
        }
        say!("blk: write on read-only -> IOERR");
    } else {
        if start
            .checked_add(PATTERN_SECTORS)
            .is_none_or(|end| end > blk.capacity)
        {
            say!("blk: disk too small for 8 sectors at ", start);
            return Err(FAILED);
        }
        // SAFETY: our DMA buffers, no request in flight.
        fill_pattern(unsafe { dma_slice(wbuf, bytes) }, start, opts.seed);
        blk.request_ok(BLK_T_OUT, start, wbuf, bytes as u32, "write")?;
        blk.request_ok(BLK_T_IN, start, rbuf, bytes as u32, "read")?;
        // SAFETY: both requests are complete.
        let (w, r) = unsafe { (dma_slice(wbuf, bytes), dma_slice(rbuf, bytes)) };
        if w != r {
            let i = w
                .iter()
                .zip(r.iter())
                .position(|(a, b)| a != b)
                .unwrap_or(0);
            say!(
                "blk: mismatch at sector ",
                start + (i as u64) / SECTOR,
                " byte ",
                i as u64 % SECTOR,
                ": read ",
                Hex(u64::from(r[i])),
                ", expected ",
                Hex(u64::from(w[i]))
            );
            return Err(FAILED);
        }
        say!("blk: wrote and verified 8 sectors at ", start);
        let s = blk.request(
            BLK_T_OUT,
            blk.capacity.saturating_sub(1),
            wbuf,
            2 * SECTOR as u32,
        )?;
        if s != BLK_S_IOERR {
            say!("blk: past-end write -> status ", s, ", expected 1 (IOERR)");
            return Err(FAILED);
        }
        say!("blk: past-end write -> IOERR");
    }
    if blk.ctx.dev.features & BLK_F_FLUSH != 0 {
        blk.request_ok(BLK_T_FLUSH, 0, 0, 0, "flush")?;
        say!("blk: flush ok");
    } else {
        say!("blk: flush not offered");
    }
    // SAFETY: no request in flight; the id is at most 20 bytes and need not end in NUL.
    unsafe { dma_slice(rbuf, 21).fill(0) };
    match blk.request(BLK_T_GET_ID, 0, rbuf, 20)? {
        BLK_S_OK => {
            // SAFETY: the request is complete.
            say!("blk: id ", Text(unsafe { dma_slice(rbuf, 20) }));
        }
        s => say!("blk: id unsupported (status ", s, ")"),
    }
    blk.close();
    Ok(())
}

/// FNV-1a, 64-bit.
fn fnv1a64(mut hash: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

fn test_blk_read(devices: &[Found], opts: &Options) -> Result<(), u8> {
    let mut blk = Blk::open(devices, b"blk-read", opts)?;
    let count = opts.count.unwrap_or(8);
    let buf = blk.ctx.alloc((READ_CHUNK * SECTOR) as usize)?;
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    let mut done = 0;
    while done < count {
        let n = (count - done).min(READ_CHUNK);
        let sector = opts.sector + done;
        blk.request_ok(BLK_T_IN, sector, buf, (n * SECTOR) as u32, "read")?;
        // SAFETY: the request is complete.
        hash = fnv1a64(hash, unsafe { dma_slice(buf, (n * SECTOR) as usize) });
        done += n;
    }
    say!(
        "blk: read ",
        count,
        " sectors at ",
        opts.sector,
        " fnv1a64=",
        Hex16(hash)
    );
    blk.close();
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Network.

const NET_F_MAC: u64 = 1 << 5;
const NET_HDR: usize = 12;
const NET_BUF: usize = 2048;
const NET_RX_BUFFERS: u16 = 8;
const ETHERTYPE: [u8; 2] = [0x88, 0xb5];
const MIN_FRAME: usize = 60;

struct Net {
    ctx: Ctx,
    rx: Queue,
    tx: Queue,
    rx_bufs: u64,
    tx_buf: u64,
    mac: [u8; 6],
}

impl Net {
    fn open(devices: &[Found], test: &[u8], opts: &Options) -> Result<Net, u8> {
        let ctx = open(devices, TYPE_NET, test, NET_F_MAC, opts)?;
        let mut rx = ctx.queue(0, 16)?;
        let tx = ctx.queue(1, 16)?;
        let n = NET_RX_BUFFERS.min(rx.size);
        let rx_bufs = ctx.alloc(NET_BUF * usize::from(n))?;
        let tx_buf = ctx.alloc(NET_BUF)?;
        let mut mac = [0x02, 0, 0, 0, 0, 0x01];
        let has_mac = ctx.dev.features & NET_F_MAC != 0;
        if has_mac {
            ctx.dev.read_config(0, &mut mac);
        }
        ctx.driver_ok()?;
        if has_mac {
            say!("net: mac ", Mac(mac));
        } else {
            say!("net: mac ", Mac(mac), " (no VIRTIO_NET_F_MAC)");
        }
        for i in 0..n {
            rx.set_desc(i, Net::rx_buffer(rx_bufs, i), None);
            rx.push(i);
        }
        rx.notify();
        Ok(Net {
            ctx,
            rx,
            tx,
            rx_bufs,
            tx_buf,
            mac,
        })
    }

    fn rx_buffer(base: u64, i: u16) -> Buffer {
        Buffer {
            addr: base + (NET_BUF * usize::from(i)) as u64,
            len: NET_BUF as u32,
            device_writes: true,
        }
    }

    /// Sends the frame in the transmit buffer (after the 12-byte header), `len` bytes.
    fn send(&mut self, len: usize) -> Result<(), u8> {
        // SAFETY: the transmit buffer is ours; no transmission is in flight.
        unsafe { dma_slice(self.tx_buf, NET_HDR).fill(0) };
        self.tx.submit(
            0,
            &[Buffer {
                addr: self.tx_buf,
                len: (NET_HDR + len) as u32,
                device_writes: false,
            }],
        );
        self.ctx.kick_and_wait(&mut self.tx, "the transmit queue")?;
        Ok(())
    }

    /// Waits for a frame of our ethertype; returns its receive buffer index and frame length
    /// (the buffer is not yet given back). Other frames are recycled.
    fn receive(&mut self, deadline: &mut Deadline) -> Result<(u16, usize), u8> {
        loop {
            let (id, len) = self
                .ctx
                .wait_on(&mut self.rx, deadline, "a received frame", None)?;
            let len = len as usize;
            if len >= NET_HDR + 14 && len <= NET_BUF {
                // SAFETY: the device returned this buffer.
                let frame =
                    unsafe { dma_slice(self.rx_bufs + (NET_BUF * usize::from(id)) as u64, len) };
                if frame[NET_HDR + 12..NET_HDR + 14] == ETHERTYPE {
                    return Ok((id, len - NET_HDR));
                }
            }
            self.recycle(id);
        }
    }

    fn frame(&self, id: u16, len: usize) -> &'static mut [u8] {
        // SAFETY: the device returned buffer `id` and we have not given it back yet.
        unsafe {
            dma_slice(
                self.rx_bufs + (NET_BUF * usize::from(id)) as u64 + NET_HDR as u64,
                len,
            )
        }
    }

    fn recycle(&mut self, id: u16) {
        self.rx.set_desc(id, Net::rx_buffer(self.rx_bufs, id), None);
        self.rx.push(id);
        self.rx.notify();
    }

    fn close(self) {
        self.ctx.close();
    }
}

fn decimal_into(out: &mut [u8], mut n: u64) -> usize {
    let mut digits = [0u8; 20];
    let mut k = digits.len();
    loop {
        k -= 1;
        digits[k] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let len = (digits.len() - k).min(out.len());
    out[..len].copy_from_slice(&digits[k..k + len]);
    len
}

fn test_net(devices: &[Found], opts: &Options) -> Result<(), u8> {
    let mut net = Net::open(devices, b"net", opts)?;
    // SAFETY: the transmit buffer is ours; nothing in flight.
    let frame = unsafe { dma_slice(net.tx_buf + NET_HDR as u64, NET_BUF - NET_HDR) };
    frame[..MIN_FRAME].fill(0);
    frame[0..6].fill(0xff);
    frame[6..12].copy_from_slice(&net.mac);
    frame[12..14].copy_from_slice(&ETHERTYPE);
    let text = b"popek-guest-frame ";
    frame[14..14 + text.len()].copy_from_slice(text);
    let n = decimal_into(&mut frame[14 + text.len()..], opts.nettag);
    let len = (14 + text.len() + n).max(MIN_FRAME);
    net.send(len)?;
    say!("net: sent frame");
    let mut deadline = net.ctx.deadline();
    let (id, len) = net.receive(&mut deadline)?;
    say!("net: received ", Text(&net.frame(id, len)[14..]));
    net.recycle(id);
    net.close();
    Ok(())
}

fn test_net_echo(devices: &[Found], opts: &Options) -> Result<(), u8> {
    let mut net = Net::open(devices, b"net-echo", opts)?;
    let count = opts.count.unwrap_or(1);
    for _ in 0..count {
        let mut deadline = net.ctx.deadline();
        let (id, len) = net.receive(&mut deadline)?;
        let received = net.frame(id, len);
        // SAFETY: the transmit buffer is ours; nothing in flight.
        let reply = unsafe { dma_slice(net.tx_buf + NET_HDR as u64, len) };
        reply.copy_from_slice(received);
        reply[0..6].copy_from_slice(&received[6..12]);
        reply[6..12].copy_from_slice(&net.mac);
        net.recycle(id);
        net.send(len)?;
    }
    say!("net: echoed ", count, " frames");
    net.close();
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Entropy.

fn test_rng(devices: &[Found], opts: &Options) -> Result<(), u8> {
    let ctx = open(devices, TYPE_RNG, b"rng", 0, opts)?;
    let mut q = ctx.queue(0, 16)?;
    let bufs = [ctx.alloc(64)?, ctx.alloc(64)?];
    ctx.driver_ok()?;
    for &b in &bufs {
        q.submit(
            0,
            &[Buffer {
                addr: b,
                len: 64,
                device_writes: true,
            }],
        );
        let (_, len) = ctx.kick_and_wait(&mut q, "entropy")?;
        if len != 64 {
            say!("rng: got ", len, " bytes, expected 64");
            return Err(FAILED);
        }
    }
    // SAFETY: both requests are complete.
    let (a, b) = unsafe { (dma_slice(bufs[0], 64), dma_slice(bufs[1], 64)) };
    if a == b || a.iter().all(|&x| x == 0) || b.iter().all(|&x| x == 0) {
        say!("rng: buffers identical or all zero");
        return Err(FAILED);
    }
    say!("rng: got 64 bytes, distinct");
    ctx.close();
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Socket.

const VSOCK_HDR: usize = 44;
const VSOCK_BUF: usize = 4096;
const VSOCK_RX_BUFFERS: u16 = 8;
const VSOCK_EVENT_BUFFERS: u16 = 4;
const VSOCK_F_STREAM: u64 = 1;
const HOST_CID: u64 = 2;
const GUEST_PORT: u32 = 49152;
const BUF_ALLOC: u32 = 64 * 1024;

const OP_REQUEST: u16 = 1;
const OP_RESPONSE: u16 = 2;
const OP_RST: u16 = 3;
const OP_SHUTDOWN: u16 = 4;
const OP_RW: u16 = 5;
const OP_CREDIT_UPDATE: u16 = 6;
const OP_CREDIT_REQUEST: u16 = 7;
const TYPE_STREAM: u16 = 1;

/// The fields of a received header we use.
#[derive(Clone, Copy)]
struct Packet {
    op: u16,
    len: u32,
    flags: u32,
    /// Receive buffer index (still held).
    id: u16,
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn le64(b: &[u8], at: usize) -> u64 {
    u64::from(le32(b, at)) | u64::from(le32(b, at + 4)) << 32
}

struct Vsock {
    ctx: Ctx,
    rx: Queue,
    tx: Queue,
    _event: Queue,
    rx_bufs: u64,
    tx_buf: u64,
    cid: u64,
    port: u32,
    /// Payload bytes we consumed (our fwd_cnt).
    fwd_cnt: u32,
    /// Payload bytes we sent.
    tx_cnt: u32,
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
}

impl Vsock {
    fn open(devices: &[Found], opts: &Options) -> Result<Vsock, u8> {
        let ctx = open(devices, TYPE_VSOCK, b"vsock", VSOCK_F_STREAM, opts)?;
        let mut rx = ctx.queue(0, 16)?;
        let tx = ctx.queue(1, 16)?;
        let mut event = ctx.queue(2, 16)?;
        let n = VSOCK_RX_BUFFERS.min(rx.size);
        let rx_bufs = ctx.alloc(VSOCK_BUF * usize::from(n))?;
        let tx_buf = ctx.alloc(VSOCK_BUF)?;
        let ne = VSOCK_EVENT_BUFFERS.min(event.size);
        let event_bufs = ctx.alloc(8 * usize::from(ne))?;
        let cid = ctx.dev.config_u64(0);
        ctx.driver_ok()?;
        say!("vsock: guest cid ", cid);
        for i in 0..n {
            rx.set_desc(i, Vsock::rx_buffer(rx_bufs, i), None);
            rx.push(i);
        }
        rx.notify();
        for i in 0..ne {
            let b = Buffer {
                addr: event_bufs + 8 * u64::from(i),
                len: 8,
                device_writes: true,
            };
            event.set_desc(i, b, None);
            event.push(i);
        }
        event.notify();
        Ok(Vsock {
            ctx,
            rx,
            tx,
            _event: event,
            rx_bufs,
            tx_buf,
            cid,
            port: opts.port,
            fwd_cnt: 0,
            tx_cnt: 0,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
        })
    }

    fn rx_buffer(base: u64, i: u16) -> Buffer {
        Buffer {
            addr: base + (VSOCK_BUF * usize::from(i)) as u64,
            len: VSOCK_BUF as u32,
            device_writes: true,
        }
    }

    fn rx_bytes(&self, id: u16, len: usize) -> &'static mut [u8] {
        // SAFETY: the device returned buffer `id`; we hold it until `recycle`.
        unsafe { dma_slice(self.rx_bufs + (VSOCK_BUF * usize::from(id)) as u64, len) }
    }

    fn recycle(&mut self, id: u16) {
        self.rx
            .set_desc(id, Vsock::rx_buffer(self.rx_bufs, id), None);
        self.rx.push(id);
        self.rx.notify();
    }

    /// Sends a packet of our connection with `op`, `flags` and `payload`.
    fn send(&mut self, op: u16, flags: u32, payload: &[u8]) -> Result<(), u8> {
        // SAFETY: the transmit buffer is ours; nothing in flight.
        let b = unsafe { dma_slice(self.tx_buf, VSOCK_HDR + payload.len()) };
        b[0..8].copy_from_slice(&self.cid.to_le_bytes());
        b[8..16].copy_from_slice(&HOST_CID.to_le_bytes());
        b[16..20].copy_from_slice(&GUEST_PORT.to_le_bytes());
        b[20..24].copy_from_slice(&self.port.to_le_bytes());
        b[24..28].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        b[28..30].copy_from_slice(&TYPE_STREAM.to_le_bytes());
        b[30..32].copy_from_slice(&op.to_le_bytes());
        b[32..36].copy_from_slice(&flags.to_le_bytes());
        b[36..40].copy_from_slice(&BUF_ALLOC.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b[VSOCK_HDR..].copy_from_slice(payload);
        self.tx.submit(
            0,
            &[Buffer {
                addr: self.tx_buf,
                len: (VSOCK_HDR + payload.len()) as u32,
                device_writes: false,
            }],
        );
        self.ctx.kick_and_wait(&mut self.tx, "the transmit queue")?;
        self.tx_cnt = self.tx_cnt.wrapping_add(payload.len() as u32);
        Ok(())
    }

    /// The next packet for our connection (others are dropped; credit requests are answered and
    /// credit updates absorbed here too, but still returned). The caller recycles `id`.
    fn receive(&mut self, deadline: &mut Deadline) -> Result<Packet, u8> {
        loop {
            let (id, len) = self
                .ctx
                .wait_on(&mut self.rx, deadline, "a vsock packet", None)?;
            let len = len as usize;
            if !(VSOCK_HDR..=VSOCK_BUF).contains(&len) {
                self.recycle(id);
                continue;
            }
            let h = self.rx_bytes(id, len);
            let ours = le64(h, 0) == HOST_CID
                && le64(h, 8) == self.cid
                && le32(h, 16) == self.port
                && le32(h, 20) == GUEST_PORT
                && le16(h, 28) == TYPE_STREAM;
            let payload_len = le32(h, 24);
            if !ours || payload_len as usize > len - VSOCK_HDR {
                self.recycle(id);
                continue;
            }
            self.peer_buf_alloc = le32(h, 36);
            self.peer_fwd_cnt = le32(h, 40);
            let packet = Packet {
                op: le16(h, 30),
                len: payload_len,
                flags: le32(h, 32),
                id,
            };
            if packet.op == OP_CREDIT_REQUEST {
                self.recycle(id);
                self.send(OP_CREDIT_UPDATE, 0, &[])?;
                continue;
            }
            return Ok(packet);
        }
    }

    fn credit(&self) -> u32 {
        self.peer_buf_alloc
            .wrapping_sub(self.tx_cnt.wrapping_sub(self.peer_fwd_cnt))
    }

    fn close(self) {
        self.ctx.close();
    }
}

fn test_vsock(devices: &[Found], opts: &Options) -> Result<(), u8> {
    let mut v = Vsock::open(devices, opts)?;
    v.send(OP_REQUEST, 0, &[])?;
    let mut deadline = v.ctx.deadline();
    let p = loop {
        let p = v.receive(&mut deadline)?;
        v.recycle(p.id);
        if p.op != OP_CREDIT_UPDATE {
            break p;
        }
    };
    match p.op {
        OP_RESPONSE => {}
        OP_RST => {
            say!("vsock: connection to port ", v.port, " refused (RST)");
            return Err(FAILED);
        }
        op => {
            say!("vsock: unexpected op ", op, " instead of RESPONSE");
            return Err(FAILED);
        }
    }
    say!("vsock: connected to cid 2 port ", v.port);

    let message = b"hello from guest";
    let mut deadline = v.ctx.deadline();
    while v.credit() < message.len() as u32 {
        v.send(OP_CREDIT_REQUEST, 0, &[])?;
        let p = v.receive(&mut deadline)?;
        v.recycle(p.id);
        if p.op == OP_RST || p.op == OP_SHUTDOWN {
            say!(
                "vsock: peer closed (op ",
                p.op,
                ") while we waited for credit"
            );
            return Err(FAILED);
        }
    }
    v.send(OP_RW, 0, message)?;

    let mut deadline = v.ctx.deadline();
    loop {
        let p = v.receive(&mut deadline)?;
        match p.op {
            OP_RW => {
                let data = &v.rx_bytes(p.id, VSOCK_HDR + p.len as usize)[VSOCK_HDR..];
                say!("vsock: received ", Text(data));
                v.fwd_cnt = v.fwd_cnt.wrapping_add(p.len);
                v.recycle(p.id);
                break;
            }
            OP_CREDIT_UPDATE => v.recycle(p.id),
            op => {
                v.recycle(p.id);
                say!(
                    "vsock: unexpected op ",
                    op,
                    " (flags ",
                    p.flags,
                    ") instead of RW"
                );
                return Err(FAILED);
            }
        }
    }

    v.send(OP_SHUTDOWN, 3, &[])?;
    let mut deadline = v.ctx.deadline();
    loop {
        let p = v.receive(&mut deadline)?;
        v.recycle(p.id);
        match p.op {
            OP_RST => break,
            OP_RW => v.fwd_cnt = v.fwd_cnt.wrapping_add(p.len),
            OP_CREDIT_UPDATE | OP_SHUTDOWN => {}
            op => {
                say!("vsock: unexpected op ", op, " instead of RST");
                return Err(FAILED);
            }
        }
    }
    say!("vsock: shutdown -> RST");
    v.close();
    Ok(())
}

// ---------------------------------------------------------------------------------------------

fn main(boot: &rt::BootInfo) -> u8 {
    let opts = match options(boot.cmdline) {
        Ok(o) => o,
        Err(status) => return status,
    };
    deadline::start_clock();
    let access = match opts.pci {
        b"ports" => Access::Ports,
        b"ecam" => match pci::init(boot.rsdp) {
            Access::Ports => {
                say!("virtio: pci=ecam but the ACPI tables name no usable ECAM");
                return USAGE;
            }
            ecam => ecam,
        },
        _ => pci::init(boot.rsdp),
    };
    match access {
        Access::Ecam(base) => say!("virtio: pci config via ecam at ", Hex(base)),
        Access::Ports => say!("virtio: pci config via ports 0xcf8/0xcfc"),
    }
    pci::claim_existing(access, boot.e820);

    let mut devices = [Found {
        function: Function {
            access,
            slot: 0,
            func: 0,
        },
        device_type: 0,
    }; MAX_DEVICES];
    let mut n = 0;
    for f in pci::functions(access) {
        if let Some(t) = vio::device_type(&f)
            && n < MAX_DEVICES
        {
            say!("virtio: ", Bdf(f), " type ", t);
            devices[n] = Found {
                function: f,
                device_type: t,
            };
            n += 1;
        }
    }
    say!("virtio: ", n as u64, " devices");
    let devices = &devices[..n];

    let mut passed = 0u64;
    for test in opts.tests.split(|&b| b == b',').filter(|t| !t.is_empty()) {
        let result = match test {
            b"blk" => test_blk(devices, &opts),
            b"blk-read" => test_blk_read(devices, &opts),
            b"net" => test_net(devices, &opts),
            b"net-echo" => test_net_echo(devices, &opts),
            b"rng" => test_rng(devices, &opts),
            b"vsock" => test_vsock(devices, &opts),
            other => {
                say!("virtio: unknown test ", Text(other));
                Err(USAGE)
            }
        };
        if let Err(status) = result {
            say!("virtio: test ", Text(test), " failed, status ", status);
            return status;
        }
        passed += 1;
    }
    say!("virtio: ", passed, " tests passed");
    0
}
