//! The CPUID the software CPU can present: the x86-64 baseline, nothing it does not implement.
//!
//! RDRAND and RDSEED are present: without them a Linux guest seeds its random-number
//! generator from timer jitter, which a software CPU makes very slow.
//!
//! Deliberately absent: x2APIC and the TSC-deadline timer (the local APIC model has neither),
//! XSAVE and AVX, and the SSE extensions past SSE2. The topology leaf 0xb is present so that
//! the VMM's policy can fill in the APIC IDs. Leaves 0x15 and 0x16 give the TSC's and the APIC
//! bus's frequency (both 1 GHz, one tick per nanosecond of the VM's clock), so that a guest need
//! not calibrate them against the PIT: calibration loops would measure the interpreter's speed,
//! not time.

use crate::{CPUID_FLAG_SIGNIFICANT_INDEX, CpuidEntry};

/// Leaf 1 EDX: FPU, PSE, TSC, MSR, PAE, CX8, APIC, SEP, MTRR, PGE, CMOV, PAT, PSE36, CLFSH, MMX,
/// FXSR, SSE, SSE2.
const LEAF1_EDX: u32 = (1 << 0)
    | (1 << 3)
    | (1 << 4)
    | (1 << 5)
    | (1 << 6)
    | (1 << 8)
    | (1 << 9)
    | (1 << 11)
    | (1 << 12)
    | (1 << 13)
    | (1 << 15)
    | (1 << 16)
    | (1 << 17)
    | (1 << 19)
    | (1 << 23)
    | (1 << 24)
    | (1 << 25)
    | (1 << 26);
/// Leaf 0x80000001 EDX: SYSCALL, NX, LM.
const EXT1_EDX: u32 = (1 << 11) | (1 << 20) | (1 << 29);
/// Family 6, model 0x3a, stepping 9 (an Ivy Bridge signature: old enough to promise nothing
/// beyond the features above).
const SIGNATURE: u32 = 0x0003_06a9;
/// The brand string of leaves 0x80000002-4.
const BRAND: &[u8; 48] =
    b"popek software CPU\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0";

fn leaf(function: u32, regs: [u32; 4]) -> CpuidEntry {
    CpuidEntry {
        function,
        index: 0,
        flags: 0,
        eax: regs[0],
        ebx: regs[1],
        ecx: regs[2],
        edx: regs[3],
    }
}

fn word(bytes: &[u8]) -> u32 {
    u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
}

/// The leaves the engine supports, before the VMM's topology and feature policy.
pub(super) fn supported() -> Vec<CpuidEntry> {
    let vendor = b"GenuineIntel";
    let mut out = vec![
        leaf(
            0,
            [
                0x16,
                word(&vendor[0..4]),
                word(&vendor[8..12]),
                word(&vendor[4..8]),
            ],
        ),
        // EBX: CLFLUSH line size 8 quadwords; the VMM adds the APIC ID and CPU count.
        // ECX: RDRAND, which a guest kernel seeds its random-number generator from.
        leaf(1, [SIGNATURE, 8 << 8, 1 << 30, LEAF1_EDX]),
        // EBX: RDSEED.
        leaf(7, [0, 1 << 18, 0, 0]),
    ];
    for index in 0..2 {
        out.push(CpuidEntry {
            function: 0xb,
            index,
            flags: CPUID_FLAG_SIGNIFICANT_INDEX,
            ..Default::default()
        });
    }
    // TSC = crystal (1 GHz) * 1 / 1.
    out.push(leaf(0x15, [1, 1, 1_000_000_000, 0]));
    // Base and maximum frequency 1000 MHz, bus (reference) frequency 1000 MHz.
    out.push(leaf(0x16, [1000, 1000, 1000, 0]));
    out.push(leaf(0x8000_0000, [0x8000_0008, 0, 0, 0]));
    out.push(leaf(0x8000_0001, [0, 0, 0, EXT1_EDX]));
    for (i, chunk) in BRAND.chunks(16).enumerate() {
        out.push(leaf(
            0x8000_0002 + i as u32,
            [
                word(&chunk[0..]),
                word(&chunk[4..]),
                word(&chunk[8..]),
                word(&chunk[12..]),
            ],
        ));
    }
    // 40 physical and 48 linear address bits.
    out.push(leaf(0x8000_0008, [0x3028, 0, 0, 0]));
    out
}

/// Looks `leaf`/`subleaf` up in `entries` as the CPU answers CPUID: a leaf above the highest
/// basic (or extended) one reads as the highest basic leaf, as Intel CPUs do; a missing leaf
/// within range, or in the hypervisor range 0x40000000-0x4fffffff, reads as zeros.
pub(super) fn lookup(entries: &[CpuidEntry], leaf: u32, subleaf: u32) -> [u32; 4] {
    let find = |function: u32, index: u32| {
        entries.iter().find(|e| {
            e.function == function
                && (e.flags & CPUID_FLAG_SIGNIFICANT_INDEX == 0 || e.index == index)
        })
    };
    let max_of = |base: u32| find(base, 0).map_or(base, |e| e.eax);
    let in_range = if leaf >= 0x8000_0000 {
        leaf <= max_of(0x8000_0000)
    } else if (0x4000_0000..0x5000_0000).contains(&leaf) {
        // The hypervisor range reads as zeros unless the VMM fills it.
        true
    } else {
        leaf <= max_of(0)
    };
    let entry = if in_range {
        find(leaf, subleaf)
    } else {
        find(max_of(0), subleaf)
    };
    entry.map_or([0; 4], |e| [e.eax, e.ebx, e.ecx, e.edx])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vendor_brand_and_long_mode_are_advertised() {
        let c = supported();
        let [_, b, c_, d] = lookup(&c, 0, 0);
        let mut vendor = Vec::new();
        for r in [b, d, c_] {
            vendor.extend_from_slice(&r.to_le_bytes());
        }
        assert_eq!(vendor, b"GenuineIntel");
        assert_ne!(lookup(&c, 0x8000_0001, 0)[3] & (1 << 29), 0, "LM");
        let brand: Vec<u8> = (0..3)
            .flat_map(|i| lookup(&c, 0x8000_0002 + i, 0))
            .flat_map(u32::to_le_bytes)
            .collect();
        assert!(brand.starts_with(b"popek software CPU\0"));
    }

    #[test]
    fn tsc_frequency_is_one_ghz() {
        let [den, num, crystal, _] = lookup(&supported(), 0x15, 0);
        assert_eq!(
            u64::from(crystal) * u64::from(num) / u64::from(den),
            1_000_000_000
        );
    }

    #[test]
    fn unimplemented_apic_features_are_not_advertised() {
        let ecx = lookup(&supported(), 1, 0)[2];
        assert_eq!(ecx & (1 << 21), 0, "x2APIC");
        assert_eq!(ecx & (1 << 24), 0, "TSC deadline");
        assert_eq!(ecx & (1 << 26), 0, "XSAVE");
    }

    #[test]
    fn leaves_out_of_range_read_as_the_highest_basic_leaf() {
        let c = supported();
        assert_eq!(lookup(&c, 0x20, 0), lookup(&c, 0x16, 0));
        assert_eq!(lookup(&c, 5, 0), [0; 4]);
        assert_eq!(lookup(&c, 0x4000_0000, 0), [0; 4]);
    }
}
