//! The wire types of popek's REST API, shared by the VMM's server, the `popek ctl` client and
//! the config file (`popek run --config`), which has the same schema as `PUT /vm/config`.
//!
//! These are serde types and nothing else: no validation, no behaviour. Every struct rejects
//! unknown fields, so a typo in a request or a config file is an error naming the field.
//! `docs/api/openapi.json` describes the same types; a test keeps the two in step.
//!
//! Resources:
//! - `GET /vm` → [`VmInfo`]
//! - `PUT /vm/config` ← [`VmConfig`] (before boot); `PATCH /vm/config` ← [`VmConfigPatch`]
//! - `PUT /vm/config/disks/{id}` ← [`DiskConfig`], `PUT /vm/config/nets/{id}` ← [`NetConfig`]
//!   (before boot)
//! - `POST /vm/actions` ← [`ActionRequest`]
//! - `GET /vm/counters` → [`VmCounters`]; `GET /metrics` → Prometheus text
//! - `GET /vm/events?since=N` → [`EventList`]
//! - `POST /vm/snapshot` ← [`SnapshotRequest`] → [`SnapshotInfo`] (paused)
//! - `POST /vm/restore` ← [`RestoreRequest`] (created or stopped)
//! - errors → [`ApiError`]

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Everything a VM is made of: the body of `PUT /vm/config`, and the config file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// The machine: CPUs, memory, engine.
    pub machine: MachineConfig,
    /// What to boot.
    pub boot: BootSource,
    /// Disks, in PCI slot order.
    #[serde(default)]
    pub disks: Vec<DiskConfig>,
    /// NICs.
    #[serde(default)]
    pub nets: Vec<NetConfig>,
    /// The vsock device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock: Option<VsockConfig>,
    /// An entropy device.
    #[serde(default)]
    pub rng: bool,
    /// Where COM1 goes.
    #[serde(default)]
    pub serial: SerialConfig,
}

/// A partial [`VmConfig`] for `PATCH /vm/config`: the fields present replace the current ones.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VmConfigPatch {
    /// Replaces the machine section.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine: Option<MachineConfig>,
    /// Replaces the boot source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot: Option<BootSource>,
    /// Replaces the disk list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disks: Option<Vec<DiskConfig>>,
    /// Replaces the NIC list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nets: Option<Vec<NetConfig>>,
    /// Replaces the vsock device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock: Option<VsockConfig>,
    /// Adds or removes the entropy device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rng: Option<bool>,
    /// Replaces the serial console.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<SerialConfig>,
}

/// CPUs, memory and engine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MachineConfig {
    /// vCPUs (1-254).
    pub cpus: u32,
    /// Guest RAM in MiB.
    pub memory_mib: u64,
    /// The CPU engine.
    #[serde(default)]
    pub accel: Accel,
    /// CPU features hidden from the guest, by name (e.g. "xsave").
    #[serde(default)]
    pub hide_cpu_features: Vec<String>,
}

/// The CPU engine.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// KVM when usable, else the software CPU.
    #[default]
    Auto,
    /// KVM.
    Kvm,
    /// popek's software CPU.
    Emu,
}

/// The kernel, initrd and command line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BootSource {
    /// Path of the kernel: an ELF vmlinux (PVH or 64-bit entry) or a bzImage.
    pub kernel: String,
    /// Path of the initrd.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd: Option<String>,
    /// Kernel command line; popek's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
}

/// One disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DiskConfig {
    /// The image file.
    pub path: String,
    /// Its format; detected from the file when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<DiskFormat>,
    /// The guest may only read it.
    #[serde(default)]
    pub readonly: bool,
}

/// A disk image format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DiskFormat {
    /// Raw.
    Raw,
    /// qcow2.
    Qcow2,
}

/// One NIC: a tap by name, or a new tap on a bridge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NetConfig {
    /// The tap to use (created when missing); with `bridge`, the new tap's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tap: Option<String>,
    /// A host bridge to attach a new tap to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bridge: Option<String>,
    /// The guest's MAC, "52:54:00:12:34:56"; random when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
}

/// The vsock device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VsockConfig {
    /// The guest's context ID (3 or more).
    pub cid: u32,
    /// The host Unix socket.
    pub socket: String,
}

/// Where COM1 goes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase", tag = "mode", deny_unknown_fields)]
pub enum SerialConfig {
    /// Discarded.
    None,
    /// The VMM's stdout (and stdin).
    #[default]
    Stdio,
    /// Appended to a file.
    File {
        /// The file.
        path: String,
    },
}

/// The lifecycle state of a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum VmState {
    /// Not booted yet: the configuration may change.
    Created,
    /// vCPUs run.
    Running,
    /// vCPUs are stopped; devices finish what they have in flight.
    Paused,
    /// The guest ended (power-off, reset, stop, failure); it may be booted again.
    Stopped,
}

/// `GET /vm`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VmInfo {
    /// The state.
    pub state: VmState,
    /// The configuration, once one was given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<VmConfig>,
    /// The engine running the guest ("kvm" or "emu"), once booted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine: Option<String>,
    /// Milliseconds since the last boot, while running or paused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uptime_ms: Option<u64>,
    /// Why the guest last stopped, once it has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_stop: Option<String>,
    /// popek's version.
    pub version: String,
}

/// A lifecycle action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Start the guest (from created or stopped).
    Boot,
    /// Stop the vCPUs (from running).
    Pause,
    /// Restart the vCPUs (from paused).
    Resume,
    /// Press the ACPI power button: the guest shuts itself down (from running).
    Shutdown,
    /// Stop the guest at once (from running or paused).
    Stop,
    /// Stop the guest and boot it again (from running or paused).
    Reboot,
}

/// `POST /vm/actions`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ActionRequest {
    /// What to do.
    pub action: Action,
}

/// `GET /vm/counters`: what the VM did. Counts are totals since the VMM started.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VmCounters {
    /// The state.
    pub state: Option<VmState>,
    /// Per vCPU.
    pub vcpus: Vec<VcpuCounters>,
    /// Per device.
    pub devices: Vec<DeviceCounters>,
    /// Guest RAM in bytes.
    pub guest_memory_bytes: u64,
    /// The VMM process's resident set in bytes.
    pub vmm_rss_bytes: u64,
    /// Guest-triggered log messages dropped by rate limiting.
    pub log_messages_dropped: u64,
}

/// One vCPU's counters.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VcpuCounters {
    /// The vCPU's index.
    pub id: u32,
    /// Exits by reason ("io", "halt", "interrupt_window", "interrupted", "ioapic_eoi", ...).
    pub exits: Vec<ExitCount>,
    /// Seconds the vCPU thread spent in the VMM handling exits (outside the engine's run).
    pub vmm_seconds: f64,
    /// Instructions KVM could not execute that the software CPU executed.
    pub emulation_fallbacks: u64,
}

/// Exits of one reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExitCount {
    /// The reason.
    pub reason: String,
    /// How many.
    pub count: u64,
}

/// One device's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeviceCounters {
    /// A stable id: "block0", "net1", "rng0", "vsock0".
    pub id: String,
    /// The kind: "block", "net", "rng", "vsock".
    pub kind: String,
    /// Requests (block, rng), frames (net) or packets (vsock) served.
    pub requests: u64,
    /// Bytes from the device to the guest.
    pub bytes_to_guest: u64,
    /// Bytes from the guest to the device.
    pub bytes_from_guest: u64,
    /// Errors: failed requests, malformed chains, dropped frames.
    pub errors: u64,
}

/// A lifecycle event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Event {
    /// Sequence number, from 1, without gaps.
    pub seq: u64,
    /// Milliseconds since the VMM started.
    pub time_ms: u64,
    /// What happened.
    pub kind: EventKind,
    /// Details (the stop reason, say).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// Kinds of lifecycle events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// The VMM is up.
    Created,
    /// The configuration was set or changed.
    Configured,
    /// The guest was booted.
    Booted,
    /// The vCPUs were paused.
    Paused,
    /// The vCPUs were resumed.
    Resumed,
    /// The power button was pressed.
    ShutdownRequested,
    /// The guest stopped (power-off, stop, failure).
    Stopped,
    /// The guest reset the machine.
    GuestReset,
    /// The guest panicked (a panic notifier) or stopped on an error.
    GuestPanic,
}

/// `GET /vm/events`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EventList {
    /// Events after the `since` asked for, oldest first.
    pub events: Vec<Event>,
    /// The sequence number to ask `since` next time.
    pub next: u64,
}

/// `POST /vm/snapshot`: write the paused VM into a directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SnapshotRequest {
    /// The directory (new, or empty) on the VMM's host.
    pub dir: String,
    /// Only the pages written since this VM's previous snapshot.
    #[serde(default)]
    pub diff: bool,
}

/// The reply to `POST /vm/snapshot`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SnapshotInfo {
    /// "full" or "diff".
    pub kind: String,
    /// Memory pages written (4 KiB each; all-zero pages are holes and not counted).
    pub pages_written: u64,
    /// Guest RAM in bytes.
    pub memory_bytes: u64,
    /// Milliseconds the snapshot took.
    pub duration_ms: u64,
}

/// `POST /vm/restore`: resume a snapshot in this VMM (created or stopped state).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RestoreRequest {
    /// The snapshot directory.
    pub dir: String,
    /// Replacement disks (a clone's own overlays), as many as the snapshot has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disks: Option<Vec<DiskConfig>>,
    /// Replacement NICs (a clone's own taps), as many as the snapshot has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nets: Option<Vec<NetConfig>>,
    /// Where the restored VM's console goes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<SerialConfig>,
}

/// Every error reply's body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiError {
    /// What went wrong, and what to do about it.
    pub message: String,
    /// The request field at fault, if one is ("machine.cpus").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// The VM's state, when the request did not fit it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<VmState>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_are_refused_by_name() {
        let e = serde_json::from_str::<MachineConfig>(r#"{"cpus":1,"memory_mib":64,"cpu":2}"#)
            .unwrap_err();
        assert!(e.to_string().contains("unknown field `cpu`"), "{e}");
    }

    #[test]
    fn a_config_round_trips() {
        let text = r#"{"machine":{"cpus":2,"memory_mib":256},"boot":{"kernel":"/k"},
            "disks":[{"path":"/d.img","format":"qcow2"}],"serial":{"mode":"file","path":"/s"}}"#;
        let c: VmConfig = serde_json::from_str(text).unwrap();
        assert_eq!(c.machine.accel, Accel::Auto);
        assert_eq!(c.serial, SerialConfig::File { path: "/s".into() });
        let again: VmConfig = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(again, c);
    }
}
