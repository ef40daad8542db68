//! The vsock worker driven directly, as a driver would, with real Unix sockets on the host side.

pub(super) mod harness;

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::Ordering;
use std::time::Duration;

use virtio_queue::desc::split::Descriptor;

use self::harness::*;
use super::connection::BUF_ALLOC;
use super::packet::{HEADER_LEN, Header};
use super::worker::MAX_PAYLOAD;
use super::{HOST_CID, QUEUE_SIZE, TYPE_STREAM, Vsock, VsockError, op, shutdown};
use crate::virtio::{F_VERSION_1, VirtioDevice};

#[test]
fn host_client_connects_and_exchanges_data() {
    let mut h = Harness::new();
    h.give_rx(8);
    let mut c = UnixStream::connect(h.path()).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    c.write_all(b"CONNECT 1234\n").unwrap();
    h.settle();
    let (req, _) = h.recv_one();
    assert_eq!((req.op, req.kind), (op::REQUEST, TYPE_STREAM));
    assert_eq!((req.src_cid, req.dst_cid), (HOST_CID, GUEST_CID));
    assert_eq!(req.dst_port, 1234);
    assert!(req.src_port >= 1 << 30);
    assert_eq!(req.buf_alloc, BUF_ALLOC);
    // Nothing reaches the client before the guest accepts.
    assert!(nothing_to_read(&c));

    h.send(guest_hdr(op::RESPONSE, 1234, req.src_port), &[]);
    assert_eq!(read_line(&mut c), format!("OK {}", req.src_port));

    c.write_all(b"hello").unwrap();
    h.settle();
    let (rw, data) = h.recv_one();
    assert_eq!(
        (rw.op, rw.src_port, rw.dst_port),
        (op::RW, req.src_port, 1234)
    );
    assert_eq!(data, b"hello");

    h.send_data(1234, req.src_port, b"world");
    let mut buf = [0u8; 5];
    c.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"world");

    let s = h.stats();
    assert_eq!(s.connections.load(Ordering::Relaxed), 1);
    assert_eq!(s.rx_bytes.load(Ordering::Relaxed), 5);
    assert_eq!(s.tx_bytes.load(Ordering::Relaxed), 5);
    assert_eq!(s.rx_packets.load(Ordering::Relaxed), 2);
    assert_eq!(s.tx_packets.load(Ordering::Relaxed), 2);
    assert_eq!(s.errors.load(Ordering::Relaxed), 0);
    assert!(h.irq.0[0].load(Ordering::Relaxed) >= 2);
    assert!(h.irq.0[1].load(Ordering::Relaxed) >= 2);
}

#[test]
fn guest_refusal_closes_the_client() {
    let mut h = Harness::new();
    h.give_rx(2);
    let mut c = UnixStream::connect(h.path()).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    c.write_all(b"CONNECT 77\n").unwrap();
    h.settle();
    let (req, _) = h.recv_one();
    h.send(guest_hdr(op::RST, 77, req.src_port), &[]);
    assert_eq!(c.read(&mut [0u8; 8]).unwrap(), 0);
    assert_eq!(h.errors(), 0);
}

#[test]
fn bad_connect_lines_are_dropped() {
    let mut h = Harness::new();
    h.give_rx(2);
    let mut c = UnixStream::connect(h.path()).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    c.write_all(b"HELLO 1\n").unwrap();
    h.settle();
    assert_eq!(c.read(&mut [0u8; 8]).unwrap(), 0);
    assert!(h.recv().is_empty());
}

#[test]
fn guest_connects_to_a_host_listener() {
    let mut h = Harness::new();
    h.give_rx(8);
    let l = UnixListener::bind(port_path(&h.path(), 5000)).unwrap();
    h.send(guest_hdr(op::REQUEST, 999, 5000), &[]);
    let (resp, _) = h.recv_one();
    assert_eq!(resp.op, op::RESPONSE);
    assert_eq!((resp.src_port, resp.dst_port), (5000, 999));
    assert_eq!(resp.buf_alloc, BUF_ALLOC);
    let (mut s, _) = l.accept().unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();

    h.send_data(999, 5000, b"ping");
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping");

    s.write_all(b"pong").unwrap();
    h.settle();
    let (rw, data) = h.recv_one();
    assert_eq!((rw.op, rw.src_port, rw.dst_port), (op::RW, 5000, 999));
    assert_eq!(data, b"pong");
    assert_eq!(h.stats().connections.load(Ordering::Relaxed), 1);
}

#[test]
fn guest_connect_without_a_listener_is_reset() {
    let mut h = Harness::new();
    h.give_rx(2);
    h.send(guest_hdr(op::REQUEST, 999, 5001), &[]);
    let (rst, _) = h.recv_one();
    assert_eq!((rst.op, rst.src_port, rst.dst_port), (op::RST, 5001, 999));
    assert_eq!(h.stats().connections.load(Ordering::Relaxed), 0);
    assert_eq!(h.errors(), 0);
}

#[test]
fn packets_wait_for_rx_buffers() {
    let mut h = Harness::new();
    let _l = UnixListener::bind(port_path(&h.path(), 6000)).unwrap();
    h.send(guest_hdr(op::REQUEST, 1, 6000), &[]);
    assert!(h.recv().is_empty());
    h.give_rx(1);
    assert_eq!(h.recv_one().0.op, op::RESPONSE);
}

#[test]
fn host_data_waits_for_guest_credit() {
    let mut h = Harness::new();
    h.give_rx(8);
    let mut s = {
        let l = UnixListener::bind(port_path(&h.path(), 7000)).unwrap();
        let mut req = guest_hdr(op::REQUEST, 10, 7000);
        req.buf_alloc = 0;
        h.send(req, &[]);
        assert_eq!(h.recv_one().0.op, op::RESPONSE);
        l.accept().unwrap().0
    };
    s.write_all(&[7u8; 10000]).unwrap();
    // No credit: nothing moves, and `settle` shows the socket is not watched meanwhile.
    h.settle();
    assert!(h.recv().is_empty());

    let mut update = guest_hdr(op::CREDIT_UPDATE, 10, 7000);
    update.buf_alloc = 6000;
    h.send(update, &[]);
    let got: usize = h.recv().iter().map(|(_, d)| d.len()).sum();
    assert_eq!(got, 6000);

    // The guest consumed 5000 of it: 5000 more may come.
    update.fwd_cnt = 5000;
    h.send(update, &[]);
    let got: usize = h.recv().iter().map(|(_, d)| d.len()).sum();
    assert_eq!(got, 4000, "the rest of the 10000 bytes");
    assert_eq!(h.stats().rx_bytes.load(Ordering::Relaxed), 10000);
}

#[test]
fn credit_request_is_answered() {
    let mut h = Harness::new();
    h.give_rx(4);
    let mut s = h.guest_connect(20, 7100);
    h.send_data(20, 7100, b"abc");
    s.read_exact(&mut [0u8; 3]).unwrap();
    h.send(guest_hdr(op::CREDIT_REQUEST, 20, 7100), &[]);
    let (u, _) = h.recv_one();
    assert_eq!(u.op, op::CREDIT_UPDATE);
    assert_eq!((u.buf_alloc, u.fwd_cnt), (BUF_ALLOC, 3));
}

#[test]
fn guest_data_the_host_cannot_take_yet_is_kept_and_credited() {
    let mut h = Harness::new();
    h.give_rx(16);
    let mut s = h.guest_connect(30, 7200);
    let total = BUF_ALLOC as usize;
    let data: Vec<u8> = (0..total).map(|i| (i % 251) as u8).collect();
    for chunk in data.chunks(MAX_PAYLOAD) {
        h.send_data(30, 7200, chunk);
    }
    // The socket took only part of it; the guest heard how much.
    let taken: Vec<u32> = h
        .recv()
        .iter()
        .filter(|(p, _)| p.op == op::CREDIT_UPDATE)
        .map(|(p, _)| p.fwd_cnt)
        .collect();
    assert!(
        !taken.is_empty() && taken.iter().all(|&f| f < BUF_ALLOC),
        "{taken:?}"
    );
    // The host reads slowly; the device passes the rest on as room appears.
    let mut got = Vec::new();
    s.set_nonblocking(true).unwrap();
    for _ in 0..1000 {
        let mut buf = [0u8; 16 << 10];
        match s.read(&mut buf) {
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => h.settle(),
            Err(e) => panic!("{e}"),
        }
        if got.len() == total {
            break;
        }
    }
    assert!(
        got == data,
        "got {} of {total} bytes, or not in order",
        got.len()
    );
    let updates: Vec<_> = h
        .recv()
        .into_iter()
        .filter(|(p, _)| p.op == op::CREDIT_UPDATE)
        .map(|(p, _)| p.fwd_cnt)
        .collect();
    assert!(
        updates.last().is_some_and(|&f| f > *taken.last().unwrap()),
        "no credit update for the data passed on later: {updates:?}"
    );
    assert_eq!(h.errors(), 0);
}

#[test]
fn guest_overrunning_its_credit_is_reset() {
    let mut h = Harness::new();
    h.give_rx(16);
    let s = h.guest_connect(31, 7300);
    // The host never reads: 1 MiB cannot fit in a socket buffer plus 256 KiB of credit.
    for _ in 0..16 {
        h.send_data(31, 7300, &[1u8; MAX_PAYLOAD]);
    }
    assert!(h.recv().iter().any(|(p, _)| p.op == op::RST));
    assert!(h.errors() >= 1);
    drop(s);
}

#[test]
fn guest_shutdown_closes_the_host_write_half_then_the_socket() {
    let mut h = Harness::new();
    h.give_rx(8);
    let mut s = h.guest_connect(40, 7400);
    let mut sd = guest_hdr(op::SHUTDOWN, 40, 7400);
    sd.flags = shutdown::SEND;
    h.send(sd, &[]);
    assert_eq!(
        s.read(&mut [0u8; 8]).unwrap(),
        0,
        "the host sees end of file"
    );
    // The other direction still works.
    s.write_all(b"late").unwrap();
    h.settle();
    let (rw, data) = h.recv_one();
    assert_eq!((rw.op, data.as_slice()), (op::RW, &b"late"[..]));

    sd.flags = shutdown::SEND | shutdown::RCV;
    h.send(sd, &[]);
    let (rst, _) = h.recv_one();
    assert_eq!((rst.op, rst.src_port, rst.dst_port), (op::RST, 7400, 40));
    assert_eq!(s.write(b"x").unwrap_err().kind(), ErrorKind::BrokenPipe);
    assert_eq!(h.errors(), 0);
}

#[test]
fn host_end_of_file_shuts_the_guest_down() {
    let mut h = Harness::new();
    h.give_rx(8);
    let (mut c, port) = h.host_connect(50);
    c.shutdown(std::net::Shutdown::Write).unwrap();
    h.settle();
    let (sd, _) = h.recv_one();
    assert_eq!((sd.op, sd.flags), (op::SHUTDOWN, shutdown::SEND));
    // The guest may still send.
    h.send_data(50, port, b"bye");
    let mut buf = [0u8; 3];
    c.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"bye");
    // It closes: full shutdown, answered with a reset.
    let mut full = guest_hdr(op::SHUTDOWN, 50, port);
    full.flags = shutdown::SEND | shutdown::RCV;
    h.send(full, &[]);
    assert_eq!(h.recv_one().0.op, op::RST);
    assert_eq!(c.read(&mut buf).unwrap(), 0);
    assert_eq!(h.errors(), 0);
}

#[test]
fn host_close_after_guest_shutdown_sends_both_flags() {
    let mut h = Harness::new();
    h.give_rx(8);
    let s = h.guest_connect(60, 7600);
    let mut sd = guest_hdr(op::SHUTDOWN, 60, 7600);
    sd.flags = shutdown::SEND;
    h.send(sd, &[]);
    drop(s);
    h.settle();
    let (p, _) = h.recv_one();
    assert_eq!(
        (p.op, p.flags),
        (op::SHUTDOWN, shutdown::SEND | shutdown::RCV)
    );
    // The guest answers with a reset, after which the connection is gone.
    h.send(guest_hdr(op::RST, 60, 7600), &[]);
    h.send_data(60, 7600, b"x");
    assert_eq!(h.recv_one().0.op, op::RST);
    assert_eq!(h.errors(), 1);
}

#[test]
fn guest_reset_closes_the_host_socket() {
    let mut h = Harness::new();
    h.give_rx(4);
    let mut s = h.guest_connect(70, 7700);
    h.send(guest_hdr(op::RST, 70, 7700), &[]);
    assert_eq!(s.read(&mut [0u8; 4]).unwrap(), 0);
    assert!(h.recv().is_empty(), "a reset is not answered");
}

#[test]
fn malformed_packets_are_reset_and_counted() {
    let mut h = Harness::new();
    h.give_rx(16);
    let _s = h.guest_connect(80, 7800);

    // A header too short to name a connection: counted, not answered.
    let ha = 0x40_0000 + u64::from(h.txq.next_desc) * 0x100;
    h.txq.add(&h.mem.clone(), &[(ha, 20, false)]);
    h.kick(1);
    assert!(h.recv().is_empty());
    assert_eq!(h.errors(), 1);

    let expect_rst = |h: &mut Harness, pkt: Header, errors: u64| {
        h.send(pkt, &[]);
        let (rst, _) = h.recv_one();
        assert_eq!(rst.op, op::RST, "answer to {pkt:?}");
        assert_eq!((rst.src_port, rst.dst_port), (pkt.dst_port, pkt.src_port));
        assert_eq!(rst.dst_cid, GUEST_CID);
        assert_eq!(h.errors(), errors);
    };
    expect_rst(&mut h, guest_hdr(99, 81, 7800), 2);
    expect_rst(&mut h, guest_hdr(0, 81, 7800), 3);
    let mut wrong_cid = guest_hdr(op::REQUEST, 82, 7800);
    wrong_cid.src_cid = GUEST_CID + 1;
    expect_rst(&mut h, wrong_cid, 4);
    let mut seqpacket = guest_hdr(op::REQUEST, 83, 7800);
    seqpacket.kind = 2;
    expect_rst(&mut h, seqpacket, 5);
    let mut other_dst = guest_hdr(op::REQUEST, 84, 7800);
    other_dst.dst_cid = 7;
    expect_rst(&mut h, other_dst, 6);
    expect_rst(&mut h, guest_hdr(op::RW, 85, 7800), 7);
    expect_rst(&mut h, guest_hdr(op::RESPONSE, 80, 7800), 8);
    // A length past the buffers.
    let mut long = guest_hdr(op::RW, 80, 7800);
    long.len = 100;
    expect_rst(&mut h, long, 9);

    // A reset for nothing is neither answered nor counted.
    h.send(guest_hdr(op::RST, 86, 7800), &[]);
    assert!(h.recv().is_empty());
    assert_eq!(h.errors(), 9);
    assert_eq!(h.stats().tx_packets.load(Ordering::Relaxed), 10);
}

#[test]
fn malformed_chains_are_returned_unused() {
    let mut h = Harness::new();
    let mem = h.mem.clone();
    // A tx chain whose `next` leaves the table.
    let head = h.txq.next_desc;
    h.txq
        .put_desc(&mem, head, Descriptor::new(0x40_0000, 44, F_NEXT, 300));
    h.txq.next_desc += 1;
    h.txq.publish(&mem, head);
    h.kick(1);
    assert_eq!(h.txq.take_used(&mem), vec![(head, 0)]);
    assert_eq!(h.errors(), 1);

    // An rx buffer outside guest memory, one too small for any data, then a good one.
    let bad = h.rxq.add(&mem, &[(0xffff_0000_0000, 4096, true)]);
    let small = h.rxq.add(&mem, &[(0x1f0_0000, HEADER_LEN as u32, true)]);
    h.give_rx(1);
    h.send(guest_hdr(op::REQUEST, 1, 9999), &[]);
    let used = h.rxq.take_used(&mem);
    assert_eq!(used[..2], [(bad, 0), (small, 0)]);
    assert_eq!(used.len(), 3);
    assert_eq!(h.errors(), 3);
    // The good buffer carries the answer.
    h.rxq.used_idx -= 1;
    assert_eq!(h.recv_one().0.op, op::RST);
}

#[test]
fn sources_follow_connections_and_credit() {
    let mut h = Harness::new();
    h.give_rx(4);
    let base = h.worker.sources().len();
    assert!(!h.worker.sources_changed());
    let s = h.guest_connect(90, 7900);
    assert_eq!(
        h.worker.sources().len(),
        base + 1,
        "the new connection is watched"
    );
    let mut no_credit = guest_hdr(op::CREDIT_UPDATE, 90, 7900);
    no_credit.buf_alloc = 0;
    h.send(no_credit, &[]);
    assert_eq!(h.worker.sources().len(), base, "no credit: not watched");
    h.send(guest_hdr(op::RST, 90, 7900), &[]);
    assert_eq!(h.worker.sources().len(), base);
    drop(s);
}

#[test]
fn reset_closes_connections_and_keeps_the_listener() {
    let mut h = Harness::new();
    h.give_rx(4);
    let (mut c, _) = h.host_connect(100);
    h.activate();
    assert_eq!(
        c.read(&mut [0u8; 4]).unwrap(),
        0,
        "the old connection is closed"
    );
    h.give_rx(4);
    let (mut c, port) = h.host_connect(101);
    c.write_all(b"again").unwrap();
    h.settle();
    let (rw, data) = h.recv_one();
    assert_eq!((rw.src_port, data.as_slice()), (port, &b"again"[..]));
    assert_eq!(h.errors(), 0);
}

#[test]
fn config_space_holds_the_guest_cid() {
    let h = Harness::new();
    let mut b = [0xffu8; 12];
    h.dev.read_config(0, &mut b);
    assert_eq!(b, [3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(h.dev.queue_max_sizes(), vec![QUEUE_SIZE; 3]);
    assert_eq!(h.dev.features(), F_VERSION_1);
}

#[test]
fn new_checks_the_cid_and_the_path() {
    let dir = TempDir::new();
    let path = dir.0.join("v.sock");
    assert!(matches!(
        Vsock::new(2, &path),
        Err(VsockError::InvalidCid(2))
    ));
    // A stale socket is replaced.
    drop(UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let v = Vsock::new(3, &path).unwrap();
    drop(v);
    // Anything else is left alone.
    let file = dir.0.join("file");
    std::fs::write(&file, b"keep").unwrap();
    let e = Vsock::new(3, &file).err().unwrap();
    assert!(e.to_string().contains(&file.display().to_string()));
    assert_eq!(std::fs::read(&file).unwrap(), b"keep");
    let long = dir.0.join("x".repeat(120));
    assert!(matches!(
        Vsock::new(3, &long),
        Err(VsockError::PathTooLong(_))
    ));
}
