//! The `manifest` file that marks a cached guest complete, and atomic writes for the cache.
//!
//! The manifest is plain `key=value` lines. It is written last and by rename, and records the size
//! of every file, so a guest whose build was interrupted (or whose files were damaged) is not taken
//! as complete and gets rebuilt.

use std::cmp::Ordering;
use std::fs;
use std::io::Write;
use std::path::Path;

use crate::{DefaultGuest, Error, apt, io_error};

/// Format version written in the first line; bump it when the layout changes so old guests are
/// rebuilt.
const FORMAT: &str = "popek-default-guest=1";
/// Name of the manifest file in a guest directory.
pub(crate) const MANIFEST: &str = "manifest";
/// File names of a guest.
pub(crate) const VMLINUX: &str = "vmlinux";
pub(crate) const BZIMAGE: &str = "bzImage";
pub(crate) const INITRAMFS: &str = "initramfs.cpio";

/// Writes `data` to `path` through a temporary file in the same directory and a rename, so readers
/// see either the old file or the complete new one.
pub(crate) fn write_atomic(path: &Path, data: &[u8]) -> Result<(), Error> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut file = fs::File::create(&tmp)?;
        file.write_all(data)?;
        file.sync_all()
    };
    if let Err(e) = write() {
        let _ = fs::remove_file(&tmp);
        return Err(io_error("write", &tmp)(e));
    }
    fs::rename(&tmp, path).map_err(io_error("rename into place", path))
}

/// Writes the manifest of a guest whose files are all in `guest.dir`.
pub(crate) fn store(guest: &DefaultGuest, busybox: &apt::Package) -> Result<(), Error> {
    let mut text = format!("{FORMAT}\n");
    text += &format!("kernel_package={}\n", guest.kernel_package.name);
    text += &format!("kernel_package_version={}\n", guest.kernel_package.version);
    text += &format!("kernel_release={}\n", guest.kernel_version);
    text += &format!("busybox_version={}\n", busybox.version);
    text += &format!("modules={}\n", guest.modules.join(","));
    for name in [VMLINUX, BZIMAGE, INITRAMFS] {
        let path = guest.dir.join(name);
        let size = fs::metadata(&path).map_err(io_error("stat", &path))?.len();
        text += &format!("size.{name}={size}\n");
    }
    write_atomic(&guest.dir.join(MANIFEST), text.as_bytes())
}

/// Loads the guest in `dir` if its manifest exists and its files have the recorded sizes.
pub(crate) fn load(dir: &Path) -> Result<Option<DefaultGuest>, Error> {
    let path = dir.join(MANIFEST);
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error("read", &path)(e)),
    };
    Ok(parse(dir, &text))
}

fn parse(dir: &Path, text: &str) -> Option<DefaultGuest> {
    let mut lines = text.lines();
    if lines.next()? != FORMAT {
        return None;
    }
    let fields: Vec<(&str, &str)> = lines.filter_map(|l| l.split_once('=')).collect();
    let get = |key: &str| {
        fields
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.to_string())
    };
    for name in [VMLINUX, BZIMAGE, INITRAMFS] {
        let recorded: u64 = get(&format!("size.{name}"))?.parse().ok()?;
        if fs::metadata(dir.join(name)).ok()?.len() != recorded {
            return None;
        }
    }
    let modules = get("modules")?;
    Some(DefaultGuest {
        dir: dir.to_owned(),
        vmlinux: dir.join(VMLINUX),
        bzimage: dir.join(BZIMAGE),
        initramfs: dir.join(INITRAMFS),
        kernel_version: get("kernel_release")?,
        kernel_package: apt::Package {
            name: get("kernel_package")?,
            version: get("kernel_package_version")?,
        },
        modules: modules
            .split(',')
            .filter(|m| !m.is_empty())
            .map(str::to_owned)
            .collect(),
    })
}

/// Orders Debian-style versions well enough to pick the newest cached kernel: runs of digits
/// compare as numbers, everything else as text (`6.1.192-2` > `6.1.76-1`).
pub(crate) fn compare_versions(a: &str, b: &str) -> Ordering {
    fn parts(v: &str) -> Vec<(bool, &str)> {
        let mut parts = Vec::new();
        let mut rest = v;
        while let Some(c) = rest.chars().next() {
            let digit = c.is_ascii_digit();
            let end = rest
                .find(|c: char| c.is_ascii_digit() != digit)
                .unwrap_or(rest.len());
            parts.push((digit, &rest[..end]));
            rest = &rest[end..];
        }
        parts
    }
    for (x, y) in parts(a).into_iter().zip(parts(b)) {
        let order = match (x, y) {
            ((true, x), (true, y)) => {
                let (x, y) = (x.trim_start_matches('0'), y.trim_start_matches('0'));
                x.len().cmp(&y.len()).then_with(|| x.cmp(y))
            }
            ((_, x), (_, y)) => x.cmp(y),
        };
        if order.is_ne() {
            return order;
        }
    }
    parts(a).len().cmp(&parts(b).len())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::path::PathBuf;

    fn guest(dir: &Path, version: &str) -> DefaultGuest {
        DefaultGuest {
            dir: dir.to_owned(),
            vmlinux: dir.join(VMLINUX),
            bzimage: dir.join(BZIMAGE),
            initramfs: dir.join(INITRAMFS),
            kernel_version: "6.1.0-56-cloud-amd64".into(),
            kernel_package: apt::Package {
                name: "linux-image-6.1.0-56-cloud-amd64".into(),
                version: version.into(),
            },
            modules: vec!["virtio_ring".into(), "virtio".into()],
        }
    }

    pub(crate) fn temp(test: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("guest-image-{test}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    /// Creates a complete fake guest in `<cache>/guests/debian-cloud-<version>`.
    pub(crate) fn fake_guest(cache: &Path, version: &str) -> DefaultGuest {
        let dir = crate::guest_dir(cache, version);
        fs::create_dir_all(&dir).unwrap();
        for name in [VMLINUX, BZIMAGE, INITRAMFS] {
            write_atomic(&dir.join(name), name.as_bytes()).unwrap();
        }
        let guest = guest(&dir, version);
        store(
            &guest,
            &apt::Package {
                name: "busybox-static".into(),
                version: "1:1.35".into(),
            },
        )
        .unwrap();
        guest
    }

    #[test]
    fn manifest_round_trips_and_damaged_guests_are_incomplete() {
        let cache = temp("manifest");
        let guest = fake_guest(&cache, "6.1.192-2");
        assert_eq!(load(&guest.dir).unwrap(), Some(guest.clone()));
        // No temporary files are left behind.
        let mut names: Vec<String> = fs::read_dir(&guest.dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, [BZIMAGE, INITRAMFS, MANIFEST, VMLINUX]);

        // A truncated initramfs makes the guest incomplete.
        fs::write(guest.dir.join(INITRAMFS), b"x").unwrap();
        assert_eq!(load(&guest.dir).unwrap(), None);
        // So does a missing manifest.
        fs::remove_file(guest.dir.join(MANIFEST)).unwrap();
        assert_eq!(load(&guest.dir).unwrap(), None);
        fs::remove_dir_all(cache).unwrap();
    }

    #[test]
    fn newest_complete_cached_guest_wins() {
        let cache = temp("newest");
        assert_eq!(crate::find_cached_in(&cache).unwrap(), None);
        fake_guest(&cache, "6.1.76-1");
        let newest = fake_guest(&cache, "6.1.192-2");
        fake_guest(&cache, "6.1.100-1");
        // A newer guest without a manifest (an interrupted build) is ignored.
        let partial = crate::guest_dir(&cache, "6.1.200-1");
        fs::create_dir_all(&partial).unwrap();
        fs::write(partial.join(VMLINUX), b"half").unwrap();
        assert_eq!(crate::find_cached_in(&cache).unwrap(), Some(newest));
        fs::remove_dir_all(cache).unwrap();
    }

    #[test]
    fn versions_compare_numerically() {
        assert!(compare_versions("6.1.192-2", "6.1.76-1").is_gt());
        assert!(compare_versions("6.1.76-1", "6.1.76-2").is_lt());
        assert!(compare_versions("6.10.1-1", "6.9.12-1").is_gt());
        assert!(compare_versions("6.1.1-1", "6.1.1-1").is_eq());
        assert!(compare_versions("6.1.1-1+b1", "6.1.1-1").is_gt());
    }
}
