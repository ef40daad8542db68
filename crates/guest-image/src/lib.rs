//! popek's default Linux guest: Debian's cloud kernel and a busybox initramfs, assembled from
//! Debian packages and cached per user.
//!
//! [`ensure_default_guest`] returns a ready guest, building it on first use: it resolves
//! `linux-image-cloud-amd64` to the real kernel package with apt, downloads it and
//! `busybox-static`, turns the kernel's bzImage into an uncompressed PVH-bootable `vmlinux`, and
//! writes an initramfs holding busybox, an `/init` script and the virtio modules. Once booted, the
//! guest prints a line starting with [`READY_MARKER`] and opens a shell on the console.
//!
//! Cache layout, under [`cache_dir`]:
//!
//! ```text
//! guests/debian-cloud-<kernel package version>/
//!     vmlinux          uncompressed ELF kernel with the Xen PVH note
//!     bzImage          the kernel as Debian ships it
//!     initramfs.cpio   uncompressed newc archive
//!     manifest         written last, atomically: a guest without it is incomplete
//! work/build-<pid>-<n>/  downloads and unpacked packages while building, removed afterwards
//! ```
//!
//! Nothing here prints: progress goes to a callback so the CLI decides what to show.

pub mod apt;
mod build;
pub mod bzimage;
pub mod cpio;
pub mod elf;
pub mod initramfs;
mod manifest;
pub mod modules;

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// The start of the line the default guest's `/init` prints once its modules are loaded; the full
/// line is `popek: guest ready (kernel <uname -r>)`.
pub const READY_MARKER: &str = "popek: guest ready";

/// Why the default guest could not be found or built.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No environment variable names a cache directory.
    #[error("Cannot find a cache directory: set POPEK_CACHE_DIR, XDG_CACHE_HOME or HOME")]
    NoCacheDir,
    /// apt or dpkg failed.
    #[error(transparent)]
    Apt(#[from] apt::Error),
    /// The kernel image could not be turned into a bootable `vmlinux`.
    #[error("Cannot get a PVH-bootable vmlinux from {path}")]
    Kernel {
        /// The bzImage.
        path: PathBuf,
        /// The cause.
        #[source]
        source: bzimage::Error,
    },
    /// Selecting the modules failed.
    #[error(transparent)]
    Modules(#[from] modules::Error),
    /// An unpacked package lacks a file the guest needs.
    #[error("Package {package} has no {what}")]
    MissingFile {
        /// The package.
        package: String,
        /// The file looked for.
        what: &'static str,
    },
    /// A file system operation failed.
    #[error("Cannot {action} {path}")]
    Io {
        /// What was being done ("read", "write", "create directory").
        action: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Shorthand to attach an action and a path to an I/O error.
pub(crate) fn io_error(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.to_owned();
    move |source| Error::Io {
        action,
        path,
        source,
    }
}

/// A complete default guest in the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefaultGuest {
    /// The guest's directory, `<cache>/guests/debian-cloud-<package version>`.
    pub dir: PathBuf,
    /// Uncompressed ELF kernel, bootable through its PVH entry point.
    pub vmlinux: PathBuf,
    /// The compressed kernel as Debian ships it.
    pub bzimage: PathBuf,
    /// Uncompressed newc initramfs.
    pub initramfs: PathBuf,
    /// Kernel release as `uname -r` prints it, for example `6.1.0-56-cloud-amd64`.
    pub kernel_version: String,
    /// The kernel package and its Debian version, for example `linux-image-6.1.0-56-cloud-amd64`
    /// and `6.1.192-2`.
    pub kernel_package: apt::Package,
    /// The modules `/init` loads, in load order.
    pub modules: Vec<String>,
}

/// The per-user cache directory: `$POPEK_CACHE_DIR` if set, else `$XDG_CACHE_HOME/popek`, else
/// `$HOME/.cache/popek`.
pub fn cache_dir() -> Result<PathBuf, Error> {
    let var = |name| std::env::var_os(name);
    cache_dir_from(var("POPEK_CACHE_DIR"), var("XDG_CACHE_HOME"), var("HOME"))
        .ok_or(Error::NoCacheDir)
}

fn cache_dir_from(
    popek: Option<OsString>,
    xdg_cache_home: Option<OsString>,
    home: Option<OsString>,
) -> Option<PathBuf> {
    let set = |v: Option<OsString>| v.filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(dir) = set(popek) {
        return Some(dir);
    }
    // The XDG spec says relative values are invalid and must be ignored.
    if let Some(dir) = set(xdg_cache_home).filter(|d| d.is_absolute()) {
        return Some(dir.join("popek"));
    }
    set(home).map(|home| home.join(".cache").join("popek"))
}

/// The directory of the guest built from kernel package version `version`.
fn guest_dir(cache: &Path, version: &str) -> PathBuf {
    // Debian versions may hold ':' (epochs); keep the directory name plain.
    let safe: String = version
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || ".+~-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    cache.join("guests").join(format!("debian-cloud-{safe}"))
}

/// The newest complete guest in the user's cache, if any.
pub fn find_cached() -> Result<Option<DefaultGuest>, Error> {
    find_cached_in(&cache_dir()?)
}

/// The newest complete guest under the cache directory `cache`, if any.
pub fn find_cached_in(cache: &Path) -> Result<Option<DefaultGuest>, Error> {
    let guests = cache.join("guests");
    let entries = match std::fs::read_dir(&guests) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error("list", &guests)(e)),
    };
    let mut newest: Option<DefaultGuest> = None;
    for entry in entries {
        let entry = entry.map_err(io_error("list", &guests))?;
        if !entry
            .file_name()
            .to_string_lossy()
            .starts_with("debian-cloud-")
        {
            continue;
        }
        if let Some(guest) = manifest::load(&entry.path())? {
            let version = &guest.kernel_package.version;
            if newest.as_ref().is_none_or(|n| {
                manifest::compare_versions(version, &n.kernel_package.version).is_gt()
            }) {
                newest = Some(guest);
            }
        }
    }
    Ok(newest)
}

/// Returns the default guest from the user's cache, building it first if the cache lacks the
/// version apt currently offers. Without apt (offline, no lists) the newest cached guest is used.
pub fn ensure_default_guest(progress: &mut dyn FnMut(&str)) -> Result<DefaultGuest, Error> {
    ensure_default_guest_in(&cache_dir()?, progress)
}

/// [`ensure_default_guest`] with an explicit cache directory.
pub fn ensure_default_guest_in(
    cache: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<DefaultGuest, Error> {
    ensure_with(&apt::Apt::new(), cache, progress)
}

/// [`ensure_default_guest_in`] with a given apt (tests point it at empty package lists).
fn ensure_with(
    apt: &apt::Apt,
    cache: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<DefaultGuest, Error> {
    progress(&format!("resolving {}", apt::KERNEL_METAPACKAGE));
    let resolved = match apt.resolve() {
        Ok(resolved) => resolved,
        Err(e) => return use_cached_instead(cache, e, progress),
    };
    let dir = guest_dir(cache, &resolved.kernel.version);
    if let Some(guest) = manifest::load(&dir)? {
        progress(&format!("using cached guest {}", dir.display()));
        return Ok(guest);
    }
    match build::build(apt, &resolved, cache, &dir, progress) {
        // Package lists may name a version the host cannot download while offline.
        Err(Error::Apt(e)) => use_cached_instead(cache, e, progress),
        result => result,
    }
}

/// Falls back to the newest cached guest when apt failed, or returns apt's error if there is none.
fn use_cached_instead(
    cache: &Path,
    error: apt::Error,
    progress: &mut dyn FnMut(&str),
) -> Result<DefaultGuest, Error> {
    match find_cached_in(cache)? {
        Some(guest) => {
            progress(&format!(
                "{error}; using cached guest {}",
                guest.dir.display()
            ));
            Ok(guest)
        }
        None => Err(error.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn some(s: &str) -> Option<OsString> {
        Some(s.into())
    }

    #[test]
    fn cache_dir_prefers_popek_then_xdg_then_home() {
        assert_eq!(
            cache_dir_from(some("/p"), some("/x"), some("/h")),
            Some("/p".into())
        );
        assert_eq!(
            cache_dir_from(None, some("/x"), some("/h")),
            Some("/x/popek".into())
        );
        assert_eq!(
            cache_dir_from(some(""), some(""), some("/h")),
            Some("/h/.cache/popek".into())
        );
        assert_eq!(
            cache_dir_from(None, some("relative"), some("/h")),
            Some("/h/.cache/popek".into())
        );
        assert_eq!(cache_dir_from(None, None, None), None);
    }

    #[test]
    fn guest_dir_is_named_after_the_package_version() {
        let dir = guest_dir(Path::new("/c"), "6.1.192-2");
        assert_eq!(dir, Path::new("/c/guests/debian-cloud-6.1.192-2"));
        assert_eq!(
            guest_dir(Path::new("/c"), "1:2.0/x"),
            Path::new("/c/guests/debian-cloud-1_2.0_x")
        );
    }

    #[test]
    fn without_apt_lists_the_newest_cached_guest_is_used() {
        let cache = manifest::tests::temp("offline");
        let apt = apt::tests::apt_without_lists(&cache.join("lists"));
        let mut steps = Vec::new();
        // Nothing cached: the user learns to run apt-get update.
        let err = ensure_with(&apt, &cache, &mut |s| steps.push(s.to_owned())).unwrap_err();
        assert!(err.to_string().contains("run `apt-get update`"), "{err}");

        manifest::tests::fake_guest(&cache, "6.1.76-1");
        let newest = manifest::tests::fake_guest(&cache, "6.1.192-2");
        steps.clear();
        let guest = ensure_with(&apt, &cache, &mut |s| steps.push(s.to_owned())).unwrap();
        assert_eq!(guest, newest);
        assert!(
            steps.last().unwrap().contains("using cached guest"),
            "{steps:?}"
        );
        std::fs::remove_dir_all(cache).unwrap();
    }
}
