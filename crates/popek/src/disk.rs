// Wiring in main.rs: `Disk { #[command(subcommand)] action: disk::DiskCommand }` in `Command`, and `Command::Disk { action } => disk::main(action)`.

//! `popek disk`: snapshots and rollback of a stopped VM's disk, made of qcow2 overlays.
//!
//! A snapshot NAME of DISK is the file `DISK.snap-NAME` next to it: DISK's content at the time,
//! frozen (its write bits are cleared, and nothing writes it again). DISK itself becomes a
//! qcow2 overlay on it, which the VM writes from then on. Snapshots stack: DISK →
//! `DISK.snap-tue` → `DISK.snap-mon` → ... down to the original file, which keeps its format
//! (raw or qcow2). Rolling back to NAME replaces DISK with a fresh, empty overlay on
//! `DISK.snap-NAME`; snapshots newer than NAME are deleted, which `rollback` refuses to do
//! without `--force`.
//!
//! The VM must be stopped. A running or paused VM holds its disk files open and would go on
//! writing into whatever file DISK was when it opened it, the frozen snapshot included: the
//! commands refuse while any process this user can see has a file of the chain open.
//!
//! Every change is made so that DISK is never missing: a new overlay is written and synced
//! under a temporary name in DISK's directory, then renamed over DISK. A snapshot first links
//! DISK's file to its snapshot name (which fails if that name exists), so a crash between the
//! steps leaves DISK as it was plus a second name for it. Whatever fails is undone before the
//! command exits. Refusals (bad input, an unknown snapshot, a corrupt image, a disk in use) exit
//! with status 2 and change nothing; a failure part-way (the host refusing a rename, say) exits
//! with status 1 after restoring what it can.

use std::ffi::{CString, OsStr, OsString};
use std::fs::{self, Metadata};
use std::io::ErrorKind;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, anyhow};
use block::{Format, OpenOptions};

/// Snapshots and rollback of a stopped VM's disk image.
#[derive(clap::Subcommand)]
pub enum DiskCommand {
    /// Freeze DISK's current content as snapshot NAME.
    ///
    /// DISK is renamed DISK.snap-NAME (and made read-only) and a new qcow2 overlay on it takes
    /// DISK's place. The VM must be stopped.
    Snapshot {
        /// The disk image (raw or qcow2) a VM is started with.
        disk: PathBuf,
        /// The snapshot's name: no '/', not empty.
        name: String,
        /// DISK's format; without it, qcow2 is recognised by its header and anything else is
        /// raw.
        #[arg(long, value_parser = parse_format)]
        format: Option<Format>,
    },
    /// Discard everything written to DISK since snapshot NAME.
    ///
    /// DISK becomes a fresh overlay on DISK.snap-NAME. Snapshots newer than NAME are deleted,
    /// with --force only. The VM must be stopped.
    Rollback {
        /// The disk image, an overlay whose chain reaches DISK.snap-NAME.
        disk: PathBuf,
        /// The snapshot to go back to.
        name: String,
        /// Delete the snapshots newer than NAME, if any (refused without).
        #[arg(long)]
        force: bool,
    },
    /// Show DISK's snapshots: its chain from DISK down to its base.
    ///
    /// Each file with its snapshot name, format, virtual size, space on the host and
    /// modification time.
    List {
        /// The disk image.
        disk: PathBuf,
    },
}

fn parse_format(s: &str) -> Result<Format, String> {
    s.parse().map_err(|e: block::Error| e.to_string())
}

/// Runs one `popek disk` command and turns its outcome into an exit status.
pub fn main(cmd: DiskCommand) -> ExitCode {
    let (what, result) = match cmd {
        DiskCommand::Snapshot { disk, name, format } => {
            ("snapshot", snapshot(&disk, &name, format))
        }
        DiskCommand::Rollback { disk, name, force } => ("rollback", rollback(&disk, &name, force)),
        DiskCommand::List { disk } => ("list", list(&disk)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Refused(e)) => {
            eprintln!("popek: disk {what}: {e:#}");
            ExitCode::from(crate::EXIT_USAGE)
        }
        Err(Failure::Failed(e)) => {
            eprintln!("popek: disk {what} failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Why a command did not do what it was asked.
#[derive(Debug)]
enum Failure {
    /// Bad input or a state that forbids the command; nothing was changed.
    Refused(anyhow::Error),
    /// Something failed part-way; what could be undone was.
    Failed(anyhow::Error),
}

fn refused<T>(e: impl Into<anyhow::Error>) -> Result<T, Failure> {
    Err(Failure::Refused(e.into()))
}

trait OrRefuse<T> {
    fn or_refuse(self) -> Result<T, Failure>;
    fn or_fail(self) -> Result<T, Failure>;
}

impl<T, E: Into<anyhow::Error>> OrRefuse<T> for Result<T, E> {
    fn or_refuse(self) -> Result<T, Failure> {
        self.map_err(|e| Failure::Refused(e.into()))
    }

    fn or_fail(self) -> Result<T, Failure> {
        self.map_err(|e| Failure::Failed(e.into()))
    }
}

/// One file of a disk's backing chain.
#[derive(Debug)]
struct Layer {
    /// As named by the layer above (resolved against its directory), or as given for DISK.
    path: PathBuf,
    format: Format,
    /// (device, inode).
    identity: (u64, u64),
    virtual_size: u64,
    meta: Metadata,
}

/// DISK and the files around it.
struct Disk<'a> {
    path: &'a Path,
    dir: &'a Path,
    file_name: &'a OsStr,
}

impl<'a> Disk<'a> {
    /// Checks that `path` names a regular file (not a symlink or a device: it is renamed).
    fn new(path: &'a Path) -> Result<(Self, Metadata), Failure> {
        let Some(file_name) = path.file_name() else {
            return refused(anyhow!("{} does not name a file", path.display()));
        };
        let meta = fs::symlink_metadata(path)
            .with_context(|| format!("{}", path.display()))
            .or_refuse()?;
        if !meta.is_file() {
            return refused(anyhow!(
                "{} is not a regular file (a symlink or a device); give the image file itself",
                path.display()
            ));
        }
        let dir = path.parent().unwrap_or(Path::new(""));
        Ok((
            Self {
                path,
                dir,
                file_name,
            },
            meta,
        ))
    }

    /// The file name of snapshot `name`.
    fn snapshot_file_name(&self, name: &str) -> OsString {
        let mut s = self.file_name.to_owned();
        s.push(".snap-");
        s.push(name);
        s
    }

    fn snapshot_path(&self, name: &str) -> PathBuf {
        self.dir.join(self.snapshot_file_name(name))
    }

    /// Where a new overlay is written before it is renamed over DISK.
    fn temp_path(&self) -> PathBuf {
        let mut s = OsString::from(".");
        s.push(self.file_name);
        s.push(format!(".popek-new-{}", std::process::id()));
        self.dir.join(s)
    }

    /// The snapshot name of `layer` if it is one of DISK's snapshots: a file of this directory
    /// named `DISK.snap-NAME`, which is the very file of the chain.
    fn snapshot_name(&self, layer: &Layer) -> Option<String> {
        let file_name = layer.path.file_name()?.as_bytes();
        let prefix = self.snapshot_file_name("");
        let name = file_name.strip_prefix(prefix.as_bytes())?;
        let name = std::str::from_utf8(name).ok()?;
        let sibling = fs::symlink_metadata(self.snapshot_path(name)).ok()?;
        (identity(&sibling) == layer.identity).then(|| name.to_owned())
    }

    /// Files of DISK's directory named like its snapshots.
    fn snapshot_files(&self) -> Vec<(String, PathBuf)> {
        let prefix = self.snapshot_file_name("");
        let dir = if self.dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            self.dir
        };
        let mut found: Vec<_> = fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| {
                let file_name = entry.file_name();
                let name = file_name.as_bytes().strip_prefix(prefix.as_bytes())?;
                let name = std::str::from_utf8(name).ok()?.to_owned();
                Some((name, self.dir.join(&file_name)))
            })
            .collect();
        found.sort();
        found
    }
}

fn identity(meta: &Metadata) -> (u64, u64) {
    (meta.dev(), meta.ino())
}

/// Refuses a snapshot name that cannot be part of a file name.
fn check_name(disk: &Disk<'_>, name: &str) -> Result<(), Failure> {
    if name.is_empty() {
        return refused(anyhow!("the snapshot name is empty"));
    }
    if name.contains('/') || name.chars().any(char::is_control) {
        return refused(anyhow!(
            "snapshot name {name:?} has a '/' or a control character"
        ));
    }
    // The temporary name is the longest one made from DISK's.
    let longest = disk
        .snapshot_file_name(name)
        .len()
        .max(disk.temp_path().file_name().map_or(0, OsStr::len));
    if longest > 255 {
        return refused(anyhow!(
            "snapshot name {name:?} makes a file name longer than 255 bytes"
        ));
    }
    Ok(())
}

/// Opens every file of the chain below `path` (read-only), which checks them all, and lists
/// them from `path` down. `format` is DISK's, probed when `None`; the formats below come from
/// the overlays' headers, or are probed as `block::open` does.
fn walk_chain(path: &Path, format: Option<Format>) -> anyhow::Result<Vec<Layer>> {
    let mut chain: Vec<Layer> = Vec::new();
    let mut next = Some((path.to_owned(), format));
    while let Some((path, format)) = next.take() {
        if chain.len() > block::MAX_BACKING_DEPTH {
            anyhow::bail!(
                "the backing chain of {} is deeper than {} files",
                chain[0].path.display(),
                block::MAX_BACKING_DEPTH
            );
        }
        let image = block::open(
            &path,
            &OpenOptions {
                format,
                read_only: true,
            },
        )?;
        let meta = fs::metadata(&path).with_context(|| format!("{}", path.display()))?;
        let layer = Layer {
            format: image.format(),
            identity: identity(&meta),
            virtual_size: image.size(),
            meta,
            path,
        };
        drop(image);
        if chain.iter().any(|l| l.identity == layer.identity) {
            anyhow::bail!("the backing chain loops at {}", layer.path.display());
        }
        if layer.format == Format::Qcow2 {
            next = block::backing_file(&layer.path)?;
        }
        chain.push(layer);
    }
    Ok(chain)
}

/// Processes (other than this one) that have one of `files` open, as "PID (COMMAND)". Only
/// processes whose descriptors this user may read are seen.
fn users_of(files: &[Layer]) -> Vec<String> {
    let me = std::process::id().to_string();
    let mut users = Vec::new();
    let Ok(procs) = fs::read_dir("/proc") else {
        return users;
    };
    for proc in procs.flatten() {
        let pid = proc.file_name();
        let Some(pid) = pid.to_str() else { continue };
        if pid == me || !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(fds) = fs::read_dir(proc.path().join("fd")) else {
            continue;
        };
        let holds = fds.flatten().any(|fd| {
            fs::metadata(fd.path()).is_ok_and(|m| files.iter().any(|l| l.identity == identity(&m)))
        });
        if holds {
            let comm = fs::read_to_string(proc.path().join("comm")).unwrap_or_default();
            users.push(format!("{pid} ({})", comm.trim()));
        }
    }
    users
}

/// Refuses when a process has one of `files` open: the files the command renames or deletes.
/// A VM using the disk has all of them open (files further down the chain are only read, and
/// may be shared by other VMs' disks).
fn check_unused(disk: &Disk<'_>, files: &[Layer]) -> Result<(), Failure> {
    let users = users_of(files);
    if users.is_empty() {
        return Ok(());
    }
    refused(anyhow!(
        "{} is open in process {}: stop the VM first (a running or paused VM would go on \
         writing into the files it has open)",
        disk.path.display(),
        users.join(", ")
    ))
}

/// Puts the directory's entries (renames, new files, removals) on stable storage.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    fs::File::open(dir)?.sync_all()
}

/// Renames `from` to `to` unless `to` exists.
fn rename_noreplace(from: &Path, to: &Path) -> std::io::Result<()> {
    let c = |p: &Path| {
        CString::new(p.as_os_str().as_bytes())
            .map_err(|_| std::io::Error::from(ErrorKind::InvalidInput))
    };
    let (from_c, to_c) = (c(from)?, c(to)?);
    // SAFETY: both strings are valid NUL-terminated paths that outlive the call; AT_FDCWD makes
    // relative paths relative to the current directory, as fs::rename does.
    let ret = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            from_c.as_ptr(),
            libc::AT_FDCWD,
            to_c.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if ret == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Writes a new, empty overlay on the snapshot file `backing_name` (in DISK's directory) under
/// DISK's temporary name, with DISK's permissions.
fn new_overlay(
    disk: &Disk<'_>,
    backing_name: &OsStr,
    format: Format,
    size: u64,
    mode: u32,
) -> anyhow::Result<PathBuf> {
    let temp = disk.temp_path();
    block::create_qcow2(&temp, size, Some((Path::new(backing_name), format)))?;
    if let Err(e) = fs::set_permissions(&temp, fs::Permissions::from_mode(mode & 0o7777)) {
        let _ = fs::remove_file(&temp);
        return Err(anyhow::Error::new(e).context(format!("{}", temp.display())));
    }
    Ok(temp)
}

fn snapshot(path: &Path, name: &str, format: Option<Format>) -> Result<(), Failure> {
    let (disk, meta) = Disk::new(path)?;
    check_name(&disk, name)?;
    if let Some((base, _)) = disk
        .file_name
        .to_str()
        .and_then(|n| n.rsplit_once(".snap-"))
        && disk.dir.join(base).exists()
    {
        return refused(anyhow!(
            "{} is a snapshot of {base} and stays frozen; snapshot {base} instead",
            path.display()
        ));
    }
    let chain = walk_chain(path, format).or_refuse()?;
    let top = &chain[0];
    let snap = disk.snapshot_path(name);
    if let Ok(existing) = fs::symlink_metadata(&snap) {
        let hint = if identity(&existing) == top.identity {
            " (another name of the disk itself, left by an interrupted snapshot: remove it)"
        } else {
            ""
        };
        return refused(anyhow!(
            "snapshot {name} of {} exists already: {}{hint}",
            path.display(),
            snap.display()
        ));
    }
    check_unused(&disk, &chain[..1])?;

    let snap_name = disk.snapshot_file_name(name);
    let temp = new_overlay(&disk, &snap_name, top.format, top.virtual_size, meta.mode())
        .context("Cannot write the new overlay")
        .or_fail()?;
    // Freeze: give DISK's file its snapshot name, keeping DISK, if the file system has hard
    // links; else rename it, and DISK is missing until the overlay takes its place.
    let linked = match fs::hard_link(path, &snap) {
        Ok(()) => true,
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {
            let _ = fs::remove_file(&temp);
            return refused(anyhow!("{} appeared meanwhile", snap.display()));
        }
        Err(_) => match rename_noreplace(path, &snap) {
            Ok(()) => false,
            Err(e) => {
                let _ = fs::remove_file(&temp);
                return Err(Failure::Failed(anyhow::Error::new(e).context(format!(
                    "Cannot rename {} to {}",
                    path.display(),
                    snap.display()
                ))));
            }
        },
    };
    let undo = |why: anyhow::Error| -> Failure {
        let restored = if linked {
            fs::remove_file(&snap)
        } else {
            fs::rename(&snap, path)
        };
        let _ = fs::remove_file(&temp);
        let _ = sync_dir(disk.dir);
        match restored {
            Ok(()) => Failure::Failed(why),
            Err(e) => Failure::Failed(why.context(format!(
                "and restoring {} failed ({e}): its content is in {}",
                path.display(),
                snap.display()
            ))),
        }
    };
    if let Err(e) = fs::rename(&temp, path) {
        return Err(undo(anyhow::Error::new(e).context(format!(
            "Cannot rename the new overlay {} to {}",
            temp.display(),
            path.display()
        ))));
    }
    let _ = sync_dir(disk.dir);
    // The overlay must show the frozen file; if not, put the original back in DISK's place.
    let check = walk_chain(path, None).and_then(|new| {
        anyhow::ensure!(
            new.len() == chain.len() + 1 && new[1].identity == top.identity,
            "the new overlay does not read through to {}",
            snap.display()
        );
        Ok(())
    });
    if let Err(e) = check {
        let restored = fs::rename(&snap, path);
        let _ = sync_dir(disk.dir);
        return Err(Failure::Failed(match restored {
            Ok(()) => e.context("the new overlay is unusable; the disk is back as it was"),
            Err(r) => e.context(format!(
                "the new overlay is unusable and restoring {} failed ({r}): its content is in {}",
                path.display(),
                snap.display()
            )),
        }));
    }
    // Nothing writes the frozen file any more; make that hard to do by accident.
    let read_only = fs::Permissions::from_mode(meta.mode() & 0o7555);
    let frozen_note = match fs::set_permissions(&snap, read_only) {
        Ok(()) => "made read-only",
        Err(_) => "its permissions unchanged",
    };
    println!(
        "Snapshot {name} of {}: its content is frozen in {} ({}, {frozen_note}); {} is now a \
         qcow2 overlay on it.",
        path.display(),
        snap.display(),
        top.format,
        path.display()
    );
    Ok(())
}

fn rollback(path: &Path, name: &str, force: bool) -> Result<(), Failure> {
    let (disk, meta) = Disk::new(path)?;
    check_name(&disk, name)?;
    let snap = disk.snapshot_path(name);
    let snap_meta = match fs::symlink_metadata(&snap) {
        Ok(m) => m,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            let known: Vec<_> = disk.snapshot_files().into_iter().map(|(n, _)| n).collect();
            let known = if known.is_empty() {
                "it has none".to_owned()
            } else {
                format!("it has {}", known.join(", "))
            };
            return refused(anyhow!(
                "{} has no snapshot {name} (no file {}); {known}",
                path.display(),
                snap.display()
            ));
        }
        Err(e) => return refused(anyhow::Error::new(e).context(format!("{}", snap.display()))),
    };
    let chain = walk_chain(path, None).or_refuse()?;
    let Some(k) = chain
        .iter()
        .position(|l| l.identity == identity(&snap_meta))
    else {
        return refused(anyhow!(
            "{} is not in the backing chain of {} (`popek disk list {}` shows it)",
            snap.display(),
            path.display(),
            path.display()
        ));
    };
    if k == 0 {
        return refused(anyhow!(
            "{} and {} are the same file (left by an interrupted snapshot?); remove {}",
            path.display(),
            snap.display(),
            snap.display()
        ));
    }
    // Between DISK and the snapshot, only DISK's own snapshots may be deleted.
    let mut newer = Vec::new();
    for layer in &chain[1..k] {
        match disk.snapshot_name(layer) {
            Some(newer_name) => newer.push(newer_name),
            None => {
                return refused(anyhow!(
                    "the chain of {} passes through {}, which is not one of its snapshots; \
                     not touching it",
                    path.display(),
                    layer.path.display()
                ));
            }
        }
    }
    if !newer.is_empty() && !force {
        return refused(anyhow!(
            "rolling {} back to {name} deletes the newer snapshot(s) {}; add --force to do it",
            path.display(),
            newer.join(", ")
        ));
    }
    check_unused(&disk, &chain[..k])?;

    let target = &chain[k];
    let temp = new_overlay(
        &disk,
        &disk.snapshot_file_name(name),
        target.format,
        target.virtual_size,
        meta.mode(),
    )
    .context("Cannot write the new overlay")
    .or_fail()?;
    if let Err(e) = walk_chain(&temp, None) {
        let _ = fs::remove_file(&temp);
        return Err(Failure::Failed(e.context("the new overlay is unusable")));
    }
    if let Err(e) = fs::rename(&temp, path) {
        let _ = fs::remove_file(&temp);
        return Err(Failure::Failed(anyhow::Error::new(e).context(format!(
            "Cannot rename the new overlay {} to {}",
            temp.display(),
            path.display()
        ))));
    }
    let _ = sync_dir(disk.dir);
    println!(
        "Rolled {} back to snapshot {name}: what was written since is discarded.",
        path.display()
    );
    let mut failed = Vec::new();
    for newer_name in &newer {
        let file = disk.snapshot_path(newer_name);
        match fs::remove_file(&file) {
            Ok(()) => println!(
                "Deleted snapshot {newer_name} ({}), newer than {name}.",
                file.display()
            ),
            Err(e) => failed.push(format!("{} ({e})", file.display())),
        }
    }
    let _ = sync_dir(disk.dir);
    if failed.is_empty() {
        Ok(())
    } else {
        Err(Failure::Failed(anyhow!(
            "{} was rolled back, but deleting the newer snapshot(s) {} failed",
            path.display(),
            failed.join(", ")
        )))
    }
}

fn list(path: &Path) -> Result<(), Failure> {
    let (disk, _) = Disk::new(path)?;
    let chain = walk_chain(path, None).or_refuse()?;
    let rows: Vec<[String; 6]> = chain
        .iter()
        .enumerate()
        .map(|(i, layer)| {
            let what = if i == 0 {
                "(current)".to_owned()
            } else if let Some(name) = disk.snapshot_name(layer) {
                name
            } else {
                "(base)".to_owned()
            };
            [
                what,
                layer.path.display().to_string(),
                layer.format.to_string(),
                human(layer.virtual_size),
                human(layer.meta.blocks() * 512),
                layer.meta.modified().map_or("?".to_owned(), utc),
            ]
        })
        .collect();
    let head = [
        "SNAPSHOT", "FILE", "FORMAT", "VIRTUAL", "ON DISK", "MODIFIED",
    ]
    .map(String::from);
    let mut widths = [0; 6];
    for row in std::iter::once(&head).chain(&rows) {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for row in std::iter::once(&head).chain(&rows) {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, w)| format!("{cell:w$}"))
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
    let in_chain: Vec<_> = chain.iter().map(|l| l.identity).collect();
    for (name, file) in disk.snapshot_files() {
        let outside = fs::metadata(&file).is_ok_and(|m| !in_chain.contains(&identity(&m)));
        if outside {
            println!(
                "Not in the chain: snapshot {name} ({}), left over; delete it if unneeded.",
                file.display()
            );
        }
    }
    Ok(())
}

/// Bytes in binary units, e.g. "1.5 MiB".
fn human(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// A time as "YYYY-MM-DD HH:MM:SS UTC".
fn utc(time: SystemTime) -> String {
    let secs = time
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_civil_utc() {
        assert_eq!(utc(UNIX_EPOCH), "1970-01-01 00:00:00 UTC");
        let t = UNIX_EPOCH + std::time::Duration::from_secs(951_782_400 + 3661);
        assert_eq!(utc(t), "2000-02-29 01:01:01 UTC");
        let t = UNIX_EPOCH + std::time::Duration::from_secs(1_735_689_599);
        assert_eq!(utc(t), "2024-12-31 23:59:59 UTC");
    }

    #[test]
    fn sizes_are_human() {
        assert_eq!(human(0), "0 B");
        assert_eq!(human(1023), "1023 B");
        assert_eq!(human(1536), "1.5 KiB");
        assert_eq!(human(5 << 30), "5.0 GiB");
    }

    #[test]
    fn snapshot_names_are_checked() {
        let disk = Disk {
            path: Path::new("d.img"),
            dir: Path::new(""),
            file_name: OsStr::new("d.img"),
        };
        assert!(check_name(&disk, "mon").is_ok());
        assert!(check_name(&disk, "2024-05-01 before upgrade").is_ok());
        for bad in ["", "a/b", "/", "x\ny", &"n".repeat(250)] {
            assert!(
                matches!(check_name(&disk, bad), Err(Failure::Refused(_))),
                "{bad:?} accepted"
            );
        }
        assert_eq!(disk.snapshot_path("mon"), Path::new("d.img.snap-mon"));
    }
}
