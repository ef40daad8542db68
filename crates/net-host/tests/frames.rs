//! Frames through a tap, between the "guest" side (`Tap::read`/`write`, virtio-net header first)
//! and the host's network stack, inside a network namespace of the test's own.

mod common;

use std::io::{IoSlice, IoSliceMut};

use common::{
    PacketSocket, in_netns, is_test_frame, set_ipv4, tap_recv_matching, test_frame,
    with_zero_vnet_hdr,
};
use net_host::{Tap, VNET_HDR_LEN, random_local_mac};

/// A tap with the v1 header size, up, with a link-local IPv4 address on the host side.
fn host_facing_tap(name: &str) -> Tap {
    let tap = Tap::open(Some(name)).unwrap();
    tap.set_vnet_hdr_size(VNET_HDR_LEN as i32).unwrap();
    tap.up().unwrap();
    set_ipv4(name, [169, 254, 77, 1]);
    tap
}

#[test]
fn frame_written_to_tap_reaches_a_packet_socket_on_the_host() {
    in_netns(
        "frame_written_to_tap_reaches_a_packet_socket_on_the_host",
        || {
            let tap = host_facing_tap("wtap");
            let socket = PacketSocket::bind("wtap");
            let frame = test_frame(random_local_mac(), b"guest-to-host");

            let packet = with_zero_vnet_hdr(VNET_HDR_LEN, &frame);
            assert_eq!(tap.write(&packet).unwrap(), packet.len());

            let got = socket
                .recv_matching(|f| is_test_frame(f, b"guest-to-host"))
                .expect("the host never saw the frame the guest wrote");
            assert_eq!(got, frame);
        },
    );
}

#[test]
fn frame_sent_on_the_host_is_read_from_tap() {
    in_netns("frame_sent_on_the_host_is_read_from_tap", || {
        let tap = host_facing_tap("rtap");
        let socket = PacketSocket::bind("rtap");
        let frame = test_frame(random_local_mac(), b"host-to-guest");

        socket.send(&frame);

        let got = tap_recv_matching(&tap, VNET_HDR_LEN, |f| is_test_frame(f, b"host-to-guest"))
            .expect("the guest side never read the frame the host sent");
        assert_eq!(got, frame);
    });
}

#[test]
fn scattered_header_and_frame_pass_through_readv_and_writev() {
    in_netns(
        "scattered_header_and_frame_pass_through_readv_and_writev",
        || {
            let tap = host_facing_tap("vtap");
            let socket = PacketSocket::bind("vtap");

            let out = test_frame(random_local_mac(), b"writev");
            let header = [0u8; VNET_HDR_LEN];
            let written = tap
                .writev(&[IoSlice::new(&header), IoSlice::new(&out)])
                .unwrap();
            assert_eq!(written, VNET_HDR_LEN + out.len());
            let got = socket
                .recv_matching(|f| is_test_frame(f, b"writev"))
                .expect("writev frame");
            assert_eq!(got, out);

            let back = test_frame(random_local_mac(), b"readv");
            socket.send(&back);
            let deadline = std::time::Instant::now() + common::FRAME_TIMEOUT;
            loop {
                assert!(
                    std::time::Instant::now() < deadline,
                    "readv never got the frame"
                );
                let mut hdr = [0u8; VNET_HDR_LEN];
                let mut body = vec![0u8; 2048];
                let n = tap
                    .readv(&mut [IoSliceMut::new(&mut hdr), IoSliceMut::new(&mut body)])
                    .unwrap();
                let body = &body[..n - VNET_HDR_LEN];
                if is_test_frame(body, b"readv") {
                    assert_eq!(body, back.as_slice());
                    break;
                }
            }
        },
    );
}

/// The whole path a guest's first packet takes: it asks who has the host's address, and the
/// host's stack answers through the tap.
#[test]
fn host_answers_an_arp_request_the_guest_writes() {
    in_netns("host_answers_an_arp_request_the_guest_writes", || {
        let tap = host_facing_tap("arptap");
        let guest_mac = random_local_mac();
        let guest_ip = [169, 254, 77, 2];
        let host_ip = [169, 254, 77, 1];

        let mut request = vec![0xff; 6];
        request.extend_from_slice(&guest_mac);
        request.extend_from_slice(&[0x08, 0x06]); // ARP
        request.extend_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 1]); // Ethernet/IPv4, request
        request.extend_from_slice(&guest_mac);
        request.extend_from_slice(&guest_ip);
        request.extend_from_slice(&[0; 6]);
        request.extend_from_slice(&host_ip);
        request.resize(60, 0);
        tap.write(&with_zero_vnet_hdr(VNET_HDR_LEN, &request))
            .unwrap();

        let is_reply = |f: &[u8]| f.len() >= 42 && f[12..14] == [0x08, 0x06] && f[20..22] == [0, 2];
        let reply = tap_recv_matching(&tap, VNET_HDR_LEN, is_reply).expect("no ARP reply");
        assert_eq!(&reply[0..6], &guest_mac, "reply not addressed to the guest");
        assert_eq!(&reply[28..32], &host_ip, "reply for the wrong address");
        assert_eq!(&reply[32..38], &guest_mac);
        assert_eq!(&reply[38..42], &guest_ip);
    });
}
