//! The routes: which resource a request names, what body it takes, and how the backend's answer
//! becomes a reply. Nothing here knows sockets; `server` does the HTTP around it.

use api_types::{
    ActionRequest, ApiError, DiskConfig, NetConfig, RestoreRequest, SnapshotRequest, VmConfig,
    VmConfigPatch,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::backend::{Backend, BackendError};
use crate::metrics;

/// Every route the server serves, as (method, path template). `{index}` stands for a decimal
/// index. `docs/api/openapi.json` describes the same routes; a test keeps the two in step.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/vm"),
    ("PUT", "/vm/config"),
    ("PATCH", "/vm/config"),
    ("PUT", "/vm/config/disks/{index}"),
    ("PUT", "/vm/config/nets/{index}"),
    ("POST", "/vm/actions"),
    ("GET", "/vm/counters"),
    ("GET", "/metrics"),
    ("GET", "/vm/events"),
    ("POST", "/vm/snapshot"),
    ("POST", "/vm/restore"),
];

/// The largest request body the server reads, in bytes; larger ones get 413.
pub const MAX_BODY: usize = 64 * 1024;

/// A reply before its HTTP framing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) content_type: Option<&'static str>,
    pub(crate) body: Vec<u8>,
    /// The Allow header of a 405.
    pub(crate) allow: Option<String>,
}

impl Reply {
    fn json<T: Serialize>(status: u16, value: &T) -> Reply {
        match serde_json::to_vec(value) {
            Ok(body) => Reply {
                status,
                content_type: Some("application/json"),
                body,
                allow: None,
            },
            Err(e) => Reply::message(500, format!("Cannot encode the reply: {e}")),
        }
    }

    fn no_content() -> Reply {
        Reply {
            status: 204,
            content_type: None,
            body: Vec::new(),
            allow: None,
        }
    }

    /// An [`ApiError`] reply.
    pub(crate) fn error(status: u16, error: ApiError) -> Reply {
        Reply::json(status, &error)
    }

    /// An [`ApiError`] reply with only a message.
    pub(crate) fn message(status: u16, message: impl Into<String>) -> Reply {
        Reply::error(
            status,
            ApiError {
                message: message.into(),
                field: None,
                state: None,
            },
        )
    }
}

/// What a request asks for, once its method and path are known to name a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Endpoint {
    GetVm,
    PutConfig,
    PatchConfig,
    PutDisk(usize),
    PutNet(usize),
    PostAction,
    GetCounters,
    GetMetrics,
    GetEvents { since: u64 },
    PostSnapshot,
    PostRestore,
}

impl Endpoint {
    /// The type of the JSON body the endpoint takes, if it takes one.
    pub(crate) fn body(self) -> Option<&'static str> {
        match self {
            Endpoint::PutConfig => Some("VmConfig"),
            Endpoint::PatchConfig => Some("VmConfigPatch"),
            Endpoint::PutDisk(_) => Some("DiskConfig"),
            Endpoint::PutNet(_) => Some("NetConfig"),
            Endpoint::PostAction => Some("ActionRequest"),
            Endpoint::PostSnapshot => Some("SnapshotRequest"),
            Endpoint::PostRestore => Some("RestoreRequest"),
            Endpoint::GetVm
            | Endpoint::GetCounters
            | Endpoint::GetMetrics
            | Endpoint::GetEvents { .. } => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Endpoint::GetVm => "GET /vm",
            Endpoint::PutConfig => "PUT /vm/config",
            Endpoint::PatchConfig => "PATCH /vm/config",
            Endpoint::PutDisk(_) => "PUT /vm/config/disks/{index}",
            Endpoint::PutNet(_) => "PUT /vm/config/nets/{index}",
            Endpoint::PostAction => "POST /vm/actions",
            Endpoint::GetCounters => "GET /vm/counters",
            Endpoint::GetMetrics => "GET /metrics",
            Endpoint::GetEvents { .. } => "GET /vm/events",
            Endpoint::PostSnapshot => "POST /vm/snapshot",
            Endpoint::PostRestore => "POST /vm/restore",
        }
    }
}

/// Finds the endpoint `method` and `target` (path and query) name: 404 for an unknown path,
/// 405 for a method the path does not take, 400 for a bad query.
pub(crate) fn resolve(method: &str, target: &str) -> Result<Endpoint, Reply> {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let Some((template, index)) = ROUTES
        .iter()
        .find_map(|&(_, t)| matches(t, path).map(|i| (t, i)))
    else {
        return Err(Reply::message(
            404,
            format!("No resource at {path}. The API has: {}", route_list()),
        ));
    };
    let allowed: Vec<&str> = ROUTES
        .iter()
        .filter(|&&(_, t)| t == template)
        .map(|&(m, _)| m)
        .collect();
    if !allowed.contains(&method) {
        let allow = allowed.join(", ");
        let mut reply = Reply::message(
            405,
            format!(
                "{method} is not allowed on {template}: it takes {}",
                allowed.join(" or ")
            ),
        );
        reply.allow = Some(allow);
        return Err(reply);
    }
    let index = index.unwrap_or(0);
    let endpoint = match (method, template) {
        ("GET", "/vm") => Endpoint::GetVm,
        ("PUT", "/vm/config") => Endpoint::PutConfig,
        ("PATCH", "/vm/config") => Endpoint::PatchConfig,
        ("PUT", "/vm/config/disks/{index}") => Endpoint::PutDisk(index),
        ("PUT", "/vm/config/nets/{index}") => Endpoint::PutNet(index),
        ("POST", "/vm/actions") => Endpoint::PostAction,
        ("GET", "/vm/counters") => Endpoint::GetCounters,
        ("GET", "/metrics") => Endpoint::GetMetrics,
        ("GET", "/vm/events") => return events_query(query),
        ("POST", "/vm/snapshot") => Endpoint::PostSnapshot,
        ("POST", "/vm/restore") => Endpoint::PostRestore,
        _ => {
            return Err(Reply::message(
                500,
                format!("No handler for {method} {template}"),
            ));
        }
    };
    if !query.is_empty() {
        return Err(Reply::message(
            400,
            format!("{} takes no query parameters", endpoint.name()),
        ));
    }
    Ok(endpoint)
}

/// Whether `path` fits `template`; `Some(index)` if it does (the `{index}` segment's value).
fn matches(template: &str, path: &str) -> Option<Option<usize>> {
    let mut index = None;
    let mut t = template.split('/');
    let mut p = path.split('/');
    loop {
        match (t.next(), p.next()) {
            (None, None) => return Some(index),
            (Some("{index}"), Some(s))
                if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) =>
            {
                index = Some(s.parse().ok()?);
            }
            (Some(a), Some(b)) if a == b => {}
            _ => return None,
        }
    }
}

fn route_list() -> String {
    ROUTES
        .iter()
        .map(|(m, t)| format!("{m} {t}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn events_query(query: &str) -> Result<Endpoint, Reply> {
    let mut since = 0;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if key != "since" {
            return Err(Reply::error(
                400,
                ApiError {
                    message: format!(
                        "Unknown query parameter `{key}`: GET /vm/events takes `since`"
                    ),
                    field: Some(key.to_owned()),
                    state: None,
                },
            ));
        }
        since = value.parse().map_err(|_| {
            Reply::error(
                400,
                ApiError {
                    message: format!("`since` must be an event sequence number, not `{value}`"),
                    field: Some("since".to_owned()),
                    state: None,
                },
            )
        })?;
    }
    Ok(Endpoint::GetEvents { since })
}

/// Refuses a body whose Content-Type is present and not JSON (415).
pub(crate) fn check_content_type(content_type: Option<&str>) -> Result<(), Reply> {
    let Some(value) = content_type else {
        return Ok(());
    };
    let media = value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if media == "application/json"
        || (media.starts_with("application/") && media.ends_with("+json"))
    {
        return Ok(());
    }
    Err(Reply::message(
        415,
        format!("The body must be application/json, not `{value}`"),
    ))
}

/// Carries out `endpoint` with the request's `body` (empty when it has none).
pub(crate) fn call(backend: &dyn Backend, endpoint: Endpoint, body: &[u8]) -> Reply {
    match endpoint {
        Endpoint::GetVm => Reply::json(200, &backend.info()),
        Endpoint::GetCounters => Reply::json(200, &backend.counters()),
        Endpoint::GetEvents { since } => Reply::json(200, &backend.events(since)),
        Endpoint::GetMetrics => Reply {
            status: 200,
            content_type: Some(metrics::CONTENT_TYPE),
            body: metrics::render(&backend.counters()).into_bytes(),
            allow: None,
        },
        Endpoint::PutConfig => with_body(endpoint, body, |c: VmConfig| backend.put_config(c)),
        Endpoint::PatchConfig => {
            with_body(endpoint, body, |p: VmConfigPatch| backend.patch_config(p))
        }
        Endpoint::PutDisk(i) => with_body(endpoint, body, |d: DiskConfig| backend.put_disk(i, d)),
        Endpoint::PutNet(i) => with_body(endpoint, body, |n: NetConfig| backend.put_net(i, n)),
        Endpoint::PostAction => {
            with_body(endpoint, body, |a: ActionRequest| backend.action(a.action))
        }
        Endpoint::PostRestore => with_body(endpoint, body, |r: RestoreRequest| backend.restore(r)),
        Endpoint::PostSnapshot => match decode::<SnapshotRequest>(endpoint, body) {
            Ok(r) => match backend.snapshot(r) {
                Ok(info) => Reply::json(200, &info),
                Err(e) => backend_error(e),
            },
            Err(reply) => reply,
        },
    }
}

fn with_body<T: DeserializeOwned>(
    endpoint: Endpoint,
    body: &[u8],
    f: impl FnOnce(T) -> Result<(), BackendError>,
) -> Reply {
    match decode(endpoint, body) {
        Ok(value) => match f(value) {
            Ok(()) => Reply::no_content(),
            Err(e) => backend_error(e),
        },
        Err(reply) => reply,
    }
}

fn backend_error(e: BackendError) -> Reply {
    match e {
        BackendError::WrongState { message, state } => Reply::error(
            409,
            ApiError {
                message,
                field: None,
                state: Some(state),
            },
        ),
        BackendError::Invalid { message, field } => Reply::error(
            400,
            ApiError {
                message,
                field,
                state: None,
            },
        ),
        BackendError::Failed(message) => Reply::message(500, message),
    }
}

/// Decodes a JSON body; a 400 that names the line and column of a syntax error, or the field
/// at fault (as a dotted path, "machine.cpus") and what was expected.
fn decode<T: DeserializeOwned>(endpoint: Endpoint, body: &[u8]) -> Result<T, Reply> {
    if body.iter().all(u8::is_ascii_whitespace) {
        let what = endpoint.body().unwrap_or("JSON value");
        return Err(Reply::message(
            400,
            format!("{} needs a JSON body: a {what}", endpoint.name()),
        ));
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let value =
        serde_path_to_error::deserialize(&mut de).map_err(|e| Reply::error(400, json_error(&e)))?;
    // Trailing characters after the value.
    de.end()
        .map_err(|e| Reply::message(400, format!("Malformed JSON: {e}")))?;
    Ok(value)
}

fn json_error(e: &serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    let inner = e.inner();
    if inner.is_syntax() || inner.is_eof() {
        return ApiError {
            message: format!("Malformed JSON: {inner}"),
            field: None,
            state: None,
        };
    }
    // serde_path_to_error writes the root as ".".
    let path = e.path().to_string();
    let at = |name: &str| {
        if path == "." {
            name.to_owned()
        } else {
            format!("{path}.{name}")
        }
    };
    let text = inner.to_string();
    let (field, message) = if let Some(rest) = text.strip_prefix("unknown field `") {
        let (name, rest) = rest.split_once('`').unwrap_or((rest, ""));
        // The path already ends at the unknown field when serde_path_to_error saw its key.
        let field = if path.rsplit('.').next() == Some(name) {
            path.clone()
        } else {
            at(name)
        };
        let rest = rest.trim_start_matches(',').trim_start();
        (field.clone(), format!("Unknown field `{field}`: {rest}"))
    } else if let Some(rest) = text.strip_prefix("missing field `") {
        let (name, rest) = rest.split_once('`').unwrap_or((rest, ""));
        let field = at(name);
        (field.clone(), format!("Missing field `{field}`{rest}"))
    } else if path == "." {
        (String::new(), format!("Invalid body: {text}"))
    } else {
        (path.clone(), format!("Invalid `{path}`: {text}"))
    };
    ApiError {
        message,
        field: (!field.is_empty()).then_some(field),
        state: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use api_types::VmState;

    fn state_of(reply: &Reply) -> Option<VmState> {
        serde_json::from_slice::<ApiError>(&reply.body).ok()?.state
    }

    /// A backend that accepts everything.
    struct Yes;

    impl Backend for Yes {
        fn info(&self) -> api_types::VmInfo {
            let version = String::new();
            api_types::VmInfo {
                state: VmState::Created,
                config: None,
                engine: None,
                uptime_ms: None,
                last_stop: None,
                version,
            }
        }
        fn put_config(&self, _: VmConfig) -> Result<(), BackendError> {
            Ok(())
        }
        fn patch_config(&self, _: VmConfigPatch) -> Result<(), BackendError> {
            Ok(())
        }
        fn put_disk(&self, _: usize, _: DiskConfig) -> Result<(), BackendError> {
            Ok(())
        }
        fn put_net(&self, _: usize, _: NetConfig) -> Result<(), BackendError> {
            Ok(())
        }
        fn action(&self, _: api_types::Action) -> Result<(), BackendError> {
            Ok(())
        }
        fn counters(&self) -> api_types::VmCounters {
            Default::default()
        }
        fn events(&self, _: u64) -> api_types::EventList {
            api_types::EventList {
                events: Vec::new(),
                next: 0,
            }
        }
    }

    #[test]
    fn mangled_requests_get_a_client_error_never_a_panic() {
        const CONFIG: &[u8] = br#"{"machine":{"cpus":2,"memory_mib":256,"accel":"kvm"},
            "boot":{"kernel":"/k","cmdline":"console=ttyS0"},"disks":[{"path":"/d"}],
            "serial":{"mode":"file","path":"/s"},"vsock":{"cid":3,"socket":"/v"}}"#;
        let alphabet = b"{}[]\":,0123456789-.eEtrufalsn \\\n\xff/?&=%{index}";
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..3000 {
            let mut body = CONFIG.to_vec();
            for _ in 0..1 + next() % 4 {
                let at = (next() % body.len() as u64) as usize;
                let byte = alphabet[(next() % alphabet.len() as u64) as usize];
                match next() % 3 {
                    0 => body[at] = byte,
                    1 => body.insert(at, byte),
                    _ => drop(body.remove(at)),
                }
            }
            for &(method, template) in ROUTES {
                let mut target = template.replace("{index}", &(next() % 3).to_string());
                if next() % 4 == 0 {
                    let cut = (next() % target.len() as u64) as usize;
                    target.insert_str(
                        cut,
                        std::str::from_utf8(&body[..body.len().min(5)]).unwrap_or("?"),
                    );
                }
                match resolve(method, &target) {
                    Ok(endpoint) => {
                        let reply = call(&Yes, endpoint, &body);
                        assert!(matches!(reply.status, 200 | 204 | 400), "{reply:?}");
                    }
                    Err(reply) => assert!(matches!(reply.status, 400 | 404 | 405), "{reply:?}"),
                }
            }
        }
    }

    #[test]
    fn every_route_resolves_to_an_endpoint() {
        for &(method, template) in ROUTES {
            let path = template.replace("{index}", "3");
            let e = resolve(method, &path).unwrap_or_else(|r| panic!("{method} {path}: {r:?}"));
            assert_eq!(e.name().split_once(' ').unwrap().0, method);
        }
    }

    #[test]
    fn paths_match_templates_exactly() {
        assert_eq!(
            matches("/vm/config/disks/{index}", "/vm/config/disks/12"),
            Some(Some(12))
        );
        assert_eq!(
            matches("/vm/config/disks/{index}", "/vm/config/disks/"),
            None
        );
        assert_eq!(
            matches("/vm/config/disks/{index}", "/vm/config/disks/x"),
            None
        );
        assert_eq!(
            matches(
                "/vm/config/disks/{index}",
                "/vm/config/disks/99999999999999999999"
            ),
            None
        );
        assert_eq!(matches("/vm", "/vm/"), None);
        assert_eq!(matches("/vm", "/vm"), Some(None));
    }

    #[test]
    fn backend_errors_keep_their_state() {
        let r = backend_error(BackendError::WrongState {
            message: "Cannot pause".into(),
            state: VmState::Created,
        });
        assert_eq!((r.status, state_of(&r)), (409, Some(VmState::Created)));
    }

    #[test]
    fn json_media_types_are_accepted() {
        assert!(check_content_type(Some("application/json; charset=utf-8")).is_ok());
        assert!(check_content_type(Some("Application/JSON")).is_ok());
        assert!(check_content_type(Some("application/merge-patch+json")).is_ok());
        assert_eq!(
            check_content_type(Some("text/plain")).unwrap_err().status,
            415
        );
    }
}
