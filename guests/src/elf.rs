//! A very small ELF64 reader: enough to check that an image is an x86-64 executable, where it
//! loads, and whether it carries the Xen PVH entry note.

use thiserror::Error;

/// Why a file is not an ELF this crate understands.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ElfError {
    /// Shorter than a header or a table it points to.
    #[error("File is truncated at offset {0:#x}")]
    Truncated(usize),
    /// No `\x7fELF` magic.
    #[error("Not an ELF file")]
    NotElf,
    /// Not ELFCLASS64, little-endian.
    #[error("Not a 64-bit little-endian ELF")]
    NotElf64Le,
    /// `e_machine` is not EM_X86_64.
    #[error("Machine {0:#x} is not x86-64")]
    NotX86_64(u16),
}

/// `p_type` of a loadable segment.
pub const PT_LOAD: u32 = 1;
/// `p_type` of a note segment.
pub const PT_NOTE: u32 = 4;
/// Xen note type of the 32-bit PVH entry point.
pub const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;

/// One program header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// `p_type`.
    pub kind: u32,
    /// `p_offset`.
    pub offset: u64,
    /// `p_paddr`.
    pub paddr: u64,
    /// `p_filesz`.
    pub file_size: u64,
    /// `p_memsz`.
    pub mem_size: u64,
}

/// What [`inspect`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ElfSummary {
    /// `e_type` (2 = ET_EXEC).
    pub kind: u16,
    /// `e_entry`: the Linux 64-bit entry.
    pub entry: u64,
    /// The program headers.
    pub segments: Vec<Segment>,
    /// The PVH 32-bit entry from a `Xen` note of type 18 in a PT_NOTE segment.
    pub pvh_entry: Option<u64>,
}

fn bytes<const N: usize>(data: &[u8], at: usize) -> Result<[u8; N], ElfError> {
    data.get(at..at + N)
        .and_then(|s| s.try_into().ok())
        .ok_or(ElfError::Truncated(at))
}

fn u16_at(data: &[u8], at: usize) -> Result<u16, ElfError> {
    bytes(data, at).map(u16::from_le_bytes)
}

fn u32_at(data: &[u8], at: usize) -> Result<u32, ElfError> {
    bytes(data, at).map(u32::from_le_bytes)
}

fn u64_at(data: &[u8], at: usize) -> Result<u64, ElfError> {
    bytes(data, at).map(u64::from_le_bytes)
}

fn usize_at(data: &[u8], at: usize) -> Result<usize, ElfError> {
    u64_at(data, at).map(|v| usize::try_from(v).unwrap_or(usize::MAX))
}

/// Reads the ELF header, the program headers and the PVH note of `data`.
pub fn inspect(data: &[u8]) -> Result<ElfSummary, ElfError> {
    if bytes::<4>(data, 0)? != *b"\x7fELF" {
        return Err(ElfError::NotElf);
    }
    if bytes::<2>(data, 4)? != [2, 1] {
        return Err(ElfError::NotElf64Le);
    }
    let machine = u16_at(data, 18)?;
    if machine != 62 {
        return Err(ElfError::NotX86_64(machine));
    }
    let kind = u16_at(data, 16)?;
    let entry = u64_at(data, 24)?;
    let phoff = usize_at(data, 32)?;
    let phentsize = usize::from(u16_at(data, 54)?);
    let phnum = usize::from(u16_at(data, 56)?);
    let mut segments = Vec::with_capacity(phnum);
    for i in 0..phnum {
        let ph = phoff.saturating_add(i.saturating_mul(phentsize));
        segments.push(Segment {
            kind: u32_at(data, ph)?,
            offset: u64_at(data, ph + 8)?,
            paddr: u64_at(data, ph + 24)?,
            file_size: u64_at(data, ph + 32)?,
            mem_size: u64_at(data, ph + 40)?,
        });
    }
    let mut pvh_entry = None;
    for note in segments.iter().filter(|s| s.kind == PT_NOTE) {
        let start = usize::try_from(note.offset).unwrap_or(usize::MAX);
        let end = start.saturating_add(usize::try_from(note.file_size).unwrap_or(usize::MAX));
        let mut at = start;
        while at + 12 <= end {
            let namesz = u32_at(data, at)? as usize;
            let descsz = u32_at(data, at + 4)? as usize;
            let kind = u32_at(data, at + 8)?;
            let name_at = at + 12;
            let desc_at = name_at + namesz.next_multiple_of(4);
            let name = data
                .get(name_at..name_at + namesz)
                .ok_or(ElfError::Truncated(name_at))?;
            if name == b"Xen\0" && kind == XEN_ELFNOTE_PHYS32_ENTRY {
                pvh_entry = Some(match descsz {
                    4 => u64::from(u32_at(data, desc_at)?),
                    _ => u64_at(data, desc_at)?,
                });
            }
            at = desc_at + descsz.next_multiple_of(4);
        }
    }
    Ok(ElfSummary {
        kind,
        entry,
        segments,
        pvh_entry,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_non_elf_input() {
        assert_eq!(inspect(b"MZ\0\0"), Err(ElfError::NotElf));
        assert_eq!(inspect(b"\x7fEL"), Err(ElfError::Truncated(0)));
    }
}
