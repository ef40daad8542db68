//! `popek`: run virtual machines from the command line.
//!
//! The binary is glue: it parses flags into a [`vmm::VmRequest`], validates it, hands it to
//! [`vmm::run`] and turns the outcome into an exit status.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use vmm::{Accel, ClockConfig, SerialConfig, VmOutcome, VmRequest};

mod api_mode;
mod ctl;
mod disk;
mod restore;

/// Kernel command line when none is given: the console (and the early console) on COM1, reboot
/// through the keyboard
/// controller, and a panic that resets the machine rather than hanging it.
pub(crate) const DEFAULT_CMDLINE: &str = "console=ttyS0 earlyprintk=ttyS0 reboot=k panic=-1";

/// Exit status for errors in what the user gave (flags, files) or in the host's setup.
pub(crate) const EXIT_USAGE: u8 = 2;

#[derive(Parser)]
#[command(
    name = "popek",
    version,
    about = "Run virtual machines with KVM or popek's software CPU"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Boot a VM with its serial console on this terminal.
    Run(RunArgs),
    /// Manage the default Linux guest.
    Image {
        #[command(subcommand)]
        action: ImageAction,
    },
    /// Start a VMM with no VM, configured and booted through its REST API.
    Vmm(api_mode::VmmArgs),
    /// Talk to a running VMM's API.
    Ctl(ctl::CtlArgs),
    /// Resume a VM from a snapshot directory, in this process.
    Restore(restore::RestoreArgs),
    /// Work on snapshot directories.
    Snapshot {
        #[command(subcommand)]
        action: restore::SnapshotCommand,
    },
    /// Snapshots and rollback of a stopped VM's disk images (qcow2 overlays).
    Disk {
        #[command(subcommand)]
        action: disk::DiskCommand,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// Kernel to boot: an ELF (vmlinux, with or without a PVH entry) or a bzImage. Without it,
    /// popek boots its default Linux guest, assembling it on first use.
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// Initial ramdisk.
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// Kernel command line.
    #[arg(long, default_value = DEFAULT_CMDLINE)]
    cmdline: String,
    /// Number of vCPUs.
    #[arg(long, default_value_t = 1)]
    cpus: u32,
    /// Guest RAM, e.g. 512M or 2G.
    #[arg(long, default_value = "512M")]
    memory: String,
    /// Serial console: stdio, file:PATH or none.
    #[arg(long, default_value = "stdio", value_parser = parse_serial)]
    serial: SerialConfig,
    /// Hide a CPU feature from the guest (repeatable), e.g. --hide-cpu-feature xsave.
    #[arg(long = "hide-cpu-feature", value_name = "NAME")]
    hide_cpu_features: Vec<String>,
    /// CPU engine: kvm, emu (popek's software CPU) or auto (KVM when /dev/kvm is usable).
    #[arg(long, default_value = "auto", value_parser = parse_accel)]
    accel: Accel,
    /// Guest time: host, or instructions (1 ns per instruction the software CPU retires,
    /// skipping idle time: runs are deterministic with one vCPU; implies --accel emu).
    #[arg(long, default_value = "host", value_parser = parse_clock)]
    clock: ClockConfig,
    /// Attach a virtio disk (repeatable): PATH[,format=raw|qcow2][,readonly]. Without format, a
    /// qcow2 image is recognised by its header and anything else is raw.
    #[arg(long = "disk", value_name = "PATH[,OPTS]", value_parser = parse_disk)]
    disks: Vec<vmm::DiskConfig>,
    /// Attach a virtio NIC (repeatable): tap=NAME[,mac=MAC] opens or creates a tap;
    /// bridge=BR[,tap=NAME][,mac=MAC] creates a tap on a host bridge.
    #[arg(long = "net", value_name = "OPTS", value_parser = parse_net)]
    nets: Vec<vmm::NetConfig>,
    /// Attach a virtio-vsock device: cid=N,socket=PATH. Host programs connect to PATH (then
    /// send "CONNECT PORT\n"); guest connections to port P go to PATH_P.
    #[arg(long, value_name = "cid=N,socket=PATH", value_parser = parse_vsock)]
    vsock: Option<vmm::VsockConfig>,
    /// Attach a virtio entropy device fed from the host's getrandom.
    #[arg(long)]
    rng: bool,
    /// Say on stderr which engine runs the guest, and why.
    #[arg(long, short)]
    verbose: bool,
    /// Serve the REST API on this Unix socket while the VM runs.
    #[arg(long, value_name = "PATH")]
    api_socket: Option<PathBuf>,
    /// Take the VM from a JSON file with the API's schema (PUT /vm/config) instead of flags.
    #[arg(long, value_name = "FILE", conflicts_with_all = [
        "kernel", "initrd", "cmdline", "cpus", "memory", "hide_cpu_features", "accel", "disks",
        "nets", "vsock", "rng",
    ])]
    config: Option<PathBuf>,
    #[command(flatten)]
    log: api_mode::LogArgs,
}

#[derive(Subcommand)]
enum ImageAction {
    /// Assemble the default guest from Debian's packages (if not cached) and print where it is.
    Build,
}

fn parse_serial(s: &str) -> Result<SerialConfig, String> {
    s.parse().map_err(|e: vmm::ConfigError| e.to_string())
}

fn parse_disk(s: &str) -> Result<vmm::DiskConfig, String> {
    s.parse()
        .map_err(|e: vmm::device_config::DeviceConfigError| e.to_string())
}

fn parse_net(s: &str) -> Result<vmm::NetConfig, String> {
    s.parse()
        .map_err(|e: vmm::device_config::DeviceConfigError| e.to_string())
}

fn parse_vsock(s: &str) -> Result<vmm::VsockConfig, String> {
    s.parse()
        .map_err(|e: vmm::device_config::DeviceConfigError| e.to_string())
}

fn parse_accel(s: &str) -> Result<Accel, String> {
    s.parse().map_err(|e: vmm::ConfigError| e.to_string())
}

fn parse_clock(s: &str) -> Result<ClockConfig, String> {
    s.parse().map_err(|e: vmm::ConfigError| e.to_string())
}

fn progress(step: &str) {
    eprintln!("popek: {step}");
}

/// Finds or assembles the default guest. On a fresh host apt may have no package lists yet: as
/// root, popek fetches them (that is what the user would do next); otherwise the error says how.
fn ensure_default_guest() -> anyhow::Result<guest_image::DefaultGuest> {
    use guest_image::{Error, apt};
    match guest_image::ensure_default_guest(&mut progress) {
        Err(Error::Apt(apt::Error::ListsMissing { .. })) if is_root() => {
            progress("apt has no package lists yet: running apt-get update");
            let status = std::process::Command::new("apt-get")
                .args(["update", "-qq"])
                .status()
                .context("Cannot run apt-get update")?;
            anyhow::ensure!(status.success(), "apt-get update failed ({status})");
            Ok(guest_image::ensure_default_guest(&mut progress)?)
        }
        other => Ok(other?),
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// What `popek run` boots when no kernel is given.
///
/// Debian's kernel cannot finish booting on the paravirtual `kvm_pvm` (its kernel mode is
/// emulated by the host and some instructions fail there), so on such a host `--accel auto`
/// boots the default guest on popek's software CPU instead, and `-v` says so.
fn default_guest(args: &mut RunArgs) -> anyhow::Result<()> {
    let guest = ensure_default_guest().context("Cannot assemble the default guest")?;
    args.kernel = Some(guest.vmlinux);
    if args.initrd.is_none() {
        args.initrd = Some(guest.initramfs);
    }
    if args.accel == Accel::Auto
        && hypervisor::kvm::HostKvmKind::detect() == hypervisor::kvm::HostKvmKind::Pvm
    {
        if args.verbose {
            eprintln!(
                "popek: this host's KVM is kvm_pvm, which cannot boot Linux: the default guest runs on the software CPU (--accel kvm to try anyway)"
            );
        }
        args.accel = Accel::Emu;
    }
    Ok(())
}

fn run(mut args: RunArgs) -> anyhow::Result<VmOutcome> {
    args.log.init()?;
    let verbose = args.verbose;
    if let Some(file) = &args.config {
        let config = api_mode::read_config(file)?;
        let mut request = vmm::api_config::request(&config, DEFAULT_CMDLINE)
            .with_context(|| format!("{}", file.display()))?;
        request.clock = args.clock;
        return api_mode::run_request(request, args.api_socket.as_deref(), verbose);
    }
    if args.kernel.is_none() {
        default_guest(&mut args)?;
    }
    let request = VmRequest {
        kernel: args.kernel.unwrap_or_default(),
        initrd: args.initrd,
        cmdline: args.cmdline,
        cpus: args.cpus,
        memory: args.memory,
        serial: args.serial,
        hide_cpu_features: args.hide_cpu_features,
        accel: args.accel,
        clock: args.clock,
        disks: args.disks,
        nets: args.nets,
        vsock: args.vsock,
        rng: args.rng,
    };
    api_mode::run_request(request, args.api_socket.as_deref(), verbose)
}

/// Runs the VM `request` describes, without an API.
pub(crate) fn run_plain(request: VmRequest, verbose: bool) -> anyhow::Result<VmOutcome> {
    let host_ram = vmm::config::host_ram().context("Cannot read the host's RAM size")?;
    let config = request.validate(host_ram)?;
    let engine = vmm::Engine::select(&config)?;
    if verbose {
        match engine.fallback_reason() {
            Some(why) => eprintln!("popek: engine {} (KVM unusable: {why})", engine.name()),
            None => eprintln!("popek: engine {}", engine.name()),
        }
    }
    let report = vmm::run_on(&config, engine)?;
    if verbose {
        eprintln!(
            "popek: {} instruction(s) ran on the software CPU as KVM's emulation fallback",
            report.total_fallbacks()
        );
    }
    Ok(report.outcome)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => match run(args) {
            Ok(outcome) => {
                match &outcome {
                    VmOutcome::EmulationFailure { .. } | VmOutcome::Failed(_) | VmOutcome::Quit => {
                        eprintln!("popek: {outcome}");
                    }
                    _ => {}
                }
                ExitCode::from(outcome.exit_status() as u8)
            }
            Err(e) => {
                eprintln!("popek: {e:#}");
                ExitCode::from(EXIT_USAGE)
            }
        },
        Command::Vmm(args) => match api_mode::serve_empty(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("popek: {e:#}");
                ExitCode::from(EXIT_USAGE)
            }
        },
        Command::Ctl(args) => ctl::main(args),
        Command::Restore(args) => match restore::run(args) {
            Ok(outcome) => {
                if matches!(
                    outcome,
                    VmOutcome::EmulationFailure { .. } | VmOutcome::Failed(_)
                ) {
                    eprintln!("popek: {outcome}");
                }
                ExitCode::from(outcome.exit_status() as u8)
            }
            Err(e) => {
                eprintln!("popek: {e:#}");
                ExitCode::from(EXIT_USAGE)
            }
        },
        Command::Snapshot { action } => match restore::snapshot(action) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("popek: {e:#}");
                ExitCode::from(EXIT_USAGE)
            }
        },
        Command::Disk { action } => disk::main(action),
        Command::Image {
            action: ImageAction::Build,
        } => match guest_image::ensure_default_guest(&mut progress) {
            Ok(guest) => {
                println!("{}", guest.dir.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("popek: cannot assemble the default guest: {e}");
                ExitCode::FAILURE
            }
        },
    }
}
