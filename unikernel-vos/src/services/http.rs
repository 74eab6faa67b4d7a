//! HTTP/1.1 server: GET and HEAD of pages held in RAM, keep-alive, Content-Length, 400/404/405,
//! several connections at once (one listening socket per connection slot).

use crate::executor;
use crate::net::Net;
use alloc::format;
use alloc::rc::Rc;
use alloc::vec;
use alloc::vec::Vec;
use core::cell::RefCell;
use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp;

/// TCP port served.
pub const PORT: u16 = 80;
/// Connections served at once.
pub const SLOTS: usize = 8;
const RX_BUF: usize = 4096;
const TX_BUF: usize = 16384;
/// Why the server stops: its NIC is not there.
const NO_PORT: &str = "no such NIC";
/// Longest request head accepted.
const MAX_HEAD: usize = 8192;

/// A page in RAM.
struct Page {
    path: &'static str,
    content_type: &'static str,
    body: Vec<u8>,
}

fn pages() -> Vec<Page> {
    let mut big = Vec::with_capacity(65536);
    while big.len() < 65536 {
        big.extend_from_slice(b"dvs VOS test data 0123456789abcdefghijklmnopqrstuvwxyz\n");
    }
    big.truncate(65536);
    vec![
        Page {
            path: "/",
            content_type: "text/html",
            body: b"<!doctype html><html><head><title>dvs VOS</title></head><body><h1>dvs VOS</h1><p>Served from a unikernel in ring 3.</p></body></html>\n".to_vec(),
        },
        Page { path: "/hello.txt", content_type: "text/plain", body: b"hello from dvs\n".to_vec() },
        Page { path: "/big", content_type: "application/octet-stream", body: big },
    ]
}

/// Per-connection state: request bytes read so far and response bytes still to send.
struct Conn {
    handle: SocketHandle,
    inbuf: Vec<u8>,
    out: Vec<u8>,
    sent: usize,
    close_after: bool,
}

/// Counters.
#[derive(Default, Debug, Clone, Copy)]
pub struct HttpStats {
    /// Requests answered.
    pub requests: u64,
    /// Requests refused with 400.
    pub bad: u64,
}

/// What a request asks for, or why it is refused.
enum Parsed {
    /// Need more bytes.
    Incomplete,
    /// A complete request: response bytes, whether to close after, bytes consumed.
    Done(Vec<u8>, bool, usize),
}

fn response(
    status: &str,
    ctype: &str,
    body: &[u8],
    head_only: bool,
    close: bool,
    extra: &str,
) -> Vec<u8> {
    let mut r = format!(
        "HTTP/1.1 {status}\r\nServer: dvs-vos\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: {}\r\n{extra}\r\n",
        body.len(),
        if close { "close" } else { "keep-alive" }
    )
    .into_bytes();
    if !head_only {
        r.extend_from_slice(body);
    }
    r
}

fn bad_request(why: &str) -> Parsed {
    let body = format!("400 Bad Request: {why}\n");
    Parsed::Done(
        response(
            "400 Bad Request",
            "text/plain",
            body.as_bytes(),
            false,
            true,
            "",
        ),
        true,
        usize::MAX,
    )
}

fn parse(buf: &[u8], pages: &[Page]) -> Parsed {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        if buf.len() > MAX_HEAD {
            return bad_request("request head too long");
        }
        return Parsed::Incomplete;
    };
    let Ok(head) = core::str::from_utf8(&buf[..end]) else {
        return bad_request("request head is not UTF-8");
    };
    let mut lines = head.split("\r\n");
    let line = lines.next().unwrap_or("");
    let mut parts = line.split(' ');
    let (Some(method), Some(path), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return bad_request("malformed request line");
    };
    let http10 = match version {
        "HTTP/1.1" => false,
        "HTTP/1.0" => true,
        _ => return bad_request("unsupported HTTP version"),
    };
    let mut close = http10;
    let mut content_length = 0usize;
    for h in lines {
        let Some((name, value)) = h.split_once(':') else {
            return bad_request("malformed header line");
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("connection") {
            if value.eq_ignore_ascii_case("close") {
                close = true;
            } else if value.eq_ignore_ascii_case("keep-alive") {
                close = false;
            }
        } else if name.eq_ignore_ascii_case("content-length") {
            match value.parse::<usize>() {
                Ok(n) if n <= MAX_HEAD => content_length = n,
                _ => return bad_request("bad Content-Length"),
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return bad_request("Transfer-Encoding not supported");
        }
    }
    let consumed = end + 4 + content_length;
    if buf.len() < consumed {
        return Parsed::Incomplete;
    }
    let head_only = match method {
        "GET" => false,
        "HEAD" => true,
        _ => {
            let body = format!("405 Method Not Allowed: {method}\n");
            let r = response(
                "405 Method Not Allowed",
                "text/plain",
                body.as_bytes(),
                false,
                close,
                "Allow: GET, HEAD\r\n",
            );
            return Parsed::Done(r, close, consumed);
        }
    };
    let path = path.split('?').next().unwrap_or(path);
    let r = match pages.iter().find(|p| p.path == path) {
        Some(p) => response("200 OK", p.content_type, &p.body, head_only, close, ""),
        None => {
            let body = format!("404 Not Found: {path}\n");
            response(
                "404 Not Found",
                "text/plain",
                body.as_bytes(),
                head_only,
                close,
                "",
            )
        }
    };
    Parsed::Done(r, close, consumed)
}

fn listen_socket() -> tcp::Socket<'static> {
    tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0; RX_BUF]),
        tcp::SocketBuffer::new(vec![0; TX_BUF]),
    )
}

/// Serves HTTP on port `port` of `net` until the kernel stops; ends only if that port is gone.
pub async fn serve(
    net: Rc<RefCell<Net>>,
    port: usize,
    stats: Rc<RefCell<HttpStats>>,
) -> Result<(), &'static str> {
    let pages = pages();
    let mut conns: Vec<Conn> = {
        let mut n = net.borrow_mut();
        let Some(p) = n.ports.get_mut(port) else {
            return Err(NO_PORT);
        };
        (0..SLOTS)
            .map(|_| Conn {
                handle: p.sockets.add(listen_socket()),
                inbuf: Vec::new(),
                out: Vec::new(),
                sent: 0,
                close_after: false,
            })
            .collect()
    };
    loop {
        {
            let mut n = net.borrow_mut();
            let Some(p) = n.ports.get_mut(port) else {
                return Err(NO_PORT);
            };
            for c in conns.iter_mut() {
                let s = p.sockets.get_mut::<tcp::Socket>(c.handle);
                if s.state() == tcp::State::TimeWait {
                    // The exchange is over: free the slot now rather than after 2 MSL.
                    s.abort();
                }
                if !s.is_open() {
                    c.inbuf.clear();
                    c.out.clear();
                    c.sent = 0;
                    c.close_after = false;
                    if s.listen(PORT).is_err() {
                        continue;
                    }
                }
                serve_conn(s, c, &pages, &mut stats.borrow_mut());
            }
        }
        executor::yield_now().await;
    }
}

fn serve_conn(s: &mut tcp::Socket, c: &mut Conn, pages: &[Page], stats: &mut HttpStats) {
    // Flush pending output first.
    if c.sent < c.out.len() {
        if let Ok(n) = s.send_slice(&c.out[c.sent..]) {
            if n > 0 {
                executor::progress();
            }
            c.sent += n;
        }
        if c.sent < c.out.len() {
            return;
        }
        c.out.clear();
        c.sent = 0;
        if c.close_after {
            s.close();
            return;
        }
    }
    if s.can_recv() {
        let _ = s.recv(|data| {
            let take = data
                .len()
                .min(MAX_HEAD * 2 - c.inbuf.len().min(MAX_HEAD * 2));
            c.inbuf.extend_from_slice(&data[..take]);
            (data.len(), ())
        });
        executor::progress();
    }
    while c.out.is_empty() && !c.inbuf.is_empty() && !c.close_after {
        match parse(&c.inbuf, pages) {
            Parsed::Incomplete => break,
            Parsed::Done(resp, close, consumed) => {
                if consumed == usize::MAX {
                    stats.bad += 1;
                    c.inbuf.clear();
                } else {
                    c.inbuf.drain(..consumed);
                }
                stats.requests += 1;
                c.out = resp;
                c.sent = 0;
                c.close_after = close;
                if let Ok(n) = s.send_slice(&c.out) {
                    c.sent = n;
                }
                executor::progress();
                if c.sent == c.out.len() {
                    c.out.clear();
                    c.sent = 0;
                    if close {
                        s.close();
                    }
                }
            }
        }
    }
    if !s.may_recv() && c.out.is_empty() && s.is_open() && s.state() == tcp::State::CloseWait {
        s.close();
    }
}
