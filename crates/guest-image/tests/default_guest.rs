//! Builds the real default guest from Debian packages into a temporary cache directory.

use std::path::PathBuf;
use std::time::Instant;

#[test]
#[ignore = "downloads ~28 MB of Debian packages and needs apt package lists; run with --ignored"]
fn builds_real_default_guest_and_reuses_the_cache() {
    let cache: PathBuf = std::env::var_os("POPEK_TEST_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::temp_dir().join(format!("guest-image-it-{}", std::process::id()))
        });
    let _ = std::fs::remove_dir_all(&cache);
    let mut steps = Vec::new();
    let start = Instant::now();
    let guest = guest_image::ensure_default_guest_in(&cache, &mut |step: &str| {
        eprintln!("[{:6.1}s] {step}", start.elapsed().as_secs_f64());
        steps.push(step.to_owned());
    })
    .unwrap();
    eprintln!("built {guest:#?} in {:.1}s", start.elapsed().as_secs_f64());

    assert!(
        steps.iter().any(|s| s.starts_with("decompressing vmlinux")),
        "{steps:?}"
    );
    let vmlinux = std::fs::read(&guest.vmlinux).unwrap();
    assert!(guest_image::elf::has_pvh_note(&vmlinux));
    assert_eq!(
        guest_image::bzimage::extract_vmlinux(&std::fs::read(&guest.bzimage).unwrap()).unwrap(),
        vmlinux
    );
    let initramfs = std::fs::read(&guest.initramfs).unwrap();
    assert!(initramfs.starts_with(b"070701"));
    assert!(initramfs.windows(10).any(|w| w == b"TRAILER!!!"));
    for needed in [
        "virtio_ring",
        "virtio",
        "virtio_pci",
        "virtio_blk",
        "virtio_net",
        "vmw_vsock_virtio_transport",
    ] {
        assert!(
            guest.modules.iter().any(|m| m == needed),
            "{needed} not in {:?}",
            guest.modules
        );
    }
    let position = |name: &str| guest.modules.iter().position(|m| m == name).unwrap();
    assert!(position("virtio_ring") < position("virtio"));
    assert!(position("virtio") < position("virtio_pci"));

    // The second call finds the complete guest instead of building again.
    let mut again = Vec::new();
    let cached =
        guest_image::ensure_default_guest_in(&cache, &mut |s: &str| again.push(s.to_owned()))
            .unwrap();
    assert_eq!(cached, guest);
    assert!(
        again.iter().any(|s| s.starts_with("using cached guest")),
        "{again:?}"
    );
    assert_eq!(guest_image::find_cached_in(&cache).unwrap(), Some(guest));
    // The scratch directory is gone.
    let work = cache.join("work");
    assert!(!work.exists() || std::fs::read_dir(&work).unwrap().next().is_none());

    if std::env::var_os("POPEK_TEST_CACHE_DIR").is_none() {
        std::fs::remove_dir_all(&cache).unwrap();
    }
}
