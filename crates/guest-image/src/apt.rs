//! Talks to the host's apt and dpkg: resolves package versions, downloads `.deb` files and unpacks
//! them.
//!
//! Everything here works as an ordinary user as long as apt's package lists exist (`apt-cache` reads
//! them, `apt-get download` writes into the current directory). Unpacking shells out to
//! `dpkg-deb -x`: it is on every host that has apt, and it knows every data-member compression
//! Debian uses (xz, zstd, gzip), which parsing ar + tar in Rust would have to reimplement.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The metapackage that always depends on Debian's current cloud kernel.
pub const KERNEL_METAPACKAGE: &str = "linux-image-cloud-amd64";
/// The package holding the statically linked busybox.
pub const BUSYBOX_PACKAGE: &str = "busybox-static";

/// Why talking to apt or dpkg failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A tool could not be started at all.
    #[error(
        "Cannot run {tool} (the default guest is built from Debian packages and needs apt and dpkg)"
    )]
    Spawn {
        /// The command.
        tool: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// apt knows nothing about a package: its lists are missing or stale.
    #[error(
        "apt knows no package {package}: run `apt-get update` (as root) so apt's package lists exist, then retry"
    )]
    ListsMissing {
        /// The package apt-cache could not find.
        package: String,
    },
    /// The package record lacks what we expected.
    #[error("apt-cache show {package} has no {what}")]
    BadRecord {
        /// The package.
        package: String,
        /// What is missing.
        what: &'static str,
    },
    /// A command ran and failed.
    #[error("`{command}` failed: {stderr}")]
    Failed {
        /// The command line.
        command: String,
        /// Its error output (last lines).
        stderr: String,
    },
    /// `apt-get download` succeeded but the file is not where expected.
    #[error("apt-get download left no {package}_*.deb in {dir}")]
    NoDeb {
        /// The package.
        package: String,
        /// The download directory.
        dir: PathBuf,
    },
    /// Listing the download directory failed.
    #[error("Cannot list {dir}")]
    ReadDir {
        /// The directory.
        dir: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// A package at one exact version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Package {
    /// Package name.
    pub name: String,
    /// Debian version (may carry an epoch, `1:1.35.0-4`).
    pub version: String,
}

impl Package {
    /// The `name=version` form apt-get accepts to pin a version.
    fn pinned(&self) -> String {
        format!("{}={}", self.name, self.version)
    }
}

/// The packages the default guest is built from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The real kernel package, for example `linux-image-6.1.0-56-cloud-amd64` 6.1.192-2.
    pub kernel: Package,
    /// `busybox-static` at its candidate version.
    pub busybox: Package,
}

/// Runs apt and dpkg tools, with extra `-o` options for apt (tests point apt at empty lists).
#[derive(Debug, Default, Clone)]
pub struct Apt {
    options: Vec<String>,
}

impl Apt {
    /// Uses the host's apt configuration.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an apt configuration option (`Dir::State::Lists=/x`), passed as `-o` to every apt call.
    pub fn option(mut self, option: &str) -> Self {
        self.options.push(option.to_owned());
        self
    }

    /// Resolves the metapackage to the kernel package it depends on, and finds busybox-static.
    pub fn resolve(&self) -> Result<Resolved, Error> {
        let meta = self.show(KERNEL_METAPACKAGE)?;
        let kernel = kernel_dependency(&meta)
            .ok_or_else(|| bad_record(KERNEL_METAPACKAGE, "linux-image-* dependency"))?;
        let kernel = self.package(&kernel)?;
        let busybox = self.package(BUSYBOX_PACKAGE)?;
        Ok(Resolved { kernel, busybox })
    }

    fn package(&self, name: &str) -> Result<Package, Error> {
        let record = self.show(name)?;
        let version = field(&record, "Version").ok_or_else(|| bad_record(name, "Version"))?;
        Ok(Package {
            name: name.to_owned(),
            version: version.to_owned(),
        })
    }

    /// The candidate version's record from `apt-cache show`.
    fn show(&self, package: &str) -> Result<String, Error> {
        let mut command = Command::new("apt-cache");
        command
            .args(self.options.iter().flat_map(|o| ["-o", o]))
            .args(["show", "--no-all-versions"]);
        let output = run_output(command.arg(package))?;
        let record = String::from_utf8_lossy(&output.stdout).into_owned();
        // apt-cache exits with 100 and "E: No packages found" when its lists do not know the name.
        if !output.status.success() || field(&record, "Package").is_none() {
            return Err(Error::ListsMissing {
                package: package.to_owned(),
            });
        }
        Ok(record)
    }

    /// Downloads `packages` at their exact versions into `dir`; returns the `.deb` paths in order.
    pub fn download(&self, packages: &[&Package], dir: &Path) -> Result<Vec<PathBuf>, Error> {
        let mut command = Command::new("apt-get");
        command
            .current_dir(dir)
            .args(self.options.iter().flat_map(|o| ["-o", o]))
            .args(["-q", "download"])
            .args(packages.iter().map(|p| p.pinned()));
        run(&mut command)?;
        packages.iter().map(|p| find_deb(dir, &p.name)).collect()
    }
}

/// Unpacks the file system tree of `deb` into `dest` (`dpkg-deb -x`).
pub fn extract(deb: &Path, dest: &Path) -> Result<(), Error> {
    run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(dest))
}

fn bad_record(package: &str, what: &'static str) -> Error {
    Error::BadRecord {
        package: package.to_owned(),
        what,
    }
}

/// The value of a `Field: value` line of a package record.
fn field<'a>(record: &'a str, name: &str) -> Option<&'a str> {
    record
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(':').map(str::trim))
}

/// The first `linux-image-*` package in the Depends of the metapackage's record.
fn kernel_dependency(record: &str) -> Option<String> {
    field(record, "Depends")?
        .split([',', '|'])
        .filter_map(|dep| dep.split_whitespace().next())
        .find(|name| name.starts_with("linux-image-") && *name != KERNEL_METAPACKAGE)
        .map(str::to_owned)
}

/// The `.deb` apt-get downloaded for `package` (`<name>_<version>_<arch>.deb`).
fn find_deb(dir: &Path, package: &str) -> Result<PathBuf, Error> {
    let entries = std::fs::read_dir(dir).map_err(|source| Error::ReadDir {
        dir: dir.to_owned(),
        source,
    })?;
    let prefix = format!("{package}_");
    for entry in entries {
        let entry = entry.map_err(|source| Error::ReadDir {
            dir: dir.to_owned(),
            source,
        })?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(&prefix) && name.ends_with(".deb") {
            return Ok(entry.path());
        }
    }
    Err(Error::NoDeb {
        package: package.to_owned(),
        dir: dir.to_owned(),
    })
}

fn command_line(command: &Command) -> String {
    std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(OsStr::to_string_lossy)
        .collect::<Vec<_>>()
        .join(" ")
}

fn run_output(command: &mut Command) -> Result<Output, Error> {
    let tool = command.get_program().to_string_lossy().into_owned();
    command
        .output()
        .map_err(|source| Error::Spawn { tool, source })
}

/// Runs `command`, turning a failure into an error carrying the end of its stderr.
fn run(command: &mut Command) -> Result<(), Error> {
    let output = run_output(command)?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = lines[lines.len().saturating_sub(5)..].join("\n");
    Err(Error::Failed {
        command: command_line(command),
        stderr: tail,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    const META_RECORD: &str = "Package: linux-image-cloud-amd64\n\
        Source: linux-signed-amd64 (6.1.192+2)\n\
        Version: 6.1.192-2\n\
        Depends: linux-image-6.1.0-56-cloud-amd64 (= 6.1.192-2)\n\
        Description: Linux for x86-64 cloud (meta-package)\n";

    #[test]
    fn metapackage_record_gives_the_kernel_package() {
        assert_eq!(field(META_RECORD, "Version"), Some("6.1.192-2"));
        assert_eq!(
            kernel_dependency(META_RECORD).as_deref(),
            Some("linux-image-6.1.0-56-cloud-amd64")
        );
        let alternatives =
            "Package: x\nDepends: foo (>= 1) | linux-image-6.1.0-9-cloud-amd64, bar\n";
        assert_eq!(
            kernel_dependency(alternatives).as_deref(),
            Some("linux-image-6.1.0-9-cloud-amd64")
        );
        assert_eq!(kernel_dependency("Package: x\nDepends: foo, bar\n"), None);
    }

    /// An apt that reads its package lists from the empty directory `lists` and sees no installed
    /// packages: what a host looks like before its first `apt-get update`.
    pub(crate) fn apt_without_lists(lists: &Path) -> Apt {
        std::fs::create_dir_all(lists.join("partial")).unwrap();
        Apt::new()
            .option(&format!("Dir::State::Lists={}", lists.display()))
            .option("Dir::State::status=/dev/null")
            .option("Dir::Cache::pkgcache=")
            .option("Dir::Cache::srcpkgcache=")
    }

    #[test]
    fn empty_package_lists_ask_for_apt_get_update() {
        let empty =
            std::env::temp_dir().join(format!("guest-image-empty-lists-{}", std::process::id()));
        let apt = apt_without_lists(&empty);
        let result = apt.resolve();
        std::fs::remove_dir_all(&empty).unwrap();
        match result {
            Err(Error::ListsMissing { package }) => assert_eq!(package, KERNEL_METAPACKAGE),
            // Without apt at all the error says so instead; both tell the user what is wrong.
            Err(Error::Spawn { tool, .. }) => assert_eq!(tool, "apt-cache"),
            other => panic!("expected a missing-lists error, got {other:?}"),
        }
        let message = Error::ListsMissing {
            package: KERNEL_METAPACKAGE.into(),
        }
        .to_string();
        assert!(message.contains("run `apt-get update`"), "{message}");
    }

    #[test]
    fn failed_command_reports_its_stderr() {
        let err =
            run(Command::new("sh").args(["-c", "echo first >&2; echo 'E: boom' >&2; exit 3"]));
        let err = err.unwrap_err().to_string();
        assert_eq!(
            err,
            "`sh -c echo first >&2; echo 'E: boom' >&2; exit 3` failed: first\nE: boom"
        );
    }
}
