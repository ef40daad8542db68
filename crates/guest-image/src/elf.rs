//! Just enough ELF64 reading for the guest image: is a file an x86-64 ELF, does a kernel carry the
//! Xen PVH entry note, and what is in a named section (a module's `.modinfo`).
//!
//! Every read is bounds-checked: malformed input gives `false` or `None`, never a panic.

/// `e_machine` of x86-64.
const EM_X86_64: u16 = 62;
/// Program header type of a note segment.
const PT_NOTE: u32 = 4;
/// Xen's note type for the 32-bit PVH entry point (`XEN_ELFNOTE_PHYS32_ENTRY`).
pub const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;

fn bytes<const N: usize>(data: &[u8], offset: u64) -> Option<[u8; N]> {
    let start = usize::try_from(offset).ok()?;
    data.get(start..start.checked_add(N)?)?.try_into().ok()
}

fn u16_at(data: &[u8], offset: u64) -> Option<u16> {
    bytes(data, offset).map(u16::from_le_bytes)
}

fn u32_at(data: &[u8], offset: u64) -> Option<u32> {
    bytes(data, offset).map(u32::from_le_bytes)
}

fn u64_at(data: &[u8], offset: u64) -> Option<u64> {
    bytes(data, offset).map(u64::from_le_bytes)
}

fn slice(data: &[u8], offset: u64, len: u64) -> Option<&[u8]> {
    let start = usize::try_from(offset).ok()?;
    let end = start.checked_add(usize::try_from(len).ok()?)?;
    data.get(start..end)
}

/// Returns whether `data` starts with the header of a 64-bit little-endian x86-64 ELF file.
pub fn is_x86_64_elf(data: &[u8]) -> bool {
    data.len() >= 64
        && data[..4] == *b"\x7fELF"
        && data[4] == 2 // ELFCLASS64
        && data[5] == 1 // ELFDATA2LSB
        && u16_at(data, 18) == Some(EM_X86_64)
}

/// Returns whether `elf` is an x86-64 ELF with a `PT_NOTE` segment holding a note named "Xen" of
/// type 18 (`XEN_ELFNOTE_PHYS32_ENTRY`): the PVH entry point that lets a VMM start the
/// uncompressed kernel directly in 32-bit protected mode.
pub fn has_pvh_note(elf: &[u8]) -> bool {
    pvh_note(elf).is_some()
}

fn pvh_note(elf: &[u8]) -> Option<()> {
    if !is_x86_64_elf(elf) {
        return None;
    }
    let phoff = u64_at(elf, 32)?;
    let phentsize = u64::from(u16_at(elf, 54)?);
    let phnum = u64::from(u16_at(elf, 56)?);
    for i in 0..phnum {
        let ph = phoff.checked_add(i.checked_mul(phentsize)?)?;
        if u32_at(elf, ph)? != PT_NOTE {
            continue;
        }
        let segment = slice(elf, u64_at(elf, ph + 8)?, u64_at(elf, ph + 32)?)?;
        if notes(segment).any(|(name, kind)| name == b"Xen" && kind == XEN_ELFNOTE_PHYS32_ENTRY) {
            return Some(());
        }
    }
    None
}

/// Iterates over the (name without NUL, type) of the notes in a note segment.
fn notes(segment: &[u8]) -> impl Iterator<Item = (&[u8], u32)> {
    let mut pos: u64 = 0;
    std::iter::from_fn(move || {
        let namesz = u64::from(u32_at(segment, pos)?);
        let descsz = u64::from(u32_at(segment, pos + 4)?);
        let kind = u32_at(segment, pos + 8)?;
        let name = slice(segment, pos + 12, namesz)?;
        let name = name.strip_suffix(b"\0").unwrap_or(name);
        pos = pos + 12 + namesz.next_multiple_of(4) + descsz.next_multiple_of(4);
        Some((name, kind))
    })
}

/// Returns the contents of the section called `name` in an ELF64 little-endian file, if present.
pub fn section<'a>(elf: &'a [u8], name: &str) -> Option<&'a [u8]> {
    if elf.len() < 64 || elf[..4] != *b"\x7fELF" || elf[4] != 2 || elf[5] != 1 {
        return None;
    }
    let shoff = u64_at(elf, 40)?;
    let shentsize = u64::from(u16_at(elf, 58)?);
    let shnum = u64::from(u16_at(elf, 60)?);
    let shstrndx = u64::from(u16_at(elf, 62)?);
    let header = |i: u64| shoff.checked_add(i.checked_mul(shentsize)?);
    let strtab_header = header(shstrndx)?;
    let strtab = slice(
        elf,
        u64_at(elf, strtab_header + 24)?,
        u64_at(elf, strtab_header + 32)?,
    )?;
    for i in 0..shnum {
        let sh = header(i)?;
        let name_offset = usize::try_from(u32_at(elf, sh)?).ok()?;
        let section_name = strtab.get(name_offset..)?.split(|&b| b == 0).next()?;
        if section_name == name.as_bytes() {
            return slice(elf, u64_at(elf, sh + 24)?, u64_at(elf, sh + 32)?);
        }
    }
    None
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds a minimal x86-64 ELF executable with one `PT_NOTE` segment holding `notes`, each as
    /// (name, type, descriptor).
    pub(crate) fn elf_with_notes(machine: u16, notes: &[(&str, u32, &[u8])]) -> Vec<u8> {
        let mut segment = Vec::new();
        for (name, kind, desc) in notes {
            segment.extend_from_slice(&(name.len() as u32 + 1).to_le_bytes());
            segment.extend_from_slice(&(desc.len() as u32).to_le_bytes());
            segment.extend_from_slice(&kind.to_le_bytes());
            segment.extend_from_slice(name.as_bytes());
            segment.push(0);
            segment.resize(segment.len().next_multiple_of(4), 0);
            segment.extend_from_slice(desc);
            segment.resize(segment.len().next_multiple_of(4), 0);
        }
        let mut elf = vec![0u8; 64 + 56];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2; // 64-bit
        elf[5] = 1; // little-endian
        elf[6] = 1; // version
        elf[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        elf[18..20].copy_from_slice(&machine.to_le_bytes());
        elf[32..40].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
        elf[52..54].copy_from_slice(&64u16.to_le_bytes()); // e_ehsize
        elf[54..56].copy_from_slice(&56u16.to_le_bytes()); // e_phentsize
        elf[56..58].copy_from_slice(&1u16.to_le_bytes()); // e_phnum
        let ph = 64;
        elf[ph..ph + 4].copy_from_slice(&PT_NOTE.to_le_bytes());
        elf[ph + 8..ph + 16].copy_from_slice(&120u64.to_le_bytes()); // p_offset
        elf[ph + 32..ph + 40].copy_from_slice(&(segment.len() as u64).to_le_bytes()); // p_filesz
        elf.extend_from_slice(&segment);
        elf
    }

    #[test]
    fn finds_the_pvh_note_among_other_notes() {
        let elf = elf_with_notes(
            EM_X86_64,
            &[
                ("GNU", 3, &[1, 2, 3, 4, 5]),
                ("Xen", 18, &0x100_0000u32.to_le_bytes()),
            ],
        );
        assert!(is_x86_64_elf(&elf));
        assert!(has_pvh_note(&elf));
    }

    #[test]
    fn refuses_elves_without_the_pvh_note() {
        // Another Xen note type (XEN_ELFNOTE_ENTRY = 1) is not PVH.
        assert!(!has_pvh_note(&elf_with_notes(
            EM_X86_64,
            &[("Xen", 1, &[0; 8])]
        )));
        // The right type under another owner's name.
        assert!(!has_pvh_note(&elf_with_notes(
            EM_X86_64,
            &[("Linux", 18, &[0; 4])]
        )));
        // A PVH note in an aarch64 (183) file.
        assert!(!has_pvh_note(&elf_with_notes(183, &[("Xen", 18, &[0; 4])])));
        assert!(!has_pvh_note(b"MZ not an ELF at all"));
    }

    #[test]
    fn truncated_note_segment_is_no_note_not_a_panic() {
        let mut elf = elf_with_notes(EM_X86_64, &[("Xen", 18, &[0; 4])]);
        let full = elf.len();
        for cut in (0..full).rev() {
            elf.truncate(cut);
            assert!(!has_pvh_note(&elf), "found a note in {cut} of {full} bytes");
        }
    }

    /// Builds a minimal ELF with no program headers and three sections: null, `name` holding
    /// `contents`, and the section name table.
    pub(crate) fn elf_with_section(name: &str, contents: &[u8]) -> Vec<u8> {
        let shstrtab = format!("\0{name}\0.shstrtab\0").into_bytes();
        let mut elf = vec![0u8; 64];
        elf[..6].copy_from_slice(b"\x7fELF\x02\x01");
        let contents_off = elf.len() as u64;
        elf.extend_from_slice(contents);
        let strtab_off = elf.len() as u64;
        elf.extend_from_slice(&shstrtab);
        elf.resize(elf.len().next_multiple_of(8), 0);
        let shoff = elf.len() as u64;
        let strtab_name = name.len() as u32 + 2;
        for (sh_name, offset, size) in [
            (0, 0, 0),
            (1, contents_off, contents.len()),
            (strtab_name, strtab_off, shstrtab.len()),
        ] {
            let mut sh = [0u8; 64];
            sh[..4].copy_from_slice(&sh_name.to_le_bytes());
            sh[24..32].copy_from_slice(&offset.to_le_bytes());
            sh[32..40].copy_from_slice(&(size as u64).to_le_bytes());
            elf.extend_from_slice(&sh);
        }
        elf[40..48].copy_from_slice(&shoff.to_le_bytes());
        elf[58..60].copy_from_slice(&64u16.to_le_bytes());
        elf[60..62].copy_from_slice(&3u16.to_le_bytes());
        elf[62..64].copy_from_slice(&2u16.to_le_bytes());
        elf
    }

    #[test]
    fn reads_a_named_section() {
        let modinfo = b"name=virtio\0depends=virtio_ring\0";
        let elf = elf_with_section(".modinfo", modinfo);
        assert_eq!(section(&elf, ".modinfo"), Some(&modinfo[..]));
        assert_eq!(section(&elf, ".text"), None);
        assert_eq!(
            section(&elf, ".shstrtab"),
            Some(&b"\0.modinfo\0.shstrtab\0"[..])
        );
        assert_eq!(section(&elf[..100], ".modinfo"), None);
    }
}
