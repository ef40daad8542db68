//! Taps as bridge ports: frames cross the bridge from one tap to another, and attaching fails
//! clearly. Every test runs in a network namespace of its own (see `common`).

mod common;

use common::{
    BridgeGuard, PersistentTapGuard, iface_exists, in_netns, is_test_frame, tap_recv_matching,
    test_frame, with_zero_vnet_hdr,
};
use net_host::{Error, Tap, VNET_HDR_LEN, attach_to_bridge, link_up, random_local_mac};

/// A tap with the v1 header size, attached to `bridge` and up.
fn bridged_tap(name: &str, bridge: &str) -> Tap {
    let tap = Tap::open(Some(name)).unwrap();
    tap.set_vnet_hdr_size(VNET_HDR_LEN as i32).unwrap();
    attach_to_bridge(tap.name(), bridge).unwrap();
    tap.up().unwrap();
    tap
}

#[test]
fn frame_written_on_one_tap_comes_out_of_another_on_the_bridge() {
    in_netns(
        "frame_written_on_one_tap_comes_out_of_another_on_the_bridge",
        || {
            let bridge = BridgeGuard::create("br0");
            link_up(&bridge.name).unwrap();
            let a = bridged_tap("tapa", "br0");
            let b = bridged_tap("tapb", "br0");

            let frame = test_frame(random_local_mac(), b"a-to-b");
            a.write(&with_zero_vnet_hdr(VNET_HDR_LEN, &frame)).unwrap();

            let got = tap_recv_matching(&b, VNET_HDR_LEN, |f| is_test_frame(f, b"a-to-b"))
                .expect("the frame written on tap A never came out of tap B");
            assert_eq!(got, frame);

            // Dropping the taps removes them from the bridge and the namespace; the bridge stays.
            drop((a, b));
            assert!(!iface_exists("tapa") && !iface_exists("tapb"));
            assert!(iface_exists("br0"));
        },
    );
}

#[test]
fn attaching_to_a_missing_bridge_says_how_to_create_it() {
    in_netns(
        "attaching_to_a_missing_bridge_says_how_to_create_it",
        || {
            let tap = Tap::open(Some("lonely")).unwrap();
            let err = attach_to_bridge(tap.name(), "nobridge").unwrap_err();
            assert!(
                matches!(&err, Error::BridgeMissing { bridge } if bridge == "nobridge"),
                "{err:?}"
            );
            let message = err.to_string();
            assert!(
                message.contains("ip link add nobridge type bridge"),
                "{message}"
            );
        },
    );
}

#[test]
fn attaching_to_an_interface_that_is_not_a_bridge_says_so() {
    in_netns(
        "attaching_to_an_interface_that_is_not_a_bridge_says_so",
        || {
            let tap = Tap::open(Some("port")).unwrap();
            let _other = PersistentTapGuard::create("nobr");
            let err = attach_to_bridge(tap.name(), "nobr").unwrap_err();
            assert!(
                matches!(&err, Error::NotABridge { bridge } if bridge == "nobr"),
                "{err:?}"
            );
        },
    );
}

#[test]
fn attaching_a_missing_interface_names_it() {
    in_netns("attaching_a_missing_interface_names_it", || {
        let _bridge = BridgeGuard::create("br1");
        let err = attach_to_bridge("ghost0", "br1").unwrap_err();
        assert!(
            matches!(&err, Error::NoSuchInterface { name } if name == "ghost0"),
            "{err:?}"
        );
    });
}

#[test]
fn attaching_a_port_twice_says_it_is_already_bridged() {
    in_netns("attaching_a_port_twice_says_it_is_already_bridged", || {
        let _first = BridgeGuard::create("br2");
        let _second = BridgeGuard::create("br3");
        let tap = Tap::open(Some("twice")).unwrap();
        attach_to_bridge(tap.name(), "br2").unwrap();
        let err = attach_to_bridge(tap.name(), "br3").unwrap_err();
        assert!(
            matches!(&err, Error::AlreadyBridged { name } if name == "twice"),
            "{err:?}"
        );
    });
}
