//! Good requests on every route, the socket's lifecycle, and clients that are many, slow or gone.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use api::client::Client;
use api::{ROUTES, ServeError, ServeOptions};
use api_types::{EventKind, EventList, VmCounters, VmInfo, VmState};
use common::{CONFIG, FakeVmm, raw, scratch_dir, start, start_with, status_of};

#[test]
fn every_route_serves_a_good_request() {
    let t = start();
    let c = &t.client;
    let info: VmInfo = c.get("/vm").unwrap().json().unwrap();
    assert_eq!((info.state, info.config), (VmState::Created, None));

    let r = c.put("/vm/config", CONFIG).unwrap();
    assert_eq!(
        (r.status, r.body.as_str(), r.header("content-length")),
        (204, "", None)
    );
    assert_eq!(
        c.patch("/vm/config", r#"{"rng":true}"#).unwrap().status,
        204
    );
    assert_eq!(
        c.put("/vm/config/disks/0", r#"{"path":"/d.img","format":"raw"}"#)
            .unwrap()
            .status,
        204
    );
    assert_eq!(
        c.put("/vm/config/disks/0", r#"{"path":"/e.img"}"#)
            .unwrap()
            .status,
        204
    );
    assert_eq!(
        c.put("/vm/config/nets/0", r#"{"tap":"tap0"}"#)
            .unwrap()
            .status,
        204
    );
    let info: VmInfo = c.get("/vm").unwrap().json().unwrap();
    let config = info.config.unwrap();
    assert!(config.rng);
    assert_eq!(config.disks.len(), 1);
    assert_eq!(config.disks[0].path, "/e.img");
    assert_eq!(config.nets[0].tap.as_deref(), Some("tap0"));

    assert_eq!(
        c.post("/vm/actions", r#"{"action":"boot"}"#)
            .unwrap()
            .status,
        204
    );
    assert_eq!(t.vmm.state(), VmState::Running);

    let r = c.get("/vm/counters").unwrap();
    assert_eq!(r.header("content-type"), Some("application/json"));
    let counters: VmCounters = r.json().unwrap();
    assert_eq!(
        (counters.state, counters.vcpus[0].exits[0].count),
        (Some(VmState::Running), 42)
    );

    let r = c.get("/metrics").unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some(api::metrics::CONTENT_TYPE));
    assert!(
        r.body.contains("popek_vm_state{state=\"running\"} 1\n"),
        "{}",
        r.body
    );

    let all: EventList = c.get("/vm/events").unwrap().json().unwrap();
    let kinds: Vec<EventKind> = all.events.iter().map(|e| e.kind).collect();
    assert_eq!(kinds[0], EventKind::Created);
    assert_eq!(kinds.last(), Some(&EventKind::Booted));
    let later: EventList = c
        .get(&format!("/vm/events?since={}", all.next - 1))
        .unwrap()
        .json()
        .unwrap();
    assert_eq!((later.events.len(), later.next), (1, all.next));
    let none: EventList = c
        .get(&format!("/vm/events?since={}", all.next))
        .unwrap()
        .json()
        .unwrap();
    assert!(none.events.is_empty());
}

#[test]
fn the_lifecycle_follows_the_backend() {
    let t = start();
    let act = |a: &str| {
        t.client
            .post("/vm/actions", &format!(r#"{{"action":"{a}"}}"#))
            .unwrap()
            .status
    };
    assert_eq!(act("boot"), 409, "no configuration yet: the fake refuses");
    t.client.put("/vm/config", CONFIG).unwrap();
    for (action, state) in [
        ("boot", VmState::Running),
        ("pause", VmState::Paused),
        ("resume", VmState::Running),
        ("reboot", VmState::Running),
        ("stop", VmState::Stopped),
        ("boot", VmState::Running),
        ("shutdown", VmState::Stopped),
    ] {
        assert_eq!(act(action), 204, "{action}");
        assert_eq!(t.vmm.state(), state, "after {action}");
    }
}

#[test]
fn raw_http_variants_are_understood() {
    let t = start();
    let path = t.server.path();
    // HTTP/1.0, no Host, and a reply that closes the connection.
    let reply = raw(path, b"GET /vm HTTP/1.0\r\n\r\n");
    assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"), "{reply}");
    assert!(
        reply.contains("\r\nConnection: close\r\n") && reply.contains("\r\nDate: "),
        "{reply}"
    );
    // A chunked body.
    let body = CONFIG.as_bytes();
    let (a, b) = body.split_at(10);
    let mut req =
        b"PUT /vm/config HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for part in [a, b] {
        req.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
        req.extend_from_slice(part);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    assert_eq!(status_of(&raw(path, &req)), 204);
    // Expect: 100-continue gets the interim reply before the body is read.
    let mut s = UnixStream::connect(path).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let head = format!(
        "PUT /vm/config HTTP/1.1\r\nContent-Type: application/json; charset=utf-8\r\n\
         Expect: 100-continue\r\nContent-Length: {}\r\n\r\n",
        CONFIG.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    let mut interim = [0; 25];
    s.read_exact(&mut interim).unwrap();
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    s.write_all(CONFIG.as_bytes()).unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    assert_eq!(status_of(&reply), 204, "{reply}");
}

#[test]
fn concurrent_clients_are_all_served() {
    let t = start();
    t.client.put("/vm/config", CONFIG).unwrap();
    let threads: Vec<_> = (0..8)
        .map(|i| {
            let client = t.client.clone();
            std::thread::spawn(move || {
                for _ in 0..25 {
                    let r = if i % 2 == 0 {
                        client.get("/vm/counters").unwrap()
                    } else {
                        client.patch("/vm/config", r#"{"rng":true}"#).unwrap()
                    };
                    assert!(matches!(r.status, 200 | 204), "{r:?}");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(t.client.get("/vm").unwrap().status, 200);
}

#[test]
fn a_silent_client_blocks_no_one_and_times_out() {
    let options = ServeOptions {
        request_timeout: Duration::from_millis(300),
        ..Default::default()
    };
    let t = start_with(options);
    let path = t.server.path();
    // Half a head, then silence; and a full head whose body never comes.
    let mut silent = UnixStream::connect(path).unwrap();
    silent.write_all(b"GET /vm HTTP/1.1\r\nHost:").unwrap();
    let mut no_body = UnixStream::connect(path).unwrap();
    no_body
        .write_all(b"PUT /vm/config HTTP/1.1\r\nContent-Length: 100\r\n\r\n{")
        .unwrap();
    let started = Instant::now();
    assert_eq!(t.client.get("/vm").unwrap().status, 200);
    assert!(
        started.elapsed() < Duration::from_millis(250),
        "{:?}",
        started.elapsed()
    );
    for mut s in [silent, no_body] {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut reply = String::new();
        s.read_to_string(&mut reply).unwrap();
        assert_eq!(status_of(&reply), 408, "{reply}");
    }
}

#[test]
fn connections_over_the_limit_get_503() {
    let options = ServeOptions {
        request_timeout: Duration::from_secs(5),
        max_connections: 1,
    };
    let t = start_with(options);
    let mut busy = UnixStream::connect(t.server.path()).unwrap();
    busy.write_all(b"GET /vm HTTP/1.1\r\n").unwrap();
    // Let the accept thread take the first connection.
    std::thread::sleep(Duration::from_millis(50));
    let r = t.client.get("/vm").unwrap();
    assert_eq!(r.status, 503);
    busy.write_all(b"\r\n").unwrap();
    let mut reply = String::new();
    busy.read_to_string(&mut reply).unwrap();
    assert_eq!(status_of(&reply), 200);
}

#[test]
fn the_socket_file_lives_as_long_as_the_server() {
    let dir = scratch_dir();
    let socket = dir.join("api.sock");
    // A stale socket, left by a VMM that died, is replaced.
    drop(UnixListener::bind(&socket).unwrap());
    assert!(socket.exists());
    let server = api::serve(&socket, Arc::new(FakeVmm::default())).unwrap();
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&socket).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    // A live one is not.
    let again = api::serve(&socket, Arc::new(FakeVmm::default()));
    assert!(matches!(again, Err(ServeError::InUse(_))), "{again:?}");
    assert_eq!(Client::new(&socket).get("/vm").unwrap().status, 200);
    server.shutdown();
    assert!(!socket.exists());
    assert!(UnixStream::connect(&socket).is_err());
    // Dropping stops it too.
    let server = api::serve(&socket, Arc::new(FakeVmm::default())).unwrap();
    drop(server);
    assert!(!socket.exists());
    // Anything but a socket is left alone.
    std::fs::write(&socket, "precious").unwrap();
    let refused = api::serve(&socket, Arc::new(FakeVmm::default()));
    let e = refused.unwrap_err();
    assert!(matches!(e, ServeError::NotASocket(_)));
    assert!(e.to_string().contains("is not a socket"), "{e}");
    assert_eq!(std::fs::read_to_string(&socket).unwrap(), "precious");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn shutdown_leaves_a_replaced_socket_alone() {
    let dir = scratch_dir();
    let socket = dir.join("api.sock");
    let server = api::serve(&socket, Arc::new(FakeVmm::default())).unwrap();
    // Someone else takes the path over.
    std::fs::remove_file(&socket).unwrap();
    let other = UnixListener::bind(&socket).unwrap();
    server.shutdown();
    assert!(socket.exists(), "the other socket stays");
    drop(other);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn routes_are_the_documented_resources() {
    // The crate doc of api-types lists the same eleven.
    assert_eq!(ROUTES.len(), 11);
    let t = start();
    for &(method, template) in ROUTES {
        let path = template.replace("{index}", "0");
        let r = t.client.request(method, &path, None).unwrap();
        assert!(!matches!(r.status, 404 | 405), "{method} {path}: {r:?}");
    }
}
