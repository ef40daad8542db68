//! The HTTP/1.1 framing the server and the client share: reading a message head and a body under
//! a deadline and a size cap, chunked bodies, and the date a response carries.
//!
//! Every read is bounded twice: in bytes (a peer cannot make us buffer more than the cap) and in
//! time (a peer that sends slowly, or not at all, runs into the deadline).

use std::io::{self, BufRead, Read};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The longest line in a chunked body's framing (a chunk size with extensions, or a trailer).
const MAX_CHUNK_LINE: usize = 4096;

/// Why a message could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReadError {
    /// The peer was too slow: the deadline passed.
    #[error("Timed out")]
    TimedOut,
    /// The peer closed the connection before the message ended.
    #[error("The connection closed before the message ended")]
    Closed,
    /// The head or the body is larger than the cap.
    #[error("Larger than {0} bytes")]
    TooLarge(usize),
    /// The framing is not HTTP.
    #[error("{0}")]
    Malformed(&'static str),
    /// The socket failed.
    #[error("Socket error")]
    Io(#[source] io::Error),
}

impl From<io::Error> for ReadError {
    fn from(e: io::Error) -> Self {
        match e.kind() {
            // SO_RCVTIMEO expiring reads as EAGAIN.
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ReadError::TimedOut,
            io::ErrorKind::UnexpectedEof => ReadError::Closed,
            _ => ReadError::Io(e),
        }
    }
}

/// A Unix stream whose reads all end by one deadline: each read waits at most for what is left.
pub(crate) struct DeadlineReader<'a> {
    stream: &'a UnixStream,
    deadline: Instant,
}

impl<'a> DeadlineReader<'a> {
    /// Reads from `stream` until `deadline`.
    pub(crate) fn new(stream: &'a UnixStream, deadline: Instant) -> Self {
        Self { stream, deadline }
    }
}

impl Read for DeadlineReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        // A zero timeout would mean "no timeout": the check above keeps `left` positive.
        self.stream
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))?;
        let mut stream = self.stream;
        stream.read(buf)
    }
}

/// Reads a message head: everything up to and including the empty line, at most `cap` bytes.
/// Bytes after the head stay in `reader`.
pub(crate) fn read_head(reader: &mut impl BufRead, cap: usize) -> Result<Vec<u8>, ReadError> {
    let mut head = Vec::with_capacity(512);
    loop {
        let room = cap.saturating_sub(head.len());
        if room == 0 {
            return Err(ReadError::TooLarge(cap));
        }
        let n = Read::take(&mut *reader, room as u64).read_until(b'\n', &mut head)?;
        if n == 0 {
            return Err(ReadError::Closed);
        }
        if !head.ends_with(b"\n") {
            // `take` stopped the line: the head does not fit.
            continue;
        }
        // The head ends with an empty line; empty lines before the start line do not count.
        let start = head
            .iter()
            .position(|&b| b != b'\r' && b != b'\n')
            .unwrap_or(head.len());
        let rest = &head[start..];
        if rest.ends_with(b"\n\r\n") || rest.ends_with(b"\n\n") {
            return Ok(head);
        }
    }
}

/// Reads a body of `len` bytes (from Content-Length), which the caller has checked is at most
/// its cap.
pub(crate) fn read_sized(reader: &mut impl Read, len: usize) -> Result<Vec<u8>, ReadError> {
    let mut body = Vec::with_capacity(len);
    Read::take(&mut *reader, len as u64).read_to_end(&mut body)?;
    if body.len() < len {
        return Err(ReadError::Closed);
    }
    Ok(body)
}

/// Reads a chunked body (RFC 9112 §7.1), refusing one whose data exceeds `cap` bytes before
/// reading past it. Chunk extensions and trailers are read and ignored.
pub(crate) fn read_chunked(reader: &mut impl BufRead, cap: usize) -> Result<Vec<u8>, ReadError> {
    let mut body = Vec::new();
    loop {
        let line = read_line(reader)?;
        let size = line.split(|&b| b == b';').next().unwrap_or_default();
        let size = std::str::from_utf8(size)
            .ok()
            .map(str::trim)
            .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit()))
            .and_then(|s| usize::from_str_radix(s, 16).ok())
            .ok_or(ReadError::Malformed("Bad chunk size in a chunked body"))?;
        if size == 0 {
            // Trailers, up to the empty line.
            let mut trailer_bytes = 0;
            loop {
                let line = read_line(reader)?;
                if line.is_empty() {
                    return Ok(body);
                }
                trailer_bytes += line.len();
                if trailer_bytes > MAX_CHUNK_LINE {
                    return Err(ReadError::TooLarge(MAX_CHUNK_LINE));
                }
            }
        }
        if size > cap.saturating_sub(body.len()) {
            return Err(ReadError::TooLarge(cap));
        }
        let before = body.len();
        Read::take(&mut *reader, size as u64).read_to_end(&mut body)?;
        if body.len() - before < size {
            return Err(ReadError::Closed);
        }
        if !read_line(reader)?.is_empty() {
            return Err(ReadError::Malformed("A chunk is longer than its size"));
        }
    }
}

/// Reads one CRLF- (or LF-) terminated line of chunk framing, without its terminator.
fn read_line(reader: &mut impl BufRead) -> Result<Vec<u8>, ReadError> {
    let mut line = Vec::new();
    Read::take(&mut *reader, MAX_CHUNK_LINE as u64 + 2).read_until(b'\n', &mut line)?;
    if !line.ends_with(b"\n") {
        return Err(if line.len() > MAX_CHUNK_LINE {
            ReadError::TooLarge(MAX_CHUNK_LINE)
        } else {
            ReadError::Closed
        });
    }
    line.pop();
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    Ok(line)
}

/// Writes all of `bytes` to `stream`. A peer that has gone yields EPIPE, never SIGPIPE, whatever
/// the process does with that signal.
pub(crate) fn send_all(stream: &UnixStream, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        // SAFETY: the pointer and length describe `bytes`, which outlives the call; the
        // descriptor belongs to `stream`, which is open.
        let n = unsafe {
            libc::send(
                stream.as_raw_fd(),
                bytes.as_ptr().cast(),
                bytes.len(),
                libc::MSG_NOSIGNAL,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        // `send` wrote `n` bytes, at most `bytes.len()`.
        bytes = bytes.get(n as usize..).unwrap_or_default();
    }
    Ok(())
}

/// Finds a header's value by name (case-insensitively), as text.
pub(crate) fn header<'h>(headers: &'h [httparse::Header<'_>], name: &str) -> Option<&'h str> {
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| std::str::from_utf8(h.value).unwrap_or("").trim())
}

/// How a message says its body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// No body.
    None,
    /// Content-Length bytes.
    Sized(u64),
    /// Transfer-Encoding: chunked.
    Chunked,
}

/// Reads the body framing from the headers, refusing the ambiguous cases that lead to request
/// smuggling: both headers, several different lengths, or a transfer coding other than chunked.
pub(crate) fn framing(headers: &[httparse::Header<'_>]) -> Result<Framing, &'static str> {
    let mut length = None;
    for h in headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("content-length"))
    {
        let value = std::str::from_utf8(h.value).map(str::trim).unwrap_or("");
        if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
            return Err("Content-Length is not a number");
        }
        // More digits than u64 holds is larger than any cap: saturate, the caller refuses it.
        let n = value.parse::<u64>().unwrap_or(u64::MAX);
        if length.is_some_and(|l| l != n) {
            return Err("Content-Length is given twice, with different values");
        }
        length = Some(n);
    }
    let chunked = match header(headers, "transfer-encoding") {
        None => false,
        Some(te) if te.eq_ignore_ascii_case("chunked") => true,
        Some(_) => return Err("Only the chunked Transfer-Encoding is supported"),
    };
    match (length, chunked) {
        (Some(_), true) => Err("Content-Length and Transfer-Encoding cannot both be given"),
        (Some(n), false) => Ok(Framing::Sized(n)),
        (None, true) => Ok(Framing::Chunked),
        (None, false) => Ok(Framing::None),
    }
}

/// The IMF-fixdate of `time` ("Sun, 06 Nov 1994 08:49:37 GMT"), for the Date header.
pub(crate) fn http_date(time: SystemTime) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = time
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = secs / 86_400;
    let (h, m, s) = (secs % 86_400 / 3600, secs % 3600 / 60, secs % 60);
    // Howard Hinnant's civil_from_days, for days since 1970-01-01 (never negative here).
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!(
        "{}, {day:02} {} {year} {h:02}:{m:02}:{s:02} GMT",
        DAYS[(days % 7) as usize],
        MONTHS[(month - 1) as usize]
    )
}

/// The reason phrase of the status codes popek sends.
pub(crate) fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    #[test]
    fn chunked_bodies_are_joined_and_capped() {
        let text = b"4;ext=1\r\nWiki\r\n5\r\npedia\r\n0\r\nX-Trailer: 1\r\n\r\nrest";
        let mut r = Cursor::new(&text[..]);
        assert_eq!(read_chunked(&mut r, 64).unwrap(), b"Wikipedia");
        let mut r = Cursor::new(&text[..]);
        assert!(matches!(
            read_chunked(&mut r, 8),
            Err(ReadError::TooLarge(8))
        ));
        let mut r = Cursor::new(&b"zz\r\n"[..]);
        assert!(matches!(
            read_chunked(&mut r, 8),
            Err(ReadError::Malformed(_))
        ));
        let mut r = Cursor::new(&b"ffffffffffffffffffffffff\r\n"[..]);
        assert!(matches!(
            read_chunked(&mut r, 8),
            Err(ReadError::Malformed(_))
        ));
    }

    #[test]
    fn a_head_ends_at_the_empty_line_and_is_capped() {
        let mut r = Cursor::new(&b"\r\nGET / HTTP/1.1\r\nA: b\r\n\r\nbody"[..]);
        assert_eq!(
            read_head(&mut r, 100).unwrap(),
            b"\r\nGET / HTTP/1.1\r\nA: b\r\n\r\n"
        );
        let mut rest = String::new();
        r.read_to_string(&mut rest).unwrap();
        assert_eq!(rest, "body");
        let mut r = Cursor::new(&b"GET / HTTP/1.1\r\nA: bbbbbbbbbbbbbbbbbbbbbbbbbbb\r\n\r\n"[..]);
        assert!(matches!(
            read_head(&mut r, 20),
            Err(ReadError::TooLarge(20))
        ));
    }

    #[test]
    fn random_framing_is_refused_never_a_panic() {
        let alphabet = b"0123456789abcdefxyz;= \r\n\r\n";
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        for _ in 0..5000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let len = (seed % 40) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|i| alphabet[((seed >> (i % 60)) as usize + i * 7) % alphabet.len()])
                .collect();
            let _ = read_chunked(&mut Cursor::new(&bytes[..]), 16);
            let _ = read_head(&mut Cursor::new(&bytes[..]), 16);
        }
    }

    #[test]
    fn dates_are_imf_fixdates() {
        let t = UNIX_EPOCH + Duration::from_secs(784_111_777);
        assert_eq!(http_date(t), "Sun, 06 Nov 1994 08:49:37 GMT");
        let t = UNIX_EPOCH + Duration::from_secs(951_782_400); // a leap day
        assert_eq!(http_date(t), "Tue, 29 Feb 2000 00:00:00 GMT");
    }
}
