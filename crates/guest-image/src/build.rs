//! Builds the default guest into its cache directory: download, unpack, decompress the kernel,
//! pick the modules, write the initramfs, then the manifest.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::apt::{self, Apt, Resolved};
use crate::manifest::{self, BZIMAGE, INITRAMFS, VMLINUX};
use crate::modules::{self, DEFAULT_GUEST_MODULES};
use crate::{DefaultGuest, Error, bzimage, initramfs, io_error};

/// A scratch directory under the cache, removed when dropped (also when the build fails).
struct WorkDir(PathBuf);

impl WorkDir {
    fn create(cache: &Path) -> Result<Self, Error> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = cache
            .join("work")
            .join(format!("build-{}-{n}", std::process::id()));
        // Leftovers of a crashed build with a recycled pid are stale; start afresh.
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).map_err(io_error("create directory", &dir))?;
        Ok(Self(dir))
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// The first existing path among `candidates` under `root` (Debian is moving `/lib` to `/usr/lib`).
fn first_existing(root: &Path, candidates: &[&str]) -> Option<PathBuf> {
    candidates.iter().map(|c| root.join(c)).find(|p| p.exists())
}

/// Finds `boot/vmlinuz-<release>` in an unpacked kernel package.
fn find_kernel(root: &Path, package: &str) -> Result<(PathBuf, String), Error> {
    let boot = root.join("boot");
    let missing = || Error::MissingFile {
        package: package.to_owned(),
        what: "/boot/vmlinuz-*",
    };
    let entries = fs::read_dir(&boot).map_err(|_| missing())?;
    for entry in entries {
        let entry = entry.map_err(io_error("list", &boot))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(release) = name.strip_prefix("vmlinuz-") {
            return Ok((entry.path(), release.to_owned()));
        }
    }
    Err(missing())
}

fn read(path: &Path) -> Result<Vec<u8>, Error> {
    fs::read(path).map_err(io_error("read", path))
}

/// Builds the guest for `resolved` into `dest`, using a scratch directory under `cache`.
pub(crate) fn build(
    apt: &Apt,
    resolved: &Resolved,
    cache: &Path,
    dest: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<DefaultGuest, Error> {
    let Resolved { kernel, busybox } = resolved;
    let work = WorkDir::create(cache)?;
    progress(&format!(
        "downloading {} {} and {} {}",
        kernel.name, kernel.version, busybox.name, busybox.version
    ));
    let debs = apt.download(&[kernel, busybox], &work.0)?;
    progress(&format!("unpacking {} and {}", kernel.name, busybox.name));
    let (kernel_root, busybox_root) = (work.0.join("kernel"), work.0.join("busybox"));
    apt::extract(&debs[0], &kernel_root)?;
    apt::extract(&debs[1], &busybox_root)?;

    let (bzimage_path, release) = find_kernel(&kernel_root, &kernel.name)?;
    let bzimage = read(&bzimage_path)?;
    let kernel_error = |source| Error::Kernel {
        path: bzimage_path.clone(),
        source,
    };
    let compression = bzimage::payload(&bzimage)
        .map_err(kernel_error)?
        .compression;
    progress(&format!("decompressing vmlinux ({})", compression.name()));
    let vmlinux = bzimage::extract_vmlinux(&bzimage).map_err(kernel_error)?;

    let module_dir = first_existing(
        &kernel_root,
        &[
            &format!("lib/modules/{release}"),
            &format!("usr/lib/modules/{release}"),
        ],
    )
    .ok_or_else(|| Error::MissingFile {
        package: kernel.name.clone(),
        what: "/lib/modules/<release>",
    })?;
    let selection = modules::select(&module_dir, DEFAULT_GUEST_MODULES)?;
    let names: Vec<String> = selection.modules.iter().map(|m| m.name.clone()).collect();
    let builtin = if selection.builtin.is_empty() {
        String::new()
    } else {
        format!("; built in: {}", selection.builtin.join(", "))
    };
    progress(&format!(
        "selected {} modules: {}{builtin}",
        names.len(),
        names.join(", ")
    ));

    let busybox_path = first_existing(&busybox_root, &["bin/busybox", "usr/bin/busybox"])
        .ok_or_else(|| Error::MissingFile {
            package: busybox.name.clone(),
            what: "/bin/busybox",
        })?;
    let busybox_bin = read(&busybox_path)?;
    let contents = initramfs::Contents {
        busybox: &busybox_bin,
        kernel_release: &release,
        modules: &selection.modules,
    };
    let (archive, written) =
        initramfs::write(Vec::new(), &contents).map_err(io_error("write initramfs for", dest))?;
    progress(&format!(
        "writing initramfs ({} files, {:.1} MiB)",
        written.entries,
        written.bytes as f64 / (1024.0 * 1024.0)
    ));

    fs::create_dir_all(dest).map_err(io_error("create directory", dest))?;
    // A stale manifest must not vouch for the files being replaced.
    match fs::remove_file(dest.join(manifest::MANIFEST)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(io_error("remove", &dest.join(manifest::MANIFEST))(e));
        }
        _ => {}
    }
    manifest::write_atomic(&dest.join(VMLINUX), &vmlinux)?;
    manifest::write_atomic(&dest.join(BZIMAGE), &bzimage)?;
    manifest::write_atomic(&dest.join(INITRAMFS), &archive)?;
    let guest = DefaultGuest {
        dir: dest.to_owned(),
        vmlinux: dest.join(VMLINUX),
        bzimage: dest.join(BZIMAGE),
        initramfs: dest.join(INITRAMFS),
        kernel_version: release,
        kernel_package: kernel.clone(),
        modules: names,
    };
    manifest::store(&guest, busybox)?;
    progress(&format!("guest ready in {}", dest.display()));
    Ok(guest)
}
