//! `popek restore DIR` and `popek snapshot merge`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use vmm::VmOutcome;
use vmm::api_config::{wire_disk, wire_net, wire_serial};
use vmm::manager::Vmm;

/// `popek restore`.
#[derive(clap::Args)]
pub struct RestoreArgs {
    /// The snapshot directory.
    dir: PathBuf,
    /// Replace the snapshot's disks, in order (a clone's own overlays): as many as it has.
    #[arg(long = "disk", value_name = "PATH[,OPTS]")]
    disks: Vec<String>,
    /// Replace the snapshot's NICs, in order (a clone's own taps): as many as it has. Without
    /// `mac=`, each gets a new random MAC, so clones never share one.
    #[arg(long = "net", value_name = "OPTS")]
    nets: Vec<String>,
    /// Console: stdio, file:PATH or none (default: the snapshot's).
    #[arg(long)]
    serial: Option<String>,
    /// Serve the REST API on this Unix socket.
    #[arg(long, value_name = "PATH")]
    api_socket: Option<PathBuf>,
    #[command(flatten)]
    log: crate::api_mode::LogArgs,
}

/// `popek snapshot`.
#[derive(clap::Subcommand)]
pub enum SnapshotCommand {
    /// Make a full snapshot OUT from a base snapshot and a diff taken after it.
    Merge {
        /// The base (full) snapshot.
        base: PathBuf,
        /// The diff snapshot.
        diff: PathBuf,
        /// The new snapshot directory.
        out: PathBuf,
    },
}

fn disk(spec: &str) -> anyhow::Result<api_types::DiskConfig> {
    Ok(wire_disk(&spec.parse()?))
}

fn net(spec: &str) -> anyhow::Result<api_types::NetConfig> {
    Ok(wire_net(&spec.parse()?))
}

fn serial(spec: &str) -> anyhow::Result<api_types::SerialConfig> {
    Ok(wire_serial(&spec.parse()?))
}

/// Restores the snapshot and runs it to its end.
pub fn run(args: RestoreArgs) -> anyhow::Result<VmOutcome> {
    args.log.init()?;
    let request = api_types::RestoreRequest {
        dir: args.dir.display().to_string(),
        disks: (!args.disks.is_empty())
            .then(|| {
                args.disks
                    .iter()
                    .map(|d| disk(d))
                    .collect::<anyhow::Result<_>>()
            })
            .transpose()?,
        nets: (!args.nets.is_empty())
            .then(|| {
                args.nets
                    .iter()
                    .map(|n| net(n))
                    .collect::<anyhow::Result<_>>()
            })
            .transpose()?,
        serial: args.serial.as_deref().map(serial).transpose()?,
    };
    let host_ram = vmm::config::host_ram().context("Cannot read the host's RAM size")?;
    let vmm = Vmm::new_with(crate::DEFAULT_CMDLINE, host_ram, false);
    let _server = match &args.api_socket {
        Some(socket) => {
            let backend: Arc<dyn api::Backend> = vmm.clone();
            Some(
                api::serve(socket, backend)
                    .with_context(|| format!("Cannot serve the API on {}", socket.display()))?,
            )
        }
        None => None,
    };
    vmm.restore(request).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(vmm.wait_stopped().unwrap_or(VmOutcome::Stopped))
}

/// `popek snapshot merge`.
pub fn snapshot(cmd: SnapshotCommand) -> anyhow::Result<()> {
    match cmd {
        SnapshotCommand::Merge { base, diff, out } => merge(&base, &diff, &out),
    }
}

fn merge(base: &Path, diff: &Path, out: &Path) -> anyhow::Result<()> {
    vmm::snapshot::merge(base, diff, out)?;
    println!("{}", out.display());
    Ok(())
}
