//! The test machine both CPUs run: guest memory layout, page tables, GDT, IDT, TSS, exception
//! stubs, and the initial register state of a case.
//!
//! Both sides get the same bytes in their own copy of guest memory ([`Machine::build`] writes the
//! fixed parts once, [`Machine::load_case`] the parts a case changes), and the same registers.
//! Test code runs at CPL 3 with IOPL 0 (the paravirtual KVM of our hosts forces IOPL 0 at CPL 3,
//! so `in`, `out`, `cli` and `sti` fault there like on any CPU at IOPL 0); every exception goes
//! through a 64-bit interrupt gate to a four-byte CPL-0 stub `out STUB_PORT_BASE + vector, al;
//! ud2`, so an exception ends the run with a port write that names the vector, and the exception
//! frame stays on the kernel stack, which is compared like any other memory. A run that raises
//! nothing ends at the epilogue's `int3` (see `case`).

use hypervisor::{SegmentRegister, SpecialRegisters, StandardRegisters, TableRegister};

/// Bytes of guest RAM, from guest-physical 0, identity-mapped by 4 KiB pages.
pub const MEM_SIZE: usize = 0x20_0000;

/// Page-map level 4; the PDPT, PD and PT follow at +0x1000, +0x2000 and +0x3000.
pub const PML4: u64 = 0x1000;
const PDPT: u64 = 0x2000;
const PD: u64 = 0x3000;
const PT: u64 = 0x4000;
/// Global descriptor table.
pub const GDT: u64 = 0x5000;
/// The 64-bit TSS.
pub const TSS: u64 = 0x5800;
/// Interrupt descriptor table (256 16-byte gates).
pub const IDT: u64 = 0x6000;
/// The CPL-0 exception stubs, four bytes per vector.
pub const STUBS: u64 = 0x7000;
/// The kernel stack page; TSS.RSP0 is its end.
pub const KSTACK: u64 = 0x8000;
/// Top of the kernel stack (TSS.RSP0).
pub const KSTACK_TOP: u64 = 0x9000;
/// The user code pages (read-only, executable).
pub const CODE: u64 = 0x10000;
/// Bytes of user code.
pub const CODE_SIZE: usize = 0x2000;
/// The scratch data pages (user read/write, not executable).
pub const SCRATCH: u64 = 0x20000;
/// Bytes of scratch data.
pub const SCRATCH_SIZE: usize = 0x2000;
/// The user stack page.
pub const USTACK: u64 = 0x22000;
/// Initial user RSP: the middle of the user stack page, so pushes and pops both have room.
pub const USTACK_RSP: u64 = 0x22800;
/// The FXSAVE image the KVM side loads before the test code.
pub const FX_IN: u64 = 0x24000;
/// The FXSAVE image the KVM side stores after the test code.
pub const FX_OUT: u64 = 0x24200;
/// A page that is not present.
pub const PAGE_NOT_PRESENT: u64 = 0x30000;
/// A user page that is read-only.
pub const PAGE_READ_ONLY: u64 = 0x31000;
/// A page only CPL 0 may access.
pub const PAGE_SUPERVISOR: u64 = 0x32000;
/// A user page that is not executable (the scratch pages are not either; this one holds `nop`s).
pub const PAGE_NO_EXEC: u64 = 0x33000;

/// Exception stub of vector `v` writes port `STUB_PORT_BASE + v` (vectors 0..32 only).
pub const STUB_PORT_BASE: u16 = 0xc0;
/// The software-interrupt vector whose gate user code may use (`int 0x40`; not 0x80, which the
/// paravirtual KVM of our hosts answers with #UD at CPL 3).
pub const USER_INT_VECTOR: u8 = 0x40;
/// Port written by the stub of [`USER_INT_VECTOR`].
pub const USER_INT_PORT: u16 = 0xe0;

/// Guest-physical ranges compared after a run: scratch data, user stack, kernel stack (which
/// holds the exception frame).
pub const COMPARED: [(u64, usize); 3] =
    [(SCRATCH, SCRATCH_SIZE), (USTACK, 0x1000), (KSTACK, 0x1000)];

/// Selectors of the GDT.
pub mod sel {
    /// 64-bit kernel code.
    pub const KERNEL_CODE: u16 = 0x08;
    /// Kernel data.
    pub const KERNEL_DATA: u16 = 0x10;
    /// 32-bit user code (compatibility mode).
    pub const USER_CODE32: u16 = 0x18 | 3;
    /// User data.
    pub const USER_DATA: u16 = 0x20 | 3;
    /// 64-bit user code.
    pub const USER_CODE: u16 = 0x28 | 3;
    /// The TSS (a 16-byte descriptor).
    pub const TSS: u16 = 0x30;
    /// A call gate (16 bytes), DPL 3, to the kernel code segment.
    pub const CALL_GATE: u16 = 0x40 | 3;
    /// User data with base 0x1000 and a 0xfff-byte limit (limits are not checked in 64-bit mode,
    /// but the descriptor cache is compared).
    pub const USER_DATA_BASED: u16 = 0x50 | 3;
}

/// Page-table entry bits.
const P: u64 = 1;
const RW: u64 = 2;
const US: u64 = 4;
const A: u64 = 1 << 5;
const D: u64 = 1 << 6;
const NX: u64 = 1 << 63;

/// CR0 of the test machine: PE, MP, ET, NE, WP, PG.
pub const CR0: u64 = 0x8001_0033;
/// CR4 of the test machine: PAE, OSFXSR, OSXMMEXCPT.
pub const CR4: u64 = 0x620;
/// EFER of the test machine: LME, LMA, NXE.
pub const EFER: u64 = 0xd00;

/// Builds the fixed parts of guest memory.
pub struct Machine;

impl Machine {
    /// Writes page tables, GDT, TSS, IDT and stubs into `mem` (at least [`MEM_SIZE`] bytes).
    pub fn build(mem: &mut [u8]) {
        mem[..MEM_SIZE].fill(0);
        put64(mem, PML4, PDPT | P | RW | US | A);
        put64(mem, PDPT, PD | P | RW | US | A);
        put64(mem, PD, PT | P | RW | US | A);
        let page = |addr: u64, flags: u64| (PT + (addr >> 12) * 8, addr | flags | A | D);
        let mut entries = Vec::new();
        // Kernel pages: tables, GDT, TSS, IDT, stubs, kernel stack.
        for addr in (0x1000..KSTACK_TOP).step_by(0x1000) {
            entries.push(page(addr, P | RW | NX));
        }
        // The stubs page must be executable.
        entries.push(page(STUBS, P));
        for addr in (CODE..CODE + CODE_SIZE as u64).step_by(0x1000) {
            entries.push(page(addr, P | US));
        }
        for addr in (SCRATCH..FX_IN + 0x1000).step_by(0x1000) {
            entries.push(page(addr, P | RW | US | NX));
        }
        entries.push(page(PAGE_READ_ONLY, P | US | NX));
        entries.push(page(PAGE_SUPERVISOR, P | RW | NX));
        entries.push(page(PAGE_NO_EXEC, P | RW | US | NX));
        for (at, entry) in entries {
            put64(mem, at, entry);
        }
        // GDT.
        let gdt: [(u16, u64); 7] = [
            (sel::KERNEL_CODE, 0x00af_9b00_0000_ffff),
            (sel::KERNEL_DATA, 0x00cf_9300_0000_ffff),
            (sel::USER_CODE32, 0x00cf_fb00_0000_ffff),
            (sel::USER_DATA, 0x00cf_f300_0000_ffff),
            (sel::USER_CODE, 0x00af_fb00_0000_ffff),
            (sel::USER_DATA_BASED, 0x0040_f300_1000_0fff),
            (0, 0),
        ];
        for (s, d) in gdt {
            put64(mem, GDT + u64::from(s & !7), d);
        }
        let (lo, hi) = system_descriptor(TSS, 0x67, 0xb, 0);
        put64(mem, GDT + u64::from(sel::TSS), lo);
        put64(mem, GDT + u64::from(sel::TSS) + 8, hi);
        let (lo, hi) = gate(STUBS + 4 * 0x41, sel::KERNEL_CODE, 0xc, 3);
        put64(mem, GDT + u64::from(sel::CALL_GATE & !7), lo);
        put64(mem, GDT + u64::from(sel::CALL_GATE & !7) + 8, hi);
        // TSS: RSP0 at +4, I/O map base beyond the limit (no bitmap).
        put64(mem, TSS + 4, KSTACK_TOP);
        mem[TSS as usize + 0x66..TSS as usize + 0x68].copy_from_slice(&0x68u16.to_le_bytes());
        // IDT and stubs: vectors 0..32, the user vector, and the one after it (the call gate's
        // target).
        for v in 0u16..256 {
            let stub = STUBS + 4 * u64::from(v);
            let port = match v {
                0..32 => Some(STUB_PORT_BASE + v),
                0x40 => Some(USER_INT_PORT),
                0x41 => Some(USER_INT_PORT + 1),
                _ => None,
            };
            let Some(port) = port else { continue };
            mem[stub as usize..stub as usize + 4].copy_from_slice(&[0xe6, port as u8, 0x0f, 0x0b]);
            if v == 0x41 {
                continue;
            }
            // int3 and `int 0x40` may be raised by CPL 3; the others only by the CPU.
            let dpl = if v == 3 || v == 0x40 { 3 } else { 0 };
            let (lo, hi) = gate(stub, sel::KERNEL_CODE, 0xe, dpl);
            put64(mem, IDT + 16 * u64::from(v), lo);
            put64(mem, IDT + 16 * u64::from(v) + 8, hi);
        }
        // The no-exec page holds `nop; nop; ...` so a jump there faults only for NX.
        mem[PAGE_NO_EXEC as usize..PAGE_NO_EXEC as usize + 0x1000].fill(0x90);
    }
}

/// The vector an exception stub's port names, if `port` is one.
pub fn stub_vector(port: u16) -> Option<u8> {
    match port {
        p if (STUB_PORT_BASE..STUB_PORT_BASE + 32).contains(&p) => Some((p - STUB_PORT_BASE) as u8),
        USER_INT_PORT => Some(USER_INT_VECTOR),
        p if p == USER_INT_PORT + 1 => Some(USER_INT_VECTOR + 1),
        _ => None,
    }
}

fn put64(mem: &mut [u8], at: u64, v: u64) {
    mem[at as usize..at as usize + 8].copy_from_slice(&v.to_le_bytes());
}

/// A 16-byte system descriptor (TSS or LDT) in long mode.
fn system_descriptor(base: u64, limit: u32, type_: u64, dpl: u64) -> (u64, u64) {
    let lo = u64::from(limit & 0xffff)
        | ((base & 0xff_ffff) << 16)
        | (type_ << 40)
        | (dpl << 45)
        | (1 << 47)
        | (u64::from(limit >> 16 & 0xf) << 48)
        | ((base >> 24 & 0xff) << 56);
    (lo, base >> 32)
}

/// A 16-byte interrupt, trap or call gate in long mode.
fn gate(offset: u64, selector: u16, type_: u64, dpl: u64) -> (u64, u64) {
    let lo = (offset & 0xffff)
        | (u64::from(selector) << 16)
        | (type_ << 40)
        | (dpl << 45)
        | (1 << 47)
        | ((offset >> 16 & 0xffff) << 48);
    (lo, offset >> 32)
}

/// A code or data segment register as loaded from the GDT above.
fn segment(selector: u16, code: bool, dpl: u8) -> SegmentRegister {
    SegmentRegister {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_: if code { 0xb } else { 0x3 },
        present: true,
        dpl,
        db: !code,
        s: true,
        l: code,
        g: true,
        avl: false,
        unusable: false,
    }
}

/// Segment, control and table registers of a case: CPL 3 in 64-bit mode.
pub fn user_sregs() -> SpecialRegisters {
    let data = segment(sel::USER_DATA, false, 3);
    SpecialRegisters {
        cs: segment(sel::USER_CODE, true, 3),
        ds: data,
        es: data,
        fs: data,
        gs: data,
        ss: data,
        tr: SegmentRegister {
            base: TSS,
            limit: 0x67,
            selector: sel::TSS,
            type_: 0xb,
            present: true,
            ..Default::default()
        },
        ldt: SegmentRegister {
            type_: 2,
            present: true,
            unusable: true,
            ..Default::default()
        },
        gdt: TableRegister {
            base: GDT,
            limit: 0x5f,
        },
        idt: TableRegister {
            base: IDT,
            limit: 0xfff,
        },
        cr0: CR0,
        cr2: 0,
        cr3: PML4,
        cr4: CR4,
        cr8: 0,
        efer: EFER,
        apic_base: 0xfee0_0900,
    }
}

/// RFLAGS bit 1, which always reads as one.
pub const RFLAGS_FIXED: u64 = 2;
/// RFLAGS.IF.
pub const RFLAGS_IF: u64 = 1 << 9;

/// General registers of a case, RIP at `rip`.
pub fn user_regs(gpr: &[u64; 16], rip: u64, rflags: u64) -> StandardRegisters {
    StandardRegisters {
        rax: gpr[0],
        rcx: gpr[1],
        rdx: gpr[2],
        rbx: gpr[3],
        rsp: gpr[4],
        rbp: gpr[5],
        rsi: gpr[6],
        rdi: gpr[7],
        r8: gpr[8],
        r9: gpr[9],
        r10: gpr[10],
        r11: gpr[11],
        r12: gpr[12],
        r13: gpr[13],
        r14: gpr[14],
        r15: gpr[15],
        rip,
        rflags,
    }
}

/// The GPRs of `r` in encoding order (RAX, RCX, RDX, RBX, RSP, RBP, RSI, RDI, R8..R15).
pub fn gprs_of(r: &StandardRegisters) -> [u64; 16] {
    [
        r.rax, r.rcx, r.rdx, r.rbx, r.rsp, r.rbp, r.rsi, r.rdi, r.r8, r.r9, r.r10, r.r11, r.r12,
        r.r13, r.r14, r.r15,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stubs_name_their_vector_by_port() {
        let mut mem = vec![0u8; MEM_SIZE];
        Machine::build(&mut mem);
        let stub = (STUBS + 4 * 14) as usize;
        assert_eq!(mem[stub..stub + 2], [0xe6, 0xc0 + 14]);
        assert_eq!(stub_vector(0xc0 + 14), Some(14));
        assert_eq!(stub_vector(0xf0), None);
    }
}
