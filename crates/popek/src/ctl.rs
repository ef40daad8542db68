//! `popek ctl`: a client of a VMM's REST API.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use api::client::Client;
use api_types as wire;
use clap::Subcommand;

/// `popek ctl`.
#[derive(clap::Args)]
pub struct CtlArgs {
    /// The VMM's API socket.
    #[arg(long, value_name = "PATH")]
    socket: PathBuf,
    /// Print the API's JSON instead of text.
    #[arg(long)]
    json: bool,
    #[command(subcommand)]
    command: CtlCommand,
}

#[derive(Subcommand)]
enum CtlCommand {
    /// The VM's state and configuration.
    Info,
    /// Boot the configured VM.
    Boot,
    /// Stop the vCPUs.
    Pause,
    /// Restart the vCPUs.
    Resume,
    /// Stop the VM at once.
    Stop,
    /// Press the ACPI power button.
    Shutdown,
    /// Stop the VM and boot it again.
    Reboot,
    /// Counters: exits, fallbacks, devices, memory.
    Counters,
    /// The Prometheus metrics text.
    Metrics,
    /// Lifecycle events after sequence number SINCE.
    Events {
        /// Only events after this sequence number.
        #[arg(long, default_value_t = 0)]
        since: u64,
    },
    /// Write the VM into a new snapshot directory. A running VM is paused for the snapshot and
    /// resumed after it.
    Snapshot {
        /// The directory (new or empty).
        dir: PathBuf,
        /// Only the pages written since the VM's previous snapshot.
        #[arg(long)]
        diff: bool,
    },
    /// Restore a snapshot into this VMM (created or stopped).
    Restore {
        /// The snapshot directory.
        dir: PathBuf,
    },
    /// Set the whole configuration from a JSON file (before boot or when stopped).
    Configure {
        /// The file, with the schema of PUT /vm/config.
        file: PathBuf,
    },
    /// Add a disk (before boot or when stopped): PATH[,format=raw|qcow2][,readonly].
    AddDisk {
        /// The disk.
        spec: String,
    },
    /// Add a NIC (before boot or when stopped): tap=NAME[,mac=MAC] or bridge=BR[,...].
    AddNet {
        /// The NIC.
        spec: String,
    },
}

/// Runs the command; exit status 0 on success, 1 when the VMM refused, 2 on bad input or when
/// the VMM cannot be reached.
pub fn main(args: CtlArgs) -> ExitCode {
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("popek ctl: {e:#}");
            ExitCode::from(if e.downcast_ref::<Refused>().is_some() {
                1
            } else {
                crate::EXIT_USAGE
            })
        }
    }
}

/// The VMM answered with an error.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Refused(String);

fn call(client: &Client, method: &str, path: &str, body: Option<String>) -> anyhow::Result<String> {
    let r = client
        .request(method, path, body.as_deref())
        .context("Cannot reach the VMM")?;
    if !(200..300).contains(&r.status) {
        let msg = serde_json::from_str::<wire::ApiError>(&r.body)
            .map(|e| e.message)
            .unwrap_or(r.body);
        return Err(Refused(format!("{method} {path}: {} {msg}", r.status)).into());
    }
    Ok(r.body)
}

fn action(client: &Client, action: wire::Action) -> anyhow::Result<()> {
    let body = serde_json::to_string(&wire::ActionRequest { action })?;
    call(client, "POST", "/vm/actions", Some(body))?;
    Ok(())
}

fn run(args: &CtlArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.socket);
    let json = args.json;
    match &args.command {
        CtlCommand::Info => {
            let body = call(&client, "GET", "/vm", None)?;
            if json {
                println!("{body}");
            } else {
                print_info(&serde_json::from_str(&body)?);
            }
        }
        CtlCommand::Boot => action(&client, wire::Action::Boot)?,
        CtlCommand::Pause => action(&client, wire::Action::Pause)?,
        CtlCommand::Resume => action(&client, wire::Action::Resume)?,
        CtlCommand::Stop => action(&client, wire::Action::Stop)?,
        CtlCommand::Shutdown => action(&client, wire::Action::Shutdown)?,
        CtlCommand::Reboot => action(&client, wire::Action::Reboot)?,
        CtlCommand::Counters => {
            let body = call(&client, "GET", "/vm/counters", None)?;
            if json {
                println!("{body}");
            } else {
                print_counters(&serde_json::from_str(&body)?);
            }
        }
        CtlCommand::Metrics => print!("{}", call(&client, "GET", "/metrics", None)?),
        CtlCommand::Events { since } => {
            let body = call(&client, "GET", &format!("/vm/events?since={since}"), None)?;
            if json {
                println!("{body}");
            } else {
                let list: wire::EventList = serde_json::from_str(&body)?;
                for e in list.events {
                    let detail = e.detail.map(|d| format!(": {d}")).unwrap_or_default();
                    println!(
                        "{:>6} {:>9.3}s {:?}{detail}",
                        e.seq,
                        e.time_ms as f64 / 1e3,
                        e.kind
                    );
                }
            }
        }
        CtlCommand::Snapshot { dir, diff } => {
            let dir = std::path::absolute(dir)?;
            let info: wire::VmInfo = serde_json::from_str(&call(&client, "GET", "/vm", None)?)?;
            let was_running = info.state == wire::VmState::Running;
            if was_running {
                action(&client, wire::Action::Pause)?;
            }
            let body = serde_json::to_string(&wire::SnapshotRequest {
                dir: dir.display().to_string(),
                diff: *diff,
            })?;
            let result = call(&client, "POST", "/vm/snapshot", Some(body));
            if was_running {
                action(&client, wire::Action::Resume)?;
            }
            let reply = result?;
            if json {
                println!("{reply}");
            } else {
                let i: wire::SnapshotInfo = serde_json::from_str(&reply)?;
                println!(
                    "{} snapshot in {}: {} pages of {} MiB written in {} ms",
                    i.kind,
                    dir.display(),
                    i.pages_written,
                    i.memory_bytes >> 20,
                    i.duration_ms
                );
            }
        }
        CtlCommand::Restore { dir } => {
            let dir = std::path::absolute(dir)?;
            let body = serde_json::to_string(&wire::RestoreRequest {
                dir: dir.display().to_string(),
                disks: None,
                nets: None,
                serial: None,
            })?;
            call(&client, "POST", "/vm/restore", Some(body))?;
        }
        CtlCommand::Configure { file } => {
            let config = crate::api_mode::read_config(file)?;
            call(
                &client,
                "PUT",
                "/vm/config",
                Some(serde_json::to_string(&config)?),
            )?;
        }
        CtlCommand::AddDisk { spec } => {
            let disk = vmm::api_config::wire_disk(&spec.parse()?);
            let n = current_config(&client)?.disks.len();
            let body = serde_json::to_string(&disk)?;
            call(&client, "PUT", &format!("/vm/config/disks/{n}"), Some(body))?;
        }
        CtlCommand::AddNet { spec } => {
            let net = vmm::api_config::wire_net(&spec.parse()?);
            let n = current_config(&client)?.nets.len();
            let body = serde_json::to_string(&net)?;
            call(&client, "PUT", &format!("/vm/config/nets/{n}"), Some(body))?;
        }
    }
    Ok(())
}

fn current_config(client: &Client) -> anyhow::Result<wire::VmConfig> {
    let info: wire::VmInfo = serde_json::from_str(&call(client, "GET", "/vm", None)?)?;
    info.config
        .context("The VMM has no configuration yet: `popek ctl configure FILE` first")
}

fn print_info(info: &wire::VmInfo) {
    let state = serde_json::to_value(info.state).unwrap_or_default();
    println!("state:    {}", state.as_str().unwrap_or("?"));
    if let Some(e) = &info.engine {
        println!("engine:   {e}");
    }
    if let Some(ms) = info.uptime_ms {
        println!("uptime:   {:.1} s", ms as f64 / 1e3);
    }
    if let Some(c) = &info.config {
        println!("cpus:     {}", c.machine.cpus);
        println!("memory:   {} MiB", c.machine.memory_mib);
        println!("kernel:   {}", c.boot.kernel);
        for (i, d) in c.disks.iter().enumerate() {
            let ro = if d.readonly { " (read-only)" } else { "" };
            println!("disk {i}:   {}{ro}", d.path);
        }
        for (i, n) in c.nets.iter().enumerate() {
            let what = match (&n.tap, &n.bridge) {
                (_, Some(b)) => format!("bridge {b}"),
                (Some(t), None) => format!("tap {t}"),
                _ => "?".into(),
            };
            println!("net {i}:    {what}");
        }
    }
    if let Some(s) = &info.last_stop {
        println!("stopped:  {s}");
    }
    println!("version:  {}", info.version);
}

fn print_counters(c: &wire::VmCounters) {
    println!("guest memory: {} MiB", c.guest_memory_bytes >> 20);
    println!(
        "VMM RSS:      {:.1} MiB",
        c.vmm_rss_bytes as f64 / (1 << 20) as f64
    );
    for v in &c.vcpus {
        let exits: Vec<String> = v
            .exits
            .iter()
            .filter(|e| e.count > 0)
            .map(|e| format!("{} {}", e.reason, e.count))
            .collect();
        println!(
            "vcpu {}: {:.3} s in the VMM, {} fallbacks; exits: {}",
            v.id,
            v.vmm_seconds,
            v.emulation_fallbacks,
            if exits.is_empty() {
                "none".into()
            } else {
                exits.join(", ")
            }
        );
    }
    for d in &c.devices {
        println!(
            "{}: {} requests, {} B to guest, {} B from guest, {} errors",
            d.id, d.requests, d.bytes_to_guest, d.bytes_from_guest, d.errors
        );
    }
}
