//! The HTTP/1.1 server on a Unix socket.
//!
//! One thread waits for connections; each connection is served on a short-lived thread of its
//! own, one request per connection (`Connection: close`), so a slow client delays only itself.
//! Every client has [`ServeOptions::request_timeout`] to send its whole request; at most
//! [`ServeOptions::max_connections`] are served at once, and more are refused with 503 on the
//! spot. Heads are capped at 8 KiB and bodies at [`MAX_BODY`], checked before reading.
//!
//! It is written on `std` and `httparse` rather than on `tiny_http`: `tiny_http` 0.12 allocates
//! the unread rest of a body as one buffer sized by the client's Content-Length when a request is
//! dropped (an abort on `Content-Length: 99999999999999`, tiny-http issue #252 / PR #290), has no
//! read timeouts and no cap on header lines, and keeps five threads for itself.

use std::io::{self, BufReader};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crate::backend::Backend;
use crate::http::{self, DeadlineReader, Framing, ReadError};
use crate::routes::{self, MAX_BODY, Reply};

/// The largest request head (request line and headers) the server reads.
const MAX_HEAD: usize = 8 * 1024;
/// The most headers a request may have.
const MAX_HEADERS: usize = 64;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Something that is not a socket is in the way.
    #[error("{0} exists and is not a socket: remove it or choose another API socket path")]
    NotASocket(PathBuf),
    /// A live server (another VMM) answers on the path.
    #[error("Another process serves the API socket {0}: choose another path")]
    InUse(PathBuf),
    /// The path could not be inspected, cleared, bound or restricted.
    #[error("Cannot {action} the API socket {path}")]
    Socket {
        /// What failed: "inspect", "remove the stale", "listen on", "restrict".
        action: &'static str,
        /// The socket's path.
        path: PathBuf,
        /// The OS's reason.
        #[source]
        source: io::Error,
    },
    /// The accept thread could not be started.
    #[error("Cannot start the API thread")]
    Thread(#[source] io::Error),
}

/// How the server treats its clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServeOptions {
    /// How long a client has to send its whole request, and then to take the reply.
    pub request_timeout: Duration,
    /// Connections served at once; more are answered 503 at once.
    pub max_connections: usize,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(10),
            max_connections: 16,
        }
    }
}

/// A running API server. [`ApiServer::shutdown`] or dropping it stops accepting connections and
/// removes the socket file; requests already being served finish on their own threads.
#[derive(Debug)]
pub struct ApiServer {
    path: PathBuf,
    /// The device and inode of the socket bound, so that shutdown removes only our own file.
    identity: (u64, u64),
    /// Dropping it wakes the accept thread, which then returns.
    wake: Option<UnixStream>,
    thread: Option<JoinHandle<()>>,
}

impl ApiServer {
    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops the server and removes its socket file.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        drop(self.wake.take());
        if let Some(thread) = self.thread.take() {
            // The accept thread catches nothing that could panic; a join error has no use.
            let _ = thread.join();
        }
        let ours = std::fs::symlink_metadata(&self.path)
            .is_ok_and(|m| m.file_type().is_socket() && (m.dev(), m.ino()) == self.identity);
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Serves the API on the Unix socket `socket` with the default [`ServeOptions`].
///
/// A stale socket file (one no process answers on) is replaced; anything else at the path is
/// refused. The socket is made accessible to its owner only.
pub fn serve(socket: &Path, backend: Arc<dyn Backend>) -> Result<ApiServer, ServeError> {
    serve_with(socket, backend, ServeOptions::default())
}

/// [`serve`] with explicit options.
pub fn serve_with(
    socket: &Path,
    backend: Arc<dyn Backend>,
    options: ServeOptions,
) -> Result<ApiServer, ServeError> {
    let path = socket.to_path_buf();
    let err = |action, source| ServeError::Socket {
        action,
        path: path.clone(),
        source,
    };
    clear_stale(socket)?;
    let listener = UnixListener::bind(socket).map_err(|e| err("listen on", e))?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| err("restrict", e))?;
    let meta = std::fs::metadata(socket).map_err(|e| err("inspect", e))?;
    // A pending connection may vanish between poll and accept: accept must not block then.
    listener
        .set_nonblocking(true)
        .map_err(|e| err("listen on", e))?;
    let (wake, wake_rx) = UnixStream::pair().map_err(ServeError::Thread)?;
    let mut server = ApiServer {
        path,
        identity: (meta.dev(), meta.ino()),
        wake: Some(wake),
        thread: None,
    };
    let thread = std::thread::Builder::new()
        .name("api".into())
        .stack_size(128 * 1024)
        .spawn(move || accept_loop(listener, wake_rx, backend, options))
        // On an error, dropping `server` removes the socket file.
        .map_err(ServeError::Thread)?;
    server.thread = Some(thread);
    Ok(server)
}

/// Removes a socket file no one answers on; refuses a live one or a file of another type.
fn clear_stale(socket: &Path) -> Result<(), ServeError> {
    let path = || socket.to_path_buf();
    match std::fs::symlink_metadata(socket) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(ServeError::Socket {
                action: "inspect",
                path: path(),
                source,
            });
        }
        Ok(m) if !m.file_type().is_socket() => return Err(ServeError::NotASocket(path())),
        Ok(_) => {}
    }
    match UnixStream::connect(socket) {
        Ok(_) => Err(ServeError::InUse(path())),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => std::fs::remove_file(socket)
            .map_err(|source| ServeError::Socket {
                action: "remove the stale",
                path: path(),
                source,
            }),
        Err(source) => Err(ServeError::Socket {
            action: "inspect",
            path: path(),
            source,
        }),
    }
}

/// Counts a connection thread for as long as it lives.
struct Active(Arc<AtomicUsize>);

impl Drop for Active {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

fn accept_loop(
    listener: UnixListener,
    wake: UnixStream,
    backend: Arc<dyn Backend>,
    options: ServeOptions,
) {
    let active = Arc::new(AtomicUsize::new(0));
    loop {
        match wait(&listener, &wake) {
            Ok(true) => return,
            Ok(false) => {}
            Err(e) => {
                tracing::warn!("API socket: poll failed: {e}");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        }
        let stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::Interrupted
                        | io::ErrorKind::ConnectionAborted
                ) =>
            {
                continue;
            }
            Err(e) => {
                // Out of file descriptors, say: the connection stays pending, so back off
                // rather than spin on it.
                tracing::warn!("API socket: accept failed: {e}");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        if active.load(Ordering::Acquire) >= options.max_connections {
            let _ = stream.set_write_timeout(Some(Duration::from_millis(100)));
            let reply = Reply::message(503, "The API is serving too many requests: retry");
            write_reply(&stream, &reply);
            continue;
        }
        active.fetch_add(1, Ordering::AcqRel);
        let guard = Active(active.clone());
        let backend = backend.clone();
        let spawned = std::thread::Builder::new()
            .name("api-request".into())
            .spawn(move || {
                let _guard = guard;
                serve_connection(&stream, &*backend, options.request_timeout);
            });
        if let Err(e) = spawned {
            // The closure, with the stream and the guard, is dropped: the client sees EOF.
            tracing::warn!("API socket: cannot start a request thread: {e}");
        }
    }
}

/// Waits until a connection is pending (false) or the server is to stop (true).
fn wait(listener: &UnixListener, wake: &UnixStream) -> io::Result<bool> {
    let mut fds = [
        libc::pollfd {
            fd: listener.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: wake.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    loop {
        // SAFETY: `fds` is an array of two initialised pollfds that outlives the call, and the
        // length passed is its length; both descriptors belong to live objects.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if fds[1].revents != 0 {
            return Ok(true);
        }
        if fds[0].revents != 0 {
            return Ok(false);
        }
    }
}

/// Reads one request from `stream`, carries it out and replies.
fn serve_connection(stream: &UnixStream, backend: &dyn Backend, timeout: Duration) {
    let _ = stream.set_write_timeout(Some(timeout));
    let deadline = Instant::now() + timeout;
    let mut reader = BufReader::with_capacity(4096, DeadlineReader::new(stream, deadline));
    if let Some(reply) = handle(&mut reader, stream, backend, timeout) {
        write_reply(stream, &reply);
    }
}

/// Why reading failed, as the reply owed to the client (none if it has gone).
fn read_failure(e: ReadError, in_body: bool, timeout: Duration) -> Option<Reply> {
    match e {
        ReadError::TimedOut => Some(Reply::message(
            408,
            format!(
                "The request did not arrive within {} ms",
                timeout.as_millis()
            ),
        )),
        ReadError::Closed if in_body => Some(Reply::message(
            400,
            "The body ended before its announced length",
        )),
        ReadError::Closed | ReadError::Io(_) => None,
        ReadError::TooLarge(_) if in_body => Some(Reply::message(
            413,
            format!("The body is larger than {MAX_BODY} bytes"),
        )),
        ReadError::TooLarge(_) => Some(Reply::message(
            431,
            format!("The request head is larger than {MAX_HEAD} bytes"),
        )),
        ReadError::Malformed(what) => Some(Reply::message(400, what)),
    }
}

fn handle(
    reader: &mut BufReader<DeadlineReader<'_>>,
    stream: &UnixStream,
    backend: &dyn Backend,
    timeout: Duration,
) -> Option<Reply> {
    let head = match http::read_head(reader, MAX_HEAD) {
        Ok(head) => head,
        Err(e) => return read_failure(e, false, timeout),
    };
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(&head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => {
            return Some(Reply::message(
                400,
                "Malformed HTTP request: the head is incomplete",
            ));
        }
        Err(httparse::Error::TooManyHeaders) => {
            return Some(Reply::message(
                431,
                format!("More than {MAX_HEADERS} headers"),
            ));
        }
        Err(httparse::Error::Version) => {
            return Some(Reply::message(
                505,
                "Only HTTP/1.0 and HTTP/1.1 are supported",
            ));
        }
        Err(e) => return Some(Reply::message(400, format!("Malformed HTTP request: {e}"))),
    }
    let (method, target) = (request.method.unwrap_or(""), request.path.unwrap_or(""));
    tracing::debug!(method, target, "API request");
    let endpoint = match routes::resolve(method, target) {
        Ok(endpoint) => endpoint,
        Err(reply) => return Some(reply),
    };
    // A body sent to an endpoint that takes none is left unread: the connection closes anyway.
    let mut body = Vec::new();
    if endpoint.body().is_some() {
        let headers = &*request.headers;
        if let Err(reply) = routes::check_content_type(http::header(headers, "content-type")) {
            return Some(reply);
        }
        let framing = match http::framing(headers) {
            Ok(framing) => framing,
            Err(what) => return Some(Reply::message(400, what)),
        };
        if matches!(framing, Framing::Sized(n) if n > MAX_BODY as u64) {
            return Some(Reply::message(
                413,
                format!("The body is larger than {MAX_BODY} bytes"),
            ));
        }
        let continues =
            http::header(headers, "expect").is_some_and(|e| e.eq_ignore_ascii_case("100-continue"));
        if continues && framing != Framing::None {
            let _ = http::send_all(stream, b"HTTP/1.1 100 Continue\r\n\r\n");
        }
        let read = match framing {
            Framing::None => Ok(Vec::new()),
            // The check above keeps `n` within MAX_BODY.
            Framing::Sized(n) => http::read_sized(reader, n as usize),
            Framing::Chunked => http::read_chunked(reader, MAX_BODY),
        };
        body = match read {
            Ok(body) => body,
            Err(e) => return read_failure(e, true, timeout),
        };
    }
    // Under panic=unwind (tests, debug builds) a panicking backend costs one 500, not the
    // connection thread's silence.
    let reply = catch_unwind(AssertUnwindSafe(|| routes::call(backend, endpoint, &body)))
        .unwrap_or_else(|_| Reply::message(500, "The VMM failed on this request: see its log"));
    tracing::debug!(method, target, status = reply.status, "API reply");
    Some(reply)
}

fn write_reply(stream: &UnixStream, reply: &Reply) {
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nDate: {}\r\nServer: popek\r\nConnection: close\r\n",
        reply.status,
        http::reason(reply.status),
        http::http_date(SystemTime::now()),
    );
    if let Some(allow) = &reply.allow {
        out.push_str(&format!("Allow: {allow}\r\n"));
    }
    if reply.status != 204 {
        if let Some(content_type) = reply.content_type {
            out.push_str(&format!("Content-Type: {content_type}\r\n"));
        }
        out.push_str(&format!("Content-Length: {}\r\n", reply.body.len()));
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(&reply.body);
    // The client may be gone: nothing more to do then.
    let _ = http::send_all(stream, &bytes);
    let _ = stream.shutdown(std::net::Shutdown::Write);
}
