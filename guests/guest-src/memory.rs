//! `memory`: identity-maps all RAM of the e820 map with user-accessible 2 MiB pages, then at
//! CPL 3 writes an 8-byte pattern derived from the address to the start of every 4 KiB RAM page
//! outside the guest's own image, and reads them all back. Exits 0 if every page matched.
//!
//! The loops run at CPL 3 on purpose: hosts that emulate CPL-0 code run CPL-3 code natively.

#![no_std]
#![no_main]

use core::arch::asm;

use rt::serial::Hex;
use rt::{E820_RAM, Global, gdt, idt, say};

rt::entry!(main);

const PAGE: u64 = 4096;
const GIB: u64 = 1 << 30;
/// RAM above this is not tested (page tables for it are static).
const MAX_GIB: usize = 64;
const MAX_RANGES: usize = 256;

#[repr(C, align(4096))]
struct Table([u64; 512]);

static PML4: Global<Table> = Global::new(Table([0; 512]));
static PDPT: Global<Table> = Global::new(Table([0; 512]));
static PDS: Global<[Table; MAX_GIB]> = Global::new([const { Table([0; 512]) }; MAX_GIB]);

#[repr(C, align(16))]
struct Stack([u8; 16384]);
static USER_STACK: Global<Stack> = Global::new(Stack([0; 16384]));

/// A page-aligned half-open range of RAM to test.
#[derive(Clone, Copy)]
#[repr(C)]
struct Range {
    start: u64,
    end: u64,
}

/// What ring 0 hands to the CPL-3 code, and what it hands back on a mismatch.
#[repr(C)]
struct Job {
    ranges: [Range; MAX_RANGES],
    count: usize,
    bad_address: u64,
    bad_value: u64,
}

static JOB: Global<Job> = Global::new(Job {
    ranges: [Range { start: 0, end: 0 }; MAX_RANGES],
    count: 0,
    bad_address: 0,
    bad_value: 0,
});

unsafe extern "C" {
    static __image_start: u8;
    static __image_end: u8;
}

fn pattern(address: u64) -> u64 {
    address.rotate_left(29) ^ 0xa5c3_5a3c_0f1e_2d4b
}

/// Runs at CPL 3: fill every page, then verify every page.
extern "C" fn user_main(job: u64) -> ! {
    // SAFETY: ring 0 passes a pointer to JOB, which is mapped user-accessible and not touched
    // by ring 0 until this returns.
    let job = unsafe { &mut *(job as *mut Job) };
    let ranges = &job.ranges[..job.count];
    for r in ranges {
        let mut a = r.start;
        while a < r.end {
            // SAFETY: `a` is a mapped RAM page outside the image. Assembly, not a Rust
            // pointer, because physical page 0 is a legitimate target here.
            unsafe {
                asm!("mov qword ptr [{}], {}", in(reg) a, in(reg) pattern(a), options(nostack))
            };
            a += PAGE;
        }
    }
    for r in ranges {
        let mut a = r.start;
        while a < r.end {
            let value: u64;
            // SAFETY: as above.
            unsafe {
                asm!("mov {}, qword ptr [{}]", out(reg) value, in(reg) a, options(nostack, readonly))
            };
            if value != pattern(a) {
                job.bad_address = a;
                job.bad_value = value;
                gdt::user_return(1);
            }
            a += PAGE;
        }
    }
    gdt::user_return(0)
}

fn main(boot: &rt::BootInfo) -> u8 {
    let image_start = &raw const __image_start as u64;
    let image_end = (&raw const __image_end as u64).next_multiple_of(PAGE);

    // SAFETY: the BSP is the only CPU, and the CPL-3 code runs only after this setup.
    let job = unsafe { &mut *JOB.get() };
    let mut ram_ranges = 0u32;
    let mut pages = 0u64;
    let mut highest = 0u64;
    let limit = MAX_GIB as u64 * GIB;
    let mut add = |start: u64, end: u64, job: &mut Job| {
        if start < end && job.count < MAX_RANGES {
            job.ranges[job.count] = Range { start, end };
            job.count += 1;
            pages += (end - start) / PAGE;
        }
    };
    for e in boot.e820.iter().filter(|e| e.kind == E820_RAM) {
        let start = e.addr.next_multiple_of(PAGE).min(limit);
        let end = (e.addr + e.size).min(limit) & !(PAGE - 1);
        if start >= end {
            continue;
        }
        ram_ranges += 1;
        highest = highest.max(end - 1);
        // Leave out the image (code, data, stacks, page tables, this very job).
        add(start, end.min(image_start), job);
        add(start.max(image_end), end, job);
    }
    if boot
        .e820
        .iter()
        .any(|e| e.kind == E820_RAM && e.addr + e.size > limit)
    {
        say!("memory: RAM above ", MAX_GIB, " GiB is not tested");
    }

    // Identity map [0, max(4 GiB, top of RAM)) with user-accessible 2 MiB pages.
    let gib = (highest / GIB + 1).clamp(4, MAX_GIB as u64) as usize;
    const USER_TABLE: u64 = 0x7; // present | writable | user
    const USER_2M: u64 = 0x87; // present | writable | user | 2 MiB
    // SAFETY: these tables are the BSP's statics; volatile stores keep the loop scalar (CPL 0
    // may be emulated, and not every SSE instruction is).
    unsafe {
        let pml4 = PML4.get() as *mut u64;
        let pdpt = PDPT.get() as *mut u64;
        let pds = PDS.get() as *mut u64;
        pml4.write_volatile(pdpt as u64 | USER_TABLE);
        for g in 0..gib {
            pdpt.add(g)
                .write_volatile(pds.add(512 * g) as u64 | USER_TABLE);
            for i in 0..512 {
                let address = (g as u64) << 30 | (i as u64) << 21;
                pds.add(512 * g + i).write_volatile(address | USER_2M);
            }
        }
        asm!("mov cr3, {}", in(reg) pml4 as u64, options(nostack));
    }

    idt::init();
    gdt::init_user_mode();
    let stack_top = USER_STACK.get() as u64 + 16384;
    // SAFETY: `user_main` ends with `user_return`; everything it touches is mapped for CPL 3.
    let status = unsafe { gdt::enter_user(user_main, JOB.get() as u64, stack_top) };
    if status != 0 {
        say!(
            "memory: mismatch at ",
            Hex(job.bad_address),
            ": read ",
            Hex(job.bad_value),
            ", expected ",
            Hex(pattern(job.bad_address))
        );
        return 1;
    }
    say!(
        "memory: verified ",
        pages,
        " pages (",
        pages * PAGE >> 20,
        " MiB) in ",
        ram_ranges,
        " ranges, highest address ",
        Hex(highest)
    );
    0
}
