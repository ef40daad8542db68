//! Opening taps: names and templates, who deletes the interface, settings, and the errors a user
//! sees. Every test runs in a network namespace of its own (see `common`).

mod common;

use common::{BridgeGuard, PersistentTapGuard, drop_cap_net_admin, iface_exists, in_netns, is_up};
use net_host::{
    Error, TUN_F_CSUM, TUN_F_TSO_ECN, TUN_F_TSO4, TUN_F_TSO6, TUN_F_UFO, Tap, VNET_HDR_LEN,
};
use std::os::fd::AsRawFd;

#[test]
fn tap_with_chosen_name_is_created_and_gone_after_drop() {
    in_netns(
        "tap_with_chosen_name_is_created_and_gone_after_drop",
        || {
            assert!(!iface_exists("vmtap0"));
            let tap = Tap::open(Some("vmtap0")).unwrap();
            assert_eq!(tap.name(), "vmtap0");
            assert!(tap.created());
            assert!(iface_exists("vmtap0"));
            drop(tap);
            assert!(
                !iface_exists("vmtap0"),
                "a tap popek created outlived its Tap"
            );
        },
    );
}

#[test]
fn taps_from_templates_get_their_own_numbers_and_go_on_drop() {
    in_netns(
        "taps_from_templates_get_their_own_numbers_and_go_on_drop",
        || {
            let first = Tap::open(None).unwrap();
            let second = Tap::open(None).unwrap();
            assert_eq!(first.name(), "popek0");
            assert_eq!(second.name(), "popek1");
            assert!(first.created() && second.created());
            let custom = Tap::open(Some("guest%d")).unwrap();
            assert_eq!(custom.name(), "guest0");
            assert!(iface_exists("popek0") && iface_exists("popek1") && iface_exists("guest0"));
            drop((first, second, custom));
            assert!(!iface_exists("popek0") && !iface_exists("popek1") && !iface_exists("guest0"));
        },
    );
}

#[test]
fn persistent_tap_is_attached_to_and_left_in_place() {
    in_netns("persistent_tap_is_attached_to_and_left_in_place", || {
        let persistent = PersistentTapGuard::create("usertap0");
        let tap = Tap::open(Some("usertap0")).unwrap();
        assert_eq!(tap.name(), "usertap0");
        assert!(
            !tap.created(),
            "attaching to the user's tap claimed to create it"
        );
        drop(tap);
        assert!(
            iface_exists("usertap0"),
            "the user's persistent tap was deleted"
        );
        // It can be attached to again, as a restarted VM would.
        let again = Tap::open(Some("usertap0")).unwrap();
        assert!(!again.created());
        drop(again);
        drop(persistent);
        assert!(!iface_exists("usertap0"));
    });
}

#[test]
fn vnet_header_size_and_offloads_are_set() {
    in_netns("vnet_header_size_and_offloads_are_set", || {
        let tap = Tap::open(Some("hdrtap")).unwrap();
        tap.set_vnet_hdr_size(VNET_HDR_LEN as i32).unwrap();
        let mut size: libc::c_int = 0;
        // SAFETY: TUNGETVNETHDRSZ writes one int, `size`, during the call.
        let ret = unsafe { libc::ioctl(tap.as_raw_fd(), libc::TUNGETVNETHDRSZ, &mut size) };
        assert_eq!(ret, 0);
        assert_eq!(size, 12);

        tap.set_offload(TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN | TUN_F_UFO)
            .unwrap();
        tap.set_offload(0).unwrap();
        let err = tap.set_offload(TUN_F_TSO4).unwrap_err();
        assert!(err.to_string().contains("hdrtap"), "{err}");

        let err = tap.set_vnet_hdr_size(4).unwrap_err();
        assert!(matches!(err, Error::Ioctl { .. }), "{err:?}");
        assert!(err.to_string().contains("hdrtap"), "{err}");
    });
}

#[test]
fn up_sets_the_interface_up() {
    in_netns("up_sets_the_interface_up", || {
        let tap = Tap::open(Some("uptap")).unwrap();
        assert!(!is_up("uptap"));
        tap.up().unwrap();
        assert!(is_up("uptap"));
    });
}

#[test]
fn nonblocking_read_of_an_idle_tap_would_block() {
    in_netns("nonblocking_read_of_an_idle_tap_would_block", || {
        // Down, the tap receives nothing from the namespace's own stack.
        let tap = Tap::open(Some("nbtap")).unwrap();
        tap.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 2048];
        let err = tap.read(&mut buf).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::WouldBlock);
        tap.set_nonblocking(false).unwrap();
    });
}

#[test]
fn bad_names_are_refused_before_any_ioctl() {
    in_netns("bad_names_are_refused_before_any_ioctl", || {
        for bad in ["", "sixteen_bytes_xx", "a/b", "a b", "tab\t", ".", "eth0:1"] {
            match Tap::open(Some(bad)) {
                Err(Error::InvalidName { name, .. }) => assert_eq!(name, bad),
                other => panic!("{bad:?}: expected InvalidName, got {other:?}"),
            }
        }
        for bad in ["", "a/b"] {
            let err = net_host::attach_to_bridge(bad, "br0").unwrap_err();
            assert!(matches!(err, Error::InvalidName { .. }), "{err:?}");
            let err = net_host::attach_to_bridge("tap0", bad).unwrap_err();
            assert!(matches!(err, Error::InvalidName { .. }), "{err:?}");
        }
    });
}

#[test]
fn opening_an_interface_that_is_not_a_tap_says_so() {
    in_netns("opening_an_interface_that_is_not_a_tap_says_so", || {
        let _bridge = BridgeGuard::create("notatap");
        let err = Tap::open(Some("notatap")).unwrap_err();
        assert!(
            matches!(&err, Error::NotATap { name } if name == "notatap"),
            "{err:?}"
        );
        assert!(err.to_string().contains("notatap"), "{err}");
    });
}

#[test]
fn opening_a_tap_another_descriptor_holds_says_busy() {
    in_netns("opening_a_tap_another_descriptor_holds_says_busy", || {
        let _held = Tap::open(Some("heldtap")).unwrap();
        let err = Tap::open(Some("heldtap")).unwrap_err();
        assert!(
            matches!(&err, Error::TapBusy { name } if name == "heldtap"),
            "{err:?}"
        );
    });
}

#[test]
fn creating_a_tap_without_cap_net_admin_says_what_is_needed() {
    in_netns(
        "creating_a_tap_without_cap_net_admin_says_what_is_needed",
        || {
            let existing = Tap::open(Some("captap")).unwrap();
            drop_cap_net_admin();
            let err = Tap::open(Some("newtap")).unwrap_err();
            assert!(
                matches!(&err, Error::TapPermission { name } if name == "newtap"),
                "{err:?}"
            );
            assert!(err.to_string().contains("CAP_NET_ADMIN"), "{err}");
            assert!(!iface_exists("newtap"));

            let err = existing.up().unwrap_err();
            assert!(
                matches!(&err, Error::PermissionDenied { name, .. } if name == "captap"),
                "{err:?}"
            );
            assert!(err.to_string().contains("CAP_NET_ADMIN"), "{err}");
        },
    );
}
