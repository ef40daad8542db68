//! The differential suite: generated sequences and hand-written cases, run on KVM and on the
//! software CPU, compared. See `cpu_diff::suite` for the environment variables.

use cpu_diff::suite::{Config, Harness, run_generated, run_handwritten};

/// Opens both sides, or says why the suite cannot run here.
fn harness() -> Option<Harness> {
    match Harness::new() {
        Ok(h) => Some(h),
        Err(e) => {
            let mut msg = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                msg.push_str(&format!(": {s}"));
                src = s.source();
            }
            println!("differential: skipped: {msg}");
            None
        }
    }
}

#[test]
fn generated_sequences_match_the_silicon() {
    let Some(mut h) = harness() else { return };
    let cfg = Config::from_env();
    let report = run_generated(&mut h, &cfg).expect("KVM runs the cases");
    let what = format!("generated sequences (seed {:#x})", cfg.seed);
    print!("{}", report.summary(&what));
    for m in &report.mismatches {
        println!("{m}");
    }
    assert!(report.clean(), "{}", report.summary(&what));
    assert!(report.compared > 0 || cfg.cases == 0);
}

#[test]
fn handwritten_cases_match_the_silicon() {
    let Some(mut h) = harness() else { return };
    let all = Config::from_env().all_templates;
    let report = run_handwritten(&mut h, all).expect("KVM runs the cases");
    print!("{}", report.summary("hand-written cases"));
    for m in &report.mismatches {
        println!("{m}");
    }
    assert!(report.clean(), "{}", report.summary("hand-written cases"));
}
