//! Hand-written cases: paging faults, exceptions, privilege changes and far transfers, each with
//! the end it must reach on the silicon (checked, so a case cannot silently test nothing).

use iced_x86::code_asm::*;

use crate::case::{CaseInput, End, TEST_START};
use crate::machine::{
    PAGE_NO_EXEC, PAGE_NOT_PRESENT, PAGE_READ_ONLY, PAGE_SUPERVISOR, SCRATCH, USER_INT_VECTOR,
    USTACK_RSP, sel,
};
use crate::templates::Class;

/// One hand-written case.
pub struct Handwritten {
    /// The case (its name says what it checks).
    pub input: CaseInput,
    /// Its class.
    pub class: Class,
    /// How it must end on the silicon.
    pub expect: End,
    /// The paravirtual KVM of our hosts cannot run it (see `Template::not_on_pvm`).
    pub not_on_pvm: bool,
}

fn case(
    name: &str,
    class: Class,
    expect: End,
    f: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>,
) -> Handwritten {
    let mut a = CodeAssembler::new(64).expect("64-bit assembler");
    f(&mut a).expect("hand-written case assembles");
    let code = a.assemble(TEST_START).expect("hand-written case assembles");
    let mut input = CaseInput::new(name, code);
    for (i, r) in input.gpr.iter_mut().enumerate() {
        if i != 4 {
            *r = 0x1111_1111_1111_1111u64.wrapping_mul(i as u64 + 1);
        }
    }
    for (i, b) in input.scratch.iter_mut().enumerate() {
        *b = i as u8 ^ 0x5a;
    }
    Handwritten {
        input,
        class,
        expect,
        not_on_pvm: false,
    }
}

const DE: End = End::Vector(0);
const BP: End = End::Vector(3);
const UD: End = End::Vector(6);
const SS: End = End::Vector(12);
const GP: End = End::Vector(13);
const PF: End = End::Vector(14);

/// Every hand-written case.
pub fn all() -> Vec<Handwritten> {
    let mut v = vec![
        // Paging: error code (P, W, U, I/D bits) and CR2.
        case("pf_read_not_present", Class::Fault, PF, |a| {
            a.mov(rax, qword_ptr(PAGE_NOT_PRESENT as i32 + 0x18))
        }),
        case("pf_write_read_only", Class::Fault, PF, |a| {
            a.mov(qword_ptr(PAGE_READ_ONLY as i32 + 0x20), rax)
        }),
        case("pf_read_supervisor_page", Class::Fault, PF, |a| {
            a.mov(eax, dword_ptr(PAGE_SUPERVISOR as i32 + 0x100))
        }),
        case("pf_fetch_no_exec", Class::Fault, PF, |a| {
            a.mov(rax, PAGE_NO_EXEC + 0x10)?;
            a.jmp(rax)
        }),
        case("pf_write_code_page", Class::Fault, PF, |a| {
            a.mov(qword_ptr(TEST_START as i32), rax)
        }),
        case("pf_access_split_across_pages", Class::Fault, PF, |a| {
            a.mov(rbx, PAGE_NOT_PRESENT - 3)?;
            a.mov(rax, qword_ptr(rbx))
        }),
        case("pf_push_to_supervisor_stack", Class::Fault, PF, |a| {
            a.mov(rsp, PAGE_SUPERVISOR + 0x800)?;
            a.push(rax)
        }),
        case("pf_rep_movsb_stops_mid_string", Class::String, PF, |a| {
            a.mov(rsi, SCRATCH + 0x100)?;
            a.mov(rdi, PAGE_NOT_PRESENT - 8)?;
            a.mov(ecx, 16)?;
            a.cld()?;
            a.rep().movsb()
        }),
        case(
            "pf_rep_stosq_backwards_stops_mid_string",
            Class::String,
            PF,
            |a| {
                a.mov(rdi, PAGE_NOT_PRESENT + 0x1000 + 16)?;
                a.mov(ecx, 8)?;
                a.std()?;
                a.rep().stosq()
            },
        ),
        // Exceptions.
        case("de_divide_by_zero", Class::MulDiv, DE, |a| {
            a.xor(ecx, ecx)?;
            a.div(rcx)
        }),
        case("de_quotient_too_large", Class::MulDiv, DE, |a| {
            a.mov(edx, 2)?;
            a.mov(ecx, 2)?;
            a.div(ecx)
        }),
        case("de_idiv_min_by_minus_one", Class::MulDiv, DE, |a| {
            a.mov(rax, 0x8000_0000_0000_0000u64)?;
            a.cqo()?;
            a.mov(rcx, -1i64)?;
            a.idiv(rcx)
        }),
        case("ud_ud2", Class::Fault, UD, |a| a.ud2()),
        case("ud_syscall_without_efer_sce", Class::Fault, UD, |a| {
            a.syscall()
        }),
        case("ud_lock_on_register_operand", Class::Fault, UD, |a| {
            a.db(&[0xf0, 0x48, 0x01, 0xc8])
        }),
        case("bp_int3_at_cpl3", Class::Fault, BP, |a| {
            a.mov(eax, 7)?;
            a.int3()
        }),
        case("gp_non_canonical_load", Class::Fault, GP, |a| {
            a.mov(rax, 0x0000_8000_0000_0000u64)?;
            a.mov(rbx, qword_ptr(rax))
        }),
        case("ss_non_canonical_stack", Class::Fault, SS, |a| {
            a.mov(rsp, 0x0000_8000_0000_0010u64)?;
            a.push(rax)
        }),
        case("gp_jump_to_non_canonical", Class::Branch, GP, |a| {
            a.mov(rax, 0x0000_8000_0000_0000u64)?;
            a.jmp(rax)
        }),
        case("gp_misaligned_movdqa", Class::Sse, GP, |a| {
            a.movdqa(xmm0, xmmword_ptr(SCRATCH as i32 + 8))
        }),
        case("gp_misaligned_cmpxchg16b", Class::Exchange, GP, |a| {
            a.cmpxchg16b(xmmword_ptr(SCRATCH as i32 + 8))
        }),
        // Privilege checks at CPL 3.
        case("gp_hlt_at_cpl3", Class::Fault, GP, |a| a.hlt()),
        case("gp_cli_at_iopl0", Class::Fault, GP, |a| a.cli()),
        case("gp_out_at_iopl0", Class::Fault, GP, |a| a.out(0x80, al)),
        case("gp_mov_to_cr3", Class::Fault, GP, |a| a.mov(cr3, rax)),
        case("gp_wrmsr", Class::Fault, GP, |a| a.wrmsr()),
        case("gp_lgdt", Class::Fault, GP, |a| a.lgdt(ptr(SCRATCH as i32))),
        case("gp_load_kernel_data_into_ds", Class::Segment, GP, |a| {
            a.mov(eax, u32::from(sel::KERNEL_DATA))?;
            a.mov(ds, ax)
        }),
        case("gp_load_null_into_ss", Class::Segment, GP, |a| {
            a.xor(eax, eax)?;
            a.mov(ss, ax)
        }),
        case("gp_load_tss_selector_into_es", Class::Segment, GP, |a| {
            a.mov(eax, u32::from(sel::TSS))?;
            a.mov(es, ax)
        }),
        case("popf_at_cpl3_keeps_if_and_iopl", Class::Stack, BP, |a| {
            a.push(0x3cd5)?;
            a.popfq()?;
            a.pushfq()?;
            a.pop(rbx)?;
            a.int3()
        }),
        // Segment loads that succeed: the descriptor cache is compared at the end.
        case("load_based_data_segment_into_fs", Class::Segment, BP, |a| {
            a.mov(eax, u32::from(sel::USER_DATA_BASED))?;
            a.mov(fs, ax)?;
            a.mov(gs, ax)?;
            a.int3()
        }),
        case("load_null_into_ds_and_es", Class::Segment, BP, |a| {
            a.xor(eax, eax)?;
            a.mov(ds, ax)?;
            a.mov(es, ax)?;
            a.mov(rbx, qword_ptr(SCRATCH as i32))?;
            a.int3()
        }),
        // Far transfers and privilege changes.
        case(
            "far_call_through_call_gate_to_cpl0",
            Class::Branch,
            End::Vector(USER_INT_VECTOR + 1),
            |a| {
                a.mov(qword_ptr(SCRATCH as i32), 0)?;
                a.mov(word_ptr(SCRATCH as i32 + 8), u32::from(sel::CALL_GATE))?;
                a.call(tword_ptr(SCRATCH as i32))
            },
        ),
        case("far_return_same_privilege", Class::Branch, BP, |a| {
            let mut target = a.create_label();
            a.push(i32::from(sel::USER_CODE))?;
            a.lea(rax, qword_ptr(target))?;
            a.push(rax)?;
            a.db(&[0x48, 0xcb])?;
            a.ud2()?;
            a.set_label(&mut target)?;
            a.int3()
        }),
        case("far_jump_same_privilege", Class::Branch, BP, |a| {
            let mut target = a.create_label();
            a.lea(rax, qword_ptr(target))?;
            a.mov(qword_ptr(SCRATCH as i32), rax)?;
            a.mov(word_ptr(SCRATCH as i32 + 8), u32::from(sel::USER_CODE))?;
            a.jmp(tword_ptr(SCRATCH as i32))?;
            a.ud2()?;
            a.set_label(&mut target)?;
            a.int3()
        }),
        case("iretq_same_privilege", Class::Branch, BP, |a| {
            let mut target = a.create_label();
            a.mov(rax, rsp)?;
            a.push(i32::from(sel::USER_DATA))?;
            a.push(rax)?;
            a.push(0x2c3)?;
            a.push(i32::from(sel::USER_CODE))?;
            a.lea(rax, qword_ptr(target))?;
            a.push(rax)?;
            a.iretq()?;
            a.ud2()?;
            a.set_label(&mut target)?;
            a.int3()
        }),
        case("far_return_to_cpl0_is_refused", Class::Branch, GP, |a| {
            a.push(i32::from(sel::KERNEL_CODE))?;
            a.push(0x7000)?;
            a.db(&[0x48, 0xcb])
        }),
        case("far_call_to_32_bit_user_code", Class::Branch, PF, |a| {
            // Compatibility mode at address 0x10: a fetch from the unmapped first page.
            a.mov(qword_ptr(SCRATCH as i32), 0x10)?;
            a.mov(word_ptr(SCRATCH as i32 + 8), u32::from(sel::USER_CODE32))?;
            a.call(tword_ptr(SCRATCH as i32))
        }),
    ];
    // The paravirtual KVM of our hosts: `syscall` at CPL 3 is its own entry path; far calls
    // through call gates raise #UD; user-mode segment loads use the host's GDT.
    for h in &mut v {
        if matches!(
            h.input.name.as_str(),
            "ud_syscall_without_efer_sce"
                | "far_call_through_call_gate_to_cpl0"
                | "gp_load_tss_selector_into_es"
                | "load_null_into_ds_and_es"
                | "load_based_data_segment_into_fs"
        ) {
            h.not_on_pvm = true;
        }
    }
    let mut int_n = case(
        "int_n_through_dpl3_gate",
        Class::Fault,
        End::Vector(USER_INT_VECTOR),
        |a| a.int(u32::from(USER_INT_VECTOR)),
    );
    // The paravirtual KVM of our hosts answers `int n` at CPL 3 with #UD.
    int_n.not_on_pvm = true;
    v.push(int_n);
    for h in &mut v {
        h.input.gpr[4] = USTACK_RSP;
    }
    v
}
