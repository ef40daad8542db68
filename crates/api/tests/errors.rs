//! Every class of bad request gets its status code and a message that says what was wrong.

mod common;

use api::client::Response;
use api_types::{ApiError, VmState};
use common::{CONFIG, raw, start, status_of};

fn error(r: &Response) -> ApiError {
    assert_eq!(r.header("content-type"), Some("application/json"), "{r:?}");
    r.json()
        .unwrap_or_else(|e| panic!("not an ApiError ({e}): {}", r.body))
}

#[test]
fn malformed_json_names_line_and_column() {
    let t = start();
    let r = t
        .client
        .put("/vm/config", "{\"machine\":\n  {\"cpus\": 2,,}}")
        .unwrap();
    assert_eq!(r.status, 400);
    let e = error(&r);
    assert!(e.message.starts_with("Malformed JSON"), "{e:?}");
    assert!(e.message.contains("line 2 column 14"), "{e:?}");
    // Trailing garbage after a valid value is malformed too.
    let r = t.client.put("/vm/config", &format!("{CONFIG} x")).unwrap();
    assert!(
        error(&r).message.contains("trailing characters at line 1"),
        "{}",
        r.body
    );
}

#[test]
fn an_unknown_field_is_named_with_its_path() {
    let t = start();
    let body = r#"{"machine":{"cpus":1,"memory_mib":64,"cpu":2},"boot":{"kernel":"/k"}}"#;
    let r = t.client.put("/vm/config", body).unwrap();
    assert_eq!(r.status, 400);
    let e = error(&r);
    assert_eq!(e.field.as_deref(), Some("machine.cpu"), "{e:?}");
    assert!(e.message.contains("Unknown field `machine.cpu`"), "{e:?}");
    assert!(
        e.message.contains("`cpus`"),
        "the message lists the known fields: {e:?}"
    );
    let r = t
        .client
        .post("/vm/actions", r#"{"action":"boot","force":true}"#)
        .unwrap();
    assert_eq!(error(&r).field.as_deref(), Some("force"), "{}", r.body);
}

#[test]
fn a_wrong_type_names_the_field_and_the_expected_type() {
    let t = start();
    let body = r#"{"machine":{"cpus":"two","memory_mib":64},"boot":{"kernel":"/k"}}"#;
    let r = t.client.put("/vm/config", body).unwrap();
    assert_eq!(r.status, 400);
    let e = error(&r);
    assert_eq!(e.field.as_deref(), Some("machine.cpus"), "{e:?}");
    assert!(
        e.message.contains("`machine.cpus`") && e.message.contains("expected u32"),
        "{e:?}"
    );
    let r = t
        .client
        .put("/vm/config/disks/0", r#"{"path":"/d","readonly":"yes"}"#)
        .unwrap();
    assert_eq!(error(&r).field.as_deref(), Some("readonly"));
    let r = t
        .client
        .put("/vm/config/disks/0", r#"{"path":"/d","format":"vmdk"}"#)
        .unwrap();
    let e = error(&r);
    assert_eq!(e.field.as_deref(), Some("format"));
    assert!(e.message.contains("unknown variant `vmdk`"), "{e:?}");
    let r = t.client.put(
        "/vm/config",
        r#"{"machine":{"cpus":1,"memory_mib":64},"boot":{}}"#,
    );
    let e = error(&r.unwrap());
    assert_eq!(e.field.as_deref(), Some("boot.kernel"), "{e:?}");
    assert!(e.message.contains("Missing field `boot.kernel`"), "{e:?}");
}

#[test]
fn a_body_is_required_where_one_is_taken() {
    let t = start();
    for (method, path) in [
        ("PUT", "/vm/config"),
        ("PATCH", "/vm/config"),
        ("POST", "/vm/actions"),
    ] {
        let r = t.client.request(method, path, Some("")).unwrap();
        assert_eq!(r.status, 400, "{method} {path}");
        assert!(
            error(&r).message.contains("needs a JSON body"),
            "{}",
            r.body
        );
        let r = t.client.request(method, path, None).unwrap();
        assert_eq!(r.status, 400, "{method} {path} without Content-Length");
    }
}

#[test]
fn an_action_in_the_wrong_state_is_409_with_the_state() {
    let t = start();
    let r = t
        .client
        .post("/vm/actions", r#"{"action":"pause"}"#)
        .unwrap();
    assert_eq!(r.status, 409);
    let e = error(&r);
    assert_eq!(e.state, Some(VmState::Created), "{e:?}");
    assert!(e.message.contains("Pause"), "{e:?}");
    t.client.put("/vm/config", CONFIG).unwrap();
    assert_eq!(
        t.client
            .post("/vm/actions", r#"{"action":"boot"}"#)
            .unwrap()
            .status,
        204
    );
    let r = t.client.put("/vm/config", CONFIG).unwrap();
    assert_eq!((r.status, error(&r).state), (409, Some(VmState::Running)));
}

#[test]
fn backend_refusals_and_failures_keep_their_status() {
    let t = start();
    let r = t.client.put(
        "/vm/config",
        r#"{"machine":{"cpus":0,"memory_mib":64},"boot":{"kernel":"/k"}}"#,
    );
    let r = r.unwrap();
    assert_eq!(
        (r.status, error(&r).field.as_deref()),
        (400, Some("machine.cpus"))
    );
    t.client.put("/vm/config", CONFIG).unwrap();
    let r = t
        .client
        .put("/vm/config/disks/5", r#"{"path":"/d"}"#)
        .unwrap();
    assert_eq!((r.status, error(&r).field.as_deref()), (400, Some("index")));
    let r = t
        .client
        .put("/vm/config/nets/0", r#"{"tap":"broken"}"#)
        .unwrap();
    assert_eq!(r.status, 500);
    assert!(
        error(&r).message.contains("Cannot open the tap"),
        "{}",
        r.body
    );
}

#[test]
fn a_panicking_backend_costs_one_500() {
    let t = start();
    let r = t
        .client
        .put("/vm/config/disks/0", r#"{"path":"/panic"}"#)
        .unwrap();
    assert_eq!(r.status, 500);
    assert_eq!(
        t.client.get("/vm").unwrap().status,
        200,
        "the server goes on"
    );
}

#[test]
fn an_unknown_path_is_404_and_lists_the_resources() {
    let t = start();
    for path in [
        "/",
        "/vm/",
        "/vm/config/disks/x",
        "/vm/config/disks",
        "/v1/vm",
        "/vm/counters/1",
    ] {
        let r = t.client.get(path).unwrap();
        assert_eq!(r.status, 404, "{path}");
        let e = error(&r);
        assert!(
            e.message.contains("GET /vm/counters") && e.message.contains("POST /vm/actions"),
            "{e:?}"
        );
    }
}

#[test]
fn a_wrong_method_is_405_with_allow() {
    let t = start();
    let r = t.client.request("DELETE", "/vm/config", None).unwrap();
    assert_eq!((r.status, r.header("allow")), (405, Some("PUT, PATCH")));
    assert!(
        error(&r).message.contains("DELETE is not allowed"),
        "{}",
        r.body
    );
    let r = t.client.post("/vm", "{}").unwrap();
    assert_eq!((r.status, r.header("allow")), (405, Some("GET")));
    let r = t.client.get("/vm/actions").unwrap();
    assert_eq!((r.status, r.header("allow")), (405, Some("POST")));
}

#[test]
fn a_bad_query_is_400() {
    let t = start();
    let r = t.client.get("/vm/events?since=soon").unwrap();
    assert_eq!((r.status, error(&r).field.as_deref()), (400, Some("since")));
    let r = t.client.get("/vm/events?limit=3").unwrap();
    assert_eq!((r.status, error(&r).field.as_deref()), (400, Some("limit")));
    assert_eq!(t.client.get("/vm?verbose=1").unwrap().status, 400);
}

#[test]
fn a_body_over_64_kib_is_413_before_it_is_read() {
    let t = start();
    let big = format!(r#"{{"path":"{}"}}"#, "x".repeat(70_000));
    let r = t.client.put("/vm/config/disks/0", &big).unwrap();
    assert_eq!(r.status, 413);
    assert!(error(&r).message.contains("65536"), "{}", r.body);
    // A huge announced length with a few bytes: refused at once, nothing allocated for it.
    let head = "PUT /vm/config HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n{";
    assert_eq!(status_of(&raw(t.server.path(), head.as_bytes())), 413);
    // A chunked body is cut off at the limit.
    let mut chunked = b"PUT /vm/config HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..20 {
        chunked.extend_from_slice(format!("1000\r\n{}\r\n", "x".repeat(0x1000)).as_bytes());
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    assert_eq!(status_of(&raw(t.server.path(), &chunked)), 413);
    assert_eq!(t.client.get("/vm").unwrap().status, 200);
}

#[test]
fn a_body_that_is_not_json_is_415() {
    let t = start();
    let req = "PUT /vm/config HTTP/1.1\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\n{}";
    let reply = raw(t.server.path(), req.as_bytes());
    assert_eq!(status_of(&reply), 415, "{reply}");
    assert!(
        reply.contains("application/json, not `text/plain`"),
        "{reply}"
    );
}

#[test]
fn malformed_http_is_refused_with_its_status() {
    let t = start();
    let path = t.server.path();
    let cases: &[(&str, u16)] = &[
        ("GARBAGE\r\n\r\n", 400),
        ("GET /vm HTTP/2.0\r\n\r\n", 505),
        ("GET /vm HTTP/1.1\r\nBad Header\r\n\r\n", 400),
        (
            "PUT /vm/config HTTP/1.1\r\nContent-Length: ten\r\n\r\n",
            400,
        ),
        (
            "PUT /vm/config HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
            400,
        ),
        (
            "PUT /vm/config HTTP/1.1\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n",
            400,
        ),
        (
            "PUT /vm/config HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
            400,
        ),
        (
            "PUT /vm/config HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            400,
        ),
        (
            "PUT /vm/config HTTP/1.1\r\nContent-Length: 10\r\n\r\n{}",
            400,
        ),
    ];
    for &(request, status) in cases {
        let reply = raw(path, request.as_bytes());
        assert_eq!(status_of(&reply), status, "{request:?} → {reply}");
    }
    let many: String = (0..70).map(|i| format!("X-{i}: y\r\n")).collect();
    assert_eq!(
        status_of(&raw(
            path,
            format!("GET /vm HTTP/1.1\r\n{many}\r\n").as_bytes()
        )),
        431
    );
    let long = format!("GET /vm HTTP/1.1\r\nX: {}\r\n\r\n", "y".repeat(10_000));
    assert_eq!(status_of(&raw(path, long.as_bytes())), 431);
    // Binary noise and an abrupt close get no reply and harm nothing.
    raw(path, &[0, 159, 146, 150, b'\r', b'\n', b'\r', b'\n']);
    raw(path, b"GET /vm HT");
    assert_eq!(t.client.get("/vm").unwrap().status, 200);
}
