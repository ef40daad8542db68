//! The built guest images are what the machine contract says: x86-64 executables loaded at
//! 1 MiB, entered at an address inside their image, with the Xen PVH note on all but `memory`.

use guests::Guest;
use guests::elf::{self, PT_LOAD};

const LOAD_ADDRESS: u64 = 0x10_0000;

fn summary(guest: Guest) -> elf::ElfSummary {
    let path = guest.path();
    let data = std::fs::read(path)
        .unwrap_or_else(|e| panic!("{} ({}) is not readable: {e}", guest.name(), path.display()));
    elf::inspect(&data).unwrap_or_else(|e| panic!("{}: {e}", guest.name()))
}

fn inside_image(summary: &elf::ElfSummary, address: u64) -> bool {
    summary
        .segments
        .iter()
        .filter(|s| s.kind == PT_LOAD)
        .any(|s| (s.paddr..s.paddr + s.file_size).contains(&address))
}

#[test]
fn every_guest_is_an_x86_64_executable_loaded_at_1_mib() {
    for guest in Guest::ALL {
        let summary = summary(guest);
        assert_eq!(summary.kind, 2, "{} is not ET_EXEC", guest.name());
        let loads: Vec<_> = summary
            .segments
            .iter()
            .filter(|s| s.kind == PT_LOAD)
            .collect();
        assert!(!loads.is_empty(), "{} has no PT_LOAD", guest.name());
        assert_eq!(
            loads.iter().map(|s| s.paddr).min(),
            Some(LOAD_ADDRESS),
            "{} does not load at 1 MiB",
            guest.name()
        );
        assert!(
            inside_image(&summary, summary.entry),
            "{}: e_entry {:#x} is outside the image",
            guest.name(),
            summary.entry
        );
    }
}

#[test]
fn pvh_note_is_present_on_all_guests_but_memory() {
    for guest in Guest::ALL {
        let summary = summary(guest);
        match summary.pvh_entry {
            Some(entry) => {
                assert!(
                    guest.has_pvh_note(),
                    "{} must not carry a PVH note",
                    guest.name()
                );
                assert!(
                    entry < 1 << 32 && inside_image(&summary, entry),
                    "{}: PVH entry {entry:#x} is outside the image",
                    guest.name()
                );
                assert_ne!(
                    entry,
                    summary.entry,
                    "{}: PVH and 64-bit entries",
                    guest.name()
                );
            }
            None => assert!(!guest.has_pvh_note(), "{} lacks the PVH note", guest.name()),
        }
    }
}

#[test]
fn guests_are_found_by_name() {
    assert_eq!(guests::path("hello"), Some(Guest::Hello.path()));
    assert_eq!(guests::path("memory-pvh"), Some(Guest::MemoryPvh.path()));
    assert_eq!(guests::path("no-such-guest"), None);
    assert_eq!(Guest::Hello.path().to_str(), Some(guests::HELLO));
}

#[test]
fn virtio_guest_is_listed_and_carries_its_output_lines() {
    assert_eq!(Guest::from_name("virtio"), Some(Guest::Virtio));
    assert_eq!(guests::path("virtio"), Some(Guest::Virtio.path()));
    assert_eq!(Guest::Virtio.path().to_str(), Some(guests::VIRTIO));
    let data = std::fs::read(Guest::Virtio.path()).expect("virtio image");
    // Fragments of the output lines guests/README.md promises (the guest prints no formatted
    // strings: every line is assembled from literals like these).
    for needle in [
        "virtio: pci config via ecam at ",
        "virtio: pci config via ports 0xcf8/0xcfc",
        " devices",
        " tests passed",
        "virtio: test ",
        "virtio: timeout waiting for ",
        "blk: capacity ",
        "blk: wrote and verified 8 sectors at ",
        "blk: past-end write -> IOERR",
        "blk: flush ok",
        "blk: id ",
        "blk: read-only",
        "blk: write on read-only -> IOERR",
        " fnv1a64=",
        "net: mac ",
        "net: sent frame",
        "net: received ",
        "net: echoed ",
        "rng: got 64 bytes, distinct",
        "vsock: guest cid ",
        "vsock: connected to cid 2 port ",
        "vsock: received ",
        "vsock: shutdown -> RST",
        "hello from guest",
    ] {
        assert!(
            data.windows(needle.len()).any(|w| w == needle.as_bytes()),
            "the virtio guest lacks {needle:?}"
        );
    }
}

#[test]
fn counter_guest_is_listed_and_carries_its_output_lines() {
    assert_eq!(Guest::from_name("counter"), Some(Guest::Counter));
    assert_eq!(guests::path("counter"), Some(Guest::Counter.path()));
    assert_eq!(Guest::Counter.path().to_str(), Some(guests::COUNTER));
    assert!(Guest::Counter.has_pvh_note());
    let data = std::fs::read(Guest::Counter.path()).expect("counter image");
    // The fragments its lines are assembled from (guests/README.md, "The `counter` guest").
    for needle in [
        "counter: start every=",
        "counter: count=",
        " ticks=",
        "counter: wrote sector ",
        "counter: disk: ",
        "counter: bad value for ",
        "counter: touched ",
        " exceeds RAM",
        "counter: memory mismatch at ",
    ] {
        assert!(
            data.windows(needle.len()).any(|w| w == needle.as_bytes()),
            "the counter guest lacks {needle:?}"
        );
    }
}
