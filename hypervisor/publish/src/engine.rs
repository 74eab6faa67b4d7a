//! The gateway's one task: a single future that owns the listeners, the link, the smoltcp stack
//! and every client, and on each wake-up runs turns (accept, read the link, run the stack, move
//! bytes between client sockets and stack sockets, write the link) until nothing moves, then arms
//! one timer for the stack's and its own next deadline. Bytes go straight from a client socket
//! into a stack socket's transmit buffer and from a stack socket's receive buffer into a client
//! socket (no buffer in between): a full buffer on either side stops the reading on the other.

use std::collections::{HashSet, VecDeque};
use std::future::{poll_fn, Future};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use smoltcp::iface::{Config as IfaceConfig, Interface, PollResult, SocketHandle, SocketSet};
use smoltcp::socket::tcp::{self, RecvError, State};
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr};
use tokio::io::AsyncWrite;
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::time::Sleep;

use crate::link::{Filter, LinkDevice};
use crate::{Config, Counters};

/// Turns per wake-up before the task yields to the runtime.
const TURNS: usize = 64;
/// Clients accepted per listener per turn.
const ACCEPTS: usize = 256;
/// Link bytes read before the stack takes them.
const RX_CHUNK: usize = 256 << 10;
/// Frames waiting for the link beyond this stop the stack's output.
const TX_LIMIT: usize = 512 << 10;
/// Egress rounds per turn (each sends at most one segment per socket).
const EGRESS_ROUNDS: usize = 256;
/// First and longest wait before a refused connection is tried again.
const BACKOFF_MIN: Duration = Duration::from_millis(20);
const BACKOFF_MAX: Duration = Duration::from_millis(500);
/// Sockets kept for reuse (their buffers are the big allocation); more are made when needed.
const POOL: usize = 8;
/// Local ports of guest connections.
const PORT_FIRST: u16 = 49152;

/// A client waiting for a guest connection.
struct Waiting {
    client: TcpStream,
    peer: SocketAddr,
    guest_port: u16,
    since: Instant,
}

/// Where a client's guest connection is.
#[derive(Clone, Copy, Debug)]
enum Phase {
    /// SYN sent (`since`: the first attempt).
    Opening {
        handle: SocketHandle,
        since: Instant,
        delay: Duration,
    },
    /// Refused; asked again at `until`.
    Backoff {
        until: Instant,
        since: Instant,
        delay: Duration,
    },
    /// Established (or closing).
    Open {
        handle: SocketHandle,
        client_eof: bool,
        guest_eof: bool,
    },
}

/// A client with a guest connection (or an attempt at one).
struct Conn {
    client: TcpStream,
    peer: SocketAddr,
    guest_port: u16,
    local_port: u16,
    accepted: Instant,
    phase: Phase,
}

/// How a connection ended.
enum End {
    /// Both sides closed (or the client went away and the guest was reset).
    Done,
    /// Reset the client.
    Reset,
}

pub(crate) struct Engine {
    cfg: Config,
    c: Counters,
    shared: Arc<Mutex<Counters>>,
    listeners: Vec<(TcpListener, u16)>,
    link_listener: UnixListener,
    link: Option<UnixStream>,
    dev: LinkDevice,
    iface: Interface,
    sockets: SocketSet<'static>,
    pool: Vec<tcp::Socket<'static>>,
    /// Sockets aborted this turn: removed after the stack sent their RST.
    dying: Vec<SocketHandle>,
    active: Vec<Conn>,
    queue: VecDeque<Waiting>,
    ports: HashSet<u16>,
    next_port: u16,
    origin: Instant,
    sleep: Pin<Box<Sleep>>,
}

fn reset_client(client: TcpStream) {
    let _ = client.set_zero_linger();
    drop(client);
}

fn new_iface(cfg: &Config, dev: &mut LinkDevice, now: smoltcp::time::Instant) -> Interface {
    let mut ic = IfaceConfig::new(HardwareAddress::Ethernet(EthernetAddress(cfg.mac)));
    ic.random_seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0x5eed)
        ^ (dev as *const LinkDevice as u64);
    let mut iface = Interface::new(ic, dev, now);
    iface.update_ip_addrs(|a| {
        // One address on an empty list: the list has room.
        let _ = a.push(IpCidr::new(IpAddress::Ipv4(cfg.ip), cfg.prefix_len));
    });
    iface
}

/// What the error of a non-blocking socket call means for the loop around it.
enum Next {
    /// Call again now (interrupted, or the socket became ready meanwhile).
    Again,
    /// Nothing more now: the socket will wake the task.
    Wait,
    /// The socket is gone.
    Gone(io::Error),
}

/// Sorts the error `e` of a non-blocking call; `ready` polls the socket's readiness for that
/// direction when the call would have blocked.
fn after_error(e: io::Error, ready: impl FnOnce() -> Poll<io::Result<()>>) -> Next {
    match e.kind() {
        io::ErrorKind::WouldBlock => match ready() {
            Poll::Ready(Ok(())) => Next::Again,
            Poll::Ready(Err(e)) => Next::Gone(e),
            Poll::Pending => Next::Wait,
        },
        io::ErrorKind::Interrupted => Next::Again,
        _ => Next::Gone(e),
    }
}

impl Engine {
    pub(crate) fn new(
        cfg: Config,
        listeners: Vec<(TcpListener, u16)>,
        link_listener: UnixListener,
        shared: Arc<Mutex<Counters>>,
    ) -> Engine {
        let filter = Filter {
            mac: EthernetAddress(cfg.mac),
            ip: cfg.ip,
            guest: cfg.guest_ip,
        };
        let mut dev = LinkDevice::new(filter, TX_LIMIT);
        let origin = Instant::now();
        let iface = new_iface(&cfg, &mut dev, smoltcp::time::Instant::from_micros(0));
        Engine {
            cfg,
            c: Counters::default(),
            shared,
            listeners,
            link_listener,
            link: None,
            dev,
            iface,
            sockets: SocketSet::new(Vec::new()),
            pool: Vec::new(),
            dying: Vec::new(),
            active: Vec::new(),
            queue: VecDeque::new(),
            ports: HashSet::new(),
            next_port: PORT_FIRST,
            origin,
            sleep: Box::pin(tokio::time::sleep(Duration::ZERO)),
        }
    }

    pub(crate) async fn run(mut self) {
        tracing::info!(
            "publish gateway: listening on {:?}",
            self.listeners
                .iter()
                .filter_map(|(l, g)| l.local_addr().ok().map(|a| format!("{a} -> guest {g}")))
                .collect::<Vec<_>>()
        );
        poll_fn(|cx| self.poll(cx)).await
    }

    fn stack_now(&self, now: Instant) -> smoltcp::time::Instant {
        smoltcp::time::Instant::from_micros(
            now.saturating_duration_since(self.origin).as_micros() as i64
        )
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        self.c.wakeups += 1;
        let mut turns = 0;
        loop {
            let progress = self.turn(cx);
            turns += 1;
            if turns >= TURNS {
                self.publish();
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            if progress {
                continue;
            }
            self.publish();
            if !self.arm_timer(cx) {
                return Poll::Pending;
            }
        }
    }

    /// Sets the timer to the next deadline; true if one is due already (run another turn).
    fn arm_timer(&mut self, cx: &mut Context<'_>) -> bool {
        let now = Instant::now();
        let mut next: Option<Instant> = None;
        let mut at = |t: Instant| next = Some(next.map_or(t, |n| n.min(t)));
        if self.link.is_some() {
            let sn = self.stack_now(now);
            if let Some(d) = self.iface.poll_delay(sn, &self.sockets) {
                at(now + Duration::from_micros(d.total_micros()));
            }
        }
        for c in &self.active {
            match c.phase {
                Phase::Opening { since, .. } => at(since + self.cfg.connect_timeout),
                Phase::Backoff { until, .. } => at(until),
                Phase::Open { .. } => {}
            }
        }
        if let Some(w) = self.queue.front() {
            at(w.since + self.cfg.queue_timeout);
        }
        let Some(next) = next else {
            return false;
        };
        if next <= now {
            return true;
        }
        self.sleep
            .as_mut()
            .reset(tokio::time::Instant::from_std(next));
        self.sleep.as_mut().poll(cx).is_ready()
    }

    fn publish(&mut self) {
        self.c.active = self.active.len() as u64;
        self.c.waiting = self.queue.len() as u64;
        let mut s = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        if *s != self.c {
            *s = self.c;
        }
    }

    fn turn(&mut self, cx: &mut Context<'_>) -> bool {
        let now = Instant::now();
        let mut progress = self.accept_link(cx);
        progress |= self.accept_clients(cx, now);
        progress |= self.read_link(cx);
        progress |= self.stack(now);
        progress |= self.pump(cx, now);
        progress |= self.egress(now);
        progress |= self.flush_link(cx);
        progress |= self.start_waiting(now);
        progress |= self.expire_queue(now);
        progress
    }

    fn accept_link(&mut self, cx: &mut Context<'_>) -> bool {
        let mut progress = false;
        loop {
            match self.link_listener.poll_accept(cx) {
                Poll::Ready(Ok((s, _))) => {
                    self.c.links += 1;
                    tracing::info!(
                        "publish gateway: link {} connected{}",
                        self.c.links,
                        if self.link.is_some() {
                            " (replacing the previous one)"
                        } else {
                            ""
                        }
                    );
                    self.reset_stack();
                    self.link = Some(s);
                    progress = true;
                }
                Poll::Ready(Err(e)) => {
                    tracing::warn!("publish gateway: accepting the link: {e}");
                    break;
                }
                Poll::Pending => break,
            }
        }
        progress
    }

    fn accept_clients(&mut self, cx: &mut Context<'_>, now: Instant) -> bool {
        let mut new = Vec::new();
        for (l, guest_port) in &self.listeners {
            for _ in 0..ACCEPTS {
                match l.poll_accept(cx) {
                    Poll::Ready(Ok((client, peer))) => {
                        let _ = client.set_nodelay(true);
                        new.push(Waiting {
                            client,
                            peer,
                            guest_port: *guest_port,
                            since: now,
                        });
                    }
                    Poll::Ready(Err(e)) => {
                        tracing::warn!("publish gateway: accepting a client: {e}");
                        break;
                    }
                    Poll::Pending => break,
                }
            }
        }
        let progress = !new.is_empty();
        for w in new {
            self.c.accepted += 1;
            tracing::trace!(
                "publish gateway: client {} for guest port {}",
                w.peer,
                w.guest_port
            );
            if self.link.is_some()
                && self.queue.is_empty()
                && self.active.len() < self.cfg.max_guest_conns
            {
                self.open(w, now);
            } else if self.queue.len() < self.cfg.queue_len {
                self.c.queued += 1;
                self.queue.push_back(w);
            } else {
                self.c.overflow += 1;
                tracing::debug!("publish gateway: queue full, closing client {}", w.peer);
                reset_client(w.client);
            }
        }
        progress
    }

    fn take_port(&mut self) -> u16 {
        loop {
            let p = self.next_port;
            self.next_port = if p == u16::MAX { PORT_FIRST } else { p + 1 };
            if self.ports.insert(p) {
                return p;
            }
        }
    }

    fn socket(&mut self) -> tcp::Socket<'static> {
        let mut s = self.pool.pop().unwrap_or_else(|| {
            tcp::Socket::new(
                tcp::SocketBuffer::new(vec![0; self.cfg.socket_buffer]),
                tcp::SocketBuffer::new(vec![0; self.cfg.socket_buffer]),
            )
        });
        // Bytes go out as soon as they come in (a splice has nothing to gather), and ACKs go with
        // the turn that took the segments in: one cumulative ACK per batch from the link, never a
        // 10 ms wait for a guest whose small send buffer is waiting for it.
        s.set_nagle_enabled(false);
        s.set_ack_delay(None);
        s
    }

    /// Gives a removed socket back to the pool.
    fn recycle(&mut self, handle: SocketHandle) {
        // Only TCP sockets are built in here; another feature of smoltcp would add variants.
        #[allow(irrefutable_let_patterns)]
        if let smoltcp::socket::Socket::Tcp(mut s) = self.sockets.remove(handle) {
            // Closed without sending anything: it is out of the set.
            s.abort();
            if self.pool.len() < POOL {
                self.pool.push(s);
            }
        }
    }

    /// Sends the SYN of a connection to guest `port` from `local_port`.
    fn connect(&mut self, port: u16, local_port: u16) -> Option<SocketHandle> {
        let mut s = self.socket();
        let remote = (IpAddress::Ipv4(self.cfg.guest_ip), port);
        match s.connect(self.iface.context(), remote, local_port) {
            Ok(()) => Some(self.sockets.add(s)),
            Err(e) => {
                tracing::warn!("publish gateway: connect to guest port {port}: {e:?}");
                None
            }
        }
    }

    fn open(&mut self, w: Waiting, now: Instant) {
        let local_port = self.take_port();
        match self.connect(w.guest_port, local_port) {
            Some(handle) => self.active.push(Conn {
                client: w.client,
                peer: w.peer,
                guest_port: w.guest_port,
                local_port,
                accepted: w.since,
                phase: Phase::Opening {
                    handle,
                    since: now,
                    delay: BACKOFF_MIN,
                },
            }),
            None => {
                self.ports.remove(&local_port);
                reset_client(w.client);
            }
        }
    }

    /// Forgets the stack (a new link or none): connections to the old boot are reset, those
    /// still opening go back to the front of the queue.
    fn reset_stack(&mut self) {
        let mut back = Vec::new();
        for conn in std::mem::take(&mut self.active) {
            self.ports.remove(&conn.local_port);
            match conn.phase {
                Phase::Open { handle, .. } => {
                    self.recycle(handle);
                    self.c.reset_by_reboot += 1;
                    reset_client(conn.client);
                }
                Phase::Opening { handle, .. } => {
                    self.recycle(handle);
                    back.push(conn);
                }
                Phase::Backoff { .. } => back.push(conn),
            }
        }
        for h in std::mem::take(&mut self.dying) {
            self.recycle(h);
        }
        for conn in back.into_iter().rev() {
            self.queue.push_front(Waiting {
                client: conn.client,
                peer: conn.peer,
                guest_port: conn.guest_port,
                since: conn.accepted,
            });
        }
        self.dev.clear();
        let now = self.stack_now(Instant::now());
        self.iface = new_iface(&self.cfg, &mut self.dev, now);
    }

    fn drop_link(&mut self, why: &str) {
        if self.link.take().is_some() {
            tracing::info!("publish gateway: link gone ({why})");
        }
        self.reset_stack();
    }

    fn read_link(&mut self, cx: &mut Context<'_>) -> bool {
        let mut progress = false;
        let mut gone: Option<String> = None;
        if let Some(link) = &self.link {
            let dev = &mut self.dev;
            if dev.rx_pos > 0 {
                dev.rx.drain(..dev.rx_pos);
                dev.rx_pos = 0;
            }
            while dev.rx.len() < RX_CHUNK {
                if dev.rx.capacity() - dev.rx.len() < 64 << 10 {
                    dev.rx.reserve(64 << 10);
                }
                match link.try_read_buf(&mut dev.rx) {
                    Ok(0) => {
                        gone = Some("closed by the machine".into());
                        break;
                    }
                    Ok(_) => progress = true,
                    Err(e) => match after_error(e, || link.poll_read_ready(cx)) {
                        Next::Again => continue,
                        Next::Wait => break,
                        Next::Gone(e) => {
                            gone = Some(e.to_string());
                            break;
                        }
                    },
                }
            }
        }
        if let Some(why) = gone {
            // Frames that came before the end are of no use now: the stack is reset.
            self.drop_link(&why);
            return true;
        }
        progress
    }

    fn take_counts(&mut self) {
        let counts = std::mem::take(&mut self.dev.counts);
        self.c.bad_frames += counts.bad;
        self.c.ignored_frames += counts.ignored;
    }

    fn stack(&mut self, now: Instant) -> bool {
        if self.link.is_none() {
            return false;
        }
        let sn = self.stack_now(now);
        let r = self.iface.poll(sn, &mut self.dev, &mut self.sockets);
        self.take_counts();
        if let Some(len) = self.dev.broken {
            self.c.bad_links += 1;
            tracing::warn!("publish gateway: frame length {len} on the link: dropping it");
            self.drop_link("bad length prefix");
            return true;
        }
        r == PollResult::SocketStateChanged
    }

    fn egress(&mut self, now: Instant) -> bool {
        if self.link.is_none() {
            return false;
        }
        let sn = self.stack_now(now);
        let mut progress = false;
        for _ in 0..EGRESS_ROUNDS {
            if self.iface.poll_egress(sn, &mut self.dev, &mut self.sockets)
                != PollResult::SocketStateChanged
            {
                break;
            }
            progress = true;
        }
        for h in std::mem::take(&mut self.dying) {
            self.recycle(h);
        }
        progress
    }

    fn flush_link(&mut self, cx: &mut Context<'_>) -> bool {
        let mut progress = false;
        let mut gone = None;
        if let Some(link) = &self.link {
            let dev = &mut self.dev;
            while !dev.tx_pending().is_empty() {
                match link.try_write(dev.tx_pending()) {
                    Ok(n) => {
                        dev.tx_pos += n;
                        progress = true;
                    }
                    Err(e) => match after_error(e, || link.poll_write_ready(cx)) {
                        Next::Again => continue,
                        Next::Wait => break,
                        Next::Gone(e) => {
                            gone = Some(e.to_string());
                            break;
                        }
                    },
                }
            }
            dev.compact();
        }
        if let Some(why) = gone {
            self.drop_link(&why);
            return true;
        }
        progress
    }

    fn start_waiting(&mut self, now: Instant) -> bool {
        let mut progress = false;
        while self.link.is_some() && self.active.len() < self.cfg.max_guest_conns {
            let Some(w) = self.queue.pop_front() else {
                break;
            };
            self.open(w, now);
            progress = true;
        }
        progress
    }

    fn expire_queue(&mut self, now: Instant) -> bool {
        let mut progress = false;
        while self
            .queue
            .front()
            .is_some_and(|w| now >= w.since + self.cfg.queue_timeout)
        {
            if let Some(w) = self.queue.pop_front() {
                self.c.timed_out += 1;
                tracing::debug!("publish gateway: client {} waited too long", w.peer);
                reset_client(w.client);
                progress = true;
            }
        }
        progress
    }

    /// Moves every active connection along; ends those that are done.
    fn pump(&mut self, cx: &mut Context<'_>, now: Instant) -> bool {
        if self.link.is_none() {
            return false;
        }
        let mut progress = false;
        let mut active = std::mem::take(&mut self.active);
        let mut i = 0;
        while i < active.len() {
            let (moved, end) = self.step(&mut active[i], cx, now);
            progress |= moved;
            match end {
                None => i += 1,
                Some(end) => {
                    progress = true;
                    let conn = active.swap_remove(i);
                    self.ports.remove(&conn.local_port);
                    match end {
                        End::Done => drop(conn.client),
                        End::Reset => reset_client(conn.client),
                    }
                }
            }
        }
        self.active = active;
        progress
    }

    /// One connection's turn: (bytes or state moved, how it ended if it did).
    fn step(&mut self, conn: &mut Conn, cx: &mut Context<'_>, now: Instant) -> (bool, Option<End>) {
        let timeout = self.cfg.connect_timeout;
        match conn.phase {
            Phase::Backoff {
                until,
                since,
                delay,
            } => {
                if now < until {
                    return (false, None);
                }
                match self.connect(conn.guest_port, conn.local_port) {
                    Some(handle) => {
                        conn.phase = Phase::Opening {
                            handle,
                            since,
                            delay,
                        };
                        (true, None)
                    }
                    None => (true, Some(End::Reset)),
                }
            }
            Phase::Opening {
                handle,
                since,
                delay,
            } => {
                let state = self.sockets.get_mut::<tcp::Socket>(handle).state();
                match state {
                    State::SynSent | State::SynReceived => {
                        if now >= since + timeout {
                            self.c.timed_out += 1;
                            tracing::debug!(
                                "publish gateway: guest port {} did not answer {} within {timeout:?}",
                                conn.guest_port,
                                conn.peer
                            );
                            self.recycle(handle);
                            return (true, Some(End::Reset));
                        }
                        (false, None)
                    }
                    State::Closed | State::TimeWait | State::Listen => {
                        self.c.refused_by_guest += 1;
                        self.recycle(handle);
                        if now >= since + timeout {
                            self.c.timed_out += 1;
                            tracing::debug!(
                                "publish gateway: guest port {} refused {} until the timeout",
                                conn.guest_port,
                                conn.peer
                            );
                            return (true, Some(End::Reset));
                        }
                        conn.phase = Phase::Backoff {
                            until: (now + delay).min(since + timeout),
                            since,
                            delay: (delay * 2).min(BACKOFF_MAX),
                        };
                        (true, None)
                    }
                    _ => {
                        self.c.connected += 1;
                        conn.phase = Phase::Open {
                            handle,
                            client_eof: false,
                            guest_eof: false,
                        };
                        let (_, end) = self.step(conn, cx, now);
                        (true, end)
                    }
                }
            }
            Phase::Open {
                handle,
                mut client_eof,
                mut guest_eof,
            } => {
                let (moved, end) = self.splice(conn, handle, cx, &mut client_eof, &mut guest_eof);
                conn.phase = Phase::Open {
                    handle,
                    client_eof,
                    guest_eof,
                };
                (moved, end)
            }
        }
    }

    /// Moves bytes both ways on an open connection, forwards half-closes, and says when it ends.
    fn splice(
        &mut self,
        conn: &mut Conn,
        handle: SocketHandle,
        cx: &mut Context<'_>,
        client_eof: &mut bool,
        guest_eof: &mut bool,
    ) -> (bool, Option<End>) {
        let sock = self.sockets.get_mut::<tcp::Socket>(handle);
        let client = &mut conn.client;
        let mut moved = false;
        let mut client_gone = false;
        // Client to guest, while the stack's transmit buffer has room.
        while !*client_eof && sock.can_send() {
            let r = sock.send(|buf| match client.try_read(buf) {
                Ok(n) => (n, Ok(n)),
                Err(e) => (0, Err(e)),
            });
            match r {
                Err(_) => break,
                Ok(Ok(0)) => {
                    *client_eof = true;
                    sock.close();
                    moved = true;
                }
                Ok(Ok(n)) => {
                    self.c.bytes_to_guest += n as u64;
                    moved = true;
                }
                Ok(Err(e)) => match after_error(e, || client.poll_read_ready(cx)) {
                    Next::Again => continue,
                    Next::Wait => break,
                    Next::Gone(_) => {
                        client_gone = true;
                        break;
                    }
                },
            }
        }
        // Guest to client, while the client takes it.
        while !client_gone {
            let r = sock.recv(|buf| {
                if buf.is_empty() {
                    return (0, Ok(0));
                }
                match client.try_write(buf) {
                    Ok(n) => (n, Ok(n)),
                    Err(e) => (0, Err(e)),
                }
            });
            match r {
                Ok(Ok(0)) => break,
                Ok(Ok(n)) => {
                    self.c.bytes_to_client += n as u64;
                    moved = true;
                }
                Ok(Err(e)) => match after_error(e, || client.poll_write_ready(cx)) {
                    Next::Again => continue,
                    Next::Wait => break,
                    Next::Gone(_) => client_gone = true,
                },
                Err(RecvError::Finished) => {
                    if !*guest_eof {
                        *guest_eof = true;
                        moved = true;
                        let _ = Pin::new(&mut *client).poll_shutdown(cx);
                    }
                    break;
                }
                Err(RecvError::InvalidState) => break,
            }
        }
        if client_gone {
            // The client reset or vanished: so does the guest connection.
            sock.abort();
            self.dying.push(handle);
            return (true, Some(End::Reset));
        }
        let state = sock.state();
        if matches!(state, State::Closed | State::TimeWait) && sock.recv_queue() == 0 {
            self.recycle(handle);
            if *guest_eof {
                return (true, Some(End::Done));
            }
            self.c.reset_by_guest += 1;
            tracing::debug!(
                "publish gateway: guest reset the connection of {}",
                conn.peer
            );
            return (true, Some(End::Reset));
        }
        (moved, None)
    }
}
