//! Loading a kernel, an initrd and a command line, and writing the boot parameters.
//!
//! Three kinds of kernel are accepted, told apart by their contents:
//! - an ELF that carries the Xen PVH note: entered at the PVH entry in 32-bit protected mode with
//!   `hvm_start_info` in EBX;
//! - any other x86-64 ELF (a `vmlinux`, or a test guest): entered at its ELF entry in 64-bit mode
//!   under the Linux 64-bit boot protocol, with the zero page in RSI;
//! - a bzImage: the same 64-bit protocol, entered 0x200 bytes into the protected-mode code.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use linux_loader::cmdline::Cmdline;
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::{BzImage, Elf, KernelLoader, PvhBootCapability, load_cmdline};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::layout::{
    CMDLINE, CMDLINE_MAX, E820Entry, HIMEM, MemoryLayout, PVH_MEMMAP, PVH_MODLIST, PVH_START_INFO,
    ZERO_PAGE,
};

/// Errors of [`load`].
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// A file could not be opened or read.
    #[error("Cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The kernel file is neither an ELF nor a bzImage.
    #[error("{0} is not a kernel: expected an x86-64 ELF (vmlinux) or a bzImage")]
    NotAKernel(PathBuf),
    /// The loader refused the kernel.
    #[error("Cannot load kernel {path}: {reason}")]
    Load {
        /// The kernel.
        path: PathBuf,
        /// The loader's complaint.
        reason: String,
    },
    /// The initrd does not fit in RAM above the kernel.
    #[error(
        "Initrd {path} ({size} bytes) does not fit in guest RAM above the kernel; give the VM more memory"
    )]
    InitrdTooLarge {
        /// The initrd.
        path: PathBuf,
        /// Its size.
        size: u64,
    },
    /// The command line is too long or has forbidden characters.
    #[error("Invalid kernel command line: {0}")]
    Cmdline(String),
    /// Guest memory could not be written.
    #[error("Cannot write boot data to guest memory")]
    Memory(#[source] vm_memory::GuestMemoryError),
}

/// What to boot.
#[derive(Debug, Clone)]
pub struct BootSource<'a> {
    /// Kernel image.
    pub kernel: &'a Path,
    /// Optional initial ramdisk.
    pub initrd: Option<&'a Path>,
    /// Kernel command line.
    pub cmdline: &'a str,
}

/// How the boot CPU enters the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootEntry {
    /// Linux 64-bit boot protocol: long mode, RIP = `entry`, RSI = zero page.
    Linux64 {
        /// Entry point.
        entry: GuestAddress,
    },
    /// PVH: 32-bit protected mode, paging off, EIP = `entry`, EBX = `hvm_start_info`.
    Pvh {
        /// Entry point.
        entry: GuestAddress,
    },
}

/// Loads the kernel, initrd and command line into `mem` and writes the boot parameters.
pub fn load(
    mem: &GuestMemoryMmap,
    layout: &MemoryLayout,
    source: &BootSource<'_>,
    rsdp: GuestAddress,
) -> Result<BootEntry, BootError> {
    let read_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| BootError::Read { path, source }
    };
    let mut kernel = File::open(source.kernel).map_err(read_err(source.kernel))?;
    let mut head = [0u8; 0x210];
    let n = read_up_to(&mut kernel, &mut head).map_err(read_err(source.kernel))?;
    kernel
        .seek(SeekFrom::Start(0))
        .map_err(read_err(source.kernel))?;
    let load_err = |e: linux_loader::loader::Error| BootError::Load {
        path: source.kernel.to_path_buf(),
        reason: e.to_string(),
    };
    let (entry, kernel_end, header) = if n >= 4 && head[..4] == *b"\x7fELF" {
        let r = Elf::load(mem, None, &mut kernel, Some(GuestAddress(HIMEM))).map_err(load_err)?;
        let entry = match r.pvh_boot_cap {
            PvhBootCapability::PvhEntryPresent(addr) => BootEntry::Pvh { entry: addr },
            _ => BootEntry::Linux64 {
                entry: r.kernel_load,
            },
        };
        (entry, r.kernel_end, None)
    } else if n >= 0x206 && head[0x202..0x206] == *b"HdrS" {
        let r =
            BzImage::load(mem, None, &mut kernel, Some(GuestAddress(HIMEM))).map_err(load_err)?;
        let entry = BootEntry::Linux64 {
            entry: GuestAddress(r.kernel_load.0 + 0x200),
        };
        (entry, r.kernel_end, r.setup_header)
    } else {
        return Err(BootError::NotAKernel(source.kernel.to_path_buf()));
    };

    let initrd = match source.initrd {
        Some(path) => Some(load_initrd(mem, layout, path, kernel_end, header.as_ref())?),
        None => None,
    };

    let mut cmdline = Cmdline::new(CMDLINE_MAX).map_err(|e| BootError::Cmdline(e.to_string()))?;
    cmdline
        .insert_str(source.cmdline)
        .map_err(|e| BootError::Cmdline(e.to_string()))?;
    load_cmdline(mem, GuestAddress(CMDLINE), &cmdline)
        .map_err(|e| BootError::Cmdline(e.to_string()))?;
    let cmdline_len = source.cmdline.len() as u32 + 1;

    match entry {
        BootEntry::Pvh { .. } => write_start_info(mem, layout, initrd, rsdp)?,
        BootEntry::Linux64 { .. } => {
            write_zero_page(mem, layout, header, initrd, cmdline_len, rsdp)?
        }
    }
    Ok(entry)
}

fn read_up_to(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Puts the initrd at the top of low RAM, below what the kernel can address, page-aligned.
fn load_initrd(
    mem: &GuestMemoryMmap,
    layout: &MemoryLayout,
    path: &Path,
    kernel_end: u64,
    header: Option<&setup_header>,
) -> Result<(GuestAddress, u64), BootError> {
    let data = std::fs::read(path).map_err(|source| BootError::Read {
        path: path.into(),
        source,
    })?;
    let size = data.len() as u64;
    let too_large = || BootError::InitrdTooLarge {
        path: path.into(),
        size,
    };
    // Kernels before boot protocol 2.03 do not say; 0x37ffffff is their documented limit.
    let addr_max = header.map_or(u64::from(u32::MAX), |h| {
        if h.initrd_addr_max == 0 {
            0x37ff_ffff
        } else {
            u64::from(h.initrd_addr_max)
        }
    });
    let top = layout.below_4g().min(addr_max + 1);
    let addr = top.checked_sub(size).ok_or_else(too_large)? & !0xfff;
    if addr < kernel_end {
        return Err(too_large());
    }
    mem.write_slice(&data, GuestAddress(addr))
        .map_err(BootError::Memory)?;
    Ok((GuestAddress(addr), size))
}

fn write_zero_page(
    mem: &GuestMemoryMmap,
    layout: &MemoryLayout,
    header: Option<setup_header>,
    initrd: Option<(GuestAddress, u64)>,
    cmdline_len: u32,
    rsdp: GuestAddress,
) -> Result<(), BootError> {
    const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
    const KERNEL_HDR_MAGIC: u32 = 0x5372_6448;
    const KERNEL_LOADER_OTHER: u8 = 0xff;
    const KERNEL_MIN_ALIGNMENT: u32 = 0x0100_0000;

    let mut params = boot_params::default();
    if let Some(h) = header {
        params.hdr = h;
    } else {
        params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
        params.hdr.header = KERNEL_HDR_MAGIC;
        params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT;
    }
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.cmd_line_ptr = CMDLINE as u32;
    params.hdr.cmdline_size = cmdline_len;
    if let Some((addr, size)) = initrd {
        params.hdr.ramdisk_image = addr.0 as u32;
        params.hdr.ramdisk_size = size as u32;
    }
    params.acpi_rsdp_addr = rsdp.0;
    let map = layout.e820();
    for (slot, e) in params.e820_table.iter_mut().zip(&map) {
        *slot = boot_e820_entry {
            addr: e.addr,
            size: e.size,
            r#type: e.kind as u32,
        };
    }
    params.e820_entries = map.len().min(params.e820_table.len()) as u8;
    LinuxBootConfigurator::write_bootparams(&BootParams::new(&params, GuestAddress(ZERO_PAGE)), mem)
        .map_err(|e| BootError::Load {
            path: PathBuf::from("zero page"),
            reason: e.to_string(),
        })
}

fn write_start_info(
    mem: &GuestMemoryMmap,
    layout: &MemoryLayout,
    initrd: Option<(GuestAddress, u64)>,
    rsdp: GuestAddress,
) -> Result<(), BootError> {
    const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;
    let map: Vec<hvm_memmap_table_entry> = layout
        .e820()
        .iter()
        .map(|e: &E820Entry| hvm_memmap_table_entry {
            addr: e.addr,
            size: e.size,
            type_: e.kind as u32,
            reserved: 0,
        })
        .collect();
    let mut info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC,
        version: 1,
        cmdline_paddr: CMDLINE,
        rsdp_paddr: rsdp.0,
        memmap_paddr: PVH_MEMMAP,
        memmap_entries: map.len() as u32,
        ..Default::default()
    };
    let mut params = BootParams::new(&info, GuestAddress(PVH_START_INFO));
    if let Some((addr, size)) = initrd {
        info.nr_modules = 1;
        info.modlist_paddr = PVH_MODLIST;
        params = BootParams::new(&info, GuestAddress(PVH_START_INFO));
        let module = hvm_modlist_entry {
            paddr: addr.0,
            size,
            ..Default::default()
        };
        params.set_modules(&[module], GuestAddress(PVH_MODLIST));
    }
    params.set_sections(&map, GuestAddress(PVH_MEMMAP));
    PvhBootConfigurator::write_bootparams(&params, mem).map_err(|e| BootError::Load {
        path: PathBuf::from("PVH start info"),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 64 << 20)]).unwrap()
    }

    #[test]
    fn a_file_that_is_not_a_kernel_is_refused_by_name() {
        let dir = std::env::temp_dir().join(format!("popek-boot-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notes.txt");
        std::fs::File::create(&path)
            .unwrap()
            .write_all(b"hello, not a kernel")
            .unwrap();
        let src = BootSource {
            kernel: &path,
            initrd: None,
            cmdline: "console=ttyS0",
        };
        let err = load(
            &mem(),
            &MemoryLayout::new(64 << 20),
            &src,
            GuestAddress(0xe0000),
        )
        .unwrap_err();
        assert!(
            matches!(err, BootError::NotAKernel(ref p) if *p == path),
            "{err}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_missing_kernel_is_reported_with_its_path() {
        let path = Path::new("/nonexistent/vmlinux");
        let src = BootSource {
            kernel: path,
            initrd: None,
            cmdline: "",
        };
        let err = load(
            &mem(),
            &MemoryLayout::new(64 << 20),
            &src,
            GuestAddress(0xe0000),
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "Cannot read /nonexistent/vmlinux");
    }

    #[test]
    fn initrd_goes_page_aligned_to_the_top_of_low_ram() {
        let dir = std::env::temp_dir().join(format!("popek-initrd-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("initrd");
        std::fs::write(&path, vec![0x5a; 10_000]).unwrap();
        let m = mem();
        let (addr, size) =
            load_initrd(&m, &MemoryLayout::new(64 << 20), &path, 0x20_0000, None).unwrap();
        assert_eq!(size, 10_000);
        assert_eq!(addr.0 % 4096, 0);
        assert!(addr.0 + size <= 64 << 20 && addr.0 + size > (64 << 20) - 8192);
        let byte: u8 = m.read_obj(addr).unwrap();
        assert_eq!(byte, 0x5a);
        let err = load_initrd(&m, &MemoryLayout::new(64 << 20), &path, 64 << 20, None).unwrap_err();
        assert!(matches!(err, BootError::InitrdTooLarge { .. }));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
