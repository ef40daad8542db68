//! Boot: both entry points (PVH 32-bit and Linux 64-bit), the switch to long mode, the boot GDT
//! and page tables, the AP landing path, and turning what the VMM handed over into a `BootInfo`.
//!
//! Every path ends in 64-bit mode on the runtime's own GDT and page tables (an identity map of the
//! first 4 GiB with 2 MiB pages, so the LAPIC and IOAPIC are reachable) with SSE enabled, and only
//! then calls Rust. The page tables are initialised data, not built at run time: CPL-0 instructions
//! are expensive on some hosts, copying 24 KiB of ELF is not.

use core::arch::global_asm;

use crate::Global;

/// Selector of the 64-bit kernel code segment.
pub const KERNEL_CS: u16 = 0x08;
/// Selector of the kernel data segment.
pub const KERNEL_DS: u16 = 0x10;
/// Selector of the user data segment (RPL 3).
pub const USER_DS: u16 = 0x18 | 3;
/// Selector of the 64-bit user code segment (RPL 3).
pub const USER_CS: u16 = 0x20 | 3;
/// Selector of the TSS.
pub const TSS_SEL: u16 = 0x28;

/// How many APs the runtime has stacks for.
pub const MAX_APS: usize = 63;
/// Size of each AP stack.
pub const AP_STACK_SIZE: usize = 8 * 1024;

global_asm!(
    r#"
    .section .note.Xen, "a", @note
    .p2align 2
    .long 4                     /* namesz: "Xen\0" */
    .long 4                     /* descsz */
    .long 18                    /* XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .long rt_pvh_start32
    .p2align 2

    .section .text.boot, "ax"

    /* PVH entry: 32-bit protected mode, paging off, ebx = struct hvm_start_info. */
    .code32
    .global rt_pvh_start32
rt_pvh_start32:
    cli
    cld
    movl $1, rt_boot_protocol
    movl %ebx, rt_boot_pointer
    xorl %edi, %edi             /* edi = 0: the BSP */

    /* Shared by the PVH entry and the APs (edi = 1): protected mode to long mode. */
    .global rt_enter_long_mode32
rt_enter_long_mode32:
    lgdt rt_gdt_ptr             /* 32-bit lgdt reads the low half of the 64-bit base */
    movl %cr4, %eax
    orl $0x620, %eax            /* PAE | OSFXSR | OSXMMEXCPT */
    movl %eax, %cr4
    movl $rt_boot_pml4, %eax
    movl %eax, %cr3
    movl $0xc0000080, %ecx      /* EFER */
    rdmsr
    orl $0x100, %eax            /* LME */
    wrmsr
    movl %cr0, %eax
    andl $~0x4, %eax            /* clear EM */
    orl $0x80000023, %eax       /* PG | NE | MP | PE */
    movl %eax, %cr0
    ljmp $0x08, $rt_long_mode64

    /* APs arrive here from the real-mode trampoline, in flat 32-bit protected mode. */
    .global rt_ap_start32
rt_ap_start32:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movl $1, %edi
    jmp rt_enter_long_mode32

    .code64
rt_long_mode64:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    xorl %eax, %eax
    movw %ax, %fs
    movw %ax, %gs
    testl %edi, %edi
    jnz rt_ap_start64
    leaq rt_bsp_stack_top(%rip), %rsp
    jmp rt_bsp_start64

    /* Linux 64-bit boot protocol: long mode, rsi = struct boot_params (the zero page). */
    .global rt_linux_start64
rt_linux_start64:
    cli
    cld
    movl $2, rt_boot_protocol(%rip)
    movq %rsi, rt_boot_pointer(%rip)
    leaq rt_bsp_stack_top(%rip), %rsp
    lgdt rt_gdt_ptr(%rip)
    movl $rt_boot_pml4, %eax
    movq %rax, %cr3
    movq %cr4, %rax
    orl $0x620, %eax            /* PAE | OSFXSR | OSXMMEXCPT */
    movq %rax, %cr4
    movq %cr0, %rax
    andl $~0x4, %eax            /* clear EM */
    orl $0x22, %eax             /* NE | MP */
    movq %rax, %cr0
    pushq $0x08
    leaq 1f(%rip), %rax
    pushq %rax
    lretq
1:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    xorl %eax, %eax
    movw %ax, %fs
    movw %ax, %gs

rt_bsp_start64:
    xorl %ebp, %ebp
    call rt_rust_start
2:  cli
    hlt
    jmp 2b

rt_ap_start64:
    movl $1, %eax
    lock xaddl %eax, rt_ap_next(%rip)
    cmpl ${max_aps}, %eax
    jae 2b
    incl %eax
    imulq ${ap_stack_size}, %rax
    leaq rt_ap_stacks(%rip), %rsp
    addq %rax, %rsp
    xorl %ebp, %ebp
    call rt_rust_ap_start
    jmp 2b

    .section .data.rt_boot, "aw"
    .p2align 3
    .global rt_boot_protocol, rt_boot_pointer
rt_boot_protocol:
    .quad 0
rt_boot_pointer:
    .quad 0
rt_ap_next:
    .long 0
    .long 0

    .p2align 4
    .global rt_gdt
rt_gdt:
    .quad 0                     /* 0x00 null */
    .quad 0x00af9a000000ffff    /* 0x08 kernel code, 64-bit */
    .quad 0x00cf92000000ffff    /* 0x10 kernel data */
    .quad 0x00cff2000000ffff    /* 0x18 user data, DPL 3 */
    .quad 0x00affa000000ffff    /* 0x20 user code, 64-bit, DPL 3 */
    .quad 0                     /* 0x28 TSS, filled in by gdt::load_tss */
    .quad 0
rt_gdt_end:
    .p2align 3
    .word 0, 0, 0
    .global rt_gdt_ptr
rt_gdt_ptr:
    .word rt_gdt_end - rt_gdt - 1
    .quad rt_gdt

    /* Identity map of the first 4 GiB with 2 MiB pages; the top 32 MiB (LAPIC, IOAPIC) uncached. */
    .p2align 12
    .global rt_boot_pml4
rt_boot_pml4:
    .quad rt_boot_pdpt + 0x3
    .fill 511, 8, 0
rt_boot_pdpt:
    .quad rt_boot_pd + 0x3
    .quad rt_boot_pd + 0x1003
    .quad rt_boot_pd + 0x2003
    .quad rt_boot_pd + 0x3003
    .fill 508, 8, 0
rt_boot_pd:
    .set rt_page, 0
    .rept 2048
    .if rt_page >= 0xfe000000
    .quad rt_page + 0x9b        /* present | writable | PWT | PCD | 2 MiB */
    .else
    .quad rt_page + 0x83        /* present | writable | 2 MiB */
    .endif
    .set rt_page, rt_page + 0x200000
    .endr

    .section .bss.rt_stacks, "aw", @nobits
    .p2align 12
rt_bsp_stack:
    .skip 64 * 1024
rt_bsp_stack_top:
    .global rt_ap_stacks
rt_ap_stacks:
    .skip {max_aps} * {ap_stack_size}
    .text
    "#,
    max_aps = const MAX_APS,
    ap_stack_size = const AP_STACK_SIZE,
    options(att_syntax)
);

// Note on the AP stacks: AP number i (counting from 0) gets the stack whose top is
// `rt_ap_stacks + (i + 1) * AP_STACK_SIZE`, which is why the BSP stack sits just below them.

/// Which boot protocol the VMM used to enter the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootProtocol {
    /// Xen PVH: 32-bit entry from the ELF note, `struct hvm_start_info` in ebx.
    Pvh,
    /// Linux 64-bit boot protocol: ELF entry in long mode, zero page in rsi.
    Linux64,
}

/// One e820 / PVH memory map entry.
#[derive(Clone, Copy, Debug, Default)]
pub struct E820Entry {
    /// First byte.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// Type: 1 = RAM, 2 = reserved, 3 = ACPI, 4 = NVS.
    pub kind: u32,
}

/// e820 type of usable RAM.
pub const E820_RAM: u32 = 1;

/// What the guest learned at boot, copied out of the VMM's structures (so RAM may be reused).
pub struct BootInfo {
    /// The protocol the VMM used.
    pub protocol: BootProtocol,
    /// The memory map.
    pub e820: &'static [E820Entry],
    /// Physical address of the ACPI RSDP, if found.
    pub rsdp: Option<u64>,
    /// The kernel command line (without the NUL).
    pub cmdline: &'static [u8],
}

const MAX_E820: usize = 128;
const MAX_CMDLINE: usize = 1024;

static E820: Global<[E820Entry; MAX_E820]> = Global::new(
    [E820Entry {
        addr: 0,
        size: 0,
        kind: 0,
    }; MAX_E820],
);
static CMDLINE: Global<[u8; MAX_CMDLINE]> = Global::new([0; MAX_CMDLINE]);

unsafe extern "C" {
    static rt_boot_protocol: u64;
    static rt_boot_pointer: u64;
}

const PVH_MAGIC: u32 = 0x336e_c578;

/// Reads what the boot stub saved and builds the `BootInfo`. Called once, on the BSP.
pub(crate) fn collect() -> BootInfo {
    // SAFETY: written by the boot stub before any Rust code ran, never written again.
    let (protocol, pointer) = unsafe {
        (
            core::ptr::read_volatile(&raw const rt_boot_protocol),
            core::ptr::read_volatile(&raw const rt_boot_pointer),
        )
    };
    // SAFETY: only the BSP runs this, once, before anything else reads these buffers.
    let (e820, cmdline) = unsafe { (&mut *E820.get(), &mut *CMDLINE.get()) };
    let mut n_e820 = 0;
    let mut cmdline_ptr = 0u64;
    let mut rsdp = 0u64;
    let protocol = if protocol == 1 {
        let p = pointer;
        // SAFETY: the PVH ABI promises a valid hvm_start_info at ebx; our map covers 4 GiB.
        unsafe {
            if read32(p) == PVH_MAGIC {
                let version = read32(p + 4);
                cmdline_ptr = read64(p + 24);
                rsdp = read64(p + 32);
                if version >= 1 {
                    let map = read64(p + 40);
                    let count = read32(p + 48) as usize;
                    for i in 0..count.min(MAX_E820) {
                        let e = map + 24 * i as u64;
                        e820[i] = E820Entry {
                            addr: read64(e),
                            size: read64(e + 8),
                            kind: read32(e + 16),
                        };
                    }
                    n_e820 = count.min(MAX_E820);
                }
            }
        }
        BootProtocol::Pvh
    } else {
        let zp = pointer;
        // SAFETY: the Linux boot protocol promises a zero page at rsi.
        unsafe {
            rsdp = read64(zp + 0x070);
            let count = read8(zp + 0x1e8) as usize;
            for i in 0..count.min(MAX_E820) {
                let e = zp + 0x2d0 + 20 * i as u64;
                e820[i] = E820Entry {
                    addr: read64(e),
                    size: read64(e + 8),
                    kind: read32(e + 16),
                };
            }
            n_e820 = count.min(MAX_E820);
            cmdline_ptr = u64::from(read32(zp + 0x228)) | (u64::from(read32(zp + 0x0c8)) << 32);
        }
        BootProtocol::Linux64
    };
    let mut n_cmdline = 0;
    if cmdline_ptr != 0 {
        while n_cmdline < MAX_CMDLINE {
            // SAFETY: the VMM handed us a NUL-terminated string at this address.
            let b = unsafe { read8(cmdline_ptr + n_cmdline as u64) };
            if b == 0 {
                break;
            }
            cmdline[n_cmdline] = b;
            n_cmdline += 1;
        }
    }
    let rsdp = if rsdp != 0 {
        Some(rsdp)
    } else {
        crate::acpi::scan_rsdp()
    };
    BootInfo {
        protocol,
        e820: &e820[..n_e820],
        rsdp,
        cmdline: &cmdline[..n_cmdline],
    }
}

/// Reads a byte of guest-physical memory (identity mapped).
///
/// # Safety
/// `addr` must be mapped and readable.
pub unsafe fn read8(addr: u64) -> u8 {
    // SAFETY: forwarded to the caller.
    unsafe { core::ptr::read_volatile(addr as *const u8) }
}

/// Reads a little-endian u32 of guest-physical memory, unaligned allowed.
///
/// # Safety
/// `addr..addr + 4` must be mapped and readable.
pub unsafe fn read32(addr: u64) -> u32 {
    // SAFETY: forwarded to the caller.
    unsafe { core::ptr::read_unaligned(addr as *const u32) }
}

/// Reads a little-endian u64 of guest-physical memory, unaligned allowed.
///
/// # Safety
/// `addr..addr + 8` must be mapped and readable.
pub unsafe fn read64(addr: u64) -> u64 {
    // SAFETY: forwarded to the caller.
    unsafe { core::ptr::read_unaligned(addr as *const u64) }
}
