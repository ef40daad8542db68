//! Picks the kernel modules the default guest loads, and the order to load them in.
//!
//! Debian's kernel package ships no `modules.dep`: `depmod` writes it when the package is installed.
//! So dependencies come from each module's `.modinfo` section instead, whose `depends=` entry modpost
//! writes from the symbols the module imports (the same information `depmod` turns into
//! `modules.dep`). `modules.order` lists the loadable modules and `modules.builtin` the ones compiled
//! into the kernel, which need no loading. When a `modules.dep` is present it is not needed either.
//!
//! Debian 12 ships its modules uncompressed (`.ko`). Other kernels compress them (`.ko.xz`,
//! `.ko.zst`, `.ko.gz`); those are decompressed with the `xz`/`zstd`/`gzip` commands, because this
//! crate would otherwise carry three decoders for a case the default guest never hits. The
//! initramfs always holds plain `.ko` files, so busybox's `insmod` needs no decompressor.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::elf;

/// The modules the default guest loads, by module name (dashes written as underscores). Their
/// dependencies are added automatically, and those compiled into the kernel are skipped.
pub const DEFAULT_GUEST_MODULES: &[&str] = &[
    "virtio",
    "virtio_ring",
    "virtio_pci_modern_dev",
    "virtio_pci_legacy_dev",
    "virtio_pci",
    "virtio_blk",
    "failover",
    "net_failover",
    "virtio_net",
    // The hw_random core, built as rng-core.ko where it is not built in.
    "rng_core",
    "virtio_rng",
    "vsock",
    "vmw_vsock_virtio_transport_common",
    "vmw_vsock_virtio_transport",
];

/// Why the module selection failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file of the module tree could not be read.
    #[error("Cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A wanted module (or a dependency) is neither a loadable module nor built in.
    #[error("Kernel module {name} is neither in modules.order nor in modules.builtin of {dir}")]
    Missing {
        /// Module name.
        name: String,
        /// The `/lib/modules/<version>` directory.
        dir: PathBuf,
    },
    /// A module file is not an ELF with a `.modinfo` section.
    #[error("{path} is not a kernel module (no .modinfo section)")]
    NotAModule {
        /// The module file.
        path: PathBuf,
    },
    /// A compressed module could not be decompressed.
    #[error("Cannot decompress {path} with `{tool}`: {detail}")]
    Decompress {
        /// The module file.
        path: PathBuf,
        /// The command used.
        tool: &'static str,
        /// What went wrong.
        detail: String,
    },
    /// The dependencies form a cycle (a broken module tree).
    #[error("Kernel modules depend on each other in a cycle through {0}")]
    Cycle(String),
}

/// A loadable module picked for the initramfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Module {
    /// Module name, as `lsmod` shows it.
    pub name: String,
    /// Path relative to `/lib/modules/<version>/`, always ending in `.ko`.
    pub rel_path: String,
    /// The uncompressed module.
    pub data: Vec<u8>,
}

/// The result of [`select`].
#[derive(Debug, Default)]
pub struct Selection {
    /// Modules to load, dependencies before the modules that need them.
    pub modules: Vec<Module>,
    /// Wanted modules that are compiled into the kernel.
    pub builtin: Vec<String>,
}

/// Module name of a path in `modules.order` or `modules.builtin`: `kernel/x/virtio-rng.ko` gives
/// `virtio_rng`.
fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    stem.replace('-', "_")
}

/// Reads a list file (`modules.order`, `modules.builtin`) into name -> relative path.
fn read_list(path: &Path) -> Result<BTreeMap<String, String>, Error> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        // A kernel without modules of one kind may lack the file.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(source) => {
            return Err(Error::Read {
                path: path.to_owned(),
                source,
            });
        }
    };
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| (module_name(l), l.to_owned()))
        .collect())
}

/// The `depends=` list of a module's `.modinfo` section.
pub fn modinfo_depends(module: &[u8]) -> Option<Vec<String>> {
    let modinfo = elf::section(module, ".modinfo")?;
    let depends = modinfo
        .split(|&b| b == 0)
        .find_map(|entry| entry.strip_prefix(b"depends="))
        .unwrap_or_default();
    Some(
        String::from_utf8_lossy(depends)
            .split(',')
            .filter(|d| !d.is_empty())
            .map(|d| d.replace('-', "_"))
            .collect(),
    )
}

/// Suffixes of compressed modules, with the command and arguments that decompress to stdout.
const COMPRESSED: [(&str, &str, &[&str]); 3] = [
    (".xz", "xz", &["-dc"]),
    (".zst", "zstd", &["-dcq"]),
    (".gz", "gzip", &["-dc"]),
];

/// Reads a module file, trying the compressed variants when the plain `.ko` is absent. Returns the
/// uncompressed module and its path relative to `dir` with the compression suffix dropped.
fn read_module(dir: &Path, listed: &str) -> Result<(Vec<u8>, String), Error> {
    let plain = listed.split(".ko").next().unwrap_or(listed).to_owned() + ".ko";
    let read = |path: &Path| match fs::read(path) {
        Ok(data) => Ok(Some(data)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(Error::Read {
            path: path.to_owned(),
            source,
        }),
    };
    if let Some(data) = read(&dir.join(&plain))? {
        return Ok((data, plain));
    }
    for (suffix, tool, args) in COMPRESSED {
        let path = dir.join(format!("{plain}{suffix}"));
        if let Some(data) = read(&path)? {
            return Ok((decompress(&path, tool, args, &data)?, plain));
        }
    }
    let source = std::io::Error::new(
        std::io::ErrorKind::NotFound,
        "no .ko, .ko.xz, .ko.zst or .ko.gz",
    );
    Err(Error::Read {
        path: dir.join(plain),
        source,
    })
}

/// Runs `tool args` with `input` on stdin and returns its stdout.
fn decompress(
    path: &Path,
    tool: &'static str,
    args: &[&str],
    input: &[u8],
) -> Result<Vec<u8>, Error> {
    let fail = |detail: String| Error::Decompress {
        path: path.to_owned(),
        tool,
        detail,
    };
    let mut child = Command::new(tool)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(format!("{e} (install the {tool} package)")))?;
    let mut stdin = child.stdin.take().expect("stdin is piped");
    // Feed stdin from a thread so a full stdout pipe cannot deadlock us.
    let output = std::thread::scope(|s| {
        s.spawn(move || {
            let _ = stdin.write_all(input);
        });
        child.wait_with_output()
    })
    .map_err(|e| fail(e.to_string()))?;
    if !output.status.success() {
        return Err(fail(
            String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        ));
    }
    Ok(output.stdout)
}

/// Selects `wanted` and everything they depend on from the module tree `dir`
/// (`/lib/modules/<version>` of an extracted kernel package), dependencies first.
///
/// Order is deterministic: a depth-first walk over `wanted` in the given order, each module's
/// dependencies visited in their `depends=` order before the module itself.
pub fn select(dir: &Path, wanted: &[&str]) -> Result<Selection, Error> {
    let loadable = read_list(&dir.join("modules.order"))?;
    let builtin = read_list(&dir.join("modules.builtin"))?;
    let mut walk = Walk {
        dir,
        loadable: &loadable,
        builtin: &builtin,
        done: BTreeSet::new(),
        selection: Selection::default(),
    };
    for name in wanted {
        walk.visit(&name.replace('-', "_"), &mut Vec::new())?;
    }
    let Walk { selection, .. } = walk;
    Ok(selection)
}

/// State of the depth-first walk in [`select`].
struct Walk<'a> {
    dir: &'a Path,
    loadable: &'a BTreeMap<String, String>,
    builtin: &'a BTreeMap<String, String>,
    done: BTreeSet<String>,
    selection: Selection,
}

impl Walk<'_> {
    fn visit(&mut self, name: &str, path: &mut Vec<String>) -> Result<(), Error> {
        if self.done.contains(name) {
            return Ok(());
        }
        if path.iter().any(|p| p == name) {
            return Err(Error::Cycle(name.to_owned()));
        }
        let Some(listed) = self.loadable.get(name) else {
            if self.builtin.contains_key(name) {
                self.done.insert(name.to_owned());
                self.selection.builtin.push(name.to_owned());
                return Ok(());
            }
            return Err(Error::Missing {
                name: name.to_owned(),
                dir: self.dir.to_owned(),
            });
        };
        let (data, rel_path) = read_module(self.dir, listed)?;
        let depends = modinfo_depends(&data).ok_or_else(|| Error::NotAModule {
            path: self.dir.join(&rel_path),
        })?;
        path.push(name.to_owned());
        for dep in &depends {
            self.visit(dep, path)?;
        }
        path.pop();
        self.done.insert(name.to_owned());
        self.selection.modules.push(Module {
            name: name.to_owned(),
            rel_path,
            data,
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::elf::tests::elf_with_section;

    /// A minimal ELF with only a `.modinfo` section, like a `.ko` as far as [`select`] cares.
    fn fake_module(name: &str, depends: &str) -> Vec<u8> {
        let modinfo = format!("license=GPL\0depends={depends}\0name={name}\0");
        elf_with_section(".modinfo", modinfo.as_bytes())
    }

    /// A module tree in a fresh temporary directory: (relative path, depends) per module.
    fn tree(test: &str, modules: &[(&str, &str)], builtin: &[&str]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("guest-image-{test}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let mut order = String::new();
        for (rel, depends) in modules {
            let path = dir.join(rel);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(&path, fake_module(&module_name(rel), depends)).unwrap();
            order += &format!("{rel}\n");
        }
        fs::write(dir.join("modules.order"), order).unwrap();
        fs::write(dir.join("modules.builtin"), builtin.join("\n")).unwrap();
        dir
    }

    #[test]
    fn dependencies_load_first_and_builtins_are_skipped() {
        let dir = tree(
            "order",
            &[
                ("kernel/drivers/virtio/virtio.ko", "virtio_ring"),
                ("kernel/drivers/virtio/virtio_ring.ko", ""),
                (
                    "kernel/drivers/net/virtio_net.ko",
                    "virtio_ring,virtio,net_failover",
                ),
                ("kernel/drivers/net/net_failover.ko", "failover"),
                ("kernel/net/core/failover.ko", ""),
                (
                    "kernel/drivers/char/hw_random/virtio-rng.ko",
                    "virtio,virtio_ring",
                ),
            ],
            &["kernel/drivers/char/hw_random/rng-core.ko"],
        );
        let selection = select(&dir, &["virtio_net", "rng_core", "virtio-rng", "virtio"]).unwrap();
        let names: Vec<&str> = selection.modules.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "virtio_ring",
                "virtio",
                "failover",
                "net_failover",
                "virtio_net",
                "virtio_rng"
            ]
        );
        assert_eq!(selection.builtin, ["rng_core"]);
        assert_eq!(
            selection.modules[5].rel_path,
            "kernel/drivers/char/hw_random/virtio-rng.ko"
        );
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn missing_module_and_missing_dependency_are_errors() {
        let dir = tree("missing", &[("kernel/a.ko", "b")], &[]);
        let err = select(&dir, &["nope"]).unwrap_err().to_string();
        assert!(
            err.starts_with("Kernel module nope is neither in modules.order"),
            "{err}"
        );
        let err = select(&dir, &["a"]).unwrap_err().to_string();
        assert!(err.starts_with("Kernel module b is neither"), "{err}");
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn dependency_cycle_is_an_error_not_a_hang() {
        let dir = tree("cycle", &[("kernel/a.ko", "b"), ("kernel/b.ko", "a")], &[]);
        assert!(matches!(select(&dir, &["a"]), Err(Error::Cycle(_))));
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn xz_compressed_modules_are_decompressed() {
        if Command::new("xz").arg("--version").output().is_err() {
            eprintln!("skipped: no xz command on this host");
            return;
        }
        let dir = tree("xz", &[("kernel/a.ko", "")], &[]);
        let status = Command::new("xz")
            .arg(dir.join("kernel/a.ko"))
            .status()
            .unwrap();
        assert!(status.success());
        assert!(!dir.join("kernel/a.ko").exists());
        let selection = select(&dir, &["a"]).unwrap();
        assert_eq!(selection.modules[0].rel_path, "kernel/a.ko");
        assert_eq!(selection.modules[0].data, fake_module("a", ""));
        fs::remove_dir_all(dir).unwrap();
    }
}
