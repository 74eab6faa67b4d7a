//! A small HTTP/1.1 load generator (std threads, blocking sockets, no HTTP library): `conns`
//! keep-alive connections, each a thread sending one request after the other to its own path for a
//! warm-up and then a fixed measurement window. Every response is checked (status, and for GET the
//! body length); a failed request or connection is counted by kind and the connection is opened
//! again, so a server that resets connections yields an error count, not an abort.
//!
//! Only what the benchmark needs: GET and PUT (a `Content-Length` body), responses with
//! `Content-Length` or `Transfer-Encoding: chunked`, `Connection: close` honoured. Latency is the time
//! from the first byte written to the last byte of the response read, kept per request (µs) for
//! exact percentiles.

use std::fmt;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The request method.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// GET: the body is read and its length checked against [`Case::expect_len`].
    Get,
    /// PUT of [`Case::body`] with `Content-Length`.
    Put,
}

impl Method {
    fn name(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Put => "PUT",
        }
    }
}

/// One load case.
#[derive(Clone, Debug)]
pub struct Case {
    /// Server address.
    pub addr: SocketAddr,
    /// `Host:` header value.
    pub host: String,
    /// Method.
    pub method: Method,
    /// Paths; connection `i` uses `paths[i % paths.len()]`.
    pub paths: Vec<String>,
    /// PUT body (empty for GET).
    pub body: Arc<Vec<u8>>,
    /// GET: the body length every response must have (`None`: any).
    pub expect_len: Option<u64>,
    /// Statuses counted as success.
    pub ok_status: Vec<u16>,
    /// Concurrent connections.
    pub conns: usize,
    /// Requests before the window are not counted.
    pub warmup: Duration,
    /// The measurement window.
    pub window: Duration,
    /// Connect, read and write timeout.
    pub io_timeout: Duration,
}

/// Failed requests by kind.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Errors {
    /// Connections that could not be opened.
    pub connect: u64,
    /// Connections reset or closed by the server mid-request (or other I/O errors).
    pub io: u64,
    /// Reads or writes that timed out.
    pub timeout: u64,
    /// Responses with a status not in [`Case::ok_status`].
    pub status: u64,
    /// GET bodies of the wrong length.
    pub length: u64,
    /// Responses that are not well-formed HTTP/1.x.
    pub protocol: u64,
    /// The first error seen, for the report.
    pub first: Option<String>,
}

impl Errors {
    /// All failures.
    pub fn total(&self) -> u64 {
        self.connect + self.io + self.timeout + self.status + self.length + self.protocol
    }

    fn add(&mut self, o: &Errors) {
        self.connect += o.connect;
        self.io += o.io;
        self.timeout += o.timeout;
        self.status += o.status;
        self.length += o.length;
        self.protocol += o.protocol;
        if self.first.is_none() {
            self.first.clone_from(&o.first);
        }
    }

    fn count(&mut self, e: &Failure) {
        match e {
            Failure::Io(ErrorKind::WouldBlock | ErrorKind::TimedOut, _) => self.timeout += 1,
            Failure::Io(..) => self.io += 1,
            Failure::Status(_) => self.status += 1,
            Failure::Length { .. } => self.length += 1,
            Failure::Protocol(_) => self.protocol += 1,
        }
        if self.first.is_none() {
            self.first = Some(e.to_string());
        }
    }
}

impl fmt::Display for Errors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts = [
            ("connect", self.connect),
            ("io", self.io),
            ("timeout", self.timeout),
            ("status", self.status),
            ("length", self.length),
            ("protocol", self.protocol),
        ];
        let mut any = false;
        for (name, n) in parts.iter().filter(|(_, n)| *n > 0) {
            write!(f, "{}{name} {n}", if any { ", " } else { "" })?;
            any = true;
        }
        if !any {
            write!(f, "none")?;
        }
        Ok(())
    }
}

/// What a case measured.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// Successful requests completed inside the window.
    pub requests: u64,
    /// Body bytes moved by those requests (response bodies for GET, request bodies for PUT).
    pub bytes: u64,
    /// The window as it was measured.
    pub window: Duration,
    /// Latencies of the counted requests, µs, sorted.
    pub latencies_us: Vec<u64>,
    /// Failures inside warm-up and window.
    pub errors: Errors,
    /// What `cpu` (the argument of [`run`]) grew by over the window.
    pub cpu: f64,
}

impl Outcome {
    /// Requests per second.
    pub fn rps(&self) -> f64 {
        self.requests as f64 / self.window.as_secs_f64().max(1e-9)
    }

    /// MiB per second of bodies.
    pub fn mib_s(&self) -> f64 {
        self.bytes as f64 / (1 << 20) as f64 / self.window.as_secs_f64().max(1e-9)
    }

    /// The `p`-quantile of the latencies (nearest rank), µs; 0 without samples.
    pub fn quantile_us(&self, p: f64) -> u64 {
        let v = &self.latencies_us;
        if v.is_empty() {
            return 0;
        }
        let i = ((v.len() - 1) as f64 * p.clamp(0.0, 1.0)).round() as usize;
        v[i.min(v.len() - 1)]
    }
}

/// Why one request failed.
#[derive(Debug)]
enum Failure {
    Io(ErrorKind, String),
    Status(u16),
    Length { want: u64, got: u64 },
    Protocol(String),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Io(_, m) => write!(f, "{m}"),
            Failure::Status(s) => write!(f, "status {s}"),
            Failure::Length { want, got } => write!(f, "body of {got} bytes, want {want}"),
            Failure::Protocol(m) => write!(f, "malformed response: {m}"),
        }
    }
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Failure {
        Failure::Io(e.kind(), e.to_string())
    }
}

/// Most bytes of a response head.
const MAX_HEAD: usize = 16 << 10;

/// A keep-alive connection with its read buffer.
struct Conn {
    s: TcpStream,
    buf: Vec<u8>,
    /// Unconsumed bytes are `buf[at..end]`.
    at: usize,
    end: usize,
}

/// A parsed response head.
struct Head {
    status: u16,
    len: Option<u64>,
    chunked: bool,
    close: bool,
}

impl Conn {
    fn open(addr: SocketAddr, timeout: Duration) -> std::io::Result<Conn> {
        let s = TcpStream::connect_timeout(&addr, timeout)?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(timeout))?;
        s.set_write_timeout(Some(timeout))?;
        Ok(Conn {
            s,
            buf: vec![0; 64 << 10],
            at: 0,
            end: 0,
        })
    }

    /// Reads more bytes after the unconsumed ones (moved to the front first).
    fn fill(&mut self) -> Result<(), Failure> {
        if self.at > 0 {
            self.buf.copy_within(self.at..self.end, 0);
            self.end -= self.at;
            self.at = 0;
        }
        if self.end == self.buf.len() {
            return Err(Failure::Protocol("line or head too long".into()));
        }
        let n = self.s.read(&mut self.buf[self.end..])?;
        if n == 0 {
            return Err(Failure::Io(
                ErrorKind::UnexpectedEof,
                "the server closed the connection".into(),
            ));
        }
        self.end += n;
        Ok(())
    }

    /// The next line (without CRLF), at most `max` bytes.
    fn line(&mut self, max: usize) -> Result<String, Failure> {
        loop {
            if let Some(i) = self.buf[self.at..self.end]
                .windows(2)
                .position(|w| w == b"\r\n")
            {
                let l = String::from_utf8_lossy(&self.buf[self.at..self.at + i]).into_owned();
                self.at += i + 2;
                return Ok(l);
            }
            if self.end - self.at > max {
                return Err(Failure::Protocol("line too long".into()));
            }
            self.fill()?;
        }
    }

    fn head(&mut self) -> Result<Head, Failure> {
        let status_line = self.line(MAX_HEAD)?;
        let mut words = status_line.splitn(3, ' ');
        let version = words.next().unwrap_or("");
        if !version.starts_with("HTTP/1.") {
            return Err(Failure::Protocol(format!("status line {status_line:?}")));
        }
        let status = words
            .next()
            .and_then(|c| c.parse::<u16>().ok())
            .ok_or_else(|| Failure::Protocol(format!("status line {status_line:?}")))?;
        let mut h = Head {
            status,
            len: None,
            chunked: false,
            close: version == "HTTP/1.0",
        };
        let mut size = status_line.len();
        loop {
            let l = self.line(MAX_HEAD)?;
            size += l.len() + 2;
            if size > MAX_HEAD {
                return Err(Failure::Protocol("head over 16 KiB".into()));
            }
            if l.is_empty() {
                return Ok(h);
            }
            let Some((name, value)) = l.split_once(':') else {
                return Err(Failure::Protocol(format!("field {l:?}")));
            };
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                h.len = Some(
                    value
                        .parse()
                        .map_err(|_| Failure::Protocol(format!("Content-Length {value:?}")))?,
                );
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                h.chunked = value.to_ascii_lowercase().contains("chunked");
            } else if name.eq_ignore_ascii_case("connection") {
                let v = value.to_ascii_lowercase();
                if v.contains("close") {
                    h.close = true;
                } else if v.contains("keep-alive") {
                    h.close = false;
                }
            }
        }
    }

    /// Reads and drops exactly `n` body bytes.
    fn skip(&mut self, mut n: u64) -> Result<(), Failure> {
        while n > 0 {
            if self.at == self.end {
                self.at = 0;
                self.end = 0;
                self.fill()?;
            }
            let take = (self.end - self.at).min(usize::try_from(n).unwrap_or(usize::MAX));
            self.at += take;
            n -= take as u64;
        }
        Ok(())
    }

    /// Reads a chunked body; its length.
    fn chunked(&mut self) -> Result<u64, Failure> {
        let mut total = 0u64;
        loop {
            let l = self.line(1024)?;
            let hex = l.split(';').next().unwrap_or("").trim();
            let n = u64::from_str_radix(hex, 16)
                .map_err(|_| Failure::Protocol(format!("chunk size {l:?}")))?;
            if n == 0 {
                // Trailer fields up to the empty line.
                while !self.line(MAX_HEAD)?.is_empty() {}
                return Ok(total);
            }
            self.skip(n)?;
            if !self.line(2)?.is_empty() {
                return Err(Failure::Protocol("no CRLF after a chunk".into()));
            }
            total += n;
        }
    }

    /// One request and its response: the body length and whether the connection stays open.
    fn request(&mut self, c: &Case, path: &str) -> Result<(u64, bool), Failure> {
        let mut head = format!(
            "{} {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: dvs-bench\r\n",
            c.method.name(),
            c.host
        );
        if c.method == Method::Put {
            head.push_str(&format!("Content-Length: {}\r\n", c.body.len()));
        }
        head.push_str("\r\n");
        if c.method == Method::Put && c.body.len() <= 16 << 10 {
            let mut all = head.into_bytes();
            all.extend_from_slice(&c.body);
            self.s.write_all(&all)?;
        } else {
            self.s.write_all(head.as_bytes())?;
            if c.method == Method::Put {
                self.s.write_all(&c.body)?;
            }
        }
        let h = self.head()?;
        let got = if h.chunked {
            self.chunked()?
        } else if let Some(n) = h.len {
            self.skip(n)?;
            n
        } else if h.status == 204 || h.status == 304 || (100..200).contains(&h.status) {
            0
        } else {
            // Body up to the close: read it all, then the connection is done.
            let mut n = (self.end - self.at) as u64;
            self.at = self.end;
            loop {
                match self.fill() {
                    Ok(()) => {
                        n += (self.end - self.at) as u64;
                        self.at = self.end;
                    }
                    Err(Failure::Io(ErrorKind::UnexpectedEof, _)) => break,
                    Err(e) => return Err(e),
                }
            }
            return self.judge(c, &h, n).map(|n| (n, false));
        };
        if self.at != self.end {
            return Err(Failure::Protocol(format!(
                "{} bytes after the response",
                self.end - self.at
            )));
        }
        self.judge(c, &h, got).map(|n| (n, !h.close))
    }

    fn judge(&self, c: &Case, h: &Head, got: u64) -> Result<u64, Failure> {
        if !c.ok_status.contains(&h.status) {
            return Err(Failure::Status(h.status));
        }
        match (c.method, c.expect_len) {
            (Method::Get, Some(want)) if want != got => Err(Failure::Length { want, got }),
            (Method::Get, _) => Ok(got),
            (Method::Put, _) => Ok(c.body.len() as u64),
        }
    }
}

/// What one connection thread measured.
#[derive(Default)]
struct Tally {
    requests: u64,
    bytes: u64,
    lat: Vec<u64>,
    errors: Errors,
}

fn connection(c: &Case, path: &str, t0: Instant, t1: Instant) -> Tally {
    let mut t = Tally::default();
    let mut conn: Option<Conn> = None;
    while Instant::now() < t1 {
        let cn = match conn.as_mut() {
            Some(cn) => cn,
            None => match Conn::open(c.addr, c.io_timeout) {
                Ok(cn) => conn.insert(cn),
                Err(e) => {
                    t.errors.connect += 1;
                    if t.errors.first.is_none() {
                        t.errors.first = Some(format!("connect to {}: {e}", c.addr));
                    }
                    // Do not spin on a refusing server.
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
            },
        };
        let begin = Instant::now();
        match cn.request(c, path) {
            Ok((bytes, keep)) => {
                let end = Instant::now();
                if end >= t0 && end < t1 {
                    t.requests += 1;
                    t.bytes += bytes;
                    t.lat.push(end.duration_since(begin).as_micros() as u64);
                }
                if !keep {
                    conn = None;
                }
            }
            Err(e) => {
                t.errors.count(&e);
                conn = None;
            }
        }
    }
    t
}

/// Runs `case`; `cpu` is sampled at the start and the end of the window (e.g. the CPU seconds of
/// the serving processes) and [`Outcome::cpu`] is its growth.
pub fn run(case: &Case, mut cpu: impl FnMut() -> f64) -> Outcome {
    let start = Instant::now();
    let t0 = start + case.warmup;
    let t1 = t0 + case.window;
    let (tallies, window, grown) = std::thread::scope(|s| {
        let handles: Vec<_> = (0..case.conns.max(1))
            .map(|i| {
                let path = case
                    .paths
                    .get(i % case.paths.len().max(1))
                    .cloned()
                    .unwrap_or_else(|| "/".into());
                s.spawn(move || connection(case, &path, t0, t1))
            })
            .collect();
        std::thread::sleep(t0.saturating_duration_since(Instant::now()));
        let c0 = cpu();
        let w0 = Instant::now();
        std::thread::sleep(t1.saturating_duration_since(Instant::now()));
        let c1 = cpu();
        let window = w0.elapsed();
        let tallies: Vec<Tally> = handles
            .into_iter()
            .map(|h| h.join().unwrap_or_default())
            .collect();
        (tallies, window, (c1 - c0).max(0.0))
    });
    let mut o = Outcome {
        window,
        cpu: grown,
        ..Outcome::default()
    };
    for t in tallies {
        o.requests += t.requests;
        o.bytes += t.bytes;
        o.latencies_us.extend(t.lat);
        o.errors.add(&t.errors);
    }
    o.latencies_us.sort_unstable();
    o
}

/// One request on a fresh connection (to put a file before a case, or to probe a server):
/// the status and the response body.
pub fn once(
    addr: SocketAddr,
    host: &str,
    method: Method,
    path: &str,
    body: &[u8],
    timeout: Duration,
) -> Result<(u16, Vec<u8>), String> {
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("{addr}: {e}"))?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let mut req = format!(
        "{} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n",
        method.name()
    );
    if method == Method::Put {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())
        .and_then(|()| s.write_all(body))
        .map_err(|e| format!("{method:?} {path}: {e}"))?;
    let mut conn = Conn {
        s,
        buf: vec![0; 64 << 10],
        at: 0,
        end: 0,
    };
    let h = conn.head().map_err(|e| format!("{method:?} {path}: {e}"))?;
    let mut out = Vec::new();
    let mut rest = |conn: &mut Conn, n: Option<u64>| -> Result<(), Failure> {
        let mut left = n.unwrap_or(u64::MAX);
        while left > 0 {
            if conn.at == conn.end {
                conn.at = 0;
                conn.end = 0;
                match conn.fill() {
                    Ok(()) => {}
                    Err(Failure::Io(ErrorKind::UnexpectedEof, _)) if n.is_none() => break,
                    Err(e) => return Err(e),
                }
            }
            let take = (conn.end - conn.at).min(usize::try_from(left).unwrap_or(usize::MAX));
            out.extend_from_slice(&conn.buf[conn.at..conn.at + take]);
            conn.at += take;
            left -= take as u64;
        }
        Ok(())
    };
    let r = if h.chunked {
        conn.chunked().map(|_| ())
    } else if h.status == 204 || h.status == 304 {
        Ok(())
    } else {
        rest(&mut conn, h.len)
    };
    r.map_err(|e| format!("{method:?} {path}: {e}"))?;
    Ok((h.status, out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A server answering every request on a connection with `answer(n)` (n counts from 0); for
    /// PUT it reads the Content-Length body first.
    fn server(answer: impl Fn(u64) -> Vec<u8> + Send + Sync + 'static) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let answer = Arc::new(answer);
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { return };
                let answer = answer.clone();
                std::thread::spawn(move || {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 8192];
                    let mut n = 0;
                    loop {
                        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                            match s.read(&mut chunk) {
                                Ok(0) | Err(_) => return,
                                Ok(k) => buf.extend_from_slice(&chunk[..k]),
                            }
                            continue;
                        };
                        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                        let len: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .map_or(0, |v| v.trim().parse().unwrap());
                        while buf.len() < end + 4 + len {
                            match s.read(&mut chunk) {
                                Ok(0) | Err(_) => return,
                                Ok(k) => buf.extend_from_slice(&chunk[..k]),
                            }
                        }
                        buf.drain(..end + 4 + len);
                        if s.write_all(&answer(n)).is_err() {
                            return;
                        }
                        n += 1;
                    }
                });
            }
        });
        addr
    }

    fn case(addr: SocketAddr, method: Method, expect_len: Option<u64>, conns: usize) -> Case {
        Case {
            addr,
            host: "t".into(),
            method,
            paths: vec!["/a".into(), "/b".into()],
            body: Arc::new(if method == Method::Put {
                vec![7; 100_000]
            } else {
                Vec::new()
            }),
            expect_len,
            ok_status: vec![200, 201, 204],
            conns,
            warmup: Duration::from_millis(20),
            window: Duration::from_millis(200),
            io_timeout: Duration::from_secs(2),
        }
    }

    fn ok(body: &[u8]) -> Vec<u8> {
        let mut r =
            format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
        r.extend_from_slice(body);
        r
    }

    #[test]
    fn counts_requests_bytes_and_latency() {
        let addr = server(|_| ok(&[1; 5000]));
        let o = run(&case(addr, Method::Get, Some(5000), 4), || 0.0);
        assert_eq!(o.errors.total(), 0, "{}", o.errors);
        assert!(o.requests > 10, "{} requests", o.requests);
        assert_eq!(o.bytes, o.requests * 5000);
        assert_eq!(o.latencies_us.len() as u64, o.requests);
        assert!(o.quantile_us(0.5) <= o.quantile_us(0.99));
        assert!(o.window >= Duration::from_millis(190), "{:?}", o.window);
    }

    #[test]
    fn wrong_length_and_status_are_errors() {
        let addr = server(|_| ok(&[1; 10]));
        let o = run(&case(addr, Method::Get, Some(11), 1), || 0.0);
        assert_eq!(o.requests, 0);
        assert!(o.errors.length > 0, "{}", o.errors);
        let addr = server(|_| b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n".to_vec());
        let o = run(&case(addr, Method::Get, None, 1), || 0.0);
        assert_eq!(o.requests, 0);
        assert!(o.errors.status > 0, "{}", o.errors);
    }

    #[test]
    fn chunked_put_and_close() {
        let addr = server(|n| {
            if n % 2 == 0 {
                b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
                    .to_vec()
            } else {
                b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n".to_vec()
            }
        });
        let o = run(&case(addr, Method::Put, None, 2), || 0.0);
        assert_eq!(o.errors.total(), 0, "{}", o.errors);
        assert!(o.requests > 2);
        assert_eq!(o.bytes, o.requests * 100_000);
    }

    #[test]
    fn refused_connections_are_counted() {
        let addr = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let o = run(&case(addr, Method::Get, None, 2), || 1.0);
        assert_eq!(o.requests, 0);
        assert!(o.errors.connect > 0, "{}", o.errors);
        assert_eq!(o.cpu, 0.0);
    }

    #[test]
    fn cpu_growth_over_the_window() {
        let addr = server(|_| ok(b"x"));
        let calls = std::sync::atomic::AtomicU32::new(0);
        let o = run(&case(addr, Method::Get, Some(1), 1), || {
            f64::from(calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed)) * 2.5
        });
        assert_eq!(o.cpu, 2.5);
    }

    #[test]
    fn once_reads_the_body() {
        let addr = server(|_| ok(b"hello"));
        let (st, body) = once(addr, "t", Method::Get, "/x", b"", Duration::from_secs(2)).unwrap();
        assert_eq!((st, body.as_slice()), (200, &b"hello"[..]));
    }
}
