//! Request parsing for the web server: the request head (request line and header fields), the
//! request target's path checks, `Range: bytes=` and the chunked body decoder. Everything here
//! reads bytes from an untrusted client: it refuses with a status and a reason, never panics.

use alloc::string::String;

/// Longest request head accepted (request line + header fields + the empty line); longer: 431.
pub const MAX_HEAD: usize = 8192;
/// Most header fields in one request; more: 431.
pub const MAX_FIELDS: usize = 64;
/// Longest decoded path.
pub const MAX_PATH: usize = 200;
/// Longest chunk-size line extension, and longest trailer section, of a chunked body.
const MAX_CHUNK_EXT: usize = 256;
const MAX_TRAILER: usize = 4096;

/// A response status the server sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// 100 Continue.
    Continue,
    /// 200 OK.
    Ok,
    /// 201 Created.
    Created,
    /// 204 No Content.
    NoContent,
    /// 206 Partial Content.
    Partial,
    /// 400 Bad Request.
    BadRequest,
    /// 404 Not Found.
    NotFound,
    /// 405 Method Not Allowed.
    MethodNotAllowed,
    /// 408 Request Timeout.
    Timeout,
    /// 411 Length Required.
    LengthRequired,
    /// 413 Content Too Large.
    TooLarge,
    /// 416 Range Not Satisfiable.
    RangeNotSatisfiable,
    /// 417 Expectation Failed.
    ExpectationFailed,
    /// 431 Request Header Fields Too Large.
    HeadTooLarge,
    /// 501 Not Implemented.
    NotImplemented,
    /// 503 Service Unavailable.
    Unavailable,
    /// 505 HTTP Version Not Supported.
    VersionNotSupported,
    /// 507 Insufficient Storage.
    InsufficientStorage,
}

impl Status {
    /// The status line's code and reason phrase.
    pub fn line(self) -> &'static str {
        match self {
            Status::Continue => "100 Continue",
            Status::Ok => "200 OK",
            Status::Created => "201 Created",
            Status::NoContent => "204 No Content",
            Status::Partial => "206 Partial Content",
            Status::BadRequest => "400 Bad Request",
            Status::NotFound => "404 Not Found",
            Status::MethodNotAllowed => "405 Method Not Allowed",
            Status::Timeout => "408 Request Timeout",
            Status::LengthRequired => "411 Length Required",
            Status::TooLarge => "413 Content Too Large",
            Status::RangeNotSatisfiable => "416 Range Not Satisfiable",
            Status::ExpectationFailed => "417 Expectation Failed",
            Status::HeadTooLarge => "431 Request Header Fields Too Large",
            Status::NotImplemented => "501 Not Implemented",
            Status::Unavailable => "503 Service Unavailable",
            Status::VersionNotSupported => "505 HTTP Version Not Supported",
            Status::InsufficientStorage => "507 Insufficient Storage",
        }
    }
}

/// Why a request is refused: the status and a reason for the body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// The status sent.
    pub status: Status,
    /// What was wrong, in words (the response body).
    pub why: &'static str,
}

fn refuse(status: Status, why: &'static str) -> Refusal {
    Refusal { status, why }
}

fn bad(why: &'static str) -> Refusal {
    refuse(Status::BadRequest, why)
}

/// The methods served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// GET: a file, a byte range of it, or a directory listing.
    Get,
    /// HEAD: as GET without the body.
    Head,
    /// PUT: store the body as a file.
    Put,
    /// DELETE: remove a file.
    Delete,
}

/// The `Allow` field of a 405.
pub const ALLOW: &str = "GET, HEAD, PUT, DELETE";

/// How the request body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyLen {
    /// No body.
    None,
    /// `Content-Length` bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// A parsed request head.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// The method.
    pub method: Method,
    /// The decoded, checked path (starts with `/`; ends with `/` for a directory).
    pub path: String,
    /// Whether the connection stays open after the response (HTTP/1.1 unless `close`;
    /// HTTP/1.0 only with `keep-alive`).
    pub keep_alive: bool,
    /// Whether the request is HTTP/1.0 (no chunked responses then).
    pub http10: bool,
    /// How the body is delimited.
    pub body: BodyLen,
    /// The `Range` field's value, if any (interpreted once the file's size is known).
    pub range: Option<String>,
    /// `Expect: 100-continue` was sent.
    pub expect_continue: bool,
}

/// Index just past the `\r\n\r\n` that ends the head in `buf`, searching from `from` (bytes
/// before it were searched already).
pub fn head_end(buf: &[u8], from: usize) -> Option<usize> {
    let start = from.saturating_sub(3);
    buf.get(start..)?
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| start + i + 4)
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(is_tchar)
}

/// Parses a complete head (`head` ends with `\r\n\r\n`).
pub fn parse_head(head: &[u8]) -> Result<Request, Refusal> {
    let head = head.strip_suffix(b"\r\n\r\n").unwrap_or(head);
    let head = core::str::from_utf8(head).map_err(|_| bad("request head is not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let line = lines.next().unwrap_or("");
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad(
            "malformed request line (want METHOD SP /path SP HTTP/1.x)",
        ));
    };
    if !is_token(method) || target.is_empty() {
        return Err(bad(
            "malformed request line (want METHOD SP /path SP HTTP/1.x)",
        ));
    }
    let http10 = match version {
        "HTTP/1.1" => false,
        "HTTP/1.0" => true,
        v if v.len() == 8 && v.starts_with("HTTP/") && v.as_bytes()[6] == b'.' => {
            return Err(refuse(
                Status::VersionNotSupported,
                "only HTTP/1.0 and HTTP/1.1 are served",
            ))
        }
        _ => return Err(bad("malformed HTTP version")),
    };
    let method = match method {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        "PUT" => Method::Put,
        "DELETE" => Method::Delete,
        "POST" | "OPTIONS" | "PATCH" | "TRACE" | "CONNECT" => {
            return Err(refuse(
                Status::MethodNotAllowed,
                "method not allowed (GET, HEAD, PUT, DELETE)",
            ))
        }
        _ => return Err(refuse(Status::NotImplemented, "unknown method")),
    };
    let path = check_target(target)?;
    let mut req = Request {
        method,
        path,
        keep_alive: !http10,
        http10,
        body: BodyLen::None,
        range: None,
        expect_continue: false,
    };
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut hosts = 0;
    for (i, h) in lines.enumerate() {
        if i >= MAX_FIELDS {
            return Err(refuse(Status::HeadTooLarge, "more than 64 header fields"));
        }
        if h.starts_with([' ', '\t']) {
            return Err(bad("folded header line (obs-fold)"));
        }
        let Some((name, value)) = h.split_once(':') else {
            return Err(bad("header line without a colon"));
        };
        if !is_token(name) {
            return Err(bad("malformed header field name"));
        }
        if value.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f) {
            return Err(bad("control character in a header field value"));
        }
        let value = value.trim_matches([' ', '\t']);
        if name.eq_ignore_ascii_case("connection") {
            for opt in value.split(',').map(|o| o.trim_matches([' ', '\t'])) {
                if opt.eq_ignore_ascii_case("close") {
                    req.keep_alive = false;
                } else if opt.eq_ignore_ascii_case("keep-alive") && http10 {
                    req.keep_alive = true;
                }
            }
        } else if name.eq_ignore_ascii_case("content-length") {
            if value.is_empty() || value.len() > 18 || !value.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad("malformed Content-Length"));
            }
            let n: u64 = value.parse().map_err(|_| bad("malformed Content-Length"))?;
            if length.is_some_and(|l| l != n) {
                return Err(bad("two different Content-Length fields"));
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            if !value.eq_ignore_ascii_case("chunked") || chunked {
                return Err(refuse(
                    Status::NotImplemented,
                    "only Transfer-Encoding: chunked is understood",
                ));
            }
            chunked = true;
        } else if name.eq_ignore_ascii_case("expect") {
            if !value.eq_ignore_ascii_case("100-continue") {
                return Err(refuse(
                    Status::ExpectationFailed,
                    "only Expect: 100-continue is understood",
                ));
            }
            req.expect_continue = !http10;
        } else if name.eq_ignore_ascii_case("range") {
            if req.range.is_some() {
                return Err(bad("two Range fields"));
            }
            req.range = Some(value.into());
        } else if name.eq_ignore_ascii_case("host") {
            hosts += 1;
            if hosts > 1 {
                return Err(bad("two Host fields"));
            }
        }
    }
    req.body = match (length, chunked) {
        (Some(_), true) => {
            return Err(bad(
                "both Content-Length and Transfer-Encoding (request smuggling?)",
            ))
        }
        (None, true) => BodyLen::Chunked,
        (Some(0), false) | (None, false) => BodyLen::None,
        (Some(n), false) => BodyLen::Length(n),
    };
    Ok(req)
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Whether `b` may be part of a stored name: letters, digits and `. _ - ~` (so a name never
/// needs escaping in a listing or a header).
fn name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"._-~".contains(&b)
}

/// Checks a request target and returns its decoded path. Only origin-form (`/a/b?q`) is
/// accepted: absolute-form (`http://h/p`), `*`, a fragment, `%` not followed by two hex
/// digits, an encoded `/` or `\` (`%2f`, `%5c`), `.` or `..` segments (also encoded, `%2e%2e`),
/// an empty segment (`//`), and any byte outside letters, digits and `. _ - ~` are refused (400).
pub fn check_target(target: &str) -> Result<String, Refusal> {
    let path = target.split('?').next().unwrap_or(target);
    if !path.starts_with('/') {
        return Err(bad("request target is not an absolute path (origin-form)"));
    }
    if path.contains('#') {
        return Err(bad("fragment in the request target"));
    }
    let raw = path.as_bytes();
    let mut out = String::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let b = match raw[i] {
            b'%' => {
                let (Some(h), Some(l)) = (
                    raw.get(i + 1).copied().and_then(hex),
                    raw.get(i + 2).copied().and_then(hex),
                ) else {
                    return Err(bad("malformed percent-encoding in the path"));
                };
                i += 3;
                let d = h << 4 | l;
                if d == b'/' || d == b'\\' {
                    return Err(bad("encoded '/' or '\\' in the path"));
                }
                d
            }
            b => {
                i += 1;
                b
            }
        };
        if b != b'/' && !name_byte(b) {
            return Err(bad(
                "path byte outside letters, digits, '.', '_', '-', '~' and '/'",
            ));
        }
        out.push(b as char);
        if out.len() > MAX_PATH {
            return Err(bad("path longer than 200 bytes"));
        }
    }
    let body = &out[1..];
    let segs = body.strip_suffix('/').unwrap_or(body);
    if !segs.is_empty() {
        for seg in segs.split('/') {
            if seg.is_empty() {
                return Err(bad("empty path segment ('//')"));
            }
            if seg == "." || seg == ".." {
                return Err(bad("'.' or '..' in the path"));
            }
        }
    }
    Ok(out)
}

/// What a `Range` field selects of a file of a given size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RangeSel {
    /// The whole file (no range, several ranges, or a malformed field, which are ignored as
    /// RFC 9110 allows).
    Full,
    /// Bytes `start..=end`.
    Part(u64, u64),
    /// No byte of the file is selected (416).
    Unsatisfiable,
}

/// Interprets `Range: bytes=a-b | a- | -n` against a file of `size` bytes.
pub fn range(spec: Option<&str>, size: u64) -> RangeSel {
    let Some(spec) = spec else {
        return RangeSel::Full;
    };
    let Some(r) = spec.strip_prefix("bytes=") else {
        return RangeSel::Full;
    };
    let r = r.trim_matches([' ', '\t']);
    if r.contains(',') {
        return RangeSel::Full;
    }
    let Some((a, b)) = r.split_once('-') else {
        return RangeSel::Full;
    };
    let digits = |s: &str| {
        if s.is_empty() || s.len() > 19 || !s.bytes().all(|c| c.is_ascii_digit()) {
            None
        } else {
            s.parse::<u64>().ok()
        }
    };
    match (a.is_empty(), b.is_empty()) {
        (true, true) => RangeSel::Full,
        (true, false) => match digits(b) {
            None => RangeSel::Full,
            Some(0) => RangeSel::Unsatisfiable,
            Some(_) if size == 0 => RangeSel::Unsatisfiable,
            Some(n) => RangeSel::Part(size.saturating_sub(n), size - 1),
        },
        (false, _) => {
            let Some(start) = digits(a) else {
                return RangeSel::Full;
            };
            let end = if b.is_empty() {
                u64::MAX
            } else {
                match digits(b) {
                    Some(e) if e >= start => e,
                    _ => return RangeSel::Full,
                }
            };
            if start >= size {
                RangeSel::Unsatisfiable
            } else {
                RangeSel::Part(start, end.min(size - 1))
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ChunkState {
    /// Hex digits of the chunk size.
    Size { digits: u8 },
    /// A chunk extension (or whitespace) until CR.
    Ext,
    /// The LF after the size line.
    SizeLf,
    /// Chunk data.
    Data,
    /// The CR after chunk data.
    DataCr,
    /// The LF after chunk data.
    DataLf,
    /// At the start of a trailer line (or the final empty line).
    TrailerStart,
    /// Inside a trailer line.
    TrailerLine,
    /// The LF of a trailer line.
    TrailerLf,
    /// The final LF.
    EndLf,
    /// The body is complete.
    Done,
}

/// An incremental decoder of a chunked request body. The chunk size is at most 15 hex digits,
/// an extension at most 256 bytes, the trailer section at most 4 KiB (trailer fields are
/// dropped); the body's total size is the sink's business.
#[derive(Clone, Debug)]
pub struct Chunked {
    state: ChunkState,
    /// Bytes of the current chunk still to come (in Data), or the size read so far (in Size).
    left: u64,
    /// Bytes of the current extension or of the trailer section.
    aux: usize,
}

impl Default for Chunked {
    fn default() -> Self {
        Chunked {
            state: ChunkState::Size { digits: 0 },
            left: 0,
            aux: 0,
        }
    }
}

impl Chunked {
    /// Whether the last chunk and the trailer section have been read.
    pub fn done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Decodes from `input`, handing data to `sink`, which returns how many of the bytes it took
    /// (fewer: it is full for now, decoding stops there). Returns the bytes of `input` consumed;
    /// stops at the end of the body (bytes after it are the next request's).
    pub fn feed(
        &mut self,
        input: &[u8],
        sink: &mut dyn FnMut(&[u8]) -> usize,
    ) -> Result<usize, &'static str> {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            match self.state {
                ChunkState::Size { digits } => {
                    if let Some(d) = hex(b) {
                        if digits >= 15 {
                            return Err("chunk size longer than 15 hex digits");
                        }
                        self.left = self.left << 4 | d as u64;
                        self.state = ChunkState::Size { digits: digits + 1 };
                    } else if digits == 0 {
                        return Err("chunk size line without a size");
                    } else if b == b'\r' {
                        self.state = ChunkState::SizeLf;
                    } else if b == b';' || b == b' ' || b == b'\t' {
                        self.aux = 0;
                        self.state = ChunkState::Ext;
                    } else {
                        return Err("malformed chunk size");
                    }
                    i += 1;
                }
                ChunkState::Ext => {
                    if b == b'\r' {
                        self.state = ChunkState::SizeLf;
                    } else if b < 0x20 && b != b'\t' {
                        return Err("control byte in a chunk extension");
                    } else {
                        self.aux += 1;
                        if self.aux > MAX_CHUNK_EXT {
                            return Err("chunk extension longer than 256 bytes");
                        }
                    }
                    i += 1;
                }
                ChunkState::SizeLf => {
                    if b != b'\n' {
                        return Err("chunk size line not ended by CRLF");
                    }
                    i += 1;
                    if self.left == 0 {
                        self.aux = 0;
                        self.state = ChunkState::TrailerStart;
                    } else {
                        self.state = ChunkState::Data;
                    }
                }
                ChunkState::Data => {
                    let n = (input.len() - i).min(self.left.min(usize::MAX as u64) as usize);
                    let took = sink(&input[i..i + n]).min(n);
                    i += took;
                    self.left -= took as u64;
                    if self.left == 0 {
                        self.state = ChunkState::DataCr;
                    }
                    if took < n {
                        return Ok(i);
                    }
                }
                ChunkState::DataCr => {
                    if b != b'\r' {
                        return Err("chunk data longer than its size");
                    }
                    i += 1;
                    self.state = ChunkState::DataLf;
                }
                ChunkState::DataLf => {
                    if b != b'\n' {
                        return Err("chunk data not ended by CRLF");
                    }
                    i += 1;
                    self.state = ChunkState::Size { digits: 0 };
                }
                ChunkState::TrailerStart | ChunkState::TrailerLine | ChunkState::TrailerLf => {
                    self.aux += 1;
                    if self.aux > MAX_TRAILER {
                        return Err("chunked trailer section longer than 4 KiB");
                    }
                    self.state = match (self.state, b) {
                        (ChunkState::TrailerStart, b'\r') => ChunkState::EndLf,
                        (ChunkState::TrailerLf, b'\n') => ChunkState::TrailerStart,
                        (ChunkState::TrailerLf, _) => return Err("trailer line not ended by CRLF"),
                        (_, b'\r') => ChunkState::TrailerLf,
                        (_, b'\n') => return Err("bare LF in the trailer section"),
                        _ => ChunkState::TrailerLine,
                    };
                    i += 1;
                }
                ChunkState::EndLf => {
                    if b != b'\n' {
                        return Err("chunked body not ended by CRLF");
                    }
                    i += 1;
                    self.state = ChunkState::Done;
                    return Ok(i);
                }
                ChunkState::Done => return Ok(i),
            }
        }
        Ok(i)
    }
}
