//! The VMM with its REST API: `popek run --api-socket`, `popek vmm`, and config files.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use vmm::manager::Vmm;
use vmm::{VmOutcome, VmRequest};

/// Logging flags, shared by the commands that run a VMM.
#[derive(clap::Args)]
pub struct LogArgs {
    /// Log level on stderr: error, warn, info, debug or trace.
    #[arg(long, default_value = "warn")]
    log_level: String,
    /// Log as JSON lines.
    #[arg(long)]
    log_json: bool,
}

impl LogArgs {
    /// Installs the logger.
    pub fn init(&self) -> anyhow::Result<()> {
        Ok(vmm::log::init(&self.log_level, self.log_json)?)
    }
}

/// `popek vmm`.
#[derive(clap::Args)]
pub struct VmmArgs {
    /// The Unix socket to serve the API on.
    #[arg(long, value_name = "PATH")]
    api_socket: PathBuf,
    /// Start with this configuration (the API's JSON schema) instead of none.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(flatten)]
    log: LogArgs,
}

/// Reads a configuration file: JSON with the schema of `PUT /vm/config`. Unknown fields are
/// refused by name.
pub fn read_config(path: &Path) -> anyhow::Result<api_types::VmConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("Cannot read config file {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("Config file {}", path.display()))
}

fn host_ram() -> anyhow::Result<u64> {
    vmm::config::host_ram().context("Cannot read the host's RAM size")
}

/// Runs `request` to its end; with `api_socket`, serves the API meanwhile.
pub fn run_request(
    request: VmRequest,
    api_socket: Option<&Path>,
    verbose: bool,
) -> anyhow::Result<VmOutcome> {
    let Some(socket) = api_socket else {
        return crate::run_plain(request, verbose);
    };
    let vmm = Vmm::new_with(crate::DEFAULT_CMDLINE, host_ram()?, false);
    vmm.set_config(vmm::api_config::from_request(&request))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let backend: Arc<dyn api::Backend> = vmm.clone();
    let server = api::serve(socket, backend)
        .with_context(|| format!("Cannot serve the API on {}", socket.display()))?;
    vmm.boot().map_err(|e| anyhow::anyhow!("{e}"))?;
    if verbose && let Some(h) = vmm.handle() {
        eprintln!("popek: engine {}", h.engine);
    }
    let outcome = vmm.wait_stopped();
    drop(server);
    Ok(outcome.unwrap_or(VmOutcome::Stopped))
}

/// `popek vmm`: serves the API until killed.
pub fn serve_empty(args: VmmArgs) -> anyhow::Result<()> {
    args.log.init()?;
    let vmm = Vmm::new(crate::DEFAULT_CMDLINE, host_ram()?);
    if let Some(file) = &args.config {
        vmm.set_config(read_config(file)?)
            .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    }
    let backend: Arc<dyn api::Backend> = vmm.clone();
    let _server = api::serve(&args.api_socket, backend)
        .with_context(|| format!("Cannot serve the API on {}", args.api_socket.display()))?;
    loop {
        std::thread::park();
    }
}
