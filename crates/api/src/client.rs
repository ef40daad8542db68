//! A minimal blocking HTTP/1.1 client for the API socket, for `popek ctl` and the tests.
//!
//! It is hand-written on purpose: the maintained HTTP clients either need an async runtime
//! (hyper, reqwest) or do not speak Unix sockets (ureq, minreq, attohttpc), and one request per
//! connection needs little more than writing the request and reading a Content-Length or
//! chunked body, which `http` already does for the server.

use std::io::{self, BufReader, Read};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use api_types::ApiError;
use serde::de::DeserializeOwned;

use crate::http::{self, DeadlineReader, Framing, ReadError};

/// The largest reply head the client reads.
const MAX_HEAD: usize = 64 * 1024;
/// The largest reply body the client reads.
const MAX_BODY: usize = 16 * 1024 * 1024;

/// Why a request got no reply.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing answers on the socket.
    #[error("Cannot connect to the API socket {path}: is the VMM running?")]
    Connect {
        /// The socket's path.
        path: PathBuf,
        /// The OS's reason.
        #[source]
        source: io::Error,
    },
    /// The path has characters a request line cannot carry.
    #[error("Invalid request path {0:?}: it must start with '/' and have no spaces")]
    InvalidPath(String),
    /// The reply did not come in time.
    #[error("The API did not reply within {} ms", .0.as_millis())]
    TimedOut(Duration),
    /// The server closed the connection before the reply ended.
    #[error("The API closed the connection before replying")]
    Closed,
    /// The reply is too large to be one of the API's.
    #[error("The API's reply is larger than {0} bytes")]
    TooLarge(usize),
    /// The reply is not HTTP.
    #[error("The API's reply is not HTTP: {0}")]
    Malformed(String),
    /// The socket failed.
    #[error("Cannot talk to the API socket")]
    Io(#[source] io::Error),
}

/// A reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The HTTP status code.
    pub status: u16,
    /// The headers, in order, as sent.
    pub headers: Vec<(String, String)>,
    /// The body (invalid UTF-8 replaced).
    pub body: String,
}

impl Response {
    /// The first header called `name` (case-insensitively).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Whether the status is 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The body as JSON of type `T`.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(&self.body)
    }

    /// The body as an error reply, if it is one.
    pub fn api_error(&self) -> Option<ApiError> {
        if self.is_success() {
            None
        } else {
            self.json().ok()
        }
    }
}

/// A client of one API socket. Each request uses a connection of its own.
#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
    timeout: Duration,
}

impl Client {
    /// A client of the API at `socket`, which waits 30 s at most for a reply.
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
            timeout: Duration::from_secs(30),
        }
    }

    /// Sets how long a request may take in all (sending it and reading the reply).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// `GET path`.
    pub fn get(&self, path: &str) -> Result<Response, ClientError> {
        self.request("GET", path, None)
    }

    /// `PUT path` with a JSON body.
    pub fn put(&self, path: &str, json: &str) -> Result<Response, ClientError> {
        self.request("PUT", path, Some(json))
    }

    /// `PATCH path` with a JSON body.
    pub fn patch(&self, path: &str, json: &str) -> Result<Response, ClientError> {
        self.request("PATCH", path, Some(json))
    }

    /// `POST path` with a JSON body.
    pub fn post(&self, path: &str, json: &str) -> Result<Response, ClientError> {
        self.request("POST", path, Some(json))
    }

    /// Sends `method path` with an optional JSON body and reads the reply.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        json: Option<&str>,
    ) -> Result<Response, ClientError> {
        let printable = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic());
        if !path.starts_with('/') || !printable(path) {
            return Err(ClientError::InvalidPath(path.to_owned()));
        }
        if !printable(method) {
            return Err(ClientError::Malformed(format!("invalid method {method:?}")));
        }
        let deadline = Instant::now() + self.timeout;
        let stream = UnixStream::connect(&self.socket).map_err(|source| ClientError::Connect {
            path: self.socket.clone(),
            source,
        })?;
        stream
            .set_write_timeout(Some(self.timeout))
            .map_err(ClientError::Io)?;

        let mut request = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: popek\r\n\
             Accept: application/json\r\nConnection: close\r\n"
        );
        if let Some(json) = json {
            request.push_str("Content-Type: application/json\r\n");
            request.push_str(&format!("Content-Length: {}\r\n", json.len()));
        }
        request.push_str("\r\n");
        let mut bytes = request.into_bytes();
        bytes.extend_from_slice(json.unwrap_or_default().as_bytes());
        match http::send_all(&stream, &bytes) {
            Ok(()) => {}
            // The server may refuse before reading everything (413) and close: its reply is
            // still there to read.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
                ) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return Err(ClientError::TimedOut(self.timeout));
            }
            Err(e) => return Err(ClientError::Io(e)),
        }
        let mut reader = BufReader::new(DeadlineReader::new(&stream, deadline));
        read_response(&mut reader, method == "HEAD").map_err(|e| match e {
            ReadError::TimedOut => ClientError::TimedOut(self.timeout),
            ReadError::Closed => ClientError::Closed,
            ReadError::TooLarge(n) => ClientError::TooLarge(n),
            ReadError::Malformed(what) => ClientError::Malformed(what.to_owned()),
            ReadError::Io(e) => ClientError::Io(e),
        })
    }
}

fn read_response(
    reader: &mut BufReader<DeadlineReader<'_>>,
    head_only: bool,
) -> Result<Response, ReadError> {
    loop {
        let head = http::read_head(reader, MAX_HEAD)?;
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut parsed = httparse::Response::new(&mut headers);
        match parsed.parse(&head) {
            Ok(httparse::Status::Complete(_)) => {}
            Ok(httparse::Status::Partial) | Err(_) => {
                return Err(ReadError::Malformed("bad status line or headers"));
            }
        }
        let status = parsed.code.unwrap_or(0);
        if (100..200).contains(&status) {
            // An interim reply (100 Continue): the real one follows.
            continue;
        }
        let framing = http::framing(parsed.headers).map_err(ReadError::Malformed)?;
        let body = if head_only || status == 204 || status == 304 {
            Vec::new()
        } else {
            match framing {
                Framing::Sized(n) if n > MAX_BODY as u64 => {
                    return Err(ReadError::TooLarge(MAX_BODY));
                }
                // Within MAX_BODY, by the arm above.
                Framing::Sized(n) => http::read_sized(reader, n as usize)?,
                Framing::Chunked => http::read_chunked(reader, MAX_BODY)?,
                Framing::None => {
                    // No length: the body runs until the server closes.
                    let mut body = Vec::new();
                    Read::take(&mut *reader, MAX_BODY as u64 + 1).read_to_end(&mut body)?;
                    if body.len() > MAX_BODY {
                        return Err(ReadError::TooLarge(MAX_BODY));
                    }
                    body
                }
            }
        };
        let headers = parsed
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_owned(),
                    String::from_utf8_lossy(h.value).trim().to_owned(),
                )
            })
            .collect();
        return Ok(Response {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        });
    }
}
