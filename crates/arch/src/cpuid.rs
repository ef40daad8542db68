//! The CPUID a guest sees: what the engine supports, with the VM's topology, and with the
//! features the user hid.

use hypervisor::CpuidEntry;

/// Errors of CPUID policy.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CpuidError {
    /// A feature name popek does not know.
    #[error("Unknown CPU feature '{name}'; known features: {known}")]
    UnknownFeature {
        /// The name given.
        name: String,
        /// The names popek knows.
        known: String,
    },
}

/// Which output register of a leaf a feature bit lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reg {
    Eax,
    Ebx,
    Ecx,
    Edx,
}

/// A CPU feature that can be hidden from the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuFeature {
    name: &'static str,
    leaf: u32,
    subleaf: u32,
    reg: Reg,
    bit: u8,
    /// Features that make no sense without this one, hidden with it.
    implies: &'static [&'static str],
}

const AVX_FAMILY: &[&str] = &["avx", "avx2", "avx512f", "fma", "f16c"];

/// Features popek can hide, by the names Linux's /proc/cpuinfo uses.
const FEATURES: &[CpuFeature] = &[
    feature("x2apic", 1, 0, Reg::Ecx, 21, &[]),
    feature("tsc-deadline", 1, 0, Reg::Ecx, 24, &[]),
    feature("xsave", 1, 0, Reg::Ecx, 26, AVX_FAMILY),
    feature(
        "avx",
        1,
        0,
        Reg::Ecx,
        28,
        &["avx2", "avx512f", "fma", "f16c"],
    ),
    feature("fma", 1, 0, Reg::Ecx, 12, &[]),
    feature("f16c", 1, 0, Reg::Ecx, 29, &[]),
    feature("rdrand", 1, 0, Reg::Ecx, 30, &[]),
    feature("pcid", 1, 0, Reg::Ecx, 17, &["invpcid"]),
    feature("cx16", 1, 0, Reg::Ecx, 13, &[]),
    feature("monitor", 1, 0, Reg::Ecx, 3, &[]),
    feature("hypervisor", 1, 0, Reg::Ecx, 31, &[]),
    feature("smep", 7, 0, Reg::Ebx, 7, &[]),
    feature("smap", 7, 0, Reg::Ebx, 20, &[]),
    feature("avx2", 7, 0, Reg::Ebx, 5, &[]),
    feature("invpcid", 7, 0, Reg::Ebx, 10, &[]),
    feature("rdseed", 7, 0, Reg::Ebx, 18, &[]),
    feature("avx512f", 7, 0, Reg::Ebx, 16, &[]),
    feature("la57", 7, 0, Reg::Ecx, 16, &[]),
    feature("pdpe1gb", 0x8000_0001, 0, Reg::Edx, 26, &[]),
    feature("rdtscp", 0x8000_0001, 0, Reg::Edx, 27, &[]),
    feature("kvmclock", 0x4000_0001, 0, Reg::Eax, 3, &["kvmclock-old"]),
    feature("kvmclock-old", 0x4000_0001, 0, Reg::Eax, 0, &[]),
];

const fn feature(
    name: &'static str,
    leaf: u32,
    subleaf: u32,
    reg: Reg,
    bit: u8,
    implies: &'static [&'static str],
) -> CpuFeature {
    CpuFeature {
        name,
        leaf,
        subleaf,
        reg,
        bit,
        implies,
    }
}

impl CpuFeature {
    /// Looks a feature up by name.
    pub fn by_name(name: &str) -> Result<CpuFeature, CpuidError> {
        FEATURES
            .iter()
            .copied()
            .find(|f| f.name == name)
            .ok_or_else(|| CpuidError::UnknownFeature {
                name: name.to_string(),
                known: FEATURES
                    .iter()
                    .map(|f| f.name)
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    /// The feature's name.
    pub fn name(&self) -> &'static str {
        self.name
    }
}

/// The topology and feature choices for one vCPU's CPUID.
#[derive(Debug, Clone)]
pub struct CpuidPolicy {
    /// Number of vCPUs in the VM (one package, one thread per core).
    pub vcpus: u32,
    /// Features hidden from the guest.
    pub hidden: Vec<CpuFeature>,
}

fn reg_mut(e: &mut CpuidEntry, reg: Reg) -> &mut u32 {
    match reg {
        Reg::Eax => &mut e.eax,
        Reg::Ebx => &mut e.ebx,
        Reg::Ecx => &mut e.ecx,
        Reg::Edx => &mut e.edx,
    }
}

impl CpuidPolicy {
    /// The CPUID of vCPU `apic_id`, derived from what the engine `supported`.
    pub fn for_vcpu(&self, supported: &[CpuidEntry], apic_id: u32) -> Vec<CpuidEntry> {
        let mut hidden: Vec<CpuFeature> = Vec::new();
        let mut queue = self.hidden.clone();
        while let Some(f) = queue.pop() {
            if !hidden.contains(&f) {
                queue.extend(f.implies.iter().filter_map(|n| CpuFeature::by_name(n).ok()));
                hidden.push(f);
            }
        }
        let hide_xsave = hidden.iter().any(|f| f.name == "xsave");
        // Bits needed to hold a core ID: the shift of the package level in leaf 0xb.
        let core_bits = 32 - self.vcpus.saturating_sub(1).leading_zeros();
        let mut out = Vec::with_capacity(supported.len());
        for &entry in supported {
            let mut e = entry;
            match e.function {
                // Without XSAVE the XSAVE state leaf must go too.
                0xd if hide_xsave => continue,
                1 => {
                    e.ebx = (e.ebx & 0x0000_ffff) | (apic_id << 24) | ((self.vcpus & 0xff) << 16);
                    // CPUID.1:ECX.HYPERVISOR tells the guest it runs in a VM.
                    e.ecx |= 1 << 31;
                    if self.vcpus > 1 {
                        e.edx |= 1 << 28;
                    }
                }
                4 => {
                    // Cores per package minus one, in EAX[31:26]; each cache is per core.
                    e.eax = (e.eax & 0x03ff_ffff & !(0xfff << 14)) | ((self.vcpus - 1) << 26);
                }
                0xb | 0x1f => {
                    e.edx = apic_id;
                    match e.index {
                        0 => {
                            e.eax = 0;
                            e.ebx = 1;
                            e.ecx = 1 << 8;
                        }
                        1 => {
                            e.eax = core_bits;
                            e.ebx = self.vcpus;
                            e.ecx = (2 << 8) | 1;
                        }
                        n => {
                            e.eax = 0;
                            e.ebx = 0;
                            e.ecx = n;
                        }
                    }
                }
                _ => {}
            }
            for f in &hidden {
                if f.leaf == e.function && f.subleaf == e.index {
                    *reg_mut(&mut e, f.reg) &= !(1 << f.bit);
                }
            }
            out.push(e);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn supported() -> Vec<CpuidEntry> {
        vec![
            CpuidEntry {
                function: 1,
                ecx: (1 << 26) | (1 << 28) | (1 << 21),
                ..Default::default()
            },
            CpuidEntry {
                function: 7,
                ebx: 1 << 5,
                ..Default::default()
            },
            CpuidEntry {
                function: 0xb,
                index: 0,
                flags: 1,
                ..Default::default()
            },
            CpuidEntry {
                function: 0xb,
                index: 1,
                flags: 1,
                ..Default::default()
            },
            CpuidEntry {
                function: 0xd,
                index: 0,
                flags: 1,
                eax: 7,
                ..Default::default()
            },
        ]
    }

    #[test]
    fn topology_names_the_vcpu_and_the_count() {
        let policy = CpuidPolicy {
            vcpus: 4,
            hidden: vec![],
        };
        let c = policy.for_vcpu(&supported(), 3);
        assert_eq!(c[0].ebx >> 24, 3);
        assert_eq!((c[0].ebx >> 16) & 0xff, 4);
        assert_ne!(c[0].ecx & (1 << 31), 0, "hypervisor bit");
        assert_eq!((c[3].eax, c[3].ebx, c[3].edx), (2, 4, 3));
    }

    #[test]
    fn hiding_xsave_hides_avx_family_and_leaf_0xd() {
        let policy = CpuidPolicy {
            vcpus: 1,
            hidden: vec![CpuFeature::by_name("xsave").unwrap()],
        };
        let c = policy.for_vcpu(&supported(), 0);
        assert_eq!(c[0].ecx & ((1 << 26) | (1 << 28)), 0);
        assert_ne!(c[0].ecx & (1 << 21), 0, "x2apic stays");
        assert_eq!(c[1].ebx & (1 << 5), 0, "avx2 goes with xsave");
        assert!(c.iter().all(|e| e.function != 0xd));
    }

    #[test]
    fn unknown_features_are_refused_with_the_known_list() {
        let err = CpuFeature::by_name("warp-drive").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("Unknown CPU feature 'warp-drive'; known features: x2apic")
        );
    }
}
