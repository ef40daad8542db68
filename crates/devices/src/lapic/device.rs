//! The register model of one local APIC.

use std::sync::Arc;

use super::timer::ApicTimer;
use super::{ApicMessage, DeliveryMode, Destination, Interrupt, LAPIC_BASE};
use crate::bus::BusDevice;
use crate::clock::{Clock, Timer};
use crate::interrupt::MsiMessage;

/// Version register: version 0x14 (integrated APIC), six LVT entries (max LVT index 5).
const VERSION: u32 = 0x14 | (5 << 16);

const REG_ID: u64 = 0x20;
const REG_VERSION: u64 = 0x30;
const REG_TPR: u64 = 0x80;
const REG_APR: u64 = 0x90;
const REG_PPR: u64 = 0xa0;
const REG_EOI: u64 = 0xb0;
const REG_RRD: u64 = 0xc0;
const REG_LDR: u64 = 0xd0;
const REG_DFR: u64 = 0xe0;
const REG_SVR: u64 = 0xf0;
const REG_ISR: u64 = 0x100;
const REG_TMR: u64 = 0x180;
const REG_IRR: u64 = 0x200;
const REG_ESR: u64 = 0x280;
const REG_ICR_LOW: u64 = 0x300;
const REG_ICR_HIGH: u64 = 0x310;
const REG_LVT_TIMER: u64 = 0x320;
const REG_LVT_ERROR: u64 = 0x370;
const REG_TIMER_INITIAL: u64 = 0x380;
const REG_TIMER_CURRENT: u64 = 0x390;
const REG_TIMER_DIVIDE: u64 = 0x3e0;

/// LVT entries in register order: timer, thermal, performance counters, LINT0, LINT1, error.
pub(super) const LVT_TIMER: usize = 0;
const LVT_LINT0: usize = 3;
const LVT_LINT1: usize = 4;
const LVT_ERROR: usize = 5;
pub(super) const LVT_COUNT: usize = 6;

const LVT_MASKED: u32 = 1 << 16;
const LVT_VECTOR: u32 = 0xff;
/// Writable bits of each LVT entry: vector, delivery mode (LINT and thermal/perf only), pin
/// polarity and trigger mode (LINT only), mask, and for the timer the periodic mode bit.
pub(super) const LVT_WRITABLE: [u32; LVT_COUNT] = [
    0x0002_00ff | LVT_MASKED,
    0x0000_07ff | LVT_MASKED,
    0x0000_07ff | LVT_MASKED,
    0x0000_a7ff | LVT_MASKED,
    0x0000_a7ff | LVT_MASKED,
    0x0000_00ff | LVT_MASKED,
];
pub(super) const TIMER_PERIODIC: u32 = 1 << 17;
const LVT_MODE_EXTINT: u32 = 7 << 8;
const LVT_MODE_NMI: u32 = 4 << 8;

const SVR_ENABLE: u32 = 1 << 8;
/// Writable SVR bits: vector, software enable, focus processor checking.
pub(super) const SVR_WRITABLE: u32 = 0x3ff;

/// Writable ICR low bits: vector, delivery mode, destination mode, level, trigger, shorthand.
pub(super) const ICR_WRITABLE: u32 = 0x000c_cfff;

/// ESR bits.
pub(super) const ESR_SEND_ILLEGAL_VECTOR: u32 = 1 << 5;
pub(super) const ESR_RECEIVE_ILLEGAL_VECTOR: u32 = 1 << 6;
pub(super) const ESR_ILLEGAL_REGISTER: u32 = 1 << 7;

/// IA32_APIC_BASE bits.
pub(super) const BASE_BSP: u64 = 1 << 8;
pub(super) const BASE_ENABLE: u64 = 1 << 11;
pub(super) const BASE_X2APIC: u64 = 1 << 10;
/// Physical-address bits of the base (the engine's 40-bit physical address space).
pub(super) const BASE_ADDRESS: u64 = 0x0000_00ff_ffff_f000;

/// The shortest interval between two periodic timer interrupts: a guest cannot make the host
/// fire a timer every few nanoseconds.
pub const MIN_PERIODIC_NS: u64 = 50_000;

/// A 256-bit register (ISR, TMR, IRR) as eight 32-bit words.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Bits256(pub(super) [u32; 8]);

impl Bits256 {
    fn set(&mut self, v: u8) {
        self.0[usize::from(v >> 5)] |= 1 << (v & 31);
    }
    fn clear(&mut self, v: u8) {
        self.0[usize::from(v >> 5)] &= !(1 << (v & 31));
    }
    fn get(&self, v: u8) -> bool {
        self.0[usize::from(v >> 5)] & (1 << (v & 31)) != 0
    }
    fn highest(&self) -> Option<u8> {
        (0..8usize).rev().find_map(|i| {
            let w = self.0[i];
            (w != 0).then(|| (i as u32 * 32 + 31 - w.leading_zeros()) as u8)
        })
    }
}

/// One CPU's local APIC.
pub struct LocalApic {
    /// IA32_APIC_BASE.
    pub(super) base: u64,
    /// ID register (ID in bits 31:24).
    pub(super) id: u32,
    pub(super) tpr: u32,
    pub(super) ldr: u32,
    pub(super) dfr: u32,
    pub(super) svr: u32,
    pub(super) isr: Bits256,
    pub(super) tmr: Bits256,
    pub(super) irr: Bits256,
    /// The ESR as the guest last latched it, and the errors seen since.
    pub(super) esr: u32,
    pub(super) esr_pending: u32,
    pub(super) icr: u64,
    pub(super) lvt: [u32; LVT_COUNT],
    pub(super) timer: ApicTimer,
    pub(super) nmi_pending: bool,
    pub(super) init_pending: bool,
    pub(super) sipi_vector: Option<u8>,
    pub(super) outbox: Vec<ApicMessage>,
    pub(super) clock: Arc<dyn Clock>,
    pub(super) wakeup: Arc<dyn Timer>,
}

impl LocalApic {
    /// The APIC of the CPU with APIC ID `id` (the bootstrap processor if `bsp`), at its power-up
    /// state at 0xfee00000, reading time from `clock` and arming `wakeup` for the timer; the
    /// owner calls [`LocalApic::expire`] when that deadline passes.
    pub fn new(id: u8, bsp: bool, clock: Arc<dyn Clock>, wakeup: Arc<dyn Timer>) -> Self {
        let mut apic = Self {
            base: LAPIC_BASE | BASE_ENABLE | if bsp { BASE_BSP } else { 0 },
            id: u32::from(id) << 24,
            tpr: 0,
            ldr: 0,
            dfr: 0,
            svr: 0,
            isr: Bits256::default(),
            tmr: Bits256::default(),
            irr: Bits256::default(),
            esr: 0,
            esr_pending: 0,
            icr: 0,
            lvt: [0; LVT_COUNT],
            timer: ApicTimer::default(),
            nmi_pending: false,
            init_pending: false,
            sipi_vector: None,
            outbox: Vec::new(),
            clock,
            wakeup,
        };
        apic.reset_registers();
        apic
    }

    /// The register state after power-up or INIT: everything but the ID and IA32_APIC_BASE.
    fn reset_registers(&mut self) {
        self.tpr = 0;
        self.ldr = 0;
        self.dfr = 0xffff_ffff;
        self.svr = 0xff;
        self.isr = Bits256::default();
        self.tmr = Bits256::default();
        self.irr = Bits256::default();
        self.esr = 0;
        self.esr_pending = 0;
        self.icr = 0;
        self.lvt = [LVT_MASKED; LVT_COUNT];
        self.timer = ApicTimer::default();
        self.wakeup.arm(None);
    }

    /// The APIC ID.
    pub fn id(&self) -> u8 {
        (self.id >> 24) as u8
    }

    /// IA32_APIC_BASE.
    pub fn apic_base(&self) -> u64 {
        self.base
    }

    /// Writes IA32_APIC_BASE. Returns false (the CPU raises #GP) for reserved bits or x2APIC
    /// mode, which this APIC does not have. Clearing the global enable resets the APIC; while
    /// disabled it neither claims its page nor accepts interrupts.
    pub fn set_apic_base(&mut self, value: u64) -> bool {
        if value & !(BASE_ADDRESS | BASE_ENABLE | BASE_BSP | BASE_X2APIC) != 0
            || value & BASE_X2APIC != 0
        {
            return false;
        }
        let was_enabled = self.hw_enabled();
        self.base = value;
        if was_enabled && !self.hw_enabled() {
            self.reset_registers();
            self.nmi_pending = false;
            self.init_pending = false;
            self.sipi_vector = None;
        }
        true
    }

    /// The guest-physical base of the register page, or `None` when the APIC is globally
    /// disabled.
    pub fn mmio_base(&self) -> Option<u64> {
        self.hw_enabled().then_some(self.base & BASE_ADDRESS)
    }

    fn hw_enabled(&self) -> bool {
        self.base & BASE_ENABLE != 0
    }

    fn sw_enabled(&self) -> bool {
        self.hw_enabled() && self.svr & SVR_ENABLE != 0
    }

    /// The task priority register (its bits 7:4 are CR8).
    pub fn tpr(&self) -> u8 {
        self.tpr as u8
    }

    /// Sets the task priority (from a write to CR8, `tpr = cr8 << 4`).
    pub fn set_tpr(&mut self, tpr: u8) {
        self.tpr = u32::from(tpr);
    }

    /// The processor priority: the higher of the task priority and the class in service.
    fn ppr(&self) -> u32 {
        let isrv = self.isr.highest().map_or(0, u32::from);
        if self.tpr >> 4 >= isrv >> 4 {
            self.tpr & 0xff
        } else {
            isrv & 0xf0
        }
    }

    /// The arbitration priority, which lowest-priority delivery compares.
    pub fn arbitration_priority(&self) -> u8 {
        let isrv = self.isr.highest().map_or(0, u32::from);
        let irrv = self.irr.highest().map_or(0, u32::from);
        let top = isrv.max(irrv);
        if self.tpr >> 4 >= top >> 4 {
            self.tpr as u8
        } else {
            ((self.tpr & 0xf0).max(isrv & 0xf0).max(irrv & 0xf0)) as u8
        }
    }

    /// The highest requested vector whose priority class is above the processor priority: what
    /// the CPU takes when interrupts are enabled.
    pub fn pending_interrupt(&self) -> Option<u8> {
        if !self.hw_enabled() {
            return None;
        }
        let v = self.irr.highest()?;
        (u32::from(v) >> 4 > self.ppr() >> 4).then_some(v)
    }

    /// The CPU takes `vector`: it moves from the IRR to the ISR.
    pub fn acknowledge(&mut self, vector: u8) {
        if self.irr.get(vector) {
            self.irr.clear(vector);
            self.isr.set(vector);
        }
    }

    /// Requests `vector` as an accepted fixed interrupt (edge, or level with the EOI broadcast).
    /// Vectors below 16 are illegal and set the receive error instead. Returns true if the
    /// request reached the IRR.
    pub fn set_irr(&mut self, vector: u8, level_triggered: bool) -> bool {
        if !self.sw_enabled() {
            // A software-disabled APIC drops fixed interrupts (as KVM's does).
            return false;
        }
        if vector < 16 {
            self.error(ESR_RECEIVE_ILLEGAL_VECTOR);
            return false;
        }
        self.irr.set(vector);
        if level_triggered {
            self.tmr.set(vector);
        } else {
            self.tmr.clear(vector);
        }
        true
    }

    /// Whether this APIC is one of `destination`'s, for a message sent by APIC `source` (the
    /// self shorthands need it; `None` for a message from a device).
    pub fn matches(&self, destination: Destination, source: Option<u8>) -> bool {
        if !self.hw_enabled() {
            return false;
        }
        let me = self.id();
        match destination {
            Destination::Physical(dest) => dest == 0xff || dest == me,
            Destination::Logical(dest) => self.matches_logical(dest),
            Destination::SelfOnly => source == Some(me),
            Destination::AllIncludingSelf => true,
            Destination::AllExcludingSelf => source != Some(me),
        }
    }

    fn matches_logical(&self, dest: u8) -> bool {
        if dest == 0xff {
            return true;
        }
        let logical = (self.ldr >> 24) as u8;
        match self.dfr >> 28 {
            // Flat model: one bit per CPU.
            0xf => logical & dest != 0,
            // Cluster model: a cluster in the high nibble, a bit per CPU of it in the low.
            0x0 => logical >> 4 == dest >> 4 && logical & dest & 0xf != 0,
            _ => false,
        }
    }

    /// Accepts `irq`, which the owner routed here because [`LocalApic::matches`] said so.
    /// Returns true if the CPU has something new to look at (an interrupt, NMI, INIT or
    /// start-up IPI).
    pub fn accept(&mut self, irq: &Interrupt) -> bool {
        if !self.hw_enabled() {
            return false;
        }
        match irq.mode {
            DeliveryMode::Fixed | DeliveryMode::LowestPriority => {
                self.set_irr(irq.vector, irq.level_triggered)
            }
            DeliveryMode::Nmi => {
                self.nmi_pending = true;
                true
            }
            DeliveryMode::Init => {
                // The level-triggered de-assert of old start-up code does nothing.
                if irq.level_triggered && !irq.assert {
                    return false;
                }
                self.init_pending = true;
                // A start-up IPI sent before the INIT is void.
                self.sipi_vector = None;
                true
            }
            DeliveryMode::StartUp => {
                self.sipi_vector = Some(irq.vector);
                true
            }
            DeliveryMode::Smi | DeliveryMode::ExtInt | DeliveryMode::Reserved => false,
        }
    }

    /// Accepts an MSI addressed to this APIC; returns false if it is for another one or was
    /// not taken. Lowest-priority arbitration between APICs is the owner's business.
    pub fn accept_msi(&mut self, msg: MsiMessage) -> bool {
        match Interrupt::from_msi(msg) {
            Some(irq) if self.matches(irq.destination, None) => self.accept(&irq),
            _ => false,
        }
    }

    /// Takes a pending NMI.
    pub fn take_nmi(&mut self) -> bool {
        std::mem::take(&mut self.nmi_pending)
    }

    /// Whether an INIT is waiting.
    pub fn has_pending_init(&self) -> bool {
        self.init_pending
    }

    /// Takes a pending INIT: the APIC resets its registers (all but the ID and the base) as
    /// the CPU does. A start-up IPI that arrived after the INIT stays pending.
    pub fn take_init(&mut self) -> bool {
        if !std::mem::take(&mut self.init_pending) {
            return false;
        }
        self.reset_registers();
        self.nmi_pending = false;
        true
    }

    /// Whether a start-up IPI is waiting.
    pub fn has_pending_sipi(&self) -> bool {
        self.sipi_vector.is_some()
    }

    /// Takes the vector of a pending start-up IPI. A CPU that is not waiting for one takes
    /// it and ignores it.
    pub fn take_sipi(&mut self) -> Option<u8> {
        self.sipi_vector.take()
    }

    /// Whether the 8259's INTR reaches the CPU through LINT0: LINT0 unmasked in ExtINT mode,
    /// or the APIC globally disabled (then LINT0 is a plain wire).
    pub fn accepts_ext_int(&self) -> bool {
        if !self.hw_enabled() {
            return true;
        }
        let lint0 = self.lvt[LVT_LINT0];
        self.sw_enabled() && lint0 & LVT_MASKED == 0 && lint0 & (7 << 8) == LVT_MODE_EXTINT
    }

    /// Programs LINT0 as ExtINT and LINT1 as NMI, unmasked, as firmware leaves them for an
    /// operating system that starts with the 8259.
    pub fn wire_legacy_lints(&mut self) {
        self.lvt[LVT_LINT0] = LVT_MODE_EXTINT;
        self.lvt[LVT_LINT1] = LVT_MODE_NMI;
    }

    /// What the APIC sent since the last call: IPIs and level-triggered EOIs to deliver.
    pub fn take_messages(&mut self) -> Vec<ApicMessage> {
        std::mem::take(&mut self.outbox)
    }

    /// Called by the owner when the deadline given to the [`Timer`] has passed: requests the
    /// timer's vector if its count reached zero, and arms the next deadline. Calling it early
    /// or twice is harmless. Returns true if an interrupt was requested.
    pub fn expire(&mut self) -> bool {
        let now = self.clock.now_ns();
        let mut fired = false;
        if self.timer.take_irq(now) {
            let lvt = self.lvt[LVT_TIMER];
            if lvt & LVT_MASKED == 0 {
                fired = self.set_irr((lvt & LVT_VECTOR) as u8, false);
            }
        }
        self.rearm(now);
        fired
    }

    pub(super) fn rearm(&self, now: u64) {
        let deadline = self.timer.deadline().map(|at| {
            if self.timer.periodic() {
                at.max(now.saturating_add(MIN_PERIODIC_NS))
            } else {
                at
            }
        });
        self.wakeup.arm(deadline);
    }

    /// Records an error in the ESR and requests the error LVT's vector if it is unmasked.
    fn error(&mut self, bits: u32) {
        self.esr_pending |= bits;
        let lvt = self.lvt[LVT_ERROR];
        if lvt & LVT_MASKED == 0 && self.sw_enabled() {
            let v = (lvt & LVT_VECTOR) as u8;
            // An illegal error vector must not recurse into another error.
            if v >= 16 {
                self.irr.set(v);
                self.tmr.clear(v);
            }
        }
    }

    fn eoi(&mut self) {
        let Some(v) = self.isr.highest() else { return };
        self.isr.clear(v);
        if self.tmr.get(v) {
            self.outbox.push(ApicMessage::EndOfInterrupt(v));
        }
    }

    fn send_ipi(&mut self) {
        let low = self.icr as u32;
        let mode = DeliveryMode::from_bits(low >> 8);
        let vector = low as u8;
        if matches!(mode, DeliveryMode::Fixed | DeliveryMode::LowestPriority) && vector < 16 {
            self.error(ESR_SEND_ILLEGAL_VECTOR);
            return;
        }
        let dest = (self.icr >> 56) as u8;
        let destination = match (low >> 18) & 3 {
            1 => Destination::SelfOnly,
            2 => Destination::AllIncludingSelf,
            3 => Destination::AllExcludingSelf,
            _ if low & (1 << 11) != 0 => Destination::Logical(dest),
            _ => Destination::Physical(dest),
        };
        // The outbox is drained after every register write, so it holds at most one IPI; the
        // bound only guards against an owner that forgets to drain it.
        if self.outbox.len() < 64 {
            self.outbox.push(ApicMessage::Ipi(Interrupt {
                vector,
                mode,
                destination,
                level_triggered: low & (1 << 15) != 0,
                assert: low & (1 << 14) != 0,
                source: Some(self.id()),
            }));
        }
    }

    /// Reads the 32-bit register at `reg` (a multiple of 16).
    fn read_register(&mut self, reg: u64) -> u32 {
        match reg {
            REG_ID => self.id,
            REG_VERSION => VERSION,
            REG_TPR => self.tpr,
            REG_APR => u32::from(self.arbitration_priority()),
            REG_PPR => self.ppr(),
            REG_EOI | REG_RRD => 0,
            REG_LDR => self.ldr,
            REG_DFR => self.dfr,
            REG_SVR => self.svr,
            0x100..=0x170 => self.isr.0[((reg - REG_ISR) >> 4) as usize],
            0x180..=0x1f0 => self.tmr.0[((reg - REG_TMR) >> 4) as usize],
            0x200..=0x270 => self.irr.0[((reg - REG_IRR) >> 4) as usize],
            REG_ESR => self.esr,
            // Delivery is instantaneous: the delivery status bit (12) always reads idle.
            REG_ICR_LOW => self.icr as u32,
            REG_ICR_HIGH => (self.icr >> 32) as u32,
            REG_LVT_TIMER..=REG_LVT_ERROR => self.lvt[((reg - REG_LVT_TIMER) >> 4) as usize],
            REG_TIMER_INITIAL => self.timer.initial,
            REG_TIMER_CURRENT => self.timer.current(self.clock.now_ns()),
            REG_TIMER_DIVIDE => self.timer.divide_config,
            _ => {
                self.error(ESR_ILLEGAL_REGISTER);
                0
            }
        }
    }

    /// Writes the 32-bit register at `reg` (a multiple of 16).
    fn write_register(&mut self, reg: u64, v: u32) {
        match reg {
            REG_ID => self.id = v & 0xff00_0000,
            REG_TPR => self.tpr = v & 0xff,
            REG_EOI => self.eoi(),
            REG_LDR => self.ldr = v & 0xff00_0000,
            REG_DFR => self.dfr = v | 0x0fff_ffff,
            REG_SVR => {
                self.svr = v & SVR_WRITABLE;
                if self.svr & SVR_ENABLE == 0 {
                    // Software disable masks every LVT entry.
                    for e in &mut self.lvt {
                        *e |= LVT_MASKED;
                    }
                }
            }
            REG_ESR => {
                // A write latches the errors seen since the last one.
                self.esr = std::mem::take(&mut self.esr_pending);
            }
            REG_ICR_LOW => {
                self.icr = (self.icr & !0xffff_ffff) | u64::from(v & ICR_WRITABLE);
                self.send_ipi();
            }
            REG_ICR_HIGH => {
                self.icr = (self.icr & 0xffff_ffff) | (u64::from(v & 0xff00_0000) << 32);
            }
            REG_LVT_TIMER..=REG_LVT_ERROR => {
                let i = ((reg - REG_LVT_TIMER) >> 4) as usize;
                let mut e = v & LVT_WRITABLE[i];
                if self.svr & SVR_ENABLE == 0 {
                    e |= LVT_MASKED;
                }
                self.lvt[i] = e;
                if i == LVT_TIMER {
                    let now = self.clock.now_ns();
                    self.timer.set_periodic(e & TIMER_PERIODIC != 0, now);
                    self.rearm(now);
                }
            }
            REG_TIMER_INITIAL => {
                let now = self.clock.now_ns();
                self.timer.set_initial(v, now);
                self.rearm(now);
            }
            REG_TIMER_DIVIDE => {
                let now = self.clock.now_ns();
                self.timer.set_divide(v, now);
                self.rearm(now);
            }
            // Read-only registers ignore writes.
            REG_VERSION | REG_APR | REG_PPR | REG_RRD | 0x100..=0x270 | REG_TIMER_CURRENT => {}
            _ => self.error(ESR_ILLEGAL_REGISTER),
        }
    }

    /// Reads the dword at `offset`: registers sit at 16-byte strides and only their first
    /// dword exists.
    fn read_dword(&mut self, offset: u64) -> u32 {
        if offset & 0xf != 0 {
            return 0;
        }
        self.read_register(offset)
    }
}

impl BusDevice for LocalApic {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let mut cached: Option<(u64, u32)> = None;
        for (i, b) in (0u64..).zip(data.iter_mut()) {
            let addr = offset.wrapping_add(i) & 0xfff;
            let dword = addr & !3;
            let value = match cached {
                Some((d, v)) if d == dword => v,
                _ => {
                    let v = self.read_dword(dword);
                    cached = Some((dword, v));
                    v
                }
            };
            *b = (value >> (8 * (addr & 3))) as u8;
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        // Registers take whole aligned dwords. A narrower write is merged into the register's
        // value, as on hardware where the APIC sees the byte enables of a 32-bit write; writes
        // to the unused dwords of a 16-byte slot are dropped.
        let mut rest = data;
        let mut addr = offset & 0xfff;
        while !rest.is_empty() {
            let dword = addr & !3;
            let shift = (addr & 3) as usize;
            let n = rest.len().min(4 - shift);
            if dword & 0xf == 0 {
                let mut bytes = if n == 4 {
                    [0; 4]
                } else {
                    self.read_register_quiet(dword).to_le_bytes()
                };
                bytes[shift..shift + n].copy_from_slice(&rest[..n]);
                self.write_register(dword, u32::from_le_bytes(bytes));
            }
            rest = &rest[n..];
            addr = (addr + n as u64) & 0xfff;
        }
    }
}

impl LocalApic {
    /// A register's value for merging a partial write, without the side effects of a read.
    fn read_register_quiet(&self, reg: u64) -> u32 {
        match reg {
            REG_ID => self.id,
            REG_TPR => self.tpr,
            REG_LDR => self.ldr,
            REG_DFR => self.dfr,
            REG_SVR => self.svr,
            REG_ICR_LOW => self.icr as u32,
            REG_ICR_HIGH => (self.icr >> 32) as u32,
            REG_LVT_TIMER..=REG_LVT_ERROR => self.lvt[((reg - REG_LVT_TIMER) >> 4) as usize],
            REG_TIMER_INITIAL => self.timer.initial,
            REG_TIMER_DIVIDE => self.timer.divide_config,
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{MockClock, MockTimer};

    struct Fixture {
        apic: LocalApic,
        clock: Arc<MockClock>,
        timer: Arc<MockTimer>,
    }

    fn fixture(id: u8) -> Fixture {
        let clock = Arc::new(MockClock::default());
        clock.set(1_000_000);
        let timer = Arc::new(MockTimer::default());
        let apic = LocalApic::new(id, id == 0, clock.clone(), timer.clone());
        Fixture { apic, clock, timer }
    }

    fn rd(apic: &mut LocalApic, reg: u64) -> u32 {
        let mut b = [0; 4];
        apic.read(reg, &mut b);
        u32::from_le_bytes(b)
    }

    fn wr(apic: &mut LocalApic, reg: u64, v: u32) {
        apic.write(reg, &v.to_le_bytes());
    }

    fn enabled(id: u8) -> Fixture {
        let mut f = fixture(id);
        wr(&mut f.apic, REG_SVR, 0x1ff);
        f
    }

    #[test]
    fn power_up_registers() {
        let mut f = fixture(3);
        let a = &mut f.apic;
        assert_eq!(rd(a, REG_ID), 3 << 24);
        assert_eq!(rd(a, REG_VERSION), 0x0005_0014);
        assert_eq!(rd(a, REG_SVR), 0xff);
        assert_eq!(rd(a, REG_DFR), 0xffff_ffff);
        for reg in (REG_LVT_TIMER..=REG_LVT_ERROR).step_by(16) {
            assert_eq!(rd(a, reg), LVT_MASKED, "{reg:#x}");
        }
        assert_eq!(a.apic_base(), 0xfee0_0800);
        assert_eq!(fixture(0).apic.apic_base(), 0xfee0_0900, "BSP flag");
        assert_eq!(a.mmio_base(), Some(LAPIC_BASE));
    }

    #[test]
    fn software_disabled_apic_drops_fixed_interrupts_and_keeps_lvts_masked() {
        let mut f = fixture(0);
        assert!(!f.apic.set_irr(0x40, false));
        assert_eq!(f.apic.pending_interrupt(), None);
        wr(&mut f.apic, REG_LVT_TIMER, 0x31);
        assert_eq!(rd(&mut f.apic, REG_LVT_TIMER), 0x31 | LVT_MASKED);
        wr(&mut f.apic, REG_SVR, 0x1ff);
        wr(&mut f.apic, REG_LVT_TIMER, 0x31);
        assert_eq!(rd(&mut f.apic, REG_LVT_TIMER), 0x31);
        wr(&mut f.apic, REG_SVR, 0xff);
        assert_eq!(rd(&mut f.apic, REG_LVT_TIMER), 0x31 | LVT_MASKED);
    }

    #[test]
    fn highest_irr_above_ppr_is_pending_and_acknowledge_moves_it_to_isr() {
        let mut f = enabled(0);
        let a = &mut f.apic;
        a.set_irr(0x41, false);
        a.set_irr(0x52, false);
        assert_eq!(a.pending_interrupt(), Some(0x52));
        a.acknowledge(0x52);
        assert_eq!(rd(a, REG_ISR + 0x20) & (1 << 18), 1 << 18);
        assert_eq!(rd(a, REG_PPR), 0x50);
        // 0x41 is in a lower class than the one in service.
        assert_eq!(a.pending_interrupt(), None);
        wr(a, REG_EOI, 0);
        assert_eq!(rd(a, REG_PPR), 0);
        assert_eq!(a.pending_interrupt(), Some(0x41));
    }

    #[test]
    fn tpr_blocks_classes_at_or_below_it() {
        let mut f = enabled(0);
        let a = &mut f.apic;
        a.set_irr(0x45, false);
        wr(a, REG_TPR, 0x40);
        assert_eq!(a.pending_interrupt(), None);
        assert_eq!(rd(a, REG_PPR), 0x40);
        a.set_tpr(0x30);
        assert_eq!(a.pending_interrupt(), Some(0x45));
        assert_eq!(a.tpr(), 0x30);
        assert_eq!(
            rd(a, REG_APR),
            0x40,
            "APR follows the IRR's class above the TPR"
        );
    }

    #[test]
    fn eoi_of_level_triggered_vector_is_sent_to_the_ioapic() {
        let mut f = enabled(0);
        let a = &mut f.apic;
        a.set_irr(0x30, true);
        a.set_irr(0x60, false);
        assert_ne!(rd(a, REG_TMR + 0x10) & (1 << 16), 0);
        a.acknowledge(0x30);
        wr(a, REG_EOI, 0);
        assert_eq!(a.take_messages(), vec![ApicMessage::EndOfInterrupt(0x30)]);
        a.acknowledge(0x60);
        wr(a, REG_EOI, 0);
        assert!(a.take_messages().is_empty(), "edge EOIs stay local");
        wr(a, REG_EOI, 0);
        assert!(a.take_messages().is_empty(), "EOI with nothing in service");
    }

    #[test]
    fn illegal_vectors_set_the_esr_and_the_error_lvt() {
        let mut f = enabled(0);
        let a = &mut f.apic;
        wr(a, REG_LVT_ERROR, 0xfe);
        assert!(!a.set_irr(5, false));
        assert_eq!(rd(a, REG_ESR), 0, "ESR shows errors only after a write");
        wr(a, REG_ESR, 0);
        assert_eq!(rd(a, REG_ESR), ESR_RECEIVE_ILLEGAL_VECTOR);
        assert_eq!(a.pending_interrupt(), Some(0xfe));
        wr(a, REG_ICR_LOW, 0x0000_4003);
        assert!(a.take_messages().is_empty());
        wr(a, REG_ESR, 0);
        assert_eq!(rd(a, REG_ESR), ESR_SEND_ILLEGAL_VECTOR);
    }

    #[test]
    fn icr_sends_fixed_nmi_init_and_sipi_with_destinations() {
        let mut f = enabled(2);
        let a = &mut f.apic;
        wr(a, REG_ICR_HIGH, 0x0500_0000);
        wr(a, REG_ICR_LOW, 0x0000_4031);
        wr(a, REG_ICR_LOW, 0x0000_0931);
        wr(a, REG_ICR_LOW, 0x0004_0041);
        wr(a, REG_ICR_LOW, 0x0008_0400);
        wr(a, REG_ICR_LOW, 0x000c_4500);
        wr(a, REG_ICR_LOW, 0x0000_4608);
        let got: Vec<_> = a
            .take_messages()
            .into_iter()
            .map(|m| match m {
                ApicMessage::Ipi(i) => (i.vector, i.mode, i.destination, i.source),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (0x31, DeliveryMode::Fixed, Destination::Physical(5), Some(2)),
                (
                    0x31,
                    DeliveryMode::LowestPriority,
                    Destination::Logical(5),
                    Some(2)
                ),
                (0x41, DeliveryMode::Fixed, Destination::SelfOnly, Some(2)),
                (0, DeliveryMode::Nmi, Destination::AllIncludingSelf, Some(2)),
                (
                    0,
                    DeliveryMode::Init,
                    Destination::AllExcludingSelf,
                    Some(2)
                ),
                (8, DeliveryMode::StartUp, Destination::Physical(5), Some(2)),
            ]
        );
        assert_eq!(rd(a, REG_ICR_LOW) & (1 << 12), 0, "delivery status idle");
        assert_eq!(rd(a, REG_ICR_HIGH), 0x0500_0000);
    }

    #[test]
    fn destinations_match_physical_flat_and_cluster_ids() {
        let mut f = enabled(3);
        let a = &mut f.apic;
        assert!(a.matches(Destination::Physical(3), None));
        assert!(a.matches(Destination::Physical(0xff), None));
        assert!(!a.matches(Destination::Physical(4), None));
        assert!(a.matches(Destination::SelfOnly, Some(3)));
        assert!(!a.matches(Destination::SelfOnly, Some(1)));
        assert!(!a.matches(Destination::AllExcludingSelf, Some(3)));
        assert!(a.matches(Destination::AllExcludingSelf, Some(1)));
        wr(a, REG_LDR, 0x0800_0000);
        assert!(a.matches(Destination::Logical(0x0c), None));
        assert!(!a.matches(Destination::Logical(0x04), None));
        wr(a, REG_DFR, 0x0fff_ffff);
        assert_eq!(rd(a, REG_DFR), 0x0fff_ffff);
        wr(a, REG_LDR, 0x2100_0000);
        assert!(a.matches(Destination::Logical(0x23), None));
        assert!(!a.matches(Destination::Logical(0x13), None));
        assert!(a.matches(Destination::Logical(0xff), None));
    }

    #[test]
    fn msi_is_accepted_only_by_its_destination() {
        let mut f = enabled(1);
        let msg = |dest: u64| MsiMessage {
            address: 0xfee0_0000 | (dest << 12),
            data: 0x4030,
        };
        assert!(!f.apic.accept_msi(msg(0)));
        assert!(f.apic.accept_msi(msg(1)));
        assert_eq!(f.apic.pending_interrupt(), Some(0x30));
    }

    #[test]
    fn init_resets_registers_and_sipi_waits_for_the_cpu() {
        let mut f = enabled(1);
        let a = &mut f.apic;
        wr(a, REG_TPR, 0x20);
        let init = Interrupt {
            vector: 0,
            mode: DeliveryMode::Init,
            destination: Destination::Physical(1),
            level_triggered: false,
            assert: true,
            source: Some(0),
        };
        let deassert = Interrupt {
            level_triggered: true,
            assert: false,
            ..init
        };
        assert!(!a.accept(&deassert));
        assert!(!a.has_pending_init());
        assert!(a.accept(&init));
        assert!(a.has_pending_init());
        assert!(a.take_init());
        assert!(!a.take_init());
        assert_eq!(rd(a, REG_TPR), 0);
        assert_eq!(rd(a, REG_SVR), 0xff);
        assert_eq!(rd(a, REG_ID), 1 << 24);
        let sipi = Interrupt {
            vector: 8,
            mode: DeliveryMode::StartUp,
            ..init
        };
        assert!(
            a.accept(&sipi),
            "a software-disabled APIC still takes SIPIs"
        );
        assert!(a.has_pending_sipi());
        assert_eq!(a.take_sipi(), Some(8));
        assert_eq!(a.take_sipi(), None);
        // INIT then SIPI before the CPU looks: both count. SIPI then INIT: the SIPI is void.
        assert!(a.accept(&init) && a.accept(&sipi));
        assert!(a.take_init());
        assert_eq!(a.take_sipi(), Some(8));
        assert!(a.accept(&sipi) && a.accept(&init));
        assert!(a.take_init());
        assert_eq!(a.take_sipi(), None);
        let nmi = Interrupt {
            mode: DeliveryMode::Nmi,
            ..init
        };
        assert!(a.accept(&nmi));
        assert!(a.take_nmi());
        assert!(!a.take_nmi());
    }

    #[test]
    fn periodic_timer_arms_and_fires_its_vector() {
        let mut f = enabled(0);
        let t0 = f.clock.now_ns();
        wr(&mut f.apic, REG_TIMER_DIVIDE, 0x3);
        wr(&mut f.apic, REG_LVT_TIMER, 0x31 | TIMER_PERIODIC);
        wr(&mut f.apic, REG_TIMER_INITIAL, 62_500);
        assert_eq!(f.timer.deadline(), Some(t0 + 1_000_000));
        f.clock.set(t0 + 500_000);
        assert_eq!(rd(&mut f.apic, REG_TIMER_CURRENT), 31_250);
        assert!(!f.apic.expire(), "early expire does nothing");
        f.clock.set(t0 + 1_000_000);
        assert!(f.apic.expire());
        assert_eq!(f.apic.pending_interrupt(), Some(0x31));
        assert_eq!(f.timer.deadline(), Some(t0 + 2_000_000));
    }

    #[test]
    fn one_shot_timer_fires_once_and_masked_timer_counts_silently() {
        let mut f = enabled(0);
        let t0 = f.clock.now_ns();
        wr(&mut f.apic, REG_TIMER_DIVIDE, 0xb);
        wr(&mut f.apic, REG_LVT_TIMER, 0x32 | LVT_MASKED);
        wr(&mut f.apic, REG_TIMER_INITIAL, 1000);
        f.clock.set(t0 + 1000);
        assert!(!f.apic.expire());
        assert_eq!(f.timer.deadline(), None);
        assert_eq!(rd(&mut f.apic, REG_TIMER_CURRENT), 0);
        wr(&mut f.apic, REG_LVT_TIMER, 0x32);
        wr(&mut f.apic, REG_TIMER_INITIAL, 1000);
        f.clock.set(t0 + 2000);
        assert!(f.apic.expire());
        assert_eq!(f.timer.deadline(), None);
    }

    #[test]
    fn tiny_periodic_timers_are_rate_limited() {
        let mut f = enabled(0);
        let t0 = f.clock.now_ns();
        wr(&mut f.apic, REG_TIMER_DIVIDE, 0xb);
        wr(&mut f.apic, REG_LVT_TIMER, 0x31 | TIMER_PERIODIC);
        wr(&mut f.apic, REG_TIMER_INITIAL, 1);
        assert_eq!(f.timer.deadline(), Some(t0 + MIN_PERIODIC_NS));
    }

    #[test]
    fn apic_base_relocates_disables_and_refuses_x2apic() {
        let mut f = enabled(0);
        let a = &mut f.apic;
        assert!(a.set_apic_base(0xfed0_0000 | BASE_ENABLE | BASE_BSP));
        assert_eq!(a.mmio_base(), Some(0xfed0_0000));
        assert!(!a.set_apic_base(0xfee0_0000 | BASE_ENABLE | BASE_X2APIC));
        assert!(!a.set_apic_base(1 << 63));
        a.set_irr(0x40, false);
        assert!(a.set_apic_base(0xfee0_0000));
        assert_eq!(a.mmio_base(), None);
        assert_eq!(a.pending_interrupt(), None);
        assert!(!a.matches(Destination::Physical(0), None));
        assert!(a.accepts_ext_int(), "a disabled APIC passes LINT0 through");
    }

    #[test]
    fn ext_int_needs_lint0_in_extint_mode() {
        let mut f = enabled(0);
        assert!(!f.apic.accepts_ext_int());
        f.apic.wire_legacy_lints();
        assert!(f.apic.accepts_ext_int());
        assert_eq!(rd(&mut f.apic, 0x360), LVT_MODE_NMI);
    }

    #[test]
    fn narrow_accesses_merge_into_the_register() {
        let mut f = enabled(0);
        let a = &mut f.apic;
        a.write(REG_LDR + 3, &[0x80]);
        assert_eq!(rd(a, REG_LDR), 0x8000_0000);
        let mut b = [0u8; 1];
        a.read(REG_VERSION + 2, &mut b);
        assert_eq!(b[0], 5);
        a.read(REG_VERSION + 4, &mut b);
        assert_eq!(b[0], 0, "unused dwords of a slot read zero");
    }

    #[test]
    fn hostile_register_accesses_do_not_panic() {
        let mut f = enabled(0);
        let a = &mut f.apic;
        for reg in (0..0x1000u64).step_by(4) {
            for v in [0u32, 0xffff_ffff, 0x8000_0001] {
                wr(a, reg, v);
                rd(a, reg);
                f.clock.advance(7);
                a.expire();
            }
        }
        let mut buf = [0u8; 16];
        a.read(0xffc, &mut buf);
        a.write(u64::MAX - 3, &[0xff; 16]);
        a.read(u64::MAX, &mut buf);
        a.take_messages();
        for v in 0..=255u8 {
            a.set_irr(v, v % 2 == 0);
            a.acknowledge(v);
            a.acknowledge(v);
        }
        f.clock.set(u64::MAX);
        rd(a, REG_TIMER_CURRENT);
        a.expire();
        a.set_apic_base(u64::MAX);
    }
}
