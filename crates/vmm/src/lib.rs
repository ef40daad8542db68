//! The popek virtual machine monitor: builds one VM from its [`VmConfig`] and runs it.
//!
//! [`run`] turns a validated configuration into live objects (guest memory, devices on their
//! buses, a VM in the CPU engine, one thread per vCPU), then waits in an event loop for the VM's
//! end, firing device timers and feeding console input meanwhile.

mod api_backend;
pub mod api_config;
pub mod config;
pub mod control;
pub mod device_config;
mod device_thread;
pub mod engine;
pub mod events;
pub mod handle;
pub mod lapics;
pub mod log;
pub mod manager;
pub use api_backend::rss_bytes;
pub mod platform;
pub mod snapshot;
pub mod terminal;
pub mod vcpu;
pub mod virtio_devices;
mod vm;

pub use config::{Accel, ClockConfig, ConfigError, SerialConfig, VmConfig, VmRequest};
pub use control::{RunReport, VmOutcome};
pub use device_config::{DiskConfig, DiskFormat, NetBackendConfig, NetConfig, VsockConfig};
pub use engine::Engine;
pub use vm::{RestoreFrom, VmmError, run, run_from, run_observed, run_on};
