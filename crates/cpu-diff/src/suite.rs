//! Running many cases on both sides, counting, and reporting.
//!
//! Environment (all optional):
//! - `POPEK_DIFF_SEED`: the seed (decimal or 0x-hex); default [`DEFAULT_SEED`].
//! - `POPEK_DIFF_CASES`: how many generated cases; default [`DEFAULT_CASES`].
//! - `POPEK_DIFF_CASE`: run only this case index of the seed (to re-run a reported mismatch).
//! - `POPEK_DIFF_ALL=1`: include the templates in [`crate::templates::EXCLUDED`].
//! - `POPEK_DIFF_TEMPLATES=a,b`: draw only from these templates (names as in `templates::all`).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::{Duration, Instant};

use crate::case::{CaseInput, End};
use crate::compare::{diff, flag_names};
use crate::generator::{disassemble, generate};
use crate::kvm_side::{KvmSide, KvmSideError};
use crate::soft_side::SoftSide;
use crate::templates::{self, Class, Template};

/// The seed when none is given: fixed, so every run compares the same cases.
pub const DEFAULT_SEED: u64 = 0x5eed_d1ff_0001;
/// Generated cases per run when none is given.
pub const DEFAULT_CASES: u64 = 30_000;
/// Mismatches shown in full; the rest are counted.
const SHOWN: usize = 10;

/// What to run, from the environment.
#[derive(Debug, Clone)]
pub struct Config {
    /// The seed.
    pub seed: u64,
    /// Number of generated cases.
    pub cases: u64,
    /// Only this case index.
    pub only: Option<u64>,
    /// Include excluded templates.
    pub all_templates: bool,
    /// Draw only from these templates, if set.
    pub only_templates: Option<Vec<String>>,
}

fn parse(v: &str) -> Option<u64> {
    match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => v.parse().ok(),
    }
}

impl Config {
    /// Reads `POPEK_DIFF_*`; malformed values fall back to the defaults.
    pub fn from_env() -> Self {
        let var = |name: &str| std::env::var(name).ok().and_then(|v| parse(&v));
        Config {
            seed: var("POPEK_DIFF_SEED").unwrap_or(DEFAULT_SEED),
            cases: var("POPEK_DIFF_CASES").unwrap_or(DEFAULT_CASES),
            only: var("POPEK_DIFF_CASE"),
            all_templates: std::env::var("POPEK_DIFF_ALL").is_ok_and(|v| v == "1"),
            only_templates: std::env::var("POPEK_DIFF_TEMPLATES")
                .ok()
                .map(|v| v.split(',').map(|s| s.trim().to_string()).collect()),
        }
    }
}

/// Counts and findings of a run.
#[derive(Debug, Default)]
pub struct Report {
    /// Cases run on both sides and compared.
    pub compared: u64,
    /// Cases whose states differ: full reports.
    pub mismatches: Vec<String>,
    /// Number of mismatching cases.
    pub mismatch_count: u64,
    /// Cases the software CPU stopped on an unimplemented instruction, by instruction text.
    pub unimplemented: BTreeMap<String, u64>,
    /// Cases the silicon side could not run (emulation failure, time-out), with a reason each.
    pub host_failures: BTreeMap<String, u64>,
    /// Cases not compared because an instruction read a flag left undefined.
    pub tainted: u64,
    /// Compared cases per class.
    pub per_class: BTreeMap<Class, u64>,
    /// Wall time.
    pub elapsed: Duration,
    /// Time spent in KVM.
    pub kvm_time: Duration,
    /// Time spent in the software CPU.
    pub soft_time: Duration,
}

impl Report {
    /// True when there is nothing to fix: no mismatch, no unimplemented instruction.
    pub fn clean(&self) -> bool {
        self.mismatch_count == 0 && self.unimplemented.is_empty()
    }

    /// The summary lines.
    pub fn summary(&self, what: &str) -> String {
        let mut s = String::new();
        let per_sec = self.compared as f64 / self.elapsed.as_secs_f64().max(1e-9);
        let _ = writeln!(
            s,
            "differential: {what}: compared {} cases, {} mismatches, {} unimplemented, {} host \
             failures, {} skipped (undefined flag read) in {:.1?} ({per_sec:.0} cases/s; KVM \
             {:.1?}, software CPU {:.1?})",
            self.compared,
            self.mismatch_count,
            self.unimplemented.values().sum::<u64>(),
            self.host_failures.values().sum::<u64>(),
            self.tainted,
            self.elapsed,
            self.kvm_time,
            self.soft_time,
        );
        if !self.per_class.is_empty() {
            let classes: Vec<String> = self
                .per_class
                .iter()
                .map(|(c, n)| format!("{c:?} {n}"))
                .collect();
            let _ = writeln!(s, "differential: cases per class: {}", classes.join(", "));
        }
        for (text, n) in &self.unimplemented {
            let _ = writeln!(s, "differential: unimplemented in {n} cases: {text}");
        }
        for (text, n) in &self.host_failures {
            let _ = writeln!(s, "differential: host could not run {n} cases: {text}");
        }
        s
    }
}

/// Both sides, ready to run cases.
pub struct Harness {
    kvm: KvmSide,
    soft: SoftSide,
}

impl Harness {
    /// Opens KVM (on the calling thread) and builds both machines.
    pub fn new() -> Result<Self, KvmSideError> {
        Ok(Harness {
            kvm: KvmSide::new()?,
            soft: SoftSide::new(),
        })
    }

    /// Runs one case on both sides and adds the outcome to `report`. `label` names the case in
    /// a mismatch report (with how to re-run it).
    pub fn compare(
        &mut self,
        case: &CaseInput,
        label: &str,
        classes: &[Class],
        report: &mut Report,
    ) -> Result<End, KvmSideError> {
        let t = Instant::now();
        let kvm = self.kvm.run(case)?;
        report.kvm_time += t.elapsed();
        let t = Instant::now();
        let (soft, undef) = self.soft.run(case);
        report.soft_time += t.elapsed();
        if let End::Other(reason) = &kvm.end {
            let key = reason.split(" at RIP").next().unwrap_or(reason).to_string();
            *report.host_failures.entry(key).or_default() += 1;
            return Ok(kvm.end);
        }
        if let End::Unimplemented(text) = &soft.end {
            // Group by the instruction's text without its address.
            let key = text
                .split('`')
                .nth(1)
                .map(|m| m.split_whitespace().next().unwrap_or(m).to_string())
                .unwrap_or_else(|| text.clone());
            *report.unimplemented.entry(key).or_default() += 1;
            return Ok(kvm.end);
        }
        if undef.tainted {
            report.tainted += 1;
            return Ok(kvm.end);
        }
        report.compared += 1;
        for c in classes {
            *report.per_class.entry(*c).or_default() += 1;
        }
        let lines = diff(&kvm, &soft, &undef);
        if !lines.is_empty() {
            report.mismatch_count += 1;
            if report.mismatches.len() < SHOWN {
                report.mismatches.push(describe(case, label, &lines));
            }
        }
        Ok(kvm.end)
    }
}

/// A full mismatch report: the case, its code, its initial state and the differences.
fn describe(case: &CaseInput, label: &str, lines: &[String]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "MISMATCH in {label} [{}]", case.name);
    let _ = writeln!(s, "  code:");
    s.push_str(&disassemble(&case.code));
    let names = [
        "rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12",
        "r13", "r14", "r15",
    ];
    let _ = write!(s, "  initial:");
    for (i, n) in names.iter().enumerate() {
        if i % 4 == 0 {
            let _ = write!(s, "\n   ");
        }
        let _ = write!(s, " {n}={:#x}", case.gpr[i]);
    }
    let _ = writeln!(
        s,
        "\n    rflags={:#x} ({}) mxcsr={:#x} fcw={:#x}",
        case.rflags,
        flag_names(case.rflags),
        case.mxcsr,
        case.fcw
    );
    let used_xmm: Vec<String> = (0..16)
        .filter(|i| case.name.contains("sse") || *i < 2)
        .map(|i| format!("xmm{i}={:#x}", case.xmm[i]))
        .collect();
    if case.name.contains("sse") {
        let _ = writeln!(s, "    {}", used_xmm.join(" "));
    }
    let _ = writeln!(s, "  differences (silicon vs software):");
    for l in lines {
        let _ = writeln!(s, "    {l}");
    }
    s
}

/// The templates a run draws from: all those this host can run, less the excluded ones unless
/// `all` is set.
pub fn pool(all: bool, pvm: bool) -> Vec<Template> {
    templates::all()
        .into_iter()
        .filter(|t| t.feature.present())
        .filter(|t| !(pvm && t.not_on_pvm))
        .filter(|t| all || !templates::EXCLUDED.iter().any(|(name, _)| *name == t.name))
        .collect()
}

/// Runs the generated cases `cfg` asks for.
pub fn run_generated(h: &mut Harness, cfg: &Config) -> Result<Report, KvmSideError> {
    let pvm = h.kvm.kind == hypervisor::kvm::HostKvmKind::Pvm;
    let mut pool = pool(cfg.all_templates || cfg.only_templates.is_some(), pvm);
    if let Some(only) = &cfg.only_templates {
        pool.retain(|t| only.iter().any(|n| n == t.name));
    }
    if pool.is_empty() {
        return Ok(Report::default());
    }
    let mut report = Report::default();
    let start = Instant::now();
    let indices: Box<dyn Iterator<Item = u64>> = match cfg.only {
        Some(i) => Box::new(std::iter::once(i)),
        None => Box::new(0..cfg.cases),
    };
    for i in indices {
        let g = generate(cfg.seed, i, &pool);
        let label = format!(
            "case {i} of seed {:#x} (re-run: POPEK_DIFF_SEED={:#x} POPEK_DIFF_CASE={i}{}{})",
            cfg.seed,
            cfg.seed,
            if cfg.all_templates {
                " POPEK_DIFF_ALL=1"
            } else {
                ""
            },
            match &cfg.only_templates {
                Some(t) => format!(" POPEK_DIFF_TEMPLATES={}", t.join(",")),
                None => String::new(),
            }
        );
        h.compare(&g.input, &label, &g.classes, &mut report)?;
    }
    report.elapsed = start.elapsed();
    Ok(report)
}

/// Runs the hand-written cases (all of them, with `all`, even the excluded ones).
pub fn run_handwritten(h: &mut Harness, all: bool) -> Result<Report, KvmSideError> {
    let pvm = h.kvm.kind == hypervisor::kvm::HostKvmKind::Pvm;
    let mut report = Report::default();
    let start = Instant::now();
    for hc in crate::handwritten::all() {
        if pvm && hc.not_on_pvm {
            continue;
        }
        if !all && templates::EXCLUDED.iter().any(|(n, _)| *n == hc.input.name) {
            continue;
        }
        let label = format!("hand-written case `{}`", hc.input.name);
        let end = h.compare(&hc.input, &label, &[hc.class], &mut report)?;
        // A case that does not reach its end on the silicon tests something else than it says.
        if end != hc.expect && !matches!(end, End::Other(_)) {
            report.mismatch_count += 1;
            report.mismatches.push(format!(
                "BROKEN CASE {label}: the silicon ended with {end}, the case expects {}",
                hc.expect
            ));
        }
    }
    report.elapsed = start.elapsed();
    Ok(report)
}
