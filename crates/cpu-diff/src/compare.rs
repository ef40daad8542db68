//! Comparison of the two sides' final states, and the report of a mismatch.
//!
//! Compared: how the run ended (normally, or which vector), the 16 general registers, RIP,
//! RFLAGS (status flags the last writer left undefined masked out; RF, which the silicon may set
//! in a fault's frame or leave set, masked too), the six segment registers with their descriptor
//! caches, TR, GDTR, IDTR, CR0, CR2, CR3, CR4, EFER, the scratch and stack memory, and, after a
//! normal end, the x87/SSE state (FCW, FSW with undefined condition codes masked, abridged tag
//! word, valid ST registers, MXCSR, XMM0..15).

use std::fmt::Write;

use hypervisor::SegmentRegister;

use crate::case::{End, Snapshot, compared_address};
use crate::flags::Undefined;
use crate::machine::KSTACK_TOP;

/// RFLAGS.RF: set by the CPU in the RFLAGS image of a fault's frame, cleared after an
/// instruction completes; neither side's value of it says anything about the instruction.
const RF: u64 = 1 << 16;

/// Where a fault's frame keeps the interrupted RFLAGS, with or without an error code (the frame
/// is aligned to 16 bytes below RSP0, so the slot is the same either way).
const FRAME_RFLAGS: u64 = KSTACK_TOP - 24;

/// The differences between `kvm` and `soft`, one line each; empty when they agree.
pub fn diff(kvm: &Snapshot, soft: &Snapshot, undef: &Undefined) -> Vec<String> {
    let mut out = Vec::new();
    if kvm.end != soft.end {
        out.push(format!("end: silicon {}, software {}", kvm.end, soft.end));
    }
    let names = [
        "rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12",
        "r13", "r14", "r15",
    ];
    let k = crate::machine::gprs_of(&kvm.regs);
    let s = crate::machine::gprs_of(&soft.regs);
    for i in 0..16 {
        if k[i] != s[i] {
            out.push(format!(
                "{}: silicon {:#018x}, software {:#018x}",
                names[i], k[i], s[i]
            ));
        }
    }
    if kvm.regs.rip != soft.regs.rip {
        out.push(format!(
            "rip: silicon {:#x}, software {:#x}",
            kvm.regs.rip, soft.regs.rip
        ));
    }
    let fmask = !(undef.rflags | RF);
    if kvm.regs.rflags & fmask != soft.regs.rflags & fmask {
        out.push(format!(
            "rflags: silicon {:#x} ({}), software {:#x} ({}), undefined {}",
            kvm.regs.rflags,
            flag_names(kvm.regs.rflags),
            soft.regs.rflags,
            flag_names(soft.regs.rflags),
            flag_names(undef.rflags)
        ));
    }
    let (ks, ss) = (&kvm.sregs, &soft.sregs);
    for (name, a, b) in [
        ("cs", &ks.cs, &ss.cs),
        ("ss", &ks.ss, &ss.ss),
        ("ds", &ks.ds, &ss.ds),
        ("es", &ks.es, &ss.es),
        ("fs", &ks.fs, &ss.fs),
        ("gs", &ks.gs, &ss.gs),
        ("tr", &ks.tr, &ss.tr),
    ] {
        if !same_segment(a, b) {
            out.push(format!(
                "{name}: silicon {}, software {}",
                show_segment(a),
                show_segment(b)
            ));
        }
    }
    if ks.gdt != ss.gdt {
        out.push(format!("gdtr: silicon {:?}, software {:?}", ks.gdt, ss.gdt));
    }
    if ks.idt != ss.idt {
        out.push(format!("idtr: silicon {:?}, software {:?}", ks.idt, ss.idt));
    }
    for (name, a, b) in [
        ("cr0", ks.cr0, ss.cr0),
        ("cr2", ks.cr2, ss.cr2),
        ("cr3", ks.cr3, ss.cr3),
        ("cr4", ks.cr4, ss.cr4),
        ("efer", ks.efer, ss.efer),
    ] {
        if a != b {
            out.push(format!("{name}: silicon {a:#x}, software {b:#x}"));
        }
    }
    diff_memory(kvm, soft, undef, &mut out);
    if let (Some(a), Some(b)) = (&kvm.fx, &soft.fx) {
        let fsw_mask = !undef.fsw;
        if a.fcw != b.fcw {
            out.push(format!("fcw: silicon {:#x}, software {:#x}", a.fcw, b.fcw));
        }
        if a.fsw & fsw_mask != b.fsw & fsw_mask {
            out.push(format!(
                "fsw: silicon {:#x}, software {:#x} (undefined {:#x})",
                a.fsw, b.fsw, undef.fsw
            ));
        }
        if a.ftw != b.ftw {
            out.push(format!(
                "ftw (abridged): silicon {:#04x}, software {:#04x}",
                a.ftw, b.ftw
            ));
        }
        if a.mxcsr != b.mxcsr {
            out.push(format!(
                "mxcsr: silicon {:#x}, software {:#x}",
                a.mxcsr, b.mxcsr
            ));
        }
        let top = (a.fsw >> 11) & 7;
        for i in 0..8 {
            let physical = (top + i) & 7;
            let valid = a.ftw & (1 << physical) != 0;
            if valid && a.st[usize::from(i)] != b.st[usize::from(i)] {
                out.push(format!(
                    "st({i}): silicon {:#022x}, software {:#022x}",
                    a.st[usize::from(i)],
                    b.st[usize::from(i)]
                ));
            }
        }
        for i in 0..16 {
            if a.xmm[i] != b.xmm[i] {
                out.push(format!(
                    "xmm{i}: silicon {:#034x}, software {:#034x}",
                    a.xmm[i], b.xmm[i]
                ));
            }
        }
    }
    out
}

fn diff_memory(kvm: &Snapshot, soft: &Snapshot, undef: &Undefined, out: &mut Vec<String>) {
    if kvm.mem == soft.mem {
        return;
    }
    let mut shown = 0;
    let mut i = 0;
    while i < kvm.mem.len().min(soft.mem.len()) {
        let addr = compared_address(i);
        // The RFLAGS image in an exception frame carries the undefined flags and RF too.
        if addr == FRAME_RFLAGS && matches!(kvm.end, End::Vector(_)) {
            let get = |m: &[u8]| u64::from_le_bytes(m[i..i + 8].try_into().unwrap_or_default());
            let mask = !(undef.rflags | RF);
            if get(&kvm.mem) & mask != get(&soft.mem) & mask {
                out.push(format!(
                    "frame rflags: silicon {:#x}, software {:#x}",
                    get(&kvm.mem),
                    get(&soft.mem)
                ));
            }
            i += 8;
            continue;
        }
        if kvm.mem[i] != soft.mem[i] {
            // Report 8-byte aligned words, a few at most.
            let start = i & !7;
            let word = |m: &[u8]| {
                let mut b = [0u8; 8];
                b.copy_from_slice(&m[start..start + 8]);
                u64::from_le_bytes(b)
            };
            if shown < 8 {
                out.push(format!(
                    "mem[{:#x}]: silicon {:#018x}, software {:#018x}",
                    compared_address(start),
                    word(&kvm.mem),
                    word(&soft.mem)
                ));
            }
            shown += 1;
            i = start + 8;
            continue;
        }
        i += 1;
    }
    if shown > 8 {
        out.push(format!("... and {} more differing words", shown - 8));
    }
}

/// Segments agree when the selectors do and, for non-null ones, the descriptor caches do. The
/// cache of a null selector (SS after an interrupt to CPL 0, say) is not architectural: KVM
/// reports it zeroed, the software CPU marks it unusable.
fn same_segment(a: &SegmentRegister, b: &SegmentRegister) -> bool {
    if a.selector != b.selector {
        return false;
    }
    if a.selector & !3 == 0 {
        return true;
    }
    (
        a.base, a.limit, a.type_, a.present, a.dpl, a.db, a.s, a.l, a.g,
    ) == (
        b.base, b.limit, b.type_, b.present, b.dpl, b.db, b.s, b.l, b.g,
    )
}

fn show_segment(s: &SegmentRegister) -> String {
    format!(
        "sel {:#x} base {:#x} limit {:#x} type {:#x} s {} dpl {} p {} db {} l {} g {} unusable {}",
        s.selector,
        s.base,
        s.limit,
        s.type_,
        u8::from(s.s),
        s.dpl,
        u8::from(s.present),
        u8::from(s.db),
        u8::from(s.l),
        u8::from(s.g),
        u8::from(s.unusable)
    )
}

/// "CF ZF ..." for the status flags and DF set in `f`.
pub fn flag_names(f: u64) -> String {
    let mut s = String::new();
    for (bit, name) in [
        (0, "CF"),
        (2, "PF"),
        (4, "AF"),
        (6, "ZF"),
        (7, "SF"),
        (10, "DF"),
        (11, "OF"),
    ] {
        if f & (1 << bit) != 0 {
            if !s.is_empty() {
                s.push(' ');
            }
            let _ = write!(s, "{name}");
        }
    }
    if s.is_empty() {
        s.push('-');
    }
    s
}
