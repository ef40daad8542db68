//! Project automation: `cargo xtask <task>`.
//!
//! - `guest`: assemble the default Linux guest (cached in the user cache directory).
//! - `test`: prepare the host (Debian packages, the default guest), then run the whole suite.
//! - `bench <name>`: run a benchmark under popek and under its peer, and print the ratio.

mod bench;
mod host;

use anyhow::{Context, bail};

const USAGE: &str = concat!(
    "usage: cargo xtask <guest | test [TESTNAME] | ",
    "bench <startup | cpu | linux-boot | block [CASE] | api | snapshot>>"
);

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("guest") => {
            host::ensure_apt_lists()?;
            let guest = host::default_guest()?;
            println!("{}", guest.dir.display());
            Ok(())
        }
        Some("test") => test(&args[1..]),
        Some("bench") => match args.get(1).map(String::as_str) {
            Some("startup") => bench::startup::run(),
            Some("cpu") => bench::cpu::run(),
            Some("linux-boot") => bench::linux_boot::run(),
            Some("block") => bench::block::run(args.get(2).map(String::as_str)),
            Some("api") => bench::api::run(),
            Some("snapshot") => bench::snapshot::run(),
            Some(other) => bail!("unknown benchmark '{other}'\n{USAGE}"),
            None => bail!("which benchmark?\n{USAGE}"),
        },
        Some(other) => bail!("unknown task '{other}'\n{USAGE}"),
        None => bail!("{USAGE}"),
    }
}

/// The README's test command: everything the suite needs, then the suite.
fn test(extra: &[String]) -> anyhow::Result<()> {
    host::ensure_apt_lists()?;
    // The device tests: qemu-img checks qcow2 images, ip builds bridges in test namespaces.
    host::ensure_package("qemu-img", "qemu-utils")?;
    host::ensure_package("ip", "iproute2")?;
    // The API tests check docs/api/openapi.json with a real OpenAPI validator.
    host::ensure_pip_module("openapi_spec_validator", "openapi-spec-validator")?;
    host::default_guest()?;
    // --show-output prints what passing tests said: the reasons of the ones that skip.
    let status = std::process::Command::new(env!("CARGO"))
        .args(["test", "--workspace"])
        .args(extra)
        .args(["--", "--show-output"])
        .status()
        .context("cannot run cargo test")?;
    if !status.success() {
        bail!("tests failed ({status})");
    }
    Ok(())
}
