//! The web server (HTTP/1.1 and 1.0 on port 80 of the IP services' NIC): GET (with
//! `Range: bytes=`), HEAD, PUT (`Content-Length` or chunked bodies, streamed into the store),
//! DELETE, and a directory listing for paths ending in `/`.
//!
//! It faces the internet, so every connection is bounded in memory and in time:
//! - `slots` connections (boot setting `http_slots=`, default 64) plus [`SPARE`] sockets that
//!   always listen, so a new client is accepted while every slot is taken. When a spare is taken,
//!   the oldest idle keep-alive connection is closed to make room (counted `http_evicted`); if
//!   no connection is idle (all are inside a request), the newcomer is answered 503 with
//!   `Retry-After: 1` (counted `http_busy`).
//! - timeouts (counted `http_timeouts`): an idle keep-alive connection is closed after
//!   `http_idle_ms` (10 s, with a FIN); a request head must be complete `http_head_ms` (5 s) after its first
//!   byte, and a body must make progress every `http_body_ms` (5 s), else 408 and close; a
//!   client that reads nothing of its response for `http_idle_ms` is reset; a closed connection
//!   lingers at most [`LINGER_US`] for the client's FIN.
//! - strict parsing ([`parse`]): 400 for a malformed request line or field or a bad path, 431
//!   for a head over 8 KiB, 405 / 501 for other methods, 505 for other versions.
//!
//! One task polls every socket each turn and never waits on one: a slow client only holds its
//! own slot. Bodies move between the socket buffers and the [`store::Store`] in pieces, never
//! whole. The store is the file server ([`fs_store::FsStore`], over M3-IPC from the web server's
//! own endpoint) when the boot configuration names one (`fs_ep=`), else a [`RamStore`].

pub mod fs_store;
pub mod parse;
pub mod store;

use crate::arch::{heap, time};
use crate::executor;
use crate::ipc::IpcRef;
use crate::net::Net;
use crate::println;
use alloc::format;
use alloc::rc::Rc;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::cell::RefCell;
use core::fmt::Write as _;
use core::task::Poll;
use dvs_vos_abi::boot::HttpConfig;
use fs_store::FsStore;
use m3ipc_core::Endpoint;
use parse::{BodyLen, Chunked, Method, RangeSel, Refusal, Request, Status};
use smoltcp::iface::{SocketHandle, SocketSet};
use smoltcp::socket::tcp;
use store::{RamStore, Store, StoreError};

/// TCP port served.
pub const PORT: u16 = 80;
/// Listening sockets kept on top of the slots, so that a new client is always accepted.
pub const SPARE: usize = 4;
/// Receive buffer (and window) of each connection.
const RX_BUF: usize = 8192;
/// Transmit buffer of each connection.
const TX_BUF: usize = 16384;
/// How long a connection we closed may wait for the client's FIN before it is reset, µs.
pub const LINGER_US: u64 = 2_000_000;
/// How long an aborted socket waits for its RST to go out before it listens again anyway, µs.
const RST_WAIT_US: u64 = 200_000;
/// Largest file PUT may store.
pub const MAX_FILE: u64 = 1 << 20;
/// Most bytes the RAM store holds (less if the heap is small).
pub const MAX_STORE: u64 = 8 << 20;
/// Most files the RAM store holds.
pub const MAX_FILES: usize = 1024;
/// Heap kept free for everything else when the store is sized.
const HEAP_RESERVE: u64 = 3 << 20;
/// Most bytes of a body sent with GET, HEAD or DELETE that is read and dropped.
const MAX_DISCARD: u64 = 1 << 20;
/// Listing entries fetched from the store per piece of the listing.
const LIST_BATCH: usize = 16;
/// Why the server stops: its NIC is not there.
const NO_PORT: &str = "no such NIC";

/// Counters.
#[derive(Default, Debug, Clone, Copy)]
pub struct HttpStats {
    /// Requests answered (any status).
    pub requests: u64,
    /// Requests refused as malformed (400, 431, 501, 505).
    pub bad: u64,
    /// Connections closed by a timeout.
    pub timeouts: u64,
    /// Idle connections closed to make room for a new client.
    pub evicted: u64,
    /// New clients answered 503 because every slot was inside a request.
    pub busy: u64,
}

/// What a connection is doing.
enum Phase<S: Store> {
    /// The socket listens (no client).
    Listen,
    /// Connected, no byte of the next request yet (`since`: when that began).
    Idle,
    /// Bytes of a request head are arriving (`since`: the first one).
    Head,
    /// The request's body is arriving (`since`: the last progress).
    Body {
        req: Request,
        body: BodyReader,
        sink: Sink<S>,
    },
    /// The request is complete; the store is asked (it may answer later).
    Act { req: Request, sink: Sink<S> },
    /// The response is being sent (`since`: the last progress).
    Send,
    /// We closed the connection and wait for the client's FIN (`since`: when).
    Closing,
}

/// How the body is read.
enum BodyReader {
    /// `n` bytes still to come.
    Length(u64),
    /// A chunked body.
    Chunked(Chunked),
}

/// Where the body goes.
enum Sink<S: Store> {
    /// Read and dropped, at most `left` bytes more.
    Discard { left: u64 },
    /// A PUT whose file is not open yet.
    Opening,
    /// A PUT being written.
    Put(S::Writer),
    /// The store refused: the body is not read further.
    Failed(StoreError),
}

/// What follows the response head.
enum Source<S: Store> {
    /// Nothing.
    None,
    /// `left` bytes of a file.
    File { reader: S::Reader, left: u64 },
    /// A directory listing, produced in pieces (chunked, or ended by close for HTTP/1.0).
    Listing {
        dir: String,
        after: Option<String>,
        /// The first batch, read before the head was sent (so that a failing store answers
        /// with an error status, not an empty 200).
        first: Option<Vec<store::Entry>>,
        chunked: bool,
        done: bool,
    },
}

/// One socket and what it is doing.
struct Conn<S: Store> {
    handle: SocketHandle,
    phase: Phase<S>,
    /// When the current phase began or last made progress, µs.
    since: u64,
    /// Bytes read but not consumed (a head being assembled, or what followed it).
    inbuf: Vec<u8>,
    /// Bytes of `inbuf` already searched for the end of the head.
    scanned: usize,
    /// Response bytes (head, small bodies) not yet in the socket.
    out: Vec<u8>,
    sent: usize,
    /// What follows `out`.
    source: Source<S>,
    /// Close once the response is out.
    close_after: bool,
    /// The loop turn in which the socket was reset: it listens again only on a later turn, so
    /// that smoltcp sends the RST first.
    reset_turn: u64,
    /// Since when (µs) an aborted socket waits for the interface to send its RST.
    rst_since: Option<u64>,
}

impl<S: Store> Conn<S> {
    fn new(handle: SocketHandle) -> Self {
        Conn {
            handle,
            phase: Phase::Listen,
            since: 0,
            inbuf: Vec::new(),
            scanned: 0,
            out: Vec::new(),
            sent: 0,
            source: Source::None,
            close_after: false,
            reset_turn: u64::MAX,
            rst_since: None,
        }
    }

    fn is_idle(&self) -> bool {
        matches!(self.phase, Phase::Idle) && self.inbuf.is_empty()
    }

    /// The moment this connection's timeout fires, µs.
    fn deadline(&self, cfg: &Limits) -> Option<u64> {
        let after = match self.phase {
            Phase::Listen | Phase::Act { .. } => return None,
            Phase::Idle => cfg.idle_us,
            Phase::Head => cfg.head_us,
            Phase::Body { .. } => cfg.body_us,
            Phase::Send => cfg.idle_us,
            Phase::Closing => LINGER_US,
        };
        Some(self.since.saturating_add(after))
    }
}

/// The moment a connection is driven at.
struct Turn<'a> {
    /// Kernel clock, µs.
    now: u64,
    /// Loop turn number.
    turn: u64,
    /// The timeouts.
    limits: &'a Limits,
}

/// The timeouts in µs.
struct Limits {
    idle_us: u64,
    head_us: u64,
    body_us: u64,
}

/// A response head.
fn head(status: Status, close: bool, fields: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {}\r\nServer: dvs-vos\r\n{fields}Connection: {}\r\n\r\n",
        status.line(),
        if close { "close" } else { "keep-alive" }
    )
    .into_bytes()
}

/// A complete response with a short text body.
fn text(status: Status, close: bool, extra: &str, body: &str, head_only: bool) -> Vec<u8> {
    let mut r = head(
        status,
        close,
        &format!(
            "Content-Type: text/plain\r\nContent-Length: {}\r\n{extra}",
            body.len() + 1
        ),
    );
    if !head_only {
        r.extend_from_slice(body.as_bytes());
        r.push(b'\n');
    }
    r
}

fn listen_socket() -> tcp::Socket<'static> {
    tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0; RX_BUF]),
        tcp::SocketBuffer::new(vec![0; TX_BUF]),
    )
}

fn test_data(len: usize) -> Vec<u8> {
    let mut big = Vec::with_capacity(len);
    while big.len() < len {
        big.extend_from_slice(b"dvs VOS test data 0123456789abcdefghijklmnopqrstuvwxyz\n");
    }
    big.truncate(len);
    big
}

/// Where the web server keeps its files: on the file server at `fs`, called from `ep` (a
/// [`FsStore`]), or in RAM (a [`RamStore`]).
pub struct Backing {
    /// The IPC engine.
    pub ipc: IpcRef,
    /// The web server's own endpoint.
    pub ep: Endpoint,
    /// The file server's endpoint.
    pub fs: Endpoint,
}

/// Serves HTTP on port `port` of `net` until the kernel stops; ends only if that port is gone.
/// Files go to the file server if `backing` says where it is, else to RAM.
pub async fn serve(
    net: Rc<RefCell<Net>>,
    port: usize,
    stats: Rc<RefCell<HttpStats>>,
    cfg: HttpConfig,
    backing: Option<Backing>,
) -> Result<(), &'static str> {
    // Memory: each socket has RX_BUF + TX_BUF; a head being read takes up to MAX_HEAD more.
    let per_socket = (RX_BUF + TX_BUF + parse::MAX_HEAD) as u64;
    let free = heap::free() as u64;
    let mut slots = cfg.slots as usize;
    let fit = (free.saturating_sub(HEAP_RESERVE) / per_socket) as usize;
    if slots + SPARE > fit {
        slots = fit.saturating_sub(SPARE).max(1);
        println!(
            "dvs: http: {} slots do not fit in {} KiB of heap, serving {slots}",
            cfg.slots,
            free / 1024
        );
    }
    let limits = Limits {
        idle_us: cfg.idle_ms as u64 * 1000,
        head_us: cfg.head_ms as u64 * 1000,
        body_us: cfg.body_ms as u64 * 1000,
    };
    let what = format!(
        "port {PORT} slots={slots}+{SPARE} spare rx={RX_BUF} tx={TX_BUF} idle_ms={} head_ms={} body_ms={}",
        cfg.idle_ms, cfg.head_ms, cfg.body_ms
    );
    if let Some(b) = backing {
        match FsStore::new(b.ipc, b.ep, b.fs) {
            Ok(store) => {
                println!(
                    "dvs: http: {what} store=fs (file server {} from endpoint {}) heap_free={}KiB",
                    b.fs.0,
                    b.ep.0,
                    free / 1024
                );
                return run(net, port, stats, limits, slots, store).await;
            }
            Err(e) => println!(
                "dvs: http: endpoint {} takes no buffer ({}); files stay in RAM",
                b.ep.0,
                e.as_str()
            ),
        }
    }
    let sockets_bytes = (slots + SPARE) as u64 * per_socket;
    let store_total = MAX_STORE.min(free.saturating_sub(sockets_bytes + HEAP_RESERVE));
    let mut store = RamStore::new(MAX_FILE, store_total, MAX_FILES);
    for (path, data) in [
        ("/hello.txt", b"hello from dvs\n".to_vec()),
        ("/big", test_data(65536)),
    ] {
        if let Err(e) = store.preload(path, &data) {
            println!("dvs: http: cannot preload {path}: {e:?}");
        }
    }
    println!(
        "dvs: http: {what} store={}KiB file={}KiB heap_free={}KiB",
        store_total / 1024,
        MAX_FILE / 1024,
        free / 1024
    );
    run(net, port, stats, limits, slots, store).await
}

/// The server's loop over `store`.
async fn run<S: Store>(
    net: Rc<RefCell<Net>>,
    port: usize,
    stats: Rc<RefCell<HttpStats>>,
    limits: Limits,
    slots: usize,
    mut store: S,
) -> Result<(), &'static str> {
    let mut conns: Vec<Conn<S>> = {
        let mut n = net.borrow_mut();
        let Some(p) = n.ports.get_mut(port) else {
            return Err(NO_PORT);
        };
        (0..slots + SPARE)
            .map(|_| Conn::new(p.sockets.add(listen_socket())))
            .collect()
    };
    let mut turn = 0u64;
    loop {
        {
            let mut n = net.borrow_mut();
            let Some(p) = n.ports.get_mut(port) else {
                return Err(NO_PORT);
            };
            let now = time::now_us();
            turn += 1;
            let mut st = stats.borrow_mut();
            let t = Turn {
                now,
                turn,
                limits: &limits,
            };
            for i in 0..conns.len() {
                if accept(&mut conns[i], &mut p.sockets, &mut store, &t) {
                    make_room(
                        &mut conns,
                        i,
                        slots,
                        &mut p.sockets,
                        &mut store,
                        &t,
                        &mut st,
                    );
                }
                drive(&mut conns[i], &mut p.sockets, &mut store, &t, &mut st);
            }
            let wake = conns.iter().filter_map(|c| c.deadline(&limits)).min();
            if let Some(t) = wake {
                executor::wake_at(t);
            }
        }
        executor::yield_now().await;
    }
}

/// A new client took socket `new`: if that puts more than `slots` sockets in use, close the
/// socket that lingers longest after close, else the oldest idle connection, else answer the
/// newcomer 503.
#[allow(clippy::too_many_arguments)]
fn make_room<S: Store>(
    conns: &mut [Conn<S>],
    new: usize,
    slots: usize,
    sockets: &mut SocketSet<'static>,
    store: &mut S,
    t: &Turn,
    st: &mut HttpStats,
) {
    let now = t.now;
    let used = conns
        .iter()
        .filter(|c| !matches!(c.phase, Phase::Listen))
        .count();
    if used <= slots {
        return;
    }
    let oldest = |want: fn(&Conn<S>) -> bool| {
        conns
            .iter()
            .enumerate()
            .filter(|&(i, c)| i != new && want(c))
            .min_by_key(|(_, c)| c.since)
            .map(|(i, _)| i)
    };
    if let Some(v) = oldest(|c| matches!(c.phase, Phase::Closing)).or_else(|| oldest(Conn::is_idle))
    {
        let was_idle = conns[v].is_idle();
        let h = conns[v].handle;
        kill(&mut conns[v], sockets.get_mut::<tcp::Socket>(h), store, t);
        if was_idle {
            st.evicted += 1;
        }
        return;
    }
    st.busy += 1;
    st.requests += 1;
    let c = &mut conns[new];
    c.out = text(
        Status::Unavailable,
        true,
        "Retry-After: 1\r\n",
        "503 Service Unavailable: every connection slot is busy",
        false,
    );
    c.close_after = true;
    c.phase = Phase::Send;
    c.since = now;
    let s = sockets.get_mut::<tcp::Socket>(c.handle);
    flush(c, s, store);
}

/// Resets the connection (RST) and forgets it.
fn kill<S: Store>(c: &mut Conn<S>, s: &mut tcp::Socket, store: &mut S, t: &Turn) {
    s.abort();
    reset(c, store);
    c.reset_turn = t.turn;
    // The interface must poll to send the RST.
    executor::progress();
}

/// Takes a listening socket that a client connected to: true if it was just accepted.
fn accept<S: Store>(
    c: &mut Conn<S>,
    sockets: &mut SocketSet<'static>,
    store: &mut S,
    t: &Turn,
) -> bool {
    let s = sockets.get_mut::<tcp::Socket>(c.handle);
    if s.state() == tcp::State::TimeWait {
        // The exchange is over: free the socket now rather than after 2 MSL.
        kill(c, s, store, t);
        return false;
    }
    if !s.is_open() {
        if !matches!(c.phase, Phase::Listen) {
            reset(c, store);
        }
        // An aborted socket keeps its connection until the interface has sent the RST
        // (`remote_endpoint` is cleared then); listening again before that would drop the RST
        // and leave the client waiting for the rest of a response. Bounded by RST_WAIT_US in
        // case the RST cannot go out (no route to the client any more).
        if s.remote_endpoint().is_some() {
            let since = *c.rst_since.get_or_insert(t.now);
            if t.now < since.saturating_add(RST_WAIT_US) {
                executor::wake_at(since.saturating_add(RST_WAIT_US));
                return false;
            }
        }
        if c.reset_turn != t.turn {
            c.rst_since = None;
            let _ = s.listen(PORT);
        }
        return false;
    }
    if !matches!(c.phase, Phase::Listen) || s.state() == tcp::State::Listen {
        return false;
    }
    s.set_nagle_enabled(false);
    c.phase = Phase::Idle;
    c.since = t.now;
    true
}

/// Forgets what a connection was doing (its socket is closed or about to listen again).
fn reset<S: Store>(c: &mut Conn<S>, store: &mut S) {
    let phase = core::mem::replace(&mut c.phase, Phase::Listen);
    if let Phase::Body { sink, .. } | Phase::Act { sink, .. } = phase {
        if let Sink::Put(w) = sink {
            store.abort(w);
        }
    }
    c.inbuf = Vec::new();
    c.scanned = 0;
    c.out = Vec::new();
    c.sent = 0;
    c.source = Source::None;
    c.close_after = false;
}

/// Moves one connection on as far as it can go now. True if a client was just accepted.
fn drive<S: Store>(
    c: &mut Conn<S>,
    sockets: &mut SocketSet<'static>,
    store: &mut S,
    t: &Turn,
    st: &mut HttpStats,
) {
    let now = t.now;
    let s = sockets.get_mut::<tcp::Socket>(c.handle);
    if matches!(c.phase, Phase::Listen) {
        return;
    }
    if !s.is_open() {
        // The client reset the connection: the socket listens again on the next turn.
        reset(c, store);
        return;
    }
    // Timeouts.
    if c.deadline(t.limits).is_some_and(|d| now >= d) {
        match c.phase {
            Phase::Idle => {
                // An idle keep-alive connection ends politely (FIN): a client must expect that
                // between requests. It lingers like any closed connection.
                st.timeouts += 1;
                reset(c, store);
                s.close();
                c.phase = Phase::Closing;
                c.since = now;
                return;
            }
            Phase::Send | Phase::Closing => {
                st.timeouts += u64::from(matches!(c.phase, Phase::Send));
                kill(c, s, store, t);
                return;
            }
            Phase::Head | Phase::Body { .. } => {
                st.timeouts += 1;
                st.requests += 1;
                let why = if matches!(c.phase, Phase::Head) {
                    "408 Request Timeout: the request head did not arrive in time"
                } else {
                    "408 Request Timeout: the request body stopped arriving"
                };
                refuse_and_close(c, s, store, now, Status::Timeout, why, "");
                return;
            }
            Phase::Listen | Phase::Act { .. } => {}
        }
    }
    loop {
        let before = (c.sent, c.inbuf.len());
        match c.phase {
            Phase::Listen => return,
            Phase::Closing => {
                // Drop whatever the client still sends, so that it reads our response.
                let _ = s.recv(|d| (d.len(), ()));
                return;
            }
            Phase::Send => {
                if flush(c, s, store) {
                    c.since = now;
                }
                if !c.out.is_empty() || !matches!(c.source, Source::None) {
                    return;
                }
                if c.close_after {
                    s.close();
                    c.phase = Phase::Closing;
                    c.since = now;
                    return;
                }
                c.phase = Phase::Idle;
                c.since = now;
            }
            Phase::Idle | Phase::Head => {
                read_head(c, s, now);
                match parse_if_complete(c) {
                    None => {
                        if peer_closed(s) {
                            // The client is done sending and no full request is left.
                            s.close();
                            c.phase = Phase::Closing;
                            c.since = now;
                        }
                        return;
                    }
                    Some(Err(r)) => {
                        st.bad += u64::from(matches!(
                            r.status,
                            Status::BadRequest
                                | Status::HeadTooLarge
                                | Status::NotImplemented
                                | Status::VersionNotSupported
                        ));
                        st.requests += 1;
                        let extra = if r.status == Status::MethodNotAllowed {
                            format!("Allow: {}\r\n", parse::ALLOW)
                        } else {
                            String::new()
                        };
                        refuse_and_close(c, s, store, now, r.status, r.why, &extra);
                        return;
                    }
                    Some(Ok(req)) => start(c, s, req, now, store.max_file()),
                }
            }
            Phase::Body { .. } => {
                if flush(c, s, store) {
                    c.since = now;
                }
                match read_body(c, s, store, now) {
                    Ok(true) => {}
                    Ok(false) => return,
                    Err(r) => {
                        st.requests += 1;
                        st.bad += u64::from(r.status == Status::BadRequest);
                        refuse_and_close(c, s, store, now, r.status, r.why, "");
                        return;
                    }
                }
            }
            Phase::Act { .. } => {
                if !act(c, s, store, now, st) {
                    return;
                }
            }
        }
        if (c.sent, c.inbuf.len()) != before {
            executor::progress();
        }
    }
}

/// Answers `status` with `why` and closes after it; an upload in progress is dropped.
fn refuse_and_close<S: Store>(
    c: &mut Conn<S>,
    s: &mut tcp::Socket,
    store: &mut S,
    now: u64,
    status: Status,
    why: &str,
    extra: &str,
) {
    let pending = core::mem::take(&mut c.out);
    let sent = c.sent;
    reset(c, store);
    // Keep what was queued before (a 100 Continue), then the refusal.
    c.out = pending.get(sent..).map(|p| p.to_vec()).unwrap_or_default();
    let why = if why.starts_with(status.line()) {
        String::from(why)
    } else {
        format!("{}: {why}", status.line())
    };
    c.out
        .extend_from_slice(&text(status, true, extra, &why, false));
    c.close_after = true;
    c.phase = Phase::Send;
    c.since = now;
    flush(c, s, store);
    executor::progress();
}

/// Reads request-head bytes into `inbuf` (at most one byte past [`parse::MAX_HEAD`]).
fn read_head<S: Store>(c: &mut Conn<S>, s: &mut tcp::Socket, now: u64) {
    while s.can_recv() && c.inbuf.len() <= parse::MAX_HEAD {
        let room = parse::MAX_HEAD + 1 - c.inbuf.len();
        let Ok(n) = s.recv(|d| {
            let n = d.len().min(room);
            c.inbuf.extend_from_slice(&d[..n]);
            (n, n)
        }) else {
            break;
        };
        if n == 0 {
            break;
        }
        executor::progress();
    }
    if matches!(c.phase, Phase::Idle) && !c.inbuf.is_empty() {
        c.phase = Phase::Head;
        c.since = now;
    }
}

/// The request in `inbuf`, if its head is complete (consumed from `inbuf`), or a refusal.
fn parse_if_complete<S: Store>(c: &mut Conn<S>) -> Option<Result<Request, Refusal>> {
    match parse::head_end(&c.inbuf, c.scanned) {
        Some(end) if end <= parse::MAX_HEAD => {
            let r = parse::parse_head(&c.inbuf[..end]);
            c.inbuf.drain(..end);
            c.scanned = 0;
            Some(r)
        }
        _ if c.inbuf.len() > parse::MAX_HEAD => Some(Err(Refusal {
            status: Status::HeadTooLarge,
            why: "request head larger than 8 KiB",
        })),
        _ => {
            c.scanned = c.inbuf.len();
            None
        }
    }
}

/// Begins a parsed request: decides where its body goes, or acts at once.
fn start<S: Store>(c: &mut Conn<S>, s: &mut tcp::Socket, req: Request, now: u64, max_file: u64) {
    c.since = now;
    let put = req.method == Method::Put;
    let body = match req.body {
        BodyLen::None if put => {
            c.phase = Phase::Act {
                sink: Sink::Failed(StoreError::Unavailable("PUT without a body length")),
                req,
            };
            return;
        }
        BodyLen::None => {
            c.phase = Phase::Act {
                req,
                sink: Sink::Discard { left: 0 },
            };
            return;
        }
        BodyLen::Length(n) => BodyReader::Length(n),
        BodyLen::Chunked => BodyReader::Chunked(Chunked::default()),
    };
    let sink = if put {
        if req.path.ends_with('/') {
            Sink::Failed(StoreError::NotFound)
        } else {
            Sink::Opening
        }
    } else {
        Sink::Discard { left: MAX_DISCARD }
    };
    if let (BodyReader::Length(n), Sink::Opening) = (&body, &sink) {
        if *n > max_file {
            c.phase = Phase::Act {
                req,
                sink: Sink::Failed(StoreError::FileTooLarge(max_file)),
            };
            return;
        }
    }
    if req.expect_continue {
        c.out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
        let _ = s;
    }
    c.phase = Phase::Body { req, body, sink };
}

/// Moves body bytes from `inbuf` and the socket into the sink. Ok(true): the body is complete
/// (the phase is now Act); Ok(false): more is to come; Err: refuse and close.
fn read_body<S: Store>(
    c: &mut Conn<S>,
    s: &mut tcp::Socket,
    store: &mut S,
    now: u64,
) -> Result<bool, Refusal> {
    let Phase::Body { req, body, sink } = &mut c.phase else {
        return Ok(false);
    };
    if let Sink::Opening = sink {
        let len = match body {
            BodyReader::Length(n) => Some(*n),
            BodyReader::Chunked(_) => None,
        };
        match store.poll_create(&req.path, len) {
            Poll::Pending => {
                // The store is working, not the client: its calls have their own timeouts.
                c.since = now;
                return Ok(false);
            }
            Poll::Ready(Ok(w)) => *sink = Sink::Put(w),
            Poll::Ready(Err(e)) => *sink = Sink::Failed(e),
        }
    }
    if let Sink::Failed(e) = sink {
        // Nothing more is read: the answer is due now, and the connection closes after it.
        let e = *e;
        let Phase::Body { req, sink, .. } = core::mem::replace(&mut c.phase, Phase::Idle) else {
            return Ok(false);
        };
        drop(sink);
        c.phase = Phase::Act {
            req,
            sink: Sink::Failed(e),
        };
        c.close_after = true;
        return Ok(true);
    }
    let mut progressed = false;
    let mut store_busy = false;
    let mut failed: Option<Refusal> = None;
    // Hands `data` to the sink: how much it took.
    let mut feed = |data: &[u8], sink: &mut Sink<S>, failed: &mut Option<Refusal>| -> usize {
        match sink {
            Sink::Discard { left } => {
                if data.len() as u64 > *left {
                    *failed = Some(Refusal {
                        status: Status::TooLarge,
                        why: "a body sent with GET, HEAD or DELETE is larger than 1 MiB",
                    });
                    return 0;
                }
                *left -= data.len() as u64;
                data.len()
            }
            Sink::Put(w) => match store.poll_write(w, data) {
                Poll::Pending => {
                    store_busy = true;
                    0
                }
                Poll::Ready(Ok(n)) => n,
                Poll::Ready(Err(e)) => {
                    // The partial file is dropped and its bytes given back.
                    if let Sink::Put(w) = core::mem::replace(sink, Sink::Failed(e)) {
                        store.abort(w);
                    }
                    0
                }
            },
            Sink::Opening | Sink::Failed(_) => 0,
        }
    };
    // One pass over `data`: bytes consumed, whether the body is complete.
    let mut step = |data: &[u8],
                    body: &mut BodyReader,
                    sink: &mut Sink<S>,
                    failed: &mut Option<Refusal>|
     -> (usize, bool) {
        match body {
            BodyReader::Length(left) => {
                let n = data.len().min((*left).min(usize::MAX as u64) as usize);
                let took = feed(&data[..n], sink, failed);
                *left -= took as u64;
                (took, *left == 0)
            }
            BodyReader::Chunked(ch) => {
                let r = ch.feed(data, &mut |d| feed(d, sink, failed));
                match r {
                    Ok(n) => (n, ch.done()),
                    Err(why) => {
                        *failed = Some(Refusal {
                            status: Status::BadRequest,
                            why,
                        });
                        (0, false)
                    }
                }
            }
        }
    };
    let mut complete = matches!(body, BodyReader::Length(0));
    if !complete && !c.inbuf.is_empty() {
        let (n, done) = step(&c.inbuf, body, sink, &mut failed);
        if n > 0 {
            c.inbuf.drain(..n);
            progressed = true;
        }
        complete = done;
    }
    while !complete && failed.is_none() && !matches!(sink, Sink::Failed(_)) && s.can_recv() {
        let Ok((n, done)) = s.recv(|d| {
            let (n, done) = step(d, body, sink, &mut failed);
            (n, (n, done))
        }) else {
            break;
        };
        complete = done;
        if n == 0 {
            break;
        }
        progressed = true;
    }
    if progressed {
        c.since = now;
        executor::progress();
    }
    if store_busy {
        // The store is working, not the client: its calls have their own timeouts.
        c.since = now;
    }
    if let Some(r) = failed {
        return Err(r);
    }
    if let Sink::Failed(_) = sink {
        // The store refused mid-body: answer now (on the next pass) and close.
        return read_body(c, s, store, now);
    }
    if !complete {
        if peer_closed(s) && !s.can_recv() {
            return Err(Refusal {
                status: Status::BadRequest,
                why: "the client closed before the end of the body",
            });
        }
        return Ok(false);
    }
    let Phase::Body { req, sink, .. } = core::mem::replace(&mut c.phase, Phase::Idle) else {
        return Ok(false);
    };
    c.phase = Phase::Act { req, sink };
    Ok(true)
}

/// The status and text of a store error.
fn store_refusal(e: StoreError) -> (Status, String) {
    match e {
        StoreError::NotFound => (Status::NotFound, String::from("404 Not Found")),
        StoreError::FileTooLarge(limit) => (
            Status::TooLarge,
            format!("413 Content Too Large: a file may hold at most {limit} bytes"),
        ),
        StoreError::Full(limit) => (
            Status::InsufficientStorage,
            format!(
                "507 Insufficient Storage: the store is full ({limit} bytes or {MAX_FILES} files)"
            ),
        ),
        StoreError::Unavailable(why) => (
            Status::Unavailable,
            format!("503 Service Unavailable: {why}"),
        ),
        StoreError::Fs(e) => {
            let status = match e.http_status() {
                404 => Status::NotFound,
                507 => Status::InsufficientStorage,
                413 => Status::TooLarge,
                400 | 409 => Status::BadRequest,
                _ => Status::Unavailable,
            };
            (
                status,
                format!("{}: the file server says: {e}", status.line()),
            )
        }
    }
}

/// Performs a complete request against the store. False if the store has not answered yet.
fn act<S: Store>(
    c: &mut Conn<S>,
    s: &mut tcp::Socket,
    store: &mut S,
    now: u64,
    st: &mut HttpStats,
) -> bool {
    let Phase::Act { req, sink } = &mut c.phase else {
        return true;
    };
    let close = !req.keep_alive || c.close_after;
    let head_only = req.method == Method::Head;
    let mut source = Source::None;
    let resp: Vec<u8> = match (req.method, &mut *sink) {
        (Method::Put, Sink::Failed(StoreError::Unavailable("PUT without a body length"))) => text(
            Status::LengthRequired,
            true,
            "",
            "411 Length Required: PUT needs Content-Length or Transfer-Encoding: chunked",
            false,
        ),
        (Method::Put, Sink::Failed(StoreError::NotFound)) => text(
            Status::MethodNotAllowed,
            true,
            "Allow: GET, HEAD\r\n",
            "405 Method Not Allowed: a directory cannot be written",
            false,
        ),
        (_, Sink::Failed(e)) => {
            let (status, why) = store_refusal(*e);
            text(status, true, "", &why, false)
        }
        (Method::Put, Sink::Put(w)) => match store.poll_commit(w) {
            Poll::Pending => return false,
            Poll::Ready(Ok(created)) => {
                let (status, body) = if created {
                    (Status::Created, "201 Created")
                } else {
                    (Status::Ok, "200 OK: replaced")
                };
                text(status, close, "", body, false)
            }
            Poll::Ready(Err(e)) => {
                let (status, why) = store_refusal(e);
                text(status, close, "", &why, false)
            }
        },
        (Method::Put, _) => text(
            Status::Unavailable,
            true,
            "",
            "503: upload state lost",
            false,
        ),
        (Method::Delete, _) => {
            if req.path.ends_with('/') {
                text(
                    Status::MethodNotAllowed,
                    close,
                    "Allow: GET, HEAD\r\n",
                    "405 Method Not Allowed: a directory cannot be deleted",
                    false,
                )
            } else {
                match store.poll_delete(&req.path) {
                    Poll::Pending => return false,
                    Poll::Ready(Ok(())) => head(Status::NoContent, close, ""),
                    Poll::Ready(Err(e)) => {
                        let (status, why) = store_refusal(e);
                        text(status, close, "", &why, false)
                    }
                }
            }
        }
        (Method::Get | Method::Head, _) if req.path.ends_with('/') => {
            match store.poll_list(&req.path, None, LIST_BATCH) {
                Poll::Pending => return false,
                Poll::Ready(Err(e)) => {
                    let (status, why) = store_refusal(e);
                    text(status, close, "", &why, head_only)
                }
                Poll::Ready(Ok(first)) => {
                    let chunked = !req.http10;
                    let close = close || !chunked;
                    if !head_only {
                        source = Source::Listing {
                            dir: req.path.clone(),
                            after: None,
                            first: Some(first),
                            chunked,
                            done: false,
                        };
                    }
                    let framing = if chunked {
                        "Transfer-Encoding: chunked\r\n"
                    } else {
                        ""
                    };
                    if close {
                        c.close_after = true;
                    }
                    head(
                        Status::Ok,
                        close,
                        &format!("Content-Type: text/html\r\n{framing}"),
                    )
                }
            }
        }
        (Method::Get | Method::Head, _) => match store.poll_open(&req.path) {
            Poll::Pending => return false,
            Poll::Ready(Err(e)) => {
                let (status, why) = store_refusal(e);
                text(status, close, "", &why, head_only)
            }
            Poll::Ready(Ok((mut reader, size))) => match parse::range(req.range.as_deref(), size) {
                RangeSel::Unsatisfiable => text(
                    Status::RangeNotSatisfiable,
                    close,
                    &format!("Content-Range: bytes */{size}\r\n"),
                    "416 Range Not Satisfiable",
                    head_only,
                ),
                sel => {
                    let (status, start, len, range) = match sel {
                        RangeSel::Part(a, b) => (
                            Status::Partial,
                            a,
                            b - a + 1,
                            format!("Content-Range: bytes {a}-{b}/{size}\r\n"),
                        ),
                        _ => (Status::Ok, 0, size, String::new()),
                    };
                    if !head_only && len > 0 {
                        store.seek(&mut reader, start);
                        source = Source::File { reader, left: len };
                    }
                    head(
                            status,
                            close,
                            &format!(
                                "Content-Type: {}\r\nContent-Length: {len}\r\nAccept-Ranges: bytes\r\n{range}",
                                content_type(&req.path)
                            ),
                        )
                }
            },
        },
    };
    let closes = resp_closes(&resp);
    st.requests += 1;
    let Phase::Act { sink, .. } = core::mem::replace(&mut c.phase, Phase::Send) else {
        return true;
    };
    if let Sink::Put(w) = sink {
        // Only after a failed commit: the upload is dropped.
        store.abort(w);
    }
    c.out.extend_from_slice(&resp);
    c.source = source;
    c.close_after |= closes;
    c.since = now;
    flush(c, s, store);
    true
}

/// Whether the client has sent its FIN (a socket still in the handshake has not).
fn peer_closed(s: &tcp::Socket) -> bool {
    !s.may_recv() && !matches!(s.state(), tcp::State::SynReceived | tcp::State::SynSent)
}

/// Whether a response head says `Connection: close`.
fn resp_closes(resp: &[u8]) -> bool {
    resp.windows(17).any(|w| w == b"Connection: close")
}

/// The Content-Type for a path, by its extension.
fn content_type(path: &str) -> &'static str {
    let ext = path.rsplit_once('.').map(|(_, e)| e).unwrap_or("");
    match ext {
        "html" | "htm" => "text/html",
        "txt" | "md" => "text/plain",
        "css" => "text/css",
        "js" => "text/javascript",
        "json" => "application/json",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "svg" => "image/svg+xml",
        _ => "application/octet-stream",
    }
}

/// Puts as much of the response into the socket as it takes. True if bytes moved.
fn flush<S: Store>(c: &mut Conn<S>, s: &mut tcp::Socket, store: &mut S) -> bool {
    let mut moved = false;
    if c.sent < c.out.len() {
        if let Ok(n) = s.send_slice(&c.out[c.sent..]) {
            c.sent += n;
            moved |= n > 0;
        }
        if c.sent < c.out.len() {
            if moved {
                executor::progress();
            }
            return moved;
        }
        c.out.clear();
        c.sent = 0;
    }
    loop {
        match &mut c.source {
            Source::None => break,
            Source::File { reader, left } => {
                if *left == 0 {
                    c.source = Source::None;
                    break;
                }
                let want = (*left).min(usize::MAX as u64) as usize;
                let r = s.send(|buf| {
                    let n = buf.len().min(want);
                    match store.poll_read(reader, &mut buf[..n]) {
                        Poll::Ready(Ok(k)) => (k, Ok(k)),
                        Poll::Ready(Err(e)) => (0, Err(Some(e))),
                        Poll::Pending => (0, Err(None)),
                    }
                });
                match r {
                    Ok(Ok(0)) | Err(_) | Ok(Err(None)) => break,
                    Ok(Ok(k)) => {
                        *left -= k as u64;
                        moved = true;
                    }
                    Ok(Err(Some(_))) => {
                        // The file cannot be read any more: the response cannot be completed.
                        s.abort();
                        c.source = Source::None;
                        executor::progress();
                        break;
                    }
                }
            }
            Source::Listing {
                dir,
                after,
                first,
                chunked,
                done,
            } => {
                if *done {
                    c.source = Source::None;
                    break;
                }
                // Produce the next piece only when the socket can take all of it.
                if s.send_capacity() - s.send_queue() < 8192 {
                    break;
                }
                let entries = match first.take() {
                    Some(e) => e,
                    None => match store.poll_list(dir, after.as_deref(), LIST_BATCH) {
                        Poll::Pending => break,
                        Poll::Ready(Ok(e)) => e,
                        Poll::Ready(Err(_)) => {
                            // The listing cannot be completed: reset rather than end it as if
                            // it were whole.
                            s.abort();
                            c.source = Source::None;
                            executor::progress();
                            break;
                        }
                    },
                };
                let mut piece = String::new();
                if after.is_none() {
                    let _ = writeln!(
                        piece,
                        "<!doctype html><html><head><title>{dir}</title></head><body><h1>{dir}</h1><ul>"
                    );
                }
                for e in &entries {
                    let _ = writeln!(
                        piece,
                        "<li><a href=\"{0}\">{0}</a> {1}</li>",
                        e.path, e.size
                    );
                }
                let last = entries.len() < LIST_BATCH;
                if last {
                    piece.push_str("</ul></body></html>\n");
                }
                *after = entries.last().map(|e| e.path.clone()).or(after.take());
                let mut bytes = Vec::with_capacity(piece.len() + 16);
                if *chunked {
                    let _ = write!(piece_prefix(&mut bytes), "{:x}\r\n", piece.len());
                    bytes.extend_from_slice(piece.as_bytes());
                    bytes.extend_from_slice(b"\r\n");
                    if last {
                        bytes.extend_from_slice(b"0\r\n\r\n");
                    }
                } else {
                    bytes.extend_from_slice(piece.as_bytes());
                }
                *done = last;
                if let Ok(n) = s.send_slice(&bytes) {
                    moved = true;
                    if n < bytes.len() {
                        c.out = bytes[n..].to_vec();
                        c.sent = 0;
                        break;
                    }
                }
            }
        }
    }
    if moved {
        executor::progress();
    }
    moved
}

/// `bytes` as a `fmt::Write` target.
fn piece_prefix(bytes: &mut Vec<u8>) -> impl core::fmt::Write + '_ {
    struct W<'a>(&'a mut Vec<u8>);
    impl core::fmt::Write for W<'_> {
        fn write_str(&mut self, s: &str) -> core::fmt::Result {
            self.0.extend_from_slice(s.as_bytes());
            Ok(())
        }
    }
    W(bytes)
}
