//! The client against hand-written servers: the reply framings it must read, and the failures
//! it must report rather than hang on.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use api::client::{Client, ClientError};
use common::scratch_dir;

/// Serves one connection: reads the request head, then writes `reply`, then closes.
fn one_shot(reply: &'static [u8]) -> (PathBuf, std::thread::JoinHandle<String>) {
    let socket = scratch_dir().join("fake.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    let thread = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut reader = BufReader::new(&stream);
        let mut head = String::new();
        while !head.ends_with("\r\n\r\n") {
            if reader.read_line(&mut head).unwrap() == 0 {
                break;
            }
        }
        (&stream).write_all(reply).unwrap();
        head
    });
    (socket, thread)
}

#[test]
fn sized_chunked_and_close_delimited_bodies_are_read() {
    let replies: [(&[u8], &str); 3] = [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloIGNORED", "hello"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhel\r\n2;x=y\r\nlo\r\n0\r\n\r\n", "hello"),
        (b"HTTP/1.1 200 OK\r\nX-A: b\r\n\r\nhello", "hello"),
    ];
    for (reply, body) in replies {
        let (socket, server) = one_shot(reply);
        let r = Client::new(&socket).get("/vm").unwrap();
        assert_eq!((r.status, r.body.as_str()), (200, body));
        let head = server.join().unwrap();
        assert!(
            head.starts_with("GET /vm HTTP/1.1\r\n") && head.contains("Connection: close"),
            "{head}"
        );
    }
}

#[test]
fn an_interim_reply_is_skipped() {
    let (socket, server) =
        one_shot(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\nDate: x\r\n\r\n");
    let r = Client::new(&socket).put("/vm/config", "{}").unwrap();
    assert_eq!(
        (r.status, r.body.as_str(), r.header("date")),
        (204, "", Some("x"))
    );
    let head = server.join().unwrap();
    assert!(
        head.contains("Content-Type: application/json\r\nContent-Length: 2\r\n"),
        "{head}"
    );
}

#[test]
fn a_silent_server_times_out() {
    let socket = scratch_dir().join("silent.sock");
    let _listener = UnixListener::bind(&socket).unwrap();
    let started = Instant::now();
    let e = Client::new(&socket)
        .with_timeout(Duration::from_millis(200))
        .get("/vm")
        .unwrap_err();
    assert!(matches!(e, ClientError::TimedOut(_)), "{e:?}");
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[test]
fn failures_are_reported() {
    let missing = scratch_dir().join("none.sock");
    let e = Client::new(&missing).get("/vm").unwrap_err();
    assert!(matches!(e, ClientError::Connect { .. }), "{e:?}");
    assert!(e.to_string().contains("is the VMM running?"), "{e}");
    for bad in ["vm", "/vm HTTP/1.1\r\nX: y", "/a b"] {
        let e = Client::new(&missing).get(bad).unwrap_err();
        assert!(matches!(e, ClientError::InvalidPath(_)), "{bad:?}: {e:?}");
    }
    let (socket, _server) = one_shot(b"SSH-2.0-OpenSSH\r\n\r\n");
    let e = Client::new(&socket).get("/vm").unwrap_err();
    assert!(matches!(e, ClientError::Malformed(_)), "{e:?}");
    let (socket, _server) = one_shot(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort");
    let e = Client::new(&socket).get("/vm").unwrap_err();
    assert!(matches!(e, ClientError::Closed), "{e:?}");
    let (socket, _server) = one_shot(b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999\r\n\r\n");
    let e = Client::new(&socket).get("/vm").unwrap_err();
    assert!(matches!(e, ClientError::TooLarge(_)), "{e:?}");
}

#[test]
fn an_early_reply_is_read_even_if_the_body_was_not() {
    // A server that refuses (413) after the head and closes without reading the body.
    let socket = scratch_dir().join("early.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    let server = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut first = [0; 64];
        let _ = stream.read(&mut first).unwrap();
        stream
            .write_all(b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 2\r\n\r\n{}")
            .unwrap();
    });
    let big = "x".repeat(4 << 20);
    let r = Client::new(&socket).put("/vm/config", &big).unwrap();
    assert_eq!(r.status, 413);
    server.join().unwrap();
}
