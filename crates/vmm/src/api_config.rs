//! The API's configuration ([`api_types::VmConfig`], also the config file's) as a
//! [`VmRequest`], with errors that name the field at fault.

use std::path::PathBuf;

use api_types as wire;

use crate::config::{Accel, ClockConfig, SerialConfig, VmRequest};
use crate::device_config::{
    DiskConfig, DiskFormat, NetBackendConfig, NetConfig, VsockConfig, parse_mac,
};

/// A configuration error, with the dotted path of the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    /// The field ("nets[1].mac").
    pub field: String,
    /// What is wrong.
    pub message: String,
}

fn field(field: impl Into<String>, message: impl Into<String>) -> FieldError {
    FieldError {
        field: field.into(),
        message: message.into(),
    }
}

/// The request `c` describes; `default_cmdline` applies when it names none.
pub fn request(c: &wire::VmConfig, default_cmdline: &str) -> Result<VmRequest, FieldError> {
    let mut disks = Vec::new();
    for (i, d) in c.disks.iter().enumerate() {
        if d.path.is_empty() {
            return Err(field(format!("disks[{i}].path"), "must name an image file"));
        }
        disks.push(DiskConfig {
            path: PathBuf::from(&d.path),
            format: d.format.map(|f| match f {
                wire::DiskFormat::Raw => DiskFormat::Raw,
                wire::DiskFormat::Qcow2 => DiskFormat::Qcow2,
            }),
            read_only: d.readonly,
        });
    }
    let mut nets = Vec::new();
    for (i, n) in c.nets.iter().enumerate() {
        let mut spec = Vec::new();
        if let Some(t) = &n.tap {
            spec.push(format!("tap={t}"));
        }
        if let Some(b) = &n.bridge {
            spec.push(format!("bridge={b}"));
        }
        let backend = spec
            .join(",")
            .parse::<NetConfig>()
            .map_err(|e| field(format!("nets[{i}]"), e.to_string()))?
            .backend;
        let mac = match &n.mac {
            Some(m) => Some(parse_mac(m).map_err(|e| field(format!("nets[{i}].mac"), e))?),
            None => None,
        };
        nets.push(NetConfig { backend, mac });
    }
    let vsock = match &c.vsock {
        Some(v) => Some(
            format!("cid={},socket={}", v.cid, v.socket)
                .parse::<VsockConfig>()
                .map_err(|e| field("vsock", e.to_string()))?,
        ),
        None => None,
    };
    Ok(VmRequest {
        kernel: PathBuf::from(&c.boot.kernel),
        initrd: c.boot.initrd.as_ref().map(PathBuf::from),
        cmdline: c
            .boot
            .cmdline
            .clone()
            .unwrap_or_else(|| default_cmdline.to_string()),
        cpus: c.machine.cpus,
        memory: format!("{}M", c.machine.memory_mib),
        serial: match &c.serial {
            wire::SerialConfig::None => SerialConfig::None,
            wire::SerialConfig::Stdio => SerialConfig::Stdio,
            wire::SerialConfig::File { path } => SerialConfig::File(path.into()),
        },
        hide_cpu_features: c.machine.hide_cpu_features.clone(),
        accel: match c.machine.accel {
            wire::Accel::Auto => Accel::Auto,
            wire::Accel::Kvm => Accel::Kvm,
            wire::Accel::Emu => Accel::Emu,
        },
        clock: ClockConfig::Host,
        disks,
        nets,
        vsock,
        rng: c.rng,
    })
}

/// The field a validation error is about, for the API's error replies.
pub fn config_error_field(e: &crate::ConfigError) -> Option<&'static str> {
    use crate::ConfigError as E;
    Some(match e {
        E::BadSize(_) | E::MemoryTooSmall { .. } | E::MemoryExceedsHost { .. } => {
            "machine.memory_mib"
        }
        E::NoCpus | E::TooManyCpus { .. } => "machine.cpus",
        E::MissingFile { what: "Kernel", .. } => "boot.kernel",
        E::MissingFile { .. } => "boot.initrd",
        E::Cpuid(_) => "machine.hide_cpu_features",
        E::MissingDisk(_) => "disks",
        E::VsockDir(_) => "vsock.socket",
        _ => return None,
    })
}

/// The API's form of a `--disk`.
pub fn wire_disk(d: &DiskConfig) -> wire::DiskConfig {
    wire::DiskConfig {
        path: d.path.display().to_string(),
        format: d.format.map(|f| match f {
            DiskFormat::Raw => wire::DiskFormat::Raw,
            DiskFormat::Qcow2 => wire::DiskFormat::Qcow2,
        }),
        readonly: d.read_only,
    }
}

/// The API's form of a `--net`.
pub fn wire_net(n: &NetConfig) -> wire::NetConfig {
    let (tap, bridge) = match &n.backend {
        NetBackendConfig::Tap(t) => (Some(t.clone()), None),
        NetBackendConfig::Bridge { bridge, tap } => (tap.clone(), Some(bridge.clone())),
    };
    wire::NetConfig {
        tap,
        bridge,
        mac: n.mac.map(|m| {
            m.iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(":")
        }),
    }
}

/// The API's form of a `--serial`.
pub fn wire_serial(s: &SerialConfig) -> wire::SerialConfig {
    match s {
        SerialConfig::None => wire::SerialConfig::None,
        SerialConfig::Stdio => wire::SerialConfig::Stdio,
        SerialConfig::File(p) => wire::SerialConfig::File {
            path: p.display().to_string(),
        },
    }
}

/// The API's form of a validated configuration (what a snapshot records).
pub fn from_config(c: &crate::VmConfig) -> wire::VmConfig {
    from_request(&VmRequest {
        kernel: c.kernel.clone(),
        initrd: c.initrd.clone(),
        cmdline: c.cmdline.clone(),
        cpus: c.cpus,
        memory: format!("{}M", c.memory >> 20),
        serial: c.serial.clone(),
        hide_cpu_features: c
            .hidden_features
            .iter()
            .map(|f| f.name().to_string())
            .collect(),
        accel: c.accel,
        clock: c.clock,
        disks: c.disks.clone(),
        nets: c.nets.clone(),
        vsock: c.vsock.clone(),
        rng: c.rng,
    })
}

/// The API's form of a request the CLI built: what `GET /vm` shows for `popek run`.
pub fn from_request(r: &VmRequest) -> wire::VmConfig {
    let path = |p: &PathBuf| p.display().to_string();
    wire::VmConfig {
        machine: wire::MachineConfig {
            cpus: r.cpus,
            memory_mib: crate::config::parse_size(&r.memory).unwrap_or(0) >> 20,
            accel: match r.accel {
                Accel::Auto => wire::Accel::Auto,
                Accel::Kvm => wire::Accel::Kvm,
                Accel::Emu => wire::Accel::Emu,
            },
            hide_cpu_features: r.hide_cpu_features.clone(),
        },
        boot: wire::BootSource {
            kernel: path(&r.kernel),
            initrd: r.initrd.as_ref().map(path),
            cmdline: Some(r.cmdline.clone()),
        },
        disks: r.disks.iter().map(wire_disk).collect(),
        nets: r.nets.iter().map(wire_net).collect(),
        vsock: r.vsock.as_ref().map(|v| wire::VsockConfig {
            cid: v.cid,
            socket: path(&v.socket),
        }),
        rng: r.rng,
        serial: wire_serial(&r.serial),
    }
}
