//! A VM's configuration, valid by construction.
//!
//! The CLI (or, later, the API) parses what the user typed into a [`VmConfig`] through
//! [`VmRequest::validate`], which checks everything that can be checked before a VM exists.

use std::path::PathBuf;

use arch::cpuid::{CpuFeature, CpuidError};
use arch::layout::MIN_MEMORY;

use crate::device_config::{DeviceConfigError, DiskConfig, NetConfig, VsockConfig};

/// Errors of configuration: each names what was wrong and how to fix it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// A size that does not parse.
    #[error(
        "Invalid size '{0}': use a number with an optional K, M, G or T suffix, like 512M or 2G"
    )]
    BadSize(String),
    /// Less memory than a guest can boot in.
    #[error("--memory {given} is too small: a VM needs at least {min} MiB")]
    MemoryTooSmall {
        /// What the user gave.
        given: String,
        /// The minimum in MiB.
        min: u64,
    },
    /// More memory than the host has.
    #[error("--memory {given} exceeds host RAM ({host})")]
    MemoryExceedsHost {
        /// What the user gave.
        given: String,
        /// The host's RAM, human-readable.
        host: String,
    },
    /// Zero vCPUs.
    #[error("--cpus 0: a VM needs at least one CPU")]
    NoCpus,
    /// More vCPUs than popek supports.
    #[error("--cpus {given} is too many: popek supports at most {max} CPUs per VM")]
    TooManyCpus {
        /// What the user gave.
        given: u32,
        /// The limit.
        max: u32,
    },
    /// A malformed `--serial` value.
    #[error("Invalid --serial '{0}': use stdio, file:PATH or none")]
    BadSerial(String),
    /// A kernel or initrd path that does not exist.
    #[error("{what} {path} does not exist")]
    MissingFile {
        /// "Kernel" or "Initrd".
        what: &'static str,
        /// The path.
        path: PathBuf,
    },
    /// An unknown CPU feature name.
    #[error(transparent)]
    Cpuid(#[from] CpuidError),
    /// A malformed `--accel` value.
    #[error("Invalid --accel '{0}': use kvm, emu or auto")]
    BadAccel(String),
    /// A malformed `--clock` value.
    #[error("Invalid --clock '{0}': use host or instructions")]
    BadClock(String),
    /// The instruction clock with an engine that cannot count instructions.
    #[error("--clock instructions needs the software CPU: use --accel emu (KVM runs on host time)")]
    ClockNeedsEmu,
    /// A device option is wrong.
    #[error(transparent)]
    Device(#[from] DeviceConfigError),
    /// A disk image that does not exist.
    #[error("--disk {0} does not exist")]
    MissingDisk(PathBuf),
    /// The vsock socket's directory does not exist.
    #[error("--vsock socket {0}: its directory does not exist")]
    VsockDir(PathBuf),
}

/// PCI slots on bus 0 for devices: slot 0 is the host bridge.
pub const PCI_DEVICE_SLOTS: usize = 31;

/// Which CPU engine runs the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Accel {
    /// KVM (hardware-assisted, or the host's paravirtual KVM).
    Kvm,
    /// popek's software x86-64 CPU.
    Emu,
    /// KVM if `/dev/kvm` opens and has what popek needs, else the software CPU.
    #[default]
    Auto,
}

impl std::str::FromStr for Accel {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "kvm" => Ok(Accel::Kvm),
            "emu" => Ok(Accel::Emu),
            "auto" => Ok(Accel::Auto),
            _ => Err(ConfigError::BadAccel(s.to_string())),
        }
    }
}

/// What the guest's time follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClockConfig {
    /// The host's monotonic clock.
    #[default]
    Host,
    /// Instructions retired by the software CPU, 1 ns each, skipping ahead when every vCPU
    /// waits: the same guest run twice sees the same times (with one vCPU).
    Instructions,
}

impl std::str::FromStr for ClockConfig {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "host" => Ok(ClockConfig::Host),
            "instructions" => Ok(ClockConfig::Instructions),
            _ => Err(ConfigError::BadClock(s.to_string())),
        }
    }
}

/// Most vCPUs a VM may have: APIC IDs are 8 bits in the MADT popek writes, and 255 is broadcast.
pub const MAX_VCPUS: u32 = 254;

/// Where the guest's COM1 goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SerialConfig {
    /// The terminal: output to stdout, input from stdin (raw mode when stdin is a terminal).
    Stdio,
    /// Output appended to a file; no input.
    File(PathBuf),
    /// Discarded.
    None,
}

impl std::str::FromStr for SerialConfig {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "stdio" => Ok(SerialConfig::Stdio),
            "none" => Ok(SerialConfig::None),
            _ => match s.strip_prefix("file:") {
                Some(path) if !path.is_empty() => Ok(SerialConfig::File(path.into())),
                _ => Err(ConfigError::BadSerial(s.to_string())),
            },
        }
    }
}

/// Parses `512M`, `2G`, `1048576`, `64K`, `1T` (binary units) into bytes.
pub fn parse_size(s: &str) -> Result<u64, ConfigError> {
    let bad = || ConfigError::BadSize(s.to_string());
    let t = s.trim();
    let (digits, shift) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                _ => return Err(bad()),
            };
            (&t[..i], shift)
        }
        _ => (t, 0),
    };
    let n: u64 = digits.parse().map_err(|_| bad())?;
    n.checked_mul(1 << shift).ok_or_else(bad)
}

/// Formats a byte count for messages: "24 GiB", "512 MiB".
pub fn format_size(bytes: u64) -> String {
    const UNITS: [(&str, u32); 4] = [("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)];
    for (unit, shift) in UNITS {
        if bytes >= 1 << shift {
            let v = bytes as f64 / (1u64 << shift) as f64;
            return if v.fract() < 0.05 {
                format!("{v:.0} {unit}")
            } else {
                format!("{v:.1} {unit}")
            };
        }
    }
    format!("{bytes} B")
}

/// What the user asked for, before validation.
#[derive(Debug, Clone)]
pub struct VmRequest {
    /// Kernel image.
    pub kernel: PathBuf,
    /// Initial ramdisk.
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    pub cmdline: String,
    /// vCPU count.
    pub cpus: u32,
    /// Memory size as typed ("512M").
    pub memory: String,
    /// Serial console.
    pub serial: SerialConfig,
    /// CPU features to hide, by name.
    pub hide_cpu_features: Vec<String>,
    /// CPU engine.
    pub accel: Accel,
    /// Guest clock.
    pub clock: ClockConfig,
    /// Disks, in PCI slot order.
    pub disks: Vec<DiskConfig>,
    /// NICs.
    pub nets: Vec<NetConfig>,
    /// The vsock device.
    pub vsock: Option<VsockConfig>,
    /// An entropy device.
    pub rng: bool,
}

/// A validated VM configuration.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// Kernel image (exists).
    pub kernel: PathBuf,
    /// Initial ramdisk (exists).
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    pub cmdline: String,
    /// vCPU count, 1..=[`MAX_VCPUS`].
    pub cpus: u32,
    /// Memory in bytes, at least the minimum and at most the host's RAM.
    pub memory: u64,
    /// Serial console.
    pub serial: SerialConfig,
    /// CPU features hidden from the guest.
    pub hidden_features: Vec<CpuFeature>,
    /// CPU engine: with [`ClockConfig::Instructions`], never [`Accel::Kvm`] (and
    /// [`Accel::Auto`] means the software CPU).
    pub accel: Accel,
    /// Guest clock.
    pub clock: ClockConfig,
    /// Disks (the files exist).
    pub disks: Vec<DiskConfig>,
    /// NICs.
    pub nets: Vec<NetConfig>,
    /// The vsock device (its socket's directory exists).
    pub vsock: Option<VsockConfig>,
    /// An entropy device.
    pub rng: bool,
}

impl VmRequest {
    /// Checks the request against popek's limits and the host's RAM (`host_ram` bytes).
    pub fn validate(self, host_ram: u64) -> Result<VmConfig, ConfigError> {
        let memory = parse_size(&self.memory)?;
        if memory < MIN_MEMORY {
            return Err(ConfigError::MemoryTooSmall {
                given: self.memory,
                min: MIN_MEMORY >> 20,
            });
        }
        if memory > host_ram {
            return Err(ConfigError::MemoryExceedsHost {
                given: self.memory,
                host: format_size(host_ram),
            });
        }
        if self.cpus == 0 {
            return Err(ConfigError::NoCpus);
        }
        if self.cpus > MAX_VCPUS {
            return Err(ConfigError::TooManyCpus {
                given: self.cpus,
                max: MAX_VCPUS,
            });
        }
        if !self.kernel.exists() {
            return Err(ConfigError::MissingFile {
                what: "Kernel",
                path: self.kernel,
            });
        }
        if let Some(initrd) = &self.initrd
            && !initrd.exists()
        {
            return Err(ConfigError::MissingFile {
                what: "Initrd",
                path: initrd.clone(),
            });
        }
        let accel = match (self.accel, self.clock) {
            (Accel::Kvm, ClockConfig::Instructions) => return Err(ConfigError::ClockNeedsEmu),
            (Accel::Auto, ClockConfig::Instructions) => Accel::Emu,
            (accel, _) => accel,
        };
        let hidden_features = self
            .hide_cpu_features
            .iter()
            .map(|name| CpuFeature::by_name(name))
            .collect::<Result<Vec<_>, _>>()?;
        for d in &self.disks {
            if !d.path.exists() {
                return Err(ConfigError::MissingDisk(d.path.clone()));
            }
        }
        if let Some(v) = &self.vsock {
            let dir = v.socket.parent().filter(|p| !p.as_os_str().is_empty());
            if dir.is_some_and(|d| !d.is_dir()) {
                return Err(ConfigError::VsockDir(v.socket.clone()));
            }
        }
        let devices = self.disks.len()
            + self.nets.len()
            + usize::from(self.vsock.is_some())
            + usize::from(self.rng);
        if devices > PCI_DEVICE_SLOTS {
            return Err(DeviceConfigError::TooManyDevices {
                given: devices,
                max: PCI_DEVICE_SLOTS,
            }
            .into());
        }
        Ok(VmConfig {
            kernel: self.kernel,
            initrd: self.initrd,
            cmdline: self.cmdline,
            cpus: self.cpus,
            memory,
            serial: self.serial,
            hidden_features,
            accel,
            clock: self.clock,
            disks: self.disks,
            nets: self.nets,
            vsock: self.vsock,
            rng: self.rng,
        })
    }
}

/// The host's RAM in bytes, from `/proc/meminfo`.
pub fn host_ram() -> std::io::Result<u64> {
    let info = std::fs::read_to_string("/proc/meminfo")?;
    info.lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|kb| kb.trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .ok_or_else(|| std::io::Error::other("/proc/meminfo has no MemTotal line"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> VmRequest {
        VmRequest {
            kernel: PathBuf::from("/proc/self/exe"),
            initrd: None,
            cmdline: String::new(),
            cpus: 1,
            memory: "512M".into(),
            serial: SerialConfig::None,
            hide_cpu_features: vec![],
            accel: Accel::Auto,
            clock: ClockConfig::Host,
            disks: vec![],
            nets: vec![],
            vsock: None,
            rng: false,
        }
    }

    #[test]
    fn device_options_are_checked() {
        let mut r = request();
        r.disks = vec!["/nonexistent/disk.img".parse().unwrap()];
        assert_eq!(
            r.validate(1 << 40).unwrap_err().to_string(),
            "--disk /nonexistent/disk.img does not exist"
        );
        let mut r = request();
        r.vsock = Some("cid=3,socket=/nonexistent/dir/v.sock".parse().unwrap());
        assert!(matches!(r.validate(1 << 40), Err(ConfigError::VsockDir(_))));
        let mut r = request();
        r.disks = vec!["/proc/self/exe".parse().unwrap(); 32];
        assert!(matches!(
            r.validate(1 << 40),
            Err(ConfigError::Device(
                DeviceConfigError::TooManyDevices { .. }
            ))
        ));
    }

    #[test]
    fn sizes_parse_with_binary_suffixes() {
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("2g"), Ok(2 << 30));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("1T"), Ok(1 << 40));
        for bad in ["", "G", "12Q", "-1G", "1.5G", "99999999999T"] {
            assert_eq!(
                parse_size(bad),
                Err(ConfigError::BadSize(bad.into())),
                "{bad}"
            );
        }
    }

    #[test]
    fn memory_beyond_host_ram_is_refused_with_both_sizes() {
        let r = VmRequest {
            memory: "3T".into(),
            ..request()
        };
        let err = r.validate(24 << 30).unwrap_err();
        assert_eq!(err.to_string(), "--memory 3T exceeds host RAM (24 GiB)");
    }

    #[test]
    fn cpu_counts_outside_the_supported_range_are_refused() {
        let err = VmRequest {
            cpus: 0,
            ..request()
        }
        .validate(1 << 40)
        .unwrap_err();
        assert_eq!(err, ConfigError::NoCpus);
        let err = VmRequest {
            cpus: 300,
            ..request()
        }
        .validate(1 << 40)
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "--cpus 300 is too many: popek supports at most 254 CPUs per VM"
        );
    }

    #[test]
    fn serial_values_parse_or_are_refused() {
        assert_eq!("stdio".parse(), Ok(SerialConfig::Stdio));
        assert_eq!(
            "file:/tmp/x".parse(),
            Ok(SerialConfig::File("/tmp/x".into()))
        );
        assert_eq!("none".parse(), Ok(SerialConfig::None));
        assert!("file:".parse::<SerialConfig>().is_err());
        assert!("tcp:1234".parse::<SerialConfig>().is_err());
    }

    #[test]
    fn missing_kernel_is_named() {
        let err = VmRequest {
            kernel: "/no/such/kernel".into(),
            ..request()
        }
        .validate(1 << 40)
        .unwrap_err();
        assert_eq!(err.to_string(), "Kernel /no/such/kernel does not exist");
    }

    #[test]
    fn accel_and_clock_values_parse_or_are_refused() {
        assert_eq!("kvm".parse(), Ok(Accel::Kvm));
        assert_eq!("emu".parse(), Ok(Accel::Emu));
        assert_eq!("auto".parse(), Ok(Accel::Auto));
        assert_eq!(
            "tcg".parse::<Accel>().unwrap_err().to_string(),
            "Invalid --accel 'tcg': use kvm, emu or auto"
        );
        assert_eq!("instructions".parse(), Ok(ClockConfig::Instructions));
        assert!("wall".parse::<ClockConfig>().is_err());
    }

    #[test]
    fn instruction_clock_picks_the_software_cpu_and_refuses_kvm() {
        let config = VmRequest {
            clock: ClockConfig::Instructions,
            ..request()
        }
        .validate(1 << 40)
        .unwrap();
        assert_eq!(config.accel, Accel::Emu);
        let err = VmRequest {
            accel: Accel::Kvm,
            clock: ClockConfig::Instructions,
            ..request()
        }
        .validate(1 << 40)
        .unwrap_err();
        assert_eq!(err, ConfigError::ClockNeedsEmu);
    }
}
