//! A small blocking HTTP/1.1 client for the cluster checks: one request per connection
//! (`Connection: close`), the whole exchange (connect, sending the body, reading the response to its
//! end) bounded by one timeout, so that a server that hangs shows as [`HttpError::Timeout`] after
//! exactly that long and never stalls a check. A request body is sent in 64 KiB writes and counted
//! in an optional progress counter, so that a check can act while an upload is under way. A server
//! that answers early (and closes before the body is all sent) still gives its response.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Bytes per write of a request body.
const WRITE_CHUNK: usize = 64 * 1024;

/// Why an exchange gave no response.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The connection could not be made.
    #[error("connecting to {addr}: {source}")]
    Connect {
        /// Where to.
        addr: SocketAddr,
        /// Why not.
        source: std::io::Error,
    },
    /// No complete response within the timeout.
    #[error("no complete response within {timeout:?} ({sent} body bytes sent, {read} response bytes read{})",
        if first.is_empty() { String::new() } else { format!(", beginning '{first}'") })]
    Timeout {
        /// The timeout of the exchange.
        timeout: Duration,
        /// Body bytes written by then.
        sent: u64,
        /// Response bytes read by then.
        read: usize,
        /// The first line of what was read (the status line), if anything.
        first: String,
    },
    /// The connection failed before a complete response (reset, or closed early).
    #[error("connection failed after {sent} body bytes and {read} response bytes: {why}")]
    Broken {
        /// Body bytes written.
        sent: u64,
        /// Response bytes read.
        read: usize,
        /// What happened.
        why: String,
    },
    /// The response does not parse.
    #[error("malformed response: {0}")]
    Malformed(String),
}

/// A response.
#[derive(Clone, Debug)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The status line and the header lines.
    pub head: String,
    /// The body (de-chunked).
    pub body: Vec<u8>,
}

impl Response {
    /// The value of header field `name` (case-insensitive), if present.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    /// The body as text (lossy), for listings and messages.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One request: method, path, body.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    /// `GET`, `PUT`, `DELETE`, `HEAD`...
    pub method: &'a str,
    /// The request target (`/files/a.bin`).
    pub path: &'a str,
    /// The body (sent with `Content-Length`), if any.
    pub body: Option<&'a [u8]>,
}

impl<'a> Request<'a> {
    /// `GET path`.
    pub fn get(path: &'a str) -> Request<'a> {
        Request {
            method: "GET",
            path,
            body: None,
        }
    }

    /// `PUT path` with `body`.
    pub fn put(path: &'a str, body: &'a [u8]) -> Request<'a> {
        Request {
            method: "PUT",
            path,
            body: Some(body),
        }
    }

    /// `DELETE path`.
    pub fn delete(path: &'a str) -> Request<'a> {
        Request {
            method: "DELETE",
            path,
            body: None,
        }
    }
}

/// Sends `req` to `addr` and reads the response, all within `timeout`; body bytes written are added to
/// `progress` as they go.
pub fn exchange(
    addr: SocketAddr,
    req: Request<'_>,
    timeout: Duration,
    progress: Option<&AtomicU64>,
) -> Result<Response, HttpError> {
    let started = Instant::now();
    let left = || timeout.saturating_sub(started.elapsed());
    let mut sent = 0u64;
    let timed_out = |sent, read: &[u8]| HttpError::Timeout {
        timeout,
        sent,
        read: read.len(),
        first: String::from_utf8_lossy(read)
            .lines()
            .next()
            .unwrap_or("")
            .chars()
            .take(80)
            .collect(),
    };
    let mut s = TcpStream::connect_timeout(&addr, timeout)
        .map_err(|source| HttpError::Connect { addr, source })?;
    let _ = s.set_nodelay(true);
    let mut head = format!(
        "{} {} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n",
        req.method, req.path
    );
    if let Some(b) = req.body {
        head.push_str(&format!("Content-Length: {}\r\n", b.len()));
    }
    head.push_str("\r\n");
    let mut write_failed = None;
    let mut parts: Vec<&[u8]> = vec![head.as_bytes()];
    if let Some(b) = req.body {
        parts.extend(b.chunks(WRITE_CHUNK));
    }
    'send: for (i, part) in parts.iter().enumerate() {
        let mut at = 0;
        while at < part.len() {
            let t = left();
            if t.is_zero() {
                return Err(timed_out(sent, &[]));
            }
            let _ = s.set_write_timeout(Some(t));
            match s.write(&part[at..]) {
                Ok(0) => {
                    write_failed = Some("the connection took no more bytes".to_string());
                    break 'send;
                }
                Ok(n) => {
                    at += n;
                    if i > 0 {
                        sent += n as u64;
                        if let Some(p) = progress {
                            p.fetch_add(n as u64, Ordering::Relaxed);
                        }
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Err(timed_out(sent, &[]));
                }
                // The server may have answered early and closed: read what it said.
                Err(e) => {
                    write_failed = Some(format!("write: {e}"));
                    break 'send;
                }
            }
        }
    }
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let t = left();
        if t.is_zero() {
            return Err(timed_out(sent, &out));
        }
        let _ = s.set_read_timeout(Some(t));
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Err(timed_out(sent, &out));
            }
            Err(e) => {
                // A reset after a complete response (the server closed with our body unread) still
                // leaves the response.
                if let Ok(r) = parse(&out, req.method == "HEAD") {
                    return Ok(r);
                }
                return Err(HttpError::Broken {
                    sent,
                    read: out.len(),
                    why: match write_failed {
                        Some(w) => format!("{w}; read: {e}"),
                        None => format!("read: {e}"),
                    },
                });
            }
        }
    }
    parse(&out, req.method == "HEAD").map_err(|e| {
        if out.is_empty() {
            HttpError::Broken {
                sent,
                read: 0,
                why: write_failed.unwrap_or_else(|| "closed without a response".into()),
            }
        } else {
            e
        }
    })
}

/// Parses a whole response (read to the end of the connection).
pub fn parse(raw: &[u8], head_only: bool) -> Result<Response, HttpError> {
    let bad = |m: String| HttpError::Malformed(m);
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad(format!("no end of head in {} bytes", raw.len())))?;
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let rest = &raw[end + 4..];
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| {
            bad(format!(
                "status line '{}'",
                head.lines().next().unwrap_or("")
            ))
        })?;
    let mut r = Response {
        status,
        head,
        body: Vec::new(),
    };
    if head_only || status == 204 || status == 304 {
        return Ok(r);
    }
    let chunked = r
        .field("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
    if chunked {
        r.body = unchunk(rest).map_err(bad)?;
    } else if let Some(len) = r.field("content-length") {
        let len: usize = len
            .parse()
            .map_err(|_| bad(format!("Content-Length '{len}'")))?;
        if rest.len() < len {
            return Err(bad(format!(
                "body cut off: {} of {len} bytes (status {status})",
                rest.len()
            )));
        }
        r.body = rest[..len].to_vec();
    } else {
        r.body = rest.to_vec();
    }
    Ok(r)
}

/// Decodes a chunked body.
fn unchunk(mut b: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let nl = b
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("chunk size line without CRLF")?;
        let size = String::from_utf8_lossy(&b[..nl]).into_owned();
        let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|e| format!("chunk size '{size}': {e}"))?;
        b = &b[nl + 2..];
        if size == 0 {
            return Ok(out);
        }
        if b.len() < size + 2 {
            return Err(format!("chunk of {size} bytes cut off"));
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

/// `len` bytes of a pattern determined by `seed` (xorshift): different seeds, different bytes.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// The first offset where `a` and `b` differ (or the shorter length), None if equal.
pub fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    if a == b {
        return None;
    }
    Some(
        a.iter()
            .zip(b)
            .position(|(x, y)| x != y)
            .unwrap_or(a.len().min(b.len())),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn parses_length_and_chunked_bodies() {
        let r = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabcdef", false).unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"abc"[..]));
        let r = parse(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
            false,
        )
        .unwrap();
        assert_eq!(r.body, b"abcde");
        assert!(parse(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nabc", false).is_err());
        assert!(parse(b"garbage", false).is_err());
    }

    #[test]
    fn patterns_differ_by_seed_and_compare() {
        let (a, b) = (pattern(1000, 1), pattern(1000, 2));
        assert_eq!(a.len(), 1000);
        assert_ne!(a, b);
        assert_eq!(a, pattern(1000, 1));
        assert_eq!(first_difference(&a, &a), None);
        let mut c = a.clone();
        c[700] ^= 1;
        assert_eq!(first_difference(&a, &c), Some(700));
        assert_eq!(first_difference(&a, &a[..10]), Some(10));
    }

    #[test]
    fn a_server_that_never_answers_times_out_on_time() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let t0 = Instant::now();
        let e = exchange(addr, Request::get("/"), Duration::from_millis(300), None).unwrap_err();
        assert!(matches!(e, HttpError::Timeout { .. }), "{e}");
        assert!(t0.elapsed() < Duration::from_secs(2));
        drop(l);
    }

    #[test]
    fn an_upload_is_counted_and_answered() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let body = pattern(300_000, 9);
        let server = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut got = Vec::new();
            let mut b = [0u8; 65536];
            let whole = |g: &[u8]| {
                g.windows(4)
                    .position(|w| w == b"\r\n\r\n")
                    .is_some_and(|e| g.len() >= e + 4 + 300_000)
            };
            while !whole(&got) {
                let n = s.read(&mut b).unwrap();
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&b[..n]);
            }
            s.write_all(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")
                .unwrap();
        });
        let p = AtomicU64::new(0);
        let r = exchange(
            addr,
            Request::put("/x", &body),
            Duration::from_secs(10),
            Some(&p),
        )
        .unwrap();
        server.join().unwrap();
        assert_eq!(r.status, 201);
        assert_eq!(p.load(Ordering::Relaxed), 300_000);
    }
}
