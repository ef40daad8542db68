//! Conversions between the backend-neutral register types and `x86_cpu`'s state.

use x86_cpu::state::{CpuState, DescriptorTable, SegReg, Segment};

use crate::{SegmentRegister, SpecialRegisters, StandardRegisters, TableRegister};

/// RAX, RCX, RDX, RBX, RSP, RBP, RSI, RDI: the CPU's GPR encoding order.
const RAX: usize = 0;
const RCX: usize = 1;
const RDX: usize = 2;
const RBX: usize = 3;
const RSP: usize = 4;
const RBP: usize = 5;
const RSI: usize = 6;
const RDI: usize = 7;

/// The general registers, RIP and RFLAGS.
pub fn regs_from_state(s: &CpuState) -> StandardRegisters {
    let g = &s.gpr;
    StandardRegisters {
        rax: g[RAX],
        rbx: g[RBX],
        rcx: g[RCX],
        rdx: g[RDX],
        rsi: g[RSI],
        rdi: g[RDI],
        rsp: g[RSP],
        rbp: g[RBP],
        r8: g[8],
        r9: g[9],
        r10: g[10],
        r11: g[11],
        r12: g[12],
        r13: g[13],
        r14: g[14],
        r15: g[15],
        rip: s.rip,
        rflags: s.rflags,
    }
}

/// Sets the general registers, RIP and RFLAGS.
pub fn regs_into_state(r: &StandardRegisters, s: &mut CpuState) {
    s.gpr = [
        r.rax, r.rcx, r.rdx, r.rbx, r.rsp, r.rbp, r.rsi, r.rdi, r.r8, r.r9, r.r10, r.r11, r.r12,
        r.r13, r.r14, r.r15,
    ];
    s.rip = r.rip;
    // Bit 1 of RFLAGS always reads as one.
    s.rflags = r.rflags | 2;
}

fn segment_from_state(s: &Segment) -> SegmentRegister {
    SegmentRegister {
        base: s.base,
        limit: s.limit,
        selector: s.selector,
        type_: s.type_,
        present: s.present,
        dpl: s.dpl,
        db: s.db,
        s: s.s,
        l: s.l,
        g: s.g,
        avl: s.avl,
        unusable: s.unusable,
    }
}

fn segment_into_state(r: &SegmentRegister) -> Segment {
    Segment {
        selector: r.selector,
        base: r.base,
        limit: r.limit,
        type_: r.type_,
        s: r.s,
        dpl: r.dpl,
        present: r.present,
        avl: r.avl,
        l: r.l,
        db: r.db,
        g: r.g,
        unusable: r.unusable,
    }
}

/// The special registers; `apic_base` comes from the local APIC, not from the CPU.
pub fn sregs_from_state(s: &CpuState, apic_base: u64) -> SpecialRegisters {
    let seg = |r: SegReg| segment_from_state(s.seg(r));
    SpecialRegisters {
        cs: seg(SegReg::Cs),
        ds: seg(SegReg::Ds),
        es: seg(SegReg::Es),
        fs: seg(SegReg::Fs),
        gs: seg(SegReg::Gs),
        ss: seg(SegReg::Ss),
        tr: segment_from_state(&s.tr),
        ldt: segment_from_state(&s.ldtr),
        gdt: TableRegister {
            base: s.gdtr.base,
            limit: s.gdtr.limit,
        },
        idt: TableRegister {
            base: s.idtr.base,
            limit: s.idtr.limit,
        },
        cr0: s.cr0,
        cr2: s.cr2,
        cr3: s.cr3,
        cr4: s.cr4,
        cr8: s.cr8,
        efer: s.efer,
        apic_base,
    }
}

/// Writes everything but `apic_base`, which the caller gives the local APIC.
pub fn sregs_into_state(r: &SpecialRegisters, s: &mut CpuState) {
    for (reg, value) in [
        (SegReg::Cs, &r.cs),
        (SegReg::Ds, &r.ds),
        (SegReg::Es, &r.es),
        (SegReg::Fs, &r.fs),
        (SegReg::Gs, &r.gs),
        (SegReg::Ss, &r.ss),
    ] {
        s.seg[reg as usize] = segment_into_state(value);
    }
    s.tr = segment_into_state(&r.tr);
    s.ldtr = segment_into_state(&r.ldt);
    s.gdtr = DescriptorTable {
        base: r.gdt.base,
        limit: r.gdt.limit,
    };
    s.idtr = DescriptorTable {
        base: r.idt.base,
        limit: r.idt.limit,
    };
    s.cr0 = r.cr0;
    s.cr2 = r.cr2;
    s.cr3 = r.cr3;
    s.cr4 = r.cr4;
    s.cr8 = r.cr8 & 0xf;
    s.efer = r.efer;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registers_round_trip_through_the_cpu_state() {
        let regs = StandardRegisters {
            rax: 1,
            rbx: 2,
            rcx: 3,
            rdx: 4,
            rsi: 5,
            rdi: 6,
            rsp: 7,
            rbp: 8,
            r8: 9,
            r15: 16,
            rip: 0x10_0000,
            rflags: 0x202,
            ..Default::default()
        };
        let mut s = CpuState::default();
        regs_into_state(&regs, &mut s);
        assert_eq!(s.gpr[RSP], 7);
        assert_eq!(s.gpr[RBX], 2);
        assert_eq!(regs_from_state(&s), regs);
    }

    #[test]
    fn special_registers_round_trip_with_the_apic_base_aside() {
        let code = SegmentRegister {
            base: 0,
            limit: 0xffff_ffff,
            selector: 0x10,
            type_: 0xb,
            present: true,
            s: true,
            l: true,
            g: true,
            ..Default::default()
        };
        let sregs = SpecialRegisters {
            cs: code,
            ss: SegmentRegister {
                selector: 0x18,
                type_: 3,
                ..code
            },
            gdt: TableRegister {
                base: 0x500,
                limit: 0x27,
            },
            cr0: 0x8000_0011,
            cr3: 0x9000,
            cr4: 0x20,
            cr8: 3,
            efer: 0x500,
            apic_base: 0xfee0_0900,
            ..Default::default()
        };
        let mut s = CpuState::default();
        sregs_into_state(&sregs, &mut s);
        assert!(s.code64());
        assert_eq!(sregs_from_state(&s, 0xfee0_0900), sregs);
    }
}
